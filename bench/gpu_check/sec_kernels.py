"""Section 4: every Triton launch of a bf16 training step, timed alone, beside its static prediction.

Each launch recorded in section 1 (:func:`~bench.gpu_check.launches.bf16_training_launches`) is launched directly
(``kernel[grid](...)``) on tensors of its shapes and timed with ``triton.testing.do_bench`` (quantiles 0.5 / 0.2 /
0.8). do_bench flushes the L2 before every timed call - it zeroes a 256 MB buffer first (the H100 / H200 L2 is
50-60 MB) - so each call reads its inputs from DRAM, as in a training step where the previous kernel's outputs
mostly no longer fit the L2. Reported: achieved TFLOP/s (multiply-adds x 2 of its implicit GEMMs, recompute
included) and GB/s (its tensor arguments' bytes, each counted once), registers and spills (the compiled kernel's
``n_regs`` / ``n_spills``), shared memory, and - where ``bench/sass_report.py``'s prediction file matches the
launch - the predicted time, warp-instructions and the warp-IPC they imply:

    warp-IPC = predicted warp-instructions / (time_s x SMs x 4 schedulers x SM clock Hz)

(528 = 132 SMs x 4 on an H100 SXM / H200; the SM clock is read with nvidia-smi right after the measurement, at
most every 2 s), i.e. the fraction of the SM's issue rate the kernel would use if the predicted instruction count is
right. Sums per phase give a kernels-only step time and clips/s beside the prediction file's. Last, each block
alone, forward + backward, eager (cuDNN) vs fused, in A/B/B/A order: which layers the fusion pays on.
"""

from __future__ import annotations

import time
from typing import Any

from . import launches as L
from .common import SAMPLE_RATE, ClockReader
from .predictions import NO_PREDICTION, Predictions, device_key, predicted_us
from .records import INFO, SKIP

TABLE = "per launch: measured vs predicted"


def run(ctx: Any) -> None:
    import torch
    import triton

    w = ctx.w
    batch, samples = ctx.launch_sizes
    launches = L.bf16_training_launches(batch, samples)
    pred = Predictions(triton.__version__, batch, samples / SAMPLE_RATE, ctx.args.predictions)
    w.note(f"Predictions: {pred.source}.")
    if ctx.device != "cuda":
        _smoke(ctx, torch, launches, pred)
        return
    from triton.testing import do_bench

    name = torch.cuda.get_device_name(0)
    dk = device_key(name)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    w.note(
        f"{len(launches)} launches at batch {batch}, {samples:,} samples; do_bench with its L2 flush (a 256 MB buffer "
        f"zeroed before every call); warp-IPC = predicted warp-instructions / (time x {sms} SMs x 4 x SM clock). "
        f"Predicted figures for the {dk}."
    )
    totals = {"forward": [0.0, 0.0], "backward": [0.0, 0.0]}
    sm_clock_mhz = ClockReader(interval=2.0)
    for la in launches:
        with w.part(f"{la['layer']} {la['kernel']}"):
            kernel = L.resolve(la)
            args, kwargs = L.materialize(la, "cuda", seed=la["index"])
            grid = tuple(la["grid"])
            ck = kernel[grid](*args, **kwargs)  # loads the binary section 1 compiled (TRITON_CACHE_DIR)
            torch.cuda.synchronize()
            med, p20, p80 = do_bench(
                lambda kernel=kernel, grid=grid, a=args, k=kwargs: kernel[grid](*a, **k), quantiles=[0.5, 0.2, 0.8]
            )
            mhz = sm_clock_mhz()
            row = _row(la, med, p20, p80, mhz, ck, pred, dk, sms)
            phase = "backward" if la["phase"] == "backward" else "forward"
            totals[phase][0] += med * 1e3
            totals[phase][1] += predicted_us(pred.launch(la), dk) or 0.0
            w.row(TABLE, row, INFO)
            del args, kwargs
    torch.cuda.empty_cache()
    with w.part("blocks eager vs fused"):
        blocks_eager_vs_fused(w, torch, batch, samples)
    total = sum(t[0] for t in totals.values())
    ptotal = sum(t[1] for t in totals.values())
    for ph, (m, p) in totals.items():
        w.row(
            "sum over launches",
            {"phase": ph, "measured us": round(m, 1), "predicted us": round(p, 1) if p else NO_PREDICTION},
        )
    w.row(
        "sum over launches",
        {
            "phase": "step (kernels only)",
            "measured us": round(total, 1),
            "predicted us": round(ptotal, 1) if ptotal else NO_PREDICTION,
            "clips/s (kernels only)": round(batch / (total * 1e-6), 1),
            "predicted clips/s (file)": pred.clips_per_s(dk) or NO_PREDICTION,
        },
        INFO,
    )


