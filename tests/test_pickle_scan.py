"""pickle_scan.scan walks a pickle without running it: nesting depth, opcode allow-lists and counts."""

from __future__ import annotations

import io
import pickle

import pytest

from soundnet_fast.pickle_scan import MAX_DEPTH, scan


def deep_tuple_key(depth: int) -> bytes:
    """{((...(0,)...),): {}}: a tuple ``depth`` deep used as a dict key; hashing it recurses in C, so a
    million levels (a 1 MB file) crash CPython's unpickler and torch's weights-only one with a segfault."""
    return b"\x80\x02}" + b"K\x00" + b"\x85" * depth + b"}s."


def test_deep_nesting_is_refused_before_unpickling() -> None:
    with pytest.raises(pickle.UnpicklingError, match=rf"nests deeper than {MAX_DEPTH} at byte \d+ \(TUPLE1\)"):
        scan(io.BytesIO(deep_tuple_key(1_000_000)))
    shallow = deep_tuple_key(MAX_DEPTH - 2)
    assert scan(io.BytesIO(shallow)) > MAX_DEPTH and pickle.loads(shallow)  # legal depth passes and loads


def test_depth_is_nesting_not_length() -> None:
    wide = {f"k{i}": [float(j) for j in range(50)] for i in range(2_000)}  # 100 K items, two levels deep
    data = pickle.dumps(wide, protocol=2)
    f = io.BytesIO(data + b"trailing")
    assert scan(f) > 100_000
    assert f.read() == b"trailing"  # left where the pickle ends (torch's legacy files continue after it)
    nested = pickle.dumps([[[[[[1]]]]]] * 3, protocol=4)  # memo GETs carry the depth of what they fetch
    with pytest.raises(pickle.UnpicklingError, match="nests deeper than 4"):
        scan(io.BytesIO(pickle.dumps([pickle.loads(nested)], protocol=4)), max_depth=4)


def test_allowed_opcodes_and_count() -> None:
    data = pickle.dumps({"a": (1, 2.0, "x")}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"opcode BINFLOAT at byte \d+ is not used by the format"):
        scan(io.BytesIO(data), allowed={"PROTO", "EMPTY_DICT", "BINPUT", "BINUNICODE", "BININT1", "STOP"})
    with pytest.raises(pickle.UnpicklingError, match="more than 5 pickle opcodes"):
        scan(io.BytesIO(data), max_opcodes=5)
    with pytest.raises(ValueError):  # truncated: genops runs off the end
        scan(io.BytesIO(data[: len(data) // 2]))
