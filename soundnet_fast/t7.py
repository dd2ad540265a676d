"""The original Torch7 SoundNet models (``.t7``), read with ``torchfile`` (docs/design.md#torch7-original).

Two layouts are supported, both an ``nn.Sequential`` of conv -> BN -> ReLU blocks (with the max-pools of the
layer tables in :mod:`soundnet_fast.model`) followed by a ``ConcatTable`` of the two head convs, then modules
without weights that split, flatten and log-softmax the time steps:

- SoundNet-8, ``soundnet8_final.t7``, built by main_train.lua: 7 conv + BN pairs (modules 0, 4, 8, 11, 14, 18,
  21, counted from 0), heads at 24 (docs/design.md#soundnet-8);
- SoundNet-5, ``soundnet5_final.t7``, built by main_train_small.lua: 4 conv + BN pairs (modules 0, 4, 8, 12),
  heads at 15 (docs/design.md#soundnet-5).

The model is recognised from the module structure, not from the class names, since ``cudnn.convert`` renames
``nn.SpatialConvolution`` and friends to ``cudnn.*`` and a CUDA model stores ``torch.CudaTensor``: a conv is a
module with a 4-D ``weight`` and no BN statistics, a BN one with ``running_mean`` (or the ``running_std`` of
Torch7 nn before 2016), a container one with ``modules``. Every tensor's shape, and each conv's stride and
padding and each max-pool's size where the file records them, is checked against the layer table; a file of
neither layout ends in a :class:`WeightFileError` naming the supported layouts and what the file holds.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import Tensor

from soundnet_fast.model import SOUNDNET5_HEADS, SOUNDNET5_TRUNK, SOUNDNET8_HEADS, SOUNDNET8_TRUNK, ConvSpec, HeadSpec
from soundnet_fast.tf_npy import WeightFileError

# arch -> (description for messages, trunk table, heads table); the scripts: github.com/cvondrick/soundnet.
T7_LAYOUTS: dict[str, tuple[str, tuple[ConvSpec, ...], tuple[HeadSpec, HeadSpec]]] = {
    "soundnet8": ("SoundNet-8 (main_train.lua, soundnet8_final.t7)", SOUNDNET8_TRUNK, SOUNDNET8_HEADS),
    "soundnet5": ("SoundNet-5 (main_train_small.lua, soundnet5_final.t7)", SOUNDNET5_TRUNK, SOUNDNET5_HEADS),
}
# Torch7's SpatialBatchNormalization default eps, and this project's BatchNorm1d eps
# (docs/design.md#batchnorm-and-init); a file saved with another eps is folded into running_var.
T7_BN_EPS = 1e-5


def read(path: str) -> tuple[dict[str, Tensor], str]:
    """Read the Torch7 file ``path``: (state dict in this project's key layout, float32; ``"soundnet8"`` or
    ``"soundnet5"``). Raises :class:`WeightFileError` naming ``path`` when ``torchfile`` is missing or cannot
    read the file, when the file is neither layout (the message lists the supported layouts and the module
    count and convs found), and when a tensor's shape or a conv's / pool's geometry does not match the layer
    table (the message names the module index)."""
    try:
        import torchfile
    except ImportError as e:
        raise WeightFileError(f"{path}: reading .t7 files needs the 't7' extra: pip install 'soundnet-fast[t7]'") from e
    try:
        net = torchfile.load(path)
    except Exception as e:  # torchfile raises assorted errors on truncated input
        raise WeightFileError(f"{path}: cannot read as a Torch7 file ({e})") from e
    arch, modules, pairs, heads_at, head_convs = _identify(net, path)
    name, trunk, heads = T7_LAYOUTS[arch]
    state: dict[str, Tensor] = {}

    def put(key: str, value: Tensor, shape: tuple[int, ...], where: str) -> None:
        if tuple(value.shape) != shape:
            raise WeightFileError(f"{path}: {where} holds {key} shaped {tuple(value.shape)}; {name} has {shape}")
        state[key] = value.float()

    c_in = 1
    for spec, i, end in zip(trunk, pairs, [*pairs[1:], heads_at], strict=True):
        conv, where = modules[i], f"modules[{i}]"
        _check_geometry(conv, (spec.kernel, spec.stride, spec.padding), path, name, where)
        _check_pools(modules, range(i + 2, end), spec, path, name)
        put(f"{spec.name}.0.weight", _conv_weight(conv, path, where), (spec.out_channels, c_in, spec.kernel), where)
        put(f"{spec.name}.0.bias", _tensor(conv, "bias", path, where), (spec.out_channels,), where)
        for key, value in _bn_tensors(modules[i + 1], path, f"modules[{i + 1}]").items():
            put(f"{spec.name}.1.{key}", value, (spec.out_channels,), f"modules[{i + 1}]")
        c_in = spec.out_channels
    for head, (where, conv) in zip(heads, head_convs, strict=True):
        _check_geometry(conv, (head.kernel, head.stride, head.padding), path, name, where)
        w = _conv_weight(conv, path, where)
        put(f"{head.name}.0.weight", w, (w.shape[0], c_in, head.kernel), where)  # class count: the file's
        put(f"{head.name}.0.bias", _tensor(conv, "bias", path, where), (w.shape[0],), where)
    return state, arch


def _identify(net: Any, path: str) -> tuple[str, list[Any], list[int], int, list[tuple[str, Any]]]:
    """(arch, top-level modules, indices of the trunk convs (each followed by its BN), index of the heads'
    container, [(where, conv)] of the two heads), or the "supported layouts" :class:`WeightFileError`."""
    modules = _field(net, "modules")
    if not isinstance(modules, list):
        raise WeightFileError(f"{path}: {_unsupported()}; found {_class(net)} without a list of modules")
    kinds = [_kind(m, path, f"modules[{i}]") for i, m in enumerate(modules)]
    pairs = [i for i in range(len(modules) - 1) if kinds[i] == "conv" and kinds[i + 1] == "bn"]
    paired = {*pairs, *(i + 1 for i in pairs)}
    stray = [i for i, k in enumerate(kinds) if k in ("conv", "bn") and i not in paired]
    seen = {id(net), id(modules)}
    nested: dict[int, list[tuple[str, Any]]] = {}
    for i, m in enumerate(modules):
        convs = _nested_convs(m, path, f"modules[{i}]", seen) if kinds[i] == "container" else []
        if convs:
            nested[i] = convs
    arch = next((a for a, (_, trunk, _) in T7_LAYOUTS.items() if len(trunk) == len(pairs)), None)
    heads_at = next(iter(nested), -1)
    head_convs = nested.get(heads_at, [])
    if arch is None or stray or len(nested) != 1 or len(head_convs) != 2 or heads_at <= pairs[-1] + 1:
        found = f"{_class(net)} of {len(modules)} modules ({_class_counts(modules)}), conv+BN pairs at {pairs}"
        if stray:
            found += f", unpaired conv / BN modules at {stray}"
        found += "".join(f", {len(c)} conv(s) inside modules[{i}]" for i, c in nested.items())
        raise WeightFileError(f"{path}: {_unsupported()}; found {found}")
    return arch, modules, pairs, heads_at, head_convs


def _unsupported() -> str:
    layouts = " and ".join(
        f"{name}: {len(trunk)} conv+BN pairs then a container of the 2 head convs"
        for name, trunk, _ in T7_LAYOUTS.values()
    )
    return f"not an original SoundNet Torch7 model; the supported layouts are {layouts}"


def _kind(module: Any, path: str, where: str) -> str:
    """The module's kind, "bn", "conv", "container" or "other", from its fields (cudnn.convert renames classes)."""
    if any(_array(module, stat, path, where) is not None for stat in ("running_mean", "running_std")):
        return "bn"
    weight = _array(module, "weight", path, where)
    if weight is not None and weight.ndim == 4:
        return "conv"
    return "container" if isinstance(_field(module, "modules"), list) else "other"


