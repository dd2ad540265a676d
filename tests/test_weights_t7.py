"""The original Torch7 models (docs/design.md#torch7-original): SoundNet-5 (main_train_small.lua) and SoundNet-8
(main_train.lua), as saved by Torch7 nn or after ``cudnn.convert``; any other .t7 names the supported layouts."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch

from soundnet_fast import SoundNet5, SoundNet8, load_pretrained
from soundnet_fast.model import SOUNDNET5_HEADS, SOUNDNET5_TRUNK
from soundnet_fast.weights import WeightFileError, read_state_dict
from tests.helpers.weights import (
    EPS,
    N_OBJ,
    N_SCN,
    T7Writer,
    np_forward,
    random_layers,
    t7_modules,
    write_t7,
    write_t7_modules,
)

S5 = {"trunk": SOUNDNET5_TRUNK, "heads": SOUNDNET5_HEADS}
SUPPORTED = (
    "not an original SoundNet Torch7 model; the supported layouts are "
    "SoundNet-8 (main_train.lua, soundnet8_final.t7): 7 conv+BN pairs then a container of the 2 head convs and "
    "SoundNet-5 (main_train_small.lua, soundnet5_final.t7): 4 conv+BN pairs then a container of the 2 head convs"
)


@pytest.fixture(scope="module")
def truth5() -> dict[str, dict[str, np.ndarray]]:
    return random_layers(**S5)


def expected_state(layers: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The state dict the loader should produce from ``layers`` (this project's keys, 1-D conv weights)."""
    out: dict[str, np.ndarray] = {}
    names = {"w": "0.weight", "b": "0.bias", "gamma": "1.weight", "beta": "1.bias"}
    names |= {"mean": "1.running_mean", "var": "1.running_var"}
    for layer, p in layers.items():
        out.update({f"{layer}.{names[k]}": v for k, v in p.items()})
    return out


@pytest.mark.parametrize("variant", ["nn", "cudnn", "running_std"])
def test_soundnet5_t7_loads_every_tensor_and_runs(variant: str, truth5: dict, tmp_path) -> None:
    path = str(tmp_path / "soundnet5_final.t7")
    write_t7(truth5, path, **S5, prefix="cudnn" if variant == "cudnn" else "nn", running_std=variant == "running_std")
    state, arch, meta = read_state_dict(path)
    assert arch == "soundnet5" and meta == {"source": "t7"}
    want = expected_state(truth5)
    keys = {k for k in SoundNet5(N_OBJ, N_SCN).state_dict() if not k.endswith("num_batches_tracked")}
    assert set(state) == set(want) == keys
    for key, value in want.items():
        assert state[key].dtype == torch.float32, key
        if variant == "running_std" and key.endswith("running_var"):  # 1 / std^2 - eps, in float64
            np.testing.assert_allclose(state[key].numpy(), value, rtol=1e-5, err_msg=key)
        else:
            np.testing.assert_array_equal(state[key].numpy(), value, err_msg=key)

    model = load_pretrained(path)
    assert isinstance(model, SoundNet5) and not model.training
    assert (model.num_objects, model.num_scenes) == (N_OBJ, N_SCN)
    rng = np.random.default_rng(2)
    wave = (rng.uniform(-1, 1, SoundNet5.min_length() + 30_000) * 256).astype(np.float32)
    ref = np_forward(truth5, wave, **S5)
    x = torch.from_numpy(wave).view(1, 1, -1)
    with torch.no_grad():
        for layer in ("conv1", "pool2", "pool3", "conv4"):
            got = model.features(x, layer)[0].double().numpy()
            np.testing.assert_allclose(got, ref[layer], rtol=2e-4, atol=2e-4 * np.abs(ref[layer]).max())
        obj, scn = model(x)
    for got, name in ((obj, "conv5"), (scn, "conv5_2")):
        np.testing.assert_allclose(got[0].double().numpy(), ref[name], rtol=2e-4, atol=2e-4 * np.abs(ref[name]).max())


def test_soundnet8_after_cudnn_convert_reads_like_nn(tmp_path) -> None:
    truth = random_layers()
    write_t7(truth, str(tmp_path / "nn.t7"))
    write_t7(truth, str(tmp_path / "cudnn.t7"), prefix="cudnn")  # cudnn.* classes, torch.CudaTensor weights
    assert b"cudnn.SpatialBatchNormalization" in (tmp_path / "cudnn.t7").read_bytes()
    a, arch_a, _ = read_state_dict(str(tmp_path / "nn.t7"))
    b, arch_b, _ = read_state_dict(str(tmp_path / "cudnn.t7"))
    assert arch_a == arch_b == "soundnet8" and a.keys() == b.keys() == expected_state(truth).keys()
    for key, value in expected_state(truth).items():
        np.testing.assert_array_equal(b[key].numpy(), value, err_msg=key)
        assert torch.equal(a[key], b[key])
    assert isinstance(load_pretrained(tmp_path / "cudnn.t7"), SoundNet8)


def test_bn_eps_of_the_file_is_kept_in_running_var(truth5: dict, tmp_path) -> None:
    mods = t7_modules(truth5, **S5)
    mods[5][1]["eps"] = 1e-3  # conv2's BN: normalises with sqrt(var + 1e-3); the model's BN eps is 1e-5
    write_t7_modules(mods, str(tmp_path / "eps.t7"))
    state, _, _ = read_state_dict(str(tmp_path / "eps.t7"))
    var = truth5["conv2"]["var"].astype(np.float64)
    np.testing.assert_allclose(state["conv2.1.running_var"].double().numpy() + EPS, var + 1e-3, rtol=1e-6)
    np.testing.assert_array_equal(state["conv1.1.running_var"].numpy(), truth5["conv1"]["var"])


