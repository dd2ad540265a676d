"""Backward Triton kernels of ``conv1d_bn_relu`` and their launchers (docs/design.md#kernels).

Nothing unpooled was saved by the forward: the conv output is recomputed tile by tile (the same
``conv_tile`` and block sizes as the forward), and the pooled gradient goes to the window offset the
forward recorded in ``code`` (so the recompute need not reproduce the forward's argmax).

1. ``_bwd_reduce_kernel``: per channel, sum(gy) and sum(gy * zhat), where gy is the gradient at the
   BN output (after the pool and ReLU backward) and zhat the normalised conv output. Skipped when the
   forward kept zmax (a pooling block with 16-bit inputs): then one pass over the pooled tensors, ``pooled_bn_sums``.
2. ``_bwd_gz_kernel``: the conv-output gradient gz = gamma * invstd * (gy - mean(gy) - zhat *
   mean(gy * zhat)) in training (BN's backward; with a process group the two sums are all-reduced
   in between, as SyncBatchNorm's backward does), gamma * invstd * gy in eval. gz is a transient
   (C_out, N * T) buffer of the backward, freed when it returns.
3. ``_dw_kernel``: dW = gz x X^T (implicit GEMM over batch x time) and db = sum(gz), split over
   programs; partials are summed in a fixed order (deterministic) or atomically added. When the input
   needs no gradient and C_in x k is small (conv1: the waveform, 64), ``_bwd_gz_dw_kernel`` does
   steps 2 and 3 in one pass and gz never reaches memory (conv1 is ~70 % of the bytes,
   docs/design.md#performance-ceiling).
4. ``_dx_kernel``: dx as a transposed conv, one output phase (position mod stride) per program so no
   multiply-adds are wasted on the stride's zeros: dx[ci, ph + s*i] = sum_{co, m} w[co, ci, kk0 + s*m]
   * gz[co, i + c0 - m], kk0 = (ph + pad) mod s, c0 = (ph + pad - kk0) / s.

Symbols as in ``_conv_fwd.py``'s docstring, plus: gy, the gradient at the BN output; zhat, the normalised
conv output; gz, the conv output's gradient (C_OUT, M); sums, per channel (sum gy, sum gy * zhat): per program
in ``_bwd_reduce_kernel``, the merged (2, C_OUT) totals (all-reduced across processes in training) after it;
SPLIT: programs sharing dW's M axis (``_dw_kernel``; NUM_MT = cdiv(M, BLOCK_M) tiles in all); BLOCK_RW,
conv1's whole reduction in one tile; TRAINING: BN used batch statistics (its backward subtracts the
two means); DETERMINISTIC: partials summed in a fixed order instead of atomically added. In ``_dx_kernel``:
ph, a phase (input position mod stride); KMAX = ceil(K / stride) taps per channel and phase; BLOCK_CI,
BLOCK_Q: its tile of input channels and of positions of that phase.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._bn_sums import pooled_bn_sums
from ._common import INTERPRET, clamp_pow2, dot_precision
from ._conv_fwd import (
    BN_SUMS,
    _load_bias,
    bn_sum_partials,
    bn_sums_of,
    cast_out,
    conv_blocks,
    conv_tile,
    stats_tiles,
    store_bn_sums,
    zeroed,
)

# fmt: off
# Hand-wrapped on purpose: Triton kernels and launches take 15-30 arguments, and one per line (the
# formatter's layout) would triple these files' length without making them clearer.


@triton.jit
def _bwd_tile(x_ptr, w_ptr, b_ptr, stats_ptr, go_ptr, code_ptr, out_ptr, co, m, C_OUT, L, R, T, TP, M,
              sxn, sxc, sxl, sgn, sgc, sgl, stride, pad, HAS_BIAS: tl.constexpr,
              HAS_POOL: tl.constexpr, POOL: tl.constexpr, K: tl.constexpr, BLOCK_CO: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, INTERP: tl.constexpr,
              PRECISION: tl.constexpr):
    """(zhat, gy, valid) of one (channel, batch x time) tile, all fp32."""
    ok = m < M
    n = m // T
    t = m % T
    c_ok = co < C_OUT
    z = conv_tile(x_ptr, w_ptr, co, n, t, ok, C_OUT, L, R, sxn, sxc, sxl, stride, pad,
                  K, BLOCK_CO, BLOCK_M, BLOCK_R, INTERP, PRECISION)
    z += _load_bias(b_ptr, co, C_OUT, HAS_BIAS, BLOCK_CO)[:, None]
    mean = tl.load(stats_ptr + co, mask=c_ok, other=0.0)
    invstd = tl.load(stats_ptr + C_OUT + co, mask=c_ok, other=0.0)
    valid = c_ok[:, None] & ok[None, :]
    zhat = tl.where(valid, (z - mean[:, None]) * invstd[:, None], 0.0)
    n64 = n.to(tl.int64)
    if HAS_POOL:
        j = t // POOL
        hit = valid & (j < TP)[None, :]
        off = (n64 * C_OUT)[None, :] * TP + co[:, None] * TP + j[None, :]
        code = tl.load(code_ptr + off, mask=hit, other=-1).to(tl.int32)
        go = tl.load(go_ptr + (n64 * sgn)[None, :] + co[:, None] * sgc + (j * sgl)[None, :], mask=hit,
                     other=0.0).to(tl.float32)
        gy = tl.where(hit & (code == (t % POOL)[None, :]), go, 0.0)
    else:
        o = tl.load(out_ptr + (n64 * C_OUT)[None, :] * T + co[:, None] * T + t[None, :], mask=valid,
                    other=0.0)
        go = tl.load(go_ptr + (n64 * sgn)[None, :] + co[:, None] * sgc + (t * sgl)[None, :], mask=valid,
                     other=0.0).to(tl.float32)
        gy = tl.where(valid & (o > 0), go, 0.0)  # ReLU's backward reads its result, as PyTorch's does
    return zhat, gy, valid


@triton.jit
def _bwd_reduce_kernel(x_ptr, w_ptr, b_ptr, stats_ptr, go_ptr, code_ptr, out_ptr, sums_ptr, C_OUT, L, R,
                       T, TP, M, P, sxn, sxc, sxl, sgn, sgc, sgl, stride, pad, HAS_BIAS: tl.constexpr,
                       HAS_POOL: tl.constexpr, POOL: tl.constexpr, K: tl.constexpr,
                       BLOCK_CO: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
                       TILES: tl.constexpr, DETERMINISTIC: tl.constexpr, INTERP: tl.constexpr,
                       PRECISION: tl.constexpr):
    """sum(gy) and sum(gy * zhat) per channel over TILES tiles, in fp32; written to sums[:, p, co]
    (deterministic: summed later in a fixed order) or atomically added to sums[:, 0, co]. ``sums`` is fp64:
    thousands of per-program partials merged in fp32 lost a factor 2-5 in precision against cuDNN's BN
    backward (bench/results/gpu_check-h200-2026-11-30, fp32 dgamma / dbeta)."""
    pid_p = tl.program_id(0)  # the long axis first: CUDA caps grid axes 1 and 2 at 65,535
    pid_c = tl.program_id(1)
    co = pid_c * BLOCK_CO + tl.arange(0, BLOCK_CO)
    s_gy = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    s_gyz = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    for i in range(TILES):
        m = (pid_p * TILES + i) * BLOCK_M + tl.arange(0, BLOCK_M)
        zhat, gy, valid = _bwd_tile(x_ptr, w_ptr, b_ptr, stats_ptr, go_ptr, code_ptr, out_ptr, co, m,
                                    C_OUT, L, R, T, TP, M, sxn, sxc, sxl, sgn, sgc, sgl, stride, pad,
                                    HAS_BIAS, HAS_POOL, POOL, K, BLOCK_CO, BLOCK_M, BLOCK_R, INTERP,
                                    PRECISION)
        s_gy += tl.sum(gy, axis=1)
        s_gyz += tl.sum(gy * zhat, axis=1)
    store_bn_sums(sums_ptr, s_gy, s_gyz, pid_p, co, C_OUT, P, DETERMINISTIC)


@triton.jit
def _bn_grad(zhat, gy, stats_ptr, g_ptr, sums_ptr, co, C_OUT, TRAINING: tl.constexpr):
    """BN's backward for one tile: the conv-output gradient gz (fp32)."""
    c_ok = co < C_OUT
    scale = tl.load(stats_ptr + C_OUT + co, mask=c_ok, other=0.0)
    scale *= tl.load(g_ptr + co, mask=c_ok, other=0.0).to(tl.float32)
    if TRAINING:
        count = tl.load(stats_ptr + 3 * C_OUT + co, mask=c_ok, other=1.0)
        mean_gy = tl.load(sums_ptr + co, mask=c_ok, other=0.0) / count
        mean_gyz = tl.load(sums_ptr + C_OUT + co, mask=c_ok, other=0.0) / count
        return scale[:, None] * (gy - mean_gy[:, None] - zhat * mean_gyz[:, None])
    return scale[:, None] * gy


