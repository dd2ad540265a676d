"""Released SoundNet weights and the project's own checkpoints (docs/design.md#weight-formats).

Formats read by :func:`load_pretrained`, recognised by their first bytes (not by the file name):
- ``sound8.npy`` (TF port): pickled dict conv1..conv7, conv8, conv8_2; ``weights`` (k, 1, C_in, C_out),
  ``biases``; conv1..conv7 also ``gamma``, ``beta``, ``mean``, ``var`` (BN running statistics). Read by
  :mod:`soundnet_fast.tf_npy`'s restricted unpickler, never by ``np.load(allow_pickle=True)``.
- ``soundnet8_final.t7`` / ``soundnet5_final.t7`` (original Torch7 nn.Sequential of main_train.lua /
  main_train_small.lua, also after ``cudnn.convert``; needs the ``t7`` extra): read by :mod:`soundnet_fast.t7`,
  which tells the two layouts apart by their conv + BN pairs (7 or 4) and the two head convs.
- ``sound8.pth`` (common PyTorch port): a state dict with keys ``conv{n}.{0,1}.*``, ``conv8.0.*``,
  ``conv8_2.0.*`` (conv weights may be 2-D-conv shaped (C_out, C_in, k, 1)).
- native checkpoints (:func:`save_native`, and the trainer's): a dict with ``format``, ``arch``, head
  sizes, sample rate, input scale and ``model`` (the state dict).

Loading never runs code from the file: PyTorch files go through ``torch.load(weights_only=True)`` (tensors
and plain containers only), ``.npy`` through the restricted unpickler, ``.t7`` through ``torchfile`` (a
reader of Torch7's data format that constructs no Python objects by name). Anything else, and any file a
reader refuses, ends in a :class:`WeightFileError` that names the file and the formats tried.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from soundnet_fast import pickle_scan, t7, tf_npy
from soundnet_fast.constants import INPUT_SCALE, SAMPLE_RATE
from soundnet_fast.fsutil import atomic_torch_save
from soundnet_fast.model import ARCHITECTURES, SoundNet, SoundNet8
from soundnet_fast.tf_npy import WeightFileError

NATIVE_FORMAT = "soundnet_fast/1"
FORMATS = "TF-port sound8.npy, PyTorch checkpoint or state dict (zip or legacy pickle), Torch7 .t7"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_PROTO = b"\x80"  # torch.save(_use_new_zipfile_serialization=False): a pickle, protocol >= 2
_T7_TYPES = (3, 4)  # Torch7 binary files start with an int32 type code: 3 table, 4 torch object (torchfile)

__all__ = ["WeightFileError", "load_pretrained", "read_state_dict", "save_native", "convert", "detect_format"]


def load_pretrained(
    path: str | os.PathLike[str], *, backend: str = "reference", map_location: str | torch.device = "cpu"
) -> SoundNet:
    """Load SoundNet weights from ``path`` in any supported format, or a released model by name
    (``"soundnet8"``, from the cache that ``soundnet-fast weights fetch`` fills: :mod:`soundnet_fast.releases`);
    returns the model in eval mode. ``model.weights_meta["release"]`` names the release, if it is one.

    ``backend`` is the blocks' implementation, "reference" (PyTorch ops), "fused" (Triton) or "auto"
    (:func:`soundnet_fast.model.fused_pays`). Raises
    :class:`WeightFileError` naming ``path`` for a missing, empty, truncated or unrecognised file, a file
    whose unpickling would need anything but tensors / numpy arrays (refused, nothing run), and weights that
    do not match the architecture (missing or unexpected keys, wrong shapes).
    """
    from soundnet_fast import releases  # by name: the cache (imported here to keep `import soundnet_fast` light)

    release = releases.release_of(path)
    by_name = os.fspath(path) in releases.RELEASES
    path = releases.resolve(path)
    try:
        state, arch, meta = read_state_dict(path, map_location=map_location)
    except WeightFileError as e:
        if not by_name:
            raise
        raise WeightFileError(f"{e}; the cached release is damaged: soundnet-fast weights fetch {release.name} "
                              "checks it and fetches it again") from e  # fmt: skip
    if release is not None:
        meta = {**meta, "release": release.name}
    with _weight_errors(path):
        num_objects, num_scenes = _head_sizes(state, arch, path)
        model = ARCHITECTURES[arch](num_objects, num_scenes, backend=backend)  # type: ignore[arg-type]
        _load_strict(model, state, path)
    model.weights_meta = meta  # type: ignore[attr-defined]
    return model.eval()


def read_state_dict(
    path: str, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], str, dict[str, Any]]:
    """Read ``path`` into (state dict in this project's key layout, architecture name, metadata).

    The format comes from the file's first bytes (:func:`detect_format`). Raises :class:`WeightFileError`,
    also for a file whose contents are malformed in any other way.
    """
    from soundnet_fast import releases

    path = releases.resolve(path)
    kind = detect_format(path)
    with _weight_errors(path):
        if kind == "npy":
            return _from_tf_npy(path), "soundnet8", {"source": "sound8.npy"}
        if kind == "t7":
            return (*t7.read(path), {"source": "t7"})
        return _from_torch(path, kind, map_location)


def _from_torch(path: str, kind: str, map_location: str | torch.device) -> tuple[dict[str, Tensor], str, dict]:
    _prescan_torch(path, kind)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip, pickle and weights-only refusals raise many types; all mean "not weights"
        raise WeightFileError(
            f"{path}: starts like a PyTorch file ({kind}) but torch.load(weights_only=True) refused it: "
            f"{_torch_refusal(e)}; nothing from the file was run"
        ) from e
    if not isinstance(obj, dict):
        raise WeightFileError(f"{path}: expected a dict (a state dict or a checkpoint), got {type(obj).__name__}")
    if str(obj.get("format", "")).startswith("soundnet_fast/"):
        arch = obj.get("arch")
        if arch not in ARCHITECTURES:
            raise WeightFileError(f"{path}: checkpoint names unknown architecture {arch!r}")
        meta = {
            k: v
            for k, v in obj.items()
            if k in ("arch", "num_objects", "num_scenes", "sample_rate", "input_scale", "step", "source", "release")
        }
        model = obj.get("model")
        if not isinstance(model, dict) or not all(isinstance(v, Tensor) for v in model.values()):
            raise WeightFileError(f"{path}: checkpoint's 'model' is not a state dict of tensors")
        return dict(model), arch, meta
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    arch = "soundnet5" if "conv5_2.0.weight" in state else "soundnet8"
    for k, v in list(state.items()):
        if k.endswith("weight") and v.dim() == 4:  # 2-D-conv ports: (C_out, C_in, k, 1) or (.., 1, k)
            state[k] = v.reshape(v.shape[0], v.shape[1], -1)
    return state, arch, {"source": "state_dict"}


def save_native(
    path: str | os.PathLike[str], model: SoundNet, *, input_scale: float = INPUT_SCALE, **extra: Any
) -> None:
    """Write ``model`` as a native checkpoint (atomic), with the metadata ``load_pretrained`` needs."""
    atomic_torch_save(native_dict(model, input_scale=input_scale, **extra), path)


def native_dict(model: SoundNet, *, input_scale: float = INPUT_SCALE, **extra: Any) -> dict[str, Any]:
    return {
        "format": NATIVE_FORMAT,
        "arch": model.arch,
        "num_objects": model.num_objects,
        "num_scenes": model.num_scenes,
        "sample_rate": SAMPLE_RATE,
        "input_scale": input_scale,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> SoundNet:
    """Read any supported weight file (or a release by name) and write it as a native checkpoint; a release's
    checkpoint records its name (``release``), so ``predict`` still names its scenes."""
    model = load_pretrained(src)
    release = model.weights_meta.get("release")  # type: ignore[attr-defined]
    extra = {"release": release} if release else {}
    save_native(dst, model, source=os.path.basename(os.fspath(src)), **extra)
    return model


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"npy"``, ``"zip"`` (torch.save), ``"pickle"`` (legacy torch.save) or ``"t7"`` from the first bytes
    of ``path`` (a ``.t7`` name also counts for Torch7, whose files have no magic number).

    Raises :class:`WeightFileError` for a missing, unreadable or empty file and for one in no known format,
    naming the formats tried and the file's first bytes.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise WeightFileError(f"{path}: no such weight file") from None
    except OSError as e:
        raise WeightFileError(f"{path}: cannot read ({e.strerror or e})") from e
    if not head:
        raise WeightFileError(f"{path}: empty file, not a weight file (formats tried: {FORMATS})")
    if head.startswith(tf_npy.NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_PICKLE_PROTO):
        return "pickle"
    if path.lower().endswith(".t7") or (len(head) >= 4 and int.from_bytes(head[:4], "little") in _T7_TYPES):
        return "t7"
    raise WeightFileError(f"{path}: not a weight file in any supported format (tried: {FORMATS}); starts with {head!r}")


# --------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _weight_errors(path: str) -> Iterator[None]:
    """Any error while reading or checking ``path`` as weights becomes a :class:`WeightFileError` naming it
    (a malformed file fails in many places: a str where an array belongs, a self-referencing table, ...)."""
    try:
        yield
    except WeightFileError:
        raise
    except Exception as e:
        text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")[:300]
        raise WeightFileError(f"{path}: not usable as SoundNet weights ({type(e).__name__}: {text})") from e


def _prescan_torch(path: str, kind: str) -> None:
    """Refuse what would crash ``torch.load`` rather than raise: compressed zip entries (torch.save never
    compresses; a small file could expand to gigabytes) and deeply nested pickles (:mod:`pickle_scan`)."""
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
                packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
                if packed:
                    raise WeightFileError(
                        f"{path}: zip entry {packed[0]!r} is compressed, which torch.save never does: refused"
                    )
                for info in infos:
                    if info.filename.endswith(".pkl"):  # the object pickle(s): data.pkl, and constants.pkl
                        with z.open(info) as f:
                            pickle_scan.scan(f)
        else:  # legacy torch.save: magic number, protocol, sys info, the object, storage keys; then raw data
            with open(path, "rb") as f:
                for _ in range(5):
                    pickle_scan.scan(f)
    except WeightFileError:
        raise
    except (pickle.UnpicklingError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise WeightFileError(f"{path}: not a readable PyTorch file ({type(e).__name__}: {e})") from e


def _torch_refusal(e: Exception) -> str:
    """The reason in torch.load's error, without its advice to retry with weights_only=False."""
    text = str(e)
    refused = re.search(r"unsupported GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", text)
    if refused:
        return f"its pickle names the global {(refused.group(1) or refused.group(2))!r}, which weights never need"
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__


def _head_sizes(state: dict[str, Tensor], arch: str, path: str) -> tuple[int, int]:
    cls = ARCHITECTURES[arch]
    sizes = []
    for head in cls.head_specs:
        key = f"{head.name}.0.weight"
        if key not in state:
            raise WeightFileError(f"{path}: missing key {key!r} ({arch} head)")
        sizes.append(int(state[key].shape[0]))
    return sizes[0], sizes[1]


def _load_strict(model: SoundNet, state: dict[str, Tensor], path: str) -> None:
    expected = model.state_dict()
    # Files from before BatchNorm tracked batches have no counter; it does not affect outputs.
    for k in expected:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros((), dtype=torch.long)
    missing = [k for k in expected if k not in state]
    if missing:
        raise WeightFileError(f"{path}: missing key(s) {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise WeightFileError(f"{path}: unexpected key(s) {unexpected[:6]} for {model.arch}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise WeightFileError(
                f"{path}: key {k!r} has shape {tuple(state[k].shape)}, {model.arch} expects {tuple(v.shape)}"
            )
    model.load_state_dict({k: state[k].to(v.dtype) for k, v in expected.items()})


def _from_tf_npy(path: str) -> dict[str, Tensor]:
    raw = tf_npy.read(path)
    state: dict[str, Tensor] = {}
    names = [s.name for s in SoundNet8.trunk_specs]
    for name in names + [h.name for h in SoundNet8.head_specs]:
        layer = raw.get(name)
        if not isinstance(layer, dict):
            raise WeightFileError(f"{path}: missing layer {name!r}")
        is_head = name not in names
        needed = ("weights", "biases") if is_head else ("weights", "biases", "gamma", "beta", "mean", "var")
        for key in needed:
            if key not in layer:
                raise WeightFileError(
                    f"{path}: layer {name!r} is missing {key!r}"
                    + (" (BN running statistics are required)" if key in ("mean", "var") else "")
                )
        w = np.asarray(layer["weights"], dtype=np.float32)
        if w.ndim != 4 or w.shape[1] != 1:
            raise WeightFileError(f"{path}: {name}.weights has shape {w.shape}, expected (k, 1, C_in, C_out)")
        p = f"{name}.0."
        state[p + "weight"] = torch.from_numpy(np.ascontiguousarray(w[:, 0].transpose(2, 1, 0)))
        state[p + "bias"] = _t(layer["biases"])
        if not is_head:
            b = f"{name}.1."
            state[b + "weight"], state[b + "bias"] = _t(layer["gamma"]), _t(layer["beta"])
            state[b + "running_mean"], state[b + "running_var"] = _t(layer["mean"]), _t(layer["var"])
    return state


def _t(a: Any) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float32)).reshape(-1))
