"""The numba form of :func:`soundnet_fast.inference.cpu_conv.conv_pool_relu` (optional: needs numba).

The padded input is split into ``H = stride * pool`` phases, ``xh[b, c, ph, q] = xpad[b, c, H * q + ph]``, so
the input of conv position ``r`` of pooled frame ``p`` at tap ``j`` is ``xh[.., (stride * r + j) % H,
p + (stride * r + j) // H]``: contiguous in ``p``. The kernel runs in parallel over (batch, group of output
channels, tile of pooled frames); for each of the ``pool`` positions it accumulates the conv sums of the tile over
``C_in x k`` in sequential tap order (``fastmath=False``: no reassociation, no FMA contraction), takes the running
max, and writes only the pooled tile, with bias and ReLU. Compiled on first use and cached on disk
(``cache=True``); importing this module without numba raises ImportError.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from soundnet_fast.numba_threads import torch_threads

TILE = 1024  # pooled frames per task: measured best of 64..4096 for conv1 on the project's 2-core CPU machine


@numba.njit(parallel=True, fastmath=False, cache=True)
def _kernel(xh, w, bias, out, stride, pool, tile, group):  # pragma: no cover - compiled
    batch, c_in, hop, _ = xh.shape
    c_out, _, k = w.shape
    pooled = out.shape[2]
    tiles = (pooled + tile - 1) // tile
    groups = c_out // group
    for job in numba.prange(batch * groups * tiles):
        bi = job // (groups * tiles)
        g0 = (job // tiles) % groups * group
        p0 = (job % tiles) * tile
        n = min(tile, pooled - p0)
        acc = np.empty((group, tile), np.float32)
        best = np.full((group, tile), -np.inf, np.float32)
        for r in range(pool):
            acc[:] = 0.0
            for ci in range(c_in):
                for j in range(k):
                    s = stride * r + j
                    xs = xh[bi, ci, s % hop, p0 + s // hop : p0 + s // hop + n]
                    for g in range(group):
                        wv = w[g0 + g, ci, j]
                        a = acc[g]
                        for t in range(n):
                            a[t] += wv * xs[t]
            for g in range(group):
                for t in range(n):
                    v = acc[g, t]
                    if v > best[g, t] or v != v:  # a NaN wins and stays, as in max_pool1d
                        best[g, t] = v
        for g in range(group):
            for t in range(n):
                v = best[g, t] + bias[g0 + g]
                out[bi, g0 + g, p0 + t] = v if (v > 0.0 or v != v) else 0.0


def conv_pool_relu(x: Tensor, w: Tensor, b: Tensor | None, stride: int, padding: int, pool: int | None) -> Tensor:
    """See :func:`soundnet_fast.inference.cpu_conv.conv_pool_relu` (inputs already checked there)."""
    pool = pool or 1
    batch, c_in, length = x.shape
    c_out, _, k = w.shape
    frames = (length + 2 * padding - k) // stride + 1
    pooled = max(0, frames // pool)
    hop = stride * pool
    q = pooled + ((pool - 1) * stride + k + hop - 1) // hop  # phase length covering every window
    # Zero padding on the left, zeros (or a cut) on the right to exactly hop * q samples: no window reads past it.
    xp = F.pad(x.detach(), (padding, max(0, hop * q - length - padding)))[..., : hop * q]
    xh = xp.reshape(batch, c_in, q, hop).transpose(2, 3).contiguous().numpy()
    out = np.empty((batch, c_out, pooled), np.float32)
    bias = (b.detach() if b is not None else w.new_zeros(c_out)).contiguous().numpy()
    group = 4 if c_out % 4 == 0 else 1
    if pooled:
        with torch_threads():  # as many numba threads as torch uses, and torch's count left as it was
            _kernel(xh, w.detach().contiguous().numpy(), bias, out, stride, pool, TILE, group)
    return torch.from_numpy(out)
