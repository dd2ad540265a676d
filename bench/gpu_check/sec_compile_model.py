"""Sections 3b and 6g: torch.compile, each in its own process (compiling costs tens of seconds and can hang).

3b first checks ``torch.compile`` of the ops themselves (conv1d_bn_relu + kl_div, ``fullgraph`` True and False,
against eager: output, loss, every gradient and the running mean within 1e-4), then compiles the train step's model
(``torch.compile(SoundNet8)``, the reference backend: Inductor's own fusion, what a user would try first; and the
"auto" backend, the fused conv1 inside the compiled graph) inside the same ``Stepper`` as section 3, reports the
compile time (the first step, forward and backward graphs) and clips/s in A/B/A order against eager in the same
process, and the first-step loss against eager's.
6g compiles again at half the batch (a second shape: a recompile, or automatic dynamic shapes).
"""

from __future__ import annotations

import time
from typing import Any

from .common import HEAD_CLASSES, clock_snapshot, nrel, sync, time_abab
from .records import FAIL, INFO, PASS
from .sec_throughput import LOSS_TOL, batch_for, first_loss, make_stepper, timing_row


def run(ctx: Any) -> None:
    import torch

    with ctx.w.part("torch.compile of the ops"):
        compile_ops(ctx.w, torch)
    compile_step(ctx, torch, ctx.sizes.batch)


def run_second_batch(ctx: Any) -> None:
    import torch

    compile_step(ctx, torch, max(2, ctx.sizes.batch // 2), variants=("compile",))


def compile_step(
    ctx: Any,
    torch: Any,
    batch: int,
    arch: Any = None,
    classes: tuple[int, ...] = tuple(HEAD_CLASSES.values()),
    variants: tuple[str, ...] = ("compile", "compile+auto"),
) -> None:
    """Compile time and clips/s of the train step around ``torch.compile(model)`` (SoundNet-8 by default), the model
    on the reference ops (``compile``) and on ``backend="auto"`` (``compile+auto``: the fused conv1 inside the
    compiled graph)."""
    if arch is None:
        from soundnet_fast.model import SoundNet8 as arch

    w, sz, dev = ctx.w, ctx.sizes, ctx.device
    torch.backends.cudnn.benchmark = True
    audio, targets, length = batch_for(torch, arch, *classes, batch, 0 if sz.smoke else sz.samples, dev)
    table = f"torch.compile({arch.__name__}) train step, batch {batch}"
    with w.part(f"compile batch {batch}"):
        eager, _ = make_stepper(torch, arch, classes, "eager", dev, audio, targets)
        loss_e = first_loss(eager, audio, targets)
        fns = {"eager": lambda: eager.step(audio, targets)}
        for variant in variants:
            t0 = time.perf_counter()
            comp, _ = make_stepper(torch, arch, classes, variant, dev, audio, targets)
            loss_c = first_loss(comp, audio, targets)  # compiles forward and backward
            compile_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            comp.step(audio, targets)
            sync(torch, dev)
            second_s = time.perf_counter() - t1
            d = abs(loss_c - loss_e) / max(abs(loss_e), 1e-30)
            w.row(
                table,
                {
                    "what": f"{variant}: compile (first step, forward + backward graphs) s",
                    "value": round(compile_s, 1),
                    "second step s": round(second_s, 3),
                },
                INFO,
            )
            w.row(
                table,
                {"what": f"{variant}: first-step loss vs eager (rel diff)", "value": d, "tol": LOSS_TOL},
                PASS if d <= LOSS_TOL else FAIL,
            )
            fns[variant] = lambda comp=comp: comp.step(audio, targets)
        before = clock_snapshot() if dev == "cuda" else {}
        res = time_abab(torch, fns, dev, 15, warmup=3)
        after = clock_snapshot() if dev == "cuda" else {}
        for v, t in res.items():
            w.row(f"{table}: timing", timing_row(v, t, batch, res.get("eager")), INFO)
        if before or after:
            clocks = {k: f"{before.get(k, '?')} / {after.get(k, '?')}" for k in before}
            w.row("clocks before / after", {"measurement": f"compile batch {batch}", **clocks})


GRAD_NAMES = ("x", "W", "b", "gamma", "beta", "running_mean", "running_var", "z", "p")  # fn's inputs


def compile_ops(w: Any, torch: Any) -> None:
    """torch.compile of conv1d_bn_relu + kl_div (fwd + bwd) against eager, fullgraph True and False."""
    from soundnet_fast import kernels as K

    def fn(x, wt, b, g, beta, rm, rv, z, p):
        # deterministic: with atomics, eager and compiled gradients would differ by their summation order
        y = K.conv1d_bn_relu(x, wt, b, g, beta, rm, rv, stride=2, padding=16, training=True, pool=8, deterministic=True)
        return y, K.kl_div(z, p, reduction="batchmean")

    def inputs():
        gen = torch.Generator(device="cpu").manual_seed(3)
        t = [
            torch.randn(4, 16, 4000, generator=gen),
            torch.randn(32, 16, 32, generator=gen) * 0.05,
            torch.randn(32, generator=gen),
            1 + 0.1 * torch.randn(32, generator=gen),
            torch.randn(32, generator=gen),
        ]
        z = torch.randn(4, 1000, 4, generator=gen) * 3
        p = torch.softmax(torch.randn(4, 1000, 4, generator=gen), 1)
        t = [a.cuda().requires_grad_() for a in t]
        return t + [torch.zeros(32, device="cuda"), torch.ones(32, device="cuda"), z.cuda().requires_grad_(), p.cuda()]

    for fullgraph in (True, False):
        torch._dynamo.reset()
        row: dict[str, Any] = {"torch.compile": f"fullgraph={fullgraph}"}
        try:
            eager_in, comp_in = inputs(), inputs()
            t0 = time.perf_counter()
            compiled = torch.compile(fn, fullgraph=fullgraph, dynamic=False)
            outs = [f(*a) for f, a in ((fn, eager_in), (compiled, comp_in))]
            for y, loss in outs:
                (y.float().square().sum() + loss).backward()
            torch.cuda.synchronize()
            errs = {
                "out": nrel(outs[1][0], outs[0][0]),
                "KL loss": abs(outs[1][1].item() - outs[0][1].item()) / abs(outs[0][1].item()),
                # db cancels to ~0 under batch statistics: its denominator is floored at |dW| (as in sec_parity)
                **{
                    f"grad {n}": nrel(c.grad, e.grad, floor=eager_in[1].grad.norm().item() if n == "b" else 0.0)
                    for n, e, c in zip(GRAD_NAMES, eager_in, comp_in, strict=True)
                    if e.grad is not None
                },
                "running_mean": nrel(comp_in[5], eager_in[5]),
            }
            row |= errs | {"compile + run s": round(time.perf_counter() - t0, 1)}
            ok = max(errs.values()) <= 1e-4
        except Exception as e:  # report, and try the other variant
            ok, row["error"] = False, f"{type(e).__name__}: {str(e)[:300]}"
        w.row("torch.compile of the ops (vs eager)", row, PASS if ok else FAIL)
