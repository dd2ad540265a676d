"""Dispatch rules and launch-size helpers shared by the kernels (torch + triton only).

Dispatch (one rule for every op in this package):

* CUDA tensors run the Triton kernels.
* CPU tensors run the plain PyTorch reference, except in a process started with
  ``TRITON_INTERPRET=1``, where they run the Triton kernels in Triton's interpreter (how CI tests them).
  The variable is read once, at import, because Triton reads it when a kernel is decorated
  (docs/design.md#interpreter-and-process-rules): it holds for the whole process.
* Fake / functional tensors on the CPU (``torch.library.opcheck``, ``torch.compile`` tracing) and meta
  tensors take the reference path: the interpreter needs real data pointers. On CUDA the Triton path
  is traced (``torch.library.wrap_triton``), which is what ``torch.compile`` optimises.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
from torch._subclasses.fake_tensor import is_fake

INTERPRET: bool = os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(t: torch.Tensor) -> bool:
    """True when ``t`` should run the Triton kernels (see the module docstring)."""
    if t.device.type == "cuda":
        return True
    return INTERPRET and t.device.type == "cpu" and not is_fake(t)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def clamp_pow2(n: int, lo: int, hi: int) -> int:
    """The next power of two >= n, clamped to [lo, hi] (both powers of two)."""
    return max(lo, min(hi, next_pow2(n)))


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast inside a reference kernel: inputs were already cast on entry, and the
    reference computes in fp32 on purpose (autocast would silently move F.conv1d back to bf16)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


# Shared memory one CTA may use where no CUDA device says (the meta device the static model records on, the
# interpreter): the H100 / H200's 227 KB (CUDA C++ Programming Guide, compute capability 9.0).
SMEM_DEFAULT = 227 * 1024


@functools.cache
def _cuda_smem(index: int) -> int:
    props = torch.cuda.get_device_properties(index)
    return int(getattr(props, "shared_memory_per_block_optin", SMEM_DEFAULT))


def smem_per_block(device: torch.device) -> int:
    """Bytes of shared memory one CTA may use on ``device``: a CUDA device's opt-in limit (A100 163 KB, Ada 99 KB,
    H100 / H200 227 KB); none to speak of for the interpreter's CPU tensors (the tests force any band); else
    ``SMEM_DEFAULT``. The row kernels size their resident and band weights by it."""
    if device.type == "cuda":
        return _cuda_smem(device.index if device.index is not None else torch.cuda.current_device())
    return 1 << 40 if INTERPRET and device.type == "cpu" else SMEM_DEFAULT


def dot_precision(x: torch.Tensor) -> str:
    """``tl.dot`` input precision for fp32 operands, following PyTorch's own switch for convolutions:
    eager fp32 ``F.conv1d`` on CUDA uses TF32 while ``torch.backends.cudnn.allow_tf32`` is True (its
    default), so the fused op does too; set it to False for IEEE fp32 products. bf16 / fp16 operands
    ignore the flag. The interpreter computes dots in numpy fp32 ("ieee")."""
    if x.device.type == "cuda" and x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"
