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


@pytest.mark.parametrize("backend", ["fused", "auto"])
def test_fused_backends_take_the_fused_loss_and_say_cpu_runs_the_reference(backend: str) -> None:
    r = resolve(backend)
    assert r.loss_backend == "fused"
    assert any("PyTorch reference" in n for n in r.notes)


def test_reference_backend_needs_no_kernels() -> None:
    r = resolve("reference", ImportError("no triton"))
    assert r.loss_backend == "reference" and r.notes == ()


@pytest.mark.parametrize("backend", ["fused", "auto"])
def test_fused_backends_name_the_option_when_the_kernels_do_not_import(backend: str) -> None:
    with pytest.raises(TrainError, match=f"--backend {backend}: the fused kernels do not import \\(no triton\\)"):
        resolve(backend, ImportError("no triton"))
    with pytest.raises(TrainError, match=f"--backend {backend}: soundnet_fast.kernels has no conv1d_bn_relu"):
        resolve(backend, frozenset({"kl_div"}))
