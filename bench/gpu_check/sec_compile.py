"""Section 1: compile every distinct specialisation of a bf16 training step before anything is timed.

The launches come from :mod:`bench.gpu_check.launches` (meta tensors, no GPU needed); distinct specialisations
(kernel, dtypes, integer specialisation, constexprs, num_warps) are compiled in a spawn-started process pool with
``kernel.warmup(...)`` on the device, so they land in the one ``TRITON_CACHE_DIR`` the parent set for the whole
run and later sections load them from disk instead of compiling inside a timing. Reported per specialisation:
compile seconds, registers, spills and shared memory (the compiled kernel's metadata), and the limits a launch
must respect (grid axes 1 and 2 <= 65,535; shared memory within the device's, checked when the binary is loaded).

Under the Triton interpreter (--smoke) nothing can be compiled: the specialisations are still enumerated and the
pool still resolves every kernel and builds its warmup arguments, and each one reads "skipped under interpreter".
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time
import traceback
from typing import Any

from . import launches as L
from .records import FAIL, PASS, SKIP

GRID_LIMITS = (2**31 - 1, 65535, 65535)
_INTERPRET = False


def _init_worker(interpret: bool) -> None:
    global _INTERPRET
    from .runner import set_parent_death_signal

    set_parent_death_signal()
    _INTERPRET = interpret
    from .common import load_checkout

    load_checkout()
    import soundnet_fast.kernels  # noqa: F401  (defines the kernels once per worker, outside the timings)

    if not interpret:
        import torch
        from triton.runtime import driver

        torch.cuda.current_device()
        driver.active.get_current_target()


def compile_one(launch: dict[str, Any]) -> dict[str, Any]:
    """Compile one specialisation in a pool worker; returns its metadata or the error (never raises)."""
    try:
        kernel = L.resolve(launch)
        args, kwargs = L.warmup_args(launch)
        if _INTERPRET:
            return {"status": "skipped under interpreter", "seconds": 0.0, "pid": os.getpid()}
        t0 = time.perf_counter()
        ck = kernel.warmup(*args, grid=tuple(launch["grid"]), **kwargs)
        if hasattr(ck, "result"):  # asynchronous compile mode returns a future
            ck = ck.result()
        seconds = time.perf_counter() - t0
        ck._init_handles()  # loads the binary: registers, spills, and the device's shared-memory limit
        return {
            "status": "compiled",
            "seconds": seconds,
            "regs": int(ck.n_regs),
            "spills": int(ck.n_spills),
            "smem_bytes": int(ck.metadata.shared),
            "pid": os.getpid(),
        }
    except Exception as e:
        return {
            "status": "error",
            "error": f"{type(e).__name__}: {e}"[:1500],
            "traceback": traceback.format_exc()[-3000:],
        }


def short_constexprs(c: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in c.items() if k not in ("INTERP",))


def run(ctx: Any) -> None:
    w, sizes = ctx.w, ctx.sizes
    batch, samples = ctx.launch_sizes
    launches = L.bf16_training_launches(batch, samples)
    w.data("launches", launches)
    groups: dict[str, list[dict[str, Any]]] = {}
    for la in launches:
        groups.setdefault(L.spec_key(la), []).append(la)
    for la in launches:
        over = [g for g, lim in zip(la["grid"], GRID_LIMITS, strict=False) if g > lim]
        if over:
            w.row("grid limits", {"layer": la["layer"], "kernel": la["kernel"], "grid": la["grid"]}, FAIL)
    # one worker on the smoke run (only the plumbing is exercised there); leave one core to the parent on a GPU host
    workers = 1 if sizes.smoke else max(1, min(len(groups), (os.cpu_count() or 2) - 1, 16))
    w.note(
        f"{len(launches)} Triton launches per bf16 training step of SoundNet-8 at batch {batch}, {samples:,} samples "
        f"(trunk forward + backward with atomics, KL of both heads); {len(groups)} distinct specialisations, compiled "
        f"with kernel.warmup in a pool of {workers} spawn-started processes sharing TRITON_CACHE_DIR="
        f"{os.environ.get('TRITON_CACHE_DIR', 'unset')}."
    )
    t0 = time.time()
    reps = [grp[0] for grp in groups.values()]
    results: dict[int, dict[str, Any]] = {}
    ctxm = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctxm, initializer=_init_worker, initargs=(sizes.smoke,)) as pool:
        t_pool = time.time()
        futs = {pool.submit(compile_one, la): i for i, la in enumerate(reps)}
        for fut in cf.as_completed(futs):
            i = futs[fut]
            try:
                results[i] = fut.result()
            except Exception as e:  # a worker died (BrokenProcessPool)
                results[i] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
            _report(w, reps[i], groups[L.spec_key(reps[i])], results[i])
    wall = time.time() - t0
    done = [r for r in results.values() if r["status"] == "compiled"]
    summary = {
        "specialisations": len(reps),
        "compiled": len(done),
        "wall s (pool start included)": round(wall, 2),
        "wall s after pool start": round(time.time() - t_pool, 2),
        "sum of compile s": round(sum(r["seconds"] for r in done), 2),
        "max regs": max((r["regs"] for r in done), default="-"),
        "max smem KB": round(max((r["smem_bytes"] for r in done), default=0) / 1024, 1),
    }
    if sizes.smoke:
        w.row("precompile total", summary, SKIP)
        w.skip("compile skipped under interpreter: the specialisations above were enumerated and resolved only")
    else:
        w.row("precompile total", summary, PASS if len(done) == len(reps) else FAIL)


def _report(w: Any, la: dict[str, Any], group: list[dict[str, Any]], res: dict[str, Any]) -> None:
    layers = sorted({g["layer"] for g in group})
    row = {
        "kernel": la["kernel"],
        "layers": ",".join(layers),
        "phase": la["phase"],
        "constexprs": short_constexprs(la["constexprs"]),
        "compile s": round(res.get("seconds", 0.0), 2),
        "regs": res.get("regs", "-"),
        "spills": res.get("spills", "-"),
        "smem KB": round(res["smem_bytes"] / 1024, 1) if "smem_bytes" in res else "-",
    }
    if res["status"] == "error":
        row["error"] = res["error"]
    status = {"compiled": PASS, "error": FAIL}.get(res["status"], SKIP)
    w.row("specialisations", row, status)
