"""conv_pool_relu (CPU inference conv -> max-pool -> ReLU, BN folded) against F.conv1d + max_pool1d + relu."""

from __future__ import annotations

import builtins
import sys

import pytest
import torch

from soundnet_fast.constants import INPUT_SCALE, SAMPLE_RATE
from soundnet_fast.inference import cpu_conv
from soundnet_fast.inference.cpu_conv import conv_pool_relu, conv_relu, polyphase_weight, reference
from soundnet_fast.model import SOUNDNET8_TRUNK

TOL = 1e-5  # max|a - b| <= TOL * max|b|: fp32 with another summation order (the inference path's contract)
CONV1 = SOUNDNET8_TRUNK[0]  # C_in 1, C_out 16, k 64, s 2, p 32, pool 8 (docs/design.md#soundnet-8)
C1 = (CONV1.stride, CONV1.padding, CONV1.pool)
HAS_NUMBA = cpu_conv.numba_available()
IMPLS = ["auto", "cl", "gemm", "torch"] + (["numba"] if HAS_NUMBA else [])


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30))


def weights(c_out: int, c_in: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # N(0, 0.01) as the original init (docs/design.md#batchnorm-and-init), scaled as a folded BN would
    w = torch.randn(c_out, c_in, k, generator=g) * 0.01 * (1 + torch.rand(c_out, 1, 1, generator=g))
    return w, 0.1 * torch.randn(c_out, generator=g)


def speech_like(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    """A real-like waveform in the model's input units (x256): harmonics with an envelope, plus noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SAMPLE_RATE
    f0 = 110 + 300 * torch.rand(batch, 1, 1, generator=g)
    wave = sum(torch.sin(2 * torch.pi * h * f0 * t) / h for h in range(1, 6))
    env = 0.5 * (1 + torch.sin(2 * torch.pi * 3 * t))
    noise = 0.05 * torch.randn(batch, 1, samples, generator=g)
    return (0.4 * env * wave + noise).float() * INPUT_SCALE


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", ["uniform", "speech"])
def test_conv1_parity(impl: str, batch: int, kind: str) -> None:
    samples = 3 * SAMPLE_RATE + 7  # odd, not a multiple of the pooled hop (16 samples); several GEMM groups
    g = torch.Generator().manual_seed(1)
    x = (
        (torch.rand(batch, 1, samples, generator=g) * 2 - 1) * INPUT_SCALE
        if kind == "uniform"
        else speech_like(batch, samples)
    )
    w, b = weights(CONV1.out_channels, 1, CONV1.kernel)
    ref = reference(x, w, b, CONV1.stride, CONV1.padding, CONV1.pool)
    got = conv_pool_relu(x, w, b, CONV1.stride, CONV1.padding, CONV1.pool, impl=impl)
    assert got.shape == ref.shape and got.dtype == torch.float32
    if impl == "cl":  # oneDNN's choice: a channels-last view, or (one input channel) the plain layout
        assert got.is_contiguous() or got.unsqueeze(2).is_contiguous(memory_format=torch.channels_last)
    else:
        assert got.is_contiguous()
    assert rel_err(got, ref) <= TOL
    assert (got >= 0).all()


def layer(index: int, length: int, c_out: int | None = None) -> tuple:
    """(C_in, C_out, k, stride, padding, pool, length) of SoundNet-8's trunk layer ``index``."""
    spec = SOUNDNET8_TRUNK[index]
    c_in = SOUNDNET8_TRUNK[index - 1].out_channels if index else 1
    return (c_in, c_out or spec.out_channels, spec.kernel, spec.stride, spec.padding, spec.pool, length)


# (C_in, C_out, k, stride, padding, pool, length): conv2's shape, an unpooled layer (conv4), odd sizes, no padding,
# stride 1, short inputs.
SHAPES = [
    layer(1, 1723),
    layer(3, 431),
    (3, 5, 7, 3, 2, 3, 1001),
    (2, 4, 5, 1, 0, 2, 64),
    layer(0, 97),
    layer(0, 40, c_out=8),
    (5, 6, 3, 1, 1, None, 9),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes_parity(impl: str, shape: tuple, batch: int) -> None:
    c_in, c_out, k, stride, padding, pool, length = shape
    x = torch.randn(batch, c_in, length, generator=torch.Generator().manual_seed(2)) * 3
    w, b = weights(c_out, c_in, k, seed=3)
    ref = reference(x, w, b, stride, padding, pool)
    got = conv_pool_relu(x, w, b, stride, padding, pool, impl=impl)
    assert got.shape == ref.shape
    if ref.numel():
        assert rel_err(got, ref) <= TOL
    if pool is None:
        assert torch.equal(conv_relu(x, w, b, stride, padding, impl=impl), got)


@pytest.mark.parametrize(("frames", "group"), [(16, 3), (7, 1), (1000, 8), (1, 2)])
def test_gemm_chunking(monkeypatch: pytest.MonkeyPatch, frames: int, group: int) -> None:
    """Any chunk size and group count (equal chunks, the last group overhanging the output) gives the same result."""
    monkeypatch.setattr(cpu_conv, "CHUNK_FRAMES", frames)
    monkeypatch.setattr(cpu_conv, "GROUP", group)
    x = torch.randn(2, 16, 1723, generator=torch.Generator().manual_seed(5))
    w, b = weights(32, 16, 32, seed=6)
    assert rel_err(conv_pool_relu(x, w, b, 2, 16, 8, impl="gemm"), reference(x, w, b, 2, 16, 8)) <= TOL


@pytest.mark.parametrize("impl", IMPLS)
def test_too_short_raises_as_pytorch(impl: str) -> None:
    """No conv frame (k > padded length), or fewer conv frames than one pool: PyTorch's RuntimeError."""
    w, b = weights(CONV1.out_channels, 1, CONV1.kernel)
    for length, padding in ((10, 0), (5, 32)):
        x = torch.randn(1, 1, length)
        with pytest.raises(RuntimeError):
            reference(x, w, b, 2, padding, 8)
        with pytest.raises(RuntimeError):
            conv_pool_relu(x, w, b, 2, padding, 8, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_bias_and_nan(impl: str) -> None:
    x = torch.randn(2, 1, 600, generator=torch.Generator().manual_seed(4))
    w, _ = weights(CONV1.out_channels, 1, CONV1.kernel)
    ref = reference(x, w, None, *C1)
    assert rel_err(conv_pool_relu(x, w, None, *C1, impl=impl), ref) <= TOL
    x[0, 0, 300] = float("nan")  # a NaN input poisons the frames that see it, as in the reference
    got, ref = conv_pool_relu(x, w, None, *C1, impl=impl), reference(x, w, None, *C1)
    assert torch.equal(got.isnan(), ref.isnan()) and got.isnan().any()


def test_auto_picks_the_gemm_for_the_waveform_conv_only() -> None:
    in_channels = [1] + [s.out_channels for s in SOUNDNET8_TRUNK[:-1]]
    trunk = zip(SOUNDNET8_TRUNK, in_channels, strict=True)
    picks = {s.name: cpu_conv.pick(s.kernel, s.stride, s.pool, c) for s, c in trunk}
    assert picks == {"conv1": "gemm", "conv2": "cl", "conv3": "cl", "conv4": "cl", "conv5": "cl", "conv6": "cl",
                     "conv7": "cl"}  # fmt: skip
    assert cpu_conv.pick(64, 2, None, 1) == "cl"  # unpooled: no polyphase GEMM
    assert cpu_conv.pick(8, 4, 8, 1) == "cl"  # a pool whose GEMM would waste over half its FLOPs


def test_cl_layers_chain_without_copies() -> None:
    """A "cl" output fed to the next "cl" layer is read in place (no layout copy), and the chain equals the
    reference chain."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 16, 1500, generator=g)
    (w1, b1), (w2, b2) = weights(32, 16, 32, seed=1), weights(64, 32, 16, seed=2)
    h = conv_pool_relu(x, w1, b1, 2, 16, 8, impl="cl")
    assert h.unsqueeze(2).is_contiguous(memory_format=torch.channels_last)
    got = conv_relu(h, w2, b2, 2, 8, impl="cl")
    ref = reference(reference(x, w1, b1, 2, 16, 8), w2, b2, 2, 8)
    assert rel_err(got, ref) <= TOL


def test_polyphase_weight_rows() -> None:
    w = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    big = polyphase_weight(w, stride=2, pool=3).view(3, 2, 3, 8)  # W = (3 - 1) * 2 + 4 = 8
    for r in range(3):
        assert torch.equal(big[r, :, :, 2 * r : 2 * r + 4], w)
        assert big[r].abs().sum() == w.abs().sum()  # zeros elsewhere


def test_gradients_take_the_reference() -> None:
    """The fast forms are inference-only: ``auto`` runs the differentiable reference when a gradient is needed,
    an explicit fast ``impl`` refuses."""
    x = torch.randn(1, 2, 200, requires_grad=True)
    w, b = weights(4, 2, 9)
    w.requires_grad_(True)
    conv_pool_relu(x, w, b, 2, 4, 4).sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad, w.grad = None, None
    reference(x, w, b, 2, 4, 4).sum().backward()
    assert torch.equal(gx, x.grad) and torch.equal(gw, w.grad)
    for impl in ("gemm", "numba"):
        with pytest.raises(ValueError, match="inference-only"):
            conv_pool_relu(x, w, b, 2, 4, 4, impl=impl)
    with torch.no_grad():
        assert rel_err(conv_pool_relu(x, w, b, 2, 4, 4, impl="gemm"), reference(x, w, b, 2, 4, 4)) <= TOL


def test_without_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    """A base install has no numba: ``auto`` still works (pure torch), ``numba`` says what is missing."""
    real_import = builtins.__import__

    def no_numba(name: str, *args, **kwargs):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("No module named 'numba'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_numba)
    monkeypatch.delitem(sys.modules, "numba", raising=False)
    monkeypatch.delitem(sys.modules, "soundnet_fast.inference.cpu_conv_numba", raising=False)
    assert not cpu_conv.numba_available()
    x = torch.randn(2, 1, 3000)
    w, b = weights(CONV1.out_channels, 1, CONV1.kernel)
    ref = reference(x, w, b, *C1)
    assert rel_err(conv_pool_relu(x, w, b, *C1), ref) <= TOL
    with pytest.raises(ValueError, match="numba"):
        conv_pool_relu(x, w, b, *C1, impl="numba")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x, w, b: (x.double(), w, b), "float32"),
        (lambda x, w, b: (x, w.half(), b), "float32"),
        (lambda x, w, b: (x, w, b.to(torch.bfloat16)), "float32"),
        (lambda x, w, b: (x.to("meta"), w, b), "CPU"),
        (lambda x, w, b: (x[0], w, b), r"\(B, C_in, L\)"),
        (lambda x, w, b: (x.expand(1, 2, -1), w, b), "channels"),
        (lambda x, w, b: (x, w, b[:3]), "b must be"),
        (lambda x, w, b: (x.numpy(), w, b), "torch.Tensor"),
    ],
)
def test_bad_inputs_raise(change, match: str) -> None:
    x = torch.randn(1, 1, 500)
    w, b = weights(CONV1.out_channels, 1, CONV1.kernel)
    with pytest.raises(ValueError, match=match):
        conv_pool_relu(*change(x, w, b), *C1)


def test_bad_arguments_raise() -> None:
    x, (w, b) = torch.randn(1, 1, 500), weights(CONV1.out_channels, 1, CONV1.kernel)
    for stride, padding, pool in ((0, 32, 8), (2, -1, 8), (2, 32, 0)):
        with pytest.raises(ValueError, match="stride"):
            conv_pool_relu(x, w, b, stride, padding, pool)
    with pytest.raises(ValueError, match="impl"):
        conv_pool_relu(x, w, b, *C1, impl="mkldnn")  # type: ignore[arg-type]


def test_matches_model_block() -> None:
    """The model's conv1 block in eval mode (conv -> BN -> ReLU -> pool) against its BN folded by hand."""
    from soundnet_fast import SoundNet8

    torch.manual_seed(0)
    block = SoundNet8().eval().conv1
    with torch.no_grad():
        block[1].running_mean.uniform_(-0.05, 0.05)
        block[1].running_var.uniform_(0.5, 2.0)
        conv, bn = block[0], block[1]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w, b = conv.weight * scale[:, None, None], (conv.bias - bn.running_mean) * scale + bn.bias
        x = speech_like(2, SAMPLE_RATE)
        ref = block(x)
        for impl in IMPLS:
            assert rel_err(conv_pool_relu(x, w, b, *C1, impl=impl), ref) <= TOL, impl


def test_the_polyphase_matrix_is_built_once_per_weight_and_follows_edits() -> None:
    import gc

    from soundnet_fast.inference import cpu_conv

    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(16, 1, 64, generator=g), torch.randn(16, generator=g)
    x = torch.randn(1, 1, 20_000, generator=g)
    cpu_conv.conv_pool_relu(x, w, b, 2, 32, 8, impl="gemm")
    first = cpu_conv._POLYPHASE[id(w)][4]
    cpu_conv.conv_pool_relu(x, w, b, 2, 32, 8, impl="gemm")
    assert cpu_conv._POLYPHASE[id(w)][4] is first  # reused
    w.mul_(-1.5)  # an in-place edit: rebuilt, and the output follows it
    got = cpu_conv.conv_pool_relu(x, w, b, 2, 32, 8, impl="gemm")
    ref = cpu_conv.reference(x, w, b, 2, 32, 8)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()
    key = id(w)
    del w
    gc.collect()
    assert key not in cpu_conv._POLYPHASE  # freed with its weight


@pytest.mark.parametrize("shape", [(8, 1, 5), (8, 4, 1), (8, 4, 3)], ids=["c_in1", "k1", "c_in4-k3"])
def test_channels_last_weight_cache_frees_with_its_weight(shape: tuple) -> None:
    """The cached channels-last copy is a copy even where the view would already count as channels-last
    (C_in 1, k 1): a cached view would keep the weight, and its entry, alive for good."""
    import gc
    import weakref

    from soundnet_fast.inference import cpu_conv

    refs = []
    for seed in range(3):
        w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        x = torch.randn(1, shape[1], 64)
        got = conv_pool_relu(x, w, None, 1, 0, 2, impl="cl")
        assert rel_err(got, reference(x, w, None, 1, 0, 2)) <= TOL
        refs.append((weakref.ref(w), id(w)))
        del w
    gc.collect()
    assert all(r() is None for r, _ in refs)
    assert not any(key in cpu_conv._CHANNELS_LAST for _, key in refs)


@pytest.mark.parametrize("impl", ["auto", "cl", "gemm"])
def test_inference_tensor_weights(impl: str) -> None:
    """Weights made under torch.inference_mode (no version counter) run, uncached."""
    with torch.inference_mode():
        w = torch.randn(16, 1, 64) * 0.01
        w2 = torch.randn(8, 16, 32) * 0.01
        x = torch.randn(2, 1, 4000) * 50
        for ww, xx, pool in ((w, x, 8), (w2, torch.randn(2, 16, 900), None)):
            if impl == "gemm" and pool is None:
                continue
            got = conv_pool_relu(xx, ww, None, 2, 16, pool, impl=impl)
            assert rel_err(got, reference(xx, ww, None, 2, 16, pool)) <= TOL
