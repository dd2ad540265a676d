"""kl_div against F.kl_div(F.log_softmax(z, dim), p, reduction) (float64 reference; eager bf16 for halves)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from soundnet_fast.kernels import kl_div
from soundnet_fast.kernels.kl_div import _kl_op
from tests.helpers.kernels import max_rel, norm_rel

SHAPES = {  # (shape, dim)
    "NCT": ((3, 7, 5), 1),
    "NC": ((4, 10), 1),
    "NC_rows_aligned": ((3, 1000), 1),  # classes last, C % 4 == 0: rows and the class count taken out by 4 (VEC_I)
    "soundnet_head": ((2, 1000, 4), 1),  # C > one block under GPU sizes, T = 4 (docs/design.md#model)
    "dim_last": ((2, 3, 33), 2),
    "dim0": ((5, 6), 0),
    "negative_dim": ((2, 6, 3), -2),
}


def _inputs(shape, dim, seed=0, zeros=True):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    p = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64) * 2, dim)
    if zeros:  # teachers assign exact zeros: 0 * log 0 = 0
        p = torch.where(p < 0.05, torch.zeros_like(p), p)
    return z, p


def _reference(z, p, dim, reduction, grad=None):
    zr = z.clone().requires_grad_()
    with pytest.warns(UserWarning) if reduction == "mean" else _nullcontext():
        loss = F.kl_div(F.log_softmax(zr, dim), p, reduction=reduction)
    if grad is None:
        grad = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=loss.dtype)
    loss.backward(grad)
    return loss.detach(), zr.grad, grad


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_fp32_matches_float64(name: str, reduction: str) -> None:
    shape, dim = SHAPES[name]
    z, p = _inputs(shape, dim)
    loss_r, grad_r, go = _reference(z, p, dim, reduction)
    zf = z.float().requires_grad_()
    loss = kl_div(zf, p.float(), dim=dim, reduction=reduction)
    assert loss.dtype == torch.float32 and loss.shape == loss_r.shape
    loss.backward(go.float())
    assert max_rel(loss, loss_r) <= 1e-5
    assert max_rel(zf.grad, grad_r) <= 1e-5


def test_reductions_mean_what_pytorch_means() -> None:
    z, p = _inputs((4, 5, 3), 1)
    terms = kl_div(z.float(), p.float(), reduction="none").double()
    total = terms.sum()
    for red, expect in (("sum", total), ("mean", total / terms.numel()), ("batchmean", total / 4)):
        assert max_rel(kl_div(z.float(), p.float(), reduction=red), expect) <= 1e-5
    # p == 0 contributes exactly 0 (xlogy convention), also against very negative logits
    z0 = torch.tensor([[-1e4, 0.0, 1.0]])
    p0 = torch.tensor([[0.0, 0.5, 0.5]])
    assert torch.isfinite(kl_div(z0, p0, reduction="sum"))
    assert kl_div(z0, p0, reduction="none")[0, 0] == 0


@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_bf16_logits_vs_eager(reduction: str) -> None:
    z, p = _inputs((3, 40, 4), 1, seed=3)
    z = z.bfloat16().double()
    loss_r, grad_r, go = _reference(z, p, 1, reduction)
    loss_e, grad_e, _ = _reference(z.bfloat16(), p.bfloat16(), 1, reduction, go.bfloat16())
    zb = z.bfloat16().requires_grad_()
    loss = kl_div(zb, p.bfloat16(), reduction=reduction)
    loss.backward(go.to(loss.dtype))
    assert loss.dtype == torch.bfloat16 and zb.grad.dtype == torch.bfloat16
    assert norm_rel(loss, loss_r) <= 2 * norm_rel(loss_e, loss_r)
    assert norm_rel(zb.grad, grad_r) <= 2 * norm_rel(grad_e, grad_r)


def test_gradient_only_when_needed_and_teacher_constant() -> None:
    z, p = _inputs((2, 5, 3), 1)
    _, grad = _kl_op(z.float(), p.float(), 1, "sum", False)
    assert grad.numel() == 0
    with torch.no_grad():
        assert kl_div(z.float().requires_grad_(), p.float()).grad_fn is None
    with pytest.raises(ValueError, match="teacher"):
        kl_div(z.float(), p.float().requires_grad_())
    with pytest.raises(ValueError, match="reduction"):
        kl_div(z.float(), p.float(), reduction="average")


def test_autocast_gives_fp32_loss() -> None:
    z, p = _inputs((2, 8, 4), 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = kl_div(z.bfloat16(), p.bfloat16(), reduction="batchmean")
    assert loss.dtype == torch.float32


def test_no_data_dependent_python() -> None:
    """Forward and backward run on meta tensors: nothing reads a tensor's value on the host (the
    condition for CUDA-graph capture, checked on a GPU by bench/gpu_check.py)."""
    z = torch.empty(4, 10, 3, device="meta", requires_grad=True)
    p = torch.empty(4, 10, 3, device="meta")
    for red in ("mean", "batchmean", "sum", "none"):
        loss = kl_div(z, p, reduction=red)
        (g,) = torch.autograd.grad(loss, z, torch.ones_like(loss))
        assert g.shape == z.shape and g.device.type == "meta"


def test_opcheck() -> None:
    z, p = _inputs((3, 7, 5), 1)
    for red in ("mean", "batchmean", "sum", "none"):
        torch.library.opcheck(_kl_op, (z.float().requires_grad_(), p.float(), 1, red, True))
    torch.library.opcheck(_kl_op, (z.float(), p.float(), 1, "sum", False))
