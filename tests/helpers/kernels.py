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


def opcheck_samples() -> list[tuple]:
    """Argument tuples of ``conv_bn_relu._fwd_op`` for ``torch.library.opcheck``: (x, w, b, bn_w, bn_b,
    running_mean, running_var, stride, padding, training, eps, pool, deterministic, group) with a pool and
    gradients, without a pool in eval mode, and without a conv bias; tiny (2 x 3 x 20) for the interpreter."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 20, generator=gen)
    w = torch.randn(8, 3, 4, generator=gen) * 0.3
    b, g, beta = torch.randn(8, generator=gen), torch.rand(8, generator=gen) + 0.5, torch.randn(8, generator=gen)
    rm, rv = torch.zeros(8), torch.ones(8)
    req = [t.clone().requires_grad_() for t in (x, w, b, g, beta)]
    return [
        (*req, rm, rv, 2, 1, True, 1e-5, 4, True, 0),
        (*req, rm, rv, 1, 2, False, 1e-5, None, False, 0),
        (x, w, None, g, beta, rm, rv, 3, 0, True, 1e-5, 2, True, 0),
    ]
