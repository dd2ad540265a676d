"""The layer tables against docs/design.md#model: lengths, parameter counts, init, geometry, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from soundnet_fast import SoundNet5, SoundNet8
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.model import SOUNDNET8_TRUNK, build

# T column of docs/design.md#model for a 20 s input (441,000 samples).
CLIP20 = 20 * SAMPLE_RATE
DESIGN_T8 = {
    "conv1": 220_501,
    "pool1": 27_562,
    "conv2": 13_782,
    "pool2": 1_722,
    "conv3": 862,
    "conv4": 432,
    "conv5": 217,
    "pool5": 54,
    "conv6": 28,
    "conv7": 15,
    "heads": 4,
}
CHANNELS8 = {"conv1": 16, "pool1": 16, "conv2": 32, "pool2": 32, "conv3": 64, "conv4": 128, "conv5": 256,
             "pool5": 256, "conv6": 512, "conv7": 1024}  # fmt: skip


def test_layer_lengths_match_design_table_by_formula() -> None:
    assert SoundNet8.output_lengths(CLIP20) == DESIGN_T8
    assert SoundNet5.output_lengths(CLIP20)["heads"] == 4


@pytest.fixture(scope="module")
def net8() -> SoundNet8:
    torch.manual_seed(0)
    return SoundNet8().eval()


def test_layer_lengths_match_design_table_by_running(net8: SoundNet8) -> None:
    x = torch.randn(1, 1, CLIP20)
    seen: dict[str, tuple[int, ...]] = {}
    for name in DESIGN_T8:
        if name == "heads":
            continue
        seen[name] = tuple(net8.features(x, name).shape)
    for name, shape in seen.items():
        assert shape == (1, CHANNELS8[name], DESIGN_T8[name]), name
    with torch.no_grad():
        obj, scn = net8(x)
    assert obj.shape == (1, 1000, 4) and scn.shape == (1, 401, 4)


def test_parameter_counts() -> None:
    assert SoundNet8().num_parameters() == 14_352_713
    assert SoundNet5().num_parameters() == 6_202_137
    m = SoundNet8(num_objects=10, num_scenes=7)
    assert m.objects_head.out_channels == 10 and m.scenes_head.out_channels == 7


def test_original_initialisation_statistics() -> None:
    torch.manual_seed(1)
    m = SoundNet8()
    convs = torch.cat([mod.weight.flatten() for mod in m.modules() if isinstance(mod, nn.Conv1d)])
    gammas = torch.cat([mod.weight for mod in m.modules() if isinstance(mod, nn.BatchNorm1d)])
    assert abs(convs.mean().item()) < 1e-4 and abs(convs.std().item() - 0.01) < 2e-4
    assert abs(gammas.mean().item() - 1.0) < 5e-3 and abs(gammas.std().item() - 0.02) < 3e-3
    for mod in m.modules():
        if isinstance(mod, (nn.Conv1d, nn.BatchNorm1d)):
            assert torch.count_nonzero(mod.bias) == 0
        if isinstance(mod, nn.BatchNorm1d):
            assert mod.eps == 1e-5 and mod.momentum == 0.1
            assert torch.all(mod.running_mean == 0) and torch.all(mod.running_var == 1)


def test_state_dict_keys_match_plain_sequential_layout() -> None:
    m = SoundNet8()
    s = SOUNDNET8_TRUNK[0]  # conv1
    ref = nn.Sequential(
        nn.Conv1d(1, s.out_channels, s.kernel, s.stride, s.padding), nn.BatchNorm1d(s.out_channels), nn.ReLU()
    )
    assert [k for k in m.state_dict() if k.startswith("conv1.")] == ["conv1." + k for k in ref.state_dict()]
    assert "conv8.0.weight" in m.state_dict() and "conv8_2.0.bias" in m.state_dict()
    assert "conv5.0.weight" in SoundNet5().state_dict() and "conv5_2.0.weight" in SoundNet5().state_dict()


def test_minimum_lengths_and_geometry() -> None:
    assert SoundNet8.min_length() == 209_374  # docs/design.md#lengths-receptive-field-and-hop (9.5 s)
    assert SoundNet5.min_length() == 56_798  # (2.6 s)
    g = SoundNet8.geometry("pool5")
    assert (g.receptive_field, g.hop) == (17_438, 8_192)
    assert SoundNet8.geometry("conv8").hop == 65_536
    # Frame j covers [offset + j * hop, offset + j * hop + rf): the first pool5 frame starts in the padding.
    assert g.offset < 0 and g.frame_times(3).shape == (3,)


def test_features_runs_only_needed_layers(net8: SoundNet8) -> None:
    ran: list[str] = []
    hooks = [getattr(net8, n).register_forward_hook(lambda *_a, n=n: ran.append(n)) for n in
             ["conv1", "conv2", "conv3", "conv8", "conv8_2"]]  # fmt: skip
    try:
        f = net8.features(torch.randn(2, 1, 4_000), "pool2")
    finally:
        for h in hooks:
            h.remove()
    assert ran == ["conv1", "conv2"]
    assert f.shape == (2, 32, SoundNet8.output_lengths(4_000)["pool2"])


def test_conv_layer_feature_is_pre_pool(net8: SoundNet8) -> None:
    x = torch.randn(1, 1, 3_000)
    c1, p1 = net8.features(x, "conv1"), net8.features(x, "pool1")
    torch.testing.assert_close(torch.nn.functional.max_pool1d(c1, 8, 8), p1)


def test_soundnet5_layers() -> None:
    m = SoundNet5(num_objects=5, num_scenes=3).eval()
    assert SoundNet5.layer_names() == ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "conv4"]
    x = torch.randn(1, 1, 10 * SAMPLE_RATE)
    obj, scn = m(x)
    assert obj.shape == (1, 5, 2) and scn.shape == (1, 3, 2)  # T = 2 at 10 s
    assert m.features(x, "pool3").shape[1] == 128


@pytest.mark.parametrize(
    ("shape", "match"),
    [((1, CLIP20), "batch, 1, samples"), ((1, 2, CLIP20), "batch, 1, samples"), ((CLIP20,), "batch, 1")],
)
def test_bad_shapes(net8: SoundNet8, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        net8(torch.zeros(shape))


def test_non_finite_and_dtype_rejected(net8: SoundNet8) -> None:
    x = torch.zeros(1, 1, 210_000)
    x[0, 0, 5] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        net8(x)
    with pytest.raises(ValueError, match="float"):
        net8(torch.zeros(1, 1, 210_000, dtype=torch.int16))


def test_too_short_names_minimum_and_tiling(net8: SoundNet8) -> None:
    with pytest.raises(ValueError) as e:
        net8(torch.zeros(1, 1, 5 * SAMPLE_RATE))  # a 5 s clip: fails at conv8 without tiling (docs/design.md#model)
    msg = str(e.value)
    assert "209374" in msg and "9.50 s" in msg and "to_input" in msg
    with pytest.raises(ValueError, match="unknown layer"):
        net8.features(torch.zeros(1, 1, 10_000), "conv9")


def test_build_and_backend_switch() -> None:
    m = build("soundnet5", 4, 3)
    assert isinstance(m, SoundNet5) and m.backend == "reference"
    assert m.set_backend("fused").backend == "fused" and all(b.backend == "fused" for b in m.blocks)
    with pytest.raises(ValueError, match="backend"):
        m.set_backend("cuda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="architecture"):
        build("soundnet9")


def test_auto_backend_runs_fused_only_where_it_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    """backend="auto": the fused op for the blocks fused_pays accepts (C_in 1 on CUDA), the reference ops elsewhere;
    on a CPU tensor nothing is fused. The fused op is spied on, so the path taken is seen, not inferred."""
    from soundnet_fast import kernels
    from soundnet_fast import model as model_mod

    m = build("soundnet8", 4, 3).set_backend("auto").train()
    assert m.backend == "auto"
    assert model_mod.fused_pays(m.conv1[0], torch.zeros(1), True) is False  # CPU: cuDNN's question does not arise
    calls: list[int] = []
    real = kernels.conv_bn_relu_modules

    def spy(x, conv, bn, **kw):
        calls.append(conv.in_channels)
        return real(x, conv, bn, **kw)

    monkeypatch.setattr(kernels, "conv_bn_relu_modules", spy)
    x = torch.randn(2, 1, SoundNet8.min_length())
    m(x)
    assert calls == []  # CPU input: the reference ops for every block
    monkeypatch.setattr(model_mod, "fused_pays", lambda conv, x, training: training and conv.in_channels == 1)
    out = m(x)
    assert calls == [1]  # conv1 only
    ref = build("soundnet8", 4, 3).train()
    ref.load_state_dict(m.state_dict())
    for a, b in zip(out, ref(x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    m.eval()(x)
    assert calls == [1]  # eval (not measured): the reference ops
