"""Banded-GEMM Triton kernels for a single-input-channel conv block (conv1 on the waveform), forward and
backward (docs/design.md#kernels).

A conv with C_in = 1 followed by a max-pool reads, for pooled output q, the window
``x_pad[q * STEP + j]``, j < W, STEP = stride * POOL, W = stride * (POOL - 1) + K. So one GEMM row per
pool window does the whole window at once: A[q, j] = x_pad[q * STEP + j] (overlapping rows of one
contiguous, 16-byte-aligned padded waveform: wide loads, no gathers, no masks) times a banded weight
B[j, (u, c)] = w[c, j - stride * u] for 0 <= j - stride * u < K (else 0), u < POOL the slot in the
window, c the channel. Z = A @ B is the conv output of every slot of the window, positions on the MMA's
M axis and (slot, channel) on its N axis, so conv1's 16 channels still fill a 64 x 128 tensor-core
tile. The band costs W / K of the multiply-adds (conv1: 80 / 64 = 1.25 with W padded to 80); the
gathers and index arithmetic of the generic implicit GEMM (``_conv_fwd.conv_tile``) disappear.

Programs walk the row tiles with a fixed stride (tile ``p``, ``p + P``, ...; a persistent grid of at most
``_conv_fwd.PROGRAMS`` programs), so no compile-time constant depends on the batch or the length.

Symbols (beyond ``_conv_fwd.py``'s): STEP = stride * POOL, the row step in samples; W, the window length;
J1 (+ J2): W rounded up to one (or two) power-of-two chunks of A's columns (conv1: 64 + 16); JB = J1 + J2;
PP * BLOCK_C: B's columns, slot-major (col = u * BLOCK_C + c); TR: rows per clip (TP pooled windows for
the pool and the backward's sums, TQ = cdiv(T, POOL) windows covering every conv position for the
statistics and dW); ROWS = N * TR; g: a global row (n = g // TR, q = g % TR); LP: the padded waveform's
length per clip, a multiple of 16 (xp[n, pad + i] = x[n, 0, i], zeros elsewhere); NUM_TILES = cdiv(ROWS,
BLOCK_Q); dband: dW in band form (JB, PP, C_out), folded to (C_out, K) by the launcher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._bn_sums import pooled_bn_sums
from ._common import INTERPRET, clamp_pow2, dot_precision, next_pow2
from ._conv_fwd import (
    bn_sum_partials,
    cast_out,
    chan_merge,
    code_dtype,
    fp32_if,
    keeps_zmax,
    merge_stats,
    persistent_grid,
    pool_select,
    reg_cap,
    store_bn_sums,
    store_moments,
    store_partial,
)

# fmt: off
# Hand-wrapped on purpose, as in _conv_fwd.py.


@triton.jit
def _band_weight(w_ptr, c0, C_OUT, J0: tl.constexpr, J: tl.constexpr, K: tl.constexpr, STRIDE: tl.constexpr,
                 POOL: tl.constexpr, PP: tl.constexpr, BLOCK_C: tl.constexpr):
    """Rows J0 .. J0 + J of the banded weight B (J, PP * BLOCK_C) from w (C_OUT, K), zeros off the band."""
    j = J0 + tl.arange(0, J)
    col = tl.arange(0, PP * BLOCK_C)
    u = col // BLOCK_C
    c = c0 + col % BLOCK_C
    k = j[:, None] - STRIDE * u[None, :]
    ok = (k >= 0) & (k < K) & ((c < C_OUT) & (u < POOL))[None, :]
    return tl.load(w_ptr + c[None, :] * K + k, mask=ok, other=0.0)


@triton.jit
def _band_rows(xp_ptr, g, TR, LP, STEP: tl.constexpr, J0: tl.constexpr, J: tl.constexpr):
    """A's columns J0 .. J0 + J of rows g (BLOCK_Q,): xp[g // TR, (g % TR) * STEP + j]; unmasked (the
    launcher clamps g and pads xp so every read is in bounds)."""
    base = (g // TR).to(tl.int64) * LP + (g % TR) * STEP + J0
    return tl.load(xp_ptr + base[:, None] + tl.arange(0, J)[None, :])


@triton.jit
def _band_z(xp_ptr, b1, b2, bias, g, ROWS, TR, LP, STEP: tl.constexpr, J1: tl.constexpr, J2: tl.constexpr,
            PP: tl.constexpr, BLOCK_C: tl.constexpr, INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """Conv output of rows g as (BLOCK_Q, PP, BLOCK_C) fp32: z[q, u, c] = conv at t = q * POOL + u."""
    gl = tl.minimum(g, ROWS - 1)
    a1 = _band_rows(xp_ptr, gl, TR, LP, STEP, 0, J1)
    a1 = fp32_if(a1, INTERP)
    z = tl.dot(a1, b1, input_precision=PRECISION)
    if J2 > 0:
        a2 = _band_rows(xp_ptr, gl, TR, LP, STEP, J1, J2)
        a2 = fp32_if(a2, INTERP)
        z = tl.dot(a2, b2, z, input_precision=PRECISION)
    return tl.reshape(z, (g.shape[0], PP, BLOCK_C)) + bias[None, None, :]


@triton.jit
def _band_setup(w_ptr, b_ptr, c0, C_OUT, HAS_BIAS: tl.constexpr, J1: tl.constexpr, J2: tl.constexpr,
                K: tl.constexpr, STRIDE: tl.constexpr, POOL: tl.constexpr, PP: tl.constexpr,
                BLOCK_C: tl.constexpr, INTERP: tl.constexpr):
    """A program's banded weight chunks (b1, b2; b2 = b1 when J2 = 0) and channel bias (BLOCK_C,)."""
    b1 = _band_weight(w_ptr, c0, C_OUT, 0, J1, K, STRIDE, POOL, PP, BLOCK_C)
    b1 = fp32_if(b1, INTERP)
    b2 = b1
    if J2 > 0:
        b2 = _band_weight(w_ptr, c0, C_OUT, J1, J2, K, STRIDE, POOL, PP, BLOCK_C)
        b2 = fp32_if(b2, INTERP)
    c = c0 + tl.arange(0, BLOCK_C)
    bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + c, mask=c < C_OUT, other=0.0).to(tl.float32)
    return b1, b2, bias


