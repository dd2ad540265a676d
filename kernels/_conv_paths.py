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

import weakref
from dataclasses import dataclass

import torch

from ._conv_banded import (
    band_backward,
    band_bn_relu_pool,
    band_input,
    band_input_length,
    band_input_rows,
    band_moments,
    band_plan,
    epilogue_plan,
    stats_group,
)
from ._conv_bwd import generic_backward
from ._conv_fwd import chain_fits, generic_bn_relu_pool, generic_moments
from ._conv_rows import (
    dx_rows_ok,
    kept_z_shape,
    rows_backward,
    rows_band,
    rows_bn_relu_pool,
    rows_cover,
    rows_input,
    rows_input_length,
    rows_input_rows,
    rows_moments,
    rows_plan,
)
from .bn_running import merge_updates, update_running

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


def codes_channels_last(c_in: int, c_out: int, k: int, stride: int, pool: int | None, dtype: torch.dtype) -> bool:
    """Whether the block's codes and zmax (N, C_out, TP) are stored channels-last, strides (TP * C_out, 1, C_out)
    (``_conv_fwd.channels_last_empty``), and its output may be chained to the next block (``out_chain``): where the
    banded or row kernels run the pool pass. Every path follows the rule (the PyTorch reference too), so the op's
    fake gives the strides the kernels do. The backward then reads codes, a chained output (ReLU's mask) and (from
    the next block's dx, ``dx_channels_last``) the gradient as 16-byte runs of channels."""
    return block_paths(c_in, c_out, k, stride, pool, dtype).pool != "generic"


def out_chain(c_in: int, c_out: int, k: int, stride: int, pool: int | None, dtype: torch.dtype,
              chain: tuple[int, int] | None) -> tuple[int, int] | None:
    """The next block's ``chain_rows`` where this block's pool pass writes its output into that buffer (its banded
    or row kernels: ``codes_channels_last``), else None (a contiguous output)."""
    return chain if chain is not None and codes_channels_last(c_in, c_out, k, stride, pool, dtype) else None


def dx_channels_last(c_in: int, c_out: int, k: int, stride: int, pool: int | None, dtype: torch.dtype) -> bool:
    """Whether the backward's dx (N, C_in, L) is stored channels-last: where ``_rows_dx_kernel`` writes it (each
    row's phases and channels one run); ``_conv_bwd``'s dx stays contiguous."""
    paths = block_paths(c_in, c_out, k, stride, pool, dtype, input_grad=True)
    return paths.backward == "rows" and dx_rows_ok(c_out, k, stride)


def as_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """t (N, C, T) with the strides of ``_conv_fwd.channels_last_empty`` when ``channels_last`` (a copy unless it
    has them), else contiguous: how the reference and the fakes follow ``codes_channels_last`` and
    ``dx_channels_last``."""
    if t.dim() != 3:
        return t
    return t.transpose(1, 2).contiguous().transpose(1, 2) if channels_last else t.contiguous()


def chain_rows(c_in: int, length: int, c_out: int, k: int, stride: int, padding: int, pool: int | None,
               dtype: torch.dtype) -> tuple[int, int] | None:
    """(pad, LP) of the zero-padded channels-last buffer (N, LP, C_in) a block reads its input (N, C_in, length)
    from when the previous block wrote it there ("chained": ``_conv_fwd.pool_output``), or None where the block
    reads no such buffer (not rows in both forward passes; C_in not a multiple of 16, which keeps every clip's
    start, LP * C_in elements apart, 16-element aligned for any LP; more zero rows around x than
    ``_conv_fwd.chain_fits`` allows). A chained buffer spares the block ``forward_input``'s copy (SoundNet-8, bf16,
    batch 64: conv2's is 113 MB moved per step).

    LP = pad + length + tail with tail independent of length: at least the copy's rows (``rows_input_rows``, a
    multiple of 16, covering the backward's windows too) for every length, so a view cropped in time (fewer
    positions, the buffer's strides) fails ``chained_input``'s stride check and is copied: the rows after it hold
    data, not zeros. tail = padding + (pool - 1) * stride + the band's extra rows + 15: the last window's rows past
    x (at most 2 * padding + (pool - 1) * stride + band - k beyond (T - 1) * stride + k) and the rounding to 16."""
    paths = block_paths(c_in, c_out, k, stride, pool, dtype)
    if not paths.stats == paths.pool == "rows" or c_in % 16:
        return None
    lp = padding + length + padding + ((pool or 1) - 1) * stride + rows_band(c_in, dtype, k, stride) + 15
    t = (length + 2 * padding - k) // stride + 1
    assert lp >= rows_input_rows(c_in, length, dtype, padding, rows_cover(t, pool), k, stride), "chain_rows"
    return (padding, lp) if chain_fits(padding, lp, length) else None


