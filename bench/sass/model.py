"""The static performance model of one launch: dynamic instruction counts from the SASS and the trip
counts, per-pipe / tensor / L2 / DRAM / latency times, occupancy, and the invariants.

Every constant is in ``DEVICES`` / ``RATES`` / ``ASSUMPTIONS`` with its source or marked as an
assumption; the report prints them. All figures are predictions of a static model, not measurements.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from . import cfg as cfgmod
from . import stalls
from .cfg import Cfg
from .trips import block_frequencies, loop_trips

# Per-SM issue rates in warp-instructions per clock per scheduler (4 schedulers per SM). Source: CUDA C++
# Programming Guide, "Arithmetic Instructions" throughput table, compute capability 9.0 (results per clock
# per SM: fp32 add/mul/fma 128 -> 1; 32-bit integer add/logic/compare/shift 64 -> 0.5; integer
# multiply-add 64 -> 0.5; conversions and MUFU 16 -> 0.125; warp shuffle 32 -> 0.25). IMAD and fp32 share
# the FMA pipe (FMA-heavy + FMA-lite; only the heavy half runs IMAD): fp32 + IMAD <= 1, IMAD <= 0.5.
RATES = {
    "fp32": 1.0,  # with IMAD: (fp32 + imad) / 1.0
    "imad": 0.5,
    "alu": 0.5,
    "xu": 0.125,
    "mio": 0.25,  # LSU / MIO queue (LDG/STG/LDS/STS/LDSM/LDGSTS/SHFL/LDC/S2R): ASSUMPTION (same as shuffles)
    "uniform": 1.0,  # uniform datapath: ASSUMPTION (not documented; only its issue slot is counted)
    "control": 1.0,  # branches, barriers, NOPs: only its issue slot is counted (ASSUMPTION)
}
PIPE_LABEL = {
    "fp32": "issue",
    "imad": "int",
    "alu": "int",
    "xu": "issue",
    "mio": "issue",
    "uniform": "issue",
    "control": "issue",
}


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    sms: int
    clock_hz: float
    dram_bps: float
    l2_bps: float
    wgmma_bf16_flops: float  # dense bf16 peak through wgmma (HGMMA)
    hmma_fraction: float  # mma.sync (HMMA) rate as a fraction of the wgmma peak
    regs_per_sm: int = 65536
    smem_per_sm: int = 228 * 1024
    smem_per_cta_max: int = 227 * 1024
    smem_reserved_per_cta: int = 1024
    warps_per_sm: int = 64
    ctas_per_sm: int = 32
    schedulers: int = 4


DEVICES = {
    # H100 SXM5: 132 SMs, 1.98 GHz max boost, 3.35 TB/s HBM3, 989 TFLOP/s dense bf16 (NVIDIA H100 datasheet).
    "H100": Device("H100", 132, 1.98e9, 3.35e12, 5.5e12, 989e12, 0.5),
    # H200 SXM: same GH100 die and clocks, 4.8 TB/s HBM3e (NVIDIA H200 datasheet).
    "H200": Device("H200", 132, 1.98e9, 4.8e12, 5.5e12, 989e12, 0.5),
}
ASSUMPTIONS = {
    "launch_us": (3.0, "cost of one kernel launch inside a CUDA graph, added to every launch (ASSUMPTION, a floor)"),
    "torch_op_us": (
        3.0,
        "each small torch op beside the Triton kernels (fills, partial sums, BN finalisation): "
        "one graph node, ASSUMPTION",
    ),
    "torch_op_bytes": (
        1.0,
        "each such torch op streams its tensor inputs and outputs through HBM once: its time is max(torch_op_us, "
        "bytes / HBM bandwidth) (ASSUMPTION: no cache reuse, no overlap with neighbours)",
    ),
    "mem_latency_cycles": (
        600,
        "global load latency (L2 miss to HBM) on H100, ASSUMPTION from published "
        "microbenchmarks (Luo et al. 2024, 'Benchmarking and Dissecting the Nvidia Hopper "
        "GPU Architecture': ~480-660 cycles)",
    ),
    "l2_bps": (5.5e12, "L2 -> SM bandwidth, ASSUMPTION (not published by NVIDIA; microbenchmarks report ~5.5 TB/s)"),
    "hmma_fraction": (
        0.5,
        "mma.sync (HMMA) throughput on sm_90 as a fraction of the wgmma peak, ASSUMPTION "
        "(Luo et al. 2024 measure roughly half); TF32 at half the bf16 rate",
    ),
    "lanes": (32, "every memory instruction moves 32 lanes x its width (masked-off lanes counted: upper bound)"),
}


def torch_op_us(dev: Device, nbytes: float) -> float:
    """Predicted time (us) of one small torch op beside the kernels that moves ``nbytes`` (ASSUMPTIONS)."""
    return max(ASSUMPTIONS["torch_op_us"][0], ASSUMPTIONS["torch_op_bytes"][0] * nbytes / dev.dram_bps * 1e6)


def occupancy(dev: Device, regs: int, smem: int, warps: int) -> tuple[int, str]:
    """(resident CTAs per SM, limiting resource). Registers are allocated per warp in units of 256."""
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    warps_by_regs = (dev.regs_per_sm // 4 // regs_per_warp) * 4  # per SM sub-partition, 4 of them
    limits = {
        "registers": warps_by_regs // warps,
        "shared memory": dev.smem_per_sm // (smem + dev.smem_reserved_per_cta),
        "warps": dev.warps_per_sm // warps,
        "CTAs": dev.ctas_per_sm,
    }
    which = min(limits, key=lambda k: limits[k])
    return max(0, limits[which]), which


@dataclasses.dataclass
class Static:
    """Per-block static facts of one compiled kernel."""

    cfg: Cfg
    count: dict[int, int]  # instructions per block
    pipes: dict[int, dict[str, int]]
    mem: dict[int, dict[str, int]]  # bytes per warp-instruction summed per space
    mma: dict[int, dict[tuple, int]]  # (kind, m, n, k, operands) -> instructions
    mma_flops: dict[int, float]  # per warp per execution of the block
    cycles: dict[int, float] | None = None  # one warp's cycles per execution (stalls.block_cycles); None: no -hex


def analyse(sass: str, local_latency: int = stalls.LATENCY_CYCLES["local"]) -> Static:
    """Per-block static facts of one kernel's SASS; ``local_latency``: a spill reload's cycles
    (:func:`spill_latency` of the compiled kernel)."""
    g = Cfg(sass)
    count, pipes, mem, mma, mflops = {}, {}, {}, {}, {}
    for b in g.reachable:
        ins = g.instrs_of(b)
        count[b] = len(ins)
        pc: dict[str, int] = {}
        mc: dict[str, int] = {}
        mm: dict[tuple, int] = {}
        fl = 0.0
        for i in ins:
            if i.never:
                pc["control"] = pc.get("control", 0) + 1  # never-executed padding: an issue slot only
                continue
            p = cfgmod.pipe(i)
            pc[p] = pc.get(p, 0) + 1
            a = cfgmod.access(i)
            if a is not None:
                mc[a[0]] = mc.get(a[0], 0) + a[1]
                if i.base == "LDGSTS":
                    mc["shared_st"] = mc.get("shared_st", 0) + a[1]
            s = cfgmod.mma_shape(i)
            if s is not None:
                mm[s] = mm.get(s, 0) + 1
                fl += cfgmod.mma_flops_per_warp_instr(i)
        pipes[b], mem[b], mma[b], mflops[b] = pc, mc, mm, fl
    has_ctrl = all(i.ctrl is not None for b in g.reachable for i in g.instrs_of(b))
    return Static(g, count, pipes, mem, mma, mflops, stalls.block_cycles(g, local_latency) if has_ctrl else None)


def spill_latency(dev: Device, regs: int, smem: int, warps: int, stack: int) -> int:
    """A spill reload's latency for a kernel with ``stack`` spill bytes per thread at its occupancy on ``dev``."""
    resident, _ = occupancy(dev, regs, smem, warps)
    resident = max(resident, 1)
    return stalls.local_latency(stack, resident * warps * 32, resident * (smem + dev.smem_reserved_per_cta))