def _row(
    la: dict, med: float, p20: float, p80: float, mhz: float | None, ck: Any, pred: Predictions, dk: str, sms: int
):
    flops, nbytes = L.work(la)
    t = med * 1e-3
    p = pred.launch(la)
    row: dict[str, Any] = {
        "layer": la["layer"],
        "phase": la["phase"][:3],
        "kernel": la["kernel"],
        "grid": la["grid"],
        "us": round(med * 1e3, 2),
        "p20-p80 us": f"{p20 * 1e3:.1f}-{p80 * 1e3:.1f}",
        "TFLOP/s": round(flops / t / 1e12, 2) if flops else "-",
        "GB/s": round(nbytes / t / 1e9, 1),
        "regs": getattr(ck, "n_regs", "-"),
        "spills": getattr(ck, "n_spills", "-"),
        "smem KB": round(ck.metadata.shared / 1024, 1) if hasattr(ck, "metadata") else "-",
        "SM MHz": mhz if mhz is not None else "unknown",
    }
    if p is None:
        row["predicted"] = NO_PREDICTION
        return row
    pus = predicted_us(p, dk)
    wi = p.get("warp_instructions")
    row["pred us"] = round(pus, 2) if pus is not None else "-"
    row["meas/pred"] = round(med * 1e3 / pus, 2) if pus else "-"
    row["pred regs"] = p.get("regs", "-")
    row["pred spill B"] = p.get("spill_bytes", "-")
    row["pred warp-instr"] = float(wi) if wi is not None else "-"
    row["warp-IPC"] = round(float(wi) / (t * sms * 4 * mhz * 1e6), 3) if wi and mhz else "-"
    return row


def _smoke(ctx: Any, torch: Any, launches: list[dict[str, Any]], pred: Predictions) -> None:
    """CPU: no do_bench (no driver). Every launch is listed with its work and prediction match; the smallest launch
    of each kernel gets its tensors made, and the statistics merges of conv6 / conv7 run under the interpreter, to
    exercise materialize() and the launch path."""
    w = ctx.w
    w.skip(
        "skipped: no CUDA (do_bench needs a driver): launches listed with their predictions; tensors made for the "
        "smallest launch of each kernel; the statistics merges of conv6 / conv7 run once under the interpreter"
    )
    smallest: dict[str, dict[str, Any]] = {}
    for la in launches:
        if la["kernel"] not in smallest or L.work(la)[1] < L.work(smallest[la["kernel"]])[1]:
            smallest[la["kernel"]] = la
    for la in launches:
        flops, nbytes = L.work(la)
        p = pred.launch(la)
        row = {
            "layer": la["layer"],
            "phase": la["phase"][:3],
            "kernel": la["kernel"],
            "grid": la["grid"],
            "GFLOP": round(flops / 1e9, 3),
            "MB": round(nbytes / 1e6, 2),
            "pred us (H200)": predicted_us(p, "H200") if p else NO_PREDICTION,
        }
        run = la["kernel"] == "_merge_stats_kernel" and la["layer"] in ("conv6", "conv7")
        if run or smallest[la["kernel"]] is la:
            with w.part(f"interpreter {la['layer']} {la['kernel']}"):
                args, kwargs = L.materialize(la, "cpu", seed=la["index"])
                row["tensors made"] = len([a for a in list(args) + list(kwargs.values()) if hasattr(a, "dtype")])
                if run:
                    t0 = time.perf_counter()
                    L.resolve(la)[tuple(la["grid"])](*args, **kwargs)
                    row["interpreter ms"] = round((time.perf_counter() - t0) * 1e3, 1)
        w.row(TABLE, row, SKIP)


def blocks_eager_vs_fused(w: Any, torch: Any, batch: int, samples: int) -> None:
    """Each block alone, forward + backward in bf16 (BN parameters fp32), eager (cuDNN) vs the fused op: which
    layers the fusion pays on (the per-launch table above splits the fused side into its kernels)."""
    import torch.nn.functional as F

    from soundnet_fast.kernels import conv1d_bn_relu

    from .common import time_abab
    from .sec_parity import block_shapes, make_inputs

    torch.backends.cudnn.benchmark = True
    for name, c_in, length, c_out, k, s, p, pool in block_shapes(samples):
        xs = make_inputs(torch, c_in, length, c_out, k, batch, "cuda")
        ps = [t.to(torch.bfloat16) if i < 3 else t for i, t in enumerate(xs)]
        ps = [t.requires_grad_(i > 0 or c_in > 1) for i, t in enumerate(ps)]
        rm, rv = torch.zeros(c_out, device="cuda"), torch.ones(c_out, device="cuda")

        def eager(ps=ps, rm=rm, rv=rv, s=s, p=p, pool=pool):
            y = F.relu(F.batch_norm(F.conv1d(ps[0], ps[1], ps[2], s, p), rm, rv, ps[3], ps[4], True, 0.1, 1e-5))
            return F.max_pool1d(y, pool, pool) if pool else y

        def fused(ps=ps, rm=rm, rv=rv, s=s, p=p, pool=pool):
            return conv1d_bn_relu(*ps, rm, rv, stride=s, padding=p, training=True, pool=pool)

        grad = torch.randn(fused().shape, device="cuda", dtype=torch.bfloat16)
        fns = {v: (lambda f=f, g=grad: f().backward(g)) for v, f in (("eager", eager), ("fused", fused))}
        res = time_abab(torch, fns, "cuda", 10, warmup=2)
        e, f = res["eager"]["median"], res["fused"]["median"]
        w.row(
            f"per block, bf16 forward + backward, batch {batch}: eager vs fused (A/B/B/A, 20 calls each)",
            {"block": name, "eager ms": round(e, 3), "fused ms": round(f, 3), "speedup": f"{e / f:.2f}x"},
            INFO,
        )
        del xs, ps