def chained_input(x: torch.Tensor, pad: int, lp: int) -> torch.Tensor | None:
    """x's chained buffer (N, LP, C_in) (``chain_rows``), a view of x's storage from ``pad`` rows before x to LP
    rows per clip, where x has the chained layout: strides (LP * C_in, 1, C_in), at least ``pad`` rows of its
    storage before it and the whole last clip after. None otherwise (then x is copied, as any input). The rows
    outside x are read as zeros: the caller vouches for them (the op's ``padded_input``: x is a chained output
    made for this block). A view of one cropped in time or channels has other strides (``chain_rows``: LP grows
    with x's length, one row per row) and is copied; one cropped in batch reads the clips it keeps."""
    N, C, L = x.shape
    start = x.storage_offset() - pad * C
    if C < 2 or x.stride() != (lp * C, 1, C) or start < 0 or lp < pad + L:
        return None
    if x.untyped_storage().nbytes() < (start + N * lp * C) * x.element_size():
        return None
    return x.as_strided((N, lp, C), (lp * C, C, 1), start)


def input_rows(c_in: int, length: int, c_out: int, k: int, stride: int, padding: int, pool: int | None,
               dtype: torch.dtype) -> tuple[int, int] | None:
    """(pad, LP) of the zero-padded buffer a block reads its input (N, C_in, length) from without a copy when the
    caller vouches for the zeros around it (the op's ``padded_input``): for the banded kernels (a waveform) the
    (N, LP) layout of ``band_input``'s copy, for the row kernels a chained buffer (``chain_rows``); None where the
    block reads no such buffer."""
    paths = block_paths(c_in, c_out, k, stride, pool, dtype)
    if c_in == 1 and paths.stats == paths.pool == "banded":
        t = (length + 2 * padding - k) // stride + 1
        return padding, band_input_rows(length, c_out, k, stride, padding, t, pool)
    return chain_rows(c_in, length, c_out, k, stride, padding, pool, dtype)


_MADE: dict[int, weakref.ref] = {}  # id(x) -> x, for every x ``inputs.padded_input_buffer`` returned still alive


def register_padded_input(x: torch.Tensor) -> None:
    """Records x as made by ``inputs.padded_input_buffer`` (``is_padded_input``) for as long as it lives."""
    key = id(x)
    _MADE[key] = weakref.ref(x, lambda _, key=key: _MADE.pop(key, None))


def is_padded_input(x: torch.Tensor) -> bool:
    """Whether x is a tensor ``inputs.padded_input_buffer`` returned (itself, not a view or a copy of it): its
    caller may pass ``padded_input=True`` to the block it was made for."""
    ref = _MADE.get(id(x))
    return ref is not None and ref() is x


def waveform_input(x: torch.Tensor, pad: int, lp: int) -> torch.Tensor | None:
    """x's padded waveform (N, LP) (``input_rows``), a view of x's storage from ``pad`` samples before x to LP per
    clip, where x (N, 1, L) lies in one: strides (LP, any, 1), ``pad`` samples of its storage before it and the
    whole last clip after. None otherwise (then x is copied). The samples outside x are read as zeros: the caller
    vouches for them (the op's ``padded_input``, which the op's entry keeps for a waveform only where x is the
    tensor ``inputs.padded_input_buffer`` made: ``is_padded_input``; the waveform's LP is rounded to whole tiles for
    16-byte aligned clips, so unlike ``chain_rows``'s it cannot tell a view cropped in time from its strides)."""
    N, C, L = x.shape
    start = x.storage_offset() - pad
    if C != 1 or x.stride(0) != lp or x.stride(2) != 1 or start < 0 or lp < pad + L:
        return None
    if x.untyped_storage().nbytes() < (start + N * lp) * x.element_size():
        return None
    return x.as_strided((N, lp), (lp, 1), start)


