"""The numba kernels of :mod:`soundnet_fast.data.gather` (imported only when numba is; docs/design.md#data-at-scale).

Each reads clip rows by address (an int64: a mapped shard's data address + row x row bytes; the loader keeps the
shards mapped for the call) and runs without the GIL, so the gather's threads run them side by side. Compiled with
``nogil=True, cache=True`` (no ``parallel``: the gather splits a batch over its own threads, which wait without
spinning, where numba's OpenMP pool measured 2.7x slower than one thread on this 2-core machine while other jobs
ran). The JIT cost (about a second) is paid once per machine; the cache lives in the package's ``__pycache__``,
else ``$NUMBA_CACHE_DIR`` or numba's user-wide folder, else ``$SOUNDNET_FAST_HOME/numba``.
"""

from __future__ import annotations

import os
from typing import Any

import numba
import numpy as np
from numba import carray, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def _voidptr(typingctx: Any, addr: Any) -> Any:
    """An int64 address as ``void*``, for ``numba.carray``."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(types.int64), codegen


def _jit(fn: Any) -> Any:
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:  # no writable cache location beside the package nor in the user's cache folder
        from soundnet_fast.releases import home

        numba.config.CACHE_DIR = os.path.join(home(), "numba")
        return numba.njit(nogil=True, cache=True)(fn)


@_jit
def audio_i16(addrs: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """int16 rows (L,) at ``addrs`` (B,) -> ``out`` int16 (B, L)."""
    n = out.shape[1]
    for i in range(addrs.shape[0]):
        out[i, :] = carray(_voidptr(addrs[i]), (n,), np.int16)


@_jit
def audio_f32(addrs: np.ndarray, factor: np.float32, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """int16 rows (L,) at ``addrs`` (B,) -> ``out`` float32 (B, L) = float32(x) * factor (one rounding, as numpy)."""
    n = out.shape[1]
    for i in range(addrs.shape[0]):
        src = carray(_voidptr(addrs[i]), (n,), np.int16)
        for j in range(n):
            out[i, j] = np.float32(src[j]) * factor
