"""BatchNorm's running-statistics update as one Triton launch (torch + triton only).

After a training forward, ``nn.BatchNorm1d`` moves its buffers towards the batch statistics:
running = (1 - f) running + f batch, with the batch variance unbiased (n / (n - 1) times the biased one) and
f = momentum, or f = 1 / num_batches_tracked (a cumulative average) when momentum is None; num_batches_tracked
is incremented first (PyTorch's ``torch.nn.modules.batchnorm._BatchNorm.forward``). As torch ops that update is
about eight small kernels per layer (casts, two scaled sums, two copies, the counter); here it is one launch that
reads the (4, C) stats rows the fused op returns, so it stays CUDA-graph safe (no host read of the counter).

Symbols: C = channels; f = the update factor above; stats rows as in ``conv_bn_relu.finalize_stats``:
stats[0] = batch mean, stats[2] = unbiased batch variance (rows 1 and 3, invstd and count, are not read).

Files: ``_running_stats_kernel`` (the kernel), ``update_running_stats`` (its launcher) and
``reference_update_running_stats`` (the PyTorch reference it is tested against, and the path of CPU and fp64
tensors); ``conv_bn_relu._update_running_stats`` is the ``torch.library`` op that calls them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import INTERPRET, clamp_pow2, use_triton
from ._conv_fwd import cast_out

# fmt: off
# Hand-wrapped on purpose, as in _conv_fwd.py.
# Channels per step on a GPU: 4 per thread of the one warp, so every load is 16 bytes wide (fewer channels than
# threads left them one element, or none, per thread).
RUNNING_BLOCK = 128


@triton.jit
def _running_stats_kernel(mean_ptr, var_ptr, nbt_ptr, stats_ptr, C, momentum, HAS_NBT: tl.constexpr,
                          CUMULATIVE: tl.constexpr, BLOCK_C: tl.constexpr, INTERP: tl.constexpr):
    """One program: num_batches_tracked += 1 (when HAS_NBT), then running_mean / running_var moved by f towards
    stats[0] / stats[2], in fp32, stored in the buffers' dtype. f = momentum, or 1 / num_batches_tracked when
    CUMULATIVE. mean_ptr, var_ptr: (C,) any float dtype; nbt_ptr: (1,) int64 (unused without HAS_NBT);
    stats_ptr: (4, C) fp32."""
    f = momentum
    if HAS_NBT:
        n = tl.load(nbt_ptr) + 1
        tl.store(nbt_ptr, n)
        if CUMULATIVE:
            f = 1.0 / n.to(tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        ok = c < C
        rm = tl.load(mean_ptr + c, mask=ok, other=0.0).to(tl.float32)
        rv = tl.load(var_ptr + c, mask=ok, other=0.0).to(tl.float32)
        bm = tl.load(stats_ptr + c, mask=ok, other=0.0)
        bv = tl.load(stats_ptr + 2 * C + c, mask=ok, other=0.0)
        # cast_out: rounded to nearest even under the interpreter too (it truncates fp32 -> bf16 stores)
        tl.store(mean_ptr + c, cast_out(rm * (1.0 - f) + bm * f, mean_ptr.dtype.element_ty, INTERP), mask=ok)
        tl.store(var_ptr + c, cast_out(rv * (1.0 - f) + bv * f, var_ptr.dtype.element_ty, INTERP), mask=ok)


def _check(running_mean: torch.Tensor, num_batches_tracked: torch.Tensor | None, momentum: float | None) -> None:
    if momentum is None and num_batches_tracked is None:
        raise ValueError("BatchNorm running-statistics update: momentum=None (a cumulative average) needs "
                         "num_batches_tracked")
    if running_mean.dim() != 1:
        raise ValueError(f"BatchNorm running-statistics update: running_mean must be 1-D (C,), got shape "
                         f"{tuple(running_mean.shape)}")


def update_running_stats(running_mean: torch.Tensor, running_var: torch.Tensor,
                         num_batches_tracked: torch.Tensor | None, stats: torch.Tensor,
                         momentum: float | None) -> None:
    """In place, one launch: running_mean / running_var (C,) (any float dtype, contiguous) moved towards
    stats[0] / stats[2] of ``stats`` (4, C) fp32; num_batches_tracked (int64 scalar or (1,)) += 1 when given.
    ``momentum`` None: the cumulative average (needs num_batches_tracked). Raises ValueError on those two
    misuses."""
    _check(running_mean, num_batches_tracked, momentum)
    C = running_mean.shape[0]
    nbt = num_batches_tracked if num_batches_tracked is not None else stats
    wrap_triton(_running_stats_kernel)[(1,)](
        running_mean, running_var, nbt, stats, C, 0.0 if momentum is None else float(momentum),
        HAS_NBT=num_batches_tracked is not None, CUMULATIVE=momentum is None,
        BLOCK_C=clamp_pow2(C, 16 if INTERPRET else RUNNING_BLOCK, 1024), INTERP=INTERPRET, num_warps=1)


def merge_updates(running_mean: torch.Tensor, running_var: torch.Tensor, momentum: float | None) -> bool:
    """Whether the statistics' merge launch (``_conv_fwd.merge_stats``) may apply this update itself (no launch of
    its own): with a momentum (a cumulative average reads num_batches_tracked after the increment, which one program
    of the merge's grid cannot order before the others' reads) and contiguous buffers."""
    return momentum is not None and running_mean.is_contiguous() and running_var.is_contiguous()


def update_running(running_mean: torch.Tensor, running_var: torch.Tensor, num_batches_tracked: torch.Tensor | None,
                   stats: torch.Tensor, momentum: float | None) -> None:
    """``update_running_stats`` where the kernels run (fp32 statistics, contiguous buffers), else the reference."""
    fast = (use_triton(running_mean) and stats.dtype == torch.float32 and running_mean.is_contiguous()
            and running_var.is_contiguous())
    update = update_running_stats if fast else reference_update_running_stats
    update(running_mean, running_var, num_batches_tracked, stats, momentum)


def reference_update_running_stats(running_mean: torch.Tensor, running_var: torch.Tensor,
                                   num_batches_tracked: torch.Tensor | None, stats: torch.Tensor,
                                   momentum: float | None) -> None:
    """``update_running_stats`` with tensor ops only (no host sync), in ``stats``' dtype."""
    _check(running_mean, num_batches_tracked, momentum)
    if num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    dt = stats.dtype
    if momentum is None:  # a device tensor: no host read, no host-to-device copy (CUDA-graph safe)
        f = num_batches_tracked.to(dt).reciprocal()
        new_mean = running_mean.to(dt) * (1 - f) + stats[0] * f
        new_var = running_var.to(dt) * (1 - f) + stats[2] * f
    else:
        new_mean = running_mean.to(dt) * (1 - momentum) + stats[0] * momentum
        new_var = running_var.to(dt) * (1 - momentum) + stats[2] * momentum
    running_mean.copy_(new_mean)
    running_var.copy_(new_var)
