"""Weight files of every released layout (docs/design.md#weight-formats), written from one set of random
SoundNet-8 (or SoundNet-5) weights, for the weight-loading tests."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from soundnet_fast.model import SOUNDNET5_TRUNK, SOUNDNET8_HEADS, SOUNDNET8_TRUNK, ConvSpec, HeadSpec

N_OBJ, N_SCN = 10, 7  # small heads keep the files small; the loader reads head sizes from the file
EPS = 1e-5  # BatchNorm eps: the default of nn.BatchNorm1d and of Torch7's nn.SpatialBatchNormalization


def random_layers(
    trunk: tuple[ConvSpec, ...] = SOUNDNET8_TRUNK, heads: tuple[HeadSpec, HeadSpec] = SOUNDNET8_HEADS
) -> dict[str, dict[str, np.ndarray]]:
    """Random weights of the net ``trunk`` + ``heads`` (SoundNet-8 by default) with non-trivial BN running
    statistics, as plain numpy; the head sizes are N_OBJ, N_SCN."""
    rng = np.random.default_rng(0)
    layers: dict[str, dict[str, np.ndarray]] = {}
    c_in = 1
    for s in trunk:
        layers[s.name] = {
            "w": rng.normal(0, 1 / np.sqrt(c_in * s.kernel), (s.out_channels, c_in, s.kernel)).astype(np.float32),
            "b": rng.normal(0, 0.1, s.out_channels).astype(np.float32),
            "gamma": rng.normal(1, 0.2, s.out_channels).astype(np.float32),
            "beta": rng.normal(0, 0.2, s.out_channels).astype(np.float32),
            "mean": rng.normal(0, 0.3, s.out_channels).astype(np.float32),
            "var": rng.uniform(0.5, 2.0, s.out_channels).astype(np.float32),
        }
        c_in = s.out_channels
    for h, n in zip(heads, (N_OBJ, N_SCN), strict=True):
        layers[h.name] = {
            "w": rng.normal(0, 0.02, (n, c_in, h.kernel)).astype(np.float32),
            "b": rng.normal(0, 0.1, n).astype(np.float32),
        }
    return layers


# ------------------------------------------------------------------ writers for each layout
def write_tf_npy(layers: dict[str, dict[str, np.ndarray]], path: str) -> None:
    """The TF port's ``sound8.npy``: a pickled dict, layer -> weights (k, 1, C_in, C_out), biases, BN arrays."""
    d: dict[str, dict[str, np.ndarray]] = {}
    for name, p in layers.items():
        e = {"weights": p["w"].transpose(2, 1, 0)[:, None], "biases": p["b"]}  # (k, 1, C_in, C_out)
        e.update({k: p[k] for k in ("gamma", "beta", "mean", "var") if k in p})
        d[name] = e
    np.save(path, np.array(d, dtype=object), allow_pickle=True)


def write_pth(layers: dict[str, dict[str, np.ndarray]], path: str) -> None:
    """The PyTorch port's ``sound8.pth``: a state dict, per layer a Conv2d (C_out, C_in, k, 1) and its BatchNorm."""
    sd: dict[str, torch.Tensor] = {}
    for name, p in layers.items():
        sd[f"{name}.0.weight"] = torch.from_numpy(p["w"]).unsqueeze(-1)  # the port's Conv2d (C_out, C_in, k, 1)
        sd[f"{name}.0.bias"] = torch.from_numpy(p["b"])
        if "gamma" in p:
            sd[f"{name}.1.weight"], sd[f"{name}.1.bias"] = torch.from_numpy(p["gamma"]), torch.from_numpy(p["beta"])
            sd[f"{name}.1.running_mean"] = torch.from_numpy(p["mean"])
            sd[f"{name}.1.running_var"] = torch.from_numpy(p["var"])
            sd[f"{name}.1.num_batches_tracked"] = torch.tensor(0)
    torch.save(sd, path)