def tensor_args(kernel, bound: dict[str, Any], signature: tuple, params_used: list[int]) -> list[torch.Tensor]:
    """The tensors behind the PTX parameters the code reads (constexpr arguments have no parameter)."""
    names = [n for n, t in signature if t != "constexpr"]
    used = [names[i] for i in params_used if i < len(names)]
    seen: dict[int, torch.Tensor] = {}
    for n in used:
        v = bound.get(n)
        if isinstance(v, torch.Tensor):
            seen.setdefault(id(v), v)
    return list(seen.values())


def dynamic(st: Static, bound: dict[str, Any], grid: tuple[int, ...], num_warps: int) -> dict[str, Any]:
    """Dynamic totals of one launch (all programs, all warps)."""
    launch = {k: v for k, v in bound.items() if not isinstance(v, torch.Tensor)}
    loops = loop_trips(st.cfg, launch, grid)
    freq = block_frequencies(st.cfg, [lp["trips"] for lp in loops], grid)
    tot: dict[str, Any] = {"warp_instructions": 0.0, "pipes": {}, "mem": {}, "mma": {}, "mma_flops": 0.0,
                           "warp_cycles": 0.0 if st.cycles is not None else None}  # fmt: skip
    for b, f in freq.items():
        w = f * num_warps
        tot["warp_instructions"] += st.count[b] * w
        if st.cycles is not None:
            tot["warp_cycles"] += st.cycles[b] * w
        for p, n in st.pipes[b].items():
            tot["pipes"][p] = tot["pipes"].get(p, 0.0) + n * w
        for s, n in st.mem[b].items():
            tot["mem"][s] = tot["mem"].get(s, 0.0) + n * w
        for k, n in st.mma[b].items():
            tot["mma"][k] = tot["mma"].get(k, 0.0) + n * w
        tot["mma_flops"] += st.mma_flops[b] * w
    programs = math.prod(grid)
    tot["loops"] = []
    for i, lp in enumerate(loops):
        blocks = st.cfg.loops[i].blocks
        inner = [j for j, o in enumerate(st.cfg.loops) if o.parent == i]
        own = blocks - set().union(*(st.cfg.loops[j].blocks for j in inner)) if inner else blocks
        body = sum(st.count[b] for b in own)
        has_ld = any(st.mem[b].get("global_ld", 0) or st.mem[b].get("global_ld_bypass", 0) for b in own)
        has_async = any(i2.base == "LDGSTS" for b in own for i2 in st.cfg.instrs_of(b))
        # global loads narrower than 16 bytes per lane in the loop's own blocks: (opcode, count)
        narrow: dict[str, int] = {}
        for b in own:
            for i2 in st.cfg.instrs_of(b):
                a = cfgmod.access(i2)
                if a is not None and a[0].startswith("global_ld") and a[1] < 32 * 16 and not i2.never:
                    narrow[i2.opcode] = narrow.get(i2.opcode, 0) + 1
        execs = freq[st.cfg.loops[i].header] / programs
        body_mma = sum(n for b in own for n in st.mma[b].values())
        tot["loops"].append(
            {
                "source": lp["source"],
                "range": lp["text"],
                "trips_mean": float(np.mean(lp["trips"])),
                "body_instructions": body,
                "body_mma": body_mma,
                "iterations_per_program": execs,
                "narrow_loads": narrow,
                "_global_loads": has_ld,
                "_cp_async": has_async,
            }
        )
    tot["per_thread_per_program"] = tot["warp_instructions"] / num_warps / programs
    tot["fixed_stall_mean"] = stalls.fixed_stall_mean(st.cfg, freq) if st.cycles is not None else None
    mem = tot["mem"]
    tot["mem_l1"] = sum(mem.get(k, 0.0) for k in ("global_ld", "local_ld", "local_st", "shared_ld", "shared_st"))
    return tot


