"""The backward's BatchNorm sums of a pooling block from what its forward saved: one streaming pass, no recompute.

BatchNorm's training backward needs, per channel, sum(gy) and sum(gy * zhat) over batch x time, where gy is the
gradient at the BN output (after the pool's and ReLU's backward) and zhat the normalised conv output. Below a
max-pool, gy is non-zero only at each window's first maximum, where it equals the pooled gradient; when the
forward kept zmax (zhat there, ``_conv_fwd.keeps_zmax``) both sums are sums over the pooled outputs:
sum(g [code >= 0]) and sum(g * zmax [code >= 0]). As torch ops that was seven kernels over fp32 temporaries of
the pooled size (about 1.2 GB moved per step for SoundNet-8's conv1 at batch 64); here one pass reads grad_out,
code and zmax once (5 bytes per pooled output in bf16).

Symbols: N = batch, C = channels (C_OUT), TP = pooled length; a tile is BLOCK_C channels x BLOCK_T pooled
positions of one clip; TB = tiles per clip along TP; NUM_TILES = N * TB tiles walked by P persistent programs
(tile p, p + P, ...). Each lane keeps fp32 sums over its program's tiles (a few dozen values each), reduced
once at the end; the programs' partials are fp64 (as ``_conv_bwd._bwd_reduce_kernel``).

Files: ``_pooled_bn_sums_kernel`` (the kernel), ``pooled_bn_sums`` (its launcher) and
``reference_pooled_bn_sums`` (the PyTorch reference the tests hold it to).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import INTERPRET, clamp_pow2
from ._conv_fwd import bn_sum_partials, bn_sums_of, persistent_grid, store_bn_sums

# fmt: off
# Hand-wrapped on purpose, as in _conv_fwd.py.
ROWS_BLOCK = 2048  # elements per chunk of a row: 16 per thread, 16-byte loads of the int8 codes too
SUMS_PER_SM = 4  # programs per SM of the row kernel (a streaming pass: enough warps to keep the loads in flight)
# Rows at least this long take the row kernel: each row ends in a reduction and a channel update, which short rows
# do not amortise (SoundNet-8's conv5, 53 pooled positions: 6 -> 65 us per step on rows, predicted); the
# interpreter takes it from 16 so that the tests run it.
ROWS_MIN_TP = 16 if INTERPRET else 1024
# Elements per tile of the tile kernel: 16 per thread of 4 warps, so that a unit-stride axis of 16 or more loads the
# int8 codes 16 bytes per lane (a tile of 1024, SoundNet-8's conv5 at 16 channels x 64 positions, loaded them 8 at a
# time); channels fill what the positions leave.
SUMS_TILE = 2048


@triton.jit
def _pooled_bn_sums_kernel(go_ptr, code_ptr, zmax_ptr, sums_ptr, C_OUT, TP, TB, NUM_TILES, P, sgn, sgc, sgt, scn,
                           scc, sct, DETERMINISTIC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    """Per program: the tiles pid_p, pid_p + P, ... of channel block program_id(1); writes its sums with
    ``store_bn_sums`` (a row of partials when DETERMINISTIC, else relaxed fp64 atomics).
    go_ptr: (N, C_OUT, TP) grad_out, strides (sgn, sgc, sgt), 16-bit; code_ptr: (N, C_OUT, TP) int, strides (scn,
    scc, sct), the window's first maximum or -1; zmax_ptr: (N, C_OUT, TP), code's strides, go's dtype; sums_ptr:
    (2, P or 1, C_OUT) fp64. Channels-last tensors (strides (TP * C_OUT, 1, C_OUT), as the banded and row kernels
    store them) load as runs of channels: a unit stride is a constexpr to Triton."""
    pid_p = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C_OUT
    acc_gy = tl.zeros((BLOCK_C, BLOCK_T), dtype=tl.float32)  # per-lane sums, reduced once after the loop
    acc_gyz = tl.zeros((BLOCK_C, BLOCK_T), dtype=tl.float32)
    for tile in range(pid_p, NUM_TILES, P):
        n = tile // TB
        t = (tile % TB) * BLOCK_T + tl.arange(0, BLOCK_T)
        ok = c_ok[:, None] & (t < TP)[None, :]
        off = n.to(tl.int64) * scn + c[:, None] * scc + t[None, :] * sct
        code = tl.load(code_ptr + off, mask=ok, other=-1)
        g = tl.load(go_ptr + n.to(tl.int64) * sgn + c[:, None] * sgc + t[None, :] * sgt, mask=ok, other=0.0)
        g = tl.where(code >= 0, g.to(tl.float32), 0.0)  # masked, not multiplied: an inf gradient at a 0 stays out
        z = tl.load(zmax_ptr + off, mask=ok, other=0.0).to(tl.float32)
        acc_gy += g
        acc_gyz += g * z
    s_gy = tl.sum(acc_gy, axis=1).to(tl.float64)
    s_gyz = tl.sum(acc_gyz, axis=1).to(tl.float64)
    store_bn_sums(sums_ptr, s_gy, s_gyz, pid_p, c, C_OUT, P, DETERMINISTIC)


@triton.jit
def _pooled_bn_sums_rows_kernel(go_ptr, code_ptr, zmax_ptr,  # (N, C_OUT, TP) each, contiguous
                                sums_ptr,  # (2, P or 1, C_OUT) fp64
                                C_OUT, TP, ROWS, TOTAL, NB, P, DETERMINISTIC: tl.constexpr, BLOCK_C: tl.constexpr,
                                BLOCK: tl.constexpr):
    """``_pooled_bn_sums_kernel`` for a contiguous gradient, row by row: program p sums the rows (n, c) = p,
    p + P, ... of the flat (ROWS = N * C_OUT, TP) views in NB chunks of BLOCK elements that start on a multiple of
    16 at or before the row's start (rows seldom start on one: SoundNet-8's conv1 has TP = 27,562), so every load
    is 16 bytes wide and
    unmasked but at the tensors' end (TOTAL = ROWS * TP); the neighbouring rows' elements it reads are selected
    out, not multiplied. Each row's sums go to its channel's entry of the program's (BLOCK_C,) partials."""
    pid_p = tl.program_id(0)
    ch = tl.arange(0, BLOCK_C)
    s_gy = tl.zeros((BLOCK_C,), dtype=tl.float32)
    s_gyz = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for row in range(pid_p, ROWS, P):
        start = tl.cast(row, tl.int64) * TP
        a0 = (start // 16) * 16
        acc_gy = tl.zeros((BLOCK,), dtype=tl.float32)
        acc_gyz = tl.zeros((BLOCK,), dtype=tl.float32)
        for j in range(0, NB):
            f = a0 + j * BLOCK + tl.arange(0, BLOCK)
            ok = f < TOTAL
            code = tl.load(code_ptr + f, mask=ok, other=-1)
            g = tl.load(go_ptr + f, mask=ok, other=0.0).to(tl.float32)
            z = tl.load(zmax_ptr + f, mask=ok, other=0.0).to(tl.float32)
            g = tl.where((f >= start) & (f < start + TP) & (code >= 0), g, 0.0)  # selected, not multiplied: an
            acc_gy += g  # inf gradient at a 0, or a neighbouring row's, stays out
            acc_gyz += g * z
        here = ch == row % C_OUT
        s_gy = tl.where(here, s_gy + tl.sum(acc_gy, axis=0), s_gy)
        s_gyz = tl.where(here, s_gyz + tl.sum(acc_gyz, axis=0), s_gyz)
    store_bn_sums(sums_ptr, s_gy.to(tl.float64), s_gyz.to(tl.float64), pid_p, ch, C_OUT, P, DETERMINISTIC)


def pooled_bn_sums(grad_out: torch.Tensor, code: torch.Tensor, zmax: torch.Tensor, deterministic: bool,
                   buf: torch.Tensor | None = None, cast: bool = True) -> torch.Tensor:
    """(2, C) sum(gy) and sum(gy * zhat) of a pooling block from grad_out, code and zmax, each (N, C, TP)
    (code and zmax with the same strides, as the forward made them; grad_out any): one launch, then a fixed-order
    sum of the per-program fp64 partials when ``deterministic``, else relaxed fp64 atomics (into ``buf``, a
    zeroed (2, 1, C) fp64 buffer, when the caller has one: ``_conv_fwd.zeroed``). fp32, or fp64 with ``cast``
    False (``_conv_fwd.bn_sums_of``)."""
    N, C, TP = code.shape
    assert zmax.stride() == code.stride(), "pooled_bn_sums: code and zmax differ in layout"
    if grad_out.is_contiguous() and code.is_contiguous() and TP >= ROWS_MIN_TP:  # long rows of 16-byte loads
        block = clamp_pow2(TP, 16, 64 if INTERPRET else ROWS_BLOCK)
        _, P = persistent_grid(N * C, 1, SUMS_PER_SM)
        part = bn_sum_partials(P, C, deterministic, grad_out.device, buf)
        wrap_triton(_pooled_bn_sums_rows_kernel)[(P,)](
            grad_out, code, zmax, part, C, TP, N * C, N * C * TP, triton.cdiv(TP + 15, block), P,
            DETERMINISTIC=deterministic, BLOCK_C=triton.next_power_of_2(C), BLOCK=block, num_warps=4)
        return bn_sums_of(part, cast)
    bt = clamp_pow2(TP, 16, 32 if INTERPRET else 128)
    bc = clamp_pow2(C, 1, 16 if INTERPRET else max(16, SUMS_TILE // bt))
    tb = triton.cdiv(TP, bt)
    tiles, P = persistent_grid(N * tb, 1)
    part = bn_sum_partials(P, C, deterministic, grad_out.device, buf)
    wrap_triton(_pooled_bn_sums_kernel)[(P, triton.cdiv(C, bc))](
        grad_out, code, zmax, part, C, TP, tb, tiles, P, *grad_out.stride(), *code.stride(),
        DETERMINISTIC=deterministic, BLOCK_C=bc, BLOCK_T=bt, num_warps=4)
    return bn_sums_of(part, cast)


def reference_pooled_bn_sums(grad_out: torch.Tensor, code: torch.Tensor, zmax: torch.Tensor) -> torch.Tensor:
    """``pooled_bn_sums`` as torch reductions, accumulated in fp64."""
    gy = torch.where(code >= 0, grad_out.double(), 0.0)
    return torch.stack([gy.sum(dim=(0, 2)), (gy * zmax.double()).sum(dim=(0, 2))]).float()
