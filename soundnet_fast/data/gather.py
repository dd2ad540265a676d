"""The loader's hot loop: copy a batch's clip rows out of mapped shards (docs/design.md#data-at-scale).

Two implementations of the audio gather, bit-identical: ``numpy`` (one row at a time from the mapped arrays) and
``numba`` (:mod:`soundnet_fast.data.gather_numba`: rows read by address in a compiled loop without the GIL). ``auto``
takes each where it measured faster (bench/test_gather_bench.py): numba for the CPU path, int16 rows converted to
float32 x factor while gathered (numpy converts in two passes), numpy for the GPU path, int16 rows copied as they
are (a row copy is a ``memcpy``, which numba's element loop does not beat). Teacher rows (steps, C) are transposed
into (C, steps) with numpy. A batch is split into ``threads`` contiguous chunks run on a thread pool (numpy copies
and the numba kernels release the GIL); the caller's thread takes the first chunk. Also here: the batch arrays the
CPU path reuses (:class:`BufferPool`) and the thread that reads batches ahead (:func:`prefetched`).
"""

from __future__ import annotations

import functools
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

Impl = Literal["numba", "numpy", "auto"]


@functools.cache
def kernels() -> Any | None:
    """:mod:`soundnet_fast.data.gather_numba`, compiled or loaded from numba's cache on first use and checked against
    numpy on a test row; None when numba is unavailable or fails."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return None
    try:
        from soundnet_fast.data import gather_numba as nb

        a = np.arange(-4, 4, dtype=np.int16)
        o16, o32 = np.empty((1, 8), np.int16), np.empty((1, 8), np.float32)
        addr = np.array([a.ctypes.data], np.int64)
        nb.audio_i16(addr, o16)
        nb.audio_f32(addr, np.float32(0.5), o32)
        if not (np.array_equal(o16[0], a) and np.array_equal(o32[0], a * np.float32(0.5))):
            raise RuntimeError("the compiled gather disagrees with numpy on a test row")
        return nb
    except Exception as e:  # a JIT or cache failure must never stop training: the numpy path is exact too
        warnings.warn(f"numba kernels unavailable ({type(e).__name__}: {e}); gathering with numpy", stacklevel=2)
        return None


def resolve(impl: Impl) -> str:
    """``numba``, ``numpy`` or ``auto`` as it will run: ``auto`` stays ``auto`` (numba for float32 batches) when the
    kernels load, else ``numpy``. Raises ImportError for ``numba`` without it, ValueError for another name."""
    if impl not in ("numba", "numpy", "auto"):
        raise ValueError(f"gather must be 'numba', 'numpy' or 'auto', got {impl!r}")
    if impl == "numpy" or kernels() is not None:
        return impl
    if impl == "numba":
        raise ImportError("gather='numba' needs numba: pip install 'soundnet-fast[train]'")
    return "numpy"


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="soundnet-fast-gather")
        return _pools[workers]


def gather(
    impl: str,
    audio_rows: Sequence[np.ndarray],
    audio_addrs: np.ndarray | None,
    audio: np.ndarray,
    factor: np.float32 | None,
    target_rows: Mapping[str, Sequence[np.ndarray]],
    targets: Mapping[str, np.ndarray],
    threads: int = 1,
) -> None:
    """Fill ``audio`` (B, L), int16 as stored or float32 x ``factor``, and each ``targets[t]`` (B, C, steps).

    ``audio_rows`` / ``target_rows[t]``: the B source rows (views of mapped shards); ``audio_addrs``: int64 (B,) data
    addresses of the audio rows (needed when numba gathers the audio: :func:`uses_numba`). ``impl`` is
    :func:`resolve`'s answer.
    """
    numba = uses_numba(impl, factor is not None)
    kern = kernels() if numba else None

    def chunk(lo: int, hi: int) -> None:
        if kern is not None:
            if factor is None:
                kern.audio_i16(audio_addrs[lo:hi], audio[lo:hi])
            else:
                kern.audio_f32(audio_addrs[lo:hi], np.float32(factor), audio[lo:hi])
        else:
            for p in range(lo, hi):  # one contiguous read per clip, straight into the batch
                if factor is None:
                    audio[p] = audio_rows[p]
                else:
                    np.multiply(audio_rows[p], np.float32(factor), out=audio[p], dtype=np.float32)
        for t, rows in target_rows.items():
            out = targets[t]
            for p in range(lo, hi):
                out[p] = rows[p].T

    n = len(audio_rows)
    k = max(1, min(int(threads), n))
    cuts = [n * i // k for i in range(k + 1)]
    if k == 1:
        chunk(0, n)
        return
    futures = [_pool(k - 1).submit(chunk, cuts[i], cuts[i + 1]) for i in range(1, k)]
    chunk(cuts[0], cuts[1])
    for f in futures:
        f.result()


def uses_numba(impl: str, scaled: bool) -> bool:
    """Whether ``impl`` gathers the audio with numba: always for ``numba``; for ``auto``, float32 batches only."""
    return impl == "numba" or (impl == "auto" and scaled)


class BufferPool:
    """Reusable CPU batch arrays: a fresh 113 MB float32 batch (64 x 20 s) costs more in page faults than the copy
    into it (bench/test_gather_bench.py), so arrays are handed out again once nothing refers to them any more.

    An array is free when its reference count says only the pool holds it: a tensor made by ``torch.from_numpy``
    (and every view of it) holds a reference until it dies. At most ``keep`` arrays per shape are kept; beyond
    that, while all are in use (a caller that keeps every batch), fresh ones are made and not kept.
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._arrays: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}

    def get(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        kept = self._arrays.setdefault((tuple(shape), np.dtype(dtype).str), [])
        for a in kept:
            if sys.getrefcount(a) <= 3:  # the list, this loop's name, getrefcount's argument
                return a
        a = np.empty(shape, dtype)
        if len(kept) < self.keep:
            kept.append(a)
        return a


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetched(source: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``source`` in a background thread, ``depth`` items ahead (numpy copies release the GIL, so reading
    the next batch overlaps the training step). Stopping early stops the thread."""
    if depth <= 0:
        yield from source
        return
    import queue

    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer, raised there
            put(_Raised(e))

    thread = threading.Thread(target=work, name="ShardLoader-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


__all__ = ["BufferPool", "Impl", "gather", "kernels", "prefetched", "resolve", "uses_numba"]
