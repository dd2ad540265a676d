"""CPU float32 conv1d -> max-pool -> ReLU for inference, with BatchNorm already folded into the conv.

``conv_pool_relu(x, w, b, stride, padding, pool)`` equals ``relu(max_pool1d(conv1d(x, w, b, stride, padding),
pool, pool))`` (max-pool in floor mode with kernel == stride, as every pooled layer of docs/design.md#model) within
fp32 summation-order error, and never writes the unpooled output to memory as a whole. Max-pool commutes with a
per-channel bias and with ReLU (both monotone), so the pool runs on the raw conv sums and bias + ReLU on the
pooled output (1 / pool of the conv's).

Implementations (``impl``):

- ``"gemm"`` (pure torch): a polyphase GEMM. Pooled frame ``p`` reads the input window ``[H * p, H * p + W)``
  with hop ``H = stride * pool`` and width ``W = (pool - 1) * stride + k``; its ``pool`` conv positions are that
  window times one (pool * C_out) x (C_in * W) matrix holding ``w`` shifted by ``stride * r`` in row block ``r``
  (zeros elsewhere, :func:`polyphase_weight`). In chunks that stay in cache: copy the overlapping windows
  (``W / H`` times the input: 4.9x for conv1), GEMMs with M = pool * C_out (128 for conv1, where oneDNN's
  direct conv sees C_in = 1 and 16 outputs), eight to a batched ``matmul``, then the max over the ``pool`` row
  blocks. It spends ``W / k`` times the conv's FLOPs (1.22x for conv1, 1.44x for conv2) to run them in a BLAS
  kernel.
- ``"numba"``: a fused numba kernel (:mod:`soundnet_fast.inference.cpu_conv_numba`), never the unpooled output
  in memory; optional (numba comes with the ``eval`` extra, through librosa) and only used when asked for.
- ``"cl"`` (pure torch): the conv as oneDNN's 2-D convolution over a channels-last (N, C, 1, T) view, then
  ``F.max_pool2d`` and ReLU in place. It returns (B, C_out, P) as a view of a channels-last tensor (strides
  ``(P * C_out, 1, C_out)``: time-major, channels contiguous; for one input channel oneDNN may keep the plain
  layout), which the next ``"cl"`` layer reads without a copy; ``.contiguous()`` gives the usual layout.
  oneDNN's 1-D path (``F.conv1d``) runs these shapes 1.3-3x slower.
- ``"torch"``: :func:`reference`, ``F.conv1d`` + ``F.max_pool1d`` + ``F.relu``.
- ``"auto"``: :func:`pick`: ``"gemm"`` for a pooled conv of one input channel (the waveform conv: oneDNN's weak
  case), else ``"cl"``; the fast forms are inference-only, so a call that needs a gradient takes ``"torch"``.

Measured on the project's 2-core CPU machine (AMD EPYC, AVX2 + FMA, no AVX-512; torch 2.13 with MKL and
oneDNN 3.12; torch threads = 2; 10 s clips; medians of interleaved runs at load average < 1.5; the spread is
between runs), clips/s for SoundNet-8's conv1 + max-pool + ReLU at batch 1 / 16: ``torch`` 60-90 / 54-69,
``gemm`` 170-300 / 165-240, ``numba`` (fastmath off, tiles of 1024 pooled frames) 127-175 / 138-155,
``torch.compile`` of the reference (inductor, 13 s to compile) 83 / 62; ``cl`` ~75 / -. conv2 (C_in 16), ms at
batch 1 / 16: ``cl`` 2.4 / 45, ``gemm`` 3.9 / 61, ``torch`` 5.2 / 89; conv3-conv5: ``cl`` 0.33-0.41 / 3.7-4.5,
``torch`` 0.44-0.67 / 4.8-7.0, ``gemm`` 0.70-1.6 / 8.5-23 (2026-11-30, same machine, one run).
Batches of 8 GEMMs per ``matmul`` beat one multithreaded ``mm`` per chunk by 1.1-1.5x; variants that cut the
waste (the pool split into 2 or 4 narrower GEMMs), changed the layout (``X @ W^T`` with the max over a middle
dimension) or the parallelism (two Python threads at one torch thread each), or used a space-to-depth conv1d with
pool * C_out outputs measured slower or equal.
``bench/test_extract_bench.py`` re-measures conv1's forms (groups ``conv1+pool+relu cpu``) and the whole
extraction. Only CPU float32 tensors are accepted: anything else raises ValueError.
"""

