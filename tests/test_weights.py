"""Released-weight layouts (docs/design.md#weight-formats) load and give the features of an independent numpy
forward."""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from typing import Any

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from soundnet_fast import SoundNet8, load_pretrained
from soundnet_fast.cli import main as cli_main
from soundnet_fast.model import SOUNDNET8_HEADS, SOUNDNET8_TRUNK
from soundnet_fast.weights import WeightFileError, save_native

N_OBJ, N_SCN = 10, 7  # small heads keep the files small; the loader reads head sizes from the file
EPS = 1e-5


@pytest.fixture(scope="module")
def truth() -> dict[str, dict[str, np.ndarray]]:
    return random_layers()


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


# ------------------------------------------------------------------ an independent numpy forward
def np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (pad, pad)))
    win = sliding_window_view(xp, w.shape[2], axis=1)[:, ::stride, :]  # (C_in, T, k)
    return np.einsum("ctk,ock->ot", win, w, optimize=True) + b[:, None]


def np_forward(layers: dict[str, dict[str, np.ndarray]], wave: np.ndarray) -> dict[str, np.ndarray]:
    x = wave[None].astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for s in SOUNDNET8_TRUNK:
        p = layers[s.name]
        y = np_conv(x, p["w"].astype(np.float64), p["b"].astype(np.float64), s.stride, s.padding)
        y = (y - p["mean"][:, None]) / np.sqrt(p["var"][:, None] + EPS) * p["gamma"][:, None] + p["beta"][:, None]
        x = np.maximum(y, 0)
        out[s.name] = x
        if s.pool:
            t = x.shape[1] // s.pool
            x = x[:, : t * s.pool].reshape(x.shape[0], t, s.pool).max(axis=2)
            out[s.pool_name or ""] = x
    for h in SOUNDNET8_HEADS:
        out[h.name] = np_conv(x, layers[h.name]["w"], layers[h.name]["b"], h.stride, h.padding)
    return out


# ------------------------------------------------------------------ writers for each layout
def write_tf_npy(layers: dict[str, dict[str, np.ndarray]], path: str) -> None:
    d: dict[str, dict[str, np.ndarray]] = {}
    for name, p in layers.items():
        e = {"weights": p["w"].transpose(2, 1, 0)[:, None], "biases": p["b"]}  # (k, 1, C_in, C_out)
        e.update({k: p[k] for k in ("gamma", "beta", "mean", "var") if k in p})
        d[name] = e
    np.save(path, np.array(d, dtype=object), allow_pickle=True)


def write_pth(layers: dict[str, dict[str, np.ndarray]], path: str) -> None:
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


@pytest.fixture(scope="module")
def wave() -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.uniform(-1, 1, SoundNet8.min_length() + 5_000) * 256).astype(np.float32)


@pytest.fixture(scope="module")
def expected(truth: dict[str, dict[str, np.ndarray]], wave: np.ndarray) -> dict[str, np.ndarray]:
    return np_forward(truth, wave)


@pytest.mark.parametrize("filename", list(WRITERS))
def test_layout_loads_and_matches_numpy_forward(
    filename: str, truth: dict, wave: np.ndarray, expected: dict, tmp_path
) -> None:
    path = str(tmp_path / filename)
    WRITERS[filename](truth, path)
    model = load_pretrained(path)
    assert not model.training and (model.num_objects, model.num_scenes) == (N_OBJ, N_SCN)
    x = torch.from_numpy(wave).view(1, 1, -1)
    with torch.no_grad():
        for layer in ("conv1", "pool2", "conv4", "pool5", "conv7"):
            got = model.features(x, layer)[0].double().numpy()
            np.testing.assert_allclose(got, expected[layer], rtol=2e-4, atol=2e-4 * np.abs(expected[layer]).max())
        obj, scn = model(x)
    for got, name in ((obj, "conv8"), (scn, "conv8_2")):
        ref = expected[name]
        np.testing.assert_allclose(got[0].double().numpy(), ref, rtol=2e-4, atol=2e-4 * np.abs(ref).max())


def test_native_round_trip_and_convert_cli(truth: dict, tmp_path, capsys) -> None:
    src, dst = str(tmp_path / "sound8.npy"), str(tmp_path / "native.pt")
    write_tf_npy(truth, src)
    assert cli_main(["convert", src, dst]) == 0
    assert "soundnet8" in capsys.readouterr().out
    a, b = load_pretrained(src), load_pretrained(dst)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    ck = torch.load(dst, weights_only=True)
    assert ck["arch"] == "soundnet8" and ck["sample_rate"] == 22050 and ck["input_scale"] == 256.0


def test_native_soundnet5(tmp_path) -> None:
    from soundnet_fast import SoundNet5

    m = SoundNet5(num_objects=3, num_scenes=2)
    save_native(tmp_path / "s5.pt", m, step=7)
    loaded = load_pretrained(tmp_path / "s5.pt")
    assert isinstance(loaded, SoundNet5) and loaded.num_scenes == 2 and loaded.weights_meta["step"] == 7


