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
slots, so the pickle's BUILD opcode cannot modify them. The result is checked to be a dict of dicts of
numeric arrays, strings and numbers.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any, BinaryIO

import numpy as np

__all__ = ["WeightFileError", "RestrictedUnpickler", "read"]

NPY_MAGIC = b"\x93NUMPY"  # the .npy format's first six bytes (numpy.lib.format)
_DTYPE_OK = re.compile(r"^[<>|=]?([biufcO]\d{0,2}|\?)$")  # numeric or object dtype strings, e.g. 'f4', '<f4', 'O8'


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


class _Reconstruct(_Stub):
    """Stands for numpy's ``_reconstruct(ndarray, (0,), b'b')``: returns the empty array that the pickle's
    BUILD then fills through ``ndarray.__setstate__`` (numpy checks shape against data there)."""

    __slots__ = ()

    def __call__(self, cls: object, shape: object, typecode: object) -> np.ndarray:
        if not isinstance(cls, _NdarrayClass):
            raise pickle.UnpicklingError(f"_reconstruct of {cls!r}: only numpy.ndarray is allowed")
        if shape != (0,) or typecode not in (b"b", "b"):
            raise pickle.UnpicklingError(f"_reconstruct{(shape, typecode)!r}: not numpy's array pickle")
        return np.ndarray((0,), dtype=np.int8)


class _Dtype(_Stub):
    """Stands for ``numpy.dtype(spec, align, copy)`` with a numeric or object ``spec`` only."""

    __slots__ = ()

    def __call__(self, spec: object, align: object = False, copy: object = False) -> np.dtype:
        if not isinstance(spec, str) or not _DTYPE_OK.match(spec):
            raise pickle.UnpicklingError(f"dtype {spec!r}: only numeric and object dtypes are allowed")
        if not isinstance(align, (bool, int)) or not isinstance(copy, (bool, int)):
            raise pickle.UnpicklingError(f"dtype{(spec, align, copy)!r}: unexpected arguments")
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
    for layer, params in obj.items():
        if not isinstance(layer, str) or not isinstance(params, dict):
            raise WeightFileError(f"{path}: entry {layer!r} is not a layer name with a dict of parameters")
        for key, value in params.items():
            numeric = isinstance(value, np.ndarray) and value.dtype.kind in "biufc"
            if not isinstance(key, str) or not (numeric or isinstance(value, (str, int, float))):
                raise WeightFileError(
                    f"{path}: {layer}.{key} holds {type(value).__name__}, not a numeric array, string or number"
                )
    return obj