from __future__ import annotations

import weakref
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Impl = Literal["auto", "cl", "gemm", "numba", "torch"]
IMPLS: tuple[str, ...] = ("auto", "cl", "gemm", "numba", "torch")

# Pooled frames per GEMM and GEMMs per batched matmul: measured best for conv1 and conv2 of 128..2048 frames,
# 1..16 per call, and one mm per chunk, on that machine.
CHUNK_FRAMES = 256
GROUP = 8
# "auto" takes the GEMM form when its wasted FLOPs, W / k - 1, stay within half: (pool - 1) * stride <= k / 2.
MAX_WASTE = 0.5


def pick(k: int, stride: int, pool: int | None, c_in: int) -> str:
    """The form ``impl="auto"`` runs for a layer: ``"gemm"`` for a pooled conv of one input channel whose
    polyphase GEMM wastes at most :data:`MAX_WASTE` of its FLOPs (SoundNet-8's and SoundNet-5's conv1), else
    ``"cl"`` (figures in the module doc)."""
    if c_in == 1 and pool is not None and pool >= 2 and (pool - 1) * stride <= MAX_WASTE * k:
        return "gemm"
    return "cl"


def numba_available() -> bool:
    """True when numba imports (the optional ``impl="numba"`` form needs it)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def reference(x: Tensor, w: Tensor, b: Tensor | None, stride: int, padding: int, pool: int | None = None) -> Tensor:
    """``relu(max_pool1d(conv1d(x, w, b, stride, padding), pool, pool))`` with PyTorch's ops (pool None: none)."""
    y = F.conv1d(x, w, b, stride, padding)
    if pool is not None:
        y = F.max_pool1d(y, pool, pool)
    return F.relu(y)


def conv_pool_relu(
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    stride: int,
    padding: int,
    pool: int | None = None,
    *,
    impl: Impl = "auto",
) -> Tensor:
    """ReLU of the max-pooled (kernel = stride = ``pool``, floor mode) conv1d of ``x``; ``pool`` None: no pool.

    ``x``: (B, C_in, L) float32 on the CPU; ``w``: (C_out, C_in, k); ``b``: (C_out,) or None; ``stride``,
    ``padding`` in samples (zero padding both sides). Returns (B, C_out, P) float32 (contiguous, except
    ``"cl"``'s channels-last view; see the module docstring), with
    ``P = T // pool`` (``T = (L + 2 padding - k) // stride + 1``) or ``T`` without a pool. Matches :func:`reference`
    within fp32 summation-order error (max|a - b| <= 1e-5 max|b| is what the tests check). ``impl``: see the
    module docstring; ``"auto"`` is :func:`pick`'s choice for the layer; an input too short for one pooled
    frame, or a call that needs a gradient, runs :func:`reference`.

    Raises ValueError for a tensor that is not float32 on the CPU, for wrong ranks or shapes, for non-positive
    ``stride`` / ``pool`` or negative ``padding``, for an unknown ``impl``, for ``impl="numba"`` without numba, and
    for ``impl="gemm"`` / ``"numba"`` when a gradient is needed; PyTorch's RuntimeError when the input is too short
    for one pooled frame (as :func:`reference`).
    """
    _check(x, w, b, stride, padding, pool, impl)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, b))
    if grad and impl in ("gemm", "numba"):
        raise ValueError(f"impl={impl!r} is inference-only (no autograd): use 'auto' or 'torch' with gradients")
    if impl == "numba" and not numba_available():
        raise ValueError("impl='numba' needs numba (pip install 'soundnet-fast[eval]' or numba); use 'auto'")
    k = w.shape[2]
    frames = (x.shape[-1] + 2 * padding - k) // stride + 1
    if impl == "auto":
        impl = pick(k, stride, pool, w.shape[1])
    if impl == "torch" or grad or frames < (pool or 1):  # too short for one output frame: PyTorch's answer
        return reference(x, w, b, stride, padding, pool)
    if impl == "cl":
        return _channels_last(x, w, b, stride, padding, pool)
    if impl == "numba":
        from soundnet_fast.inference import cpu_conv_numba

        return cpu_conv_numba.conv_pool_relu(x, w, b, stride, padding, pool)
    return _gemm(x, w, b, stride, padding, pool or 1)


