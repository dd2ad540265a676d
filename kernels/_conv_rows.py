"""Row-GEMM Triton kernels for a conv block with several input channels (conv2..conv7), forward and backward
(docs/design.md#kernels).

With the input copied once per pass into a zero-padded channels-last buffer xc (N, LP, C_in), the im2col row
of output position t is one contiguous run: A[t, r] = xc[n, t * stride + r // C_in, r % C_in] =
xc_flat[n * LP * C_in + t * STEP + r], STEP = stride * C_in, r < R = K * C_in, with the weight reordered to
wr[co, k * C_in + ci] = w[co, ci, k]. So the conv is a GEMM whose A tiles are plain 16-byte loads of
overlapping rows (no gathers, no masks, no per-element index arithmetic; rows past the end are clamped, not
masked), positions on the MMA's M axis and output channels on its N axis (wgmma m64nC_out on Hopper).

The pool and the backward's sums walk rows window by window (row = (q, u), u the slot in pooled output q's
window), so a window's slots sit in one tile and are reduced in registers (a block without a pool: windows of
one position, HAS_POOL False, its output saved by the op as ReLU's mask in place of the codes); the
conv-output gradient gz is written (M, C_out), channel-minor, for the weight gradient (A^T gz, the same
contiguous rows) and dx, itself a row GEMM per phase (``_rows_dx_kernel``; where its rows do not align,
``_conv_bwd._dx_kernel`` reads gz through strides). With 16-bit inputs the BN sums of a pooling block come
from the pool kernel's zmax (``_conv_fwd.keeps_zmax``).

Symbols (beyond ``_conv_fwd.py``'s): xc, LPC = LP * C_in (a clip's padded length times its channels, a
multiple of 16); STEP = stride * C_in; R = K * C_in; wr, the reordered weight (C_OUT, R); m, a position row
of the statistics and dW (n = m // T, t = m % T); q, u: a pooled output and its slot; TQ = cdiv(T, POOL),
windows covering every position; TPC: window tiles per clip (a window tile never crosses a clip, so its rows
need no division); mb = mean - bias, the mean of the bias-free z the kernels compute; ROWS: the launch's rows
(M, or dx's rows); NUM_TILES / P: tiles and programs of the persistent grid (tile p, p + P, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._bn_sums import pooled_bn_sums
from ._common import INTERPRET, SMEM_DEFAULT, clamp_pow2, dot_precision, next_pow2, smem_per_block
from ._conv_bwd import dx_from_gz
from ._conv_fwd import (
    BN_SUMS,
    SMS,
    _load_bias,
    bn_sign,
    bn_sum_partials,
    bn_sums_of,
    cast_out,
    chain_pads,
    chan_merge,
    channels_last_empty,
    cl_at,
    code_dtype,
    fp32_if,
    keeps_zmax,
    local_sums,
    merge_stats,
    partial_row,
    persistent_grid,
    pool_output,
    pool_select,
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
def _row_tile(xc_ptr, wr_ptr, base, co, C_OUT, R, BLOCK_CO: tl.constexpr, BLOCK_R: tl.constexpr,
              INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """acc (rows, BLOCK_CO) fp32 = sum_r xc_flat[base + r] * wr[co, r]; base (rows,) int64 element offsets of
    the rows. R is a multiple of BLOCK_R (the shape rule), so no load is masked but the weight's channels."""
    co_ok = co < C_OUT
    acc = tl.zeros((base.shape[0], BLOCK_CO), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        a = tl.load(xc_ptr + base[:, None] + r[None, :])
        b = tl.load(wr_ptr + co[None, :] * R + r[:, None], mask=co_ok[None, :], other=0.0)
        a = fp32_if(a, INTERP)
        b = fp32_if(b, INTERP)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _weight_at(w_ptr, r, n, s_r, s_n, C_IN, K, STRIDE, C_OUT, MODE: tl.constexpr):
    """(pointers, mask) of w[r, n] (r, n int tensors that broadcast; r the reduction's row, n the output column).
    MODE 0: a prepared weight at w_ptr + r * s_r + n * s_n. MODE 1: the conv weight w2d (C_OUT, C_IN * K) read
    as the rows' reordered weight, w[r, n] = w2d[n, (r % C_IN) * K + r // C_IN] (r = k * C_IN + ci). MODE 2: w2d
    read as dx's phase weight (``_dx_weight``), w[r, n] = w2d[co, ci * K + STRIDE * (J - 1 - j) + ph] with
    r = j * C_OUT + co, n = ph * C_IN + ci, J = cdiv(K, STRIDE), masked where that tap is >= K. Modes 1 and 2 are
    gathers: for the weights a program loads once (``_resident_weight``, ``_band_weight``), they save the launcher
    its reorder copies."""
    if MODE == 1:
        return w_ptr + n * (C_IN * K) + (r % C_IN) * K + r // C_IN, r >= 0
    elif MODE == 2:
        tap = STRIDE * ((K + STRIDE - 1) // STRIDE - 1 - r // C_OUT) + n // C_IN
        return w_ptr + (r % C_OUT) * (C_IN * K) + (n % C_IN) * K + tap, tap < K
    else:
        return w_ptr + r * s_r + n * s_n, r >= 0


@triton.jit
def _resident_weight(w_ptr, s_r, s_n, n, n_ok, C_IN, K, STRIDE, C_OUT, MODE: tl.constexpr, R: tl.constexpr,
                     BLOCK_R: tl.constexpr, INTERP: tl.constexpr):
    """A weight's R // BLOCK_R chunks w[r, n] (``_weight_at``; r < R; n (BLOCK_N,), masked by n_ok), loaded once
    per program: a tuple of (BLOCK_R, BLOCK_N) tiles that the tile loop's dots read from shared memory, where
    Triton keeps loop-invariant dot operands, instead of re-reading the weight per tile."""
    ws = ()
    for i in tl.static_range(R // BLOCK_R):
        r = i * BLOCK_R + tl.arange(0, BLOCK_R)
        ptr, ok = _weight_at(w_ptr, r[:, None], n[None, :], s_r, s_n, C_IN, K, STRIDE, C_OUT, MODE)
        ws = ws + (fp32_if(tl.load(ptr, mask=ok & n_ok[None, :], other=0.0), INTERP),)
    return ws


@triton.jit
def _band_weight(w_ptr, s_r, s_n, col, col_ok, KC, SHIFT: tl.constexpr, BAND: tl.constexpr, C_IN, K, STRIDE,
                 C_OUT, MODE: tl.constexpr, R: tl.constexpr, BLOCK_R: tl.constexpr, INTERP: tl.constexpr):
    """A band weight as ``_resident_weight``'s R // BLOCK_R chunks (BLOCK_R, BAND * BLOCK_N), from the weight
    w[r, n] (``_weight_at``; r < KC): band[r, (g, i)] = w[r - g * SHIFT, col[i]] where 0 <= r - g * SHIFT < KC
    and col_ok[i], else 0 (R >= KC + (BAND - 1) * SHIFT; col, col_ok (BLOCK_N,)). Column block g of a band row
    that starts g steps before a position is that position's weight. Loaded once per program: the masks and
    gathers cost nothing per tile."""
    BLOCK_N: tl.constexpr = col.shape[0]
    c = tl.reshape(tl.broadcast_to(col[None, :], (BAND, BLOCK_N)), (BAND * BLOCK_N,))
    c_ok = tl.reshape(tl.broadcast_to(col_ok[None, :], (BAND, BLOCK_N)), (BAND * BLOCK_N,))
    g = tl.arange(0, BAND * BLOCK_N) // BLOCK_N
    ws = ()
    for i in tl.static_range(R // BLOCK_R):
        j = (i * BLOCK_R + tl.arange(0, BLOCK_R))[:, None] - (g * SHIFT)[None, :]
        ptr, ok = _weight_at(w_ptr, j, c[None, :], s_r, s_n, C_IN, K, STRIDE, C_OUT, MODE)
        ok = ok & (j >= 0) & (j < KC) & c_ok[None, :]
        ws = ws + (fp32_if(tl.load(ptr, mask=ok, other=0.0), INTERP),)
    return ws


@triton.jit
def _row_tile_resident(x_ptr, ws, base, R: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                       INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """``_row_tile`` against a resident weight (``_resident_weight``'s chunks): acc (rows, BLOCK_N) fp32 =
    sum_r x_flat[base + r] * w[r, :]."""
    acc = tl.zeros((base.shape[0], BLOCK_N), dtype=tl.float32)
    for i in tl.static_range(R // BLOCK_R):
        a = fp32_if(tl.load(x_ptr + base[:, None] + (i * BLOCK_R + tl.arange(0, BLOCK_R))[None, :]), INTERP)
        acc = tl.dot(a, ws[i], acc, input_precision=PRECISION)
    return acc


@triton.jit
def _band_tile(x_ptr, ws, n, t, ROWS, CLIP, ROW_STEP, R: tl.constexpr, BLOCK_R: tl.constexpr,
               BAND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, INTERP: tl.constexpr,
               PRECISION: tl.constexpr):
    """Tile t of clip n of a row GEMM in bands (``band_of``): its BLOCK_M band rows q each read R elements
    from n * CLIP + BAND * q * ROW_STEP against the band weight ws (``_band_weight``). Returns (acc, n, m):
    acc (BLOCK_M * BAND, BLOCK_N) fp32, whose row q * BAND + g is row m = BAND * q + g of the plain GEMM; n the
    clip (int64); m (BLOCK_M * BAND,). Band rows past the clip's ROWS rows are clamped to its last: the caller
    masks the rows m >= ROWS."""
    q0 = t * BLOCK_M
    n = n.to(tl.int64)
    q = tl.minimum(q0 + tl.arange(0, BLOCK_M), (ROWS - 1) // BAND)
    acc = _row_tile_resident(x_ptr, ws, n * CLIP + q * (BAND * ROW_STEP), R, BLOCK_R, BAND * BLOCK_N, INTERP,
                             PRECISION)
    return tl.reshape(acc, (BLOCK_M * BAND, BLOCK_N)), n, q0 * BAND + tl.arange(0, BLOCK_M * BAND)


@triton.jit
def z_at(z_ptr, n, t, co, ZC, C_OUT):
    """Pointers (rows, channels) to the stored conv output z (``kept_z_shape``: (N, T, C_OUT), a clip ZC = T * C_OUT
    elements, channel-minor as the GEMM tiles make it) at positions t (rows,) of clip n (a scalar, or per row),
    channels co."""
    return z_ptr + (n.to(tl.int64) * ZC + t * C_OUT)[:, None] + co[None, :]


@triton.jit
def slot_z(z_ptr, n, q, u, co, c_ok, T, ZC, C_OUT, POOL: tl.constexpr):
    """Slot u (a constexpr < POOL) of windows q (BLOCK_Q,) of clip n: the stored z at positions q * POOL + u,
    channels co, (BLOCK_Q, BLOCK_CO) fp32, 0 past T and for channels not c_ok. A pool walks its windows' slots one
    tile at a time (``tl.static_range``), each tile as wide as the pooled output (16-byte loads of channel-minor
    rows where it holds 8 elements per thread), so the max over a window and the routing of its gradient stay
    elementwise in registers."""
    t = q * POOL + u
    return tl.load(z_at(z_ptr, n, t, co, ZC, C_OUT), mask=(t < T)[:, None] & c_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _rows_z(xc_ptr, wr_ptr, z_ptr, n, t, mask, co, C_OUT, T, LPC, R, ZC, STEP: tl.constexpr, POOL: tl.constexpr,
            PP: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_R: tl.constexpr, HAS_Z: tl.constexpr, INTERP: tl.constexpr,
            PRECISION: tl.constexpr):
    """The conv output without bias at rows t (rows,) of clip n, (rows, BLOCK_CO) fp32: read from z_ptr (``z_at``)
    where the statistics pass stored it (HAS_Z; mask: the rows and channels to read, 0 elsewhere), else
    recomputed by ``_row_tile``."""
    if HAS_Z:  # z_at's (N, T, C_OUT) in this form: a different one spilled 8 B (conv6, Triton 3.6)
        ptr = z_ptr + ((n.to(tl.int64) * T + t) * C_OUT)[:, None] + co[None, :]
        return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    return _row_tile(xc_ptr, wr_ptr, n.to(tl.int64) * LPC + t * STEP, co, C_OUT, R, BLOCK_CO, BLOCK_R, INTERP,
                     PRECISION)


@triton.jit
def _window_rows(n, tile, TR, POOL: tl.constexpr, PP: tl.constexpr, BLOCK_Q: tl.constexpr):
    """Rows of tile ``tile`` of clip n, BLOCK_Q windows x PP slots (TR windows per clip):
    (n, q0, q, u, t, ok): the clip n and first window q0 (scalars), each row's window q, slot u and position t
    (slots and windows clamped into the clip, so addresses stay in bounds), ok = q < TR and u < POOL. Tiles
    never cross a clip: no row divides by the windows per clip."""
    q0 = tile * BLOCK_Q
    idx = tl.arange(0, BLOCK_Q * PP)
    q = q0 + idx // PP
    u = idx % PP
    ok = (q < TR) & (u < POOL)
    t = tl.minimum(q, TR - 1) * POOL + tl.minimum(u, POOL - 1)
    return n, q0, q, u, t, ok


@triton.jit
def _rows_stats_kernel(xc_ptr,  # (N, LP, C_IN) channels-last padded input
                       wr_ptr,  # (C_OUT, KC) reordered weight; W_MODE 1: the conv weight (C_OUT, C_IN * K)
                       b_ptr, part_ptr,  # (C_OUT,), (3, C_OUT, P) rows PITCH apart
                       z_ptr,  # (N, T, C_OUT) (STORE_Z; ``z_at``)
                       C_OUT, T, M, LPC, KC, R: tl.constexpr, NUM_TILES, TPC, P, PITCH, C_IN, ZC,
                       HAS_BIAS: tl.constexpr, STEP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_CO: tl.constexpr,
                       BLOCK_R: tl.constexpr, BAND: tl.constexpr, RESIDENT: tl.constexpr, W_MODE: tl.constexpr,
                       STORE_Z: tl.constexpr, INTERP: tl.constexpr,
                       PRECISION: tl.constexpr):
    """Per program: (mean, M2, count) per channel over its position tiles (Chan merge per tile); part
    (3, C_OUT, P) rows mean, M2, count, merged by ``_merge_stats_kernel`` (HAS_COUNT). With STORE_Z also the conv
    output without its bias into z_ptr in z's dtype (``z_at``: the tile's rows as they are), for
    the passes that follow (``keeps_z``). RESIDENT: the weight stays in shared memory for all the program's tiles
    (``resident_weight``). KC = K * C_IN, the weight's rows. BAND > 1 (``band_of``): one GEMM row per BAND
    positions, row q of clip n the R (>= KC + (BAND - 1) * STEP) elements from n * LPC + BAND * q * STEP against
    the resident band weight (``_band_weight``: columns (g, co) are channel co of position BAND * q + g);
    tiles of BLOCK_M rows inside one clip, TPC per clip. BAND = 1: R = KC, tiles of BLOCK_M of the flat N * T
    positions."""
    pid_p = tl.program_id(0)
    c0 = tl.program_id(1) * BLOCK_CO
    co = c0 + tl.arange(0, BLOCK_CO)
    bias = _load_bias(b_ptr, co, C_OUT, HAS_BIAS, BLOCK_CO)
    if BAND > 1:
        ws = _band_weight(wr_ptr, 1, KC, co, co < C_OUT, KC, STEP, BAND, C_IN, KC // C_IN, 1, C_OUT, W_MODE, R,
                          BLOCK_R, INTERP)
    elif RESIDENT:
        ws = _resident_weight(wr_ptr, 1, R, co, co < C_OUT, C_IN, KC // C_IN, 1, C_OUT, W_MODE, R, BLOCK_R, INTERP)
    n_a = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    mean_a = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    m2_a = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    nw, tw, dn, dt = walk_start(pid_p, P, TPC)
    for tile in range(pid_p, NUM_TILES, P):
        if BAND > 1:
            z, n, t = _band_tile(xc_ptr, ws, nw, tw, T, LPC, STEP, R, BLOCK_R, BAND, BLOCK_M, BLOCK_CO, INTERP,
                                 PRECISION)
            nw, tw = walk_next(nw, tw, dn, dt, TPC)
            ok = t < T
        else:
            m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
            ok = m < M
            mc = tl.minimum(m, M - 1)
            base = (mc // T).to(tl.int64) * LPC + (mc % T) * STEP
            if RESIDENT:
                z = _row_tile_resident(xc_ptr, ws, base, R, BLOCK_R, BLOCK_CO, INTERP, PRECISION)
            else:
                z = _row_tile(xc_ptr, wr_ptr, base, co, C_OUT, R, BLOCK_CO, BLOCK_R, INTERP, PRECISION)
        if STORE_Z:
            if BAND == 1:  # the rows' clip and position, after the dot (fewer registers live across it)
                n = mc // T
                t = mc - n * T
            tl.store(z_at(z_ptr, n, t, co, ZC, C_OUT), cast_out(z, z_ptr.dtype.element_ty, INTERP),
                     mask=ok[:, None] & (co < C_OUT)[None, :])
        z += bias[None, :]
        n_b = tl.sum(ok.to(tl.float32), axis=0)
        mean_b = tl.sum(tl.where(ok[:, None], z, 0.0), axis=0) / tl.maximum(n_b, 1.0)
        d = tl.where(ok[:, None], z - mean_b[None, :], 0.0)
        n_a, mean_a, m2_a = chan_merge(n_a, mean_a, m2_a, n_b, mean_b, tl.sum(d * d, axis=0))
    store_moments(part_ptr, co, C_OUT, PITCH, pid_p, mean_a, m2_a, n_a)


@triton.jit
def _rows_bn_relu_pool_kernel(xc_ptr,  # (N, LP, C_IN) channels-last padded input
                              wr_ptr, b_ptr, g_ptr, beta_ptr,  # (C_OUT, R), (C_OUT,) x 3
                              stats_ptr,  # (4, C_OUT): mean, invstd, var, count
                              out_ptr,  # (N, C_OUT, TP), strides son, soc, sot (``chain_pads``)
                              code_ptr, zmax_ptr,  # (N, C_OUT, TP) each, channels-last (``cl_at``)
                              z_ptr,  # (N, T, C_OUT): the stored conv output (HAS_Z; ``z_at``)
                              C_OUT, T, TP, TPC, LPC, R, NUM_TILES, P, ZC, son, soc, sot, PAD, TAIL,
                              ZERO_ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, STEP: tl.constexpr,
                              HAS_POOL: tl.constexpr, POOL: tl.constexpr, PP: tl.constexpr, BLOCK_Q: tl.constexpr,
                              BLOCK_CO: tl.constexpr, BLOCK_R: tl.constexpr, STORE_ZMAX: tl.constexpr,
                              HAS_Z: tl.constexpr, INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """Pooled output out of BN, ReLU and max over each window, y = max(z * a + b, 0) with a = gamma * invstd and
    b = beta - (mean - bias) * a; code = the window's maximum (``pool_select``), -1 where ReLU gave 0, and when
    STORE_ZMAX zmax = zhat there, normalised after the choice (as ``_conv_bn_relu_pool_kernel``). Without HAS_POOL
    (POOL = PP = 1, TP = T): the ReLU output only, no code. HAS_Z: the conv output read from z_ptr, as the
    statistics pass stored it, not recomputed. ZERO_ROWS > 0: out is chained (``chain_pads``)."""
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    c_ok = co < C_OUT
    mb = tl.load(stats_ptr + co, mask=c_ok, other=0.0) - _load_bias(b_ptr, co, C_OUT, HAS_BIAS, BLOCK_CO)
    invstd = tl.load(stats_ptr + C_OUT + co, mask=c_ok, other=0.0)
    a = invstd * tl.load(g_ptr + co, mask=c_ok, other=0.0).to(tl.float32)
    b = tl.load(beta_ptr + co, mask=c_ok, other=0.0).to(tl.float32) - mb * a
    s = bn_sign(a)
    slot = tl.arange(0, PP)[None, :, None]
    nw, tw, dn, dt = walk_start(tl.program_id(0), P, TPC)
    for _ in range(tl.program_id(0), NUM_TILES, P):
        n, q0, q, u, t, ok = _window_rows(nw, tw, TP, POOL, PP, BLOCK_Q)
        if HAS_POOL and HAS_Z:  # the windows' slots one tile at a time (``slot_z``): the max runs elementwise
            qz = tl.minimum(q0 + tl.arange(0, BLOCK_Q), TP - 1)
            best = slot_z(z_ptr, n, qz, 0, co, c_ok, T, ZC, C_OUT, POOL) * s[None, :]
            first = tl.zeros((BLOCK_Q, BLOCK_CO), dtype=tl.int32)
            for u_ in tl.static_range(1, POOL):  # pool_select's rule: the first slot where key = z * s is largest
                key = slot_z(z_ptr, n, qz, u_, co, c_ok, T, ZC, C_OUT, POOL) * s[None, :]
                better = (key > best) | (best != best)  # a NaN so far yields, as tl.max's does
                best = tl.where(better, key, best)
                first = tl.where(better, u_, first)
            zsel = best * s[None, :]
            o = tl.maximum(zsel * a[None, :] + b[None, :], 0.0)
            code = tl.where(o > 0.0, first, -1)  # -1: ReLU passes no gradient
        elif HAS_POOL:
            z = _rows_z(xc_ptr, wr_ptr, z_ptr, n, t, c_ok[None, :], co, C_OUT, T, LPC, R, ZC, STEP, POOL, PP,
                        BLOCK_CO, BLOCK_R, HAS_Z, INTERP, PRECISION)
            key = z * s[None, :]
            if PP > POOL:
                key = tl.where((u < POOL)[:, None], key, -float("inf"))  # padded slots
            zsel, first = pool_select(tl.reshape(key, (BLOCK_Q, PP, BLOCK_CO)), s[None, :], slot, PP, 1)
            o = tl.maximum(zsel * a[None, :] + b[None, :], 0.0)
            code = tl.where(o > 0.0, first, -1)  # -1: ReLU passes no gradient
        else:
            z = _rows_z(xc_ptr, wr_ptr, z_ptr, n, t, c_ok[None, :], co, C_OUT, T, LPC, R, ZC, STEP, POOL, PP,
                        BLOCK_CO, BLOCK_R, HAS_Z, INTERP, PRECISION)
            o = tl.maximum(z * a[None, :] + b[None, :], 0.0)
        qr = q0 + tl.arange(0, BLOCK_Q)
        off = cl_at(n, qr, co, C_OUT, TP)
        smask = (qr < TP)[:, None] & c_ok[None, :]
        ooff = tl.cast(n, tl.int64) * son + (qr[:, None] * sot + co[None, :] * soc)
        tl.store(out_ptr + ooff, cast_out(o, out_ptr.dtype.element_ty, INTERP), mask=smask)
        if HAS_POOL:
            tl.store(code_ptr + off, code.to(code_ptr.dtype.element_ty), mask=smask)
            if STORE_ZMAX:
                zmax = tl.where(o > 0.0, (zsel - mb[None, :]) * invstd[None, :], 0.0)
                tl.store(zmax_ptr + off, cast_out(zmax, zmax_ptr.dtype.element_ty, INTERP), mask=smask)
        nw, tw = walk_next(nw, tw, dn, dt, TPC)
    if ZERO_ROWS > 0:  # a chained output's zero rows, once per clip (``chain_pads``)
        for n in range(tl.program_id(0), NUM_TILES // TPC, P):
            for z0 in range(0, tl.maximum(PAD, TAIL), ZERO_ROWS):
                chain_pads(out_ptr, n, z0, co, c_ok, son, soc, sot, TP, PAD, TAIL, ZERO_ROWS)


@triton.jit
def clip_rows_flat(ptr, base, c0, TP, REST, BLOCK_Q: tl.constexpr, BLOCK_CO: tl.constexpr):
    """The (BLOCK_Q, BLOCK_CO) tile [t, c] = ptr[base + (c0 + c) * TP + t] of a clip whose (channels, TP) block is
    contiguous (TP <= BLOCK_Q: the whole clip; t >= TP repeats t = TP - 1, which the caller masks), in ptr's dtype:
    one flat run of BLOCK_CO * BLOCK_Q elements (16 bytes per lane where base and c0 * TP are multiples of 8; rows of
    TP elements seldom start on one: SoundNet-8's conv7 gradient, TP = 15, read 2 bytes per lane as a 2-D tile),
    transposed by a gather in shared memory. REST: elements from base + c0 * TP to the tensor's end (the run's
    elements past the block are read where they exist and never selected)."""
    f = tl.arange(0, BLOCK_CO * BLOCK_Q)
    v = tl.load(ptr + base + c0 * TP + f, mask=f < REST, other=0)
    t = tl.minimum(tl.arange(0, BLOCK_Q), TP - 1)
    idx = tl.reshape(tl.arange(0, BLOCK_CO)[None, :] * TP + t[:, None], (BLOCK_Q * BLOCK_CO,))
    return tl.reshape(tl.gather(v, idx, 0), (BLOCK_Q, BLOCK_CO))


@triton.jit
def _rows_grad(xc_ptr, wr_ptr, z_ptr, go_ptr, code_ptr, n, q0, t, ok, co, C_OUT, T, TP, LPC, R, ZC, sgn, sgc, sgl,
               smn, smc, sml, N_CLIPS,
               STEP: tl.constexpr, HAS_POOL: tl.constexpr, POOL: tl.constexpr, PP: tl.constexpr, BLOCK_Q: tl.constexpr,
               BLOCK_CO: tl.constexpr, BLOCK_R: tl.constexpr, HAS_Z: tl.constexpr, FLAT: tl.constexpr,
               INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """(z, gy, valid) of a tile of windows (``_window_rows``), each (BLOCK_Q * PP, BLOCK_CO): z the conv output
    without its bias (fp32); gy, the pooled gradient routed to the recorded slot (0 past TP and where invalid);
    valid: the row is a position < T of a window in range. code_ptr: (N, C_OUT, TP), strides smn, smc, sml, the
    pool's codes, or without HAS_POOL the block's output (ReLU's mask: gy = the gradient where the output is > 0).
    FLAT (no pool, one tile per clip, grad_out and the output contiguous (N_CLIPS, C_OUT, TP)): both read by
    ``clip_rows_flat``."""
    c_ok = co < C_OUT
    valid = (ok & (t < T))[:, None] & c_ok[None, :]
    z = _rows_z(xc_ptr, wr_ptr, z_ptr, n, t, valid, co, C_OUT, T, LPC, R, ZC, STEP, POOL, PP, BLOCK_CO, BLOCK_R,
                HAS_Z, INTERP, PRECISION)
    # the gradient and codes once per window (BLOCK_Q, BLOCK_CO), routed to its slots in registers
    qw = q0 + tl.arange(0, BLOCK_Q)
    hit = (qw < TP)[:, None] & c_ok[None, :]
    n64 = n.to(tl.int64)
    if FLAT:
        c0 = tl.program_id(1) * BLOCK_CO
        rest = (N_CLIPS - n64) * sgn - c0 * sgc  # grad_out and the output: the same contiguous shape
        go = tl.where(hit, clip_rows_flat(go_ptr, n64 * sgn, c0, TP, rest, BLOCK_Q, BLOCK_CO).to(tl.float32), 0.0)
        out = clip_rows_flat(code_ptr, n64 * smn, c0, TP, rest, BLOCK_Q, BLOCK_CO)
        gy = tl.where(hit & (out > 0), go, 0.0)[:, None, :]
        return z, tl.where(valid, tl.reshape(gy, (BLOCK_Q * PP, BLOCK_CO)), 0.0), valid
    go = tl.load(go_ptr + n64 * sgn + (qw[:, None] * sgl + co[None, :] * sgc), mask=hit, other=0.0).to(tl.float32)
    if HAS_POOL:
        code = tl.load(code_ptr + n64 * smn + (qw[:, None] * sml + co[None, :] * smc), mask=hit, other=-1)
        slot = tl.arange(0, PP)[None, :, None]
        gy = tl.where(code.to(tl.int32)[:, None, :] == slot, go[:, None, :], 0.0)
    else:  # windows of one position
        out = tl.load(code_ptr + n64 * smn + (qw[:, None] * sml + co[None, :] * smc), mask=hit, other=0.0)
        gy = tl.where(out > 0, go, 0.0)[:, None, :]  # masked, not multiplied (an inf gradient at a 0)
    gy = tl.where(valid, tl.reshape(gy, (BLOCK_Q * PP, BLOCK_CO)), 0.0)
    return z, gy, valid


@triton.jit
def _rows_bwd_reduce_kernel(xc_ptr, wr_ptr, z_ptr, b_ptr, stats_ptr,  # as _rows_bn_relu_pool_kernel's
                            go_ptr,  # (N, C_OUT, TP) grad_out, strides sgn, sgc, sgl
                            code_ptr,  # (N, C_OUT, TP) codes, or the output without a pool, strides smn, smc, sml
                            sums_ptr,  # (2, P, C_OUT) fp64 (deterministic) or (2, 1, C_OUT)
                            C_OUT, T, TP, TPC, LPC, R, NUM_TILES, P, sgn, sgc, sgl, smn, smc, sml, ZC,
                            HAS_BIAS: tl.constexpr,
                            STEP: tl.constexpr, HAS_POOL: tl.constexpr, POOL: tl.constexpr, PP: tl.constexpr,
                            BLOCK_Q: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_R: tl.constexpr,
                            DETERMINISTIC: tl.constexpr, HAS_Z: tl.constexpr, FLAT: tl.constexpr,
                            INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """sum(gy) and sum(gy * zhat) per channel over the rows of whole windows (gy is 0 elsewhere), as
    ``_bwd_reduce_kernel``; zhat = (z - (mean - bias)) invstd. FLAT: as ``_rows_grad``'s (TPC = 1: NUM_TILES
    clips)."""
    pid_p = tl.program_id(0)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    mb = tl.load(stats_ptr + co, mask=co < C_OUT, other=0.0) - _load_bias(b_ptr, co, C_OUT, HAS_BIAS, BLOCK_CO)
    invstd = tl.load(stats_ptr + C_OUT + co, mask=co < C_OUT, other=0.0)
    s_gy = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    s_gyz = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    nw, tw, dn, dt = walk_start(pid_p, P, TPC)
    for _ in range(pid_p, NUM_TILES, P):
        n, q0, q, u, t, ok = _window_rows(nw, tw, TP, POOL, PP, BLOCK_Q)
        z, gy, valid = _rows_grad(xc_ptr, wr_ptr, z_ptr, go_ptr, code_ptr, n, q0, t, ok, co, C_OUT, T, TP, LPC, R,
                                  ZC, sgn, sgc, sgl, smn, smc, sml, NUM_TILES, STEP, HAS_POOL, POOL, PP, BLOCK_Q,
                                  BLOCK_CO, BLOCK_R, HAS_Z, FLAT, INTERP, PRECISION)
        s_gy += tl.sum(gy, axis=0)
        s_gyz += tl.sum(gy * ((z - mb[None, :]) * invstd[None, :]), axis=0)
        nw, tw = walk_next(nw, tw, dn, dt, TPC)
    store_bn_sums(sums_ptr, s_gy, s_gyz, pid_p, co, C_OUT, P, DETERMINISTIC)


# Side jobs of the gz launch (``backward_prep``): elements of dW's accumulator one program zeroes per step (16-byte
# stores), and the weight's rows x columns it reorders per step into dx's phase weight.
ZERO_BLOCK = tl.constexpr(512)
PREP_ROWS = tl.constexpr(4)
PREP_COLS = tl.constexpr(512)


@triton.jit
def backward_prep(sums_ptr, dbn_ptr, dw_ptr, w_ptr, wd_ptr, co, c_ok, C_OUT, DW_SIZE, C_IN,
                  STORE_SUMS: tl.constexpr, ZERO_DW: tl.constexpr, DX_K: tl.constexpr, DX_STRIDE: tl.constexpr):
    """What the gz launch does for the launches after it, so that no torch op runs between them (each would be a
    launch of its own). Programs (p, c) of a (P, C-blocks) grid, f = c * P + p of F:
    - STORE_SUMS: the BN sums (sums_ptr (2, C_OUT), the fp64 atomics' row) as the fp32 dbn_ptr (2, C_OUT) the op
      returns (programs p = 0, channels co);
    - ZERO_DW: dw_ptr (DW_SIZE,) fp32, dW's accumulator that the dW launch adds into, zeroed (slices of F);
    - DX_K > 0: dx's phase weight wd_ptr (J * C_OUT, DX_STRIDE * C_IN), J = cdiv(DX_K, DX_STRIDE), wd[j * C_OUT + co,
      ph * C_IN + ci] = w[co, ci * DX_K + DX_STRIDE * (J - 1 - j) + ph] (``_dx_weight``) from the conv weight w_ptr
      (C_OUT, C_IN * DX_K): rows of F read 16 bytes at a time and scattered (entries past DX_K, when DX_K is not a
      multiple of DX_STRIDE, are not written: the launcher zeroes wd then)."""
    f = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    nf = tl.num_programs(0) * tl.num_programs(1)
    if STORE_SUMS:
        store_sums_fp32(sums_ptr, dbn_ptr, co, c_ok, C_OUT)
    if ZERO_DW:
        i = tl.arange(0, ZERO_BLOCK)
        for s in range(f * ZERO_BLOCK, DW_SIZE, nf * ZERO_BLOCK):
            tl.store(dw_ptr + s + i, tl.zeros((ZERO_BLOCK,), dtype=tl.float32), mask=s + i < DW_SIZE)
    if DX_K > 0:
        J: tl.constexpr = (DX_K + DX_STRIDE - 1) // DX_STRIDE
        KC = C_IN * DX_K
        e = tl.arange(0, PREP_COLS)
        for r0 in range(f * PREP_ROWS, C_OUT, nf * PREP_ROWS):
            r = r0 + tl.arange(0, PREP_ROWS)  # conv weight rows: output channels
            for e0 in range(0, KC, PREP_COLS):
                ee = e0 + e  # ci * DX_K + tap
                ok = (r < C_OUT)[:, None] & (ee < KC)[None, :]
                v = tl.load(w_ptr + r[:, None] * KC + ee[None, :], mask=ok, other=0.0)
                tap = ee % DX_K
                j = J - 1 - tap // DX_STRIDE
                col = (tap % DX_STRIDE) * C_IN + ee // DX_K
                tl.store(wd_ptr + (j * C_OUT)[None, :] * (DX_STRIDE * C_IN) + r[:, None] * (DX_STRIDE * C_IN)
                         + col[None, :], v, mask=ok)


@triton.jit
def _rows_gz_kernel(xc_ptr, wr_ptr, z_ptr, b_ptr, stats_ptr, g_ptr,  # as _rows_bn_relu_pool_kernel's
                    go_ptr, code_ptr,  # as _rows_bwd_reduce_kernel's
                    sums_ptr,  # (2, C_OUT) fp32 or fp64: sum(gy), sum(gy * zhat), all-reduced
                    gz_ptr,  # gz[n, t, co] at n * SGZ + t * C_OUT + co
                    dbn_ptr, dw_ptr, w_ptr, wd_ptr,  # (2, C_OUT) fp32, (DW_SIZE,) fp32, (C_OUT, KC), (J * C_OUT, DXS)
                    C_OUT, T, TP, TQ, TPC, LPC, R, NUM_TILES, P, sgn, sgc, sgl, smn, smc, sml, SGZ, N_CLIPS, PAD_LO,
                    PAD_HI, DW_SIZE, C_IN, ZC, HAS_BIAS: tl.constexpr, STEP: tl.constexpr, HAS_POOL: tl.constexpr,
                    POOL: tl.constexpr, PP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_CO: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_PAD: tl.constexpr, TRAINING: tl.constexpr, HAS_Z: tl.constexpr,
                    STORE_SUMS: tl.constexpr, ZERO_DW: tl.constexpr, DX_K: tl.constexpr, DX_STRIDE: tl.constexpr,
                    FLAT: tl.constexpr, INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """gz in gz's dtype (channel-minor; SGZ = T * C_OUT, or more when the clips are spaced by zero rows for
    ``_rows_dx_kernel``): BN's backward (as ``_bn_grad``) at every position, over the windows covering them (TQ
    per clip), as the affine form of ``_conv_banded._band_gz_dw_kernel``: gz = cz z + c0 + scale gy. With
    BLOCK_PAD > 0 also the zero rows around each of the N_CLIPS clips (PAD_LO before, PAD_HI after, each at most
    BLOCK_PAD) that ``_rows_dx_kernel`` reads: no fill launch for them. Side jobs for the launches after it
    (``backward_prep``): the BN sums in fp32 (STORE_SUMS), dW's accumulator zeroed (ZERO_DW), dx's phase weight
    (DX_K > 0). FLAT: as ``_rows_grad``'s."""
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    c_ok = co < C_OUT
    invstd = tl.load(stats_ptr + C_OUT + co, mask=c_ok, other=0.0)
    scale = invstd * tl.load(g_ptr + co, mask=c_ok, other=0.0).to(tl.float32)
    cz = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    c0 = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    if TRAINING:
        count = tl.load(stats_ptr + 3 * C_OUT + co, mask=c_ok, other=1.0)
        mean_gy = tl.load(sums_ptr + co, mask=c_ok, other=0.0).to(tl.float32) / count
        mean_gyz = tl.load(sums_ptr + C_OUT + co, mask=c_ok, other=0.0).to(tl.float32) / count
        cz = -scale * mean_gyz * invstd
        mb = tl.load(stats_ptr + co, mask=c_ok, other=0.0) - _load_bias(b_ptr, co, C_OUT, HAS_BIAS, BLOCK_CO)
        c0 = -scale * mean_gy - cz * mb
    nw, tw, dn, dt = walk_start(tl.program_id(0), P, TPC)
    for _ in range(tl.program_id(0), NUM_TILES, P):
        n, q0, q, u, t, ok = _window_rows(nw, tw, TQ, POOL, PP, BLOCK_Q)
        if HAS_POOL and HAS_Z:  # the windows' slots one tile at a time (``slot_z``), each stored as whole rows
            qw = q0 + tl.arange(0, BLOCK_Q)
            hit = (qw < TP)[:, None] & c_ok[None, :]
            n64 = n.to(tl.int64)
            go = tl.load(go_ptr + n64 * sgn + (qw[:, None] * sgl + co[None, :] * sgc), mask=hit, other=0.0)
            code = tl.load(code_ptr + n64 * smn + (qw[:, None] * sml + co[None, :] * smc), mask=hit, other=-1)
            code = code.to(tl.int32)
            routed = c0[None, :] + go.to(tl.float32) * scale[None, :]  # the affine term at the window's slot
            for u_ in tl.static_range(POOL):
                tt = qw * POOL + u_  # positions
                valid = ((qw < TQ) & (tt < T))[:, None] & c_ok[None, :]
                z = slot_z(z_ptr, n, qw, u_, co, c_ok, T, ZC, C_OUT, POOL)
                gz = z * cz[None, :] + tl.where(code == u_, routed, c0[None, :])
                tl.store(gz_ptr + n64 * SGZ + (tt[:, None] * C_OUT + co[None, :]),
                         cast_out(gz, gz_ptr.dtype.element_ty, INTERP), mask=valid)
        else:
            z, gy, valid = _rows_grad(xc_ptr, wr_ptr, z_ptr, go_ptr, code_ptr, n, q0, t, ok, co, C_OUT, T, TP, LPC,
                                      R, ZC, sgn, sgc, sgl, smn, smc, sml, N_CLIPS, STEP, HAS_POOL, POOL, PP,
                                      BLOCK_Q, BLOCK_CO, BLOCK_R, HAS_Z, FLAT, INTERP, PRECISION)
            gz = z * cz[None, :] + c0[None, :] + gy * scale[None, :]
            off = n.to(tl.int64) * SGZ + (t[:, None] * C_OUT + co[None, :])
            tl.store(gz_ptr + off, cast_out(gz, gz_ptr.dtype.element_ty, INTERP), mask=valid)
        nw, tw = walk_next(nw, tw, dn, dt, TPC)
    if BLOCK_PAD > 0:
        i = tl.arange(0, BLOCK_PAD)
        zero = tl.zeros((BLOCK_PAD, BLOCK_CO), dtype=gz_ptr.dtype.element_ty)
        for n in range(tl.program_id(0), N_CLIPS, P):
            base = gz_ptr + tl.cast(n, tl.int64) * SGZ
            lo = (i < PAD_LO)[:, None] & c_ok[None, :]
            tl.store(base + ((i - PAD_LO)[:, None] * C_OUT + co[None, :]), zero, mask=lo)
            tl.store(base + ((T + i)[:, None] * C_OUT + co[None, :]), zero, mask=(i < PAD_HI)[:, None] & c_ok[None, :])
    backward_prep(sums_ptr, dbn_ptr, dw_ptr, w_ptr, wd_ptr, co, c_ok, C_OUT, DW_SIZE, C_IN, STORE_SUMS, ZERO_DW,
                  DX_K, DX_STRIDE)


@triton.jit
def _dw_step(a, g, acc, db, INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """One position tile of dW: (acc + a^T g, db + g) with a (positions, rows' elements) and g (positions, columns)
    in the inputs' dtype; the rows' elements on the MMA's M axis (wgmma), db summed per thread (reduced once at
    the end of the program)."""
    db += g.to(tl.float32)
    return tl.dot(tl.trans(fp32_if(a, INTERP)), fp32_if(g, INTERP), acc, input_precision=PRECISION), db


@triton.jit
def _rows_dw_kernel(gz_ptr,  # (N * T, C_OUT), clip n's rows at n * SGZ
                    xc_ptr,  # (N, LP, C_IN) channels-last padded input
                    dw_ptr, db_ptr,  # (SPLIT or 1, C_OUT, KC), (SPLIT or 1, C_OUT) fp32
                    C_OUT, T, M, SGZ, LPC, KC, NUM_MT, TPC, SPLIT, C_IN, K,
                    STEP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_RW: tl.constexpr,
                    CLIP_TILES: tl.constexpr, BAND: tl.constexpr, SHIFTS: tl.constexpr, DETERMINISTIC: tl.constexpr,
                    INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """dw[co, ci * K + k] = sum_m gz[m, co] A[m, r] with r = k * C_IN + ci (the GEMM runs in the rows' (k, ci)
    order and stores in the weight's (ci, k) order; gz as ``_rows_gz_kernel`` writes it) over the position tiles
    pid_s, pid_s + SPLIT, ...; db[co] = sum_m gz[m, co] from the pid_r == 0 programs. Partials as ``_dw_kernel``:
    dw_ptr (SPLIT or 1, C_OUT, KC) fp32, db_ptr (SPLIT or 1, C_OUT) fp32. CLIP_TILES: a tile never crosses a clip
    (TPC tiles per clip, NUM_MT = N * TPC: no row divides by T); else NUM_MT tiles of the flat N * T rows.
    KC = K * C_IN. BAND > 1 (``band_of``; tiles inside a clip, atomics, BLOCK_CO = C_OUT): tiles of BLOCK_M band
    rows q, A's row the KC + (BAND - 1) * STEP elements from BAND * q * STEP (``_rows_stats_kernel``'s) and gz's
    row the BAND * C_OUT elements of positions BAND * q + g; their product P[r, (g, co)] adds to
    dw[co, r - g * STEP] (the band weight's transpose), each program's rows r a BLOCK_RW chunk of the band.
    SHIFTS > 0: ``_rows_dw_shift``."""
    if SHIFTS > 0:
        _rows_dw_shift(gz_ptr, xc_ptr, dw_ptr, db_ptr, C_OUT, T, SGZ, LPC, KC, NUM_MT, TPC, SPLIT, C_IN, K, STEP,
                       BLOCK_M, BLOCK_CO, BLOCK_RW, SHIFTS, DETERMINISTIC, INTERP, PRECISION)
        return
    if BAND > 1:
        _rows_dw_band(gz_ptr, xc_ptr, dw_ptr, db_ptr, C_OUT, T, SGZ, LPC, KC, NUM_MT, TPC, SPLIT, C_IN, K, STEP,
                      BLOCK_M, BLOCK_CO, BLOCK_RW, BAND, INTERP, PRECISION)
        return
    pid_r = tl.program_id(0)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    pid_s = tl.program_id(2)
    r = pid_r * BLOCK_RW + tl.arange(0, BLOCK_RW)
    c_ok = co < C_OUT
    acc = tl.zeros((BLOCK_RW, BLOCK_CO), dtype=tl.float32)  # dW^T: the rows' KC on the MMA's M axis (wgmma)
    db = tl.zeros((BLOCK_M, BLOCK_CO), dtype=tl.float32)  # per-thread partial sums of gz, reduced once at the end
    nw, tw, dn, dt = walk_start(pid_s, SPLIT, TPC)
    for it in range(pid_s, NUM_MT, SPLIT):
        if CLIP_TILES:  # one clip n per tile, its rows past T masked
            n = nw.to(tl.int64)
            t = tw * BLOCK_M + tl.arange(0, BLOCK_M)
            nw, tw = walk_next(nw, tw, dn, dt, TPC)
            ok = t < T
            t = tl.minimum(t, T - 1)
        else:
            m = it * BLOCK_M + tl.arange(0, BLOCK_M)
            ok = m < M
            mc = tl.minimum(m, M - 1)
            n = (mc // T).to(tl.int64)
            t = mc % T
        g = tl.load(gz_ptr + (n * SGZ + t * C_OUT)[:, None] + co[None, :], mask=ok[:, None] & c_ok[None, :],
                    other=0.0)
        a = tl.load(xc_ptr + (n * LPC + t * STEP)[:, None] + r[None, :])
        acc, db = _dw_step(a, g, acc, db, INTERP, PRECISION)
    idx = partial_row(pid_s, DETERMINISTIC)
    col = (r % C_IN) * K + r // C_IN  # (k, ci) -> the weight's (ci, k)
    store_partial(dw_ptr + (idx * C_OUT + co[None, :]).to(tl.int64) * KC + col[:, None], acc, c_ok[None, :],
                  DETERMINISTIC)
    store_partial(db_ptr + idx * C_OUT + co, tl.sum(db, axis=0), c_ok & ((co * 0 + pid_r) == 0), DETERMINISTIC)


@triton.jit
def _rows_dw_shift(gz_ptr, xc_ptr, dw_ptr, db_ptr, C_OUT, T, SGZ, LPC, KC, NUM_MT, TPC, SPLIT, C_IN, K,
                   STEP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_RW: tl.constexpr,
                   SHIFTS: tl.constexpr, DETERMINISTIC: tl.constexpr, INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """``_rows_dw_kernel`` with the reduction's chunks as shifts of gz (SHIFTS > 0, ``dw_shifts``): the rows' chunk
    j (elements j * BLOCK_RW + e, e < BLOCK_RW) at position t is chunk 0 at position t + j * SH (SH = BLOCK_RW /
    STEP), so dW^T[j * BLOCK_RW + e, co] = sum_t A0[t, e] gz[t - j * SH, co] with A0[t] the BLOCK_RW elements
    from t * STEP: one GEMM of A0^T (BLOCK_RW x positions) by gz's NS = KC / BLOCK_RW shifted copies side by side
    (columns (j, co), SHIFTS = NS rounded up to a power of two) gives all of dW, each of its rows once (no
    column block folded onto another, no chunk re-reading gz). Positions t < T + (NS - 1) SH of each clip (the
    shifted copies reach that far; gz is 0 outside [0, T), so A0 rows there add nothing but stay in the
    padded input), tiles of BLOCK_M inside a clip, TPC per clip, tiles pid_s, pid_s + SPLIT, ...; all channels
    (BLOCK_CO >= C_OUT). Per position BLOCK_RW + NS C_OUT elements are read (conv2: 256; the band read 320, its 5
    chunks' programs each reading gz's 32 again)."""
    pid_s = tl.program_id(2)
    cb = tl.arange(0, SHIFTS * BLOCK_CO)
    j = cb // BLOCK_CO
    co = cb % BLOCK_CO
    NS = KC // BLOCK_RW
    SH: tl.constexpr = BLOCK_RW // STEP
    col_ok = (j < NS) & (co < C_OUT)
    e = tl.arange(0, BLOCK_RW)
    last = T + (NS - 1) * SH - 1  # a clip's last position whose shifted copies hold gz
    acc = tl.zeros((BLOCK_RW, SHIFTS * BLOCK_CO), dtype=tl.float32)  # dW^T rows (e), columns (j, co)
    db = tl.zeros((BLOCK_M, SHIFTS * BLOCK_CO), dtype=tl.float32)
    nw, tw, dn, dt = walk_start(pid_s, SPLIT, TPC)
    for _ in range(pid_s, NUM_MT, SPLIT):
        n = nw.to(tl.int64)
        t = tw * BLOCK_M + tl.arange(0, BLOCK_M)
        nw, tw = walk_next(nw, tw, dn, dt, TPC)
        src = t[:, None] - (j * SH)[None, :]  # gz's position in copy j
        ok = (src >= 0) & (src < T) & col_ok[None, :]
        g = tl.load(gz_ptr + n * SGZ + src * C_OUT + co[None, :], mask=ok, other=0.0)
        a = tl.load(xc_ptr + (n * LPC + tl.minimum(t, last) * STEP)[:, None] + e[None, :])
        acc, db = _dw_step(a, g, acc, db, INTERP, PRECISION)
    idx = partial_row(pid_s, DETERMINISTIC)
    r = (j * BLOCK_RW)[None, :] + e[:, None]  # the weight's row (k, ci order)
    col = (r % C_IN) * K + r // C_IN  # (k, ci) -> the weight's (ci, k)
    store_partial(dw_ptr + (idx * C_OUT + co[None, :]).to(tl.int64) * KC + col, acc, col_ok[None, :], DETERMINISTIC)
    # copy 0 is gz itself (each other copy holds the same rows, shifted): db from its columns only
    dbs = tl.sum(tl.reshape(tl.where(j == 0, tl.sum(db, axis=0), 0.0), (SHIFTS, BLOCK_CO)), axis=0)
    c = tl.arange(0, BLOCK_CO)
    store_partial(db_ptr + idx * C_OUT + c, dbs, c < C_OUT, DETERMINISTIC)


@triton.jit
def _rows_dw_band(gz_ptr, xc_ptr, dw_ptr, db_ptr, C_OUT, T, SGZ, LPC, KC, NUM_MT, TPC, SPLIT, C_IN, K,
                  STEP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_RW: tl.constexpr,
                  BAND: tl.constexpr, INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """``_rows_dw_kernel`` in bands (BAND > 1): see there. Column cb = g * BLOCK_CO + co of gz's band row is
    element cb of the row's BAND * C_OUT (BLOCK_CO = C_OUT), so its loads are contiguous."""
    pid_r = tl.program_id(0)
    pid_s = tl.program_id(2)
    cb = tl.arange(0, BAND * BLOCK_CO)
    g = cb // BLOCK_CO
    co = cb % BLOCK_CO
    r = pid_r * BLOCK_RW + tl.arange(0, BLOCK_RW)  # the band's rows
    acc = tl.zeros((BLOCK_RW, BAND * BLOCK_CO), dtype=tl.float32)
    db = tl.zeros((BLOCK_M, BAND * BLOCK_CO), dtype=tl.float32)
    nw, tw, dn, dt = walk_start(pid_s, SPLIT, TPC)
    for _ in range(pid_s, NUM_MT, SPLIT):
        n = nw.to(tl.int64)
        q = tw * BLOCK_M + tl.arange(0, BLOCK_M)
        nw, tw = walk_next(nw, tw, dn, dt, TPC)
        ok = (BAND * q[:, None] + g[None, :]) < T
        gz = tl.load(gz_ptr + n * SGZ + (q * (BAND * C_OUT))[:, None] + cb[None, :], mask=ok, other=0.0)
        q = tl.minimum(q, (T - 1) // BAND)  # rows past the clip's last: their gz is 0
        a = tl.load(xc_ptr + (n * LPC + q * (BAND * STEP))[:, None] + r[None, :])
        acc, db = _dw_step(a, gz, acc, db, INTERP, PRECISION)
    k = r[:, None] - (g * STEP)[None, :]  # the weight's row (k, ci order) each band row adds to
    ok = (k >= 0) & (k < KC)
    k = tl.minimum(tl.maximum(k, 0), KC - 1)
    col = (k % C_IN) * K + k // C_IN  # (k, ci) -> the weight's (ci, k)
    store_partial(dw_ptr + co[None, :].to(tl.int64) * KC + col, acc, ok, False)
    dbs = tl.sum(tl.reshape(tl.sum(db, axis=0), (BAND, BLOCK_CO)), axis=0)
    store_partial(db_ptr + tl.arange(0, BLOCK_CO), dbs, (tl.arange(0, BLOCK_CO) * 0 + pid_r) == 0, False)


@triton.jit
def _rows_dx_kernel(gzp_ptr,  # (N, TG, C_OUT) gz with J - 1 zero positions around each clip
                    wd_ptr,  # (KC, stride * C_IN) the phases' weights; W_MODE 2: the conv weight (C_OUT, C_IN * K)
                    dx_ptr,  # (N, C_IN, L) channels-last (``cl_at``)
                    C_IN, L, MP, ROWS, TGC, KC, R2: tl.constexpr, stride, pad, NUM_TILES, TPC, P, K,
                    C_OUT: tl.constexpr, PHASES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_CI: tl.constexpr,
                    BLOCK_R: tl.constexpr, BAND: tl.constexpr, RESIDENT: tl.constexpr, W_MODE: tl.constexpr,
                    INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """dx (N, C_IN, L), every phase ph < stride from one read of the rows: dx[n, ci, stride * m + ph - pad] =
    sum_{j', co} gzp[n, m + j', co] wd[j' * C_OUT + co, ph, ci], a row GEMM over gzp's contiguous runs of
    KC = J * C_OUT elements against the phases' weights side by side (N axis (ph, ci): PHASES = stride rounded up
    to a power of two, x BLOCK_CI). gzp: gz with J - 1 zero positions before and after each clip; wd_ptr:
    (KC, stride, C_IN), the weight per phase, taps reversed, zeros past K. Rows m < MP per clip; positions
    outside [0, L) are not stored. BAND > 1 (``band_of``): one GEMM row of R2 (>= KC + (BAND - 1) * C_OUT)
    elements per BAND rows m = BAND * q + g against the resident band weight (``_band_weight``), tiles of BLOCK_M
    band rows inside a clip (TPC per clip); BAND = 1: R2 = KC, tiles of BLOCK_M of the flat ROWS = N * MP rows."""
    j = tl.arange(0, PHASES * BLOCK_CI)
    ph = j // BLOCK_CI
    ci = tl.program_id(1) * BLOCK_CI + j % BLOCK_CI
    col_ok = (ph < stride) & (ci < C_IN)
    wcol = ph * C_IN + ci  # column of wd's (stride * C_IN)-wide rows
    if BAND > 1:
        ws = _band_weight(wd_ptr, stride * C_IN, 1, wcol, col_ok, KC, C_OUT, BAND, C_IN, K, stride, C_OUT, W_MODE,
                          R2, BLOCK_R, INTERP)
    elif RESIDENT:  # the phases' weights in shared memory for all the program's tiles (``resident_weight``)
        ws = _resident_weight(wd_ptr, stride * C_IN, 1, wcol, col_ok, C_IN, K, stride, C_OUT, W_MODE, R2, BLOCK_R,
                              INTERP)
    nw, tw, dn, dt = walk_start(tl.program_id(0), P, TPC)
    for tile in range(tl.program_id(0), NUM_TILES, P):
        if BAND > 1:
            acc, n, m = _band_tile(gzp_ptr, ws, nw, tw, MP, TGC, C_OUT, R2, BLOCK_R, BAND, BLOCK_M,
                                   PHASES * BLOCK_CI, INTERP, PRECISION)
            nw, tw = walk_next(nw, tw, dn, dt, TPC)
            row_ok = m < MP
        else:
            g = tile * BLOCK_M + tl.arange(0, BLOCK_M)
            gc = tl.minimum(g, ROWS - 1)
            n = (gc // MP).to(tl.int64)
            m = gc % MP
            row_ok = g < ROWS
            base = n * TGC + m * C_OUT
            if RESIDENT:
                acc = _row_tile_resident(gzp_ptr, ws, base, R2, BLOCK_R, PHASES * BLOCK_CI, INTERP, PRECISION)
            else:
                acc = tl.zeros((BLOCK_M, PHASES * BLOCK_CI), dtype=tl.float32)
                for r0 in range(0, R2, BLOCK_R):
                    r = r0 + tl.arange(0, BLOCK_R)
                    a = tl.load(gzp_ptr + base[:, None] + r[None, :])
                    b = tl.load(wd_ptr + r[:, None] * (stride * C_IN) + wcol[None, :], mask=col_ok[None, :],
                                other=0.0)
                    a = fp32_if(a, INTERP)
                    b = fp32_if(b, INTERP)
                    acc = tl.dot(a, b, acc, input_precision=PRECISION)
            n = n[:, None]
        i = m[:, None] * stride + ph[None, :] - pad
        ok = row_ok[:, None] & (i >= 0) & (i < L) & col_ok[None, :]
        off = n * L * C_IN + i * C_IN + ci[None, :]  # channels-last: a row's phases and channels one run
        tl.store(dx_ptr + off, cast_out(acc, dx_ptr.dtype.element_ty, INTERP), mask=ok)

# ----------------------------------------------------------------------------------------- launchers
ROWS_GPU = 64  # rows (positions) per tile: the M of one warpgroup's wgmma
# windows x channels per slot tile of a pool over the stored z (``slot_z``): 16 per thread of 4 warps, so the int8
# codes load 16 bytes per lane (8 windows of 8 slots x 32 channels, SoundNet-8's conv2, loaded them 2 at a time)
SLOT_TILE = 2048
# ... on fewer programs per SM (a program's set-up, its channels' BN constants, is 16 per thread of such a tile)
SLOT_PER_SM = 2
# One stage: Triton pipelines a loop's loads as cp.async.cg, which bypasses L1, and the rows overlap
# (conv2: each 1 KB row shares all but 64 B with the next), so unpipelined loads that L1 can serve are
# preferred; the static model predicts one stage 12 % faster for conv2 even counting every load at L2.
STAGES = 1
# Elements of the fp32 accumulator of a statistics tile (positions x channels; 8192: 64 registers per thread) and
# of a dx tile (rows x phases x channels; at 8192 its store tail spilled 312-464 B under Triton 3.9): larger tiles
# than ROWS_GPU rows re-read the weight less often (conv2 statistics 21 -> 17 MB per clip through L2).
STATS_ACC = 8192
# A weight this small stays in shared memory for a whole persistent program (two CTAs of a row kernel per SM:
# 2 x (64 KB + the A tile's staging) of the SM's 228 KB), instead of being re-read from L2 for every tile.
RESIDENT_BYTES = 64 * 1024
# A band weight (``band_of``) may fill most of the SM's shared memory: one CTA per SM holds it.
BAND_BYTES = 168 * 1024
# Shared memory a row kernel takes beside its resident or band weight (the A tile's staging, layout conversions:
# conv2's band kernels hold 196 KB for a 160 KB band, compiled for sm_90 and sm_100). Both weights are capped at
# what a CTA may use on the device (``_common.smem_per_block``) less this: an A100 (163 KB) takes bands of 2, an Ada
# GPU (99 KB) smaller residents and no band, where the H100's sizes would not launch.
SMEM_STAGING = 40 * 1024
# Bands widen a narrow output (conv2's 32 channels: 4 x 32 = the wgmma's N of 128); conv3's 64 channels in a band of
# 2 reached 255 registers and spilled 8 B under Triton 3.6.
BAND_MAX_CO = 32
BAND_WARPS, BAND_ROWS = 8, 128  # a band's one CTA per SM runs two warpgroups, each a wgmma's 64 rows
STATS_BAND = 4  # rows per GEMM row of the statistics and dx kernels where it pays (``band_of``)
DX_ACC = 4096
# A dx weight re-read per tile (not resident: conv5-conv7's 128 KB-4 MB) takes tiles of 256 rows on 8 warps: conv7's
# dx 26 -> 19 us per step (the weight read half as often as at 128 rows, a quarter as at 64), 205 registers, no spill.
DX_BIG_ROWS = 256
# CTAs per SM the persistent grids fill (most row kernels hold 2 at 200-255 registers): programs x channel blocks
# = ROWS_PER_SM x 132, so each program walks several tiles and its prologue (the per-channel vectors) runs fewer times.
ROWS_PER_SM = 2
# The gz kernel (48-124 registers since it reads the gradient and codes once per window) holds 4 or more: conv2's
# gz 40 -> 29 us per step at 4 per SM (6: 29 us, more programs' prologues), predicted.
GZ_PER_SM = 4
BWD_CO = 32  # channels per program of the backward's window kernels (64: conv5's spilled 16-24 B)
TILE_PER_WARP = 256  # elements per warp of a window tile without a pool: 8 per thread, 16-byte loads of 16-bit rows
# dW tiles stay inside a clip (no per-row division by T) where the clips' partial last tiles waste at most 1/16 of
# the rows (conv2-conv4 at 20 s); shorter clips tile the flat N * T rows (conv6/conv7: T of a few tens).
DW_WASTE = 16
# dW^T's rows per program (its M, a divisor of R): each program re-reads gz for its R chunk, so where the rows are
# many (conv2 at 20 s: 0.88 M per batch of 64) 256-row chunks halve those re-reads (conv2's dW 212 -> 195 us per
# step, predicted); at 216 registers they halve the resident warps, which costs the short layers more than it saves.
# 16-bit only: fp32's A tile is twice the registers (255 and a 32 B spill under Triton 3.9).
DW_RW_LONG = 256
DW_LONG_ROWS = 1 << 18
# dW's programs (chunks x channel blocks x position splits) per SM: one round of CTAs at its 238 registers (two
# per SM), each walking several position tiles before its atomics. At 1024 programs (8 per SM) the splits' prologues
# and atomics cost conv3-conv7's dW 132 -> 100 us per step against 2 per SM (predicted).
DW_PER_SM = 2
# dW^T's accumulator, elements (rows x channels): 256 x 64 spilled 600-840 B (SoundNet-5's conv2 at batch 256).
DW_ACC = 8192
# dW in bands (``_rows_dw_band``): 128 of the band's rows x BAND * C_out columns per program (8 warps: 64
# accumulator registers per thread at conv2's 4 x 32 columns).
DW_BAND_RW = 128
# dW from gz's shifted copies (``_rows_dw_shift``, ``dw_shifts``): chunks of at most 128 of the rows' elements and
# at most 128 columns (copies x channels: conv2's 4 x 32), one m64n128 accumulator per warpgroup on 8 warps; tiles of
# 64 positions. 0 columns turns it off (the tests then reach the bands).
DW_SHIFT_RW = 128
DW_SHIFT_COLS = 128
DW_SHIFT_ROWS = 64


def dw_shifts(kc: int, step: int, c_out: int) -> tuple[int, int]:
    """(SHIFTS, BLOCK_RW) of dW as gz's shifted copies (``_rows_dw_shift``), or (0, 0) where it does not apply:
    BLOCK_RW the largest power of two (16 to ``DW_SHIFT_RW``) that divides the rows' KC = k C_in and is a multiple of
    their step (stride C_in), SHIFTS its KC / BLOCK_RW copies rounded up to a power of two, C_out a power of two and
    SHIFTS x C_out from 16 (tl.dot's least N on a GPU) to ``DW_SHIFT_COLS`` (conv2: (4, 128))."""
    if c_out & (c_out - 1):
        return 0, 0
    rw = DW_SHIFT_RW
    while rw >= 16 and (kc % rw or rw % step):
        rw //= 2
    cols = next_pow2(kc // rw) * c_out if rw >= 16 else 0
    if rw < 16 or kc // rw < 2 or not 16 <= cols <= DW_SHIFT_COLS:  # tl.dot's N >= 16 on a GPU
        return 0, 0
    return next_pow2(kc // rw), rw


def rows_plan(c_in: int, c_out: int, k: int, stride: int, dtype: torch.dtype) -> dict | None:
    """The shape rule of this file: C_in >= 2, R = k * C_in a multiple of 16 and a row step stride * C_in a
    multiple of 8 (every row 16-byte aligned in 16-bit dtypes); None otherwise. Returns BLOCK_R (``_block_r``:
    the largest power of two dividing R, 16 to 64, fp32 to 32) and BLOCK_CO (C_out up to 64 per program)."""
    r = k * c_in
    if c_in < 2 or r % 16 or (stride * c_in) % 8:
        return None
    return dict(BLOCK_R=_block_r(r, dtype), BLOCK_CO=clamp_pow2(c_out, 16, 256 if INTERPRET else 64))


def resident_weight(r: int, cols: int, elem: int, smem: int = SMEM_DEFAULT) -> bool:
    """Whether a kernel keeps its weight tile (r rows of the reduction x ``cols`` columns, ``elem`` bytes each) in
    shared memory for all its tiles: at most ``RESIDENT_BYTES`` (conv2-conv4 in 16 bits; conv5-7's 128-256 KB are
    re-read per tile) and at most ``smem`` (a CTA's shared memory on the device) less ``SMEM_STAGING``."""
    return r * cols * elem <= min(RESIDENT_BYTES, smem - SMEM_STAGING)


def band_of(kc: int, shift: int, block_r: int, cols: int, rows: int, elem: int,
            smem: int = SMEM_DEFAULT) -> tuple[int, int]:
    """(BAND, R) of a row GEMM (``_rows_stats_kernel``, ``_rows_dx_kernel``): BAND rows per GEMM row where that
    pays and fits, else (1, kc).

    Consecutive rows overlap (conv2's im2col: each 1 KB row shares all but its 64 B step with the next; dx's gz
    rows the same); one row of R = kc + (BAND - 1) * shift elements (rounded up to ``block_r``) serves BAND rows
    against a band weight of BAND column blocks, each the weight shifted by one more step (``_band_weight``):
    per row R / BAND elements are read instead of kc, for R / kc the multiply-adds (conv2 in bf16, BAND 4:
    R = 640, 320 B instead of 1 KB, 1.25x). Tried from STATS_BAND down to 2: taken where the output is narrow
    (``cols`` <= BAND_MAX_CO), the band weight (R x BAND * cols) stays resident (<= BAND_BYTES, and <= ``smem``, a
    CTA's shared memory on the device, less ``SMEM_STAGING``) and tiles of
    BAND_ROWS band rows inside a clip waste at most 1 / DW_WASTE of its ``rows``. ``kc``: the row length (K * C_in;
    dx: J * C_out); ``shift``: one row's step (stride * C_in; dx: C_out); ``elem``: bytes per element."""
    band = STATS_BAND if cols <= BAND_MAX_CO else 1
    while band > 1:
        r = -(-(kc + (band - 1) * shift) // block_r) * block_r
        per_tile = BAND_ROWS * band
        waste = -(-rows // per_tile) * per_tile - rows
        if waste * DW_WASTE <= rows and r * band * cols * elem <= min(BAND_BYTES, smem - SMEM_STAGING):
            return band, r
        band //= 2
    return 1, kc


def _band_tiles(rows: int, band: int, rows_gpu: int) -> tuple[int, int]:
    """(BLOCK_M, TPC) of a kernel in bands: ``rows_gpu`` band rows per tile on a GPU (under the interpreter
    fewer, so that the tests walk several tiles per clip) and the tiles a clip of ``rows`` rows takes."""
    bm = clamp_pow2(triton.cdiv(rows, 2 * band), 16, 64) if INTERPRET else rows_gpu
    return bm, triton.cdiv(triton.cdiv(rows, band), bm)


def _block_r(r: int, dtype: torch.dtype) -> int:
    """The reduction step: the largest power of two dividing r, from 16 up to 64 (fp32: 32; 512 in the
    interpreter, which runs few, large steps)."""
    top = 512 if INTERPRET else (32 if dtype == torch.float32 else 64)
    return max(b for b in (16, 32, 64, 128, 256, 512) if b <= top and r % b == 0)


def dx_rows_ok(c_out: int, k: int, stride: int) -> bool:
    """Whether dx takes ``_rows_dx_kernel``: its rows step by C_out and run J * C_out (J = cdiv(k, stride)) long,
    so C_out a multiple of 8 and J * C_out of 16; otherwise ``_conv_bwd._dx_kernel`` reads gz through strides."""
    return c_out % 8 == 0 and (triton.cdiv(k, stride) * c_out) % 16 == 0


def _dx_weight(w2d: torch.Tensor, c_in: int, k: int, stride: int) -> torch.Tensor:
    """wd (J * C_out, stride * C_in): wd[j' * C_out + co, ph * C_in + ci] = w[co, ci, stride * (J - 1 - j') + ph],
    0 past k: the taps zero-padded to J * stride (when k is not a multiple of stride), split (J, stride), the J
    axis reversed. The torch reference of the phase weight ``backward_prep`` builds in the gz launch (as torch ops
    it took two copies, flip then layout, three with the pad: the launcher no longer runs them)."""
    c_out = w2d.shape[0]
    j = triton.cdiv(k, stride)
    w = w2d.reshape(c_out, c_in, k)
    if j * stride != k:
        w = F.pad(w, (0, j * stride - k))
    wd = torch.flip(w.reshape(c_out, c_in, j, stride).permute(2, 0, 3, 1), dims=(0,))  # (J, C_out, stride, C_in)
    return wd.contiguous().reshape(j * c_out, stride * c_in)


def channels_last(x: torch.Tensor, pad: int, T: int, k: int, stride: int,
                  xc: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(xc, LPC): x (N, C_in, L) as a zero-padded channels-last copy (N, LP, C_in), xc[n, pad + i] = x[n, :, i]
    (one F.pad), LP a multiple of 16 covering the windows of the first T positions' rows and the longer last row
    of a band (``band_of``: up to STATS_BAND - 1 steps and a BLOCK_R or DW_BAND_RW more); LPC = LP * C_in.
    Given ``xc`` (a copy the caller made, ``_conv_paths.forward_input``: a longer one only adds zeros), only LPC."""
    N, C, L = x.shape
    lp = rows_input_length(x, pad, T, k, stride)
    if xc is not None:
        assert xc.shape[0] == N and xc.shape[2] == C and xc.shape[1] >= lp and xc.is_contiguous(), "forward_input"
        return xc, xc.shape[1] * C
    # contiguous(): with nothing to pad F.pad returns a clone, which keeps the transposed strides
    xc = F.pad(x.transpose(1, 2), (0, 0, pad, lp - pad - L)).contiguous()
    return xc, lp * C


def rows_input_length(x: torch.Tensor, pad: int, T: int, k: int, stride: int) -> int:
    """LP of ``channels_last``'s copy (x's shape and dtype only: the op's fake calls it too)."""
    return rows_input_rows(x.shape[1], x.shape[2], x.dtype, pad, T, k, stride)


def rows_input_rows(C: int, L: int, dtype: torch.dtype, pad: int, T: int, k: int, stride: int) -> int:
    """``rows_input_length`` of an input (N, C, L) in ``dtype``."""
    return -(-max(pad + L, (T - 1) * stride + k + rows_band(C, dtype, k, stride)) // 16) * 16


def rows_band(C: int, dtype: torch.dtype, k: int, stride: int) -> int:
    """Rows a band reads past its first window's k (``band_of``): up to STATS_BAND - 1 steps and a BLOCK_R or
    DW_BAND_RW more elements."""
    return (STATS_BAND - 1) * stride + -(-max(_block_r(k * C, dtype), DW_BAND_RW) // C)


def rows_input(x: torch.Tensor, pad: int, T: int, k: int, stride: int, pool: int | None) -> torch.Tensor:
    """The channels-last copy both row forward passes (statistics, pool) read and the backward reuses (the op keeps
    it instead of x: ``_conv_paths.kept_input``), made once per forward by ``_conv_paths.forward_input``; its rows
    cover the backward's whole last window (T rounded up to the pool)."""
    return channels_last(x, pad, rows_cover(T, pool), k, stride)[0]


def rows_cover(T: int, pool: int | None) -> int:
    """Positions the backward's windows cover: T rounded up to whole windows (its gz kernel's last window runs past
    T)."""
    p = pool or 1
    return triton.cdiv(T, p) * p


def _reorder(w2d: torch.Tensor, c_in: int, k: int) -> torch.Tensor:
    """(C_out, C_in * k) in (ci, k) order -> (C_out, k * C_in) in (k, ci) order, contiguous."""
    return w2d.reshape(-1, c_in, k).transpose(1, 2).reshape(w2d.shape[0], -1).contiguous()


def _window_block(pp: int, windows: int) -> int:
    """Windows per tile: ROWS_GPU rows of PP slots each (one window of PP > ROWS_GPU slots), fewer for clips of fewer
    windows (at least 16 rows: the tensor cores' smallest M); under the interpreter
    at most half the ``windows`` of a clip, so the tests walk several tiles per clip and a partial last one."""
    if INTERPRET:
        return clamp_pow2(triton.cdiv(windows, 2), 1, max(1, 128 // pp))
    return clamp_pow2(windows, max(1, 16 // pp), max(1, ROWS_GPU // pp))  # short clips (conv7: 13): small tiles


def rows_moments(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, k: int, stride: int, padding: int,
                 T: int, eps: float | None = None, xc: torch.Tensor | None = None,
                 z: torch.Tensor | None = None, running: tuple | None = None) -> torch.Tensor:
    """(3, C_out) fp32 count, mean, M2 per channel, or with ``eps`` the (4, C_out) stats rows (``running`` too: as
    ``_conv_paths.conv_moments``). ``xc``: the ``channels_last`` copy, or None to make one; ``z``: None, or a
    ``kept_z_shape(N, T, C_out)`` contiguous buffer in x.dtype that receives the conv output without its bias
    (``keeps_z``)."""
    N, C_in, _ = x.shape
    C = w2d.shape[0]
    plan = rows_plan(C_in, C, k, stride, x.dtype)
    xc, lpc = channels_last(x, padding, T, k, stride, xc)
    M = N * T
    kc = k * C_in
    smem = smem_per_block(x.device)
    band, r = band_of(kc, stride * C_in, plan["BLOCK_R"], plan["BLOCK_CO"], T, x.element_size(), smem)
    grid_c = triton.cdiv(C, plan["BLOCK_CO"])
    resident = resident_weight(kc, plan["BLOCK_CO"], x.element_size(), smem)
    if band > 1:  # tiles of BAND_ROWS band rows inside a clip
        bm, tpc = _band_tiles(T, band, BAND_ROWS)
        tiles, P = persistent_grid(N * tpc, 1, ROWS_PER_SM, grid_c)
    else:  # a resident weight is read once per program: the tile then only needs the wgmma's M (larger tiles spill)
        bm = ROWS_GPU if resident else max(ROWS_GPU, STATS_ACC // plan["BLOCK_CO"])
        bm = clamp_pow2(M, 16, 128) if INTERPRET else bm
        tpc = 1
        tiles, P = persistent_grid(M, bm, ROWS_PER_SM, grid_c)
    part = stats_partials(3, C, P, x.device)
    b = bias if bias is not None else w2d
    z = _kept(z)
    store_z = z is not None
    direct = band > 1 or resident  # the weight loaded once per program, straight from w2d (no reorder copy)
    wrap_triton(_rows_stats_kernel)[(P, grid_c)](
        xc, w2d if direct else _reorder(w2d, C_in, k), b, part, z if store_z else part, C, T, M, lpc, kc, r, tiles,
        tpc, P, part.stride(1), C_in, z[0].numel() if store_z else 0, HAS_BIAS=bias is not None, STEP=stride * C_in,
        BLOCK_M=bm, BAND=band, STORE_Z=store_z,
        INTERP=INTERPRET, RESIDENT=resident, W_MODE=1 if direct else 0, PRECISION=dot_precision(x),
        num_warps=BAND_WARPS if band > 1 else 4, num_stages=STAGES, **plan)
    return merge_stats(part, 0, 0, eps, running)


def _window_flags(x: torch.Tensor, bias, plan: dict, stride: int, pool: int | None, windows: int,
                  has_z: bool = False) -> dict:
    """The window kernels' constexprs; no pool: windows of one position (POOL = PP = 1, HAS_POOL False);
    ``windows``: per clip; ``has_z``: the kernels read the stored z (a pool then walks it slot by slot: tiles of
    ``SLOT_TILE`` windows x channels, not of ROWS_GPU rows)."""
    pp = next_pow2(pool or 1)
    bq = _window_block(pp, windows)
    if pool is not None and has_z and not INTERPRET:
        bq = clamp_pow2(windows, 16, SLOT_TILE // plan["BLOCK_CO"])
    return dict(HAS_BIAS=bias is not None, STEP=stride * x.shape[1], HAS_POOL=pool is not None, POOL=pool or 1,
                PP=pp, BLOCK_Q=bq, INTERP=INTERPRET, PRECISION=dot_precision(x), num_warps=4,
                num_stages=STAGES, **plan)


def kept_z_shape(n: int, T: int, c_out: int) -> tuple[int, int, int]:
    """Shape of the stored conv output (``_conv_paths.keeps_z``): (N, T, C_out), channel-minor, as the statistics'
    GEMM tiles make it (whole 16-byte rows stored); a pool reads its windows one slot at a time (``slot_z``)."""
    return n, T, c_out


def kept_z(z: torch.Tensor) -> torch.Tensor:
    """The conv output z (N, C_out, T) in ``kept_z_shape``'s layout (a contiguous copy): what the references keep,
    so that they keep what the kernels keep."""
    return z.transpose(1, 2).contiguous()


def _kept(z: torch.Tensor | None) -> torch.Tensor | None:
    """The stored conv output (``keeps_z``), or None when there is none (None or the op's empty placeholder)."""
    return z if z is not None and z.numel() > 0 else None


def rows_bn_relu_pool(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor,
                      beta: torch.Tensor, stats: torch.Tensor, k: int, stride: int, padding: int, T: int,
                      pool: int | None, xc: torch.Tensor | None = None, z: torch.Tensor | None = None,
                      chain: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 2 (as ``_conv_paths.conv_bn_relu_pool``): (N, C_out, T // pool) in x.dtype (contiguous, or chained:
    ``_conv_fwd.pool_output``), the window codes (``code_dtype``), zmax (empty unless ``keeps_zmax``); without a
    pool (N, C_out, T) and empty codes and zmax. ``xc`` as in ``rows_moments``; ``z``: the statistics pass's stored
    conv output (read, not recomputed) or None / empty."""
    N, C_in, _ = x.shape
    C = w2d.shape[0]
    plan = rows_plan(C_in, C, k, stride, x.dtype)
    xc, lpc = channels_last(x, padding, T, k, stride, xc)
    TP = T // (pool or 1)
    z = _kept(z)
    has_z = z is not None
    flags = _window_flags(x, bias, plan, stride, pool, TP, has_z)
    tpc = triton.cdiv(TP, flags["BLOCK_Q"])
    per_sm = SLOT_PER_SM if has_z and pool is not None else 4  # 4 per SM (conv2's window tiles hold 5)
    tiles, P = persistent_grid(N * tpc, 1, per_sm, triton.cdiv(C, plan["BLOCK_CO"]))
    out, chained, zero_rows = pool_output(N, C, TP, x.dtype, x.device, chain)
    code = (channels_last_empty(N, C, TP, code_dtype(pool), x.device) if pool is not None
            else x.new_empty(0, dtype=torch.int8))
    zmax = channels_last_empty(N, C, TP, x.dtype, x.device) if keeps_zmax(x, pool) else x.new_empty(0)
    b = bias if bias is not None else w2d
    wrap_triton(_rows_bn_relu_pool_kernel)[(P, triton.cdiv(C, plan["BLOCK_CO"]))](
        xc, w2d if has_z else _reorder(w2d, C_in, k), b, gamma, beta, stats, out, code, zmax, z if has_z else out, C, T,
        TP, tpc, lpc, k * C_in, tiles, P, z[0].numel() if has_z else 0, *out.stride(), *chained, ZERO_ROWS=zero_rows,
        STORE_ZMAX=zmax.numel() > 0, HAS_Z=has_z,
        **flags)  # z: weight unread
    return out, code, zmax


def rows_backward(grad_out: torch.Tensor, x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None,
                  gamma: torch.Tensor, stats: torch.Tensor, code: torch.Tensor, zmax: torch.Tensor, k: int,
                  stride: int, padding: int,
                  T: int, pool: int | None, training: bool, deterministic: bool, input_grad: bool,
                  all_reduce=None, z: torch.Tensor | None = None,
                  xc: torch.Tensor | None = None) -> tuple[torch.Tensor | None, ...]:
    """The backward of a row-GEMM block (as ``_conv_paths.conv_bn_relu_backward``): (dx or None, dw2d fp32, db
    fp32 or None, local (2, C_out) sum(gy), sum(gy * zhat)). The BN sums from the forward's zmax (``pooled_bn_sums``)
    or, without it, a pass recomputing Z; then gz (N * T, C_out) in x.dtype (a pass recomputing Z), then dW from
    the same contiguous rows and dx by ``_rows_dx_kernel`` (or ``_conv_bwd.dx_from_gz`` where ``dx_rows_ok``
    says no). ``zmax``: what the forward saved beside the codes, zmax with a pool, the output (ReLU's mask)
    without one; ``z``: the forward's stored conv output (``keeps_z``): then no pass recomputes the conv; ``xc``: the
    forward's ``rows_input`` copy, or None to make one."""
    N, C_in, L = x.shape
    C = w2d.shape[0]
    dev = x.device
    smem = smem_per_block(dev)
    plan = rows_plan(C_in, C, k, stride, x.dtype)
    p = pool or 1
    TP, tq = T // p, triton.cdiv(T, p)
    xc, lpc = channels_last(x, padding, rows_cover(T, pool), k, stride, xc)
    mask = code if pool is not None else zmax  # the codes, or without a pool the output (ReLU's mask)
    z = _kept(z)
    has_z = z is not None
    wr = w2d if has_z else _reorder(w2d, C_in, k)  # with z no pass here runs the conv
    R = k * C_in
    dw_co = plan["BLOCK_CO"]  # dW's channels per program (rows_plan's, up to 64: each block re-reads the rows)
    plan = dict(plan, BLOCK_CO=min(plan["BLOCK_CO"], BWD_CO))
    flags = _window_flags(x, bias, plan, stride, pool, tq, has_z)
    # a contiguous gradient (the heads' convs return one) and output, one tile per clip: read as flat runs
    flags["FLAT"] = (pool is None and tq <= flags["BLOCK_Q"] and grad_out.is_contiguous() and mask.is_contiguous()
                     and grad_out.shape == mask.shape)
    reduce_flags = flags
    if pool is None:  # short clips' small tiles: 8 elements per thread, so z's rows load 16 bytes per lane: on fewer
        # warps in the gz pass (each program's per-channel set-up is read by every thread: wider tiles cost it
        # more), on more channels in the sums' pass (fewer warps left it waiting on its loads), by the model
        flags["num_warps"] = max(1, min(4, flags["BLOCK_Q"] * plan["BLOCK_CO"] // TILE_PER_WARP))
        reduce_flags = dict(flags, num_warps=4, BLOCK_CO=min(dw_co, max(plan["BLOCK_CO"],
                                                                        4 * TILE_PER_WARP // flags["BLOCK_Q"])))
    b = bias if bias is not None else w2d
    grid_c = triton.cdiv(C, plan["BLOCK_CO"])
    go = grad_out.stride()
    M = N * T
    # dW in bands where the statistics take them (the same rule: one channel block; atomics only, as a deterministic
    # band would need a partial per split of the whole band)
    grid_cw = triton.cdiv(C, dw_co)
    shifts, rw_s = dw_shifts(R, stride * C_in, C)
    band_w, rb = (1, R) if deterministic or C != dw_co or shifts else band_of(
        R, stride * C_in, DW_BAND_RW, C, T, x.element_size(), smem)  # fmt: skip
    rw_max = min(DW_RW_LONG if M >= DW_LONG_ROWS and x.element_size() == 2 else 128, DW_ACC // dw_co)
    rw = plan["BLOCK_R"] if INTERPRET else max(b for b in (16, 32, 64, 128, 256) if b <= rw_max and R % b == 0)
    bm = clamp_pow2(M, 16, 128) if INTERPRET else ROWS_GPU
    if band_w > 1:
        rw = DW_BAND_RW  # divides the band's rows (band_of rounds them up to it)
        bm, tpc_w = _band_tiles(T, band_w, ROWS_GPU)
        clip_tiles = True
    else:
        tpc_w = triton.cdiv(T, bm)
        clip_tiles = (tpc_w * bm - T) * DW_WASTE <= T  # per-clip tiles waste at most 1 / DW_WASTE of the rows
    num_mt = N * tpc_w if clip_tiles else triton.cdiv(M, bm)
    grid_r = triton.cdiv(rb, rw)
    split = 1 if INTERPRET else max(1, min(num_mt, DW_PER_SM * SMS // (grid_r * grid_cw)))
    if shifts:  # tiles inside a clip over the positions the shifted copies reach; one CTA of 8 warps per SM
        rw, grid_r, grid_cw, dw_co, clip_tiles = rw_s, 1, 1, C, True
        bm = clamp_pow2(T, 16, 32) if INTERPRET else DW_SHIFT_ROWS
        tpc_w = triton.cdiv(T + (R // rw - 1) * (rw // (stride * C_in)), bm)
        num_mt, split = persistent_grid(N * tpc_w, 1, 1)
    # non-deterministic: the atomics' accumulators zeroed by one fill, db (first: returned as a view, at offset 0)
    # and the BN sums together; dW apart (also returned as a view: a custom op's outputs may not share a buffer)
    acc = None if deterministic else zeroed(dev, ((1, C), torch.float32), ((2, 1, C), BN_SUMS))
    if pool is not None and zmax.numel():  # (2, C): sum(gy), sum(gy * zhat), from the forward's zmax
        raw = pooled_bn_sums(grad_out, code, zmax, deterministic, acc[1] if acc else None, cast=False)
    else:  # ... or from a recompute (fp32: keeps_zmax)
        tpc = triton.cdiv(TP, flags["BLOCK_Q"])
        grid_cr = triton.cdiv(C, reduce_flags["BLOCK_CO"])
        tiles, P = persistent_grid(N * tpc, 1, ROWS_PER_SM, grid_cr)
        part = bn_sum_partials(P, C, deterministic, dev, acc[1] if acc else None)
        wrap_triton(_rows_bwd_reduce_kernel)[(P, grid_cr)](
            xc, wr, z if has_z else xc, b, stats, grad_out, mask, part, C, T, TP, tpc, lpc, R, tiles, P, *go,
            *mask.stride(), z[0].numel() if has_z else 0, DETERMINISTIC=deterministic, HAS_Z=has_z, **reduce_flags)
        raw = bn_sums_of(part, cast=False)  # a fixed-order reduction
    local, sums, store_sums = local_sums(raw, training, all_reduce)
    rows_dx = input_grad and dx_rows_ok(C, k, stride)
    J = triton.cdiv(k, stride)
    mp = triton.cdiv(L + padding, stride)  # dx rows per clip and phase
    if rows_dx:  # gz with J - 1 zero positions before and after each clip: _rows_dx_kernel's rows
        php = next_pow2(stride)  # the phases side by side on the MMA's N axis: 16 to 64 columns
        bci = clamp_pow2(C_in, max(1, 16 // php), max(1, (512 if INTERPRET else 64) // php))
        br = _block_r(J * C, x.dtype)
        band, r2 = band_of(J * C, C, br, php * bci, mp, x.element_size(), smem)
        reach = mp + J - 1 + (band - 1 + -(-br // C) if band > 1 else 0)  # a band's last row reads further
        tg = -(-max(J - 1 + T, reach) // 16) * 16
        gzp = torch.empty((N, tg, C), device=dev, dtype=x.dtype)  # the gz kernel writes the zero rows too
        gz, sgz = gzp[:, J - 1 :], tg * C
        pads = (J - 1, tg - (J - 1) - T)
    else:
        gz, sgz = torch.empty((M, C), device=dev, dtype=x.dtype), T * C
        pads = (0, 0)
    if deterministic:
        dwr = torch.empty((split, C, R), device=dev, dtype=torch.float32)
        db_part = torch.empty((split, C), device=dev, dtype=torch.float32)
    else:  # zeroed by the gz launch (ZERO_DW)
        dwr, db_part = torch.empty((1, C, R), device=dev, dtype=torch.float32), acc[0]
    # dx's phase weight, made by the gz launch where dx reads a prepared one (not a band's: that gathers from w2d)
    dxw = rows_dx and band == 1
    wd = torch.empty((J * C, stride * C_in) if dxw else (0,), device=dev, dtype=w2d.dtype)
    if dxw and J * stride != k:
        wd.zero_()  # the taps past k stay 0
    tpc = triton.cdiv(tq, flags["BLOCK_Q"])
    tiles, P = persistent_grid(N * tpc, 1, SLOT_PER_SM if has_z and pool is not None else GZ_PER_SM, grid_c)
    wrap_triton(_rows_gz_kernel)[(P, grid_c)](
        xc, wr, z if has_z else xc, b, stats, gamma, grad_out, mask, sums, gz, local, dwr, w2d, wd, C, T, TP, tq, tpc,
        lpc, R, tiles, P, *go, *mask.stride(), sgz, N, *pads, dwr.numel(), C_in, z[0].numel() if has_z else 0,
        BLOCK_PAD=next_pow2(max(pads)) if max(pads) else 0,
        TRAINING=training, HAS_Z=has_z, STORE_SUMS=store_sums, ZERO_DW=not deterministic, DX_K=k if dxw else 0,
        DX_STRIDE=stride, **flags)
    wrap_triton(_rows_dw_kernel)[(grid_r, grid_cw, split)](
        gz, xc, dwr, db_part, C, T, M, sgz, lpc, R, num_mt, tpc_w, split, C_in, k, STEP=stride * C_in, BLOCK_M=bm,
        BLOCK_CO=dw_co, BLOCK_RW=rw, CLIP_TILES=clip_tiles, BAND=band_w, SHIFTS=shifts, DETERMINISTIC=deterministic,
        INTERP=INTERPRET, PRECISION=dot_precision(x), num_warps=BAND_WARPS if band_w > 1 or shifts else 4,
        num_stages=STAGES)
    # deterministic: a fixed-order sum of the partials; otherwise the one row the atomics added into
    dw = dwr.sum(dim=0) if deterministic else dwr[0]
    db = (db_part.sum(dim=0) if deterministic else db_part[0]) if bias is not None else None
    dx = None
    if rows_dx:
        dx = channels_last_empty(N, C_in, L, x.dtype, dev)
        if band > 1:  # tiles of BAND_ROWS band rows inside a clip
            bmx, tpc = _band_tiles(mp, band, BAND_ROWS)
            tiles, P = persistent_grid(N * tpc, 1, ROWS_PER_SM, triton.cdiv(C_in, bci))
        resident = resident_weight(J * C, php * bci, x.element_size(), smem)
        dx_warps = BAND_WARPS if band > 1 else 4
        if band == 1:
            bmx = bm if INTERPRET else max(ROWS_GPU, DX_ACC // (php * bci))  # fewer re-reads of the weight
            if not resident and not INTERPRET:
                bmx, dx_warps = max(bmx, DX_BIG_ROWS), 8
            tpc = 1
            tiles, P = persistent_grid(N * mp, bmx, ROWS_PER_SM, triton.cdiv(C_in, bci))
        # a band's weight is gathered straight from w2d (no flip copies); a resident one is not: the gather's
        # per-element pointers took conv3-conv5's dx to 255 registers and 64-504 B of spills under Triton 3.6
        direct = band > 1
        wrap_triton(_rows_dx_kernel)[(P, triton.cdiv(C_in, bci))](
            gzp, w2d if direct else wd, dx, C_in, L, mp, N * mp, tg * C, J * C, r2,
            stride, padding, tiles, tpc, P, k, C_OUT=C, PHASES=php, BLOCK_M=bmx, BLOCK_CI=bci, BLOCK_R=br, BAND=band,
            RESIDENT=resident, W_MODE=2 if direct else 0,
            INTERP=INTERPRET, PRECISION=dot_precision(x), num_warps=dx_warps, num_stages=STAGES)
    elif input_grad:
        dx = dx_from_gz(gz, w2d, x, k, stride, padding, T, 1, C)
    return dx, dw, db, local
