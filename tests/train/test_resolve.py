"""train.config.resolve_options: what a run will do with each --backend, and the errors that name the option."""

from __future__ import annotations

import pytest
import torch

from soundnet_fast.train.config import TrainConfig, TrainError, resolve_options
from soundnet_fast.train.distributed import DistEnv

CPU = DistEnv(rank=0, world=1, device=torch.device("cpu"))
KERNELS = frozenset({"conv1d_bn_relu", "kl_div"})


def resolve(backend: str, kernels: frozenset[str] | ImportError = KERNELS):
    cfg = TrainConfig(shards="s", out="o", backend=backend)
    return resolve_options(cfg, CPU, resuming=False, checkpoint_exists=False, kernels=kernels)


@pytest.mark.parametrize(("backend", "note"), [("fused", "PyTorch reference"), ("auto", "fused by numba in training")])
def test_fused_backends_take_the_fused_loss_and_say_what_cpu_runs(backend: str, note: str) -> None:
    r = resolve(backend)
    assert r.loss_backend == "fused"
    assert any(note in n for n in r.notes)


def test_reference_backend_needs_no_kernels() -> None:
    r = resolve("reference", ImportError("no triton"))
    assert r.loss_backend == "reference" and r.notes == ()


@pytest.mark.parametrize("backend", ["fused", "auto"])
def test_fused_backends_name_the_option_when_the_kernels_do_not_import(backend: str) -> None:
    with pytest.raises(TrainError, match=f"--backend {backend}: the fused kernels do not import \\(no triton\\)"):
        resolve(backend, ImportError("no triton"))
    with pytest.raises(TrainError, match=f"--backend {backend}: soundnet_fast.kernels has no conv1d_bn_relu"):
        resolve(backend, frozenset({"kl_div"}))


def test_lr_factor_warmup_then_cosine_to_zero() -> None:
    from soundnet_fast.train.config import lr_factor

    cfg = TrainConfig(steps=110, warmup_steps=10, lr_schedule="cosine")
    f = [lr_factor(cfg, s) for s in range(cfg.steps)]
    assert f[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.5) and f[-1] == pytest.approx(0.0, abs=1e-3)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))  # decreasing after the warm-up
    assert [lr_factor(TrainConfig(steps=50), s) for s in (0, 49)] == [1.0, 1.0]  # the recipe: constant


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr_schedule": "step"}, "--lr-schedule step: choose one of constant, cosine"),
        ({"warmup_steps": 100, "steps": 100}, "--warmup-steps 100: must be >= 0 and below --steps 100"),
        ({"warmup_steps": -1}, "--warmup-steps -1"),
        ({"lr_schedule": "cosine", "cuda_graphs": True}, "--cuda-graphs bakes the learning rate"),
        ({"warmup_steps": 5, "cuda_graphs": True}, "--cuda-graphs bakes the learning rate"),
    ],
)
def test_lr_schedule_errors_name_the_option(options: dict, message: str) -> None:
    cfg = TrainConfig(shards="s", out="o", **options)
    with pytest.raises(TrainError, match=message.replace("(", "\\(")):
        resolve_options(cfg, CPU, resuming=False, checkpoint_exists=False, kernels=KERNELS)