def _nested_convs(module: Any, path: str, where: str, seen: set[int]) -> list[tuple[str, Any]]:
    """Depth-first [(where, conv)] inside a container (the heads' ConcatTable). Raises on a BN inside one (no
    supported layout has one) and on a container met twice (a cycle, or a graph no SoundNet file has)."""
    if id(module) in seen:
        raise WeightFileError(f"{path}: {where}: a container met twice (or holding itself); not a SoundNet model")
    seen.add(id(module))
    found: list[tuple[str, Any]] = []
    for j, child in enumerate(_field(module, "modules")):
        at = f"{where}.modules[{j}]"
        kind = _kind(child, path, at)
        if kind == "bn":
            raise WeightFileError(f"{path}: {_unsupported()}; found a BatchNorm inside a container at {at}")
        if kind == "conv":
            found.append((at, child))
        elif kind == "container":
            found.extend(_nested_convs(child, path, at, seen))
    return found


def _class(module: Any) -> str:
    name = getattr(module, "torch_typename", None)
    if callable(name):
        name = name()
        return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return f"a {type(module).__name__}" if not isinstance(module, dict) else "a table"


def _class_counts(modules: list[Any]) -> str:
    counts = Counter(_class(m) for m in modules)
    text = ", ".join(f"{n} {c}" for c, n in counts.most_common(6))
    return text + (", ..." if len(counts) > 6 else "")


