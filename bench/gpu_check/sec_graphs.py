"""CUDA-graph capture of the ops (run at the end of section 3): the KL loss and a conv training step.

Both must run with no host synchronisation (checked with ``torch.cuda.set_sync_debug_mode("error")``, which raises
on any) and no host-to-device copies, be captured after a side-stream warm-up, and give on replay - with new data
copied into the static inputs - what an eager call gives (KL: against float64; conv: against an eager step).
"""

from __future__ import annotations

from typing import Any

from .common import nrel
from .records import FAIL, PASS, SKIP

TABLE = "CUDA graph capture of the ops"


def run(ctx: Any) -> None:
    w = ctx.w
    if ctx.device != "cuda":
        for what in ("KL loss", "conv1d_bn_relu training step"):
            w.row(TABLE, {"check": what, "note": "skipped: no CUDA"}, SKIP)
        return
    import torch
    import torch.nn.functional as F

    from soundnet_fast import kernels as K

    with w.part("cuda graph KL"):
        e_loss, e_grad = _kl(torch, F, K)
        ok = e_loss <= 1e-5 and e_grad <= 1e-5
        w.row(
            TABLE,
            {
                "check": "KL loss: no host sync; fwd+bwd captured, replayed on new data vs float64",
                "out / loss err": e_loss,
                "grad err": e_grad,
            },
            PASS if ok else FAIL,
        )
    with w.part("cuda graph conv step"):
        err_o, err_g, nbt = _conv(torch, K)
        ok = err_o <= 1e-5 and err_g <= 1e-5 and nbt == 1
        w.row(
            TABLE,
            {
                "check": "conv1d_bn_relu training step (fwd, bwd, running stats) captured, replayed vs eager",
                "out / loss err": err_o,
                "grad err": err_g,
            },
            PASS if ok else FAIL,
        )


def _warm_and_capture(torch: Any, step: Any, reset: Any) -> Any:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            reset()
            step()
    torch.cuda.current_stream().wait_stream(side)
    reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out


def _no_sync(torch: Any, fn: Any) -> None:
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation in the op raises
    try:
        fn()
        torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _kl(torch: Any, F: Any, K: Any) -> tuple[float, float]:
    gen = torch.Generator(device="cpu").manual_seed(4)
    z = (torch.randn(64, 1000, 4, generator=gen) * 3).cuda().requires_grad_()
    p = torch.softmax(torch.randn(64, 1000, 4, generator=gen), 1).cuda()

    def step():
        loss = K.kl_div(z, p, reduction="batchmean")
        loss.backward()
        return loss

    def reset():
        z.grad = None

    _no_sync(torch, step)
    graph, loss = _warm_and_capture(torch, step, reset)
    with torch.no_grad():  # new data into the static inputs, then replay
        z.copy_(torch.randn(64, 1000, 4, generator=gen).cuda() * 2)
        p.copy_(torch.softmax(torch.randn(64, 1000, 4, generator=gen).cuda(), 1))
    graph.replay()
    torch.cuda.synchronize()
    zr = z.detach().double().requires_grad_()
    ref = F.kl_div(F.log_softmax(zr, 1), p.double(), reduction="batchmean")
    ref.backward()
    return abs(loss.item() - ref.item()) / abs(ref.item()), nrel(z.grad, zr.grad)


def _conv(torch: Any, K: Any) -> tuple[float, float, int]:
    """A conv2-sized training step (forward, backward, running-stat update) captured and replayed."""
    gen = torch.Generator(device="cpu").manual_seed(6)
    x = torch.randn(8, 16, 4000, generator=gen).cuda().requires_grad_()
    w = (torch.randn(32, 16, 32, generator=gen) * 0.05).cuda().requires_grad_()
    b, g, beta = (torch.randn(32, generator=gen).cuda().requires_grad_() for _ in range(3))
    rm, rv = torch.zeros(32, device="cuda"), torch.ones(32, device="cuda")
    nbt = torch.zeros((), device="cuda", dtype=torch.long)
    # (4000 + 2 * 16 - 32) // 2 + 1 = 2001 conv frames, 250 after the pool of 8
    grad = torch.randn(8, 32, 250, generator=gen).cuda()
    leaves = (x, w, b, g, beta)

    def step():
        y = K.conv1d_bn_relu(
            x, w, b, g, beta, rm, rv, stride=2, padding=16, training=True, pool=8, num_batches_tracked=nbt
        )
        y.backward(grad)
        return y

    def reset():
        for t in leaves:
            t.grad = None

    _no_sync(torch, step)
    graph, y = _warm_and_capture(torch, step, reset)
    with torch.no_grad():
        x.copy_(torch.randn(8, 16, 4000, generator=gen).cuda())
        rm.zero_(), rv.fill_(1.0), nbt.zero_()
    graph.replay()
    torch.cuda.synchronize()
    captured = [y.clone(), x.grad.clone(), w.grad.clone(), rm.clone()]
    reset()
    rm.zero_(), rv.fill_(1.0), nbt.zero_()
    y2 = step()
    err_g = max(nrel(captured[1], x.grad), nrel(captured[2], w.grad), nrel(captured[3], rm))
    return nrel(captured[0], y2), err_g, int(nbt)
