"""Training-mode BatchNorm -> ReLU (-> max-pool) fused for CPU float32, with numba: three passes instead of nine.

On a CPU the ops after a wide conv cost more than the conv: for SoundNet-5's conv1 at batch 16 x 3 s (a 68 MB
(N, C, L) map) eager BN, ReLU and max-pool forward and backward took ~60 % of the block's 371 ms (measured, the
project's 2-core CPU). Each of them reads and writes the whole map; the max-pool backward also zero-fills it.
Here the forward reads the conv output ``z`` twice (statistics, then normalise + ReLU + pool with the argmax
kept per window) and writes only the pooled map; the backward sums the BN gradients over the selected positions
(1/P of the map) and writes ``dz`` in one pass.

Symbols: N batch, C channels, L conv positions, P pool (kernel == stride, floor mode; 1: no pool), W = L // P
pooled frames, M = N * L values per channel. ``xhat = (z - mean) * invstd``, ``y = relu(gamma * xhat + beta)``.
Backward (g: the gradient of the output, at a window's selected position when it is active, else 0):
``dbeta = sum g``, ``dgamma = sum g * xhat``, ``dz = gamma * invstd / M * (M * g - dbeta - xhat * dgamma)``.

Every reduction runs per channel in a fixed order in float64, so results are the same on every run and any
number of threads. Max ties take the first position, as ``F.max_pool1d``. :func:`reference` is the eager form the
tests compare with. Needs numba (the ``train`` extra); :func:`available` says whether it imports.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

try:  # the train extra brings numba; without it callers keep the eager ops (available() is False)
    import numba

    from soundnet_fast.numba_threads import torch_threads
except ImportError:  # pragma: no cover - exercised only without the extra
    numba = None


def available() -> bool:
    """True when numba imports (the fused path can run)."""
    return numba is not None


def reference(z: Tensor, bn: torch.nn.BatchNorm1d, pool: int | None) -> Tensor:
    """The eager ops this file fuses: ``max_pool1d(relu(bn(z)), pool)`` (``bn`` in training mode)."""
    y = F.relu(bn(z))
    return F.max_pool1d(y, pool, pool) if pool else y


if numba is not None:

    @numba.njit(parallel=True, fastmath=False, cache=True)
    def _stats(z, mean, var):  # pragma: no cover - compiled
        # z: (N, C, L) float32; mean, var: (C,) float64, the biased batch variance. One pass of shifted sums
        # (shift: the channel's first value, so a large mean loses no precision) in 4 lanes (i % 4), combined in
        # a fixed order: the same on every run and any thread count.
        n, c, length = z.shape
        for ci in numba.prange(c):
            k = np.float64(z[0, ci, 0])
            s = np.zeros(4)
            q = np.zeros(4)
            for b in range(n):
                for i in range(length):
                    d = z[b, ci, i] - k
                    s[i & 3] += d
                    q[i & 3] += d * d
            m = n * length
            st = (s[0] + s[1]) + (s[2] + s[3])
            qt = (q[0] + q[1]) + (q[2] + q[3])
            mean[ci] = k + st / m
            var[ci] = max(qt / m - (st / m) ** 2, 0.0)

    @numba.njit(parallel=True, fastmath=False, cache=True)
    def _forward(z, scale, shift, pool, out, arg):  # pragma: no cover - compiled
        # z: (N, C, L) float32; scale, shift: (C,) float32; out: (N, C, W) float32; arg: (N, C, W) int32, the
        # selected position's offset in its window, -1 when the window's output is 0 (ReLU inactive)
        n, c, _ = z.shape
        w = out.shape[2]
        for job in numba.prange(n * c):
            b, ci = job // c, job % c
            a, s = scale[ci], shift[ci]
            for j in range(w):
                best = a * z[b, ci, j * pool] + s
                k = 0
                for r in range(1, pool):
                    v = a * z[b, ci, j * pool + r] + s
                    if v > best or v != v:  # NaN propagates, as max_pool1d
                        best, k = v, r
                        if v != v:
                            break
                if best > 0.0 or best != best:
                    out[b, ci, j] = best
                    arg[b, ci, j] = k
                else:
                    out[b, ci, j] = 0.0
                    arg[b, ci, j] = -1

    @numba.njit(parallel=True, fastmath=False, cache=True)
    def _grad_sums(z, g, arg, mean, invstd, pool, dbeta, dgamma):  # pragma: no cover - compiled
        # z: (N, C, L); g, arg: (N, C, W); mean, invstd, dbeta, dgamma: (C,) float64
        n, c, _ = z.shape
        w = g.shape[2]
        for ci in numba.prange(c):
            sb = 0.0
            sg = 0.0
            for b in range(n):
                for j in range(w):
                    k = arg[b, ci, j]
                    if k >= 0:
                        gv = g[b, ci, j]
                        sb += gv
                        sg += gv * (z[b, ci, j * pool + k] - mean[ci]) * invstd[ci]
            dbeta[ci] = sb
            dgamma[ci] = sg

    @numba.njit(parallel=True, fastmath=False, cache=True)
    def _backward(z, g, arg, mean, invstd, gamma, dbeta, dgamma, pool, dz):  # pragma: no cover - compiled
        # z, dz: (N, C, L) float32; g, arg: (N, C, W); mean, invstd, gamma, dbeta, dgamma: (C,) float64.
        # dz = k1 * (M * g - dbeta - xhat * dgamma) = a0 + a1 * z (+ k1 * M * g at a selected position)
        n, c, length = z.shape
        w = g.shape[2]
        m = n * length
        for job in numba.prange(n * c):
            b, ci = job // c, job % c
            k1 = gamma[ci] * invstd[ci] / m
            a1 = -k1 * invstd[ci] * dgamma[ci]
            a0 = -k1 * dbeta[ci] - a1 * mean[ci]
            for i in range(length):
                dz[b, ci, i] = a0 + a1 * z[b, ci, i]
            km = k1 * m
            for j in range(w):
                k = arg[b, ci, j]
                if k >= 0:
                    i = j * pool + k
                    dz[b, ci, i] = km * g[b, ci, j] + a0 + a1 * z[b, ci, i]


class _BnReluPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, gamma: Tensor, beta: Tensor, mean: Tensor, invstd: Tensor, pool: int) -> Tensor:
        zc = z.detach().contiguous()
        gamma, beta = gamma.detach(), beta.detach()
        scale = (gamma.double() * invstd).float()
        shift = (beta.double() - mean * gamma.double() * invstd).float()
        n, c, length = zc.shape
        w = length // pool
        out = torch.empty((n, c, w), dtype=zc.dtype)
        arg = torch.empty((n, c, w), dtype=torch.int32)
        with torch_threads():
            _forward(zc.numpy(), scale.numpy(), shift.numpy(), pool, out.numpy(), arg.numpy())
        ctx.save_for_backward(zc, arg, gamma, mean, invstd)
        ctx.pool = pool
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # numba in the backward: no graph for a second derivative
    def backward(ctx, g: Tensor):  # type: ignore[override]
        zc, arg, gamma, mean, invstd = ctx.saved_tensors
        g = g.contiguous()
        c = zc.shape[1]
        dbeta = torch.empty(c, dtype=torch.float64)
        dgamma = torch.empty(c, dtype=torch.float64)
        dz = torch.empty_like(zc) if ctx.needs_input_grad[0] else None
        with torch_threads():  # the backward may run on another thread than the forward
            _grad_sums(zc.numpy(), g.numpy(), arg.numpy(), mean.numpy(), invstd.numpy(), ctx.pool, dbeta.numpy(),
                       dgamma.numpy())  # fmt: skip
            if dz is not None:
                _backward(zc.numpy(), g.numpy(), arg.numpy(), mean.numpy(), invstd.numpy(), gamma.double().numpy(),
                          dbeta.numpy(), dgamma.numpy(), ctx.pool, dz.numpy())  # fmt: skip
        return dz, dgamma.to(gamma.dtype), dbeta.to(gamma.dtype), None, None, None


def supports(z: Tensor, bn: torch.nn.Module) -> bool:
    """Whether :func:`bn_relu_pool` takes this input and BN: numba present, CPU float32 (N, C, L) with L > 1, a
    training-mode affine ``BatchNorm1d`` with momentum-averaged running statistics (or none kept), outside
    torch.compile / tracing, and no autocast."""
    if numba is None or z.device.type != "cpu" or z.dtype != torch.float32 or z.dim() != 3 or z.shape[2] < 2:
        return False
    if z.shape[0] < 1 or z.shape[1] < 1:  # an empty batch: the eager ops leave the running statistics alone
        return False
    if not (isinstance(bn, torch.nn.BatchNorm1d) and bn.training and bn.affine and bn.momentum is not None):
        return False
    if bn.weight.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return False
    return not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling())


def bn_relu_pool(z: Tensor, bn: torch.nn.BatchNorm1d, pool: int | None) -> Tensor:
    """``max_pool1d(relu(bn(z)), pool, pool)`` for a training-mode ``bn`` (pool None: no pool), fused.

    ``z``: (N, C, L) float32 on the CPU (the conv output); returns (N, C, L // pool) float32 (or (N, C, L)).
    Updates ``bn``'s running statistics as ``BatchNorm1d`` does (momentum average; the running variance takes the
    unbiased batch variance, M / (M - 1)) and counts ``num_batches_tracked``. Gradients reach ``z``,
    ``bn.weight`` and ``bn.bias``. ValueError when :func:`supports` is False for these arguments.
    """
    if not supports(z, bn):
        raise ValueError("bn_relu_pool: needs numba, CPU float32 (N, C, L) input and a training-mode affine BN")
    p = 1 if pool is None else int(pool)
    if p < 1:
        raise ValueError(f"bn_relu_pool: pool must be None or >= 1, got {pool}")
    n, c, length = z.shape
    if length // p < 1:
        raise ValueError(f"bn_relu_pool: {length} positions are fewer than one pool window of {p}")
    zc = z.detach().contiguous()
    mean = torch.empty(c, dtype=torch.float64)
    var = torch.empty(c, dtype=torch.float64)
    with torch_threads():
        _stats(zc.numpy(), mean.numpy(), var.numpy())
    m = n * length
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            mo = bn.momentum
            bn.running_mean.mul_(1 - mo).add_((mo * mean).to(bn.running_mean.dtype))
            bn.running_var.mul_(1 - mo).add_((mo * var * m / max(m - 1, 1)).to(bn.running_var.dtype))
            bn.num_batches_tracked.add_(1)
    invstd = torch.rsqrt(var + bn.eps)
    # The pooled view covers the first W * P positions; floor mode drops the rest from the output, not from the
    # statistics, as the eager ops do.
    return _BnReluPool.apply(z, bn.weight, bn.bias, mean, invstd, p)
