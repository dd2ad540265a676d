"""Shard arrays mapped into memory without holding a file descriptor each (docs/design.md#data-at-scale).

``np.load(mmap_mode="r")`` keeps a duplicated descriptor per array for the mapping's lifetime; at 8,000 shards of
three arrays that is 24,000 descriptors, above common ``ulimit -n`` values (this project's machine: 20,000), and it
takes ~100-400 us per file. Here each file is mapped read-only with ``mmap(2)`` through ctypes and its descriptor
closed at once (POSIX keeps the mapping valid), the ``.npy`` header is checked by comparing bytes with the header
``np.save`` writes for the promised shape and dtype, and the array is a view whose base keeps the mapping alive
(it is unmapped when the last view goes). Where libc's ``mmap`` cannot be called (not a POSIX system) it falls
back to ``np.load(mmap_mode="r")``.
"""

from __future__ import annotations

import ctypes
import functools
import io
import mmap
import os
import weakref
from typing import Any

import numpy as np


class NpyMismatch(ValueError):
    """A ``.npy`` file that is not the array it should be: ``found`` describes it (``"int16 (6, 2206)"``)."""

    def __init__(self, found: str) -> None:
        super().__init__(found)
        self.found = found


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's among them (dlopen(NULL))
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int64,
        )
        libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        return libc if hasattr(mmap, "PROT_READ") else None
    except (OSError, AttributeError):
        return None


@functools.cache
def npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """The bytes ``np.save`` writes before the data of a C-order array of ``shape`` and ``dtype`` (format 1.0)."""
    buf = io.BytesIO()
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buf, d)
    return buf.getvalue()


def npy_offset(path: str, shape: tuple[int, ...], dtype: str) -> int:
    """Where the data of ``path`` starts, when it holds exactly ``dtype`` ``shape`` in C order.

    Fast path: the file starts with :func:`npy_header`'s bytes. Otherwise (another writer's padding) the header
    is parsed. Raises :class:`NpyMismatch` when the array is another, OSError when the file cannot be read.
    """
    want = npy_header(tuple(shape), dtype)
    fd = os.open(path, os.O_RDONLY)  # os.open / os.read: half the cost of open() at 24,000 files
    try:
        head = os.read(fd, len(want))
    finally:
        os.close(fd)
    if head == want:
        return len(want)
    fmt = np.lib.format
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
            read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f".npy format version {version}")
            got_shape, fortran, got_dtype = read(f)
        except (ValueError, OSError) as e:
            raise NpyMismatch(f"no .npy header ({e})") from e
        if tuple(got_shape) != tuple(shape) or got_dtype != np.dtype(dtype) or (fortran and len(shape) > 1):
            raise NpyMismatch(f"{got_dtype} {tuple(got_shape)}{' (Fortran order)' if fortran else ''}")
        return f.tell()


class _Mapping:
    """One read-only mapping of a whole file; unmapped when garbage-collected."""

    def __init__(self, path: str) -> None:
        libc = _libc()
        fd = os.open(path, os.O_RDONLY)
        try:
            self.size = os.fstat(fd).st_size
            if self.size == 0:
                raise OSError(f"{path}: empty file")
            addr = libc.mmap(None, self.size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        finally:
            os.close(fd)  # the mapping stays valid without it (POSIX mmap)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            err = ctypes.get_errno()
            raise OSError(err, f"{path}: mmap failed: {os.strerror(err)}")
        self.addr = int(addr)
        weakref.finalize(self, libc.munmap, self.addr, self.size)


class _View:
    """Exposes part of a mapping through ``__array_interface__``; the array keeps this object (and so the mapping)
    alive as its base."""

    def __init__(self, mapping: _Mapping, offset: int, shape: tuple[int, ...], dtype: str) -> None:
        self.mapping = mapping
        self.__array_interface__ = {
            "data": (mapping.addr + offset, True),
            "shape": tuple(shape),
            "typestr": np.dtype(dtype).str,
            "version": 3,
        }


def map_npy(path: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A read-only array over the data of the ``.npy`` file ``path``, which must hold ``dtype`` ``shape``.

    Raises :class:`NpyMismatch` (another array) or OSError (unreadable). ``arr.ctypes.data`` is the data's address
    for as long as ``arr`` (or a view of it) lives.
    """
    offset = npy_offset(path, shape, dtype)
    if _libc() is None:  # pragma: no cover - non-POSIX
        return np.load(path, mmap_mode="r", allow_pickle=False)
    mapping = _Mapping(path)
    if mapping.size < offset + int(np.prod(shape)) * np.dtype(dtype).itemsize:
        raise NpyMismatch(f"a truncated file of {mapping.size} bytes")
    return np.asarray(_View(mapping, offset, shape, dtype))


__all__ = ["NpyMismatch", "map_npy", "npy_header", "npy_offset"]
