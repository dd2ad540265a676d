"""The inference form of SoundNet (``SoundNet.inference()`` / ``soundnet_fast.kernels.fold``): every eval-mode BN
folded into its conv, max-pool before ReLU; every public output equal to the eval-mode model's, state dicts
unchanged, ``train()`` restoring the original (docs/design.md#model)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from soundnet_fast import SoundNet5, SoundNet8
from soundnet_fast import model as model_module
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.inference.extract import features
from soundnet_fast.kernels import fold
from soundnet_fast.model import SoundNet

TOL = 1e-5  # per layer: max|a - b| <= TOL * max|b|


def rel(a: Tensor, b: Tensor) -> float:
    """max|a - b| / max|b|, in fp64."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def random_net(cls: type[SoundNet], seed: int) -> SoundNet:
    """Random conv weights and biases and random, non-trivial BN statistics and affine parameters, eval mode.
    Gammas of both signs: a negative one flips the folded conv's sign, which max-pool before ReLU must survive."""
    g = torch.Generator().manual_seed(seed)
    net = cls(num_objects=12, num_scenes=7)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv1d):
                fan_in = m.in_channels * m.kernel_size[0]
                m.weight.normal_(0.0, fan_in**-0.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
            elif isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.1, 3.0, generator=g)
                m.weight.normal_(0.5, 0.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
    return net.eval()


def state(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def heads(cls: type[SoundNet]) -> list[str]:
    return [h.name for h in cls.head_specs]


@pytest.mark.parametrize(("cls", "seed"), [(SoundNet8, 0), (SoundNet5, 1)])
def test_fold_keeps_every_output(cls: type[SoundNet], seed: int) -> None:
    net = random_net(cls, seed)
    plain = copy.deepcopy(net)
    before = state(net)
    assert fold(net) == len(net.blocks) == len(cls.trunk_specs)  # one per block
    assert net.folded and all(b.folded_weight is not None for b in net.blocks)
    assert fold(net) == 0 and net.inference() is net  # folding again folds nothing more
    assert_same_state(state(net), before)  # the folded tensors are not in the state dict
    short = torch.randn(2, 1, 30_000, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for layer in cls.layer_names():  # every trunk layer, pooled and unpooled
            a, b = net.features(short, layer), plain.features(short, layer)
            assert a.shape == b.shape and rel(a, b) <= TOL, layer
        clip = torch.randn(1, 1, 10 * SAMPLE_RATE, generator=torch.Generator().manual_seed(seed + 10))
        for layer in heads(cls):
            assert rel(net.features(clip, layer), plain.features(clip, layer)) <= TOL, layer
        for a, b in zip(net(clip), plain(clip), strict=True):  # both heads through forward()
            assert a.shape == b.shape and rel(a, b) <= TOL
    # extract's features and frame times of a clip that needs tiling and chunking
    wave = np.random.default_rng(seed).uniform(-1, 1, 25 * SAMPLE_RATE).astype(np.float32)
    layer = cls.layer_names()[-1]
    f_fold, t_fold = features(net, wave, layer, chunk_seconds=11)
    f_plain, t_plain = features(plain, wave, layer, chunk_seconds=11, fold=False)
    assert not plain.folded
    np.testing.assert_array_equal(t_fold, t_plain)
    assert np.abs(f_fold - f_plain).max() <= TOL * np.abs(f_plain).max()


def test_block_folds_like_the_generic_fold() -> None:
    from soundnet_fast.kernels.modules import _folded

    net = random_net(SoundNet5, 2)
    expect = [_folded(b[0], b[1]) for b in net.blocks]
    net.inference()
    for b, conv in zip(net.blocks, expect, strict=True):
        torch.testing.assert_close(b.folded_weight, conv.weight, rtol=1e-6, atol=0)
        torch.testing.assert_close(b.folded_bias, conv.bias, rtol=1e-6, atol=1e-7)


def test_train_restores_the_original() -> None:
    net = random_net(SoundNet5, 3)
    plain = copy.deepcopy(net)
    before = state(net)
    with pytest.raises(ValueError, match="eval"):
        fold(copy.deepcopy(net).train())
    half = copy.deepcopy(net)
    half.conv3.train()  # one block in training mode: fold() refuses before folding any other
    with pytest.raises(ValueError, match="eval"):
        fold(half)
    assert not any(b.folded for b in half.blocks)
    net.inference()
    net.train()
    assert not net.folded and all(b.folded_weight is None for b in net.blocks)
    assert_same_state(state(net), before)
    x = torch.randn(3, 1, 20_000, generator=torch.Generator().manual_seed(3))
    plain.train()
    torch.testing.assert_close(net.features(x, "conv4"), plain.features(x, "conv4"), rtol=0, atol=0)
    assert_same_state(state(net), state(plain))  # the running statistics moved the same way
    net.eval()
    plain.eval()
    assert not net.folded  # eval() alone does not fold
    torch.testing.assert_close(net.features(x, "conv4"), plain.features(x, "conv4"), rtol=0, atol=0)
    assert net.inference().folded


def test_load_state_dict_refolds_and_checkpoints_are_unchanged() -> None:
    net = random_net(SoundNet5, 4).inference()
    other = random_net(SoundNet5, 5)
    net.load_state_dict(other.state_dict())
    assert net.folded
    x = torch.randn(1, 1, 20_000, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert rel(net.features(x, "conv4"), other.features(x, "conv4")) <= TOL
    fresh = SoundNet5(num_objects=12, num_scenes=7)
    fresh.load_state_dict(net.state_dict())  # a folded model's state dict loads into a plain one, strictly
    assert_same_state(state(fresh), state(other))


def test_the_folded_branch_has_one_conv_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Block.forward's folded branch convolves only through model._folded_conv (where a faster conv plugs in)."""
    calls: list[tuple[int, int]] = []
    conv = model_module._folded_conv

    def spy(x: Tensor, w: Tensor, b: Tensor, stride: int, padding: int, pool: int | None) -> Tensor:
        calls.append((stride, padding))
        return conv(x, w, b, stride, padding, pool)

    monkeypatch.setattr(model_module, "_folded_conv", spy)
    net = random_net(SoundNet5, 6)
    x = torch.randn(1, 1, 20_000)
    with torch.no_grad():  # (with autograd reaching the weights a folded block runs the plain ops)
        net.features(x, "conv4")
        assert calls == []  # not folded: the plain ops
        net.inference().features(x, "conv4")
    assert calls == [(s.stride, s.padding) for s in SoundNet5.trunk_specs]


def test_fused_backend_keeps_its_kernel_when_folded(monkeypatch: pytest.MonkeyPatch) -> None:
    net = random_net(SoundNet5, 7)
    x = torch.randn(1, 1, 20_000)
    with torch.no_grad():
        expect = net.features(x, "pool3")
        net.set_backend("fused").inference()

        def refuse(*_a: object) -> Tensor:
            raise AssertionError("backend='fused' ran the folded conv")

        monkeypatch.setattr(model_module, "_folded_conv", refuse)
        assert rel(net.features(x, "pool3"), expect) <= 1e-4  # the fused op (its CPU reference here)


# ---------------------------------------------------------------------------- what a user does next to a fold
def _pair(seed: int = 0) -> tuple[SoundNet5, SoundNet5, torch.Tensor]:
    torch.manual_seed(seed)
    plain = SoundNet5().eval()
    with torch.no_grad():
        for block in plain.blocks:
            block[1].running_mean.uniform_(-0.1, 0.1)
            block[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 1, SoundNet5.min_length()) * 256
    return plain, copy.deepcopy(plain).inference(), x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def test_folded_model_under_cpu_autocast_and_tracing_at_another_batch() -> None:
    plain, folded, x = _pair(1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = folded(x)[0], plain(x)[0]
    assert a.dtype == b.dtype == torch.bfloat16 and _rel(a, b) < 0.05  # bf16 rounding, as the plain model
    with torch.no_grad():
        traced = torch.jit.trace(folded, x[:1], check_trace=False)
        assert _rel(traced(x)[0], plain(x)[0]) <= 1e-5  # the GEMM's Python loop is not unrolled into the trace


def test_edits_and_swaps_of_the_weights_refold() -> None:
    plain, folded, x = _pair(2)
    gen = torch.Generator().manual_seed(5)
    folded.reset_parameters(gen)  # in place: the fold must follow
    plain.reset_parameters(torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert _rel(folded(x)[0], plain(x)[0]) <= 1e-5
        other = SoundNet5().eval()
        swapped = torch.func.functional_call(folded, dict(other.state_dict()), (x,))[0]
        assert _rel(swapped, other(x)[0]) <= 1e-5


def test_gradients_reach_the_weights_and_inference_mode_folds_stay_usable() -> None:
    plain, folded, x = _pair(3)
    folded(x)[0].sum().backward()  # eval-mode fine-tuning: the plain ops run, so the trunk learns
    plain(x)[0].sum().backward()
    assert folded.conv1[0].weight.grad is not None
    assert _rel(folded.conv1[0].weight.grad, plain.conv1[0].weight.grad) <= 1e-4
    late = copy.deepcopy(plain)
    with torch.inference_mode():
        late.inference()
    xx = x.clone().requires_grad_()
    late(xx)[0].sum().backward()  # a saliency map after folding inside inference_mode
    assert xx.grad is not None and bool(xx.grad.abs().sum() > 0)


def test_fold_is_all_or_nothing_when_one_bn_trains() -> None:
    net = SoundNet5().eval()
    net.conv3[1].train()
    with pytest.raises(ValueError, match="training mode"):
        fold(net)
    assert not any(b.folded for b in net.blocks)


def test_fold_false_in_the_python_api_runs_the_plain_ops_on_a_folded_model() -> None:
    from soundnet_fast.inference.predict import predict

    plain, folded, _ = _pair(4)
    wave = np.random.default_rng(4).uniform(-0.5, 0.5, 3 * SAMPLE_RATE).astype(np.float32)
    a, _t = features(folded, wave, "conv4", min_seconds=3.0, fold=False)
    b, _t = features(plain, wave, "conv4", min_seconds=3.0, fold=False)
    assert not folded.folded and np.array_equal(a, b)  # unfolded in place: exactly the plain path
    folded.inference()
    predict(folded, wave, fold=False)
    assert not folded.folded


def test_fold_under_inference_mode_and_torch_compile() -> None:
    """A model built and folded inside torch.inference_mode (inference tensors: no version counters) runs; a
    folded CPU model under torch.compile runs the plain F.conv1d form (dynamo cannot trace the weight caches)
    and gives the same features."""
    x = torch.randn(1, 1, SoundNet8.min_length("pool5") + 123, generator=torch.Generator().manual_seed(0)) * 50
    with torch.inference_mode():
        inf = SoundNet8().inference()
        inf.features(x, "pool5")
    model = SoundNet8().inference()
    with torch.no_grad():
        ref = model.features(x, "pool5")
        got = torch.compile(lambda t: model.features(t, "pool5"), backend="eager")(x)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()
