"""Released-weight layouts (docs/design.md#weight-formats) load and give the features of an independent numpy
forward."""

from __future__ import annotations

import pickle
import re
import zipfile
from typing import Any

import numpy as np
import pytest
import torch

from soundnet_fast import SoundNet8, load_pretrained
from soundnet_fast.cli import main as cli_main
from soundnet_fast.constants import INPUT_SCALE, SAMPLE_RATE
from soundnet_fast.weights import WeightFileError, save_native
from tests.helpers.weights import N_OBJ, N_SCN, WRITERS, T7Writer, np_forward, random_layers, write_pth, write_tf_npy


@pytest.fixture(scope="module")
def truth() -> dict[str, dict[str, np.ndarray]]:
    return random_layers()


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
    assert ck["arch"] == "soundnet8" and ck["sample_rate"] == SAMPLE_RATE and ck["input_scale"] == INPUT_SCALE


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
