"""The TF port's ``sound8.npy``, read without running any code from the file.

The TF port (eborboihuc/SoundNet-tensorflow) saved its weights with ``np.save`` of a dict: an ``.npy``
file whose payload is a pickled 0-d object array holding ``{layer: {"weights": array, ...}}``. The usual
reader, ``np.load(path, allow_pickle=True)``, hands that payload to :mod:`pickle`, which imports and calls
whatever the file names: a crafted file runs arbitrary code the moment it is loaded.

:func:`read` parses the ``.npy`` header itself and unpickles the payload with :class:`RestrictedUnpickler`,
which resolves exactly the globals the format needs and nothing else:

- ``numpy.core.multiarray._reconstruct`` (numpy 1 and the released Python 2 file; numpy 2 names it
  ``numpy._core.multiarray._reconstruct``): the empty array that the pickle then fills in;
- ``numpy.ndarray``: only as the first argument of ``_reconstruct``;
- ``numpy.dtype``: numeric and object dtypes only (kinds b, i, u, f, c, O).

Each resolves to a stand-in object that checks its arguments and builds the one thing it stands for, so
no other object is constructed and no other callable is called; any other global ends the load with a
:class:`WeightFileError` naming the file and the refused global. The stand-ins have no ``__dict__`` and no
slots, so the pickle's BUILD opcode cannot modify them.

Memory safety is checked as well, since numpy's own unpickling trusts its input:

- before unpickling, :func:`soundnet_fast.pickle_scan.scan` walks the opcodes and refuses any outside
  :data:`ALLOWED_OPCODES` (no object-building opcodes, no extension registry, no out-of-band buffers, no
  huge ints), pickles of more than :data:`MAX_OPCODES` opcodes (the layout needs ~1,250) and deep
  nesting (a million nested tuples would overflow the C stack when hashed);
- the arrays are filled through :class:`_CheckedArray.__setstate__`, which checks shape, dtype and data
  length before numpy sees them (numpy 2.4 leaves object slots uninitialised when the list is short);
- the result is checked to be a dict of dicts of plain numeric arrays, strings and numbers.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from typing import Any, BinaryIO

import numpy as np

from soundnet_fast import pickle_scan

__all__ = ["WeightFileError", "RestrictedUnpickler", "read"]

NPY_MAGIC = b"\x93NUMPY"  # the .npy format's first six bytes (numpy.lib.format)
# Plain numeric or object dtype strings as numpy pickles them: 'f4', '<f8', 'i8', 'b1', 'O8'.
_DTYPE_OK = re.compile(r"^[<>|=]?([biuf]\d{1,2}|O\d{0,2}|\?)$")
MAX_OPCODES = 20_000  # the layout's 46 arrays take ~1,250 (np.save and Python 2 protocol 2 alike)
ALLOWED_OPCODES = frozenset(
    "PROTO FRAME STOP GLOBAL STACK_GLOBAL REDUCE BUILD MARK POP POP_MARK DUP "
    "EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_LIST LIST APPEND APPENDS EMPTY_DICT DICT SETITEM SETITEMS "
    "PUT BINPUT LONG_BINPUT MEMOIZE GET BINGET LONG_BINGET NONE NEWTRUE NEWFALSE "
    "INT BININT BININT1 BININT2 LONG LONG1 FLOAT BINFLOAT "
    "STRING BINSTRING SHORT_BINSTRING UNICODE BINUNICODE SHORT_BINUNICODE BINBYTES SHORT_BINBYTES".split()
)


class WeightFileError(ValueError):
    """A weight file that is missing, truncated, not a weight file, or does not match the architecture."""


class _Stub:
    """Base of the stand-ins: no instance dict and no slots, so BUILD (setstate) on one fails."""

    __slots__ = ()


class _NdarrayClass(_Stub):
    """Stands for ``numpy.ndarray``: only meaningful as ``_reconstruct``'s first argument."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "numpy.ndarray"


def _plain(dtype: object) -> bool:
    """A dtype whose elements are plain numbers or (kind O) object references: no fields, no sub-arrays."""
    return (
        isinstance(dtype, np.dtype)
        and dtype.fields is None
        and dtype.subdtype is None
        and (dtype.kind in "biuf" and not dtype.hasobject or dtype.kind == "O" and dtype.itemsize == 8)
    )


class _CheckedArray(np.ndarray):
    """The array ``_reconstruct`` returns: its ``__setstate__`` (the pickle's BUILD) checks the state before
    numpy's does, which trusts it. State: ``(version, shape, dtype, is_fortran, data)``, version optional;
    ``data`` is the raw bytes (a latin1 ``str`` in Python 2 files) or, for object arrays, a list."""

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("array state is not numpy's (version, shape, dtype, order, data)")
        shape, dtype, fortran, data = state[-4:]
        if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape) or len(shape) > 8:
            raise pickle.UnpicklingError(f"array shape of type {type(shape).__name__} is not a tuple of sizes")
        if not _plain(dtype) or not isinstance(fortran, bool):
            raise pickle.UnpicklingError("array dtype is not a plain numeric or object dtype")
        count = math.prod(shape)
        if dtype.kind == "O":
            ok = isinstance(data, list) and len(data) == count
        else:
            ok = isinstance(data, (bytes, str)) and len(data) == count * dtype.itemsize
        if not ok:
            raise pickle.UnpicklingError(f"array data does not match shape {shape} and dtype {dtype}")
        super().__setstate__(state)


