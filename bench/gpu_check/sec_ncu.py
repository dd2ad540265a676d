"""Section 5: Nsight Compute on up to 6 of the costliest kernels, where ``ncu`` is on PATH and works.

The kernels are the 6 slowest launches section 4 measured (else the 6 with the most FLOPs). A child process
(``python -m bench.gpu_check --ncu-child IDS``) makes their tensors and launches each once; ncu profiles exactly
those launches (``--kernel-name regex:^(names)$ --launch-count N``) and collects: instructions executed per pipe,
L2 (lts) and DRAM bytes, the L1 hits of global loads and the L2 reads their misses make, warp-state stall
reasons, duration, registers. Metric names are given as ncu regexes; if that attempt fails, a second one asks
for the equivalent sections (SpeedOfLight, MemoryWorkloadAnalysis,
ComputeWorkloadAnalysis, WarpStateStats, InstructionStats). ncu locks the clocks to base by default, so its
durations are not comparable with section 4's. Raw output (the .ncu-rep report, its CSV, ncu's log) is saved to
``ncu/`` in the output folder. Without ncu, without permission to the GPU counters (ERR_NVGPUCTRPERM) or when it
fails, the section records "ncu not available" and why: not a failure.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import launches as L
from . import plan
from .common import ROOT, load_checkout
from .records import FAIL, INFO, SKIP

MAX_KERNELS = 6
METRICS = ",".join(
    [
        "gpu__time_duration.sum",
        "smsp__inst_executed.sum",
        "dram__bytes_read.sum",
        "dram__bytes_write.sum",
        "lts__t_bytes.sum",
        # L1's share of the global loads (the static model charges every load to L2; these say how many L1 served)
        "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum",
        "l1tex__t_sectors_pipe_lsu_mem_global_op_ld_lookup_hit.sum",
        "lts__t_sectors_srcunit_tex_op_read.sum",
        "launch__registers_per_thread",
        r"regex:^smsp__inst_executed_pipe_[a-z0-9_]+\.sum$",
        r"regex:^smsp__average_warps_issue_stalled_[a-z0-9_]+_per_issue_active\.ratio$",
    ]
)
SECTIONS = ["SpeedOfLight", "MemoryWorkloadAnalysis", "ComputeWorkloadAnalysis", "WarpStateStats", "InstructionStats"]
SCALE = {"byte": 1, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}
TABLE = "Nsight Compute (base clocks)"


def find_ncu() -> str | None:
    found = shutil.which("ncu")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.access(Path(home) / "bin" / "ncu", os.X_OK):
            return str(Path(home) / "bin" / "ncu")
    return None


def pick(ctx: Any, launches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The slowest launches section 4 measured, else the ones with the most FLOPs."""
    measured: dict[tuple, float] = {}
    path = ctx.out / f"{plan.index('kernels'):02d}-kernels.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
                row = r.get("row", {})
                if r.get("type") == "row" and isinstance(row.get("us"), (int, float)):
                    measured[(row["layer"], row["kernel"], row["phase"])] = row["us"]
            except (ValueError, KeyError, AttributeError):
                continue
    key = lambda la: measured.get((la["layer"], la["kernel"], la["phase"][:3]), -1.0)
    if measured:
        return sorted(launches, key=key, reverse=True)[:MAX_KERNELS]
    return sorted(launches, key=lambda la: L.work(la)[0], reverse=True)[:MAX_KERNELS]


def run(ctx: Any) -> None:
    w = ctx.w
    ncu = find_ncu()
    if ncu is None:
        w.row(TABLE, {"ncu": "ncu not available (not on PATH, nor in $CUDA_HOME/bin or /usr/local/cuda/bin)"}, SKIP)
        return
    if ctx.device != "cuda":
        w.row(TABLE, {"ncu": f"{ncu} found; skipped: no CUDA"}, SKIP)
        return
    load_checkout()
    ver = subprocess.run([ncu, "--version"], capture_output=True, text=True, timeout=30)
    w.kv("ncu", f"{ncu}: {ver.stdout.strip().splitlines()[-1] if ver.stdout.strip() else 'version unknown'}")
    launches = L.bf16_training_launches(*ctx.launch_sizes)
    chosen = pick(ctx, launches)
    folder = ctx.out / "ncu"
    folder.mkdir(exist_ok=True)
    names = sorted({la["kernel"] for la in chosen})
    child = [
        sys.executable,
        "-m",
        "bench.gpu_check",
        "--ncu-child",
        ",".join(str(la["index"]) for la in chosen),
        "--out",
        str(ctx.out),
        "--batch",
        str(ctx.args.batch),
        "--seconds",
        str(ctx.args.seconds),
    ]
    base = [
        ncu,
        "--target-processes",
        "all",
        "--kernel-name",
        f"regex:^({'|'.join(names)})$",
        "--launch-count",
        str(len(chosen)),
        "--force-overwrite",
    ]
    attempts = [("metrics", ["--metrics", METRICS]), ("sections", [a for s in SECTIONS for a in ("--section", s)])]
    reason = "no attempt ran"
    for label, opts in attempts:
        left = ctx.deadline - time.time() - 10
        if left < 20:
            reason = f"{reason}; no time left for the '{label}' attempt"
            break
        rep = folder / f"profile-{label}"
        log = folder / f"ncu-{label}.log"
        cmd = base + opts + ["--export", str(rep), "--log-file", str(log)] + child
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=left, cwd=ROOT)
        except subprocess.TimeoutExpired:
            reason = f"'{label}' attempt timed out after {left:.0f} s"
            continue
        (folder / f"child-{label}.txt").write_text(res.stdout[-20000:] + "\n--- stderr ---\n" + res.stderr[-20000:])
        text = log.read_text(errors="replace") if log.exists() else res.stdout + res.stderr
        rows = _import_csv(ncu, rep, folder / f"raw-{label}.csv")
        if rows:
            child_ok = "NCU-CHILD-OK" in res.stdout
            _report(w, rows, chosen, label)
            if not child_ok:
                w.row(TABLE, {"ncu": f"the profiled child did not finish (exit {res.returncode}): see ncu/"}, FAIL)
            return
        reason = _why(text, res.returncode, label)
        if "ERR_NVGPUCTRPERM" in text:
            break
    w.row(TABLE, {"ncu": f"ncu not available: {reason} (raw output in ncu/)"}, SKIP)


