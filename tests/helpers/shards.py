"""Tiny shard folders for the data tests: clips that identify themselves, written with the real ShardWriter."""

from __future__ import annotations

import os

import numpy as np

from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.data.shards import ShardWriter

CLIP = SAMPLE_RATE // 10  # 0.1 s keeps fixtures tiny; the format does not care about the length
STEPS = 4
TEACHERS = {
    "objects": {"spec": "test:objects", "num_classes": 5, "class_names": [f"o{i}" for i in range(5)]},
    "scenes": {"spec": "test:scenes", "num_classes": 3, "class_names": None},
}


def clip_arrays(i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Clip ``i``: audio whose first sample is ``i`` (identifies the clip), random teacher rows that sum to 1."""
    rng = np.random.default_rng(i)
    audio = rng.integers(-32768, 32767, CLIP, dtype=np.int16, endpoint=True)
    audio[0] = i
    probs = {}
    for name, t in TEACHERS.items():
        p = rng.random((STEPS, t["num_classes"]), dtype=np.float32)
        probs[name] = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    return audio, probs


def write_shards(
    out: str | os.PathLike[str],
    num_videos: int = 7,
    clips_per_video: int = 3,
    clips_per_shard: int = 5,
    silent_every: int = 4,
) -> int:
    """``num_videos`` videos of ``clips_per_video`` clips (clip i is :func:`clip_arrays` ``(i)``, every
    ``silent_every``-th one flagged silent) into ``out``; returns the number of clips."""
    w = ShardWriter(out, TEACHERS, SAMPLE_RATE, CLIP, STEPS, 5.0, clips_per_shard=clips_per_shard)
    i = 0
    for v in range(num_videos):
        for c in range(clips_per_video):
            audio, probs = clip_arrays(i)
            meta = {
                "video": f"v{v}.mp4",
                "start": 20.0 * c,
                "frame_times": [20.0 * c + 2.5 + 5 * t for t in range(4)],
                "silent": i % silent_every == 0,
            }
            w.add(audio, probs, meta)
            i += 1
    w.close()
    return i