def _check_geometry(conv: Any, geometry: tuple[int, int, int], path: str, name: str, where: str) -> None:
    """The conv's kernel, stride and padding along time, where the file records them (SpatialConvolution's
    kH, dH, padH when time is the height axis, as in the original; kW, dW, padW when it is the width)."""
    weight = _array(conv, "weight", path, where)
    axis = "H" if weight is not None and weight.shape[3] == 1 else "W"
    found = tuple(_field(conv, f"{f}{axis}") for f in ("k", "d", "pad"))
    for label, got, want in zip(("kernel", "stride", "padding"), found, geometry, strict=True):
        if isinstance(got, (int, float)) and got != want:
            raise WeightFileError(f"{path}: {where} has {label} {got} along time; {name} has {want}")


def _check_pools(modules: list[Any], span: range, spec: ConvSpec, path: str, name: str) -> None:
    """Between block ``spec``'s BN and the next conv (``span``): one max-pool of kernel = stride = ``spec.pool``
    when the table has one, none otherwise. Pools are told by their kH / dH fields and no weight."""
    pools = [i for i in span if _field(modules[i], "weight") is None and _field(modules[i], "dH") is not None]
    sizes = [tuple(max(_field(modules[i], f"{f}{a}") or 1 for a in "HW") for f in "kd") for i in pools]
    if len(pools) != (spec.pool is not None) or any(s != (spec.pool, spec.pool) for s in sizes):
        got = ", ".join(f"kernel {k} stride {d} at modules[{i}]" for i, (k, d) in zip(pools, sizes, strict=True))
        want = f"kernel = stride = {spec.pool}" if spec.pool else "none"
        raise WeightFileError(
            f"{path}: max-pool after {spec.name}'s BN (modules[{span.start - 1}]): found {got or 'none'}; "
            f"{name} has {want}"
        )


def _bn_tensors(bn: Any, path: str, where: str) -> dict[str, Tensor]:
    """BatchNorm1d's weight, bias, running_mean, running_var from a Torch7 (cudnn) SpatialBatchNormalization."""
    out = {"weight": _tensor(bn, "weight", path, where), "bias": _tensor(bn, "bias", path, where)}
    out["running_mean"] = _tensor(bn, "running_mean", path, where)
    eps = _field(bn, "eps")
    eps = float(eps) if isinstance(eps, (int, float)) else T7_BN_EPS
    if _field(bn, "running_var") is not None:
        var = _tensor(bn, "running_var", path, where).double()
    else:  # Torch7 nn before 2016 stored running_std = 1 / sqrt(var + eps)
        var = 1.0 / _tensor(bn, "running_std", path, where).double() ** 2 - eps
    out["running_var"] = var + (eps - T7_BN_EPS)  # var + eps unchanged under this project's eps
    return out


def _field(obj: Any, name: str) -> Any:
    """``obj.name`` of a torchfile object or table (keys are bytes unless decoded), or None."""
    for key in (name, name.encode()):
        try:
            return obj[key]
        except (KeyError, TypeError, IndexError, AttributeError):
            pass
        value = getattr(obj, key, None) if isinstance(key, str) else None
        if value is not None:
            return value
    return None


def _array(module: Any, name: str, path: str, where: str) -> np.ndarray | None:
    """``module.name`` when it is an array (None otherwise), checked to lie inside its storage."""
    value = _field(module, name)
    if not isinstance(value, np.ndarray):
        return None
    if not _within_storage(value):
        raise WeightFileError(f"{path}: {where}.{name}: its sizes and strides reach outside its storage")
    return value


def _tensor(module: Any, name: str, path: str, where: str) -> Tensor:
    value = _array(module, name, path, where)
    if value is None:
        raise WeightFileError(f"{path}: {where} has no {name!r} tensor")
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float64 if value.dtype == np.float64 else np.float32))


def _within_storage(a: np.ndarray) -> bool:
    """Whether the strided view ``a`` stays inside the array it views. torchfile builds tensors with
    ``as_strided`` from the file's sizes, strides and offset without checking them; reading outside the
    storage would read (or crash on) other memory. Computed from shapes and strides only: nothing is read."""
    root: Any = a
    while True:  # as_strided's view holds a helper object whose .base is the array it views
        base = root.base if isinstance(root.base, np.ndarray) else getattr(root.base, "base", None)
        if not isinstance(base, np.ndarray):
            break
        root = base
    if a.size == 0:
        return True
    bounds = getattr(np.lib, "array_utils", np).byte_bounds  # numpy >= 2 moved it
    (lo, hi), (root_lo, root_hi) = bounds(a), bounds(root)
    return root_lo <= lo and hi <= root_hi


def _conv_weight(module: Any, path: str, where: str) -> Tensor:
    """SpatialConvolution weight (C_out, C_in, kH, kW), one of kH, kW == 1 (time is the other) -> (C_out, C_in, k)."""
    w = _tensor(module, "weight", path, where)
    if w.dim() != 4 or (w.shape[2] != 1 and w.shape[3] != 1):
        raise WeightFileError(f"{path}: {where}.weight has shape {tuple(w.shape)}, expected (C_out, C_in, k, 1)")
    return w.reshape(w.shape[0], w.shape[1], -1)
