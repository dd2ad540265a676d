"""Which kernels a fused conv block runs: the one place that decides (docs/design.md#convolution).

Three kernel families, chosen per phase by shape rules, never by layer names:

- banded (``_conv_banded.py``): a single-channel input (a waveform); statistics whenever ``band_plan`` takes the
  shape, the pool and backward when ``epilogue_plan`` does (the backward only when the input needs no gradient:
  it computes no dx);
- rows (``_conv_rows.py``): several input channels whose im2col rows are aligned runs of a channels-last copy
  (``rows_plan``); every phase, pooling or not (without a pool, windows of one position);
- generic (``_conv_fwd.py`` / ``_conv_bwd.py``): the implicit GEMM of any shape, for the rest.

The launchers here are what the op (``conv_bn_relu.py``), ``bench/aot_check.py`` and ``bench/gpu_check`` call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._conv_banded import (
    band_backward,
    band_bn_relu_pool,
    band_input,
    band_input_length,
    band_moments,
    band_plan,
    epilogue_plan,
    stats_group,
)
from ._conv_bwd import generic_backward
from ._conv_fwd import generic_bn_relu_pool, generic_moments
from ._conv_rows import (
    kept_z_shape,
    rows_backward,
    rows_bn_relu_pool,
    rows_cover,
    rows_input,
    rows_input_length,
    rows_moments,
    rows_plan,
)

# fmt: off
# Hand-wrapped on purpose, as in _conv_fwd.py.


@dataclass(frozen=True)
class Paths:
    """The kernel family ("banded", "rows" or "generic") of each phase of one block."""

    stats: str
    pool: str
    backward: str


def block_paths(c_in: int, c_out: int, k: int, stride: int, pool: int | None, dtype: torch.dtype,
                input_grad: bool = True) -> Paths:
    """The kernels of a block: (C_in, C_out, k, stride, pool) as in the module's rules; ``input_grad``: whether
    the backward must compute dx."""
    rows = rows_plan(c_in, c_out, k, stride, dtype) is not None
    epilogue = epilogue_plan(c_in, c_out, k, stride, pool) is not None
    if band_plan(c_in, c_out, k, stride, stats_group(c_out)) is not None:
        stats = "banded"
    else:
        stats = "rows" if rows else "generic"
    pooled = "rows" if rows else "generic"
    return Paths(stats=stats, pool="banded" if epilogue else pooled,
                 backward="banded" if (epilogue and not input_grad) else pooled)  # fmt: skip


def forward_input(x: torch.Tensor, c_out: int, K: int, stride: int, padding: int, T: int,
                  pool: int | None) -> torch.Tensor | None:
    """The padded copy of x both forward passes of a block read when they run the same family (banded: the
    waveform padded, rows: channels-last), made once per forward and handed to ``conv_moments`` and
    ``conv_bn_relu_pool``; None when they do not share one (each pass then makes what it needs)."""
    paths = block_paths(x.shape[1], c_out, K, stride, pool, x.dtype)
    if paths.stats == paths.pool == "banded":
        return band_input(x, c_out, K, stride, padding, T, pool)
    if paths.stats == paths.pool == "rows":
        return rows_input(x, padding, T, K, stride, pool)
    return None


def kept_input(c_in: int, c_out: int, K: int, stride: int, pool: int | None, dtype: torch.dtype) -> str | None:
    """The family ("banded" or "rows") whose backward reuses the forward's padded copy of x (``forward_input``), or
    None. The op then keeps that copy for the backward instead of x, and hands the backward x as a view of it
    (``x_of_kept``): the backward makes no copy of its own (SoundNet-8, bf16, batch 64: 113 MB each for conv1 and
    conv2). The graph keeps the copy's padding rows more than x, or the whole copy more where x stays saved anyway
    (the previous block's ReLU mask when it has no pool)."""
    paths = block_paths(c_in, c_out, K, stride, pool, dtype, input_grad=False)
    return paths.backward if paths.stats == paths.pool == paths.backward != "generic" else None


def kept_input_shape(x: torch.Tensor, c_out: int, K: int, stride: int, padding: int, T: int,
                     pool: int | None) -> tuple[int, ...] | None:
    """The shape of ``forward_input``'s copy where ``kept_input`` keeps it (None elsewhere), from x's shape and
    dtype only (the op's fake)."""
    family = kept_input(x.shape[1], c_out, K, stride, pool, x.dtype)
    if family == "banded":
        return (x.shape[0], band_input_length(x, c_out, K, stride, padding, T, pool))
    if family == "rows":
        return (x.shape[0], rows_input_length(x, padding, rows_cover(T, pool), K, stride), x.shape[1])
    return None


def x_of_kept(xk: torch.Tensor, length: int, padding: int) -> torch.Tensor:
    """x (N, C_in, length) as a view of its kept padded copy: (N, LP) for a waveform, (N, LP, C_in) channels-last."""
    if xk.dim() == 2:
        return xk[:, padding : padding + length].unsqueeze(1)
    return xk[:, padding : padding + length].transpose(1, 2)


def keeps_z(x: torch.Tensor, c_out: int, K: int, stride: int, pool: int | None, training: bool) -> bool:
    """Whether a training forward stores its unpooled conv output z (``kept_z_shape``: (N, T, C_out) regrouped
    window-major, the slots last) in x.dtype for the passes after its statistics (pass 2 and the whole backward then
    read it instead of recomputing the conv): 16-bit inputs on the row kernels (every phase). What it costs:
    T * C_out * 2 bytes per clip (plus the padded slots of a pool that is no power of two; SoundNet-8: conv2 0.88 MB,
    conv3-conv7 0.03-0.11 MB each, ~1.3 MB in all, from 3.74 to ~5.0 MB saved per 20 s clip); fp32 would take
    twice that and stays on the recompute (``_conv_fwd.keeps_zmax`` draws the same line)."""
    if not training or x.element_size() != 2:
        return False
    paths = block_paths(x.shape[1], c_out, K, stride, pool, x.dtype)
    return paths.stats == paths.pool == paths.backward == "rows"


def conv_moments(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, K: int, stride: int,
                 padding: int, T: int, eps: float | None = None, xp: torch.Tensor | None = None,
                 z: torch.Tensor | None = None, pool: int | None = None) -> torch.Tensor:
    """Training's pass 1 over batch x time: (3, C_out) fp32 count, mean and M2 of the conv output per channel, or
    given BN's ``eps`` the (4, C_out) fp32 stats rows mean, invstd, unbiased variance, count, finalised by the
    merge kernel (``_conv_fwd.merge_stats``). x (N, C_in, L); w2d (C_out, C_in * K) in x.dtype; ``xp``:
    ``forward_input``'s copy (with the same pool as the pass 2 it serves) or None; ``z``: a buffer for the conv
    output (``keeps_z``, row kernels only; its layout follows the block's ``pool``: ``kept_z_shape``) or None."""
    path = block_paths(x.shape[1], w2d.shape[0], K, stride, None, x.dtype).stats
    if path == "generic":
        return generic_moments(x, w2d, bias, K, stride, padding, T, eps)
    if path == "banded":
        return band_moments(x, w2d, bias, K, stride, padding, T, eps, xp)
    return rows_moments(x, w2d, bias, K, stride, padding, T, eps, xp, z, pool)


def conv_bn_relu_pool(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor,
                      beta: torch.Tensor, stats: torch.Tensor, K: int, stride: int, padding: int, T: int,
                      pool: int | None, xp: torch.Tensor | None = None,
                      z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 2: (pooled output (N, C_out, T // pool) in x.dtype, window codes, zmax: zhat at each window's
    maximum in x.dtype when ``_conv_fwd.keeps_zmax``; without a pool the codes and zmax are empty). stats:
    (4, C_out) fp32 rows mean, invstd, unbiased variance, count; ``xp``: ``forward_input``'s copy or None;
    ``z``: the conv output pass 1 stored (``keeps_z``) or None."""
    path = block_paths(x.shape[1], w2d.shape[0], K, stride, pool, x.dtype).pool
    if path == "generic":
        return generic_bn_relu_pool(x, w2d, bias, gamma, beta, stats, K, stride, padding, T, pool)
    if path == "banded":
        return band_bn_relu_pool(x, w2d, bias, gamma, beta, stats, K, stride, padding, T, pool, xp)
    return rows_bn_relu_pool(x, w2d, bias, gamma, beta, stats, K, stride, padding, T, pool, xp, z)


def block_forward(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor,
                  beta: torch.Tensor, K: int, stride: int, padding: int, T: int, pool: int | None, training: bool,
                  eps: float, stats: torch.Tensor | None = None,
                  sync=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A block's forward as the op runs it (and ``bench`` records it): one padded copy of x for both passes
    (``forward_input``), in training the statistics (finalised by the merge kernel, or per-rank moments handed to
    ``sync``, which returns the stats rows) storing z where ``keeps_z`` says so, then pass 2. ``stats``: eval
    mode's (4, C_out) rows from the running statistics. Returns (out, code, zmax, stats, z, xk; z empty unless
    kept, xk the padded copy where ``kept_input`` keeps it, else empty)."""
    c_out = w2d.shape[0]
    xp = forward_input(x, c_out, K, stride, padding, T, pool)
    keep = keeps_z(x, c_out, K, stride, pool, training)
    z = x.new_empty(kept_z_shape(x.shape[0], T, c_out, pool) if keep else (0,))
    if training:
        if sync is not None:
            stats = sync(conv_moments(x, w2d, bias, K, stride, padding, T, None, xp, z, pool))
        else:
            stats = conv_moments(x, w2d, bias, K, stride, padding, T, eps, xp, z, pool)
    out, code, zmax = conv_bn_relu_pool(x, w2d, bias, gamma, beta, stats, K, stride, padding, T, pool, xp, z)
    kept = xp is not None and kept_input(x.shape[1], c_out, K, stride, pool, x.dtype) is not None
    return out, code, zmax, stats, z, xp if kept else x.new_empty(0)


def conv_bn_relu_backward(grad_out: torch.Tensor, x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None,
                          gamma: torch.Tensor, stats: torch.Tensor, code: torch.Tensor, out: torch.Tensor | None,
                          K: int, stride: int, padding: int, T: int, pool: int | None, training: bool,
                          deterministic: bool, input_grad: bool, all_reduce=None, z: torch.Tensor | None = None,
                          xk: torch.Tensor | None = None) -> tuple[torch.Tensor | None, ...]:
    """(dx or None, dw2d fp32, db fp32 or None, local (2, C_out) fp32: sum(gy), sum(gy * zhat)); ``out`` and
    ``all_reduce`` as in ``_conv_bwd.generic_backward``; ``z``: the forward's stored conv output (``keeps_z``; None or
    empty: none kept); ``xk``: the forward's padded copy of x (``kept_input``; None or empty: none kept)."""
    xk = xk if xk is not None and xk.numel() > 0 else None
    path = block_paths(x.shape[1], w2d.shape[0], K, stride, pool, x.dtype, input_grad).backward
    if path == "banded":
        return band_backward(grad_out, x, w2d, bias, gamma, stats, code, out, K, stride, padding, T, pool,
                             training, deterministic, all_reduce, xk)
    if path == "rows":
        return rows_backward(grad_out, x, w2d, bias, gamma, stats, code, out, K, stride, padding, T, pool,
                             training, deterministic, input_grad, all_reduce, z, xk)
    return generic_backward(grad_out, x, w2d, bias, gamma, stats, code, out, K, stride, padding, T, pool,
                            training, deterministic, input_grad, all_reduce)