def conv_relu(x: Tensor, w: Tensor, b: Tensor | None, stride: int, padding: int, *, impl: Impl = "auto") -> Tensor:
    """``relu(conv1d(x, w, b, stride, padding))`` for an unpooled layer: :func:`conv_pool_relu` with no pool."""
    return conv_pool_relu(x, w, b, stride, padding, None, impl=impl)


def polyphase_weight(w: Tensor, stride: int, pool: int) -> Tensor:
    """The (pool * C_out, C_in * W) matrix of the GEMM form, ``W = (pool - 1) * stride + k``.

    Row ``r * C_out + o`` holds ``w[o]`` shifted right by ``stride * r`` samples in every input channel's
    ``W``-wide block: one pooled frame's window times this matrix gives its ``pool`` conv positions.
    """
    c_out, c_in, k = w.shape
    width = (pool - 1) * stride + k
    big = w.new_zeros(pool, c_out, c_in, width)
    for r in range(pool):
        big[r, :, :, r * stride : r * stride + k] = w
    return big.reshape(pool * c_out, c_in * width)


# id(w) -> (a weak reference to w, its version, stride, pool, the polyphase matrix): a folded model's weights are
# long-lived tensors, so each layer's matrix is built once, not on every call. An in-place edit of w bumps its
# version and rebuilds it; the entry goes when w does. (Keyed by id: tensors compare elementwise, not by identity.)
_POLYPHASE: dict[int, tuple[weakref.ref, int, int, int, Tensor]] = {}


# The same for the channels-last (C_out, C_in, 1, k) copy of w that the "cl" form hands oneDNN (a plain-layout
# weight would be reordered on every call).
_CHANNELS_LAST: dict[int, tuple[weakref.ref, int, int, int, Tensor]] = {}


def _cached(table: dict, w: Tensor, stride: int, pool: int, make) -> Tensor:  # noqa: ANN001 (make: () -> Tensor)
    if w.is_inference():  # an inference tensor keeps no version counter: nothing to check a cached copy against
        return make()
    hit = table.get(id(w))
    if hit is not None and hit[0]() is w and hit[1:4] == (w._version, stride, pool):
        return hit[4]
    derived = make()
    if torch.is_inference_mode_enabled() and not w.is_inference():
        return derived  # made in inference mode from a normal tensor: not reusable outside it, so not kept
    if hit is None or hit[0]() is not w:
        weakref.finalize(w, table.pop, id(w), None)
    table[id(w)] = (weakref.ref(w), w._version, stride, pool, derived)
    return derived


def _polyphase_cached(w: Tensor, stride: int, pool: int) -> Tensor:
    return _cached(_POLYPHASE, w, stride, pool, lambda: polyphase_weight(w, stride, pool))