def test_npy_without_bn_statistics_is_refused(truth: dict, tmp_path) -> None:
    broken = {k: dict(v) for k, v in truth.items()}
    del broken["conv3"]["var"]
    path = str(tmp_path / "sound8.npy")
    write_tf_npy(broken, path)
    with pytest.raises(WeightFileError, match=r"conv3.*'var'.*running statistics"):
        load_pretrained(path)


def test_misshapen_and_missing_keys_are_named(truth: dict, tmp_path) -> None:
    path = str(tmp_path / "sound8.pth")
    write_pth(truth, path)
    sd = torch.load(path, weights_only=True)
    sd["conv4.0.weight"] = sd["conv4.0.weight"][:, :, :4]
    torch.save(sd, path)
    with pytest.raises(WeightFileError, match=r"conv4\.0\.weight.*shape"):
        load_pretrained(path)
    del sd["conv4.0.weight"], sd["conv2.1.running_var"]
    torch.save(sd, path)
    with pytest.raises(WeightFileError, match="conv2.1.running_var"):
        load_pretrained(path)


def test_truncated_files_are_reported(truth: dict, tmp_path) -> None:
    for name, writer in WRITERS.items():
        path = tmp_path / name
        writer(truth, str(path))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
        with pytest.raises(WeightFileError, match=name.replace(".", r"\.")):
            load_pretrained(path)
    with pytest.raises(WeightFileError, match="no such weight file"):
        load_pretrained(tmp_path / "missing.pt")


def test_pickle_of_wrong_object_is_refused(tmp_path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.array(pickle.dumps([1, 2]), dtype=object), allow_pickle=True)
    with pytest.raises(WeightFileError, match="x.npy"):
        load_pretrained(path)


def test_t7_tensor_reaching_outside_its_storage_is_refused(tmp_path) -> None:
    # torchfile builds tensors with as_strided from the file's sizes and strides, unchecked: this weight
    # views 1,024 floats through a 1-float storage (reading it returns other memory, or segfaults).
    w = T7Writer()
    w._int(4), w._index(), w._str("V 1"), w._str("nn.Sequential")
    w._int(3), w._index(), w._int(1), w.obj("modules")
    w._int(3), w._index(), w._int(25)
    w.obj(1), w._int(4), w._index(), w._str("V 1"), w._str("nn.SpatialConvolution")
    w._int(3), w._index(), w._int(1), w.obj("weight")
    w._int(4), w._index(), w._str("V 1"), w._str("torch.FloatTensor"), w._int(4)
    for n in (16, 1, 64, 1, 64, 64, 1, 1, 1):  # sizes, strides (in floats), 1-based storage offset
        w._long(n)
    w._int(4), w._index(), w._str("V 1"), w._str("torch.FloatStorage"), w._long(1)
    w.buf += b"\0" * 4
    for i in range(2, 26):
        w.obj(i), w.obj(0)
    path = tmp_path / "oob.t7"
    path.write_bytes(bytes(w.buf))
    with pytest.raises(WeightFileError, match=r"oob\.t7: modules\[0\]\.weight: .*outside its storage"):
        load_pretrained(path)


def test_malformed_t7_and_torch_contents_end_in_weight_file_errors(truth: dict, tmp_path) -> None:
    cases: dict[str, Any] = {
        "no-model.pt": {"format": "soundnet_fast/1", "arch": "soundnet8"},
        "arch-list.pt": {"format": "soundnet_fast/1", "arch": ["soundnet8"], "model": {}},
        "int-keys.pt": {1: torch.zeros(3)},
        "0d-head.pt": {"conv8.0.weight": torch.tensor(1.0), "conv8_2.0.weight": torch.tensor(1.0)},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
    w = T7Writer()
    w.obj(("nn.Sequential", {"modules": 5}))
    (tmp_path / "modules-number.t7").write_bytes(bytes(w.buf))
    for name in [*cases, "modules-number.t7"]:
        with pytest.raises(WeightFileError, match=re.escape(f"{name}: ")):
            load_pretrained(tmp_path / name)


def test_compressed_or_deeply_nested_torch_files_are_refused(truth: dict, tmp_path) -> None:
    src = tmp_path / "sound8.pth"
    write_pth(truth, str(src))
    packed = tmp_path / "packed.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():  # the same checkpoint, its entries deflated (a zip bomb's shape)
            zout.writestr(info.filename, zin.read(info))
    with pytest.raises(WeightFileError, match=r"packed\.pth: zip entry .* is compressed"):
        load_pretrained(packed)
    deep = tmp_path / "deep.pt"  # legacy torch.save layout: its first pickle a million-deep tuple key
    deep.write_bytes(b"\x80\x02}" + b"K\x00" + b"\x85" * 1_000_000 + b"}s.")
    with pytest.raises(WeightFileError, match=r"deep\.pt: .*nests deeper than"):
        load_pretrained(deep)