def reused_input(x: torch.Tensor, c_out: int, K: int, stride: int, padding: int,
                 pool: int | None) -> torch.Tensor | None:
    """x's padded buffer (``waveform_input`` or ``chained_input``) where the block reads one (``input_rows``) and
    x lies in one, else None: what a block whose caller vouches for x's padding (the op's ``padded_input``) reads
    instead of copying x."""
    rows = input_rows(x.shape[1], x.shape[2], c_out, K, stride, padding, pool, x.dtype)
    if rows is None:
        return None
    return waveform_input(x, *rows) if x.shape[1] == 1 else chained_input(x, *rows)


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


def forward_input_shape(x: torch.Tensor, c_out: int, K: int, stride: int, padding: int, T: int, pool: int | None,
                        padded: bool = False, kept: bool = False) -> tuple[int, ...] | None:
    """The shape of ``forward_input``'s copy, None where a forward makes none (or reads x's chained buffer instead:
    ``padded`` and ``reused_input``); with ``kept``, only where ``kept_input`` keeps it for the backward. From x's
    shape, strides and dtype only (the ops' fakes)."""
    if padded and reused_input(x, c_out, K, stride, padding, pool) is not None:
        return None
    paths = block_paths(x.shape[1], c_out, K, stride, pool, x.dtype)
    family = paths.stats if paths.stats == paths.pool != "generic" else None
    if kept:
        family = kept_input(x.shape[1], c_out, K, stride, pool, x.dtype)
    if family == "banded":
        return (x.shape[0], band_input_length(x, c_out, K, stride, padding, T, pool))
    if family == "rows":
        return (x.shape[0], rows_input_length(x, padding, rows_cover(T, pool), K, stride), x.shape[1])
    return None


def kept_copy(x: torch.Tensor, c_out: int, K: int, stride: int, pool: int | None, xk: torch.Tensor,
              xp: torch.Tensor | None) -> torch.Tensor:
    """The padded copy of x the backward reuses (``kept_input``): the pool pass's own (xk, empty where it made
    none), else the statistics pass's (xp, None or empty where it made none) where ``kept_input`` keeps it, else
    xk (empty)."""
    if xk.numel() == 0 and xp is not None and xp.numel() and kept_input(x.shape[1], c_out, K, stride, pool,
                                                                         x.dtype) is not None:  # fmt: skip
        return xp
    return xk


def x_of_kept(xk: torch.Tensor, length: int, padding: int) -> torch.Tensor:
    """x (N, C_in, length) as a view of its kept padded copy: (N, LP) for a waveform, (N, LP, C_in) channels-last."""
    if xk.dim() == 2:
        return xk[:, padding : padding + length].unsqueeze(1)
    return xk[:, padding : padding + length].transpose(1, 2)


def keeps_z(x: torch.Tensor, c_out: int, K: int, stride: int, pool: int | None, training: bool) -> bool:
    """Whether a training forward stores its unpooled conv output z (``kept_z_shape``: (N, T, C_out), channel-minor)
    in x.dtype for the passes after its statistics (pass 2 and the whole backward then read it instead of
    recomputing the conv): 16-bit inputs on the row kernels (every phase). What it costs:
    T * C_out * 2 bytes per clip (SoundNet-8: conv2 0.88 MB,
    conv3-conv7 0.03-0.11 MB each, ~1.3 MB in all, from 3.74 to ~5.0 MB saved per 20 s clip); fp32 would take
    twice that and stays on the recompute (``_conv_fwd.keeps_zmax`` draws the same line)."""
    if not training or x.element_size() != 2:
        return False
    paths = block_paths(x.shape[1], c_out, K, stride, pool, x.dtype)
    return paths.stats == paths.pool == paths.backward == "rows"


