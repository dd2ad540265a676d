"""Inputs a fused block reads in place: ``padded_input_buffer`` puts x inside the zero-padded buffer the block's
kernels read (docs/design.md#convolution: the layout a chained block writes its output into), so the block makes
no padded copy of it; ``is_padded_input`` says whether a tensor is exactly such an x, so a model passes
``padded_input=True`` for it and for nothing else.

A training loop that reuses one input tensor (a CUDA graph's static input) allocates it here once and copies each
batch into it: the zeros around it are written once, and the first block's pad (SoundNet-8, bf16, batch 64 of 20 s
clips: a 113 MB pass per step) is gone.
"""

from __future__ import annotations

import torch

from ._conv_paths import input_rows, is_padded_input, register_padded_input

__all__ = ["is_padded_input", "padded_input_buffer"]


def padded_input_buffer(
    batch: int,
    channels: int,
    length: int,
    conv: tuple[int, int, int, int, int | None],
    dtype: torch.dtype,
    device: torch.device | str,
) -> torch.Tensor:
    """A zeroed input x (batch, channels, length) for a fused block of geometry ``conv`` = (C_out, kernel, stride,
    padding, pool), laid out inside the zero-padded buffer the block's kernels read (``_conv_paths.input_rows``:
    (batch, LP) for a waveform on the banded kernels, (batch, LP, channels) channels-last for the row kernels) where
    the block reads one; a contiguous tensor otherwise. ``dtype``: the one the block runs in (under autocast, the
    autocast dtype: the op's cast would make a new tensor, which it pads as usual). Write x in place
    (``x.copy_(batch)``): the rows around it stay zero. Pass x itself, not a view of it, with ``padded_input=True``
    (``is_padded_input(x)``). Raises ValueError on a non-positive size or an invalid ``conv``."""
    if min(batch, channels, length) < 1:
        raise ValueError(f"padded_input_buffer: need positive sizes, got ({batch}, {channels}, {length})")
    if not isinstance(conv, (tuple, list)) or len(conv) != 5:
        raise ValueError(f"padded_input_buffer: conv must be (C_out, kernel, stride, padding, pool), got {conv!r}")
    c_out, k, stride, padding, pool = conv
    ints = (c_out, k, stride, padding) + (() if pool is None else (pool,))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
        raise ValueError(f"padded_input_buffer: conv's entries must be Python ints (pool may be None), got {conv!r}")
    if min(c_out, k, stride) < 1 or padding < 0 or (pool is not None and pool < 1):
        raise ValueError(f"padded_input_buffer: need C_out, kernel, stride, pool >= 1 and padding >= 0, got {conv!r}")
    rows = input_rows(channels, length, c_out, k, stride, padding, pool, dtype)
    if rows is None:
        return torch.zeros((batch, channels, length), dtype=dtype, device=device)
    pad, lp = rows
    if channels == 1:
        x = torch.zeros((batch, lp), dtype=dtype, device=device)[:, pad : pad + length].unsqueeze(1)
    else:
        x = torch.zeros((batch, lp, channels), dtype=dtype, device=device)[:, pad : pad + length].transpose(1, 2)
    register_padded_input(x)
    return x
