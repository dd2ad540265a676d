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

Programs walk the row tiles with a fixed stride (tile ``p``, ``p + P``, ...; a persistent grid,
``_conv_fwd.persistent_grid``), so no compile-time constant depends on the batch or the length. A tile
holds BLOCK_Q rows of one clip (the last tile of a clip is partial), so a row's address is the tile's uniform
base plus a per-thread constant: no row divides by the rows per clip.

Symbols (beyond ``_conv_fwd.py``'s): STEP = stride * POOL, the row step in samples; W, the window length;
J1 (+ J2): W rounded up to one (or two) power-of-two chunks of A's columns (conv1: 64 + 16); JB = J1 + J2;
PP * BLOCK_C: B's columns, slot-major (col = u * BLOCK_C + c); rows per clip: TP pooled windows for the
pool and the backward's sums, TQ = cdiv(T, POOL) windows covering every conv position for the statistics
and dW; TPC: tiles per clip (cdiv(rows, BLOCK_Q)); NUM_TILES = N * TPC; n, r0, r: a tile's clip, first row
and rows; LP: the padded waveform's length per clip, a multiple of 16 covering the last tile's rows
(xp[n, pad + i] = x[n, 0, i], zeros elsewhere); mb = mean - bias, the mean of the bias-free z the kernels
compute; dband: dW in band form (JB, PP, C_out), folded to (C_out, K) by the launcher.
The backward (``grad_plan``): SP, the slots of a program's slot group g (slots u0 = g * SP .. u0 + SP, whose
windows start x0 = u0 * stride samples into the row's, so its band is SP slots wide); SUB, the sub-tiles of
BLOCK_Q rows per tile (the pooled gradient and codes of two are read at once).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._bn_sums import pooled_bn_sums
from ._common import INTERPRET, clamp_pow2, dot_precision, next_pow2
from ._conv_fwd import (
    BN_SUMS,
    bn_sign,
    bn_sum_partials,
    bn_sums_of,
    cast_out,
    chain_pads,
    channels_last_empty,
    cl_at,
    clip_tile,
    code_dtype,
    fp32_if,
    keeps_zmax,
    local_sums,
    merge_stats,
    partial_row,
    persistent_grid,
    pool_output,
    pool_select,
    reg_cap,
    stats_partials,
    store_bn_sums,
    store_moments,
    store_partial,
    store_sums_fp32,
    walk_next,
    walk_start,
    zeroed,
)

# fmt: off
# Hand-wrapped on purpose, as in _conv_fwd.py.


@triton.jit
def _band_weight(w_ptr, c0, u0, C_OUT, J0: tl.constexpr, J: tl.constexpr, K: tl.constexpr, STRIDE: tl.constexpr,
                 POOL: tl.constexpr, PP: tl.constexpr, BLOCK_C: tl.constexpr):
    """Rows J0 .. J0 + J of the banded weight B (J, PP * BLOCK_C) of slots u0 .. u0 + PP from w (C_OUT, K), zeros
    off the band and at slots past POOL (row j is sample j of the window of slot u0)."""
    j = J0 + tl.arange(0, J)
    col = tl.arange(0, PP * BLOCK_C)
    u = col // BLOCK_C
    c = c0 + col % BLOCK_C
    k = j[:, None] - STRIDE * u[None, :]
    ok = (k >= 0) & (k < K) & ((c < C_OUT) & (u0 + u < POOL))[None, :]
    return tl.load(w_ptr + c[None, :] * K + k, mask=ok, other=0.0)


@triton.jit
def _band_rows(xp_ptr, n, r0, x0, LP, STEP: tl.constexpr, BLOCK_Q: tl.constexpr, J0: tl.constexpr,
               J: tl.constexpr):
    """A's columns J0 .. J0 + J of clip n's rows r0 .. r0 + BLOCK_Q: xp[n, (r0 + i) * STEP + x0 + j], a uniform
    base plus per-thread constants; unmasked (the launcher pads each clip past its last tile's rows)."""
    base = tl.cast(n, tl.int64) * LP + r0 * STEP + x0 + J0
    return tl.load(xp_ptr + base + (tl.arange(0, BLOCK_Q)[:, None] * STEP + tl.arange(0, J)[None, :]))


@triton.jit
def _band_a(xp_ptr, n, r0, LP, STEP: tl.constexpr, BLOCK_Q: tl.constexpr, J1: tl.constexpr, J2: tl.constexpr,
            INTERP: tl.constexpr, x0=0):
    """A's two column chunks (BLOCK_Q, J1) and (BLOCK_Q, J2) of a row tile (a2 = a1 when J2 = 0), its windows
    starting x0 samples into each row's."""
    a1 = fp32_if(_band_rows(xp_ptr, n, r0, x0, LP, STEP, BLOCK_Q, 0, J1), INTERP)
    a2 = a1
    if J2 > 0:
        a2 = fp32_if(_band_rows(xp_ptr, n, r0, x0, LP, STEP, BLOCK_Q, J1, J2), INTERP)
    return a1, a2


@triton.jit
def _band_z(a1, a2, b1, b2, BLOCK_Q: tl.constexpr, J2: tl.constexpr, PP: tl.constexpr, BLOCK_C: tl.constexpr,
            PRECISION: tl.constexpr):
    """Conv output without its bias, (BLOCK_Q, PP, BLOCK_C) fp32: z[q, u, c] = conv at t = (r0 + q) * POOL + u.
    The kernels fold the bias into the mean instead (mb = mean - bias): one add per element fewer."""
    z = tl.dot(a1, b1, input_precision=PRECISION)
    if J2 > 0:
        z = tl.dot(a2, b2, z, input_precision=PRECISION)
    return tl.reshape(z, (BLOCK_Q, PP, BLOCK_C))


@triton.jit
def _positions_ok(r, T, POOL: tl.constexpr, PP: tl.constexpr, u0=0):
    """(BLOCK_Q, PP) bool: slot u0 + u of row r is a conv position (r * POOL + u0 + u < T, u0 + u < POOL)."""
    u = u0 + tl.arange(0, PP)
    return (r[:, None] * POOL + u[None, :] < T) & (u < POOL)[None, :]


@triton.jit
def _band_setup(w_ptr, b_ptr, c0, C_OUT, HAS_BIAS: tl.constexpr, J1: tl.constexpr, J2: tl.constexpr,
                K: tl.constexpr, STRIDE: tl.constexpr, POOL: tl.constexpr, PP: tl.constexpr,
                BLOCK_C: tl.constexpr, INTERP: tl.constexpr, u0=0):
    """A program's banded weight chunks (b1, b2; b2 = b1 when J2 = 0) of slots u0 .. u0 + PP and channel bias
    (BLOCK_C,)."""
    b1 = _band_weight(w_ptr, c0, u0, C_OUT, 0, J1, K, STRIDE, POOL, PP, BLOCK_C)
    b1 = fp32_if(b1, INTERP)
    b2 = b1
    if J2 > 0:
        b2 = _band_weight(w_ptr, c0, u0, C_OUT, J1, J2, K, STRIDE, POOL, PP, BLOCK_C)
        b2 = fp32_if(b2, INTERP)
    c = c0 + tl.arange(0, BLOCK_C)
    bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + c, mask=c < C_OUT, other=0.0).to(tl.float32)
    return b1, b2, bias