def conv_moments(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, K: int, stride: int,
                 padding: int, T: int, eps: float | None = None, xp: torch.Tensor | None = None,
                 z: torch.Tensor | None = None, running: tuple | None = None) -> torch.Tensor:
    """Training's pass 1 over batch x time: (3, C_out) fp32 count, mean and M2 of the conv output per channel, or
    given BN's ``eps`` the (4, C_out) fp32 stats rows mean, invstd, unbiased variance, count, finalised by the
    merge kernel (``_conv_fwd.merge_stats``), which with ``running`` (running_mean, running_var,
    num_batches_tracked or None, momentum; ``bn_running.merge_updates``) also updates BN's running statistics.
    x (N, C_in, L); w2d (C_out, C_in * K) in x.dtype; ``xp``: ``forward_input``'s copy (with the same pool as the
    pass 2 it serves) or None; ``z``: a buffer for the conv output (``keeps_z``, row kernels only;
    ``kept_z_shape``) or None."""
    path = block_paths(x.shape[1], w2d.shape[0], K, stride, None, x.dtype).stats
    if path == "generic":
        return generic_moments(x, w2d, bias, K, stride, padding, T, eps, running)
    if path == "banded":
        return band_moments(x, w2d, bias, K, stride, padding, T, eps, xp, running)
    return rows_moments(x, w2d, bias, K, stride, padding, T, eps, xp, z, running)