def _channels_last(x: Tensor, w: Tensor, b: Tensor | None, stride: int, padding: int, pool: int | None) -> Tensor:
    x4 = x.unsqueeze(2)  # (B, C_in, 1, L): a channels-last view already when x came from a "cl" layer
    if not x4.is_contiguous(memory_format=torch.channels_last):
        x4 = x4.contiguous(memory_format=torch.channels_last)
    # clone, not contiguous(): for C_in 1 or k 1 the view already counts as channels-last, and a cached view
    # would keep w alive (its entry never freed)
    w4 = _cached(_CHANNELS_LAST, w, 0, 0, lambda: w.unsqueeze(2).clone(memory_format=torch.channels_last))
    y = F.conv2d(x4, w4, b, (1, stride), (0, padding))
    if pool is not None:
        y = F.max_pool2d(y, (1, pool), (1, pool))
    return y.clamp_min_(0.0).squeeze(2)  # ReLU (NaN stays NaN, as in F.relu); (B, C_out, P), channels-last


def _gemm(x: Tensor, w: Tensor, b: Tensor | None, stride: int, padding: int, pool: int) -> Tensor:
    batch, c_in, length = x.shape
    c_out, _, k = w.shape
    pooled = ((length + 2 * padding - k) // stride + 1) // pool
    hop, width = stride * pool, (pool - 1) * stride + k
    chunks = -(-pooled // CHUNK_FRAMES)
    n = -(-pooled // chunks)  # equal chunks of <= CHUNK_FRAMES pooled frames; the last group may overhang
    # Zeros on the right as far as the overhanging windows read (their frames are dropped).
    extra = max(0, (chunks * n - 1) * hop + width - (length + 2 * padding))
    xp = F.pad(x, (padding, padding + extra)) if padding or extra else x.contiguous()
    big = _polyphase_cached(w, stride, pool)
    out = x.new_empty(batch, c_out, pooled)
    s_b, s_c, s_l = xp.stride()
    for i in range(batch):
        for c0 in range(0, chunks, GROUP):
            g = min(GROUP, chunks - c0)
            p0 = c0 * n
            # (g, n, C_in, W) overlapping windows, hop H, copied into contiguous (n, C_in * W) blocks: an explicit
            # copy measured faster than letting the GEMM copy the strided operand itself.
            shape, strides = (g, n, c_in, width), (n * hop * s_l, hop * s_l, s_c, s_l)
            windows = xp.as_strided(shape, strides, xp.storage_offset() + i * s_b + p0 * hop * s_l).contiguous()
            y = torch.matmul(big, windows.view(g, n, c_in * width).transpose(1, 2))  # (g, pool * C_out, n)
            y = y.view(g, pool, c_out, n)
            if p0 + g * n <= pooled:  # the max over the pool's row blocks, written in place
                torch.amax(y, 1, out=out[i, :, p0 : p0 + g * n].view(c_out, g, n).transpose(0, 1))
            else:
                out[i, :, p0:] = torch.amax(y, 1).transpose(0, 1).reshape(c_out, g * n)[:, : pooled - p0]
    if b is not None:
        out.add_(b.view(1, c_out, 1))
    return out.clamp_min_(0.0)  # ReLU; NaN stays NaN, as in F.relu


def _check(x: Tensor, w: Tensor, b: Tensor | None, stride: int, padding: int, pool: int | None, impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    named = [("x", x), ("w", w)] + ([("b", b)] if b is not None else [])
    for name, t in named:
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu" or t.dtype != torch.float32:
            raise ValueError(
                f"conv_pool_relu runs CPU float32 tensors only; {name} is {t.dtype} on {t.device} "
                "(use F.conv1d / the model's own path elsewhere)"
            )
    if x.dim() != 3 or w.dim() != 3:
        raise ValueError(f"x must be (B, C_in, L) and w (C_out, C_in, k); got {tuple(x.shape)} and {tuple(w.shape)}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"x has {x.shape[1]} channels, w expects {w.shape[1]}")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"b must be ({w.shape[0]},), got {tuple(b.shape)}")
    if stride < 1 or padding < 0 or (pool is not None and pool < 1):
        raise ValueError(f"need stride >= 1, padding >= 0, pool None or >= 1; got {stride}, {padding}, {pool}")
