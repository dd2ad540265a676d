"""A synthetic dataset in the real on-disk layout, fast enough to build at 2 M clips (docs/design.md#data-at-scale).

``build(root, clips, shards, parts)`` writes ``root/part-0000K-of-0000N/`` folders exactly as ``prepare --part``
would leave them after a finished run (manifest with ``part``, ``complete`` and ``tail``; ``index.jsonl``;
``clipkeys.bin``; one audio and one array per teacher per shard), without going through ``ShardWriter.add`` clip by
clip: whole shards are written with numpy and the index as text. Short clips and tiny class counts keep 2 M clips
at ~0.6 GB (real 20 s clips with two 1000-class teachers would be ~1.8 TB of audio and ~45 GB of teacher rows).
tests/data/test_scale_layout.py checks that a small build equals what ShardWriter writes for the same clips.

Clip ``i`` belongs to video ``v{i // clips_per_video:07d}.mp4``; a video's clips are in the part its id hashes to
(:func:`soundnet_fast.data.parts.part_of`), so any part count splits the same clips. Its audio row is
``[i mod 32768, ...]`` (int16, first sample identifies the clip), its teacher rows put all mass on class
``i mod C``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.data.keys import KEY_DTYPE, KEYS
from soundnet_fast.data.parts import part_name, video_keys
from soundnet_fast.data.shards import FORMAT, INDEX, MANIFEST

TEACHERS = {"objects": 2, "scenes": 3}


def clip_audio(ids: np.ndarray, clip_samples: int) -> np.ndarray:
    """int16 (n, clip_samples): row ``i`` starts with ``ids[i] mod 32768``, then a ramp."""
    rows = np.empty((len(ids), clip_samples), np.int16)
    rows[:] = np.arange(clip_samples, dtype=np.int16)
    rows[:, 0] = (ids % 32768).astype(np.int16)
    return rows


def clip_probs(ids: np.ndarray, steps: int, classes: int) -> np.ndarray:
    """float32 (n, steps, classes): one-hot on class ``ids[i] mod classes`` at every step."""
    out = np.zeros((len(ids), steps, classes), np.float32)
    out[np.arange(len(ids)), :, ids % classes] = 1.0
    return out


def build(
    root: str | os.PathLike[str],
    clips: int,
    shards: int,
    parts: int,
    *,
    clips_per_video: int = 2,
    clip_samples: int = 16,
    steps: int = 1,
) -> dict[str, Any]:
    """Write ``clips`` clips in about ``shards`` shards (whole videos per shard) split into ``parts`` parts.

    Returns ``{"parts": [folders], "bytes": total size}``.
    """
    root = os.fspath(root)
    videos = -(-clips // clips_per_video)
    names = [f"v{v:07d}.mp4" for v in range(videos)]
    vkeys = video_keys(names)
    part_of_video = (vkeys % np.uint64(parts)).astype(np.int64)
    clip_video = np.arange(clips) // clips_per_video
    per_shard = max(1, -(-clips // shards))
    folders, total = [], 0
    for k in range(parts):
        folder = os.path.join(root, part_name(k, parts))
        os.makedirs(folder, exist_ok=True)
        ids = np.flatnonzero(part_of_video[clip_video] == k)
        part = {"index": k, "count": parts, "videos": int(np.count_nonzero(part_of_video == k))}
        total += _write_part(folder, ids, clip_video, names, vkeys, per_shard, clip_samples, steps, part)
        folders.append(folder)
    return {"parts": folders, "bytes": total}


def _write_part(
    folder: str,
    ids: np.ndarray,
    clip_video: np.ndarray,
    names: list[str],
    vkeys: np.ndarray,
    per_shard: int,
    clip_samples: int,
    steps: int,
    part: dict[str, int],
) -> int:
    shards, lines, nbytes = [], [], 0
    start = 0
    keys = np.empty(len(ids), KEY_DTYPE)
    keys["video"] = vkeys[clip_video[ids]]
    first = np.r_[True, clip_video[ids][1:] != clip_video[ids][:-1]]
    run_start = np.maximum.accumulate(np.where(first, np.arange(len(ids)), 0))
    keys["ordinal"] = np.arange(len(ids)) - run_start
    keys["flags"] = 0
    ordinals, videos = keys["ordinal"].tolist(), clip_video[ids].tolist()
    while start < len(ids):
        end = min(start + per_shard, len(ids))
        while end < len(ids) and clip_video[ids[end]] == clip_video[ids[end - 1]]:
            end += 1  # whole videos per shard, as ShardWriter cuts them
        name = f"shard-{len(shards):06d}"
        chunk = ids[start:end]
        np.save(os.path.join(folder, f"{name}.audio.npy"), clip_audio(chunk, clip_samples))
        for t, c in TEACHERS.items():
            np.save(os.path.join(folder, f"{name}.{t}.npy"), clip_probs(chunk, steps, c))
        for row in range(len(chunk)):
            j = start + row
            rec = {"clip": j, "video": names[videos[j]], "start": 20.0 * ordinals[j], "frame_times": []}
            lines.append(json.dumps({**rec, "shard": name, "row": row}) + "\n")
        shards.append({"name": name, "num_clips": len(chunk)})
        start = end
    data = "".join(lines).encode("utf-8")
    with open(os.path.join(folder, INDEX), "wb") as f:
        f.write(data)
    keys.tofile(os.path.join(folder, KEYS))
    n = len(ids)
    manifest = {
        "format": FORMAT, "sample_rate": SAMPLE_RATE, "clip_samples": clip_samples, "steps": steps, "frame_every": 5.0,
        "clip_seconds": clip_samples / SAMPLE_RATE,
        "teachers": {t: {"spec": f"synthetic:{t}", "num_classes": c, "class_names": None} for t, c in TEACHERS.items()},
        "num_clips": n, "num_videos": int(len(np.unique(keys["video"]))), "shards": shards, "silent_clips": 0,
        "audio_hours": n * clip_samples / SAMPLE_RATE / 3600.0, "tail": {"num_clips": n, "index_bytes": len(data)},
        "mono": "first", "frame_decoder": "none", "complete": True, "part": part,
    }  # fmt: skip
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=1) + "\n")
    for entry in os.scandir(folder):
        nbytes += entry.stat().st_size
    return nbytes


def folder_bytes(root: str | os.PathLike[str]) -> int:
    """Bytes of every file under ``root``."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


__all__ = ["TEACHERS", "build", "clip_audio", "clip_probs", "folder_bytes"]
