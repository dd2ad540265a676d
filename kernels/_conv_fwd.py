"""Forward Triton kernels of ``conv1d_bn_relu`` and their launchers (docs/design.md#kernels).

Pass 1 (training only): implicit-GEMM conv tiles whose epilogue emits per-channel partial statistics
(count, mean, M2), merged inside a program and then across programs with Chan et al.'s pairwise
formula (not sum / sum-of-squares atomics, which lose precision at 64 x 220,501 values per channel).
Pass 2: the same conv tile recomputed, normalised, ReLU'd and max-pooled in registers; only the pooled
tensor is written, with the position of each window's maximum as a small integer (int8 for pools up
to 127) for the backward and, for 16-bit inputs, the normalised value there (zmax, ``keeps_zmax``). The
unpooled conv output never reaches memory.

The conv reduces over C_in x k (64 for conv1, 512 for conv2..conv5), not over C_in only as public
Triton convs do (they pad C_in = 1 to 16 and waste 16x on conv1): docs/design.md#kernels.

Symbols (here and in ``_conv_bwd.py``); tensors are (N, C, L) inputs, (C_out, C_in * K) weights:

- N, C_in, L: batch, input channels, input length (samples or frames); C_OUT: output channels.
- K, stride, pad: the conv's kernel size, stride and zero padding; T = (L + 2 pad - K) // stride + 1,
  the conv output length.
- R = C_in * K: the conv's reduction length (one weight row); r indexes it, ci = r // K, kk = r % K.
- M = N * T: batch x time flattened, the GEMM's column axis; m indexes it, n = m // T, t = m % T.
- POOL: the max-pool's window (= its stride); TP = T // POOL pooled outputs per clip; Q = N * TP;
  PP: the next power of two >= POOL (a tile's window slots, u = slot).
- BLOCK_CO, BLOCK_M, BLOCK_R, BLOCK_Q: a program's tile of output channels, columns, reduction and
  pooled outputs.
- TILES: conv tiles one program reduces in turn; P: the programs along M, so the number of partials;
  PER_PROG = TILES * BLOCK_M: the columns behind one partial; BLOCK_C, BLOCK_P: the merge's tile of
  channels and partials.
- HAS_BIAS, HAS_POOL: the block has a conv bias, a max-pool.
- part: per-program partial (mean, M2) of each channel; moments: merged (count, mean, M2), (3, C_OUT);
  stats: (mean, invstd, unbiased variance, count), (4, C_OUT) fp32 (count 0 in eval).
- code: per pooled output, the offset of its window's maximum (``pool_select``), -1 where ReLU gave 0.
- sxn, sxc, sxl (sgn, sgc, sgl): element strides of x (of grad_out, the gradient of the block's output: pooled
  when it pools) along N, C, L.
- INTERP: running under TRITON_INTERPRET=1 (fp32 dots); PRECISION: tl.dot's input_precision.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import INTERPRET, clamp_pow2, dot_precision, next_pow2

# fmt: off
# Hand-wrapped on purpose: Triton kernels and launches take 15-30 arguments, and one per line (the
# formatter's layout) would triple these files' length without making them clearer.


@triton.jit
def conv_tile(x_ptr, w_ptr, co, n, t, col_ok, C_OUT, L, R, sxn, sxc, sxl, stride, pad,
              K: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
              INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """fp32 tile ``acc[co, m] = sum_r w[co, r] * x[n_m, r // K, t_m * stride - pad + r % K]``.

    ``w_ptr`` is the weight viewed as (C_out, C_in * K); columns are output positions (n, t) of a
    flattened batch x time axis, so small-T layers (conv6: T = 28) still fill the tile.
    Both forward passes and both backward recomputes call this one function with the same reduction
    blocking. Correctness does not rest on a bitwise-equal recompute, though: the backward routes the
    pooled gradient through the argmax offsets the forward stored (docs/design.md#backward-by-recompute allows either).
    """
    acc = tl.zeros((BLOCK_CO, BLOCK_M), dtype=tl.float32)
    co_ok = co < C_OUT
    pos0 = t * stride - pad
    col = n.to(tl.int64) * sxn
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_ok = r < R
        ci = r // K
        kk = r % K
        w = tl.load(w_ptr + co[:, None] * R + r[None, :], mask=co_ok[:, None] & r_ok[None, :], other=0.0)
        pos = pos0[None, :] + kk[:, None]
        ok = r_ok[:, None] & col_ok[None, :] & (pos >= 0) & (pos < L)
        xv = tl.load(x_ptr + col[None, :] + ci[:, None].to(tl.int64) * sxc + pos.to(tl.int64) * sxl,
                     mask=ok, other=0.0)
        if INTERP:  # the interpreter's bf16 tl.dot is wrong (docs/design.md#interpreter-and-process-rules)
            w = w.to(tl.float32)
            xv = xv.to(tl.float32)
        acc = tl.dot(w, xv, acc, input_precision=PRECISION)
    return acc


@triton.jit
def cast_out(v, dtype: tl.constexpr, INTERP: tl.constexpr):
    """fp32 -> a stored dtype. On GPUs Triton rounds fp32 -> bf16 to nearest even; the interpreter
    truncates (measured here: twice the rounding error of torch's cast), so there it is rounded to
    nearest even by hand (add 0x7FFF plus the kept LSB, clear the low 16 bits)."""
    if INTERP:
        if dtype == tl.bfloat16:
            u = v.to(tl.uint32, bitcast=True)
            v = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    return v.to(dtype)


@triton.jit
def cl_at(n, q, c, C, TP):
    """Offsets (len(q), len(c)) of the elements (n, c, q) of an (N, C, TP) tensor stored channels-last
    (``channels_last_empty``: strides (TP * C, 1, C)): each position's channels are one contiguous run."""
    return tl.cast(n, tl.int64) * TP * C + (q[:, None] * C + c[None, :])


@triton.jit
def chain_pads(out_ptr, n, z0, c, c_ok, son, soc, sot, TP, PAD, TAIL, ZERO_ROWS: tl.constexpr):
    """Rows z0 .. z0 + ZERO_ROWS of a chained output's zero rows (``_conv_paths.chain_rows``) of clip n: out_ptr
    points at position 0 of clip 0 in a zero-padded channels-last buffer (strides son, soc, sot); zeros in channels c
    of those of the PAD rows before the clip's TP positions and of the TAIL rows after them (``pool_output``). The
    next block's kernels read the buffer as their padded input. The pool kernels call it once per clip and chunk of
    ZERO_ROWS (at most 16: a wider chunk of fp32 zeros spilled under Triton 3.6), after their tiles."""
    r = z0 + tl.arange(0, ZERO_ROWS)
    zero = tl.zeros((ZERO_ROWS, c.shape[0]), dtype=out_ptr.dtype.element_ty)
    base = out_ptr + tl.cast(n, tl.int64) * son + c[None, :] * soc
    tl.store(base + (r - PAD)[:, None] * sot, zero, mask=(r < PAD)[:, None] & c_ok[None, :])
    tl.store(base + (TP + r)[:, None] * sot, zero, mask=(r < TAIL)[:, None] & c_ok[None, :])


@triton.jit
def _load_bias(b_ptr, co, C_OUT, HAS_BIAS: tl.constexpr, BLOCK_CO: tl.constexpr):
    if HAS_BIAS:
        return tl.load(b_ptr + co, mask=co < C_OUT, other=0.0).to(tl.float32)
    return tl.zeros((BLOCK_CO,), dtype=tl.float32)


@triton.jit
def chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Two (count, mean, M2) triples merged (Chan, Golub, LeVeque 1979): delta = mean_b - mean_a,
    mean = mean_a + delta n_b / n, M2 = M2_a + M2_b + delta^2 n_a n_b / n; returns (n, mean, M2)."""
    n = n_a + n_b
    frac = n_b / tl.maximum(n, 1.0)
    delta = mean_b - mean_a
    return n, mean_a + delta * frac, m2_a + m2_b + delta * delta * n_a * frac


@triton.jit
def store_partial(ptr, value, mask, DETERMINISTIC: tl.constexpr):
    """A program's partial of a reduction: stored to its own slot (deterministic: summed later in a fixed
    order) or atomically added (relaxed) to a shared one."""
    if DETERMINISTIC:
        tl.store(ptr, value, mask=mask)
    else:
        tl.atomic_add(ptr, value, mask=mask, sem="relaxed")


@triton.jit
def partial_row(pid, DETERMINISTIC: tl.constexpr):
    """The row of a (programs or 1, ...) partials buffer program ``pid`` writes (``store_partial``): its own when
    DETERMINISTIC, else the one row all programs add into atomically."""
    if DETERMINISTIC:
        return pid
    return pid * 0


@triton.jit
def store_bn_sums(sums_ptr, s_gy, s_gyz, pid_p, c, C_OUT, P, DETERMINISTIC: tl.constexpr):
    """The backward's per-channel sums of one program (``_bwd_reduce_kernel`` and its banded and row-GEMM
    twins) into sums (2, P, C_OUT) at [:, pid_p] (deterministic) or atomically added to sums (2, 1, C_OUT), in
    sums' dtype (fp64: see ``_bwd_reduce_kernel``)."""
    c_ok = c < C_OUT
    rows = P if DETERMINISTIC else 1
    idx = partial_row(pid_p, DETERMINISTIC)
    dt = sums_ptr.dtype.element_ty
    store_partial(sums_ptr + idx * C_OUT + c, s_gy.to(dt), c_ok, DETERMINISTIC)
    store_partial(sums_ptr + (rows + idx) * C_OUT + c, s_gyz.to(dt), c_ok, DETERMINISTIC)


@triton.jit
def store_sums_fp32(sums_ptr, dbn_ptr, c, c_ok, C_OUT):
    """The BN sums sums_ptr (2, C_OUT) (fp64, ``bn_sums_of(cast=False)``) of channels c as dbn_ptr (2, C_OUT) fp32:
    the gz launches' copy of the sums the op returns (``local_sums``), from their programs (0, c)."""
    if tl.program_id(0) == 0:
        tl.store(dbn_ptr + c, tl.load(sums_ptr + c, mask=c_ok, other=0.0).to(tl.float32), mask=c_ok)
        tl.store(dbn_ptr + C_OUT + c, tl.load(sums_ptr + C_OUT + c, mask=c_ok, other=0.0).to(tl.float32), mask=c_ok)


@triton.jit
def clip_tile(tile, TPC, BLOCK_Q: tl.constexpr):
    """Row tile ``tile`` of a persistent grid whose tiles never cross a clip (TPC tiles per clip) -> (n, r0, r):
    its clip n = tile // TPC, its first row r0 and its rows r (BLOCK_Q,) inside the clip. One division per tile,
    none per row."""
    n = tile // TPC
    r0 = (tile - n * TPC) * BLOCK_Q
    return n, r0, r0 + tl.arange(0, BLOCK_Q)


@triton.jit
def walk_start(first, P, TPC):
    """A persistent program's walk over the tiles first, first + P, first + 2 P, ... of clips of TPC tiles each,
    with no division per tile: (n, t, dn, dt), the first tile's clip and index in it, and a step's whole clips and
    remaining tiles (``walk_next``; t * BLOCK rows is then the tile's first row, as ``clip_tile``'s r0)."""
    return first // TPC, first % TPC, P // TPC, P % TPC


@triton.jit
def walk_next(n, t, dn, dt, TPC):
    """``walk_start``'s (n, t) advanced by P tiles."""
    t = t + dt
    wrap = t >= TPC
    return tl.where(wrap, n + dn + 1, n + dn), tl.where(wrap, t - TPC, t)


@triton.jit
def pool_select(key, s, slot, PP: tl.constexpr, AXIS: tl.constexpr):
    """Max-pool of a BN + ReLU output y = relu(bn(z)) over the window's slots on axis AXIS, chosen on the conv
    output z itself: key = z * s, s = -1 where the channel's BN scale (gamma * invstd) is negative and +1
    elsewhere (``bn_sign``; per channel, broadcast like the pooled output), -inf in padded slots (slot: their
    index, broadcastable, int32 or fp32: the banded pool passes fp32, whose min Triton 3.9 compiles to FMNMX where
    it expands int32's into ~2.5x the instructions, conv1's pool 115 -> 89 us per step; the row kernels keep int32,
    ~8 % fewer instructions there). bn and its rounding are monotone in z, so the first slot where key is largest
    holds y's maximum: relu(bn(zsel)) is exactly the max-pool of y, with one reduction for the value, one for the slot
    and none to fetch z there. y ties where z does (the first slot wins, PyTorch's rule); where rounding alone
    makes two y equal, or a zero scale makes y constant, the slot is z's maximum (the choice at a slightly
    positive scale). Returns (zsel, first): z at the chosen slot and the slot; the caller's code is -1 where
    relu(bn(zsel)) = 0 (ReLU passes no gradient there), and zmax = zhat at the slot lets the backward's BN sums
    skip a recompute (sum(gy * zhat) = sum over pooled outputs of grad * zmax)."""
    m = tl.max(key, axis=AXIS)
    first = tl.min(tl.where(key == tl.expand_dims(m, AXIS), slot, PP), axis=AXIS)
    return m * s, first.to(tl.int32)


@triton.jit
def bn_sign(a):
    """``pool_select``'s s: -1 where the BN scale a is negative, +1 elsewhere."""
    return tl.where(a < 0.0, -1.0, 1.0)


@triton.jit
def fp32_if(v, INTERP: tl.constexpr):
    """v in fp32 under the interpreter, whose bf16 tl.dot is wrong (docs/design.md#interpreter-and-process-rules);
    v unchanged on a GPU."""
    if INTERP:
        return v.to(tl.float32)
    return v


@triton.jit
def store_moments(part_ptr, co, C_OUT, PITCH, pid_p, mean, m2, n):
    """A program's per-channel (mean, M2, count) into part (3, C_OUT, P) (rows PITCH apart: ``stats_partials``) at
    [:, co, pid_p], as ``_merge_stats_kernel`` with HAS_COUNT reads them."""
    c_ok = co < C_OUT
    tl.store(part_ptr + co * PITCH + pid_p, mean, mask=c_ok)
    tl.store(part_ptr + (C_OUT + co) * PITCH + pid_p, m2, mask=c_ok)
    tl.store(part_ptr + (2 * C_OUT + co) * PITCH + pid_p, n, mask=c_ok)


@triton.jit
def _conv_stats_kernel(x_ptr, w_ptr, b_ptr, part_ptr, C_OUT, L, R, T, M, PITCH, sxn, sxc, sxl, stride, pad,
                       HAS_BIAS: tl.constexpr, K: tl.constexpr, BLOCK_CO: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, TILES: tl.constexpr,
                       INTERP: tl.constexpr, PRECISION: tl.constexpr):
    """Per program: TILES consecutive conv tiles, each reduced to (count, mean, M2) per channel and
    merged into a running triple (Chan, Golub, LeVeque 1979: delta = mean_b - mean_a,
    M2 = M2_a + M2_b + delta^2 n_a n_b / n). Writes part[0, co, p] = mean, part[1, co, p] = M2 (rows PITCH
    apart); the count of program p follows from M and is recomputed by the merge kernel."""
    pid_p = tl.program_id(0)  # the long axis first: CUDA caps grid axes 1 and 2 at 65,535
    pid_c = tl.program_id(1)
    co = pid_c * BLOCK_CO + tl.arange(0, BLOCK_CO)
    bias = _load_bias(b_ptr, co, C_OUT, HAS_BIAS, BLOCK_CO)
    n_a = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    mean_a = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    m2_a = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    for i in range(TILES):
        m = (pid_p * TILES + i) * BLOCK_M + tl.arange(0, BLOCK_M)
        ok = m < M
        z = conv_tile(x_ptr, w_ptr, co, m // T, m % T, ok, C_OUT, L, R, sxn, sxc, sxl, stride, pad,
                      K, BLOCK_CO, BLOCK_M, BLOCK_R, INTERP, PRECISION) + bias[:, None]
        n_b = tl.sum(ok.to(tl.float32), axis=0)
        mean_b = tl.sum(tl.where(ok[None, :], z, 0.0), axis=1) / tl.maximum(n_b, 1.0)
        d = tl.where(ok[None, :], z - mean_b[:, None], 0.0)
        m2_b = tl.sum(d * d, axis=1)
        n_a, mean_a, m2_a = chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b)
    c_ok = co < C_OUT
    tl.store(part_ptr + co * PITCH + pid_p, mean_a, mask=c_ok)
    tl.store(part_ptr + (C_OUT + co) * PITCH + pid_p, m2_a, mask=c_ok)


