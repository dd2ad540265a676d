"""Feature extraction throughput: pool5 features of 10 s clips (the evaluation's tiling), clips/s."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.conftest import DEVICE, Sizes, max_rel_err
from soundnet_fast import SoundNet8
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.inference.extract import features_many


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
