"""Inputs a fused block reads in place: ``padded_input_buffer`` puts x inside the zero-padded buffer the block's
kernels read (docs/design.md#convolution: the layout a chained block writes its output into), so the block makes
no padded copy of it; ``is_padded_input`` says whether a tensor is exactly such an x, so a model passes
``padded_input=True`` for it and for nothing else.

A training loop that reuses one input tensor (a CUDA graph's static input) allocates it here once and copies each
batch into it: the zeros around it are written once, and the first block's pad (SoundNet-8, bf16, batch 64 of 20 s
clips: a 113 MB pass per step) is gone.
"""

from __future__ import annotations

import weakref

import torch

from ._conv_paths import input_rows

_MADE: dict[int, weakref.ref] = {}  # id(x) -> x, for every x padded_input_buffer returned that is still alive


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
    the block reads one; a contiguous tensor otherwise. Write x in place (``x.copy_(batch)``): the rows around it
    stay zero, and ``is_padded_input(x)`` holds. Raises ValueError on a non-positive size."""
    if min(batch, channels, length) < 1:
        raise ValueError(f"padded_input_buffer: need positive sizes, got ({batch}, {channels}, {length})")
    c_out, k, stride, padding, pool = conv
    rows = input_rows(channels, length, c_out, k, stride, padding, pool, dtype)
    if rows is None:
        return torch.zeros((batch, channels, length), dtype=dtype, device=device)
    pad, lp = rows
    if channels == 1:
        x = torch.zeros((batch, lp), dtype=dtype, device=device)[:, pad : pad + length].unsqueeze(1)
    else:
        x = torch.zeros((batch, lp, channels), dtype=dtype, device=device)[:, pad : pad + length].transpose(1, 2)
    key = id(x)
    _MADE[key] = weakref.ref(x, lambda _, key=key: _MADE.pop(key, None))
    return x


def is_padded_input(x: torch.Tensor) -> bool:
    """Whether x is a tensor ``padded_input_buffer`` returned (itself, not a view or copy of it): its caller may
    pass ``padded_input=True`` to the block it was made for."""
    ref = _MADE.get(id(x))
    return ref is not None and ref() is x
