"""KL(teacher || softmax(student)) with its gradient computed in the forward pass (docs/design.md#loss-kernel).

``kl_div(z, p, dim=1, reduction=...)`` equals ``F.kl_div(F.log_softmax(z, dim), p, reduction=...)`` with
today's PyTorch meaning of each reduction: "mean" divides the sum by the number of elements,
"batchmean" by the batch size (``z.shape[0]``), "sum" and "none" as named; 0 * log 0 = 0 where p == 0.
docs/design.md#loss: the distillation loss needs its scale spelled out (sums divided by counts), which
is what these reductions are; "mean" is NOT the per-time-step batchmean.

One fp32 Triton kernel computes, per position along ``dim``, the log-softmax (online max / sum-exp),
the loss terms and the gradient ``(softmax(z) * sum(p) - p) * scale``, stored for the backward, which
only multiplies it by grad_output. (With ``reduction="none"`` the gradient mixes grad_output across
classes, ``softmax(z) * sum(g * p) - g * p``, so softmax(z) is stored and the backward does that.)
Nothing synchronises with the host (no ``.item()``, no branching on tensor values), so forward and
backward can be captured in a CUDA graph. The teacher probabilities are a constant: ``teacher_probs``
must not require grad.
"""

import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ._common import INTERPRET, clamp_pow2, no_autocast, use_triton

# fmt: off
# Hand-wrapped on purpose: Triton kernels and launches take 15-30 arguments, and one per line (the
# formatter's layout) would triple these files' length without making them clearer.

REDUCTIONS = ("mean", "batchmean", "sum", "none")


