"""Fused Conv1d -> BatchNorm1d -> ReLU (-> MaxPool1d, kernel == stride) as one op.

``conv1d_bn_relu(...)`` equals ``F.max_pool1d(F.relu(F.batch_norm(F.conv1d(x, w, b, stride, padding),
running_mean, running_var, bn_weight, bn_bias, training, momentum, eps)), pool, pool)`` (no pool when
``pool`` is None), including the in-place running-statistics update (unbiased running variance,
``num_batches_tracked`` incremented when given), in training (batch statistics) and eval (running
statistics) mode. The Triton kernels live in ``_conv_fwd.py`` / ``_conv_bwd.py`` (any shape),
``_conv_banded.py`` (a single-channel input) and ``_conv_rows.py`` (channels-last rows); ``_conv_paths.py``
decides which a block runs. This file holds the plain PyTorch reference they are tested against, the
``torch.library`` ops and the public function.

Support matrix (``SUPPORT_MATRIX`` below, also exported by the package):
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.library import triton_op

from ._common import INTERPRET, no_autocast, use_triton
from ._conv_fwd import code_dtype, keeps_zmax, pool_output
from ._conv_paths import (
    as_layout,
    block_pool,
    block_stats,
    chain_rows,
    codes_channels_last,
    conv_bn_relu_backward,
    dx_channels_last,
    forward_input,
    forward_input_shape,
    is_padded_input,
    keeps_z,
    kept_copy,
    kept_z_shape,
    out_chain,
    x_of_kept,
)
from ._conv_rows import kept_z
from .bn_running import reference_update_running_stats, update_running

# fmt: off
# Hand-wrapped on purpose: Triton kernels and launches take 15-30 arguments, and one per line (the
# formatter's layout) would triple these files' length without making them clearer.

SUPPORT_MATRIX = """\
Fused Conv1d -> BatchNorm1d -> ReLU (-> MaxPool1d): `conv1d_bn_relu`, `FusedConv1dBNReLU`, `fuse()`

- Fused: Conv1d (implicit GEMM reducing over C_in x k; a single-channel input with a pool: one GEMM
  row per pool window against a banded weight; C_in x k a multiple of 16 and stride x C_in of 8: the
  input copied channels-last, each GEMM row one contiguous run) + BatchNorm1d + ReLU + optional
  MaxPool1d (kernel == stride, floor mode) in one op; only the (pooled) output is written to memory.