@triton.jit
def _band_stats_kernel(xp_ptr, w_ptr, b_ptr, part_ptr, C_OUT, T, TR, ROWS, LP, NUM_TILES, P,
                       HAS_BIAS: tl.constexpr, K: tl.constexpr, STRIDE: tl.constexpr, POOL: tl.constexpr,
                       PP: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_Q: tl.constexpr, J1: tl.constexpr,
                       J2: tl.constexpr, INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """Per program: (mean, M2, count) of each channel over its row tiles, merged tile by tile with Chan's
    formula (as ``_conv_stats_kernel``); part (3, C_OUT, P) rows mean, M2, count."""
    pid_p = tl.program_id(0)
    c0 = tl.program_id(1) * BLOCK_C
    b1, b2, bias = _band_setup(w_ptr, b_ptr, c0, C_OUT, HAS_BIAS, J1, J2, K, STRIDE, POOL, PP, BLOCK_C, INTERP)
    u = tl.arange(0, PP)
    n_a = tl.zeros((BLOCK_C,), dtype=tl.float32)
    mean_a = tl.zeros((BLOCK_C,), dtype=tl.float32)
    m2_a = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for tile in range(pid_p, NUM_TILES, P):
        g = tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
        z = _band_z(xp_ptr, b1, b2, bias, g, ROWS, TR, LP, STRIDE * POOL, J1, J2, PP, BLOCK_C, INTERP, PRECISION)
        ok2 = (g < ROWS)[:, None] & ((g % TR)[:, None] * POOL + u[None, :] < T) & (u < POOL)[None, :]
        ok = ok2[:, :, None]
        n_b = tl.sum(tl.sum(ok2.to(tl.float32), axis=1), axis=0)
        mean_b = tl.sum(tl.sum(tl.where(ok, z, 0.0), axis=1), axis=0) / tl.maximum(n_b, 1.0)
        d = tl.where(ok, z - mean_b[None, None, :], 0.0)
        m2_b = tl.sum(tl.sum(d * d, axis=1), axis=0)
        n_a, mean_a, m2_a = chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b)
    store_moments(part_ptr, c0 + tl.arange(0, BLOCK_C), C_OUT, P, pid_p, mean_a, m2_a, n_a)


