"""The launches a training step makes, per configuration (architecture, batch, clip length, dtype).

Layer tables come from ``soundnet_fast.model`` (SOUNDNET8_TRUNK / SOUNDNET5_TRUNK, head lengths from
``output_lengths``); the launches themselves are recorded by ``bench/aot_check.train_step_launches``,
which runs the real launchers on meta tensors with ``wrap_triton`` replaced by a recorder.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from bench import aot_check
from soundnet_fast import constants
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.model import SoundNet5, SoundNet8

ARCHS = {"soundnet8": SoundNet8, "soundnet5": SoundNet5}
SECONDS = {"soundnet8": 20.0, "soundnet5": 3.0}  # clip lengths modelled: the 20 s training clips; 3 s for SoundNet-5
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
HEAD_CLASSES = tuple(constants.HEAD_CLASSES.values())  # docs/design.md#teachers-and-targets: objects, scenes


@dataclasses.dataclass(frozen=True)
class Config:
    arch: str
    batch: int
    dtype: str
    seconds: float
    deterministic: bool = False

    @property
    def samples(self) -> int:
        return int(round(self.seconds * SAMPLE_RATE))

    @property
    def key(self) -> str:
        det = "-det" if self.deterministic else ""
        return f"{self.arch}-b{self.batch}-{self.seconds:g}s-{self.dtype}{det}"


def trunk_rows(arch: str) -> list[tuple]:
    return [(s.name, s.out_channels, s.kernel, s.stride, s.padding, s.pool) for s in ARCHS[arch].trunk_specs]


def head_rows(arch: str, samples: int) -> list[tuple[str, int, int]]:
    model = ARCHS[arch]
    steps = model.output_lengths(samples)["heads"]
    return [(h.name, c, steps) for h, c in zip(model.head_specs, HEAD_CLASSES, strict=True)]


def record(cfg: Config) -> tuple[list[aot_check.Launch], dict[tuple, list[str]]]:
    """(launches, other device ops per (layer, phase)) of one training step of ``cfg``.
    fp32 runs TF32 products (the kernels follow cudnn.allow_tf32, True by default)."""
    precision = "tf32" if cfg.dtype == "fp32" else "ieee"
    return aot_check.train_step_launches(
        trunk_rows(cfg.arch), cfg.batch, cfg.samples, DTYPES[cfg.dtype], precision=precision,
        deterministic=cfg.deterministic, heads=head_rows(cfg.arch, cfg.samples))  # fmt: skip


def configs(archs=("soundnet8", "soundnet5"), batches=(64, 256), dtypes=("bf16", "fp32"),
            deterministic: bool = True) -> list[Config]:  # fmt: skip
    out = []
    for arch in archs:
        for batch in batches:
            for dt in dtypes:
                out.append(Config(arch, batch, dt, SECONDS[arch]))
                if deterministic:
                    out.append(Config(arch, batch, dt, SECONDS[arch], deterministic=True))
    return out


def tensor_bytes(t: Any) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0
