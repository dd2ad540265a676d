"""What one transfer evaluation runs with: :class:`EvalConfig` (every option, with its default and where that
default comes from) and :class:`Setup` (the options a run resolves from the weights and the dataset).

Light to import (no torch, no scikit-learn): the ``evaluate`` command's parser reads its defaults from here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from soundnet_fast.evaluation.protocols import DEFAULT_CS, PROTOCOLS

RESULTS_FORMAT = "soundnet_fast.evaluate/1"
# pool5: the paper's best ESC-50 layer with AlexNet teachers (Table 6, docs/design.md#transfer-evaluation);
# SoundNet-5 has no pool5; conv4 is its last layer before the heads (docs/design.md#soundnet-5).
DEFAULT_LAYER = {"soundnet8": "pool5", "soundnet5": "conv4"}
ARCH_TITLES = {"soundnet8": "SoundNet-8", "soundnet5": "SoundNet-5"}
MONO_MODES = ("first", "mean")  # the original keeps the first channel; the mean is an option (docs/design.md#input)
SCALE_NOTE = (
    "x256 is the training scale; x512 (2^-22 of int32 samples) is what the original evaluation scripts "
    "used for the paper's numbers (docs/design.md#transfer-evaluation)"
)


class EvaluationError(ValueError):
    """The evaluation cannot run as asked (bad layer, too few usable clips, ...); the message says why."""


@dataclass(frozen=True)
class EvalConfig:
    """Every option of one transfer evaluation (docs/design.md#transfer-evaluation).

    ``None`` means "derived": from the weights (``layer``, ``input_scale``), the protocol (``C``) or the dataset
    (``window_seconds``, ``out_dir``); :func:`soundnet_fast.evaluation.steps.load_setup` resolves them.
    """

    dataset: str  # one of soundnet_fast.evaluation.datasets.DATASETS (docs/design.md#datasets)
    data_dir: str | os.PathLike[str]  # the dataset's folder, in its published layout
    weights: (
        str | os.PathLike[str]
    )  # sound8.npy, .t7, sound8.pth or a native checkpoint (docs/design.md#weight-formats)
    layer: str | None = None  # None: DEFAULT_LAYER of the weights' architecture
    protocol: str = "pooled"  # one of PROTOCOLS (docs/design.md#protocols); pooled is the project's definition
    # None: the scale the checkpoint records, else 256, the training scale; 512 is the original evaluation's
    # (docs/design.md#input).
    input_scale: float | None = None
    baselines: bool = False  # also MFCC statistics and the same network with random weights (Table 4's rows)
    out_dir: str | os.PathLike[str] | None = None  # None: evaluation/<dataset>
    cache_dir: str | os.PathLike[str] | None = None  # None: features.default_cache_dir()
    mono: str = "first"  # one of MONO_MODES; first: the original (docs/design.md#input)
    min_seconds: float = 10.0  # clips are tiled circularly to this length, as the original (docs/design.md#input)
    num_folds: int = 5  # the folder dataset's folds; ESC-50 and DCASE 2013 fix theirs (docs/design.md#datasets)
    test_dir: str | os.PathLike[str] | None = None  # dcase2013 only: the challenge's test set folder
    test_key: str | os.PathLike[str] | None = None  # dcase2013 only: its key file (<file> <class> lines)
    # None: pooled searches Cs by inner cross-validation; windows uses protocols.WINDOWS_C = 0.01, the original's.
    C: float | None = None
    Cs: Sequence[float] = DEFAULT_CS  # the pooled protocol's grid for C (protocols.DEFAULT_CS says why)
    # windows protocol only; None: the dataset's (1 s for ESC, 5 s for DCASE, docs/design.md#protocols).
    window_seconds: float | None = None
    batch_size: int = 8  # clips per forward pass: memory only, the features do not depend on it
    device: str = "cpu"  # where the network runs (torch device string)
    backend: str = "reference"  # reference, fused (the Triton kernels, docs/design.md#kernels) or auto
    # The networks run their inference form, BN folded into the convs (SoundNet.inference). Its features equal
    # the plain path's within 1e-5 of their largest value (tests/test_fold.py), so both share one feature cache.
    fold: bool = True
    seed: int = 0  # the random-weight baselines' initialisation, the BN clip sample and t-SNE
    bn_clips: int = 256  # development clips (labels unused) that re-estimate the random baseline's BN statistics
    plots: bool = True  # confusion-matrix PNG per method and the weights' t-SNE PNG
    n_jobs: int | None = 1  # parallel fits in the search for C (joblib; -1: every core)

    def check(self) -> None:
        """Raise :class:`EvaluationError` for a protocol or mono mode this project does not know."""
        if self.protocol not in PROTOCOLS:
            raise EvaluationError(f"unknown protocol {self.protocol!r}; choose one of {PROTOCOLS}")
        if self.mono not in MONO_MODES:
            raise EvaluationError(f"mono must be 'first' or 'mean', got {self.mono!r}")

    def output_folder(self) -> str:
        """``out_dir``, or ``evaluation/<dataset>`` when it is None."""
        return os.fspath(self.out_dir) if self.out_dir is not None else os.path.join("evaluation", self.dataset)


@dataclass(frozen=True)
class Setup:
    """What a run resolved from its config, the weights and the dataset."""

    weights: str  # absolute path of the weight file
    model: Any  # the loaded soundnet_fast.model.SoundNet
    layer: str  # the feature layer (cfg.layer or DEFAULT_LAYER)
    input_scale: float  # waveform scale (cfg.input_scale, the checkpoint's, or 256)
    window: int  # frames of `layer` per window of the windows protocol
    cache_root: str  # feature cache folder
    out_dir: str  # where results.json and the plots go (created)

    @property
    def arch_title(self) -> str:
        return ARCH_TITLES[self.model.arch]


__all__ = [
    "ARCH_TITLES",
    "DEFAULT_LAYER",
    "MONO_MODES",
    "RESULTS_FORMAT",
    "SCALE_NOTE",
    "EvalConfig",
    "EvaluationError",
    "Setup",
]