def times(dev: Device, tot: dict[str, Any], grid: tuple[int, ...], num_warps: int, num_stages: int, regs: int,
          smem: int, bytes_dram: float, bytes_l2: float) -> dict[str, Any]:  # fmt: skip
    """Time bounds (seconds) of one launch on ``dev`` and the binding one."""
    ctas = math.prod(grid)
    resident, limiter = occupancy(dev, regs, smem, num_warps)
    if resident < 1:
        raise ValueError(f"kernel does not fit an SM (regs {regs}, smem {smem}, warps {num_warps})")
    per_sm = math.ceil(ctas / dev.sms)  # CTAs the busiest SM runs
    share = per_sm / ctas  # fraction of the launch's work on the busiest SM
    sched = min(dev.schedulers, num_warps * min(resident, per_sm))
    clk = dev.clock_hz
    b: dict[str, float] = {"issue": tot["warp_instructions"] * share / (sched * clk)}
    pipes = tot["pipes"]
    fma = pipes.get("fp32", 0.0) + pipes.get("imad", 0.0)
    pipe_t = {"fp32": fma / RATES["fp32"], "imad": pipes.get("imad", 0.0) / RATES["imad"]}
    for p in ("alu", "xu", "mio", "uniform", "control"):
        pipe_t[p] = pipes.get(p, 0.0) / RATES[p]
    for p, n in pipe_t.items():
        b[f"pipe:{p}"] = n * share / (dev.schedulers * clk)
    tensor = 0.0
    for (kind, _m, _n, k, _src), n in tot["mma"].items():
        flops = 2.0 * _m * _n * k * n / (4 if kind.endswith("GMMA") else 1)
        rate = dev.wgmma_bf16_flops * (1.0 if kind.endswith("GMMA") else dev.hmma_fraction)
        if k in (4, 8) and kind == "HMMA":  # TF32 shapes m16n8k4 / m16n8k8
            rate /= 2
        tensor += flops / rate
    b["tensor"] = tensor * share * dev.sms
    b["L2"] = bytes_l2 / dev.l2_bps
    b["DRAM"] = bytes_dram / dev.dram_bps
    lat = ASSUMPTIONS["mem_latency_cycles"][0]
    chain = tot["warp_instructions"] / num_warps / ctas + lat  # one warp's stream at 1 IPC + the first loads
    for lp in tot["loops"]:
        if not lp["_global_loads"]:
            continue
        stages = num_stages if lp["_cp_async"] else 1
        exposed = max(0.0, lat - (stages - 1) * lp["body_instructions"])
        chain += lp["iterations_per_program"] * exposed
    waves = math.ceil(ctas / (resident * dev.sms))
    b["latency"] = waves * chain / clk
    if tot.get("warp_cycles") is not None and tot["warp_instructions"] > 0:
        # Stall-bound issue (bench/sass/stalls.py): each scheduler runs `w` warps at once, each needing `c`
        # cycles alone for its own `n` instructions (its dependency stalls); they queue for their issue slot and
        # the pipes (mean value analysis), and the busiest SM runs `rounds` such rounds.
        at_once = min(resident, per_sm)
        rounds = math.ceil(per_sm / at_once)
        w = at_once * num_warps / dev.schedulers
        n = tot["warp_instructions"] / (ctas * num_warps)
        c = tot["warp_cycles"] / (ctas * num_warps)
        # cycles per instruction at each pipe (uniform and control instructions take only their issue slot)
        mix = {p: v / tot["warp_instructions"] for p, v in pipe_t.items() if p not in ("uniform", "control")}
        ipc = stalls.issue_rate(w, max(0.0, c / n - 1.0), [1.0, *mix.values()])
        b["dependency"] = rounds * w * n / ipc / clk
    key = max(b, key=lambda k: b[k])
    # L1 / shared data path, 128 B per clock per SM (CUDA C++ Best Practices / Hopper tuning guide): not in
    # the max (the MIO issue rate covers most of it); reported so a kernel it would bind is visible.
    l1_s = (tot["mem_l1"] * share) / (128 * clk)
    label = PIPE_LABEL[key.split(":")[1]] if key.startswith("pipe:") else key
    return {"bounds_s": b, "binding": key, "bound": label, "resident_ctas": resident, "occupancy_limit": limiter,
            "waves": waves, "time_s": b[key], "l1_s": l1_s}  # fmt: skip
