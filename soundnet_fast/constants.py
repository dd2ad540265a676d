"""The project's shared numbers, each written once (import-light: no torch, no numpy).

Everything else imports these; ``tests/test_facts.py`` fails when the sample rate (or a clip length that is a
multiple of it) is written as a number literal anywhere else. The layer tables live in
:mod:`soundnet_fast.model` (``SOUNDNET8_TRUNK``, ``SOUNDNET5_TRUNK``), the one home of the layer shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# docs/design.md#input: mono at 22,050 Hz (paper Section 2; ``sample_rate = 22050`` in main_train.lua).
SAMPLE_RATE = 22050  # Hz

# docs/design.md#input: Torch's audio.load scaled by 2^-23 is a [-1, 1] waveform times 256; training and the
# released weights use x256 (the original evaluation scripts x512, an option where it applies).
INPUT_SCALE = 256.0

# docs/design.md#input: the original trained on 20 s clips (``fineSize = 22050*20`` in main_train.lua); the released
# heads never read the trunk frames that a 20 s clip leaves unread at its right edge (docs/design.md#predictions).
TRAIN_SECONDS = 20.0

# docs/design.md#teachers-and-targets: teacher name -> classes of its head, in the model's output order
# (conv8 / conv5 objects, then conv8_2 / conv5_2 scenes): VGG16 on ImageNet (``label_dim = 1000``) and on
# Places2 (``label2_dim = 401``) in main_train.lua. Read-only.
HEAD_CLASSES: Mapping[str, int] = MappingProxyType({"objects": 1000, "scenes": 401})

# docs/design.md#distillation: the head names, teacher name -> model head, in the model's output order.
HEADS: tuple[str, ...] = tuple(HEAD_CLASSES)

# How a model's blocks run (soundnet_fast.model.Block.forward): the PyTorch ops, the fused Triton kernels, or the
# fused kernels only where they measured faster than cuDNN (soundnet_fast.model.fused_pays).
BACKENDS: tuple[str, ...] = ("reference", "fused", "auto")

__all__ = ["BACKENDS", "HEADS", "HEAD_CLASSES", "INPUT_SCALE", "SAMPLE_RATE", "TRAIN_SECONDS"]