- BN modes: training (batch statistics merged with Welford/Chan; running stats updated in place with
  the unbiased variance, `num_batches_tracked` += 1, `momentum=None` = cumulative average) and eval
  (running statistics). `process_group=`: SyncBatchNorm semantics (counts, means and M2 gathered
  across ranks; the backward's two reductions all-reduced).
- Shapes: any batch, channel count, kernel, stride, zero padding and length (tile and pool remainders
  included); non-contiguous inputs; conv bias optional.
- Dtypes: fp32, bf16, fp16 inputs; fp32 accumulation and statistics; output in the input dtype
  (fp64 inputs take the PyTorch reference, in fp64);
  under `torch.autocast` x and the conv parameters are cast to the autocast dtype on entry.
  fp32 on CUDA follows `torch.backends.cudnn.allow_tf32` (TF32 products by default, like F.conv1d).
- Backward: gradients of x, conv weight and bias, BN weight and bias. Kept for it: the pool's argmax
  offset (int8), for 16-bit inputs the normalised conv output there, and for 16-bit blocks on the
  channels-last row kernels the unpooled conv output (so no pass recomputes the conv); otherwise the
  conv is recomputed. Max-pool ties go to the first index, as in PyTorch. No double backward.
- Chaining: `feeds=` (the next fused block's C_out, kernel, stride, padding, pool) writes the output
  into the zero-padded channels-last buffer that block reads, as a strided view; that block, called
  with `padded_input=True`, reads it without a copy (`SoundNet8(backend="fused")` chains its blocks);
  a view of it cropped in time or channels is copied as usual. `padded_input_buffer` allocates an
  input laid out so (a training loop's static input), read in place when that tensor itself is
  passed with `padded_input=True` (`is_padded_input`). Ignored under `torch.compile`. Without
  `feeds` the output is contiguous.
- Deterministic: `deterministic=True` (default: `torch.are_deterministic_algorithms_enabled()`) uses
  no atomics in the backward's reductions; forward statistics never use atomics.
- Devices: CUDA runs the Triton kernels; CPU runs the PyTorch reference (the Triton kernels in the
  interpreter when the process starts with `TRITON_INTERPRET=1`). Registered with `torch.library`
  (`torch.compile`, `opcheck`); `torch.compile` together with `process_group` is not supported.
- Refused with a clear error (and left alone by `fuse()`): dilation != 1, groups != 1, padding modes
  other than 'zeros', string padding ('same' / 'valid'). `fuse()` also leaves alone pools whose
  kernel != stride or with padding, dilation or ceil_mode; BN with affine=False or
  track_running_stats=False; a BN module used in two places.
"""
__doc__ = (__doc__ or "") + "\n" + SUPPORT_MATRIX

# Process groups cannot be op arguments; ops receive a registry key (0 = none).
_GROUPS: "dict[int, dist.ProcessGroup]" = {}


def _group_key(group: "dist.ProcessGroup | None") -> int:
    if group is None:
        return 0
    _GROUPS[id(group)] = group
    return id(group)


# -------------------------------------------------------------------------------- shared statistics
def finalize_stats(moments: Tensor, eps: float) -> Tensor:
    """(3, C) count / mean / M2 -> (4, C) fp32: mean, invstd, unbiased variance, count."""
    n, mean, m2 = moments[0], moments[1], moments[2]
    invstd = torch.rsqrt(m2 / n + eps)
    unbiased = m2 / (n - 1).clamp(min=1.0)
    return torch.stack([mean, invstd, unbiased, n])


def acc_dtype(x: Tensor) -> torch.dtype:
    """Accumulation / statistics dtype: fp32, or fp64 for fp64 inputs (which take the reference)."""
    return torch.promote_types(x.dtype, torch.float32)


def eval_stats(running_mean: Tensor, running_var: Tensor, eps: float, dtype: torch.dtype = torch.float32) -> Tensor:
    mean = running_mean.to(dtype)
    var = running_var.to(dtype)
    return torch.stack([mean, torch.rsqrt(var + eps), var, torch.zeros_like(mean)])


def _sync_moments(moments: Tensor, key: int) -> Tensor:
    """Merge per-rank (count, mean, M2) with Chan's formula, ranks in a fixed order (SyncBatchNorm
    gathers mean / invstd / count the same way)."""
    group = _GROUPS[key]
    parts = [torch.empty_like(moments) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, moments.contiguous(), group=group)
    allm = torch.stack(parts)
    n, mu, m2 = allm[:, 0], allm[:, 1], allm[:, 2]
    total = n.sum(0)
    mean = (n * mu).sum(0) / total
    return torch.stack([total, mean, m2.sum(0) + (n * (mu - mean) ** 2).sum(0)])


def _all_reduce(key: int):
    if key == 0:
        return None

    def reduce(sums: Tensor) -> Tensor:
        sums = sums.clone()
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=_GROUPS[key])
        return sums

    return reduce


def _out_len(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


# -------------------------------------------------------------------------------------- reference
def _reference_conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> Tensor:
    acc = acc_dtype(x)
    return F.conv1d(x.to(acc), weight.to(acc), bias.to(acc) if bias is not None else None, stride, padding)


def reference_stats(x: Tensor, weight: Tensor, bias: Tensor | None, running_mean: Tensor | None,
                    running_var: Tensor | None, num_batches_tracked: Tensor | None, stride: int, padding: int,
                    eps: float, momentum: float | None, pool: int | None, group: int,
                    padded_input: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``_stats_op`` in plain PyTorch, fp32 (fp64 for fp64 inputs): (stats (4, C_out) rows mean, invstd, unbiased
    variance, count; z: the conv output without bias, kept where the kernels keep it (``keeps_z``, ``kept_z_shape``);
    xp: the padded copy of x the kernels would make for both passes (``forward_input``; empty where they make none
    or read x's chained buffer)); BN's running statistics updated in place as ``bn_running``'s reference does."""
    c_out, k = weight.shape[0], weight.shape[-1]
    t = _out_len(x.shape[-1], k, stride, padding)
    with no_autocast(x.device):
        z = _reference_conv(x, weight, bias, stride, padding)
        var, mean = torch.var_mean(z, dim=(0, 2), correction=0)
        count = torch.full_like(mean, z.shape[0] * z.shape[2])
        moments = torch.stack([count, mean, var * count])
        if group:
            moments = _sync_moments(moments, group)
        stats = finalize_stats(moments, eps)
        kept = x.new_empty(0)
        if keeps_z(x, c_out, k, stride, pool, True):
            kept = kept_z((z - bias.to(z.dtype)[:, None] if bias is not None else z).to(x.dtype))
    xp = x.new_empty(0)
    if forward_input_shape(x, c_out, k, stride, padding, t, pool, padded_input) is not None:
        xp = forward_input(x, c_out, k, stride, padding, t, pool)
    if running_mean is not None and running_var is not None:
        reference_update_running_stats(running_mean, running_var, num_batches_tracked, stats, momentum)
    return stats, kept, xp


def reference_forward(x: Tensor, weight: Tensor, bias: Tensor | None, bn_weight: Tensor, bn_bias: Tensor,
                      stats: Tensor, z: Tensor, xp: Tensor, stride: int, padding: int, training: bool,
                      pool: int | None, deterministic: bool, group: int, out_pad: int = 0, out_rows: int = 0,
                      padded_input: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``_fwd_op`` in plain PyTorch, fp32 (fp64 for fp64 inputs), from the stats rows: (pooled output, window codes,
    zmax, xk: the padded copy of x made here where ``kept_input`` keeps it, else empty), in the kernels' layouts
    (``codes_channels_last``; ``out_chain``: a chained output's buffer zero-padded as the kernels leave it)."""
    c_out, k = weight.shape[0], weight.shape[-1]
    acc = acc_dtype(x)
    with no_autocast(x.device):
        zc = _reference_conv(x, weight, bias, stride, padding)
        y = F.relu((zc - stats[0, :, None]) * (stats[1] * bn_weight.to(acc))[:, None] + bn_bias.to(acc)[:, None])
        code, zmax = torch.empty(0, dtype=torch.int8, device=x.device), x.new_empty(0)
        if pool is not None:
            y, idx = F.max_pool1d(y, pool, pool, return_indices=True)
            start = torch.arange(y.shape[-1], device=x.device) * pool
            code = torch.where(y > 0, idx - start, -1).to(code_dtype(pool))
            if keeps_zmax(x, pool):
                zhat = (zc - stats[0, :, None]) * stats[1, :, None]
                zmax = torch.where(y > 0, zhat.gather(2, idx), 0.0).to(x.dtype)
    out = y.to(x.dtype)
    chain = out_chain(x.shape[1], c_out, k, stride, pool, x.dtype, (out_pad, out_rows) if out_rows else None)
    if chain is not None:  # as ``_conv_fwd.pool_output`` lays it out, the zero rows as the kernels write them
        pad, tp = chain[0], out.shape[-1]
        buf = out.new_zeros((out.shape[0], chain[1], c_out))
        buf[:, pad : pad + tp] = out.transpose(1, 2)
        out = buf[:, pad : pad + tp].transpose(1, 2)
    cl = codes_channels_last(x.shape[1], c_out, k, stride, pool, x.dtype)
    t = _out_len(x.shape[-1], k, stride, padding)
    xk = x.new_empty(0)
    if xp.numel() == 0 and forward_input_shape(x, c_out, k, stride, padding, t, pool, padded_input, kept=True):
        xk = forward_input(x, c_out, k, stride, padding, t, pool)
    return out, as_layout(code, cl), as_layout(zmax, cl), xk


def reference_backward(grad_out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, bn_weight: Tensor,
                       stats: Tensor, code: Tensor, out: Tensor | None, z: Tensor, xk: Tensor, stride: int,
                       padding: int, training: bool, pool: int | None, deterministic: bool, group: int,
                       input_grad: bool, padded_input: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Plain PyTorch backward from the same saved tensors as the Triton backward (it reads x, a view of ``xk``
    where the forward kept its padded copy, and recomputes the conv: ``z``,
    the forward's stored conv output, is not read); outputs as ``_bwd_op``'s."""
    acc = acc_dtype(x)
    with no_autocast(x.device):
        xf, wf = x.to(acc), weight.to(acc)
        z = F.conv1d(xf, wf, bias.to(acc) if bias is not None else None, stride, padding)
        zhat = (z - stats[0, :, None]) * stats[1, :, None]
        if pool is None:
            gy = grad_out.to(acc) * (out > 0)
        else:
            tp = code.shape[-1]
            gy = torch.zeros_like(z)
            pos = torch.arange(tp, device=x.device) * pool + code.long().clamp(min=0)
            gy[..., : tp * pool].scatter_(2, pos, grad_out.to(acc) * (code >= 0))
        local = torch.stack([gy.sum((0, 2)), (gy * zhat).sum((0, 2))])
        scale = (stats[1] * bn_weight.to(acc))[:, None]
        if training:
            reduce = _all_reduce(group)
            sums = reduce(local) if reduce is not None else local
            gz = scale * (gy - (sums[0] / stats[3])[:, None] - zhat * (sums[1] / stats[3])[:, None])
        else:
            gz = scale * gy
        dx, dw, db = torch.ops.aten.convolution_backward(
            gz, xf, wf, [weight.shape[0]] if bias is not None else None, [stride], [padding], [1], False,
            [0], 1, [input_grad, True, bias is not None])
        cl = dx_channels_last(x.shape[1], weight.shape[0], weight.shape[-1], stride, pool, x.dtype)
        return (as_layout(dx.to(x.dtype), cl) if input_grad else x.new_empty(0), dw.to(weight.dtype),
                db.to(bias.dtype) if bias is not None else weight.new_empty(0),
                local.to(bn_weight.dtype))


# -------------------------------------------------------------------------------------------- ops
@triton_op("soundnet_fast::conv1d_bn_stats_", mutates_args=("running_mean", "running_var", "num_batches_tracked"))
def _stats_op(x: Tensor, weight: Tensor, bias: Tensor | None, running_mean: Tensor | None,
              running_var: Tensor | None, num_batches_tracked: Tensor | None, stride: int, padding: int, eps: float,
              momentum: float | None, pool: int | None, group: int,
              padded_input: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Training's statistics pass (``_conv_paths.block_stats``), called on detached tensors: the fused op's
    backward differentiates through the batch statistics itself. Outputs: stats (4, C_out) fp32 rows mean, invstd,
    unbiased variance, count (fp64 for fp64 inputs); z: the conv output without bias, kept for the pool pass and
    the backward by 16-bit forwards on the row kernels (``_conv_paths.keeps_z``; empty otherwise); xp: the padded
    copy of x both passes read (``forward_input``; empty where none is made). In place: BN's running statistics
    (when given), updated by the statistics' merge launch (``bn_running.merge_updates``), num_batches_tracked + 1.
    A separate op because it mutates: an op with autograd may not."""
    if not use_triton(x) or x.dtype == torch.float64:  # the kernels accumulate in fp32
        return reference_stats(x, weight, bias, running_mean, running_var, num_batches_tracked, stride, padding, eps,
                               momentum, pool, group, padded_input)
    c_out, c_in, k = weight.shape
    w2d = weight.reshape(c_out, c_in * k).contiguous()
    t = _out_len(x.shape[-1], k, stride, padding)
    # a process group: per-rank moments, merged across ranks, then finalised
    sync = (lambda moments: finalize_stats(_sync_moments(moments, group), eps)) if group else None
    running = None
    if running_mean is not None and running_var is not None:
        running = (running_mean, running_var, num_batches_tracked, momentum)
    stats, z, xp = block_stats(x, w2d, bias, k, stride, padding, t, pool, eps, sync, padded_input, running)
    return stats, z, xp if xp is not None else x.new_empty(0)


@_stats_op.register_fake
def _stats_fake(x, weight, bias, running_mean, running_var, num_batches_tracked, stride, padding, eps, momentum,
                pool, group, padded_input=False):
    c_out, k = weight.shape[0], weight.shape[-1]
    t = _out_len(x.shape[-1], k, stride, padding)
    keep = keeps_z(x, c_out, k, stride, pool, True)
    z = x.new_empty(kept_z_shape(x.shape[0], t, c_out) if keep else (0,))
    xp = x.new_empty(forward_input_shape(x, c_out, k, stride, padding, t, pool, padded_input) or (0,))
    return x.new_empty((4, c_out), dtype=acc_dtype(x)), z, xp


@triton_op("soundnet_fast::conv1d_bn_relu", mutates_args=())
def _fwd_op(x: Tensor, weight: Tensor, bias: Tensor | None, bn_weight: Tensor, bn_bias: Tensor, stats: Tensor,
            z: Tensor, xp: Tensor, stride: int, padding: int, training: bool, pool: int | None, deterministic: bool,
            group: int, out_pad: int = 0, out_rows: int = 0,
            padded_input: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The pool pass (``_conv_paths.block_pool``) from the stats rows (``_stats_op``'s in training, eval mode's from
    the running statistics) and the statistics pass's z and xp (empty in eval). Outputs: pooled (or plain) output
    (chained to the next block where ``out_rows`` > 0 and ``out_chain`` says so: the next block's ``chain_rows``
    (out_pad, out_rows)), pool window codes (int8; empty without pool), zmax (the normalised conv output at each
    window's maximum, 0 where the output is 0, in x.dtype; empty without pool or with 32- / 64-bit inputs,
    ``keeps_zmax``), xk: a padded copy of x made here (eval) that the backward reuses (``kept_input``; empty
    otherwise). ``deterministic`` is for backward."""
    if not use_triton(x) or x.dtype == torch.float64:  # the kernels accumulate in fp32
        return reference_forward(x, weight, bias, bn_weight, bn_bias, stats, z, xp, stride, padding, training, pool,
                                 deterministic, group, out_pad, out_rows, padded_input)
    c_out, c_in, k = weight.shape
    w2d = weight.reshape(c_out, c_in * k).contiguous()
    t = _out_len(x.shape[-1], k, stride, padding)
    return block_pool(x, w2d, bias, bn_weight, bn_bias, stats, k, stride, padding, t, pool,
                      xp if xp.numel() else None, z, (out_pad, out_rows) if out_rows else None, padded_input)


@_fwd_op.register_fake
def _fwd_fake(x, weight, bias, bn_weight, bn_bias, stats, z, xp, stride, padding, training, pool, deterministic,
              group, out_pad=0, out_rows=0, padded_input=False):
    c_out, k = weight.shape[0], weight.shape[-1]
    t = _out_len(x.shape[-1], k, stride, padding)
    tp = t // pool if pool is not None else t
    shape = (x.shape[0], c_out, tp)
    cl = codes_channels_last(x.shape[1], c_out, k, stride, pool, x.dtype)
    chain = out_chain(x.shape[1], c_out, k, stride, pool, x.dtype, (out_pad, out_rows) if out_rows else None)
    out = pool_output(x.shape[0], c_out, tp, x.dtype, x.device, chain)[0]
    code = as_layout(x.new_empty(shape if pool is not None else (0,), dtype=code_dtype(pool or 1)), cl)
    zmax = as_layout(x.new_empty(shape if keeps_zmax(x, pool) else (0,)), cl)
    kept = forward_input_shape(x, c_out, k, stride, padding, t, pool, padded_input, kept=True)
    return out, code, zmax, x.new_empty(kept if kept is not None and xp.numel() == 0 else (0,))


@triton_op("soundnet_fast::conv1d_bn_relu_backward", mutates_args=())
def _bwd_op(grad_out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, bn_weight: Tensor,
            stats: Tensor, code: Tensor, out: Tensor | None, z: Tensor, xk: Tensor, stride: int, padding: int,
            training: bool, pool: int | None, deterministic: bool, group: int, input_grad: bool,
            padded_input: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx (empty without ``input_grad``), dW, db (empty without a bias), dbn (2, C_out): BatchNorm's dbeta =
    sum(gy) and dgamma = sum(gy * zhat) of this process, one tensor so that no copy separates them). ``out``:
    what the forward saved beside the codes, its output without a pool, zmax with one; ``z``: the forward's
    stored conv output (empty unless ``keeps_z``); ``xk``: the forward's padded copy of x (empty unless
    ``kept_input``; x is then a view of it); ``padded_input``: as the forward's (x's chained buffer read again,
    ``reused_input``, where the forward kept no copy)."""
    if not use_triton(x) or x.dtype == torch.float64:
        return reference_backward(grad_out, x, weight, bias, bn_weight, stats, code, out, z, xk, stride, padding,
                                  training, pool, deterministic, group, input_grad, padded_input)
    c_out, c_in, k = weight.shape
    w2d = weight.reshape(c_out, c_in * k).contiguous()
    t = _out_len(x.shape[-1], k, stride, padding)
    dx, dw, db, dbn = conv_bn_relu_backward(
        grad_out, x, w2d, bias, bn_weight, stats, code, out, k, stride, padding, t, pool, training,
        deterministic, input_grad, _all_reduce(group), z, xk, padded_input)
    return (dx if dx is not None else x.new_empty(0), dw.reshape(weight.shape).to(weight.dtype),
            db.to(bias.dtype) if db is not None else weight.new_empty(0), dbn.to(bn_weight.dtype))


@_bwd_op.register_fake
def _bwd_fake(grad_out, x, weight, bias, bn_weight, stats, code, out, z, xk, stride, padding, training, pool,
              deterministic, group, input_grad, padded_input=False):
    cl = dx_channels_last(x.shape[1], weight.shape[0], weight.shape[-1], stride, pool, x.dtype)
    return (as_layout(x.new_empty(x.shape if input_grad else (0,)), cl), torch.empty_like(weight),
            torch.empty_like(bias) if bias is not None else weight.new_empty(0),
            bn_weight.new_empty((2, bn_weight.shape[0])))


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, bn_weight, _, stats, z, xp, stride, padding, training, pool, deterministic, group = inputs[:14]
    padded = inputs[16]
    out, code, zmax, xk = output
    ctx.mark_non_differentiable(code, zmax, xk)
    # Saved: the input (or, where the backward reuses it, the padded copy of it one of the passes made: x is then a
    # view of the copy), parameters, per-channel stats, the pool's int8 argmax offsets and zmax (pooled size: the BN
    # sums need no recompute), the output only without a pool (ReLU's mask; it is the next layer's input anyway),
    # and z, the unpooled conv output, only where keeps_z says it pays (16-bit, row kernels).
    xk = kept_copy(x, weight.shape[0], weight.shape[-1], stride, pool, xk, xp)
    kept = xk.numel() > 0
    ctx.save_for_backward(xk if kept else x, weight, bias, bn_weight, stats, code, out if pool is None else zmax, z)
    ctx.conf = (stride, padding, training, pool, deterministic, group, kept, x.shape[-1], padded)


def _backward(ctx, grad_out, _grad_code, _grad_zmax, _grad_xk):
    x, weight, bias, bn_weight, stats, code, out, z = ctx.saved_tensors
    stride, padding, training, pool, deterministic, group, kept, length, padded = ctx.conf
    xk = x if kept else x.new_empty(0)
    x = x_of_kept(xk, length, padding) if kept else x
    dx, dw, db, dbn = _bwd_op(grad_out, x, weight, bias, bn_weight, stats, code, out, z, xk, stride, padding,
                              training, pool, deterministic, group, ctx.needs_input_grad[0], padded)
    dbeta, dgamma = dbn.unbind(0)
    return (dx if ctx.needs_input_grad[0] else None, dw, db if bias is not None else None, dgamma, dbeta,
            *(None,) * 12)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)
if not INTERPRET:  # CPU tensors run the reference; under TRITON_INTERPRET=1 they run the Triton body
    _stats_op.register_kernel("cpu")(reference_stats)
    _fwd_op.register_kernel("cpu")(reference_forward)
    _bwd_op.register_kernel("cpu")(reference_backward)


@torch.library.custom_op("soundnet_fast::bn_update_running_stats_",
                         mutates_args=("running_mean", "running_var", "num_batches_tracked"))
def _update_running_stats(running_mean: Tensor, running_var: Tensor, num_batches_tracked: Tensor | None,
                          stats: Tensor, momentum: float | None) -> None:
    """nn.BatchNorm1d's update (``bn_running.py``) as an op of its own: one Triton launch where the op runs the
    kernels, the PyTorch reference elsewhere (CPU, fp64 statistics, non-contiguous buffers). The fused block runs
    it inside ``_stats_op`` (in the merge launch where it may)."""
    update_running(running_mean, running_var, num_batches_tracked, stats, momentum)


@_update_running_stats.register_fake
def _update_fake(running_mean, running_var, num_batches_tracked, stats, momentum) -> None:
    return None


# ------------------------------------------------------------------------------------ public function
def _as_int(value: int | tuple[int, ...] | str, name: str) -> int:
    if isinstance(value, str):
        raise ValueError(f"conv1d_bn_relu: string {name} {value!r} is not supported; pass an int "
                         "(see SUPPORT_MATRIX)")
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError(f"conv1d_bn_relu: {name} must be an int or a 1-tuple, got {value!r}")
        value = value[0]
    return int(value)


def conv1d_bn_relu(x: Tensor, conv_weight: Tensor, conv_bias: Tensor | None, bn_weight: Tensor | None,
                   bn_bias: Tensor | None, running_mean: Tensor | None, running_var: Tensor | None, *,
                   stride: int | tuple[int], padding: int | tuple[int], training: bool,
                   momentum: float | None = 0.1, eps: float = 1e-5, pool: int | None = None,
                   process_group: "dist.ProcessGroup | None" = None, num_batches_tracked: Tensor | None = None,
                   deterministic: bool | None = None, feeds: "tuple[int, int, int, int, int | None] | None" = None,
                   padded_input: bool = False) -> Tensor:
    """``max_pool1d(relu(batch_norm(conv1d(x, ...))), pool, pool)`` in one fused op (see the module
    docstring and ``SUPPORT_MATRIX``). ``x`` is (N, C_in, L); ``conv_weight`` (C_out, C_in, k).
    In training, ``running_mean`` / ``running_var`` (when given) are updated in place and
    ``num_batches_tracked`` (when given) incremented; with ``process_group`` the batch statistics and
    the backward's reductions span all its ranks (SyncBatchNorm). ``deterministic=None`` follows
    ``torch.are_deterministic_algorithms_enabled()``.

    Chaining two fused blocks (no copy of the activation between them): ``feeds`` = (C_out, kernel, stride,
    padding, pool) of the fused block that reads this output directly; where both blocks run the kernels that
    chain (``_conv_paths.chain_rows`` / ``out_chain``) the output is written into the zero-padded channels-last
    buffer that block reads (the output is a strided view of it), else it is contiguous. Call that block with
    ``padded_input=True``: it then reads the buffer around x, which the caller vouches holds the zeros written
    there: pass it the output itself or a view of it cropped in batch, to the block named in ``feeds`` (a view
    cropped in time or channels has other strides for that block and is copied, as is any x without the chained
    layout; a view with that layout over another buffer is trusted). ``padded_input=True`` also reads in place an
    x that ``padded_input_buffer`` made for this block: that tensor itself (for a waveform, any view of it is
    copied). The chained output is a view: ``reshape`` works on it, ``view`` across its dimensions does not.
    Under ``torch.compile`` both are ignored."""
    stride, padding = _as_int(stride, "stride"), _as_int(padding, "padding")
    if x.dim() != 3:
        raise ValueError(f"conv1d_bn_relu expects x shaped (batch, channels, length), got {tuple(x.shape)}")
    if conv_weight.dim() != 3 or conv_weight.shape[1] != x.shape[1]:
        raise ValueError(f"conv1d_bn_relu: weight {tuple(conv_weight.shape)} does not match input channels "
                         f"{x.shape[1]} (groups != 1 is not supported)")
    if stride < 1 or padding < 0:
        raise ValueError(f"conv1d_bn_relu: need stride >= 1 and padding >= 0, got {stride}, {padding}")
    if pool is not None and int(pool) < 1:
        raise ValueError(f"conv1d_bn_relu: pool must be None or >= 1, got {pool}")
    if pool is not None and int(pool) == 1:
        pool = None  # max_pool1d(y, 1, 1) is y
    c_out, _, k = conv_weight.shape
    t = _out_len(x.shape[-1], k, stride, padding)
    if x.shape[0] == 0 or t < 1 or (pool is not None and t // pool < 1):
        raise ValueError(f"conv1d_bn_relu: input {tuple(x.shape)} is too short or empty for kernel {k}, "
                         f"stride {stride}, padding {padding}, pool {pool}")
    if training and x.shape[0] * t == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got conv output size "
                         f"{(x.shape[0], c_out, t)}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("conv1d_bn_relu: eval mode (training=False) needs running_mean and running_var")
    if momentum is None and training and running_mean is not None and num_batches_tracked is None:
        raise ValueError("conv1d_bn_relu: momentum=None (cumulative average) needs num_batches_tracked")
    dev = x.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev) and x.dtype != torch.float64:
        dt = torch.get_autocast_dtype(dev)  # conv runs in autocast's lower precision, as F.conv1d would
        x, conv_weight = x.to(dt), conv_weight.to(dt)
        conv_bias = conv_bias.to(dt) if conv_bias is not None else None
    if padded_input and x.shape[1] == 1 and not is_padded_input(x):
        padded_input = False  # a waveform is read in place only as padded_input_buffer made it (waveform_input)
    if conv_weight.dtype != x.dtype or (conv_bias is not None and conv_bias.dtype != x.dtype):
        raise TypeError(f"conv1d_bn_relu: input dtype {x.dtype} and conv weight/bias dtypes "
                        f"{conv_weight.dtype} differ (as in F.conv1d; use torch.autocast to mix)")
    if bn_weight is None:
        bn_weight = torch.ones(c_out, device=x.device, dtype=torch.float32)
    if bn_bias is None:
        bn_bias = torch.zeros(c_out, device=x.device, dtype=torch.float32)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    group = _group_key(process_group) if training else 0
    chain = None
    if torch.compiler.is_compiling():
        # torch.compile's functionalisation sees the pool kernel write the output view only (it may clone it densely,
        # and the zero rows around it lie outside it): chaining is for eager and CUDA-graph runs
        feeds, padded_input = None, False
    if feeds is not None:
        nc, nk, ns, npad, npool = (int(v) if v is not None else None for v in feeds)
        chain = chain_rows(c_out, t // pool if pool is not None else t, nc, nk, ns, npad, npool, x.dtype)
    out_pad, out_rows = chain if chain is not None else (0, 0)
    pool = None if pool is None else int(pool)
    momentum = None if momentum is None else float(momentum)
    if training:  # the statistics (and the running ones' update) on detached tensors: the backward covers them
        track = running_mean is not None and running_var is not None
        b0 = conv_bias.detach() if conv_bias is not None else None
        stats, z, xp = _stats_op(x.detach(), conv_weight.detach(), b0, running_mean if track else None,
                                 running_var if track else None, num_batches_tracked if track else None, stride,
                                 padding, float(eps), momentum, pool, group, bool(padded_input))
    else:
        stats, z, xp = eval_stats(running_mean, running_var, eps, acc_dtype(x)), x.new_empty(0), x.new_empty(0)
    return _fwd_op(x, conv_weight, conv_bias, bn_weight, bn_bias, stats, z, xp, stride, padding, bool(training), pool,
                   bool(deterministic), group, out_pad, out_rows, bool(padded_input))[0]