@triton.jit
def _band_bn_relu_pool_kernel(xp_ptr, w_ptr, b_ptr, g_ptr, beta_ptr, stats_ptr, out_ptr, code_ptr, zmax_ptr,
                              C_OUT, TP, ROWS, LP, NUM_TILES, P, HAS_BIAS: tl.constexpr, K: tl.constexpr,
                              STRIDE: tl.constexpr, POOL: tl.constexpr, PP: tl.constexpr,
                              BLOCK_C: tl.constexpr, BLOCK_Q: tl.constexpr, J1: tl.constexpr,
                              J2: tl.constexpr, STORE_ZMAX: tl.constexpr, INTERP: tl.constexpr,
                              PRECISION: tl.constexpr):
    """Pooled output out (N, C_OUT, TP) of BN (stats[0] mean, stats[1] invstd), ReLU and max over each
    window, code (N, C_OUT, TP) = the window's first maximum, -1 where ReLU gave 0, and when STORE_ZMAX zmax
    (N, C_OUT, TP) = zhat there (as ``_conv_bn_relu_pool_kernel``)."""
    c0 = tl.program_id(1) * BLOCK_C
    b1, b2, bias = _band_setup(w_ptr, b_ptr, c0, C_OUT, HAS_BIAS, J1, J2, K, STRIDE, POOL, PP, BLOCK_C, INTERP)
    c = c0 + tl.arange(0, BLOCK_C)
    c_ok = c < C_OUT
    mean = tl.load(stats_ptr + c, mask=c_ok, other=0.0)
    invstd = tl.load(stats_ptr + C_OUT + c, mask=c_ok, other=0.0)
    gamma = tl.load(g_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    shift = tl.load(beta_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    slot = tl.arange(0, PP)[None, :, None]
    for tile in range(tl.program_id(0), NUM_TILES, P):
        g = tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
        z = _band_z(xp_ptr, b1, b2, bias, g, ROWS, TP, LP, STRIDE * POOL, J1, J2, PP, BLOCK_C, INTERP, PRECISION)
        zh = (z - mean[None, None, :]) * invstd[None, None, :]
        y = tl.maximum(zh * gamma[None, None, :] + shift[None, None, :], 0.0)
        y = tl.where(slot < POOL, y, -1.0)  # ReLU outputs are >= 0: -1 marks the padded slots
        o, code, zmax = pool_select(y, zh, slot, PP, 1)
        off = ((g // TP).to(tl.int64) * C_OUT * TP + g % TP)[:, None] + c[None, :] * TP
        smask = (g < ROWS)[:, None] & c_ok[None, :]
        tl.store(out_ptr + off, cast_out(o, out_ptr.dtype.element_ty, INTERP), mask=smask)
        tl.store(code_ptr + off, code.to(code_ptr.dtype.element_ty), mask=smask)
        if STORE_ZMAX:
            tl.store(zmax_ptr + off, cast_out(zmax, zmax_ptr.dtype.element_ty, INTERP), mask=smask)


@triton.jit
def _band_grad(xp_ptr, b1, b2, bias, stats_ptr, go_ptr, code_ptr, g, c, C_OUT, T, TP, TR, ROWS, LP, sgn, sgc,
               sgl, STRIDE: tl.constexpr, POOL: tl.constexpr, PP: tl.constexpr, BLOCK_C: tl.constexpr,
               J1: tl.constexpr, J2: tl.constexpr, INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """(zhat, gy, valid) of rows g, each (BLOCK_Q, PP, BLOCK_C) fp32 / bool: gy is the pooled gradient routed
    to the slot ``code`` recorded (0 in the tail past the last whole window)."""
    c_ok = c < C_OUT
    z = _band_z(xp_ptr, b1, b2, bias, g, ROWS, TR, LP, STRIDE * POOL, J1, J2, PP, BLOCK_C, INTERP, PRECISION)
    mean = tl.load(stats_ptr + c, mask=c_ok, other=0.0)
    invstd = tl.load(stats_ptr + C_OUT + c, mask=c_ok, other=0.0)
    u = tl.arange(0, PP)
    n = g // TR
    q = g % TR
    ok2 = (g < ROWS)[:, None] & (q[:, None] * POOL + u[None, :] < T) & (u < POOL)[None, :]
    valid = ok2[:, :, None] & c_ok[None, None, :]
    zhat = tl.where(valid, (z - mean[None, None, :]) * invstd[None, None, :], 0.0)
    hit = ((g < ROWS) & (q < TP))[:, None] & c_ok[None, :]
    n64 = n.to(tl.int64)
    code = tl.load(code_ptr + (n64 * C_OUT * TP + q)[:, None] + c[None, :] * TP, mask=hit, other=-1).to(tl.int32)
    go = tl.load(go_ptr + (n64 * sgn + q * sgl)[:, None] + c[None, :] * sgc, mask=hit, other=0.0).to(tl.float32)
    gy = tl.where(u[None, :, None] == code[:, None, :], go[:, None, :], 0.0)
    return zhat, gy, valid


@triton.jit
def _band_bwd_reduce_kernel(xp_ptr, w_ptr, b_ptr, stats_ptr, go_ptr, code_ptr, sums_ptr, C_OUT, T, TP, ROWS, LP,
                            NUM_TILES, P, sgn, sgc, sgl, HAS_BIAS: tl.constexpr, K: tl.constexpr,
                            STRIDE: tl.constexpr, POOL: tl.constexpr, PP: tl.constexpr, BLOCK_C: tl.constexpr,
                            BLOCK_Q: tl.constexpr, J1: tl.constexpr, J2: tl.constexpr,
                            DETERMINISTIC: tl.constexpr, INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """sum(gy) and sum(gy * zhat) per channel over the rows of whole windows (gy is 0 elsewhere), in fp32 per
    program, stored to sums[:, p, c] (fp64; summed later in a fixed order) or atomically added to sums[:, 0, c]."""
    pid_p = tl.program_id(0)
    c0 = tl.program_id(1) * BLOCK_C
    b1, b2, bias = _band_setup(w_ptr, b_ptr, c0, C_OUT, HAS_BIAS, J1, J2, K, STRIDE, POOL, PP, BLOCK_C, INTERP)
    c = c0 + tl.arange(0, BLOCK_C)
    s_gy = tl.zeros((BLOCK_C,), dtype=tl.float32)
    s_gyz = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for tile in range(pid_p, NUM_TILES, P):
        g = tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
        zhat, gy, valid = _band_grad(xp_ptr, b1, b2, bias, stats_ptr, go_ptr, code_ptr, g, c, C_OUT, T, TP, TP,
                                     ROWS, LP, sgn, sgc, sgl, STRIDE, POOL, PP, BLOCK_C, J1, J2, INTERP, PRECISION)
        s_gy += tl.sum(tl.sum(gy, axis=1), axis=0)
        s_gyz += tl.sum(tl.sum(gy * zhat, axis=1), axis=0)
    store_bn_sums(sums_ptr, s_gy, s_gyz, pid_p, c, C_OUT, P, DETERMINISTIC)




@triton.jit
def _band_gz_dw_kernel(xp_ptr, w_ptr, b_ptr, stats_ptr, g_ptr, go_ptr, code_ptr, sums_ptr, dband_ptr, db_ptr,
                       C_OUT, T, TP, TR, ROWS, LP, NUM_TILES, P, sgn, sgc, sgl, HAS_BIAS: tl.constexpr,
                       K: tl.constexpr, STRIDE: tl.constexpr, POOL: tl.constexpr, PP: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_Q: tl.constexpr, J1: tl.constexpr, J2: tl.constexpr,
                       TRAINING: tl.constexpr, DETERMINISTIC: tl.constexpr, INTERP: tl.constexpr,
                       PRECISION: tl.constexpr):
    """gz (BN's backward, as ``_bn_grad``) and dW in band form in one pass: dband[j, (u, c)] += sum_q A[q, j]
    gz[q, u, c] (A^T @ gz on the tensor cores), db[c] += sum gz. Per program to dband[p] (P, JB, PP, C_OUT)
    and db[p] (P, C_OUT) (deterministic), or atomically added to dband[0], db[0]."""
    pid_p = tl.program_id(0)
    c0 = tl.program_id(1) * BLOCK_C
    b1, b2, bias = _band_setup(w_ptr, b_ptr, c0, C_OUT, HAS_BIAS, J1, J2, K, STRIDE, POOL, PP, BLOCK_C, INTERP)
    c = c0 + tl.arange(0, BLOCK_C)
    c_ok = c < C_OUT
    scale = tl.load(stats_ptr + C_OUT + c, mask=c_ok, other=0.0)
    scale *= tl.load(g_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    mean_gy = tl.zeros((BLOCK_C,), dtype=tl.float32)
    mean_gyz = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if TRAINING:
        count = tl.load(stats_ptr + 3 * C_OUT + c, mask=c_ok, other=1.0)
        mean_gy = tl.load(sums_ptr + c, mask=c_ok, other=0.0) / count
        mean_gyz = tl.load(sums_ptr + C_OUT + c, mask=c_ok, other=0.0) / count
    acc1 = tl.zeros((J1, PP * BLOCK_C), dtype=tl.float32)
    acc2 = tl.zeros((J2 if J2 > 0 else 16, PP * BLOCK_C), dtype=tl.float32)
    db = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for tile in range(pid_p, NUM_TILES, P):
        g = tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
        zhat, gy, valid = _band_grad(xp_ptr, b1, b2, bias, stats_ptr, go_ptr, code_ptr, g, c, C_OUT, T, TP, TR,
                                     ROWS, LP, sgn, sgc, sgl, STRIDE, POOL, PP, BLOCK_C, J1, J2, INTERP, PRECISION)
        gz = scale[None, None, :] * (gy - mean_gy[None, None, :] - zhat * mean_gyz[None, None, :])
        # rounded to the input dtype, as the unfused path stores gz, for a same-dtype tensor-core dot
        gzc = cast_out(tl.where(valid, gz, 0.0), xp_ptr.dtype.element_ty, INTERP)
        db += tl.sum(tl.sum(gzc.to(tl.float32), axis=1), axis=0)
        gz2 = tl.reshape(gzc, (BLOCK_Q, PP * BLOCK_C))
        gz2 = fp32_if(gz2, INTERP)
        gl = tl.minimum(g, ROWS - 1)
        a1 = _band_rows(xp_ptr, gl, TR, LP, STRIDE * POOL, 0, J1)
        a1 = fp32_if(a1, INTERP)
        acc1 = tl.dot(tl.trans(a1), gz2, acc1, input_precision=PRECISION)
        if J2 > 0:
            a2 = _band_rows(xp_ptr, gl, TR, LP, STRIDE * POOL, J1, J2)
            a2 = fp32_if(a2, INTERP)
            acc2 = tl.dot(tl.trans(a2), gz2, acc2, input_precision=PRECISION)
    col = tl.arange(0, PP * BLOCK_C)
    cc = c0 + col % BLOCK_C
    wcol = (col // BLOCK_C) * C_OUT + cc  # (u, c) -> u * C_OUT + c in dband's (JB, PP, C_OUT)
    if DETERMINISTIC:
        idx = pid_p
    else:
        idx = pid_p * 0
    base = dband_ptr + idx.to(tl.int64) * ((J1 + J2) * PP * C_OUT)
    j1 = tl.arange(0, J1)
    store_partial(base + j1[:, None] * (PP * C_OUT) + wcol[None, :], acc1, (cc < C_OUT)[None, :], DETERMINISTIC)
    if J2 > 0:
        j2 = J1 + tl.arange(0, J2 if J2 > 0 else 16)
        store_partial(base + j2[:, None] * (PP * C_OUT) + wcol[None, :], acc2, (cc < C_OUT)[None, :], DETERMINISTIC)
    store_partial(db_ptr + idx * C_OUT + c, db, c_ok, DETERMINISTIC)


# ----------------------------------------------------------------------------------------- launchers
BLOCK_Q_GPU = 64  # rows per tile: the M of one warpgroup's wgmma
MAX_COLS = 128  # B's columns PP * BLOCK_C: one m64n128 wgmma, a 64-register fp32 accumulator per thread
# Columns of the kernels with a per-element epilogue (pool, backward): at 128 the backward spilled 96 B per thread
# (Triton 3.9) and the pool kernel, choosing zmax, needed 196 registers (predicted 5.7 against 4.4 us per clip).
EPILOGUE_COLS = 64
MAX_WINDOW = 256  # W = stride * (pool - 1) + K beyond which the band wastes too much (and B too big)


def _chunks(window: int) -> tuple[int, int]:
    """(J1, J2): W as one power-of-two chunk >= 16, plus a second one for the remainder (0 if none)."""
    j1 = max(16, 1 << (window.bit_length() - 1))
    rest = window - j1
    return j1, (clamp_pow2(rest, 16, j1) if rest > 0 else 0)


def band_plan(c_in: int, c_out: int, k: int, stride: int, pool: int | None, max_cols: int = MAX_COLS) -> dict | None:
    """The shape rule of this file: a block takes the banded kernels when C_in == 1 (a waveform), it pools
    (pool >= 2), the window W = stride * (pool - 1) + k is at most ``MAX_WINDOW`` and the pool's PP slots fit
    ``max_cols`` columns; None otherwise (the generic implicit GEMM). Returns the constexprs POOL, PP, BLOCK_C,
    J1, J2 (PP * BLOCK_C columns, at most ``max_cols``). The statistics ask with ``MAX_COLS``, the backward
    and the pool with ``EPILOGUE_COLS`` (``epilogue_plan``)."""
    if c_in != 1 or pool is None or pool < 2:
        return None
    pp = next_pow2(pool)
    window = stride * (pool - 1) + k
    if window > MAX_WINDOW or pp > max_cols:
        return None
    bc = clamp_pow2(c_out, 1, max_cols // pp)
    bc = max(bc, 16 // pp)  # tl.dot's N >= 16
    j1, j2 = _chunks(window)
    return dict(POOL=pool, PP=pp, BLOCK_C=bc, J1=j1, J2=j2)


def epilogue_plan(c_in: int, c_out: int, k: int, stride: int, pool: int | None) -> dict | None:
    """``band_plan`` for the pool and the backward (at most ``EPILOGUE_COLS`` columns): None sends the block's
    pool and backward to the generic kernels (a pool of 65-128 bands its statistics only)."""
    return band_plan(c_in, c_out, k, stride, pool, EPILOGUE_COLS)


def stats_group(c_out: int) -> int:
    """Conv positions per row of the statistics pass (it needs no pool): a power of two filling
    ``MAX_COLS`` columns with the channel block (conv1: 8 x 16)."""
    return max(2, MAX_COLS // clamp_pow2(c_out, 16, MAX_COLS))


def _layout(x: torch.Tensor, plan: dict, stride: int, pad: int, T: int, rows_per_clip: int) -> int:
    """LP: a padded clip's length, a multiple of 16 covering the data and every row's window."""
    need = max(pad + x.shape[-1], (rows_per_clip - 1) * stride * plan["POOL"] + plan["J1"] + plan["J2"])
    return -(-need // 16) * 16


def padded_waveform(x: torch.Tensor, pad: int, lp: int) -> torch.Tensor:
    """(N, LP) contiguous copy of x (N, 1, L): xp[n, pad + i] = x[n, 0, i], zeros elsewhere (one F.pad)."""
    return F.pad(x[:, 0], (pad, lp - pad - x.shape[-1])).contiguous()  # a bare clone keeps x's strides


def _waveform(x: torch.Tensor, xp: torch.Tensor | None, pad: int, lp: int) -> tuple[torch.Tensor, int]:
    """(the padded copy, its LP): ``xp`` when the caller made one long enough (``band_input``), else a new one."""
    if xp is None:
        return padded_waveform(x, pad, lp), lp
    assert xp.shape == (x.shape[0], xp.shape[1]) and xp.shape[1] >= lp and xp.is_contiguous(), "band_input's copy"
    return xp, xp.shape[1]


def band_input(x: torch.Tensor, c_out: int, k: int, stride: int, padding: int, T: int, pool: int) -> torch.Tensor:
    """The padded waveform both banded forward passes (statistics, pool) can read: LP covers both plans' rows,
    a longer pitch only adds zeros. Made once per forward by ``_conv_paths.forward_input``."""
    stats = band_plan(1, c_out, k, stride, stats_group(c_out))
    epi = epilogue_plan(1, c_out, k, stride, pool)
    lp = max(_layout(x, stats, stride, padding, T, triton.cdiv(T, stats["POOL"])),
             _layout(x, epi, stride, padding, T, T // pool))
    return padded_waveform(x, padding, lp)


def _block_q(rows: int) -> int:
    return clamp_pow2(rows, 16, 128) if INTERPRET else BLOCK_Q_GPU


def _flags(plan: dict, x: torch.Tensor, k: int, stride: int, bias: torch.Tensor | None, block_q: int) -> dict:
    return dict(HAS_BIAS=bias is not None, K=k, STRIDE=stride, BLOCK_Q=block_q, INTERP=INTERPRET,
                PRECISION=dot_precision(x), num_warps=4, **plan)


def band_moments(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, k: int, stride: int,
                 padding: int, T: int, eps: float | None = None, xp: torch.Tensor | None = None) -> torch.Tensor:
    """(3, C_out) fp32 count, mean, M2 of the conv output per channel, or with ``eps`` the (4, C_out) stats rows
    (as ``_conv_paths.conv_moments``), for a block ``band_plan`` accepts with any pool: rows of ``stats_group``
    positions. ``xp``: ``band_input``'s copy, or None to make one."""
    N = x.shape[0]
    C = w2d.shape[0]
    plan = band_plan(1, C, k, stride, stats_group(C))
    tq = triton.cdiv(T, plan["POOL"])
    xp, lp = _waveform(x, xp, padding, _layout(x, plan, stride, padding, T, tq))
    bq = _block_q(N * tq)
    tiles, P = persistent_grid(N * tq, bq)
    part = torch.empty((3, C, P), device=x.device, dtype=torch.float32)
    b = bias if bias is not None else w2d
    wrap_triton(_band_stats_kernel)[(P, triton.cdiv(C, plan["BLOCK_C"]))](
        xp, w2d, b, part, C, T, tq, N * tq, lp, tiles, P, **(reg_cap(128) if x.element_size() == 2 else {}),
        **_flags(plan, x, k, stride, bias, bq))  # fp32: shared memory allows 2 CTAs anyway, and 128 spilled
    return merge_stats(part, 0, 0, eps)


def band_bn_relu_pool(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor,
                      beta: torch.Tensor, stats: torch.Tensor, k: int, stride: int, padding: int, T: int,
                      pool: int, xp: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 2 (as ``_conv_paths.conv_bn_relu_pool``): pooled output (N, C_out, T // pool) in x.dtype, codes,
    zmax. ``xp``: ``band_input``'s copy, or None to make one."""
    N = x.shape[0]
    C = w2d.shape[0]
    plan = epilogue_plan(1, C, k, stride, pool)
    TP = T // pool
    xp, lp = _waveform(x, xp, padding, _layout(x, plan, stride, padding, T, TP))
    bq = _block_q(N * TP)
    tiles, P = persistent_grid(N * TP, bq)
    out = torch.empty((N, C, TP), device=x.device, dtype=x.dtype)
    code = torch.empty((N, C, TP), device=x.device, dtype=code_dtype(pool))
    zmax = torch.empty_like(out) if keeps_zmax(x, pool) else x.new_empty(0)
    b = bias if bias is not None else w2d
    wrap_triton(_band_bn_relu_pool_kernel)[(P, triton.cdiv(C, plan["BLOCK_C"]))](
        xp, w2d, b, gamma, beta, stats, out, code, zmax, C, TP, N * TP, lp, tiles, P,
        STORE_ZMAX=zmax.numel() > 0, **_flags(plan, x, k, stride, bias, bq))
    return out, code, zmax


def band_backward(grad_out: torch.Tensor, x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None,
                  gamma: torch.Tensor, stats: torch.Tensor, code: torch.Tensor, zmax: torch.Tensor, k: int, stride: int,
                  padding: int, T: int, pool: int, training: bool, deterministic: bool,
                  all_reduce=None) -> tuple[torch.Tensor | None, ...]:
    """The backward of a banded block whose input needs no gradient (as ``_conv_paths.conv_bn_relu_backward``):
    (None, dw2d fp32, db fp32 or None, local sum(gy * zhat), local sum(gy)). The BN sums from the forward's
    zmax (``pooled_bn_sums``) or, without it, from a pass recomputing Z; then a pass recomputing Z for gz and dW
    in band form; dband is folded to (C_out, K) here."""
    N = x.shape[0]
    C = w2d.shape[0]
    dev = x.device
    plan = epilogue_plan(1, C, k, stride, pool)
    TP, tq = T // pool, triton.cdiv(T, pool)
    lp = _layout(x, plan, stride, padding, T, tq)
    xp = padded_waveform(x, padding, lp)
    flags = _flags(plan, x, k, stride, bias, _block_q(N * tq))
    b = bias if bias is not None else w2d
    grid_c = triton.cdiv(C, plan["BLOCK_C"])
    if zmax.numel():  # (2, C): sum(gy), sum(gy * zhat), from the forward's zmax
        local = pooled_bn_sums(grad_out, code, zmax, deterministic)
    else:  # ... or from a recompute (fp32: keeps_zmax)
        tiles, P = persistent_grid(N * TP, flags["BLOCK_Q"])
        part = bn_sum_partials(P, C, deterministic, dev)
        wrap_triton(_band_bwd_reduce_kernel)[(P, grid_c)](
            xp, w2d, b, stats, grad_out, code, part, C, T, TP, N * TP, lp, tiles, P, *grad_out.stride(),
            DETERMINISTIC=deterministic, **flags)
        local = part.sum(dim=1).float()  # a fixed-order reduction
    sums = all_reduce(local) if (training and all_reduce is not None) else local
    tiles, P = persistent_grid(N * tq, flags["BLOCK_Q"])
    jb = plan["J1"] + plan["J2"]
    shape = (P if deterministic else 1, jb, plan["PP"], C)
    dband = (torch.empty if deterministic else torch.zeros)(shape, device=dev, dtype=torch.float32)
    db_part = (torch.empty if deterministic else torch.zeros)(shape[:1] + (C,), device=dev, dtype=torch.float32)
    wrap_triton(_band_gz_dw_kernel)[(P, grid_c)](
        xp, w2d, b, stats, gamma, grad_out, code, sums, dband, db_part, C, T, TP, tq, N * tq, lp, tiles, P,
        *grad_out.stride(), TRAINING=training, DETERMINISTIC=deterministic,
        **(reg_cap(168) if x.element_size() == 2 else {}), **flags)  # fp32 spills at 168
    # deterministic: a fixed-order sum of the partials; otherwise the one row the atomics added into
    band = dband.sum(dim=0) if deterministic else dband[0]  # (JB, PP, C), contiguous
    # fold: dw[c, kk] = sum_u band[kk + stride * u, u, c], a strided view (c, kk, u) summed over u
    pp = plan["PP"]
    dw = band.as_strided((C, k, pool), (1, pp * C, stride * pp * C + C)).sum(dim=2).contiguous()
    db = (db_part.sum(dim=0) if deterministic else db_part[0]) if bias is not None else None
    return None, dw, db, local[1].clone(), local[0].clone()
