"""The colour-and-tone world of the prepare tests: videos whose every frame's colour and every 5 s window's tone
encode the window index, a teacher that reads the colour back, and readers of the shards prepare wrote.

Window ``w`` covers [5 w, 5 w + 5) s of a video (one teacher frame per window, docs/design.md#teachers-and-targets).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from soundnet_fast.data.shards import read_index, shard_files
from soundnet_fast.prepare.teachers import IMAGENET_MEAN, IMAGENET_STD, Teacher

NUM_COLOURS = 10


def colour(w: int) -> tuple[int, int, int]:
    """The colour of 5 s window ``w``: far apart in RGB so H.264/VP9 cannot blur one into another."""
    return ((w * 97) % 256, (40 + w * 53) % 256, (200 + w * 131) % 256)


PALETTE = torch.tensor([colour(w) for w in range(NUM_COLOURS)], dtype=torch.float32) / 255.0  # (NUM_COLOURS, 3)


class ColourTeacher(nn.Module):
    """Colour -> class: logits are minus the distance of the frame's mean colour to each window colour."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) ImageNet-normalised frames -> (N, NUM_COLOURS) logits."""
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        rgb = (x * std + mean).mean(dim=(2, 3))  # undo the ImageNet normalisation
        return -torch.cdist(rgb, PALETTE) * 60.0


def frame_window(t: float) -> int:
    """The 5 s window that time ``t`` (seconds) falls in."""
    return int(t // 5)


def colour_frames(size: tuple[int, int] = (64, 48)) -> Callable[[float], np.ndarray]:
    """A frame function for ``write_video``: time (s) -> uint8 (height, width, 3) frame of its window's colour."""
    w, h = size
    return lambda t: np.broadcast_to(np.array(colour(frame_window(t)), np.uint8), (h, w, 3)).copy()


def tone_of(w: float | np.ndarray) -> float | np.ndarray:
    """The tone (Hz) of window ``w``: 300 Hz plus 110 Hz per window, far apart in a 5 s spectrum."""
    return 300.0 + 110.0 * w


def window_tones(t: np.ndarray) -> np.ndarray:
    """An audio function for ``write_video``: times (s) -> samples in [-0.4, 0.4] of each window's tone."""
    return 0.4 * np.sin(2 * np.pi * tone_of(np.floor(t / 5)) * t)  # tone_of is affine: works on arrays


def stereo_tones(t: np.ndarray) -> np.ndarray:
    """Left: the window tone; right: a fixed 3 kHz tone (prepare keeps the first channel). Shape (2, len(t))."""
    return np.stack([window_tones(t), 0.4 * np.sin(2 * np.pi * 3000.0 * t)])


def colour_teacher() -> Teacher:
    """The :class:`ColourTeacher` as prepare's ``objects`` teacher, on the CPU."""
    return Teacher(ColourTeacher(), spec="test:colour", num_classes=NUM_COLOURS, device="cpu")


def clips_by_video(out: str | os.PathLike[str]) -> dict[str, list[dict]]:
    """The index records of the shard folder ``out``, grouped by video, in clip order."""
    grouped: dict[str, list[dict]] = {}
    for r in read_index(out):
        grouped.setdefault(r["video"], []).append(r)
    return grouped


def load_clip(out: str | os.PathLike[str], rec: dict) -> tuple[np.ndarray, np.ndarray]:
    """One clip of ``out``: its int16 (clip_samples,) audio and float32 (steps, classes) ``objects`` rows."""
    files = shard_files(out, rec["shard"], ["objects"])
    return np.load(files["audio"], mmap_mode="r")[rec["row"]], np.load(files["objects"])[rec["row"]]