@triton.jit
def _bwd_gz_kernel(x_ptr, w_ptr, b_ptr, stats_ptr, g_ptr, go_ptr, code_ptr, out_ptr, sums_ptr, gz_ptr,
                   C_OUT, L, R, T, TP, M, sxn, sxc, sxl, sgn, sgc, sgl, stride, pad,
                   HAS_BIAS: tl.constexpr, HAS_POOL: tl.constexpr, POOL: tl.constexpr,
                   TRAINING: tl.constexpr, K: tl.constexpr, BLOCK_CO: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, INTERP: tl.constexpr,
                   PRECISION: tl.constexpr):
    """gz[co, n * T + t], the gradient at the conv output (BN backward), in gz's dtype."""
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    zhat, gy, valid = _bwd_tile(x_ptr, w_ptr, b_ptr, stats_ptr, go_ptr, code_ptr, out_ptr, co, m,
                                C_OUT, L, R, T, TP, M, sxn, sxc, sxl, sgn, sgc, sgl, stride, pad,
                                HAS_BIAS, HAS_POOL, POOL, K, BLOCK_CO, BLOCK_M, BLOCK_R, INTERP,
                                PRECISION)
    gz = _bn_grad(zhat, gy, stats_ptr, g_ptr, sums_ptr, co, C_OUT, TRAINING)
    tl.store(gz_ptr + co[:, None].to(tl.int64) * M + m[None, :], cast_out(gz, gz_ptr.dtype.element_ty, INTERP),
             mask=valid)