def conv_bn_relu_pool(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor,
                      beta: torch.Tensor, stats: torch.Tensor, K: int, stride: int, padding: int, T: int,
                      pool: int | None, xp: torch.Tensor | None = None, z: torch.Tensor | None = None,
                      chain: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 2: (pooled output (N, C_out, T // pool) in x.dtype, window codes, zmax: zhat at each window's
    maximum in x.dtype when ``_conv_fwd.keeps_zmax``; without a pool the codes and zmax are empty). stats:
    (4, C_out) fp32 rows mean, invstd, unbiased variance, count; ``xp``: ``forward_input``'s copy or None;
    ``z``: the conv output pass 1 stored (``keeps_z``) or None; ``chain``: the next block's ``chain_rows``, or
    None: the output is chained where ``out_chain`` says so, else contiguous."""
    path = block_paths(x.shape[1], w2d.shape[0], K, stride, pool, x.dtype).pool
    chain = out_chain(x.shape[1], w2d.shape[0], K, stride, pool, x.dtype, chain)
    if path == "generic":
        return generic_bn_relu_pool(x, w2d, bias, gamma, beta, stats, K, stride, padding, T, pool)
    if path == "banded":
        return band_bn_relu_pool(x, w2d, bias, gamma, beta, stats, K, stride, padding, T, pool, xp, chain)
    return rows_bn_relu_pool(x, w2d, bias, gamma, beta, stats, K, stride, padding, T, pool, xp, z, chain)


def block_stats(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, K: int, stride: int, padding: int,
                T: int, pool: int | None, eps: float, sync=None, padded: bool = False,
                running: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A training forward's statistics (the op's statistics pass): one padded copy of x for both passes
    (``forward_input``; none where ``padded`` and x is a chained output: ``reused_input``), the statistics finalised
    by the merge kernel (or per-rank moments handed to ``sync``, which returns the stats rows), storing z where
    ``keeps_z`` says so, and BN's running statistics (``running``: (running_mean, running_var, num_batches_tracked or
    None, momentum), or None) updated by the merge launch where ``bn_running.merge_updates`` allows, else by their
    own. Returns (stats (4, C_out) fp32, z (empty unless kept), the padded copy it made or None)."""
    c_out = w2d.shape[0]
    reused = reused_input(x, c_out, K, stride, padding, pool) if padded else None
    xp = reused if reused is not None else forward_input(x, c_out, K, stride, padding, T, pool)
    keep = keeps_z(x, c_out, K, stride, pool, True)
    z = x.new_empty(kept_z_shape(x.shape[0], T, c_out) if keep else (0,))
    fused = sync is None and running is not None and merge_updates(running[0], running[1], running[3])
    if sync is not None:
        stats = sync(conv_moments(x, w2d, bias, K, stride, padding, T, None, xp, z))
    else:
        stats = conv_moments(x, w2d, bias, K, stride, padding, T, eps, xp, z, running if fused else None)
    if running is not None and not fused:
        update_running(*running[:3], stats, running[3])
    return stats, z, xp if reused is None else None


def block_pool(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor,
               beta: torch.Tensor, stats: torch.Tensor, K: int, stride: int, padding: int, T: int, pool: int | None,
               xp: torch.Tensor | None = None, z: torch.Tensor | None = None, chain: tuple[int, int] | None = None,
               padded: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A forward's pool pass (the op's pass 2) from the stats rows (``block_stats``'s, or eval mode's from the
    running statistics): x read through ``xp`` (``block_stats``'s copy), else its chained buffer (``padded``), else a
    copy made here (``forward_input``), z where the statistics kept it. Returns (out, code, zmax, xk: the copy made
    here where ``kept_input`` keeps it for the backward, else empty)."""
    c_out = w2d.shape[0]
    made = None
    if xp is None and padded:
        xp = reused_input(x, c_out, K, stride, padding, pool)
    if xp is None:
        xp = made = forward_input(x, c_out, K, stride, padding, T, pool)
    out, code, zmax = conv_bn_relu_pool(x, w2d, bias, gamma, beta, stats, K, stride, padding, T, pool, xp, z, chain)
    kept = made is not None and kept_input(x.shape[1], c_out, K, stride, pool, x.dtype) is not None
    return out, code, zmax, made if kept else x.new_empty(0)


def block_forward(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor,
                  beta: torch.Tensor, K: int, stride: int, padding: int, T: int, pool: int | None, training: bool,
                  eps: float, stats: torch.Tensor | None = None, sync=None, chain: tuple[int, int] | None = None,
                  padded: bool = False, running: tuple | None = None) -> tuple[torch.Tensor, ...]:
    """A block's forward as the op runs it (and ``bench`` records it): in training ``block_stats``, then
    ``block_pool`` (``stats``: eval mode's (4, C_out) rows from the running statistics). Returns (out, code, zmax,
    stats, z, xk; z empty unless kept, xk the padded copy where ``kept_input`` keeps it, else empty)."""
    z = xp = None
    if training:
        stats, z, xp = block_stats(x, w2d, bias, K, stride, padding, T, pool, eps, sync, padded, running)
    out, code, zmax, xk = block_pool(x, w2d, bias, gamma, beta, stats, K, stride, padding, T, pool, xp, z, chain,
                                     padded)
    xk = kept_copy(x, w2d.shape[0], K, stride, pool, xk, xp)
    return out, code, zmax, stats, z if z is not None else x.new_empty(0), xk


def conv_bn_relu_backward(grad_out: torch.Tensor, x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None,
                          gamma: torch.Tensor, stats: torch.Tensor, code: torch.Tensor, out: torch.Tensor | None,
                          K: int, stride: int, padding: int, T: int, pool: int | None, training: bool,
                          deterministic: bool, input_grad: bool, all_reduce=None, z: torch.Tensor | None = None,
                          xk: torch.Tensor | None = None, padded: bool = False) -> tuple[torch.Tensor | None, ...]:
    """(dx or None, dw2d fp32, db fp32 or None, local (2, C_out) fp32: sum(gy), sum(gy * zhat)); ``out`` and
    ``all_reduce`` as in ``_conv_bwd.generic_backward``; ``z``: the forward's stored conv output (``keeps_z``; None or
    empty: none kept); ``xk``: the forward's padded copy of x (``kept_input``; None or empty: none kept);
    ``padded``: as the forward's (where it kept no copy, x's chained buffer is read again: ``reused_input``)."""
    xk = xk if xk is not None and xk.numel() > 0 else None
    if xk is None and padded:
        xk = reused_input(x, w2d.shape[0], K, stride, padding, pool)
    path = block_paths(x.shape[1], w2d.shape[0], K, stride, pool, x.dtype, input_grad).backward
    if path == "banded":
        return band_backward(grad_out, x, w2d, bias, gamma, stats, code, out, K, stride, padding, T, pool,
                             training, deterministic, all_reduce, xk)
    if path == "rows":
        return rows_backward(grad_out, x, w2d, bias, gamma, stats, code, out, K, stride, padding, T, pool,
                             training, deterministic, input_grad, all_reduce, z, xk)
    return generic_backward(grad_out, x, w2d, bias, gamma, stats, code, out, K, stride, padding, T, pool,
                            training, deterministic, input_grad, all_reduce)