@triton.jit
def _kl_kernel(z_ptr, p_ptr, loss_ptr, grad_ptr, part_ptr, C, INNER, s_o, s_c, s_i, scale,
               BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr, VEC: tl.constexpr, VEC_I: tl.constexpr,
               EVEN_I: tl.constexpr, NONE: tl.constexpr, GRAD: tl.constexpr):
    """Program o * n_ib + ib: the C classes of positions i in [ib * BLOCK_I, ...) of outer index o; element
    (o, c, i) sits at o * s_o * VEC + c * s_c * VEC + i * s_i * VEC_I in every (contiguous) tensor (VEC: a common
    factor of the outer and class strides, taken out so that the compiler sees a run of VEC positions 16 bytes
    aligned; VEC_I the same for the position stride when classes are last, so each row's run of classes is; C
    arrives divided by VEC_I too, so the class mask is constant over runs of VEC_I).
    Writes the per-element loss (NONE) or this program's partial sum times ``scale`` (the reduction's factor: the
    launcher's fixed-order sum of the partials is then the loss, no torch op to scale it), and the gradient
    (GRAD)."""
    C = C * VEC_I
    n_ib = tl.cdiv(INNER, BLOCK_I)
    ib = tl.program_id(0) % n_ib  # one grid axis: CUDA caps axes 1 and 2 at 65,535
    o = tl.program_id(0) // n_ib
    i = ib * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = i < INNER
    if EVEN_I:  # whole blocks of positions: no mask along i, so a run of VEC positions loads as one vector
        i_ok = i >= 0
    base = o.to(tl.int64) * s_o * VEC
    run_max = tl.full((BLOCK_I,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_I,), dtype=tl.float32)
    p_sum = tl.zeros((BLOCK_I,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):  # pass 1: log-sum-exp (online) and sum(p)
        c = c0 + tl.arange(0, BLOCK_C)
        ok = (c < C)[:, None] & i_ok[None, :]
        off = base + c[:, None] * s_c * VEC + i[None, :].to(tl.int64) * s_i * VEC_I
        z = tl.load(z_ptr + off, mask=ok, other=float("-inf")).to(tl.float32)
        p = tl.load(p_ptr + off, mask=ok, other=0.0).to(tl.float32)
        new_max = tl.maximum(run_max, tl.max(z, axis=0))
        safe = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - safe) + tl.sum(tl.exp(z - safe[None, :]), axis=0)
        run_max = new_max
        p_sum += tl.sum(p, axis=0)
    lse = tl.where(i_ok, run_max + tl.log(tl.where(i_ok, run_sum, 1.0)), 0.0)
    acc = tl.zeros((BLOCK_I,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):  # pass 2: loss terms and gradient
        c = c0 + tl.arange(0, BLOCK_C)
        ok = (c < C)[:, None] & i_ok[None, :]
        off = base + c[:, None] * s_c * VEC + i[None, :].to(tl.int64) * s_i * VEC_I
        z = tl.load(z_ptr + off, mask=ok, other=0.0).to(tl.float32)
        p = tl.load(p_ptr + off, mask=ok, other=0.0).to(tl.float32)
        logq = z - lse[None, :]
        # xlogy(p, p) - p * logq, F.kl_div's formula: 0 where p == 0, NaN where p < 0 as in PyTorch.
        plogp = tl.where(p == 0.0, 0.0, p * tl.log(tl.where(p == 0.0, 1.0, p)))
        term = plogp - p * logq
        if NONE:
            tl.store(loss_ptr + off, term, mask=ok)
        else:
            acc += tl.sum(tl.where(ok, term, 0.0), axis=0)
        if GRAD:
            if NONE:  # the gradient mixes grad_output across classes: keep softmax(z) for backward
                tl.store(grad_ptr + off, tl.exp(logq), mask=ok)
            else:
                tl.store(grad_ptr + off, (tl.exp(logq) * p_sum[None, :] - p) * scale, mask=ok)
    if not NONE:
        tl.store(part_ptr + tl.program_id(0), tl.sum(acc, axis=0) * scale)


def _scale(shape: tuple[int, ...], reduction: str) -> float:
    if reduction == "mean":
        return 1.0 / max(1, math.prod(shape))
    if reduction == "batchmean":
        return 1.0 / max(1, shape[0])
    return 1.0


def _result_dtype(z: Tensor, p: Tensor) -> torch.dtype:
    return torch.promote_types(z.dtype, p.dtype)


def reference_kl(z: Tensor, p: Tensor, dim: int, reduction: str, compute_grad: bool) -> tuple[Tensor, Tensor]:
    """Plain PyTorch (fp32) loss and gradient with the op's outputs."""
    with no_autocast(z.device):
        zf, pf = z.float(), p.float()
        logq = torch.log_softmax(zf, dim)
        terms = torch.xlogy(pf, pf) - pf * logq
        scale = _scale(tuple(z.shape), reduction)
        loss = terms if reduction == "none" else terms.sum() * scale
        if not compute_grad:
            grad = zf.new_empty(0)
        elif reduction == "none":
            grad = logq.exp()
        else:
            grad = (logq.exp() * pf.sum(dim, keepdim=True) - pf) * scale
        return loss.to(_result_dtype(z, p)), grad


@triton_op("soundnet_fast::kl_div", mutates_args=())
def _kl_op(z: Tensor, p: Tensor, dim: int, reduction: str, compute_grad: bool) -> tuple[Tensor, Tensor]:
    """(loss, gradient w.r.t. z in fp32 already scaled by the reduction; for "none", softmax(z);
    empty without compute_grad)."""
    if not use_triton(z):
        return reference_kl(z, p, dim, reduction, compute_grad)
    return triton_kl(z, p, dim, reduction, compute_grad)


def triton_kl(z: Tensor, p: Tensor, dim: int, reduction: str, compute_grad: bool) -> tuple[Tensor, Tensor]:
    """The Triton path of the op (launcher)."""
    z, p = z.contiguous(), p.contiguous()
    shape = tuple(z.shape)
    c = shape[dim]
    outer = math.prod(shape[:dim])
    inner = math.prod(shape[dim + 1:])
    strides = (c * inner, inner, 1)
    rows = inner == 1
    if rows:  # classes last, e.g. (N, C): the rows become the positions, read class-contiguous
        outer, inner, strides = 1, outer, (0, 1, c)
    # the outer and class strides' common factor up to 4 (runs of 4 positions: 16-byte loads), taken out of them;
    # with classes last, the row stride's (each row's classes then start 16 bytes aligned)
    vec = 1 if rows else math.gcd(strides[0], strides[1], 4)
    vec_i = math.gcd(strides[2], 4) if rows else 1
    strides = (strides[0] // vec, strides[1] // vec, strides[2] // vec_i)
    # GPU: 64 contiguous positions per program, or one row per program when classes are last
    bi = clamp_pow2(inner, 2, 1024) if INTERPRET else (1 if rows else clamp_pow2(inner, 2, 64))
    bc = clamp_pow2(c, 16, 4096 if INTERPRET else max(16, 4096 // bi))
    grid = (triton.cdiv(inner, bi) * outer,)
    none = reduction == "none"
    loss = torch.empty(shape if none else (0,), device=z.device, dtype=torch.float32)
    grad = torch.empty(shape if compute_grad else (0,), device=z.device, dtype=torch.float32)
    part = torch.empty((0,) if none else grid, device=z.device, dtype=torch.float32)
    scale = _scale(shape, reduction)
    wrap_triton(_kl_kernel)[grid](z, p, loss, grad, part, c // vec_i, inner, *strides, scale, BLOCK_C=bc, BLOCK_I=bi,
                                  VEC=vec, VEC_I=vec_i, EVEN_I=inner % bi == 0, NONE=none, GRAD=compute_grad,
                                  num_warps=4)
    if not none:
        loss = part.sum()  # the scaled partials' fixed-order torch reduction: deterministic, no host sync
    return loss.to(_result_dtype(z, p)), grad


@_kl_op.register_fake
def _kl_fake(z, p, dim, reduction, compute_grad):
    loss = z.new_empty(z.shape if reduction == "none" else (), dtype=_result_dtype(z, p))
    return loss, z.new_empty(z.shape if compute_grad else (0,), dtype=torch.float32)


def _setup_context(ctx, inputs, output) -> None:
    z, p, dim, reduction, _ = inputs
    _, grad = output
    ctx.mark_non_differentiable(grad)
    # With a scalar loss the stored gradient is only scaled by grad_output. Per-element losses
    # ("none") need sum_c(g * p) first: softmax(z) and the (constant) teacher are kept instead.
    ctx.save_for_backward(grad, p if reduction == "none" else None)
    ctx.conf = (z.dtype, dim, reduction)


def _backward(ctx, grad_loss, _grad_grad):
    grad, p = ctx.saved_tensors
    dtype, dim, reduction = ctx.conf
    if reduction == "none":
        gp = grad_loss.float() * p.float()
        g = grad * gp.sum(dim, keepdim=True) - gp
    else:
        g = grad * grad_loss.float().reshape(())
    return g.to(dtype), None, None, None, None


_kl_op.register_autograd(_backward, setup_context=_setup_context)
if not INTERPRET:
    _kl_op.register_kernel("cpu")(reference_kl)


def kl_div(student_logits: Tensor, teacher_probs: Tensor, *, dim: int = 1, reduction: str = "mean") -> Tensor:
    """KL(teacher_probs || softmax(student_logits, dim)), as ``F.kl_div(F.log_softmax(z, dim), p,
    reduction=reduction)``; logits (N, C, T) or (N, C); computed in fp32, result in the promoted dtype."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"kl_div: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(f"kl_div: logits {tuple(student_logits.shape)} and teacher probabilities "
                         f"{tuple(teacher_probs.shape)} differ in shape")
    if student_logits.dim() == 0:
        raise ValueError("kl_div: logits need at least one dimension")
    if teacher_probs.requires_grad:
        raise ValueError("kl_div: teacher_probs must not require grad (the teacher is a constant here)")
    dim = dim % student_logits.dim()
    compute_grad = torch.is_grad_enabled() and student_logits.requires_grad
    loss, _ = _kl_op(student_logits, teacher_probs, dim, reduction, compute_grad)
    dev = student_logits.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
        loss = loss.float()  # autocast runs log_softmax and kl_div in fp32
    return loss
