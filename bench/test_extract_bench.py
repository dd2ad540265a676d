"""Feature extraction throughput, clips/s: pool5 features of 10 s clips (the evaluation's tiling) through
``features_many``; and on the CPU the unmodified eval model against the inference path (BN folded, max-pool before
ReLU, :mod:`soundnet_fast.inference.cpu_conv`) for 10 s and 20 s clips, pool5 and conv7, batch 1 and 16, with
each call's peak memory (resident-set growth, :func:`bench.conftest.peak_rss_growth`)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bench.conftest import DEVICE, Sizes, max_rel_err, peak_rss_growth
from soundnet_fast import SoundNet8
from soundnet_fast.constants import INPUT_SCALE, SAMPLE_RATE
from soundnet_fast.inference.cpu_conv import conv_pool_relu, numba_available, reference
from soundnet_fast.inference.extract import features_many
from soundnet_fast.model import ConvSpec


@pytest.mark.parametrize("variant", ["eager", "fused"])
def test_extract_pool5(timed, sizes: Sizes, variant: str) -> None:
    if variant == "fused" and DEVICE.type != "cuda":
        pytest.skip("fused kernels run on CUDA; on a CPU the op dispatches to the eager reference")
    torch.manual_seed(0)
    model = SoundNet8().eval().to(DEVICE)
    n = 2 if sizes.smoke else (64 if DEVICE.type == "cuda" else 8)
    rng = np.random.default_rng(0)
    waves = [rng.uniform(-0.5, 0.5, 5 * SAMPLE_RATE).astype(np.float32) for _ in range(n)]  # ESC-50-like 5 s clips
    ref = features_many(model, waves[:1], "pool5", device=DEVICE)[0][0]
    model.set_backend("reference" if variant == "eager" else "fused")
    got = features_many(model, waves[:1], "pool5", device=DEVICE)[0][0]
    err = max_rel_err(torch.from_numpy(got), torch.from_numpy(ref))
    timed(lambda: features_many(model, waves, "pool5", batch_size=n, device=DEVICE), group="extract pool5 10s",
          variant=variant, items=n, parity_err=err, tol=1e-4)  # fmt: skip
    assert err <= 1e-4


# ------------------------------------------------------------------------------------------------------------------
# CPU extraction matrix: the unmodified eval model against the inference path (``SoundNet.inference()``: BN
# folded into each conv, max-pool before ReLU; conv1 and conv2 through soundnet_fast.inference.cpu_conv's polyphase
# GEMM, F.conv1d for the rest), clips/s and peak memory for 10 s and 20 s clips, pool5 and conv7, batch 1 and 16,
# at torch threads = 2 (the project's CPU machine).
MATRIX_THREADS = 2
MATRIX_TOL = 1e-5  # max|a - b| <= 1e-5 max|b| per layer: the inference path's contract


@pytest.fixture
def cpu_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(MATRIX_THREADS)
    yield MATRIX_THREADS
    torch.set_num_threads(old)


def eval_model(seed: int = 0) -> SoundNet8:
    """``SoundNet8().eval()`` with non-trivial running statistics, so the folded BN is not the identity."""
    torch.manual_seed(seed)
    model = SoundNet8().eval()
    with torch.no_grad():
        for block in model.blocks:
            block[1].running_mean.uniform_(-0.05, 0.05)
            block[1].running_var.uniform_(0.5, 2.0)
    return model


def fold_by_hand(model: SoundNet8) -> list[tuple[ConvSpec, torch.Tensor, torch.Tensor]]:
    """Each block's eval-mode BN folded into its conv: (spec, w * s, (bias - mean) * s + beta), s = gamma / sd.

    Computed from a deep copy, so the eager model in the same run stays untouched.
    """
    folded = []
    with torch.no_grad():
        for block in copy.deepcopy(model).blocks:
            conv, bn = block[0], block[1]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            folded.append(
                (block.spec, conv.weight * scale[:, None, None], (conv.bias - bn.running_mean) * scale + bn.bias)
            )
    return folded


def matrix_input(sizes: Sizes, seconds: int, batch: int, layer: str) -> tuple[torch.Tensor, int, int]:
    """(uniform noise scaled x256 as the model sees it, samples, batch); the smoke run: the shortest input for
    ``layer``, batch <= 2."""
    if sizes.smoke:
        samples, batch = SoundNet8.min_length(layer), min(batch, 2)
    else:
        samples = seconds * SAMPLE_RATE
    rng = np.random.default_rng(seconds * 100 + batch)
    x = torch.from_numpy(rng.uniform(-0.5, 0.5, (batch, 1, samples)).astype(np.float32)) * INPUT_SCALE
    return x, samples, batch


@pytest.mark.parametrize("variant", ["eager", "inference"])  # varies fastest: each pair runs back to back
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("layer", ["pool5", "conv7"])
@pytest.mark.parametrize("seconds", [10, 20])
def test_extract_cpu(timed, sizes: Sizes, cpu_threads: int, variant: str, seconds: int, layer: str, batch: int) -> None:
    """Clips/s, peak memory and parity (max|a - b| <= 1e-5 max|b|) of one cell of the matrix."""
    model = eval_model()
    folded = copy.deepcopy(model).inference()  # the one documented call: SoundNet.inference()
    x, samples, batch = matrix_input(sizes, seconds, batch, layer)
    with torch.no_grad():
        ref = model.features(x, layer)
    if variant == "eager":
        fn = lambda: model.features(x, layer)  # noqa: E731
    else:
        fn = lambda: folded.features(x, layer)  # noqa: E731
    with torch.no_grad():
        err = max_rel_err(fn(), ref)
        peak, how = peak_rss_growth(fn)
    group = f"extract cpu {layer} {seconds}s b{batch}"
    timed(torch.no_grad()(fn), group=group, variant=variant, items=batch, parity_err=err, tol=MATRIX_TOL,
          device="cpu", rounds=sizes.rounds * (4 if batch == 1 else 1), torch_threads=cpu_threads, samples=samples,
          peak_rss_mb=peak / 1e6, peak_rss_mb_per_clip=peak / 1e6 / batch, peak_rss_method=how)  # fmt: skip
    assert err <= MATRIX_TOL


def test_inference_parity_every_layer(sizes: Sizes, cpu_threads: int) -> None:
    """The folded path equals the eval model within 1e-5 relative at every trunk layer (10 s, batch 2)."""
    model = eval_model(seed=1)
    folded = copy.deepcopy(model).inference()
    samples = SoundNet8.min_length("conv7") if sizes.smoke else 10 * SAMPLE_RATE
    x = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (2, 1, samples)).astype(np.float32))
    x = x * INPUT_SCALE
    with torch.no_grad():
        for layer in SoundNet8.layer_names():
            err = max_rel_err(folded.features(x, layer), model.features(x, layer))
            assert err <= MATRIX_TOL, (layer, err)


@pytest.mark.parametrize("impl", ["torch", "gemm", "numba"])
@pytest.mark.parametrize("batch", [1, 16])
def test_conv1_cpu_forms(timed, sizes: Sizes, cpu_threads: int, batch: int, impl: str) -> None:
    """SoundNet-8's conv1 + max-pool + ReLU (BN folded) on 10 s clips: each form of ``conv_pool_relu``."""
    if impl == "numba" and not numba_available():
        pytest.skip("numba is not installed (the eval extra brings it)")
    spec, w, b = fold_by_hand(eval_model())[0]
    x, samples, batch = matrix_input(sizes, 10, batch, "pool1")
    ref = reference(x, w, b, spec.stride, spec.padding, spec.pool)
    with torch.no_grad():
        err = max_rel_err(conv_pool_relu(x, w, b, spec.stride, spec.padding, spec.pool, impl=impl), ref)
    timed(lambda: conv_pool_relu(x, w, b, spec.stride, spec.padding, spec.pool, impl=impl),
          group=f"conv1+pool+relu cpu 10s b{batch}", variant=impl, items=batch, baseline=impl == "torch",
          parity_err=err, tol=MATRIX_TOL, device="cpu", rounds=sizes.rounds * (4 if batch == 1 else 1),
          torch_threads=cpu_threads, samples=samples)  # fmt: skip
    assert err <= MATRIX_TOL


def test_extract_ab_runs(tmp_path) -> None:
    """The paired A/B script (``python -m bench.extract_ab``) at one round: it runs, and its parity holds."""
    import json

    from bench import extract_ab

    out = tmp_path / "ab.json"
    assert extract_ab.main(["--rounds", "1", "--batch", "1", "--seconds", "9.5", "--json", str(out)]) == 0
    cell = json.loads(out.read_text())["cells"][0]
    assert cell["parity_max_rel_err"] <= MATRIX_TOL and cell["eager_ms"] > 0 and cell["inference_ms"] > 0