@triton.jit
def _band_stats_kernel(xp_ptr,  # (N, LP) padded waveform
                       w_ptr, b_ptr,  # (C_OUT, K), (C_OUT,)
                       part_ptr,  # (3, C_OUT, P) per-program mean, M2, count; rows PITCH apart
                       C_OUT, T, TPC, LP, NUM_TILES, P, PITCH, HAS_BIAS: tl.constexpr, K: tl.constexpr,
                       STRIDE: tl.constexpr, POOL: tl.constexpr, PP: tl.constexpr, BLOCK_C: tl.constexpr,
                       BLOCK_Q: tl.constexpr, J1: tl.constexpr, J2: tl.constexpr, INTERP: tl.constexpr,
                       PRECISION: tl.constexpr):
    """Per program: (mean, M2, count) of each channel over its row tiles, from shifted sums: the shift s is the
    mean of a whole tile near the program's (the first of its first tile's clip: a clip's partial last tile could
    hold one outlying row), then sum(z - s) and sum((z - s)^2) gather in per-thread fp32 accumulators
    (the slots summed in-thread), reduced across threads once at the end: M2 = sum((z-s)^2) - sum(z-s)^2 / n.
    Shifted by a sample mean, the sums lose to cancellation only as (mean - s)^2 / variance grows (the
    shifted-data algorithm; Chan, Golub, LeVeque 1983)."""
    pid_p = tl.program_id(0)
    c0 = tl.program_id(1) * BLOCK_C
    b1, b2, bias = _band_setup(w_ptr, b_ptr, c0, C_OUT, HAS_BIAS, J1, J2, K, STRIDE, POOL, PP, BLOCK_C, INTERP)
    # the shift: the first tile of the clip of the program's first tile (a whole tile, unless the clip has one)
    n, r0, r = clip_tile(pid_p - pid_p % TPC, TPC, BLOCK_Q)
    a1, a2 = _band_a(xp_ptr, n, r0, LP, STRIDE * POOL, BLOCK_Q, J1, J2, INTERP)
    z = _band_z(a1, a2, b1, b2, BLOCK_Q, J2, PP, BLOCK_C, PRECISION)
    ok = _positions_ok(r, T, POOL, PP)[:, :, None]
    shift = tl.sum(tl.sum(tl.where(ok, z, 0.0), axis=1), axis=0) / (tl.minimum(r0 * POOL + BLOCK_Q * POOL, T)
                                                                      - r0 * POOL).to(tl.float32)
    acc_s = tl.zeros((BLOCK_Q, BLOCK_C), dtype=tl.float32)
    acc_q = tl.zeros((BLOCK_Q, BLOCK_C), dtype=tl.float32)
    count = tl.zeros((BLOCK_C,), dtype=tl.float32)
    n, t, dn, dt = walk_start(pid_p, P, TPC)
    for _ in range(pid_p, NUM_TILES, P):
        r0 = t * BLOCK_Q
        r = r0 + tl.arange(0, BLOCK_Q)
        a1, a2 = _band_a(xp_ptr, n, r0, LP, STRIDE * POOL, BLOCK_Q, J1, J2, INTERP)
        z = _band_z(a1, a2, b1, b2, BLOCK_Q, J2, PP, BLOCK_C, PRECISION)
        n, t = walk_next(n, t, dn, dt, TPC)
        d = tl.where(_positions_ok(r, T, POOL, PP)[:, :, None], z - shift[None, None, :], 0.0)
        acc_s += tl.sum(d, axis=1)
        acc_q += tl.sum(d * d, axis=1)
        count += (tl.minimum(r0 * POOL + BLOCK_Q * POOL, T) - r0 * POOL).to(tl.float32)
    s = tl.sum(acc_s, axis=0)
    m2 = tl.maximum(tl.sum(acc_q, axis=0) - s * s / count, 0.0)
    store_moments(part_ptr, c0 + tl.arange(0, BLOCK_C), C_OUT, PITCH, pid_p, shift + s / count + bias, m2, count)


