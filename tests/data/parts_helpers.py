"""Datasets split into parts for the data tests: the clips of tests.helpers.shards, written with the real ShardWriter
into ``part-0000K-of-0000N`` folders as ``prepare --part`` would (each video in the part its id hashes to)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.data.parts import part_name, part_of
from soundnet_fast.data.shards import ShardWriter
from tests.helpers.shards import CLIP, STEPS, TEACHERS, clip_arrays


def write_parts(
    root: str | os.PathLike[str],
    parts: int,
    num_videos: int = 7,
    clips_per_video: int = 3,
    clips_per_shard: int = 5,
    only: list[int] | None = None,
    teachers: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    prefix: str = "v",
) -> list[str]:
    """Clip ``i`` (:func:`clip_arrays`) of video ``{prefix}{i // clips_per_video}.mp4`` into the part of its video;
    parts in ``only`` (default: all) are written, complete. Returns their folders."""
    folders = []
    for k in range(parts) if only is None else only:
        folder = os.path.join(os.fspath(root), part_name(k, parts))
        videos = [v for v in range(num_videos) if part_of(f"{prefix}{v}.mp4", parts) == k]
        part = {"index": k, "count": parts, "videos": len(videos)}
        w = ShardWriter(folder, teachers or TEACHERS, SAMPLE_RATE, CLIP, STEPS, 5.0, clips_per_shard=clips_per_shard,
                        extra={"part": part, "complete": True, "mono": "first", **(extra or {})})  # fmt: skip
        for v in videos:
            for c in range(clips_per_video):
                i = v * clips_per_video + c
                audio, probs = clip_arrays(i)
                w.add(audio, probs, {"video": f"{prefix}{v}.mp4", "start": 20.0 * c, "silent": i % 4 == 0})
        w.close()
        folders.append(folder)
    return folders


def clip_ids(audio: torch.Tensor, scale: float = 256.0) -> list[int]:
    """The clip number each row of a float batch (B, 1, L) holds: its first sample x 32768 / scale."""
    return audio[:, 0, 0].mul(32768.0 / scale).round().long().tolist()


def batches(loader: Any, epochs: int = 1) -> list[tuple[list[int], dict[str, np.ndarray]]]:
    """(clip ids, targets as numpy) of every batch over ``epochs`` epochs."""
    out = []
    for _ in range(epochs):
        for audio, targets in loader:
            out.append((clip_ids(audio, loader.scale), {k: v.numpy().copy() for k, v in targets.items()}))
    return out
