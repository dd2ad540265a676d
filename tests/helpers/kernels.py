"""Shared helpers of the kernel tests: the eager composite the fused op must equal, input builders and
error measures. Tests here run under TRITON_INTERPRET=1 (Makefile), so shapes stay tiny."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from soundnet_fast.kernels import conv1d_bn_relu
from soundnet_fast.model import SOUNDNET5_TRUNK, SOUNDNET8_TRUNK, ConvSpec


def _layer_shapes(trunk: tuple[ConvSpec, ...]) -> dict[str, tuple[int, int, int, int, int, int | None]]:
    """(C_in, C_out, k, s, p, pool) of each block of a trunk, by block name; C_in is the previous block's C_out."""
    c_in = [1, *(spec.out_channels for spec in trunk[:-1])]
    return {
        spec.name: (c, spec.out_channels, spec.kernel, spec.stride, spec.padding, spec.pool)
        for c, spec in zip(c_in, trunk, strict=True)
    }


# docs/design.md#model: (C_in, C_out, k, s, p, pool) of every SoundNet-8 block, and SoundNet-5's conv3, read from
# the one layer table (soundnet_fast.model).
SOUNDNET_LAYERS = {**_layer_shapes(SOUNDNET8_TRUNK), "sn5_conv3": _layer_shapes(SOUNDNET5_TRUNK)["conv3"]}


