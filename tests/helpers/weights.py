"""Weight files of every released layout (docs/design.md#weight-formats), written from one set of random
SoundNet-8 weights, for the weight-loading tests."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import torch

from soundnet_fast.model import SOUNDNET8_HEADS, SOUNDNET8_TRUNK

N_OBJ, N_SCN = 10, 7  # small heads keep the files small; the loader reads head sizes from the file
EPS = 1e-5  # BatchNorm eps: the default of nn.BatchNorm1d and of Torch7's nn.SpatialBatchNormalization


def random_layers() -> dict[str, dict[str, np.ndarray]]:
    """Random SoundNet-8 weights with non-trivial BN running statistics, as plain numpy."""
    rng = np.random.default_rng(0)
    layers: dict[str, dict[str, np.ndarray]] = {}
    c_in = 1
    for s in SOUNDNET8_TRUNK:
        layers[s.name] = {
            "w": rng.normal(0, 1 / np.sqrt(c_in * s.kernel), (s.out_channels, c_in, s.kernel)).astype(np.float32),
            "b": rng.normal(0, 0.1, s.out_channels).astype(np.float32),
            "gamma": rng.normal(1, 0.2, s.out_channels).astype(np.float32),
            "beta": rng.normal(0, 0.2, s.out_channels).astype(np.float32),
            "mean": rng.normal(0, 0.3, s.out_channels).astype(np.float32),
            "var": rng.uniform(0.5, 2.0, s.out_channels).astype(np.float32),
        }
        c_in = s.out_channels
    for h, n in zip(SOUNDNET8_HEADS, (N_OBJ, N_SCN), strict=True):
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
    torch objects (classes with a table), FloatTensors and FloatStorages."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.next_index = 1

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
            self._str("torch.FloatTensor")
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
            self._str("torch.FloatStorage")
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


def write_t7(layers: dict[str, dict[str, np.ndarray]], path: str) -> None:
    """The Torch7 original's ``soundnet8_final.t7``: an nn.Sequential of the trunk's 24 modules and a
    ConcatTable of the two heads."""
    mods: list[Any] = []
    for s in SOUNDNET8_TRUNK:
        p = layers[s.name]
        conv_w = p["w"][:, :, :, None]  # SpatialConvolution over (time, 1): (C_out, C_in, kH, kW=1)
        mods.append(("nn.SpatialConvolution", {"weight": conv_w, "bias": p["b"], "dH": s.stride, "padH": s.padding}))
        bn = {"weight": p["gamma"], "bias": p["beta"], "running_mean": p["mean"], "running_var": p["var"], "eps": EPS}
        mods.append(("nn.SpatialBatchNormalization", bn))
        mods.append(("nn.ReLU", {"inplace": 1}))
        if s.pool:
            mods.append(("nn.SpatialMaxPooling", {"kH": s.pool, "dH": s.pool}))
    assert len(mods) == 24  # conv modules at 0, 4, 8, 11, 14, 18, 21 (docs/design.md#weight-formats)
    heads = [("nn.SpatialConvolution", {"weight": layers[h.name]["w"][:, :, :, None], "bias": layers[h.name]["b"]})
             for h in SOUNDNET8_HEADS]  # fmt: skip
    mods.append(("nn.ConcatTable", {"modules": heads}))
    w = T7Writer()
    w.obj(("nn.Sequential", {"modules": mods, "train": 0}))
    with open(path, "wb") as f:
        f.write(bytes(w.buf))


WRITERS = {"sound8.npy": write_tf_npy, "sound8.pth": write_pth, "soundnet8_final.t7": write_t7}