@triton.jit
def _band_bn_relu_pool_kernel(xp_ptr,  # (N, LP) padded waveform
                              w_ptr, b_ptr, g_ptr, beta_ptr,  # (C_OUT, K), (C_OUT,) x 3
                              stats_ptr,  # (4, C_OUT): mean, invstd, var, count
                              out_ptr,  # (N, C_OUT, TP), strides son, soc, sot (``chain_pads``)
                              code_ptr, zmax_ptr,  # (N, C_OUT, TP) each, channels-last (``cl_at``)
                              C_OUT, TP, TPC, LP, NUM_TILES, P, son, soc, sot, PAD, TAIL, ZERO_ROWS: tl.constexpr,
                              HAS_BIAS: tl.constexpr, K: tl.constexpr,
                              STRIDE: tl.constexpr, POOL: tl.constexpr, PP: tl.constexpr,
                              BLOCK_C: tl.constexpr, BLOCK_Q: tl.constexpr, J1: tl.constexpr,
                              J2: tl.constexpr, STORE_ZMAX: tl.constexpr, INTERP: tl.constexpr,
                              PRECISION: tl.constexpr):
    """Pooled output out of BN, ReLU and max over each window, y = max(z * a + b, 0) with a = gamma * invstd and
    b = beta - (mean - bias) * a; code = the window's maximum (``pool_select``), -1 where ReLU gave 0; when STORE_ZMAX,
    zmax = zhat there (as ``_conv_bn_relu_pool_kernel``), normalised after the choice (one per window). ZERO_ROWS > 0:
    out is chained (``chain_pads``)."""
    c0 = tl.program_id(1) * BLOCK_C
    b1, b2, bias = _band_setup(w_ptr, b_ptr, c0, C_OUT, HAS_BIAS, J1, J2, K, STRIDE, POOL, PP, BLOCK_C, INTERP)
    c = c0 + tl.arange(0, BLOCK_C)
    c_ok = c < C_OUT
    mb = tl.load(stats_ptr + c, mask=c_ok, other=0.0) - bias
    invstd = tl.load(stats_ptr + C_OUT + c, mask=c_ok, other=0.0)
    a = invstd * tl.load(g_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    b = tl.load(beta_ptr + c, mask=c_ok, other=0.0).to(tl.float32) - mb * a
    s = bn_sign(a)
    # the band's columns times their channel's sign: the GEMM gives pool_select's key z * s (exactly: a sign flip)
    s_col = tl.reshape(tl.broadcast_to(s[None, :], (PP, BLOCK_C)), (PP * BLOCK_C,))[None, :]
    b1 = (b1 * s_col).to(b1.dtype)
    b2 = (b2 * s_col).to(b2.dtype)
    slot = tl.arange(0, PP)[None, :, None].to(tl.float32)  # fp32: pool_select's min over a middle axis
    n, t, dn, dt = walk_start(tl.program_id(0), P, TPC)
    for _ in range(tl.program_id(0), NUM_TILES, P):
        r0 = t * BLOCK_Q
        r = r0 + tl.arange(0, BLOCK_Q)
        a1, a2 = _band_a(xp_ptr, n, r0, LP, STRIDE * POOL, BLOCK_Q, J1, J2, INTERP)
        key = _band_z(a1, a2, b1, b2, BLOCK_Q, J2, PP, BLOCK_C, PRECISION)
        if PP > POOL:
            key = tl.where(slot < POOL, key, -float("inf"))
        zsel, first = pool_select(key, s[None, :], slot, PP, 1)
        o = tl.maximum(zsel * a[None, :] + b[None, :], 0.0)
        code = tl.where(o > 0.0, first, -1)  # -1: ReLU passes no gradient
        off = cl_at(n, r, c, C_OUT, TP)
        smask = (r < TP)[:, None] & c_ok[None, :]
        ooff = tl.cast(n, tl.int64) * son + (r[:, None] * sot + c[None, :] * soc)
        tl.store(out_ptr + ooff, cast_out(o, out_ptr.dtype.element_ty, INTERP), mask=smask)
        tl.store(code_ptr + off, code.to(code_ptr.dtype.element_ty), mask=smask)
        if STORE_ZMAX:
            zmax = tl.where(o > 0.0, (zsel - mb[None, :]) * invstd[None, :], 0.0)
            tl.store(zmax_ptr + off, cast_out(zmax, zmax_ptr.dtype.element_ty, INTERP), mask=smask)
        n, t = walk_next(n, t, dn, dt, TPC)
    if ZERO_ROWS > 0:  # a chained output's zero rows, once per clip (``chain_pads``)
        for n in range(tl.program_id(0), NUM_TILES // TPC, P):
            for z0 in range(0, tl.maximum(PAD, TAIL), ZERO_ROWS):
                chain_pads(out_ptr, n, z0, c, c_ok, son, soc, sot, TP, PAD, TAIL, ZERO_ROWS)


@triton.jit
def _band_pooled(go_ptr, code_ptr, n, r, c, C_OUT, TP, sgn, sgc, sgl):
    """(go, code) at rows r and channels c (broadcastable index tensors, any rank) of clip n, in their stored
    dtypes: the pooled gradient (0 past the last whole window) and the slot the forward recorded (-1 there;
    channels-last, ``cl_at``'s layout)."""
    hit = (r < TP) & (c < C_OUT)
    n64 = tl.cast(n, tl.int64)
    code = tl.load(code_ptr + n64 * TP * C_OUT + (r * C_OUT + c), mask=hit, other=-1)
    go = tl.load(go_ptr + n64 * sgn + (r * sgl + c * sgc), mask=hit, other=0.0)
    return go, code


@triton.jit
def _band_bwd_reduce_kernel(xp_ptr,  # (N, LP) padded waveform
                            w_ptr, b_ptr, stats_ptr,  # (C_OUT, K), (C_OUT,), (4, C_OUT)
                            go_ptr, code_ptr,  # (N, C_OUT, TP): grad_out (strides sgn, sgc, sgl), codes (``cl_at``)
                            sums_ptr,  # (2, P, C_OUT) fp64 (deterministic) or (2, 1, C_OUT)
                            C_OUT, TP, TPC, LP, NUM_TILES, P, sgn, sgc, sgl, HAS_BIAS: tl.constexpr,
                            K: tl.constexpr, STRIDE: tl.constexpr, POOL: tl.constexpr, PP: tl.constexpr,
                            BLOCK_C: tl.constexpr, BLOCK_Q: tl.constexpr, J1: tl.constexpr, J2: tl.constexpr,
                            DETERMINISTIC: tl.constexpr, INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """sum(gy) and sum(gy * zhat) per channel over the whole windows (gy is 0 elsewhere): the gradient reaches
    one slot per window, so z is read there (zsel) and normalised once per window. In fp32 per program, stored
    to sums[:, p, c] (fp64; summed later in a fixed order) or atomically added to sums[:, 0, c]."""
    pid_p = tl.program_id(0)
    c0 = tl.program_id(1) * BLOCK_C
    b1, b2, bias = _band_setup(w_ptr, b_ptr, c0, C_OUT, HAS_BIAS, J1, J2, K, STRIDE, POOL, PP, BLOCK_C, INTERP)
    c = c0 + tl.arange(0, BLOCK_C)
    mb = tl.load(stats_ptr + c, mask=c < C_OUT, other=0.0) - bias
    invstd = tl.load(stats_ptr + C_OUT + c, mask=c < C_OUT, other=0.0)
    u = tl.arange(0, PP)[None, :, None]
    s_gy = tl.zeros((BLOCK_C,), dtype=tl.float32)
    s_gyz = tl.zeros((BLOCK_C,), dtype=tl.float32)
    n, t, dn, dt = walk_start(pid_p, P, TPC)
    for _ in range(pid_p, NUM_TILES, P):
        r0 = t * BLOCK_Q
        r = r0 + tl.arange(0, BLOCK_Q)
        a1, a2 = _band_a(xp_ptr, n, r0, LP, STRIDE * POOL, BLOCK_Q, J1, J2, INTERP)
        z = _band_z(a1, a2, b1, b2, BLOCK_Q, J2, PP, BLOCK_C, PRECISION)
        go, code = _band_pooled(go_ptr, code_ptr, n, r[:, None], c[None, :], C_OUT, TP, sgn, sgc, sgl)
        go, code = go.to(tl.float32), code.to(tl.int32)
        n, t = walk_next(n, t, dn, dt, TPC)
        zsel = tl.sum(tl.where(u == code[:, None, :], z, 0.0), axis=1)
        gy = tl.where(code >= 0, go, 0.0)
        s_gy += tl.sum(gy, axis=0)
        s_gyz += tl.sum(gy * ((zsel - mb[None, :]) * invstd[None, :]), axis=0)
    store_bn_sums(sums_ptr, s_gy, s_gyz, pid_p, c, C_OUT, P, DETERMINISTIC)


@triton.jit
def _gz_dw_tile(r0, acc1, acc2t, db, xp_ptr, n, go, code, b1, b2, cz, cc0, scale, u, u0, T, LP,
                STRIDE: tl.constexpr, POOL: tl.constexpr, PP: tl.constexpr, SP: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_Q: tl.constexpr, J1: tl.constexpr, J2: tl.constexpr,
                LAST, DB_DOT: tl.constexpr, INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """One sub-tile of ``_band_gz_dw_kernel`` (clip n's rows r0 .. r0 + BLOCK_Q): (acc1, acc2t, db) updated. go, code
    (BLOCK_Q, BLOCK_C): the pooled gradient and the slot it goes to, as stored. LAST (a runtime flag): a clip's last
    tile, whose positions past T are masked behind a branch (the others hold only whole windows; slots past POOL are
    masked in all). One loop with that branch, not a second loop over the last tiles: the second loop's set-up kept
    values live across the first and spilled 24 B under Triton 3.9."""
    a1, a2 = _band_a(xp_ptr, n, r0, LP, STRIDE * POOL, BLOCK_Q, J1, J2, INTERP, u0 * STRIDE)
    if DB_DOT:  # A's last column lies past the window (B is 0 there): ones, so gz^T @ A2 also sums gz (db)
        a2 = tl.where((tl.arange(0, J2) == J2 - 1)[None, :], 1.0, a2).to(a2.dtype)
    z = _band_z(a1, a2, b1, b2, BLOCK_Q, J2, SP, BLOCK_C, PRECISION)
    # the routed gradient folded into the affine term per window, so each element takes one select and one FMA
    val = cc0[None, :] + go.to(tl.float32) * scale[None, :]
    gz = z * cz[None, None, :] + tl.where(u == (code.to(tl.int32) - u0)[:, None, :], val[:, None, :],
                                          cc0[None, None, :])
    if PP > POOL:
        gz = tl.where(u0 + u < POOL, gz, 0.0)
    if LAST:
        gz = tl.where(_positions_ok(r0 + tl.arange(0, BLOCK_Q), T, POOL, SP, u0)[:, :, None], gz, 0.0)
    if not DB_DOT:
        db += tl.sum(gz, axis=1)
    # dW from gz rounded to the input dtype, as the unfused path stores gz, for a same-dtype tensor-core dot (db: in
    # 16 bits from the same rounded gz, as the other paths sum it; in fp32 from the fp32 gz, as TF32 dots would
    # round it)
    gz2 = fp32_if(tl.reshape(cast_out(gz, xp_ptr.dtype.element_ty, INTERP), (BLOCK_Q, SP * BLOCK_C)), INTERP)
    acc1 = tl.dot(tl.trans(a1), gz2, acc1, input_precision=PRECISION)
    if J2 > 0:
        acc2t = tl.dot(tl.trans(gz2), a2, acc2t, input_precision=PRECISION)
    return acc1, acc2t, db


@triton.jit
def _gz_dw_tiles(n, t, acc1, acc2t, db, xp_ptr, go_ptr, code_ptr, b1, b2, cz, cc0, scale, c, u, u0, C_OUT, T, TP,
                 LP, sgn, sgc, sgl, STRIDE: tl.constexpr, POOL: tl.constexpr, PP: tl.constexpr, SP: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_Q: tl.constexpr, J1: tl.constexpr, J2: tl.constexpr, SUB: tl.constexpr,
                 LAST, DB_DOT: tl.constexpr, INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """Tile t of clip n, SUB ``_gz_dw_tile`` sub-tiles of BLOCK_Q rows; with two, their pooled gradient and codes
    are read at once as (BLOCK_Q, BLOCK_C, 2) tensors, row r0 + h BLOCK_Q + q at [q, :, h] (2 BLOCK_Q whole channel
    rows: 16 channels of int8 codes load 16 bytes per lane), and split between them in registers."""
    r0 = t * (SUB * BLOCK_Q)
    if SUB == 2:
        r = r0 + tl.arange(0, BLOCK_Q)[:, None, None] + BLOCK_Q * tl.arange(0, 2)[None, None, :]
        go, code = _band_pooled(go_ptr, code_ptr, n, r, c[None, :, None], C_OUT, TP, sgn, sgc, sgl)
        go0, go1 = tl.split(go)
        code0, code1 = tl.split(code)
        acc1, acc2t, db = _gz_dw_tile(r0, acc1, acc2t, db, xp_ptr, n, go0, code0, b1, b2, cz, cc0, scale, u, u0, T,
                                      LP, STRIDE, POOL, PP, SP, BLOCK_C, BLOCK_Q, J1, J2, LAST, DB_DOT, INTERP,
                                      PRECISION)
        acc1, acc2t, db = _gz_dw_tile(r0 + BLOCK_Q, acc1, acc2t, db, xp_ptr, n, go1, code1, b1, b2, cz, cc0, scale, u,
                                      u0, T, LP, STRIDE, POOL, PP, SP, BLOCK_C, BLOCK_Q, J1, J2, LAST, DB_DOT, INTERP,
                                      PRECISION)
    else:
        r = r0 + tl.arange(0, BLOCK_Q)
        go, code = _band_pooled(go_ptr, code_ptr, n, r[:, None], c[None, :], C_OUT, TP, sgn, sgc, sgl)
        acc1, acc2t, db = _gz_dw_tile(r0, acc1, acc2t, db, xp_ptr, n, go, code, b1, b2, cz, cc0, scale, u, u0, T,
                                      LP, STRIDE, POOL, PP, SP, BLOCK_C, BLOCK_Q, J1, J2, LAST, DB_DOT, INTERP,
                                      PRECISION)
    return acc1, acc2t, db


@triton.jit
def _band_gz_dw_kernel(xp_ptr,  # (N, LP) padded waveform
                       w_ptr, b_ptr, stats_ptr, g_ptr,  # (C_OUT, K), (C_OUT,), (4, C_OUT), (C_OUT,)
                       go_ptr, code_ptr,  # (N, C_OUT, TP): grad_out (strides sgn, sgc, sgl), codes (``cl_at``)
                       sums_ptr,  # (2, C_OUT) fp32 or fp64: sum(gy), sum(gy * zhat), all-reduced
                       dband_ptr,  # (P or 1, JB, PP, C_OUT) fp32 dW in band form, rows from each slot group's x0
                       db_ptr,  # (P * PP // SP or 1, C_OUT) fp32
                       dbn_ptr,  # (2, C_OUT) fp32: the sums' copy the op returns (STORE_SUMS)
                       C_OUT, T, TP, TPC, LP, NUM_TILES, P, sgn, sgc, sgl, HAS_BIAS: tl.constexpr,
                       K: tl.constexpr, STRIDE: tl.constexpr, POOL: tl.constexpr, PP: tl.constexpr, SP: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_Q: tl.constexpr, J1: tl.constexpr, J2: tl.constexpr,
                       SUB: tl.constexpr, TRAINING: tl.constexpr, DB_DOT: tl.constexpr, DETERMINISTIC: tl.constexpr,
                       STORE_SUMS: tl.constexpr, INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """gz (BN's backward, as ``_bn_grad``) and dW in band form in one pass, for SP of the window's PP slots (the
    slot group g = program_id(1) % (PP // SP), slots u0 = g SP .. u0 + SP, whose windows start x0 = u0 STRIDE
    samples into the row's): dband[j, (u, c)] += sum_q A[q, x0 + j] gz[q, u, c] (A^T @ gz on the tensor cores, A
    loaded once for both dots), db[c] += sum gz (DB_DOT: by the same dot, from A's spare last column set to ones;
    otherwise per thread). BN's backward gz = scale (gy - mean(gy) - zhat mean(gy zhat)), scale = gamma invstd, is
    per channel affine in z plus the routed gradient: gz = cz z + c0 + [u == code] scale go,
    cz = -scale mean(gy zhat) invstd, c0 = -scale mean(gy) - cz (mean - bias). Per program to dband[p], db[p G + g]
    (deterministic; G = PP // SP), or atomically added to dband[0], db[0]. STORE_SUMS: also the sums as fp32
    (``_conv_fwd.store_sums_fp32``)."""
    pid_p = tl.program_id(0)
    g = tl.program_id(1) % (PP // SP)
    u0 = g * SP
    c0 = (tl.program_id(1) // (PP // SP)) * BLOCK_C
    b1, b2, bias = _band_setup(w_ptr, b_ptr, c0, C_OUT, HAS_BIAS, J1, J2, K, STRIDE, POOL, SP, BLOCK_C, INTERP,
                               u0)
    c = c0 + tl.arange(0, BLOCK_C)
    c_ok = c < C_OUT
    invstd = tl.load(stats_ptr + C_OUT + c, mask=c_ok, other=0.0)
    scale = invstd * tl.load(g_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    cz = tl.zeros((BLOCK_C,), dtype=tl.float32)
    cc0 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if TRAINING:
        count = tl.load(stats_ptr + 3 * C_OUT + c, mask=c_ok, other=1.0)
        mean_gy = tl.load(sums_ptr + c, mask=c_ok, other=0.0).to(tl.float32) / count
        mean_gyz = tl.load(sums_ptr + C_OUT + c, mask=c_ok, other=0.0).to(tl.float32) / count
        cz = -scale * mean_gyz * invstd
        cc0 = -scale * mean_gy - cz * (tl.load(stats_ptr + c, mask=c_ok, other=0.0) - bias)
    u = tl.arange(0, SP)[None, :, None]
    acc1 = tl.zeros((J1, SP * BLOCK_C), dtype=tl.float32)
    # the second chunk's dW transposed, (gz^T @ A2): M = SP * BLOCK_C >= 64 keeps it on wgmma (J2 = 16 as M
    # took mma.sync and ~80 register moves per tile)
    acc2t = tl.zeros((SP * BLOCK_C, J2 if J2 > 0 else 16), dtype=tl.float32)
    db = tl.zeros((BLOCK_Q, BLOCK_C), dtype=tl.float32)
    n, t, dn, dt = walk_start(pid_p, P, TPC)
    for _ in range(pid_p, NUM_TILES, P):  # a clip's last tile masks its positions past T (``_gz_dw_tile``)
        acc1, acc2t, db = _gz_dw_tiles(n, t, acc1, acc2t, db, xp_ptr, go_ptr, code_ptr, b1, b2, cz, cc0, scale, c,
                                       u, u0, C_OUT, T, TP, LP, sgn, sgc, sgl, STRIDE, POOL, PP, SP, BLOCK_C,
                                       BLOCK_Q, J1, J2, SUB, t == TPC - 1, DB_DOT, INTERP, PRECISION)
        n, t = walk_next(n, t, dn, dt, TPC)
    col = tl.arange(0, SP * BLOCK_C)
    cc = c0 + col % BLOCK_C
    wcol = (u0 + col // BLOCK_C) * C_OUT + cc  # (u, c) -> (u0 + u) * C_OUT + c in dband's (JB, PP, C_OUT)
    idx = partial_row(pid_p, DETERMINISTIC)
    base = dband_ptr + idx.to(tl.int64) * ((J1 + J2) * PP * C_OUT)
    if DB_DOT:  # the ones column of gz^T @ A2, summed over the slots
        dbs = tl.sum(tl.where((tl.arange(0, J2) == J2 - 1)[None, :], acc2t, 0.0), axis=1)
        dbs = tl.sum(tl.reshape(dbs, (SP, BLOCK_C)), axis=0)
    else:
        dbs = tl.sum(db, axis=0)
    if J2 > 0:  # the smaller accumulator first, freeing its registers for the larger one's store
        j2 = J1 + tl.arange(0, J2 if J2 > 0 else 16)
        store_partial(base + j2[None, :] * (PP * C_OUT) + wcol[:, None], acc2t, (cc < C_OUT)[:, None], DETERMINISTIC)
    j1 = tl.arange(0, J1)
    store_partial(base + j1[:, None] * (PP * C_OUT) + wcol[None, :], acc1, (cc < C_OUT)[None, :], DETERMINISTIC)
    store_partial(db_ptr + partial_row(pid_p * (PP // SP) + g, DETERMINISTIC) * C_OUT + c, dbs, c_ok, DETERMINISTIC)
    if STORE_SUMS:
        store_sums_fp32(sums_ptr, dbn_ptr, c, c_ok, C_OUT)


# ----------------------------------------------------------------------------------------- launchers
BLOCK_Q_GPU = 64  # rows per tile: the M of one warpgroup's wgmma
MAX_COLS = 128  # B's columns PP * BLOCK_C: one m64n128 wgmma, a 64-register fp32 accumulator per thread
# Columns of the backward (and the gate of the pool, ``pool_plan``): at 128 the backward spilled 96 B per thread
# (Triton 3.9).
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


def pool_plan(c_in: int, c_out: int, k: int, stride: int, pool: int | None) -> dict | None:
    """The pool's constexprs for a block ``epilogue_plan`` takes: all ``MAX_COLS`` columns (conv1's 16 channels in
    one program, so the rows are read once; the pool keeps no per-element zhat since ``pool_select`` chooses on
    z, which took it from 196 to 123 registers)."""
    return band_plan(c_in, c_out, k, stride, pool) if epilogue_plan(c_in, c_out, k, stride, pool) else None


def grad_plan(c_in: int, c_out: int, k: int, stride: int, pool: int | None, elem_size: int = 2) -> dict | None:
    """The backward's constexprs (gz and dW) for a block ``epilogue_plan`` takes. A program owns SP of the window's
    PP slots (a slot group) and BLOCK_C channels, SP * BLOCK_C <= ``EPILOGUE_COLS``: SP the fewest slots whose
    groups start 16 bytes apart in a 16-bit waveform (SP * stride a multiple of 8; all PP if fewer), so A's rows
    still load 16 bytes per lane, then channels, then more slots while columns remain. Its window is SP slots long
    (J1, J2 from stride * (SP - 1) + k). SUB sub-tiles per tile: for 16-bit inputs (``elem_size`` 2) two when one
    sub-tile's int8 codes (``BLOCK_Q_GPU`` x BLOCK_C) are under 2 KB, 16 bytes for each of 128 threads, so the
    pooled gradient and codes are read for both at once (``_gz_dw_tiles``); fp32 takes one (two spilled).
    conv1: 4 slots x 16 channels, two sub-tiles."""
    epi = epilogue_plan(c_in, c_out, k, stride, pool)
    if epi is None:
        return None
    pp = epi["PP"]
    sp = min(pp, 8 // math.gcd(8, stride))
    bc = clamp_pow2(c_out, 1, EPILOGUE_COLS // sp)
    sp = min(pp, max(sp, EPILOGUE_COLS // bc))
    bc = max(bc, 16 // sp)  # tl.dot's N >= 16
    j1, j2 = _chunks(stride * (sp - 1) + k)
    sub = 2 if elem_size == 2 and BLOCK_Q_GPU * bc < 2048 else 1
    return dict(POOL=pool, PP=pp, SP=sp, BLOCK_C=bc, J1=j1, J2=j2, SUB=sub)


def stats_group(c_out: int) -> int:
    """Conv positions per row of the statistics pass (it needs no pool): a power of two filling
    ``MAX_COLS`` columns with the channel block (conv1: 8 x 16)."""
    return max(2, MAX_COLS // clamp_pow2(c_out, 16, MAX_COLS))


def _layout(length: int, plan: dict, stride: int, pad: int, rows: int) -> int:
    """LP: a padded clip's length, a multiple of 16 covering the data and the window of every row its tiles
    read (``rows`` rounded up to whole tiles of ``_block_q(rows)`` rows, or SUB sub-tiles of those for
    ``grad_plan``, whose last slot group's window starts (PP - SP) * stride samples in)."""
    sub = plan.get("SUB", 1)
    bq = _block_q(rows, sub) * sub
    x0 = (plan["PP"] - plan.get("SP", plan["PP"])) * stride
    need = max(pad + length, (triton.cdiv(rows, bq) * bq - 1) * stride * plan["POOL"] + x0 + plan["J1"] + plan["J2"])
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


def band_input_length(x: torch.Tensor, c_out: int, k: int, stride: int, padding: int, T: int, pool: int) -> int:
    """LP of ``band_input``'s copy: it covers the rows of both forward plans (statistics, pool) and the backward's
    (one more window: the positions past the last whole one), so all three read one copy; a longer pitch only adds
    zeros. Reads x's shape only (the op's fake calls it too)."""
    return band_input_rows(x.shape[-1], c_out, k, stride, padding, T, pool)


def band_input_rows(length: int, c_out: int, k: int, stride: int, padding: int, T: int, pool: int) -> int:
    """``band_input_length`` of a waveform of ``length`` samples (a multiple of 16)."""
    stats = band_plan(1, c_out, k, stride, stats_group(c_out))
    epi = epilogue_plan(1, c_out, k, stride, pool)
    grad = grad_plan(1, c_out, k, stride, pool)  # 16-bit's: its tiles of two sub-tiles cover fp32's of one
    plans = ((stats, triton.cdiv(T, stats["POOL"])), (epi, T // pool), (grad, triton.cdiv(T, pool)))
    return max(_layout(length, plan, stride, padding, rows) for plan, rows in plans)


def band_input(x: torch.Tensor, c_out: int, k: int, stride: int, padding: int, T: int, pool: int) -> torch.Tensor:
    """The padded waveform (N, ``band_input_length``) the banded forward passes read and the backward reuses (the
    op keeps it instead of x: ``_conv_paths.kept_input``). Made once per forward by
    ``_conv_paths.forward_input``."""
    return padded_waveform(x, padding, band_input_length(x, c_out, k, stride, padding, T, pool))


def _block_q(rows: int, sub: int = 1) -> int:
    """Rows per (sub-)tile for ``rows`` rows per clip and ``sub`` sub-tiles per tile; under the interpreter a tile
    is at most half a clip, so the tests walk several tiles per clip and a partial last one."""
    return clamp_pow2(triton.cdiv(rows, 2 * sub), 16, 64) if INTERPRET else BLOCK_Q_GPU


# CTAs per SM of each kernel (16-bit, fp32) at its register cap and shared memory (the static report: bf16 pool 123
# registers and 52 KB, gz_dw 162-168 and 28 KB, statistics 128 and 50 KB; fp32 twice the shared memory): the
# persistent grid fills exactly that many per SM.
CTAS_PER_SM = {"stats": (4, 2), "pool": (4, 2), "grad": (3, 2)}


def _tiles(n_clips: int, rows: int, bq: int, kernel: str, x: torch.Tensor, blocks: int) -> tuple[int, int, int]:
    """(TPC, NUM_TILES, P): tiles per clip, tiles in all, programs (``persistent_grid`` at ``CTAS_PER_SM[kernel]``)."""
    tpc = triton.cdiv(rows, bq)
    per_sm = CTAS_PER_SM[kernel][0 if x.element_size() == 2 else 1]
    return (tpc, *persistent_grid(n_clips * tpc, 1, per_sm, blocks))


def _flags(plan: dict, x: torch.Tensor, k: int, stride: int, bias: torch.Tensor | None, block_q: int) -> dict:
    return dict(HAS_BIAS=bias is not None, K=k, STRIDE=stride, BLOCK_Q=block_q, INTERP=INTERPRET,
                PRECISION=dot_precision(x), num_warps=4, **plan)


def band_moments(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, k: int, stride: int,
                 padding: int, T: int, eps: float | None = None, xp: torch.Tensor | None = None,
                 running: tuple | None = None) -> torch.Tensor:
    """(3, C_out) fp32 count, mean, M2 of the conv output per channel, or with ``eps`` the (4, C_out) stats rows
    (as ``_conv_paths.conv_moments``, ``running`` too), for a block ``band_plan`` accepts with any pool: rows of
    ``stats_group`` positions. ``xp``: ``band_input``'s copy, or None to make one."""
    N = x.shape[0]
    C = w2d.shape[0]
    plan = band_plan(1, C, k, stride, stats_group(C))
    tq = triton.cdiv(T, plan["POOL"])
    xp, lp = _waveform(x, xp, padding, _layout(x.shape[-1], plan, stride, padding, tq))
    bq = _block_q(tq)
    tpc, tiles, P = _tiles(N, tq, bq, "stats", x, triton.cdiv(C, plan["BLOCK_C"]))
    part = stats_partials(3, C, P, x.device)
    b = bias if bias is not None else w2d
    wrap_triton(_band_stats_kernel)[(P, triton.cdiv(C, plan["BLOCK_C"]))](
        xp, w2d, b, part, C, T, tpc, lp, tiles, P, part.stride(1), **(reg_cap(128) if x.element_size() == 2 else {}),
        **_flags(plan, x, k, stride, bias, bq))  # fp32: shared memory allows 2 CTAs anyway, and 128 spilled
    return merge_stats(part, 0, 0, eps, running)


def band_bn_relu_pool(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor,
                      beta: torch.Tensor, stats: torch.Tensor, k: int, stride: int, padding: int, T: int,
                      pool: int, xp: torch.Tensor | None = None,
                      chain: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 2 (as ``_conv_paths.conv_bn_relu_pool``): pooled output (N, C_out, T // pool) in x.dtype (contiguous,
    or chained: ``_conv_fwd.pool_output``), codes, zmax. ``xp``: ``band_input``'s copy, or None to make one."""
    N = x.shape[0]
    C = w2d.shape[0]
    plan = pool_plan(1, C, k, stride, pool)
    TP = T // pool
    xp, lp = _waveform(x, xp, padding, _layout(x.shape[-1], plan, stride, padding, TP))
    bq = _block_q(TP)
    tpc, tiles, P = _tiles(N, TP, bq, "pool", x, triton.cdiv(C, plan["BLOCK_C"]))
    out, chained, zero_rows = pool_output(N, C, TP, x.dtype, x.device, chain)
    code = channels_last_empty(N, C, TP, code_dtype(pool), x.device)
    zmax = channels_last_empty(N, C, TP, x.dtype, x.device) if keeps_zmax(x, pool) else x.new_empty(0)
    b = bias if bias is not None else w2d
    wrap_triton(_band_bn_relu_pool_kernel)[(P, triton.cdiv(C, plan["BLOCK_C"]))](
        xp, w2d, b, gamma, beta, stats, out, code, zmax, C, TP, tpc, lp, tiles, P, *out.stride(), *chained,
        ZERO_ROWS=zero_rows, STORE_ZMAX=zmax.numel() > 0, **(reg_cap(128) if x.element_size() == 2 else {}),
        **_flags(plan, x, k, stride, bias, bq))
    return out, code, zmax


def band_backward(grad_out: torch.Tensor, x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None,
                  gamma: torch.Tensor, stats: torch.Tensor, code: torch.Tensor, zmax: torch.Tensor, k: int, stride: int,
                  padding: int, T: int, pool: int, training: bool, deterministic: bool,
                  all_reduce=None, xp: torch.Tensor | None = None) -> tuple[torch.Tensor | None, ...]:
    """The backward of a banded block whose input needs no gradient (as ``_conv_paths.conv_bn_relu_backward``):
    (None, dw2d fp32, db fp32 or None, local (2, C_out) sum(gy), sum(gy * zhat)). The BN sums from the forward's
    zmax (``pooled_bn_sums``) or, without it, from a pass recomputing Z; then a pass recomputing Z for gz and dW
    in band form (``grad_plan``'s slot groups); dband is folded to (C_out, K) here. ``xp``: the forward's
    ``band_input`` copy, or None to make one."""
    N = x.shape[0]
    C = w2d.shape[0]
    dev = x.device
    epi = epilogue_plan(1, C, k, stride, pool)
    plan = grad_plan(1, C, k, stride, pool, x.element_size())
    TP, tq = T // pool, triton.cdiv(T, pool)
    xp, lp = _waveform(x, xp, padding, max(_layout(x.shape[-1], plan, stride, padding, tq),
                                           _layout(x.shape[-1], epi, stride, padding, TP)))
    bq = _block_q(tq)  # both passes: their rows (TP, tq) differ by at most one
    bq_gz = _block_q(tq, plan["SUB"])
    b = bias if bias is not None else w2d
    pp, sp = plan["PP"], plan["SP"]
    groups = pp // sp
    grid_g = triton.cdiv(C, plan["BLOCK_C"]) * groups  # slot groups x channel blocks
    jb = plan["J1"] + plan["J2"]
    # non-deterministic: the atomics' accumulators (db first: returned as a view, at offset 0; BN sums; dW in band
    # form) zeroed by one fill
    acc = None if deterministic else zeroed(dev, ((1, C), torch.float32), ((2, 1, C), BN_SUMS),
                                           ((1, jb, pp, C), torch.float32))
    if zmax.numel():  # (2, C): sum(gy), sum(gy * zhat), from the forward's zmax
        raw = pooled_bn_sums(grad_out, code, zmax, deterministic, acc[1] if acc else None, cast=False)
    else:  # ... or from a recompute (fp32: keeps_zmax)
        grid_c = triton.cdiv(C, epi["BLOCK_C"])
        tpc, tiles, P = _tiles(N, TP, bq, "grad", x, grid_c)
        part = bn_sum_partials(P, C, deterministic, dev, acc[1] if acc else None)
        wrap_triton(_band_bwd_reduce_kernel)[(P, grid_c)](
            xp, w2d, b, stats, grad_out, code, part, C, TP, tpc, lp, tiles, P, *grad_out.stride(),
            DETERMINISTIC=deterministic, **_flags(epi, x, k, stride, bias, bq))
        raw = bn_sums_of(part, cast=False)  # a fixed-order reduction
    local, sums, store_sums = local_sums(raw, training, all_reduce)
    tpc, tiles, P = _tiles(N, tq, plan["SUB"] * bq_gz, "grad", x, grid_g)
    window = stride * (sp - 1) + k  # DB_DOT: a spare column in A's second chunk (none when the window fits one)
    if deterministic:
        dband = torch.empty((P, jb, pp, C), device=dev, dtype=torch.float32)
        db_part = torch.empty((P * groups, C), device=dev, dtype=torch.float32)
    else:
        db_part, _, dband = acc
    wrap_triton(_band_gz_dw_kernel)[(P, grid_g)](
        xp, w2d, b, stats, gamma, grad_out, code, sums, dband, db_part, local, C, T, TP, tpc, lp, tiles, P,
        *grad_out.stride(), TRAINING=training, DB_DOT=x.element_size() == 2 and plan["J2"] > 0 and window < jb,
        DETERMINISTIC=deterministic, STORE_SUMS=store_sums,
        # one stage: unpipelined loads stay L1-cached (A's rows overlap) and half the shared memory; fp32 spills at 168
        num_stages=1, **(reg_cap(168) if x.element_size() == 2 else {}), **_flags(plan, x, k, stride, bias, bq_gz))
    # deterministic: a fixed-order sum of the partials; otherwise the one row the atomics added into
    band = dband.sum(dim=0) if deterministic else dband[0]  # (JB, PP, C), contiguous
    # fold: dw[c, kk] = sum_u band[kk + stride * (u % SP), u, c] (each slot group's rows start at its own window), a
    # strided view (c, kk, group, u % SP) summed over the slots
    dw = band.as_strided((C, k, groups, sp), (1, pp * C, sp * C, stride * pp * C + C)).sum(dim=(2, 3)).contiguous()
    db = (db_part.sum(dim=0) if deterministic else db_part[0]) if bias is not None else None
    return None, dw, db, local