@triton.jit
def _part_count(part_ptr, co, p, ok, C_OUT, PITCH, M, PER_PROG, HAS_COUNT: tl.constexpr):
    """Counts (BLOCK_C, BLOCK_P) of the partials p: stored in part[2], or the columns behind program p."""
    if HAS_COUNT:
        return tl.load(part_ptr + (2 * C_OUT + co[:, None]) * PITCH + p[None, :], mask=ok, other=0.0)
    cnt = tl.minimum(tl.maximum(M - p.to(tl.int64) * PER_PROG, 0), PER_PROG).to(tl.float32)
    return tl.broadcast_to(cnt[None, :], (co.shape[0], p.shape[0]))


@triton.jit
def _merge_stats_kernel(part_ptr, out_ptr,
                        rm_ptr, rv_ptr, nbt_ptr,  # (C_OUT,) x 2 BN's running buffers, (1,) int64 (UPDATE)
                        C_OUT, P, PITCH, M, PER_PROG, eps, momentum, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                        HAS_COUNT: tl.constexpr, FINALIZE: tl.constexpr, UPDATE: tl.constexpr, HAS_NBT: tl.constexpr,
                        INTERP: tl.constexpr):
    """Merge P partial (count, mean, M2) triples per channel, in a fixed order (deterministic), in one pass over
    them: each chunk of BLOCK_P partials is merged exactly (n_b = sum n_p, mean_b = sum n_p mean_p / n_b,
    M2_b = sum M2_p + sum n_p (mean_p - mean_b)^2, from the values in registers), and the chunks one after the
    other with Chan's pairwise formula (``chan_merge``; no cancellation). part_ptr: (2 or 3, C_OUT, P) fp32, rows
    PITCH apart (``stats_partials``);
    out_ptr: (3, C_OUT) fp32 n, mean, M2, or with FINALIZE (4, C_OUT) fp32 the stats rows ``finalize_stats``
    makes from them: mean, invstd = 1 / sqrt(M2 / n + eps), unbiased variance M2 / max(n - 1, 1), n (BN's
    finalisation, no torch ops). The count n_p of program p is part[2, co, p] when HAS_COUNT (the banded and
    row kernels), else it follows from M and PER_PROG. UPDATE (with FINALIZE): also BN's running-statistics update
    of ``bn_running`` with f = momentum (running = (1 - f) running + f batch, the variance unbiased; program 0 adds
    1 to num_batches_tracked when HAS_NBT), so no launch of its own."""
    co = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = co < C_OUT
    s_n = tl.zeros((BLOCK_C,), dtype=tl.float32)
    mean = tl.zeros((BLOCK_C,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        ok = c_ok[:, None] & (p < P)[None, :]
        # loads of whole 16-element runs up to the pitch (16-byte loads: P itself is seldom a multiple of 16); the
        # pitch's padding, never written, is selected out, not multiplied
        ld = c_ok[:, None] & (p < PITCH)[None, :]
        cnt = tl.where(ok, _part_count(part_ptr, co, p, ld, C_OUT, PITCH, M, PER_PROG, HAS_COUNT), 0.0)
        mu = tl.where(ok, tl.load(part_ptr + co[:, None] * PITCH + p[None, :], mask=ld, other=0.0), 0.0)
        q = tl.where(ok, tl.load(part_ptr + (C_OUT + co[:, None]) * PITCH + p[None, :], mask=ld, other=0.0), 0.0)
        n_b = tl.sum(cnt, axis=1)
        mean_b = tl.sum(mu * cnt, axis=1) / tl.maximum(n_b, 1.0)
        d = mu - mean_b[:, None]
        s_n, mean, m2 = chan_merge(s_n, mean, m2, n_b, mean_b, tl.sum(q + cnt * d * d, axis=1))
    if FINALIZE:
        tl.store(out_ptr + co, mean, mask=c_ok)
        # max(n, 1): lanes past C_OUT have n = 0 (every real channel has n = M >= 1)
        tl.store(out_ptr + C_OUT + co, 1.0 / tl.sqrt_rn(m2 / tl.maximum(s_n, 1.0) + eps), mask=c_ok)
        tl.store(out_ptr + 2 * C_OUT + co, m2 / tl.maximum(s_n - 1.0, 1.0), mask=c_ok)
        tl.store(out_ptr + 3 * C_OUT + co, s_n, mask=c_ok)
        if UPDATE:
            f = momentum
            rm = tl.load(rm_ptr + co, mask=c_ok, other=0.0).to(tl.float32)
            rv = tl.load(rv_ptr + co, mask=c_ok, other=0.0).to(tl.float32)
            var = m2 / tl.maximum(s_n - 1.0, 1.0)
            tl.store(rm_ptr + co, cast_out(rm * (1.0 - f) + mean * f, rm_ptr.dtype.element_ty, INTERP), mask=c_ok)
            tl.store(rv_ptr + co, cast_out(rv * (1.0 - f) + var * f, rv_ptr.dtype.element_ty, INTERP), mask=c_ok)
            if HAS_NBT:
                if tl.program_id(0) == 0:
                    tl.store(nbt_ptr, tl.load(nbt_ptr) + 1)
    else:
        tl.store(out_ptr + co, s_n, mask=c_ok)
        tl.store(out_ptr + C_OUT + co, mean, mask=c_ok)
        tl.store(out_ptr + 2 * C_OUT + co, m2, mask=c_ok)


@triton.jit
def _conv_bn_relu_pool_kernel(x_ptr, w_ptr, b_ptr, g_ptr, beta_ptr, stats_ptr, out_ptr, code_ptr, zmax_ptr,
                              C_OUT, L, R, T, TP, Q, sxn, sxc, sxl, stride, pad,
                              HAS_BIAS: tl.constexpr, HAS_POOL: tl.constexpr, STORE_ZMAX: tl.constexpr,
                              POOL: tl.constexpr, PP: tl.constexpr, K: tl.constexpr, BLOCK_CO: tl.constexpr,
                              BLOCK_Q: tl.constexpr, BLOCK_R: tl.constexpr, INTERP: tl.constexpr,
                              PRECISION: tl.constexpr):
    """Conv tile over BLOCK_Q pooled outputs x PP window slots (PP = next power of two >= POOL),
    then BN (stats[0] = mean, stats[1] = invstd), ReLU and max over each window; writes the pooled
    output, ``code`` = offset of the window's maximum (``pool_select``), or -1 where the
    pooled output is 0 (ReLU passes no gradient there), and when STORE_ZMAX ``zmax`` = zhat there
    (``pool_select``, ``keeps_zmax``). Without a pool, POOL = PP = 1."""
    pid_q = tl.program_id(0)
    pid_c = tl.program_id(1)
    co = pid_c * BLOCK_CO + tl.arange(0, BLOCK_CO)
    c_ok = co < C_OUT
    idx = tl.arange(0, BLOCK_Q * PP)
    u = idx % PP
    q = pid_q * BLOCK_Q + idx // PP
    ok = (q < Q) & (u < POOL)
    n = q // TP
    t = (q % TP) * POOL + u
    z = conv_tile(x_ptr, w_ptr, co, n, t, ok, C_OUT, L, R, sxn, sxc, sxl, stride, pad,
                  K, BLOCK_CO, BLOCK_Q * PP, BLOCK_R, INTERP, PRECISION)
    z += _load_bias(b_ptr, co, C_OUT, HAS_BIAS, BLOCK_CO)[:, None]
    mean = tl.load(stats_ptr + co, mask=c_ok, other=0.0)
    invstd = tl.load(stats_ptr + C_OUT + co, mask=c_ok, other=0.0)
    gamma = tl.load(g_ptr + co, mask=c_ok, other=0.0).to(tl.float32)
    shift = tl.load(beta_ptr + co, mask=c_ok, other=0.0).to(tl.float32)
    if HAS_POOL:
        s = bn_sign(gamma)  # invstd > 0
        key = tl.reshape(tl.where((u < POOL)[None, :], z * s[:, None], -float("inf")), (BLOCK_CO, BLOCK_Q, PP))
        zsel, first = pool_select(key, s[:, None], tl.arange(0, PP)[None, None, :], PP, 2)
        zmax = (zsel - mean[:, None]) * invstd[:, None]
        o = tl.maximum(zmax * gamma[:, None] + shift[:, None], 0.0)
        code = tl.where(o > 0.0, first, -1)
        zmax = tl.where(o > 0.0, zmax, 0.0)
        qq = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        off = ((qq // TP).to(tl.int64) * C_OUT)[None, :] * TP + co[:, None] * TP + (qq % TP)[None, :]
        smask = c_ok[:, None] & (qq < Q)[None, :]
        tl.store(out_ptr + off, cast_out(o, out_ptr.dtype.element_ty, INTERP), mask=smask)
        tl.store(code_ptr + off, code.to(code_ptr.dtype.element_ty), mask=smask)
        if STORE_ZMAX:
            tl.store(zmax_ptr + off, cast_out(zmax, zmax_ptr.dtype.element_ty, INTERP), mask=smask)
    else:
        y = tl.maximum((z - mean[:, None]) * invstd[:, None] * gamma[:, None] + shift[:, None], 0.0)
        off = (n.to(tl.int64) * C_OUT)[None, :] * T + co[:, None] * T + t[None, :]
        tl.store(out_ptr + off, cast_out(y, out_ptr.dtype.element_ty, INTERP), mask=c_ok[:, None] & ok[None, :])


# ----------------------------------------------------------------------------------------- launchers
# Positions per conv tile on a GPU. 32 rather than 128: the static model (bench/sass_report.py, with the
# stall term checked against the H200's kernels) predicts a SoundNet-8 bf16 step at batch 64 in 20.2 ms of
# kernels instead of 27.0 ms, with 11 spilling launches of 49 instead of 32 (fewer registers per thread, more
# warps per scheduler); SoundNet-5 bf16 5.1 instead of 6.5 ms; fp32 24.8 instead of 30.9 ms. 16 and 64
# predicted slower. A prediction, not yet measured on a GPU.
BLOCK_M_GPU = 32


def conv_blocks(c_out: int, r: int, m: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_CO, BLOCK_M, BLOCK_R, num_warps) of a conv tile. On a GPU every tl.dot dimension is a
    power of two >= 16 (Triton's minimum); fp32 takes BLOCK_R 32 so a pipelined stage of the gathered
    input tile stays at 16 KB of shared memory; BLOCK_M is :data:`BLOCK_M_GPU`. The interpreter runs
    programs one after another, so it gets few, large tiles (docs/design.md#kernels)."""
    if INTERPRET:
        return clamp_pow2(c_out, 16, 256), clamp_pow2(m, 16, 512), clamp_pow2(r, 16, 1024), 4
    br = clamp_pow2(r, 16, 32 if dtype == torch.float32 else 64)
    return clamp_pow2(c_out, 16, 64), BLOCK_M_GPU, br, 4


def stats_tiles(num_tiles: int) -> int:
    """Conv tiles merged per program (stats and backward sums): fewer partials to merge on a GPU; 2
    under the interpreter when there are several tiles, so the tests exercise the in-program Chan merge
    (with an empty last tile when the count is odd) as well as the merge across programs."""
    if INTERPRET:
        return 2 if num_tiles > 1 else 1
    return max(1, min(16, num_tiles // 4096))


def generic_moments(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, K: int, stride: int,
                    padding: int, T: int, eps: float | None = None, running: tuple | None = None) -> torch.Tensor:
    """(3, C_out) fp32: count, mean and M2 of the conv output per channel, over batch x time, by the implicit
    GEMM of any shape, or with ``eps`` the (4, C_out) stats rows (``merge_stats``, ``running`` too;
    ``_conv_paths.conv_moments`` picks the kernels of a block)."""
    N, C_in, L = x.shape
    C, R = w2d.shape
    M = N * T
    bco, bm, br, warps = conv_blocks(C, R, M, x.dtype)
    num_tiles = triton.cdiv(M, bm)
    tiles = stats_tiles(num_tiles)
    P = triton.cdiv(num_tiles, tiles)
    part = stats_partials(2, C, P, x.device)
    b = bias if bias is not None else w2d
    wrap_triton(_conv_stats_kernel)[(P, triton.cdiv(C, bco))](
        x, w2d, b, part, C, L, R, T, M, part.stride(1), x.stride(0), x.stride(1), x.stride(2), stride, padding,
        HAS_BIAS=bias is not None, K=K, BLOCK_CO=bco, BLOCK_M=bm, BLOCK_R=br, TILES=tiles,
        INTERP=INTERPRET, PRECISION=dot_precision(x), num_warps=warps)
    return merge_stats(part, M, tiles * bm, eps, running)


def stats_partials(rows: int, c_out: int, P: int, device: torch.device) -> torch.Tensor:
    """The statistics kernels' partials (rows, C_out, P) fp32, each (row, channel) run of P values starting 64 bytes
    aligned (a pitch of P rounded up to 16), so the merge reads them 16 bytes at a time whatever P is."""
    return torch.empty((rows, c_out, -(-P // 16) * 16), device=device, dtype=torch.float32)[:, :, :P]


def merge_stats(part: torch.Tensor, M: int, per_prog: int, eps: float | None,
                running: tuple | None = None) -> torch.Tensor:
    """Merge the statistics kernels' partials part (2 or 3, C_out, P) fp32 (3: each program's count in part[2];
    2: counts from M rows, ``per_prog`` per program) with one ``_merge_stats_kernel`` launch: (3, C_out) fp32
    count, mean, M2 when ``eps`` is None (a process group merges them across ranks first), else the (4, C_out)
    stats rows of ``conv_bn_relu.finalize_stats`` (mean, invstd, unbiased variance, count). ``running``: None, or
    (running_mean, running_var, num_batches_tracked or None, momentum) updated in place by the same launch
    (``bn_running.merge_updates`` says when it may)."""
    C, P = part.shape[1], part.shape[2]
    out = torch.empty((3 if eps is None else 4, C), device=part.device, dtype=torch.float32)
    bc, bp = merge_blocks(C, P)
    rm, rv, nbt, momentum = running if running is not None else (out, out, None, 0.0)
    wrap_triton(_merge_stats_kernel)[(triton.cdiv(C, bc),)](
        part, out, rm, rv, nbt if nbt is not None else out, C, P, part.stride(1), M, per_prog,
        0.0 if eps is None else float(eps), float(momentum), BLOCK_C=bc, BLOCK_P=bp, HAS_COUNT=part.shape[0] == 3,
        FINALIZE=eps is not None, UPDATE=running is not None and eps is not None, HAS_NBT=nbt is not None,
        INTERP=INTERPRET, num_warps=4)
    return out


# The persistent grids of _conv_banded.py, _conv_rows.py and _bn_sums.py (``persistent_grid``): on a GPU a
# kernel's CTAs per SM on each of the 132 SMs of an H100 / H200 (NVIDIA datasheets); the interpreter runs programs
# serially: PROGRAMS = 2, so the tests walk several tiles each.
SMS = 132
PROGRAMS = 2


def reg_cap(regs: int) -> dict:
    """Launch options capping a kernel's registers per thread at ``regs`` ({"maxnreg": regs}) so more CTAs of 4
    warps fit an SM (65,536 registers: 168 -> 3 CTAs, 128 -> 4, 96 -> 5), where the static report shows the capped
    kernel without spills under Triton 3.6 and 3.9 and more resident warps hiding its dependency stalls. Empty
    under torch.compile, whose Triton wrapper passes only num_warps / num_stages / num_ctas-like options through
    (torch 2.11-2.13): there the kernel runs uncapped (fewer CTAs, the same results)."""
    return {} if torch.compiler.is_compiling() else {"maxnreg": regs}


def persistent_grid(rows: int, block: int, per_sm: int = 4, blocks: int = 1) -> tuple[int, int]:
    """(NUM_TILES, P): the row tiles of ``block`` rows and the programs that walk them (tile p, p + P, ...). On a
    GPU P x ``blocks`` (the grid's other axis) = ``per_sm`` CTAs on each of ``SMS`` SMs: a kernel that fits
    ``per_sm`` CTAs per SM (its register cap, ``reg_cap``) runs them in one round, with no partial second one."""
    tiles = triton.cdiv(rows, block)
    return tiles, min(tiles, PROGRAMS if INTERPRET else max(1, per_sm * SMS // blocks))


def merge_blocks(c_out: int, parts: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) of ``_merge_stats_kernel``: on a GPU 2 channels per program and chunks of at most 512
    partials (three (BLOCK_C, BLOCK_P) fp32 tiles in 128 threads' registers: 64 x 256 spilled 1.4 KB per thread
    under Triton 3.9, 64 x 64 spilled 320 B under 3.6; 2 x 512 spills under neither, by ``bench.sass_report
    --spills-only``). The merge is a short chain of dependent loads and reductions: narrow channel blocks give it
    more programs and each program one chunk (up to 512 partials): SoundNet-8's seven merges at batch 64, bf16,
    predicted 81 -> 29 us per step on the H200 (one pass over the chunks, 2 channels per program, against two
    passes, up to 64). At least 256 partials per chunk on a GPU (a 2 x 256 tile: 4 per thread, so the loads are
    16 bytes wide however few partials there are; the lanes past them are masked)."""
    bc = clamp_pow2(c_out, 2, 256 if INTERPRET else 2)
    return bc, clamp_pow2(parts, 16 if INTERPRET else 256, 1024 if INTERPRET else 1024 // bc)


def channels_last_empty(n: int, c: int, t: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised (N, C, T) tensor stored channels-last, strides (T * C, 1, C) (``cl_at``): how the banded and
    row kernels store a block's codes and zmax (``_conv_paths.codes_channels_last``) and the row kernels' dx."""
    return torch.empty((n, t, c), dtype=dtype, device=device).transpose(1, 2)


CHAIN_ZERO_ROWS = 256  # most rows of zeros before or after a chained output (``chain_fits``)
CHAIN_ZERO_CHUNK = 16  # rows of zeros one ``chain_pads`` call stores


def pool_output(n: int, c: int, tp: int, dtype: torch.dtype, device: torch.device,
                chain: tuple[int, int] | None) -> tuple[torch.Tensor, tuple[int, int], int]:
    """A pool pass's output (N, C, TP) and its kernel's (PAD, TAIL) and ZERO_ROWS (``chain_pads``): contiguous, or
    with ``chain`` = (pad, LP) (``_conv_paths.chain_rows``; ``chain_fits``) the view at row pad of an uninitialised
    channels-last (N, LP, C) buffer, strides (LP * C, 1, C), whose pad rows before and LP - pad - TP after the
    kernel zeroes: the next block reads the buffer as its padded input (no copy)."""
    if chain is None:
        return torch.empty((n, c, tp), dtype=dtype, device=device), (0, 0), 0
    pad, lp = chain
    if not chain_fits(pad, lp, tp):
        raise ValueError(f"pool_output: a chained buffer of {lp} rows cannot hold {pad} + {tp} with at most "
                         f"{CHAIN_ZERO_ROWS} rows of zeros on each side")
    buf = torch.empty((n, lp, c), dtype=dtype, device=device)
    tail = lp - pad - tp
    return buf[:, pad : pad + tp].transpose(1, 2), (pad, tail), min(CHAIN_ZERO_CHUNK, next_pow2(max(pad, tail, 1)))


def chain_fits(pad: int, lp: int, tp: int) -> bool:
    """Whether an output of TP positions can be chained into a buffer of LP rows from row pad: the zero rows on
    each side at most ``CHAIN_ZERO_ROWS``."""
    return 0 <= pad <= CHAIN_ZERO_ROWS and 0 <= lp - pad - tp <= CHAIN_ZERO_ROWS


def code_dtype(pool: int) -> torch.dtype:
    """Smallest signed integer type holding a window offset in [-1, pool)."""
    if pool <= 127:
        return torch.int8
    return torch.int16 if pool <= 32767 else torch.int32


def generic_bn_relu_pool(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None,
                         gamma: torch.Tensor, beta: torch.Tensor, stats: torch.Tensor, K: int, stride: int,
                         padding: int, T: int, pool: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 2 of any shape: (pooled output in x.dtype, window-offset codes, zmax = zhat at each window's maximum
    in x.dtype; without a pool the codes and zmax are empty) (``_conv_paths.conv_bn_relu_pool`` picks)."""
    N, C_in, L = x.shape
    C, R = w2d.shape
    p = pool if pool is not None else 1
    pp = next_pow2(p)
    TP = T // p
    Q = N * TP
    bco, bm, br, warps = conv_blocks(C, R, Q * p, x.dtype)
    bq = max(1, bm // pp) if INTERPRET or pp <= bm else 1
    if bq * pp < 16:  # tl.dot needs N >= 16
        bq = 16 // pp
    out = torch.empty((N, C, TP), device=x.device, dtype=x.dtype)
    code = torch.empty((N, C, TP) if pool is not None else (0,), device=x.device,
                       dtype=code_dtype(p))
    zmax = torch.empty((N, C, TP) if keeps_zmax(x, pool) else (0,), device=x.device, dtype=x.dtype)
    b = bias if bias is not None else w2d
    wrap_triton(_conv_bn_relu_pool_kernel)[(triton.cdiv(Q, bq), triton.cdiv(C, bco))](
        x, w2d, b, gamma, beta, stats, out, code, zmax, C, L, R, T, TP, Q,
        x.stride(0), x.stride(1), x.stride(2), stride, padding,
        HAS_BIAS=bias is not None, HAS_POOL=pool is not None, STORE_ZMAX=zmax.numel() > 0, POOL=p, PP=pp, K=K,
        BLOCK_CO=bco,
        BLOCK_Q=bq, BLOCK_R=br, INTERP=INTERPRET, PRECISION=dot_precision(x), num_warps=warps)
    return out, code, zmax


def keeps_zmax(x: torch.Tensor, pool: int | None) -> bool:
    """Whether a pooling block keeps zmax for its backward, which then takes the BN sums from it instead of
    recomputing the conv: with 16-bit inputs (bf16 / fp16 training: SoundNet-8's trunk then keeps 3.74 MB per
    20 s clip, ~1 MB of it zmax). In fp32 zmax would take the trunk from 4.91 to 6.95 MB per clip, so fp32
    recomputes (counts: ``kernels.saved_activation_bytes`` on the meta device)."""
    return pool is not None and x.element_size() == 2


BN_SUMS = torch.float64  # the dtype of the backward's BN-sum partials (``bn_sum_partials``)


def bn_sums_of(part: torch.Tensor, cast: bool = True) -> torch.Tensor:
    """(2, C_out) sums from ``bn_sum_partials``' buffer: a fixed-order sum over its rows of partials, or with one
    row (the atomics' or a single program's) a view of it: one torch op fewer. In fp32 (one more op, the cast), or
    in the buffer's fp64 with ``cast`` False (the gz launch then writes the fp32 copy: ``_conv_rows.backward_prep``)."""
    sums = part[:, 0] if part.shape[1] == 1 else part.sum(dim=1)
    return sums.float() if cast else sums


def local_sums(raw: torch.Tensor, training: bool, all_reduce) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(local, sums, store_sums) of a backward from its BN sums ``raw`` (2, C_out) (``bn_sums_of(cast=False)``):
    local, the fp32 sums of this process the op returns; sums, those the gz launch reads (all-reduced across a
    process group in training); store_sums: whether the gz launch writes local from raw (no process group: the
    cast is then no torch op of its own; ``local`` is an empty (2, C_out) buffer for it)."""
    if training and all_reduce is not None:
        local = raw.float()
        return local, all_reduce(local), False
    if raw.dtype == torch.float32:
        return raw, raw, False
    return torch.empty(raw.shape, device=raw.device, dtype=torch.float32), raw, True


def bn_sum_partials(parts: int, c_out: int, deterministic: bool, device: torch.device,
                    buf: torch.Tensor | None = None) -> torch.Tensor:
    """(2, parts or 1, C_out) fp64 buffer of the backward's BN-sum kernels: one row of partials per program
    (deterministic, summed later in a fixed order) or one row they add into atomically (zeroed; ``buf``: such a
    row the caller carved with ``zeroed``)."""
    if deterministic:
        return torch.empty((2, parts, c_out), device=device, dtype=BN_SUMS)
    return buf if buf is not None else torch.zeros((2, 1, c_out), device=device, dtype=BN_SUMS)


def zeroed(device: torch.device, *specs: tuple[tuple[int, ...], torch.dtype]) -> tuple[torch.Tensor, ...]:
    """Zeroed tensors of the given (shape, dtype)s carved 16-byte aligned from one buffer, in order, so one fill
    launch serves them all: the accumulators a non-deterministic backward adds into atomically (the BN sums, dW's
    and db's partials). A custom op's outputs may not alias each other and its fake outputs start at offset 0:
    at most one carved tensor (or a view of it) may be returned by the op, and it must come first."""
    offsets, total = [], 0
    for shape, dt in specs:
        offsets.append(total)
        total += -(-math.prod(shape) * dt.itemsize // 16) * 16
    buf = torch.zeros(total, device=device, dtype=torch.uint8)
    return tuple(buf[o : o + math.prod(s) * dt.itemsize].view(dt).view(s)
                 for o, (s, dt) in zip(offsets, specs, strict=True))  # fmt: skip