def eager_block(
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    g: Tensor,
    beta: Tensor,
    rm: Tensor | None,
    rv: Tensor | None,
    *,
    stride: int,
    padding: int,
    training: bool,
    pool: int | None,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """The unfused composite, exactly as PyTorch users write it."""
    y = F.relu(
        F.batch_norm(
            F.conv1d(x, w, b, stride, padding), rm, rv, g, beta, training, 0.0 if momentum is None else momentum, eps
        )
    )
    return F.max_pool1d(y, pool, pool) if pool is not None else y


@dataclass
class Case:
    x: Tensor
    w: Tensor
    b: Tensor | None
    g: Tensor
    beta: Tensor
    rm: Tensor
    rv: Tensor

    def params(self) -> list[Tensor | None]:
        return [self.x, self.w, self.b, self.g, self.beta]


def make_case(
    n: int, c_in: int, c_out: int, k: int, length: int, seed: int = 0, bias: bool = True, quantized: bool = False
) -> Case:
    """float64 inputs; ``quantized`` gives small integers and weights in quarters, so conv outputs are
    exact in fp32 and pool windows hold genuine ties (plateaus, zeros after ReLU)."""
    gen = torch.Generator().manual_seed(seed)
    if quantized:
        x = torch.randint(-2, 3, (n, c_in, length), generator=gen).double()
        w = torch.randint(-2, 3, (c_out, c_in, k), generator=gen).double() / 4
        b = torch.zeros(c_out, dtype=torch.float64) if bias else None
    else:
        x = torch.randn(n, c_in, length, generator=gen, dtype=torch.float64)
        w = torch.randn(c_out, c_in, k, generator=gen, dtype=torch.float64) / (c_in * k) ** 0.5
        b = torch.randn(c_out, generator=gen, dtype=torch.float64) * 0.5 if bias else None
    g = 1.0 + 0.2 * torch.randn(c_out, generator=gen, dtype=torch.float64)
    beta = 0.2 * torch.randn(c_out, generator=gen, dtype=torch.float64)
    rm = 0.3 * torch.randn(c_out, generator=gen, dtype=torch.float64)
    rv = 0.5 + torch.rand(c_out, generator=gen, dtype=torch.float64)
    return Case(x, w, b, g, beta, rm, rv)


def max_rel(a: Tensor, ref: Tensor, floor: float = 0.0) -> float:
    """max |a - ref| / max(max |ref|, floor)."""
    den = max(ref.abs().max().item(), floor)
    return (a.double() - ref).abs().max().item() / den if den > 0 else (a.double() - ref).abs().max().item()


def norm_rel(a: Tensor, ref: Tensor, floor: float = 0.0) -> float:
    """||a - ref|| / max(||ref||, floor) (Frobenius): steadier than max-abs at bf16 noise levels."""
    den = max(ref.norm().item(), floor)
    return (a.double() - ref).norm().item() / den


def run_reference(
    case: Case,
    grad: Tensor | None,
    *,
    stride: int,
    padding: int,
    training: bool,
    pool: int | None,
    dtype: torch.dtype = torch.float64,
    momentum: float | None = 0.1,
    x_grad: bool = True,
):
    """Eager composite in ``dtype`` on ``case`` (cast), with gradients; returns (out, grads, rm, rv, gz_abs)
    where gz_abs is sum over batch and time of |d loss / d conv output| per channel (the scale the conv
    bias gradient cancels from in training)."""
    ps = [p.to(dtype).clone().requires_grad_() if p is not None else None for p in case.params()]
    ps[0].requires_grad_(x_grad)
    rm, rv = case.rm.to(dtype).clone(), case.rv.to(dtype).clone()
    z = F.conv1d(ps[0], ps[1], ps[2], stride, padding)
    z.retain_grad()
    y = F.relu(F.batch_norm(z, rm, rv, ps[3], ps[4], training, 0.1 if momentum is None else momentum, 1e-5))
    out = F.max_pool1d(y, pool, pool) if pool is not None else y
    if grad is None:
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    out.backward(grad.to(dtype))
    grads = [p.grad if p is not None else None for p in ps]
    return out.detach(), grads, rm, rv, z.grad.abs().sum((0, 2)), grad


def run_fused(
    case: Case,
    grad: Tensor,
    *,
    stride: int,
    padding: int,
    training: bool,
    pool: int | None,
    dtype: torch.dtype = torch.float32,
    deterministic: bool | None = None,
    momentum: float | None = 0.1,
    nbt: Tensor | None = None,
    x_transform=None,
    x_grad: bool = True,
):
    ps = [p.to(dtype).clone().requires_grad_() if p is not None else None for p in case.params()]
    ps[0].requires_grad_(x_grad)  # False: a first layer (the waveform), the one-pass gz + dW backward
    # BN parameters and running statistics stay fp32, as in a model under autocast
    bn_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for i in (3, 4):
        ps[i] = case.params()[i].to(bn_dtype).clone().requires_grad_()
    rm, rv = case.rm.to(bn_dtype).clone(), case.rv.to(bn_dtype).clone()
    x = ps[0] if x_transform is None else x_transform(ps[0])
    out = conv1d_bn_relu(
        x,
        ps[1],
        ps[2],
        ps[3],
        ps[4],
        rm,
        rv,
        stride=stride,
        padding=padding,
        training=training,
        momentum=momentum,
        pool=pool,
        num_batches_tracked=nbt,
        deterministic=deterministic,
    )
    out.backward(grad.to(out.dtype))
    return out.detach(), [p.grad if p is not None else None for p in ps], rm, rv


def fused_outputs(
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    g: Tensor,
    beta: Tensor,
    rm: Tensor | None,
    rv: Tensor | None,
    stride: int,
    padding: int,
    training: bool,
    eps: float,
    pool: int | None,
    deterministic: bool,
    group: int = 0,
) -> tuple[Tensor, ...]:
    """The fused block's ops as ``conv1d_bn_relu`` runs them (in training the statistics op on detached tensors,
    running statistics untouched, then the pool op), with what the backward op reads: (out, code, zmax, stats, z,
    xk: the padded copy of x the backward reuses, from either op, or empty)."""
    import soundnet_fast.kernels.conv_bn_relu as cbr
    from soundnet_fast.kernels._conv_paths import kept_copy

    empty = x.new_empty(0)
    if training:
        stats, z, xp = cbr._stats_op(x.detach(), w.detach(), b.detach() if b is not None else None, None, None, None,
                                     stride, padding, eps, 0.1, pool, group)  # fmt: skip
    else:
        stats, z, xp = cbr.eval_stats(rm, rv, eps, cbr.acc_dtype(x)), empty, empty
    out, code, zmax, xk = cbr._fwd_op(x, w, b, g, beta, stats, z, xp, stride, padding, training, pool, deterministic,
                                      group)  # fmt: skip
    return out, code, zmax, stats, z, kept_copy(x, w.shape[0], w.shape[-1], stride, pool, xk, xp)


def opcheck_samples() -> list[tuple]:
    """(op, arguments) pairs for ``torch.library.opcheck`` of the fused block's statistics and pool ops: with a
    pool and gradients (the statistics op updating running statistics with a momentum), without a pool in eval
    mode, and without a conv bias (a cumulative average); tiny (2 x 3 x 20) for the interpreter."""
    import soundnet_fast.kernels.conv_bn_relu as cbr

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 20, generator=gen)
    w = torch.randn(8, 3, 4, generator=gen) * 0.3
    b, g, beta = torch.randn(8, generator=gen), torch.rand(8, generator=gen) + 0.5, torch.randn(8, generator=gen)
    rm, rv = torch.zeros(8), torch.ones(8)
    req = [t.clone().requires_grad_() for t in (x, w, b, g, beta)]
    nbt = torch.tensor(0)
    samples = []
    for (xs, ws, bs, gs, betas), s, p, training, pool, det, momentum in (
        (req, 2, 1, True, 4, True, 0.1),
        (req, 1, 2, False, None, False, 0.1),
        ((x, w, None, g, beta), 3, 0, True, 2, True, None),
    ):
        if training:
            sargs = (xs.detach(), ws.detach(), bs.detach() if bs is not None else None, rm.clone(), rv.clone(),
                     nbt.clone(), s, p, 1e-5, momentum, pool, 0)  # fmt: skip
            samples.append((cbr._stats_op, sargs))
            stats, z, xp = cbr._stats_op(*sargs[:3], None, None, None, *sargs[6:])
        else:
            stats, z, xp = cbr.eval_stats(rm, rv, 1e-5), x.new_empty(0), x.new_empty(0)
        samples.append((cbr._fwd_op, (xs, ws, bs, gs, betas, stats, z, xp, s, p, training, pool, det, 0)))
    return samples


def opcheck_block(
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    g: Tensor,
    beta: Tensor,
    stride: int,
    padding: int,
    pool: int | None,
    padded_input: bool = False,
    out_pad: int = 0,
    out_rows: int = 0,
) -> None:
    """``torch.library.opcheck`` of a training block's statistics op (updating running statistics) and its pool
    op fed with the statistics' outputs; ``padded_input``, ``out_pad`` and ``out_rows``: chaining, as the ops'."""
    import soundnet_fast.kernels.conv_bn_relu as cbr

    c_out = w.shape[0]
    detached = (x.detach(), w.detach(), b.detach() if b is not None else None)
    tail = (stride, padding, 1e-5, 0.1, pool, 0, padded_input)
    torch.library.opcheck(cbr._stats_op, (*detached, torch.zeros(c_out), torch.ones(c_out), torch.tensor(0), *tail))
    stats, z, xp = cbr._stats_op(*detached, None, None, None, *tail)
    args = (x, w, b, g, beta, stats, z, xp, stride, padding, True, pool, True, 0, out_pad, out_rows, padded_input)
    torch.library.opcheck(cbr._fwd_op, args)
