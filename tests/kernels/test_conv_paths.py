"""kernels/_conv_paths.py: which kernel family each phase of a block runs, read against the shape rules."""

from __future__ import annotations

import pytest
import torch

from soundnet_fast.kernels._conv_paths import Paths, block_paths
from tests.helpers.kernels import SOUNDNET_LAYERS

# SoundNet-8 (docs/design.md#soundnet-8), bf16, the waveform needing no gradient as in training
EXPECTED = {
    "conv1": Paths("banded", "banded", "banded"),
    "conv2": Paths("rows", "rows", "rows"),  # pools 8
    "conv3": Paths("rows", "generic", "generic"),  # no pool: only the statistics are row GEMMs
    "conv4": Paths("rows", "generic", "generic"),
    "conv5": Paths("rows", "rows", "rows"),  # pools 4
    "conv6": Paths("rows", "generic", "generic"),
    "conv7": Paths("rows", "generic", "generic"),
}


@pytest.mark.parametrize("layer", list(EXPECTED))
def test_soundnet8_blocks(layer: str) -> None:
    c_in, c_out, k, s, _, pool = SOUNDNET_LAYERS[layer]
    assert block_paths(c_in, c_out, k, s, pool, torch.bfloat16, input_grad=layer != "conv1") == EXPECTED[layer]


def test_other_shapes() -> None:
    # a waveform block whose input needs a gradient: the banded backward computes no dx
    assert block_paths(1, 16, 64, 2, 8, torch.float32, input_grad=True) == Paths("banded", "banded", "generic")
    # a pool of 100 needs 128 slots: the pool and backward kernels take 64 columns, only the statistics band
    assert block_paths(1, 4, 3, 1, 100, torch.float32, input_grad=False) == Paths("banded", "generic", "generic")
    # rows not 16-byte aligned (C_in 3): everything generic
    assert block_paths(3, 16, 5, 1, 4, torch.float32) == Paths("generic", "generic", "generic")
