"""Configurations -> launches -> compiled specialisations -> per-launch model -> per-configuration totals."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from . import analytic
from .compile import Spec, compile_all, specialise
from .launches import Config, record, tensor_bytes, trunk_rows
from .model import ASSUMPTIONS, DEVICES, Static, analyse, dynamic, spill_latency, tensor_args, times, torch_op_us

REL_TOL = 1e-9


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return str(v)


def prepare(cfgs: list[Config]) -> list[tuple[Config, list, dict]]:
    """Record and specialise every launch: [(config, [(launch, spec, bound)], torch ops)]."""
    from .compile import backend

    be = backend()
    out = []
    for c in cfgs:
        launches, ops = record(c)
        out.append((c, [(lc, *specialise(lc.kernel, lc.args, lc.kwargs, be)) for lc in launches], ops))
    return out


def model_launch(lc, spec: Spec, bound: dict, comp: dict, st: Static) -> dict[str, Any]:
    grid = lc.grid
    values = {k: v for k, v in bound.items() if not isinstance(v, torch.Tensor)}
    tot = dynamic(st, bound, grid, spec.num_warps)
    padded = analytic.padded_mma_flops(spec.name, values, grid)
    useful = analytic.useful_flops(spec.name, values)
    mma_ok = math.isclose(tot["mma_flops"], padded, rel_tol=REL_TOL, abs_tol=1.0)
    tensors = tensor_args(lc.kernel, bound, spec.signature, comp["params_used"])
    dram = float(sum(tensor_bytes(t) for t in tensors))
    mem = tot["mem"]
    l2 = sum(mem.get(k, 0.0) for k in ("global_ld", "global_ld_bypass", "global_st", "global_atom"))
    l1 = tot["mem_l1"]
    local = mem.get("local_ld", 0.0) + mem.get("local_st", 0.0)
    bytes_ok = l2 >= dram
    dev_t = {d: times(dev, tot, grid, spec.num_warps, spec.num_stages, comp["regs"], comp["shared"], dram, l2)
             for d, dev in DEVICES.items()}  # fmt: skip
    launch_us = ASSUMPTIONS["launch_us"][0]
    mma = {f"{k[0]}.m{k[1]}n{k[2]}k{k[3]} ({k[4]})": v for k, v in tot["mma"].items()}
    return {
        "layer": lc.layer,
        "phase": lc.phase,
        "kernel": spec.name,
        "constexprs": {k: _jsonable(v) for k, v in spec.constexpr_values.items()},
        "int_args": {k: v for k, v in values.items() if isinstance(v, int) and k not in spec.constexpr_values},
        "grid": list(grid),
        "num_warps": spec.num_warps,
        "regs": comp["regs"],
        "spill_bytes": comp["stack"],
        "smem_bytes": comp["shared"],
        "warp_instructions": tot["warp_instructions"],
        "mma": {
            "instructions": mma,
            "flops": tot["mma_flops"],
            "flops_analytic_padded": padded,
            "flops_useful": useful,
            "invariant": "PASS" if mma_ok else "FAIL",
        },  # fmt: skip
        "flops": tot["mma_flops"],
        "bytes_dram": dram,
        "bytes_l2": l2,
        "predicted_us": {d: (t["time_s"] * 1e6 + launch_us) for d, t in dev_t.items()},
        "bound": dev_t["H200"]["bound"],
        "detail": {
            "bound_H100": dev_t["H100"]["binding"],
            "bound_H200": dev_t["H200"]["binding"],
            # H200's bounds; the H100's differ only in DRAM (slower HBM): see bound_H100 / predicted_us
            "bounds_us": {k: v * 1e6 for k, v in dev_t["H200"]["bounds_s"].items()},
            "bounds_us_H100": {k: v * 1e6 for k, v in dev_t["H100"]["bounds_s"].items() if k == "DRAM"},
            "resident_ctas": dev_t["H200"]["resident_ctas"],
            "occupancy_limit": dev_t["H200"]["occupancy_limit"],
            "waves": dev_t["H200"]["waves"],
            "num_stages": spec.num_stages,
            "pipes": tot["pipes"],
            "bytes": mem,
            "bytes_l1": l1,
            "l1_us_info": dev_t["H200"]["l1_s"] * 1e6,  # 128 B/clk/SM; not in the max
            "bytes_local": local,
            "bytes_invariant": "PASS" if bytes_ok else "FAIL",
            "per_thread_per_program": tot["per_thread_per_program"],
            "fixed_stall_mean": tot["fixed_stall_mean"],  # bench/sass/stalls.py; None without -hex SASS
            "warp_cycles": tot["warp_cycles"],
            "loops": [{k: v for k, v in lp.items() if not k.startswith("_")} for lp in tot["loops"]],
            "sass_hash": comp["hash"][:16],
            "ptx_target": comp["ptx_target"],
        },
    }


def summarise(c: Config, rows: list[dict], ops: dict[tuple, list]) -> dict[str, Any]:
    b = c.batch
    by_layer: dict[str, dict[str, float]] = {}
    for r in rows:
        by_layer.setdefault(r["layer"], {}).setdefault(r["phase"], 0.0)
        by_layer[r["layer"]][r["phase"]] += r["warp_instructions"] / b
    n_torch = sum(len(v) for v in ops.values())
    torch_us = {d: sum(torch_op_us(dev, nb) for v in ops.values() for _, nb in v) for d, dev in DEVICES.items()}
    pred = {d: (sum(r["predicted_us"][d] for r in rows) + torch_us[d]) / b for d in DEVICES}
    bound_time: dict[str, dict[str, float]] = {}
    for d in DEVICES:
        acc: dict[str, float] = {}
        for r in rows:
            key = r["detail"][f"bound_{d}"]
            acc[key] = acc.get(key, 0.0) + (r["predicted_us"][d] - ASSUMPTIONS["launch_us"][0]) / b
        bound_time[d] = acc
    per_clip = {
        "warp_instructions": sum(r["warp_instructions"] for r in rows) / b,
        "warp_instructions_by_layer": by_layer,
        "flops_mma": sum(r["flops"] for r in rows) / b,
        "flops_useful": sum(r["mma"]["flops_useful"] for r in rows) / b,
        "bytes_dram": sum(r["bytes_dram"] for r in rows) / b,
        "bytes_l2": sum(r["bytes_l2"] for r in rows) / b,
        "bytes_local": sum(r["detail"]["bytes_local"] for r in rows) / b,
        "bytes_l1": sum(r["detail"]["bytes_l1"] for r in rows) / b,
        "predicted_us": pred,
        "predicted_us_kernels_only": {
            d: sum(r["predicted_us"][d] - ASSUMPTIONS["launch_us"][0] for r in rows) / b for d in DEVICES
        },  # fmt: skip
        "binding_time_us": bound_time,
        "launches": {"triton": len(rows), "torch": n_torch},
        "torch_ops_us": {d: torch_us[d] / b for d in DEVICES},
        "torch_ops_bytes": sum(nb for v in ops.values() for _, nb in v) / b,
    }
    fails = []
    for r in rows:
        if r["mma"]["invariant"] != "PASS":
            fails.append(f"{r['layer']} {r['phase']} {r['kernel']}: MMA FLOPs != padded analytic")
        if r["detail"]["bytes_invariant"] != "PASS":
            fails.append(f"{r['layer']} {r['phase']} {r['kernel']}: L2 bytes < compulsory")
    return {
        "arch": c.arch,
        "batch": c.batch,
        "seconds": c.seconds,
        "dtype": c.dtype,
        "launches": rows,
        "per_clip": per_clip,
        "predicted_clips_per_s": {d: 1e6 / pred[d] for d in DEVICES},
        "torch_ops": {f"{k[0]} {k[1]}": v for k, v in ops.items()},
        "invariants": {"status": "FAIL" if fails else "PASS", "failures": fails},
    }


def evaluate(cfgs: list[Config], workers: int = 2, progress: bool = True) -> tuple[list[dict], dict[str, Any]]:
    """Model every configuration; returns (config summaries, facts about the run)."""
    t0 = time.time()
    prepared = prepare(cfgs)
    specs = list(dict.fromkeys(s for _, launches, _ in prepared for _, s, _ in launches))
    if progress:
        print(f"{sum(len(x[1]) for x in prepared)} launches, {len(specs)} distinct specialisations", flush=True)
    t1 = time.time()
    compiled = compile_all(specs, workers=workers, progress=progress)
    t2 = time.time()
    h200 = DEVICES["H200"]  # the H100's SMs are the same: one latency for both
    static = {s: analyse(compiled[s]["sass"], spill_latency(h200, compiled[s]["regs"], compiled[s]["shared"],
                                                            s.num_warps, compiled[s]["stack"]))
              for s in specs}  # fmt: skip
    out = []
    for c, launches, ops in prepared:
        rows = [model_launch(lc, s, bound, compiled[s], static[s]) for lc, s, bound in launches]
        out.append((c, summarise(c, rows, ops)))
    facts = {"specialisations": len(specs), "record_s": t1 - t0, "compile_s": t2 - t1, "model_s": time.time() - t2,
             "compiled": compiled, "static": static}  # fmt: skip
    return out, facts


def baselines(arch: str, seconds: float) -> dict[str, Any]:
    """Bytes-bound predictions of eager bf16 and torch.compile on the same shapes (per clip)."""
    from .launches import SAMPLE_RATE

    rows = trunk_rows(arch)
    samples = int(round(seconds * SAMPLE_RATE))
    ts = analytic.layer_tensors(rows, samples, 1, 2)
    eager = {t["layer"]: analytic.eager_bytes(t) for t in ts}
    comp = {t["layer"]: analytic.compile_bytes(t) for t in ts}
    flops = sum(analytic.conv_flops(t, r, 2) for t, r in zip(ts, rows, strict=True))
    out: dict[str, Any] = {"arch": arch, "seconds": seconds, "dtype": "bf16", "conv_flops_per_clip": flops}
    for name, per in (("eager", eager), ("compile", comp)):
        total = sum(per.values())
        out[name] = {"bytes_per_clip": total, "bytes_by_layer": per,
                     "predicted_clips_per_s": {d: dev.dram_bps / total for d, dev in DEVICES.items()},
                     "flop_bound_clips_per_s": {d: 790e12 / flops for d in DEVICES}}  # fmt: skip
    return out
