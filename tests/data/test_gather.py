"""The loader's gather: numba kernels equal numpy bit for bit; mapped shards need no open file; the buffer pool
never hands out an array still in use."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from soundnet_fast.data.gather import BufferPool, gather, kernels, resolve, uses_numba
from soundnet_fast.data.mapped import NpyMismatch, map_npy, npy_header, npy_offset


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_numba_and_numpy_gathers_are_identical_bit_for_bit(threads):
    """Every implementation, thread count and batch dtype gives the same batch (repeated picks included)."""
    if kernels() is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(0)
    audio = [rng.integers(-32768, 32767, (5, 7_001), dtype=np.int16, endpoint=True) for _ in range(3)]
    probs = [rng.random((5, 4, 7), dtype=np.float32) for _ in range(3)]
    picks = [(int(s), int(r)) for s, r in zip(rng.integers(0, 3, 9), rng.integers(0, 5, 9), strict=True)]
    rows = [audio[s][r] for s, r in picks]
    addrs = np.array([audio[s].ctypes.data + r * audio[s].strides[0] for s, r in picks], np.int64)
    t_rows = {"objects": [probs[s][r] for s, r in picks]}
    for factor in (None, np.float32(256 / 32768)):
        dtype = np.int16 if factor is None else np.float32
        want = np.stack([r if factor is None else np.multiply(r, factor, dtype=np.float32) for r in rows])
        for impl in ("numpy", "numba", "auto"):
            out, t_out = np.empty((9, 7_001), dtype), {"objects": np.empty((9, 7, 4), np.float32)}
            gather(impl, rows, addrs if uses_numba(impl, factor is not None) else None, out, factor, t_rows, t_out,
                   threads=threads)  # fmt: skip
            assert out.dtype == dtype
            np.testing.assert_array_equal(out, want)
            np.testing.assert_array_equal(t_out["objects"], np.stack([p.T for p in t_rows["objects"]]))
    assert uses_numba("auto", True) and not uses_numba("auto", False) and uses_numba("numba", False)


def test_resolve():
    assert resolve("numpy") == "numpy"
    assert resolve("auto") == ("auto" if kernels() is not None else "numpy")
    with pytest.raises(ValueError, match="gather"):
        resolve("fortran")


def test_map_npy_checks_the_header_and_holds_no_file(tmp_path):
    a = np.arange(24, dtype=np.int16).reshape(4, 6)
    np.save(tmp_path / "a.npy", a)
    assert npy_offset(str(tmp_path / "a.npy"), (4, 6), "<i2") == len(npy_header((4, 6), "<i2")) == 128
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    maps = [map_npy(str(tmp_path / "a.npy"), (4, 6), "<i2") for _ in range(50)]
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds  # np.load(mmap_mode="r") would hold 50 more
    np.testing.assert_array_equal(maps[0], a)
    assert not maps[0].flags.writeable
    row = maps[0][2]
    del maps
    np.testing.assert_array_equal(row, a[2])  # a view keeps its mapping alive
    with pytest.raises(NpyMismatch, match=r"int16 \(4, 6\)"):
        map_npy(str(tmp_path / "a.npy"), (4, 7), "<i2")
    with pytest.raises(NpyMismatch, match="int16"):
        map_npy(str(tmp_path / "a.npy"), (4, 6), "<f4")
    # Another writer's header layout (format 2.0) is parsed rather than refused.
    with open(tmp_path / "b.npy", "wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": "<i2", "fortran_order": False, "shape": (4, 6)})
        f.write(a.tobytes())
    np.testing.assert_array_equal(map_npy(str(tmp_path / "b.npy"), (4, 6), "<i2"), a)
    (tmp_path / "c.npy").write_bytes(npy_header((4, 6), "<i2") + a.tobytes()[:10])
    with pytest.raises(NpyMismatch, match="truncated"):
        map_npy(str(tmp_path / "c.npy"), (4, 6), "<i2")
    (tmp_path / "d.npy").write_bytes(b"not an array at all" * 10)
    with pytest.raises(NpyMismatch, match="no .npy header"):
        map_npy(str(tmp_path / "d.npy"), (4, 6), "<i2")


def test_buffer_pool_reuses_only_free_arrays():
    pool = BufferPool(keep=2)
    shape = (2, 3)
    t = torch.from_numpy(pool.get(shape, np.float32))  # A, now held by a tensor
    b = pool.get(shape, np.float32)  # A is busy: B
    assert b.ctypes.data != t.data_ptr()
    c = pool.get(shape, np.float32)  # both busy and the pool full: a fresh array, not kept
    assert c.ctypes.data not in (t.data_ptr(), b.ctypes.data)
    b_ptr = b.ctypes.data
    del b
    assert pool.get(shape, np.float32).ctypes.data == b_ptr  # B is free again
    view, a_ptr = t[0], t.data_ptr()
    del t
    assert pool.get(shape, np.float32).ctypes.data == b_ptr  # A is still held, through a view of the tensor
    del view
    assert pool.get(shape, np.float32).ctypes.data == a_ptr  # A is free: the first kept array
    assert pool.get((3, 3), np.float32).shape == (3, 3) and pool.get(shape, np.int16).dtype == np.int16