def _why(text: str, rc: int, label: str) -> str:
    if "ERR_NVGPUCTRPERM" in text:
        return "no permission to the GPU performance counters (ERR_NVGPUCTRPERM)"
    errs = [ln.strip() for ln in text.splitlines() if "==ERROR==" in ln or "==WARNING==" in ln]
    return f"'{label}' attempt exit {rc}: " + ("; ".join(errs[:3]) if errs else "no kernel profiled")


def _import_csv(ncu: str, rep: Path, dest: Path) -> list[dict[str, str]]:
    """Rows of ``ncu --import REP --csv --page raw`` (one dict per profiled kernel; row 0 holds the units)."""
    path = rep.with_suffix(".ncu-rep") if rep.suffix != ".ncu-rep" else rep
    if not path.exists():
        return []
    res = subprocess.run(
        [ncu, "--import", str(path), "--csv", "--page", "raw"], capture_output=True, text=True, timeout=120
    )
    dest.write_text(res.stdout)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith('"')]
    table = list(csv.reader(io.StringIO("\n".join(lines))))
    if len(table) < 3:
        return []
    head = table[0]
    return [dict(zip(head, r, strict=False)) for r in table[1:]]


def _num(row: dict[str, str], units: dict[str, str], key: str) -> float | None:
    try:
        v = float(row[key].replace(",", ""))
    except (KeyError, ValueError):
        return None
    return v * SCALE.get(units.get(key, "").lower(), 1.0)


def _report(w: Any, rows: list[dict[str, str]], chosen: list[dict[str, Any]], label: str) -> None:
    units, data = rows[0], rows[1:]
    for i, r in enumerate(data):
        la = chosen[i] if i < len(chosen) else {}
        pipes = {k: _num(r, units, k) for k in r if "inst_executed_pipe_" in k and k.endswith(".sum")}
        stalls = {k: _num(r, units, k) for k in r if "issue_stalled" in k and k.endswith("per_issue_active.ratio")}
        top = lambda d, strip: ", ".join(
            f"{k.split(strip)[-1].split('.')[0].replace('_per_issue_active', '')} {v:.3g}"
            for k, v in sorted(((k, v) for k, v in d.items() if v), key=lambda kv: -kv[1])[:4]
        )
        dram = sum(v for v in (_num(r, units, "dram__bytes_read.sum"), _num(r, units, "dram__bytes_write.sum")) if v)
        ld = _num(r, units, "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum")
        hit = _num(r, units, "l1tex__t_sectors_pipe_lsu_mem_global_op_ld_lookup_hit.sum")
        l2_read = _num(r, units, "lts__t_sectors_srcunit_tex_op_read.sum")
        w.row(
            TABLE,
            {
                "kernel": r.get("Kernel Name", "?"),
                "layer (launch order)": f"{la.get('layer', '?')} {la.get('phase', '')[:3]}",
                "us": _num(r, units, "gpu__time_duration.sum") or "-",
                "warp-instr": _num(r, units, "smsp__inst_executed.sum") or "-",
                "DRAM MB": round(dram / 1e6, 2) if dram else "-",
                "L2 MB": round((_num(r, units, "lts__t_bytes.sum") or 0) / 1e6, 2) or "-",
                "L1 global-load hit %": round(100 * hit / ld, 1) if ld and hit is not None else "-",
                "L2 MB read by L1": round(l2_read * 32 / 1e6, 2) if l2_read is not None else "-",  # 32 B sectors
                "regs": r.get("launch__registers_per_thread", "-"),
                "top pipes (warp-instr)": top(pipes, "inst_executed_pipe_") or "-",
                "top stalls (cycles per issue)": top(stalls, "issue_stalled_") or "-",
            },
            INFO,
        )
    w.note(f"ncu '{label}' attempt: {len(data)} kernel(s) profiled; raw CSV and report in ncu/.")


def child(args: Any) -> int:
    """The process ncu profiles: launch each chosen kernel once, in the given order."""
    from .runner import set_parent_death_signal, sizes_from

    set_parent_death_signal()
    load_checkout()
    import torch

    sizes = sizes_from(args)
    launches = L.bf16_training_launches(sizes.batch, sizes.samples)
    ids = [int(i) for i in args.ncu_child.split(",") if i]
    prepared = []
    for i in ids:
        la = launches[i]
        prepared.append((L.resolve(la), tuple(la["grid"]), *L.materialize(la, "cuda", seed=i)))
    torch.cuda.synchronize()
    for kernel, grid, a, k in prepared:
        kernel[grid](*a, **k)
    torch.cuda.synchronize()
    print("NCU-CHILD-OK", flush=True)
    return 0