class T7Writer:
    """The least of the Torch7 binary serialisation that torchfile reads: numbers, strings, tables,
    torch objects (classes with a table), float32 tensors and storages: ``torch.FloatTensor`` and
    ``torch.FloatStorage``, or with ``cuda`` what a CUDA model saves, ``torch.CudaTensor`` and ``torch.CudaStorage``."""

    def __init__(self, cuda: bool = False) -> None:
        self.buf = bytearray()
        self.next_index = 1
        self.tensor_class, self.storage_class = ("torch.CudaTensor", "torch.CudaStorage") if cuda else (
            "torch.FloatTensor", "torch.FloatStorage")  # fmt: skip

    def _int(self, v: int) -> None:
        self.buf += struct.pack("<i", v)

    def _long(self, v: int) -> None:
        self.buf += struct.pack("<q", v)

    def _str(self, s: str) -> None:
        b = s.encode()
        self._int(len(b))
        self.buf += b

    def _index(self) -> None:
        self._int(self.next_index)
        self.next_index += 1

    def obj(self, v: Any) -> None:
        if isinstance(v, (int, float)):
            self._int(1)
            self.buf += struct.pack("<d", float(v))
        elif isinstance(v, str):
            self._int(2)
            self._str(v)
        elif isinstance(v, np.ndarray):
            self._int(4)
            self._index()
            self._str("V 1")
            self._str(self.tensor_class)
            a = np.ascontiguousarray(v, dtype=np.float32)
            self._int(a.ndim)
            for n in a.shape:
                self._long(n)
            for st in a.strides:
                self._long(st // 4)
            self._long(1)  # storage offset, 1-based
            self._int(4)
            self._index()
            self._str("V 1")
            self._str(self.storage_class)
            self._long(a.size)
            self.buf += a.tobytes()
        elif isinstance(v, tuple):  # (class name, fields): a torch object
            self._int(4)
            self._index()
            self._str("V 1")
            self._str(v[0])
            self.obj(v[1])
        elif isinstance(v, (dict, list)):
            items = list(v.items()) if isinstance(v, dict) else [(i + 1, x) for i, x in enumerate(v)]
            self._int(3)
            self._index()
            self._int(len(items))
            for k, x in items:
                self.obj(k)
                self.obj(x)
        else:
            raise TypeError(type(v))


def write_t7(layers: dict[str, dict[str, np.ndarray]], path: str, **kw: Any) -> None:
    """The Torch7 original's ``soundnet8_final.t7`` (or, with SoundNet-5's tables, ``soundnet5_final.t7``):
    :func:`t7_modules` (``kw`` its options) in an nn.Sequential."""
    write_t7_modules(t7_modules(layers, **kw), path, cuda=kw.get("prefix") == "cudnn")


def write_t7_modules(mods: list[Any], path: str, cuda: bool = False) -> None:
    """``mods``, (class name, fields) pairs, as the modules of an nn.Sequential in the Torch7 file ``path``."""
    w = T7Writer(cuda=cuda)
    w.obj(("nn.Sequential", {"modules": mods, "train": 0}))
    with open(path, "wb") as f:
        f.write(bytes(w.buf))


def t7_modules(
    layers: dict[str, dict[str, np.ndarray]],
    *,
    trunk: tuple[ConvSpec, ...] = SOUNDNET8_TRUNK,
    heads: tuple[HeadSpec, HeadSpec] = SOUNDNET8_HEADS,
    prefix: str = "nn",
    running_std: bool = False,
) -> list[Any]:
    """The original nn.Sequential's modules as (class name, fields): the trunk's (24, or 15 for SoundNet-5), a
    ConcatTable of the two heads, then the modules of main_train.lua / main_train_small.lua that split, flatten
    and log-softmax the 8 steps. ``prefix`` "cudnn" gives the classes that ``cudnn.convert`` leaves;
    ``running_std`` the BN statistic of Torch7 nn before 2016, 1 / sqrt(var + eps), instead of running_var."""
    mods: list[Any] = []
    for s in trunk:
        p = layers[s.name]
        mods.append((f"{prefix}.SpatialConvolution", _t7_conv(p, s.kernel, s.stride, s.padding)))
        bn: dict[str, Any] = {"weight": p["gamma"], "bias": p["beta"], "running_mean": p["mean"], "eps": EPS}
        if running_std:
            bn["running_std"] = (1 / np.sqrt(p["var"].astype(np.float64) + EPS)).astype(np.float32)
        else:
            bn["running_var"] = p["var"]
        mods.append((f"{prefix}.SpatialBatchNormalization", bn))
        mods.append((f"{prefix}.ReLU", {"inplace": 1}))
        if s.pool:
            mods.append((f"{prefix}.SpatialMaxPooling", {"kW": 1, "kH": s.pool, "dW": 1, "dH": s.pool}))
    # convs at modules 0, 4, 8, 11, 14, 18, 21 (SoundNet-8) or 0, 4, 8, 12 (SoundNet-5): docs/design.md#torch7-original
    assert len(mods) == {SOUNDNET8_TRUNK: 24, SOUNDNET5_TRUNK: 15}[trunk]
    convs = [(f"{prefix}.SpatialConvolution", _t7_conv(layers[h.name], h.kernel, h.stride, h.padding)) for h in heads]
    mods.append(("nn.ConcatTable", {"modules": convs}))
    split = [("nn.SplitTable", {"dimension": 3}), ("nn.SplitTable", {"dimension": 3})]
    mods += [("nn.ParallelTable", {"modules": split}), ("nn.FlattenTable", {})]
    steps = [("nn.Sequential", {"modules": [("nn.Contiguous", {}), (f"{prefix}.LogSoftMax", {}),
                                            ("nn.Squeeze", {})]}) for _ in range(8)]  # fmt: skip
    mods.append(("nn.ParallelTable", {"modules": steps}))
    return mods


def _t7_conv(p: dict[str, np.ndarray], kernel: int, stride: int, padding: int) -> dict[str, Any]:
    """SpatialConvolution(C_in, C_out, 1, k, 1, s, 0, p): time on the height axis, weight (C_out, C_in, k, 1)."""
    c_out, c_in = p["w"].shape[:2]
    return {
        "weight": p["w"][:, :, :, None], "bias": p["b"], "nInputPlane": c_in, "nOutputPlane": c_out,
        "kW": 1, "kH": kernel, "dW": 1, "dH": stride, "padW": 0, "padH": padding,
    }  # fmt: skip


WRITERS = {"sound8.npy": write_tf_npy, "sound8.pth": write_pth, "soundnet8_final.t7": write_t7}


# ------------------------------------------------------------------ an independent numpy forward
def np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Conv1d of x (C_in, T) with w (C_out, C_in, k), b (C_out,) -> (C_out, T_out)."""
    xp = np.pad(x, ((0, 0), (pad, pad)))
    win = sliding_window_view(xp, w.shape[2], axis=1)[:, ::stride, :]  # (C_in, T, k)
    return np.einsum("ctk,ock->ot", win, w, optimize=True) + b[:, None]


def np_forward(
    layers: dict[str, dict[str, np.ndarray]],
    wave: np.ndarray,
    trunk: tuple[ConvSpec, ...] = SOUNDNET8_TRUNK,
    heads: tuple[HeadSpec, HeadSpec] = SOUNDNET8_HEADS,
) -> dict[str, np.ndarray]:
    """Every layer's output (float64) for ``wave`` (T,): conv -> BN (running statistics, EPS) -> ReLU -> pool."""
    x = wave[None].astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for s in trunk:
        p = layers[s.name]
        y = np_conv(x, p["w"].astype(np.float64), p["b"].astype(np.float64), s.stride, s.padding)
        y = (y - p["mean"][:, None]) / np.sqrt(p["var"][:, None] + EPS) * p["gamma"][:, None] + p["beta"][:, None]
        x = np.maximum(y, 0)
        out[s.name] = x
        if s.pool:
            t = x.shape[1] // s.pool
            x = x[:, : t * s.pool].reshape(x.shape[0], t, s.pool).max(axis=2)
            out[s.pool_name or ""] = x
    for h in heads:
        out[h.name] = np_conv(x, layers[h.name]["w"], layers[h.name]["b"], h.stride, h.padding)
    return out