@triton.jit
def _store_dw_db(dw_ptr, db_ptr, acc, db, idx, co, r, C_OUT, R, wmask, bmask, DETERMINISTIC: tl.constexpr):
    """The weight-gradient tail shared by ``_bwd_gz_dw_kernel`` and ``_dw_kernel``: a program's dW tile
    acc (BLOCK_CO, BLOCK_R) and db (BLOCK_CO,) go to partial ``idx`` of dw (P or SPLIT, C_out, R) and db (P or
    SPLIT, C_out), summed later in a fixed order (deterministic), or are atomically added (relaxed) to dw[0], db[0]."""
    if DETERMINISTIC:
        tl.store(dw_ptr + (idx * C_OUT + co[:, None]).to(tl.int64) * R + r[None, :], acc, mask=wmask)
        tl.store(db_ptr + idx * C_OUT + co, db, mask=bmask)
    else:
        tl.atomic_add(dw_ptr + co[:, None] * R + r[None, :], acc, mask=wmask, sem="relaxed")
        tl.atomic_add(db_ptr + co, db, mask=bmask, sem="relaxed")


@triton.jit
def _bwd_gz_dw_kernel(x_ptr, w_ptr, b_ptr, stats_ptr, g_ptr, go_ptr, code_ptr, out_ptr, sums_ptr, dw_ptr,
                      db_ptr, C_OUT, L, R, T, TP, M, P, sxn, sxc, sxl, sgn, sgc, sgl, stride, pad,
                      HAS_BIAS: tl.constexpr, HAS_POOL: tl.constexpr, POOL: tl.constexpr,
                      TRAINING: tl.constexpr, K: tl.constexpr, BLOCK_CO: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_RW: tl.constexpr,
                      TILES: tl.constexpr, DETERMINISTIC: tl.constexpr, INTERP: tl.constexpr,
                      PRECISION: tl.constexpr):
    """gz and dW in one pass, for a layer whose input needs no gradient (conv1: the waveform) and
    whose whole C_in x k fits one tile (BLOCK_RW >= R): gz never goes to memory. dW and db partials
    of TILES m-tiles go to dw[p] / db[p] (deterministic) or are atomically added to dw[0] / db[0]."""
    pid_p = tl.program_id(0)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    c_ok = co < C_OUT
    r = tl.arange(0, BLOCK_RW)
    r_ok = r < R
    ci = r // K
    kk = r % K
    acc = tl.zeros((BLOCK_CO, BLOCK_RW), dtype=tl.float32)
    db = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    for i in range(TILES):
        m = (pid_p * TILES + i) * BLOCK_M + tl.arange(0, BLOCK_M)
        zhat, gy, valid = _bwd_tile(x_ptr, w_ptr, b_ptr, stats_ptr, go_ptr, code_ptr, out_ptr, co, m,
                                    C_OUT, L, R, T, TP, M, sxn, sxc, sxl, sgn, sgc, sgl, stride, pad,
                                    HAS_BIAS, HAS_POOL, POOL, K, BLOCK_CO, BLOCK_M, BLOCK_R, INTERP,
                                    PRECISION)
        gz = tl.where(valid, _bn_grad(zhat, gy, stats_ptr, g_ptr, sums_ptr, co, C_OUT, TRAINING), 0.0)
        # rounded to the input dtype, as the unfused path stores it, for a same-dtype tensor-core dot
        gzc = cast_out(gz, x_ptr.dtype.element_ty, INTERP)
        db += tl.sum(gzc.to(tl.float32), axis=1)
        ok = m < M
        t = m % T
        pos = (t * stride - pad)[:, None] + kk[None, :]
        xm = ok[:, None] & r_ok[None, :] & (pos >= 0) & (pos < L)
        xv = tl.load(x_ptr + ((m // T).to(tl.int64) * sxn)[:, None] + (ci.to(tl.int64) * sxc)[None, :]
                     + pos.to(tl.int64) * sxl, mask=xm, other=0.0)
        if INTERP:
            gzc = gzc.to(tl.float32)
            xv = xv.to(tl.float32)
        acc = tl.dot(gzc, xv, acc, input_precision=PRECISION)
    _store_dw_db(dw_ptr, db_ptr, acc, db, pid_p, co, r, C_OUT, R, c_ok[:, None] & r_ok[None, :], c_ok,
                 DETERMINISTIC)


@triton.jit
def _dw_kernel(gz_ptr, x_ptr, dw_ptr, db_ptr, C_OUT, L, R, T, M, NUM_MT, SPLIT, sxn, sxc, sxl, stride, pad,
               K: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
               DETERMINISTIC: tl.constexpr, INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """dW[co, r] = sum_m gz[co, m] x[n_m, r // K, t_m * stride - pad + r % K] over the m-tiles
    pid_s, pid_s + SPLIT, ...; db[co] = sum_m gz[co, m] from the pid_r == 0 programs."""
    pid_c = tl.program_id(0)
    pid_r = tl.program_id(1)
    pid_s = tl.program_id(2)
    co = pid_c * BLOCK_CO + tl.arange(0, BLOCK_CO)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    c_ok = co < C_OUT
    r_ok = r < R
    ci = r // K
    kk = r % K
    acc = tl.zeros((BLOCK_CO, BLOCK_R), dtype=tl.float32)
    db = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    for it in range(pid_s, NUM_MT, SPLIT):
        m = it * BLOCK_M + tl.arange(0, BLOCK_M)
        ok = m < M
        n = m // T
        t = m % T
        g = tl.load(gz_ptr + co[:, None].to(tl.int64) * M + m[None, :], mask=c_ok[:, None] & ok[None, :],
                    other=0.0)
        pos = (t * stride - pad)[:, None] + kk[None, :]
        xm = ok[:, None] & r_ok[None, :] & (pos >= 0) & (pos < L)
        xv = tl.load(x_ptr + (n.to(tl.int64) * sxn)[:, None] + (ci.to(tl.int64) * sxc)[None, :]
                     + pos.to(tl.int64) * sxl, mask=xm, other=0.0)
        db += tl.sum(g.to(tl.float32), axis=1)
        if INTERP:
            g = g.to(tl.float32)
            xv = xv.to(tl.float32)
        acc = tl.dot(g, xv, acc, input_precision=PRECISION)
    _store_dw_db(dw_ptr, db_ptr, acc, db, pid_s, co, r, C_OUT, R, c_ok[:, None] & r_ok[None, :],
                 c_ok & ((co * 0 + pid_r) == 0), DETERMINISTIC)


@triton.jit
def _dx_kernel(gz_ptr, w_ptr, dx_ptr, C_IN, C_OUT, L, T, M, sgc, sgm, stride, pad, K: tl.constexpr,
               KMAX: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_R: tl.constexpr,
               INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """dx[n, ci, ph + stride * i] for one phase ph = program_id(2); reduction over (co, m) with
    kk = kk0 + stride * m < K (KMAX = ceil(K / stride) slots per channel). gz[co, n * T + t] is read through its
    strides sgc, sgm ((C_out, M): M, 1; the row-GEMM path's (M, C_out): 1, C_out)."""
    pid_q = tl.program_id(0)
    pid_c = tl.program_id(1)
    ph = tl.program_id(2)
    n_pos = (L - ph + stride - 1) // stride
    kk0 = (ph + pad) % stride
    c0 = (ph + pad - kk0) // stride
    ci = pid_c * BLOCK_CI + tl.arange(0, BLOCK_CI)
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    ci_ok = ci < C_IN
    q_ok = q < (M // T) * n_pos
    n_div = tl.maximum(n_pos, 1)  # a phase can be empty (L < stride): no division by zero
    n = q // n_div
    i = q % n_div
    R2 = C_OUT * KMAX
    acc = tl.zeros((BLOCK_CI, BLOCK_Q), dtype=tl.float32)
    for r0 in range(0, R2, BLOCK_R):
        r2 = r0 + tl.arange(0, BLOCK_R)
        co = r2 // KMAX
        mm = r2 % KMAX
        kk = kk0 + stride * mm
        r_ok = (r2 < R2) & (kk < K)
        wt = tl.load(w_ptr + co[None, :] * (C_IN * K) + ci[:, None] * K + kk[None, :],
                     mask=ci_ok[:, None] & r_ok[None, :], other=0.0)
        tt = i[None, :] + c0 - mm[:, None]
        gm = r_ok[:, None] & q_ok[None, :] & (tt >= 0) & (tt < T)
        g = tl.load(gz_ptr + co[:, None].to(tl.int64) * sgc + ((n.to(tl.int64) * T)[None, :] + tt) * sgm, mask=gm,
                    other=0.0)
        if INTERP:
            wt = wt.to(tl.float32)
            g = g.to(tl.float32)
        acc = tl.dot(wt, g, acc, input_precision=PRECISION)
    s = ph + stride * i
    off = (n.to(tl.int64) * C_IN)[None, :] * L + ci[:, None] * L + s[None, :]
    tl.store(dx_ptr + off, cast_out(acc, dx_ptr.dtype.element_ty, INTERP), mask=ci_ok[:, None] & q_ok[None, :])


# ----------------------------------------------------------------------------------------- launchers
# Largest C_in x k for the one-pass gz + dW kernel (its dW accumulator is BLOCK_CO x next_pow2(R) fp32).
FUSED_DW_MAX_R = 1024 if INTERPRET else 128


# dx tile on a GPU: 64 positions x a 32-long reduction step. 128 x 64 spilled up to 1.2 KB per thread under
# Triton 3.6, 128 x 32 and 64 x 64 up to 168 B; 64 x 32 spills under neither 3.6 nor 3.9
# (bench.sass_report --spills-only, bf16 batch 64).
DX_BLOCK_Q = 64


def _split(programs: int, num_tiles: int) -> int:
    """Split-K factor of the dW GEMM: enough programs to fill a GPU (~1,024), one under the
    interpreter (programs run serially there)."""
    if INTERPRET:
        return 1
    return max(1, min(num_tiles, 1024 // max(1, programs)))


def generic_backward(grad_out: torch.Tensor, x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None,
                     gamma: torch.Tensor, stats: torch.Tensor, code: torch.Tensor, out: torch.Tensor | None, K: int,
                     stride: int, padding: int, T: int, pool: int | None, training: bool, deterministic: bool,
                     input_grad: bool, all_reduce=None) -> tuple[torch.Tensor | None, ...]:
    """(dx or None, dw2d fp32, db fp32 or None, local (2, C_out) sum(gy), sum(gy * zhat)) for any shape
    (``_conv_paths.conv_bn_relu_backward`` picks the kernels of a block).

    ``all_reduce`` (SyncBatchNorm semantics) receives the (2, C) fp32 local sums and returns the
    global ones; the returned BN gradients stay local, as SyncBatchNorm's do. ``out`` is what the forward
    saved beside the codes: the block's output without a pool (ReLU's mask), zmax with one (the BN sums then
    come from it, ``_bn_sums.pooled_bn_sums``, with no recompute; empty in fp32, ``keeps_zmax``)."""
    N, C_in, L = x.shape
    C, R = w2d.shape
    M = N * T
    p = pool if pool is not None else 1
    TP = T // p
    dev = x.device
    bco, bm, br, warps = conv_blocks(C, R, M, x.dtype)
    prec = dot_precision(x)
    b = bias if bias is not None else w2d
    # its kernels read the codes and zmax contiguous: a banded pool stores them channels-last
    # (``_conv_paths.codes_channels_last``; this backward then runs only where x needs a gradient: conv1 of a user's
    # model that trains its input)
    code, out = code.contiguous(), out.contiguous() if out is not None else None
    o = out if out is not None else code
    go_strides = grad_out.stride()
    common = (C, L, R, T, TP, M, x.stride(0), x.stride(1), x.stride(2), *go_strides, stride, padding)
    flags = dict(HAS_BIAS=bias is not None, HAS_POOL=pool is not None, POOL=p, K=K, BLOCK_CO=bco,
                 BLOCK_M=bm, BLOCK_R=br, INTERP=INTERPRET, PRECISION=prec, num_warps=warps)
    num_mt = triton.cdiv(M, bm)
    tiles = stats_tiles(num_mt)
    P = triton.cdiv(num_mt, tiles)
    fused_dw = not input_grad and R <= FUSED_DW_MAX_R  # conv1: gz stays in registers
    # non-deterministic: the atomics' accumulators (BN sums, dW, db; dW and db are summed into new tensors, so
    # the op's outputs share no buffer) zeroed by one fill
    acc = None if deterministic else zeroed(dev, ((2, 1, C), BN_SUMS), ((1, C, R), torch.float32),
                                           ((1, C), torch.float32))
    if pool is not None and out.numel():
        # (2, C): sum(gy), sum(gy * zhat), from the forward's zmax
        local = pooled_bn_sums(grad_out, code, out, deterministic, acc[0] if acc else None)
    else:
        part = bn_sum_partials(P, C, deterministic, dev, acc[0] if acc else None)  # fp64: _bwd_reduce_kernel
        wrap_triton(_bwd_reduce_kernel)[(P, triton.cdiv(C, bco))](
            x, w2d, b, stats, grad_out, code, o, part, C, L, R, T, TP, M, P,
            x.stride(0), x.stride(1), x.stride(2), *go_strides, stride, padding, TILES=tiles,
            DETERMINISTIC=deterministic, **flags)
        local = bn_sums_of(part)  # (2, C): sum(gy), sum(gy * zhat); a fixed-order reduction
    sums = all_reduce(local) if (training and all_reduce is not None) else local
    if fused_dw:
        rw = clamp_pow2(R, 16, FUSED_DW_MAX_R)
        if deterministic:
            dw_part = torch.empty((P, C, R), device=dev, dtype=torch.float32)
            db_part = torch.empty((P, C), device=dev, dtype=torch.float32)
        else:
            dw_part, db_part = acc[1:]
        wrap_triton(_bwd_gz_dw_kernel)[(P, triton.cdiv(C, bco))](
            x, w2d, b, stats, gamma, grad_out, code, o, sums, dw_part, db_part, C, L, R, T, TP, M, P,
            x.stride(0), x.stride(1), x.stride(2), *go_strides, stride, padding, TRAINING=training,
            BLOCK_RW=rw, TILES=tiles, DETERMINISTIC=deterministic, **flags)
        db = db_part.sum(dim=0) if bias is not None else None
        return None, dw_part.sum(dim=0), db, local

    gz = torch.empty((C, M), device=dev, dtype=x.dtype)
    wrap_triton(_bwd_gz_kernel)[(num_mt, triton.cdiv(C, bco))](
        x, w2d, b, stats, gamma, grad_out, code, o, sums, gz, *common, TRAINING=training, **flags)

    wco, wr = clamp_pow2(C, 16, 256 if INTERPRET else 64), clamp_pow2(R, 16, 1024 if INTERPRET else 64)
    wm = clamp_pow2(M, 16, 512) if INTERPRET else 64
    w_mt = triton.cdiv(M, wm)
    grid_cr = triton.cdiv(C, wco) * triton.cdiv(R, wr)
    split = _split(grid_cr, w_mt)
    if deterministic:
        dw_part = torch.empty((split, C, R), device=dev, dtype=torch.float32)
        db_part = torch.empty((split, C), device=dev, dtype=torch.float32)
    else:
        dw_part, db_part = acc[1:]
    wrap_triton(_dw_kernel)[(triton.cdiv(C, wco), triton.cdiv(R, wr), split)](
        gz, x, dw_part, db_part, C, L, R, T, M, w_mt, split, x.stride(0), x.stride(1), x.stride(2),
        stride, padding, K=K, BLOCK_CO=wco, BLOCK_M=wm, BLOCK_R=wr, DETERMINISTIC=deterministic,
        INTERP=INTERPRET, PRECISION=prec, num_warps=4)
    dw = dw_part.sum(dim=0)
    db = db_part.sum(dim=0) if bias is not None else None

    dx = dx_from_gz(gz, w2d, x, K, stride, padding, T, M, 1) if input_grad else None
    return dx, dw, db, local


def dx_from_gz(gz: torch.Tensor, w2d: torch.Tensor, x: torch.Tensor, K: int, stride: int, padding: int, T: int,
               sgc: int, sgm: int) -> torch.Tensor:
    """dx (N, C_in, L) in x.dtype, the transposed conv of gz (element strides sgc per channel, sgm per
    position row n * T + t) with w2d (C_out, C_in * K)."""
    N, C_in, L = x.shape
    C = w2d.shape[0]
    dx = torch.empty((N, C_in, L), device=x.device, dtype=x.dtype)
    kmax = triton.cdiv(K, stride)
    bci = clamp_pow2(C_in, 16, 256 if INTERPRET else 64)
    bq = clamp_pow2(N * triton.cdiv(L, stride), 16, 512) if INTERPRET else DX_BLOCK_Q
    bx = clamp_pow2(C * kmax, 16, 1024 if INTERPRET else 32)  # see DX_BLOCK_Q
    grid = (triton.cdiv(N * triton.cdiv(L, stride), bq), triton.cdiv(C_in, bci), stride)
    wrap_triton(_dx_kernel)[grid](
        gz, w2d, dx, C_in, C, L, T, N * T, sgc, sgm, stride, padding, K=K, KMAX=kmax, BLOCK_CI=bci, BLOCK_Q=bq,
        BLOCK_R=bx, INTERP=INTERPRET, PRECISION=dot_precision(x), num_warps=4)
    return dx