class _Reconstruct(_Stub):
    """Stands for numpy's ``_reconstruct(ndarray, (0,), b'b')``: returns the empty array that the pickle's
    BUILD then fills through :meth:`_CheckedArray.__setstate__`."""

    __slots__ = ()

    def __call__(self, cls: object, shape: object, typecode: object) -> np.ndarray:
        if not isinstance(cls, _NdarrayClass):
            raise pickle.UnpicklingError(f"_reconstruct of a {type(cls).__name__}: only numpy.ndarray is allowed")
        if shape != (0,) or typecode not in (b"b", "b"):
            raise pickle.UnpicklingError("_reconstruct arguments are not numpy's array pickle")
        return _CheckedArray((0,), dtype=np.int8)


class _Dtype(_Stub):
    """Stands for ``numpy.dtype(spec, align, copy)`` with a numeric or object ``spec`` only."""

    __slots__ = ()

    def __call__(self, spec: object, align: object = False, copy: object = False) -> np.dtype:
        if not isinstance(spec, str) or not _DTYPE_OK.match(spec):
            raise pickle.UnpicklingError(f"dtype {spec[:20]!r}: only plain numeric and object dtypes are allowed"
                                         if isinstance(spec, str) else "dtype spec is not a string")  # fmt: skip
        if not isinstance(align, (bool, int)) or not isinstance(copy, (bool, int)):
            raise pickle.UnpicklingError("dtype arguments are not numpy's dtype pickle")
        # A copy, as numpy's own pickle asks, so BUILD can set the byte order; _CheckedArray re-checks it.
        return np.dtype(spec)


_NDARRAY, _RECONSTRUCT, _DTYPE = _NdarrayClass(), _Reconstruct(), _Dtype()
ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 1, and the released Python 2 file
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 2 moved numpy.core to numpy._core
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DTYPE,
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle named a global outside :data:`ALLOWED_GLOBALS`."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` (to checking stand-ins) and has no
    persistent ids. ``encoding="latin1"`` reads the Python 2 strings of the released file, as numpy's own
    ``np.load(..., encoding="latin1")`` does."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file, encoding="latin1", fix_imports=False)

    def find_class(self, module: str, name: str) -> object:  # noqa: D401 - pickle's hook
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError(f"persistent id {pid!r}: not part of the format")


def _prescan(f: BinaryIO) -> None:
    """Walk the pickle's opcodes from ``f``'s position (which is restored) without executing any."""
    start = f.tell()
    pickle_scan.scan(f, allowed=ALLOWED_OPCODES, max_opcodes=MAX_OPCODES)
    f.seek(start)


def _as_plain(obj: Any) -> Any:
    """``obj`` with checked arrays viewed as plain ``np.ndarray``."""
    return obj.view(np.ndarray) if isinstance(obj, _CheckedArray) else obj


def read(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read a TF-port ``sound8.npy`` into ``{layer: {key: value}}`` without running code from the file.

    Values are numeric ``np.ndarray`` (any shape), ``str``, ``int`` or ``float``; layer and key names are
    ``str``. Raises :class:`WeightFileError` naming ``path`` when the file is empty, truncated, not an
    ``.npy`` file, a plain (non-pickled) array, names a global outside the format (the refused global is
    named, and nothing was constructed from it), or unpickles to anything but a dict of dicts.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise WeightFileError(f"{path}: .npy format version {version} is not one the TF port wrote (1.0)")
            if not dtype.hasobject:
                raise WeightFileError(
                    f"{path}: holds a plain {dtype} array of shape {shape}, not the TF port's pickled dict of layers"
                )
            _prescan(f)
            obj = RestrictedUnpickler(f).load()
    except WeightFileError:
        raise
    except RefusedGlobal as e:
        raise WeightFileError(
            f"{path}: refused: the file's pickle names the global {e.qualname!r}, which a SoundNet weight file "
            "never needs (allowed: numpy's array reconstruction, numpy.ndarray, numpy.dtype). Nothing from the "
            "file was run. Only load weight files from sources you trust, and report this one."
        ) from None
    except Exception as e:  # truncated header or pickle: ValueError, EOFError, UnpicklingError, ...
        raise WeightFileError(f"{path}: not a readable TF-port sound8.npy ({type(e).__name__}: {e})") from e
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise WeightFileError(f"{path}: expected a pickled dict of layers, got {type(obj).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for layer, params in obj.items():
        if not isinstance(layer, str) or not isinstance(params, dict):
            raise WeightFileError(
                f"{path}: an entry of type {type(layer).__name__} -> {type(params).__name__} is not a layer name "
                "with a dict of parameters"
            )
        out[layer] = {}
        for key, value in params.items():
            value = _as_plain(value)
            numeric = isinstance(value, np.ndarray) and _plain(value.dtype) and value.dtype.kind != "O"
            if not isinstance(key, str) or not (numeric or isinstance(value, (str, int, float))):
                raise WeightFileError(
                    f"{path}: {layer}.{key if isinstance(key, str) else type(key).__name__} holds "
                    f"{type(value).__name__}, not a plain numeric array, string or number"
                )
            out[layer][key] = value
    return out
