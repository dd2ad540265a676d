"""Memory: what the autograd graph keeps alive per 20 s clip after the SoundNet-8 trunk's forward, and on a
GPU the peak device memory of a training forward + backward.

The saved-storage count is device-independent: it walks the graph (built-in nodes' saved tensors, custom
Functions' saved tensors and ctx attributes, each storage once; docs/design.md#memory-accounting) on the meta device,
where the fused op's autograd registration saves exactly what it saves on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import DEVICE, ON_GPU, Sizes
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.kernels import saved_activation_bytes
from soundnet_fast.model import SoundNet8


def saved_bytes_per_clip(backend: str, samples: int = 20 * SAMPLE_RATE) -> int:
    with torch.device("meta"):
        model = SoundNet8(backend=backend)
        x = torch.randn(1, 1, samples)
    model.check_inputs = False  # the finiteness check reads data; meta tensors have none
    return saved_activation_bytes(model.features(x, "conv7"), exclude=[*model.parameters(), *model.buffers()])


@pytest.mark.parametrize("variant", ["eager", "fused"])
def test_trunk_memory(timed, sizes: Sizes, variant: str) -> None:
    backend = "reference" if variant == "eager" else "fused"
    saved = saved_bytes_per_clip(backend)
    print(f"\nSoundNet-8 trunk, 20 s clip, fp32: {variant} keeps {saved / 1e6:.2f} MB for the backward")
    if variant == "fused" and not ON_GPU:
        pytest.skip(f"fused trunk timing needs CUDA (saved per clip, counted on meta: {saved / 1e6:.2f} MB)")
    torch.manual_seed(0)
    model = SoundNet8(backend=backend).to(DEVICE).train()
    model.check_inputs = False
    x = torch.randn(sizes.batch, 1, max(sizes.samples, SoundNet8.min_length("conv7")), device=DEVICE)
    peak = None
    if ON_GPU:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        model.features(x, "conv7").sum().backward()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / sizes.batch

    def step() -> None:
        model.features(x, "conv7").sum().backward()

    counted = {v: saved_bytes_per_clip(b) / 1e6 for v, b in (("eager", "reference"), ("fused", "fused"))}
    timed(step, group="trunk fwd+bwd memory fp32", variant=variant, items=sizes.batch,
          saved_mb_per_clip=counted, peak_mb_per_clip=None if peak is None else peak / 1e6)  # fmt: skip


def test_fused_keeps_at_most_a_quarter() -> None:
    eager, fused = saved_bytes_per_clip("reference"), saved_bytes_per_clip("fused")
    assert fused * 4 <= eager, (fused, eager)