def test_other_t7_files_name_the_supported_layouts(truth5: dict, tmp_path) -> None:
    rng = np.random.default_rng(3)
    linear = [("nn.Linear", {"weight": rng.normal(size=(4, 4)).astype(np.float32), "bias": np.zeros(4, np.float32)})]
    s8 = t7_modules(random_layers())
    three_heads = t7_modules(truth5, **S5)
    three_heads[15][1]["modules"].append(three_heads[15][1]["modules"][0])
    bn_in_heads = t7_modules(truth5, **S5)
    bn_in_heads[15][1]["modules"].append(bn_in_heads[13])
    cases: dict[str, tuple[list[Any], str]] = {
        "linear.t7": (linear * 10, "found nn.Sequential of 10 modules (10 nn.Linear), conv+BN pairs at []"),
        "first-10.t7": (
            s8[:10],
            "found nn.Sequential of 10 modules (3 nn.SpatialConvolution, 3 nn.SpatialBatchNormalization, "
            "2 nn.ReLU, 2 nn.SpatialMaxPooling), conv+BN pairs at [0, 4, 8]",
        ),
        "no-heads.t7": (s8[:24], "conv+BN pairs at [0, 4, 8, 11, 14, 18, 21]"),
        "three-heads.t7": (three_heads, "conv+BN pairs at [0, 4, 8, 12], 3 conv(s) inside modules[15]"),
        "unpaired.t7": (s8[:1] + s8[2:], "unpaired conv / BN modules at [0]"),
        "bn-in-heads.t7": (bn_in_heads, "found a BatchNorm inside a container at modules[15].modules[2]"),
    }
    for name, (mods, found) in cases.items():
        write_t7_modules(mods, str(tmp_path / name))
        with pytest.raises(WeightFileError, match=re.escape(f"{name}: {SUPPORTED}; found ")) as err:
            load_pretrained(tmp_path / name)
        assert found in str(err.value), (name, str(err.value))
    w = T7Writer()
    w.obj({"weights": np.zeros(3, np.float32)})  # a plain table, not a module
    (tmp_path / "table.t7").write_bytes(bytes(w.buf))
    with pytest.raises(WeightFileError, match=re.escape(f"table.t7: {SUPPORTED}; found a table without a list")):
        load_pretrained(tmp_path / "table.t7")


def test_container_holding_itself_is_refused(tmp_path) -> None:
    w = T7Writer()  # nn.Sequential{modules = {c}} where c = nn.ConcatTable{modules = {c}}: a cycle
    for cls in ("nn.Sequential", "nn.ConcatTable"):  # the torch object, its table, its modules list
        w._int(4), w._index(), w._str("V 1"), w._str(cls)
        w._int(3), w._index(), w._int(1), w.obj("modules")
        w._int(3), w._index(), w._int(1), w.obj(1)
    w._int(4), w._int(4)  # a reference to object 4, the ConcatTable
    (tmp_path / "cycle.t7").write_bytes(bytes(w.buf))
    with pytest.raises(WeightFileError, match=r"cycle\.t7: modules\[0\]\.modules\[0\]: a container met twice"):
        load_pretrained(tmp_path / "cycle.t7")


def test_mismatched_shapes_and_geometry_name_the_module(truth5: dict, tmp_path) -> None:
    def broken(edit: Any) -> str:
        mods = t7_modules(truth5, **S5)
        edit(mods)
        path = str(tmp_path / "soundnet5_final.t7")
        write_t7_modules(mods, path)
        with pytest.raises(WeightFileError, match=r"soundnet5_final\.t7: ") as err:
            load_pretrained(path)
        return str(err.value)

    def narrow_conv3(m: list) -> None:
        m[8][1]["weight"] = m[8][1]["weight"][:100]

    assert "modules[8] holds conv3.0.weight shaped (100, 64, 16); SoundNet-5 (main_train_small.lua" in broken(
        narrow_conv3
    )
    assert "(128, 64, 16)" in broken(narrow_conv3)

    def short_bn4(m: list) -> None:
        m[13][1]["running_mean"] = m[13][1]["running_mean"][:5]

    assert "modules[13] holds conv4.1.running_mean shaped (5,);" in broken(short_bn4)

    def stride_conv2(m: list) -> None:
        m[4][1]["dH"] = 3

    assert "modules[4] has stride 3 along time; SoundNet-5 (main_train_small.lua, soundnet5_final.t7) has 2" in (
        broken(stride_conv2)
    )

    def pool3_of_4(m: list) -> None:
        m[11][1]["kH"] = m[11][1]["dH"] = 4

    assert "max-pool after conv3's BN (modules[9]): found kernel 4 stride 4 at modules[11]; SoundNet-5" in (
        broken(pool3_of_4)
    )

    def no_pool2(m: list) -> None:
        del m[7]

    assert "max-pool after conv2's BN (modules[5]): found none; SoundNet-5 (main_train_small.lua, " in broken(no_pool2)

    def pool_after_conv4(m: list) -> None:
        m.insert(15, m[11])

    assert "max-pool after conv4's BN (modules[13]): found kernel 8 stride 8 at modules[15]; " in broken(
        pool_after_conv4
    )

    def head_kernel(m: list) -> None:
        m[15][1]["modules"][1][1]["weight"] = m[15][1]["modules"][1][1]["weight"][:, :, :8]
        m[15][1]["modules"][1][1]["kH"] = 8

    assert "modules[15].modules[1] has kernel 8 along time" in broken(head_kernel)

    def no_bias(m: list) -> None:
        del m[0][1]["bias"]

    assert "modules[0] has no 'bias' tensor" in broken(no_bias)
