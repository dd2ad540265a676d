"""Tiny training shards for the trainer's tests, written with data.ShardWriter (the real format)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.data.shards import ShardWriter
from soundnet_fast.model import SoundNet5, SoundNet8

# The shortest clips that give one head step (T = 1): SoundNet-5 56,798 samples, SoundNet-8 209,374
# (docs/design.md#model). Short clips keep a CPU step well under a second.
SN5_CLIP = SoundNet5.min_length()
SN8_CLIP = SoundNet8.min_length()
CLASSES = {"objects": 10, "scenes": 7}
REPO = Path(__file__).resolve().parents[2]


def make_shards(
    out: str | os.PathLike[str],
    num_clips: int = 8,
    clip_samples: int = SN5_CLIP,
    steps: int = 1,
    classes: dict[str, int] | None = None,
    clips_per_shard: int = 4,
    seed: int = 0,
) -> str:
    """Clips of loud noise with peaked random teacher posteriors (so top-1 agreement is meaningful)."""
    classes = CLASSES if classes is None else classes
    teachers = {k: {"spec": f"test:{k}", "num_classes": c, "class_names": None} for k, c in classes.items()}
    rng = np.random.default_rng(seed)
    with ShardWriter(out, teachers, SAMPLE_RATE, clip_samples, steps, 5.0, clips_per_shard=clips_per_shard) as w:
        for i in range(num_clips):
            audio = (rng.standard_normal(clip_samples) * 3000).clip(-32768, 32767).astype(np.int16)
            probs = {}
            for k, c in classes.items():
                p = rng.random((steps, c)) ** 4
                probs[k] = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
            meta = {"video": f"v{i}.mp4", "start": 0.0, "frame_times": [2.5 + 5 * t for t in range(steps)]}
            w.add(audio, probs, meta)
    return os.fspath(out)


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "soundnet_fast.train.trainer", *args]


def child_env(threads: int | None = None) -> dict[str, str]:
    """Environment for a trainer subprocess: the repo importable, and by default this process's thread count,
    so a run in a child and one in this process use the same kernels and round the same way."""
    import torch

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = str(threads if threads is not None else torch.get_num_threads())
    return env


def assert_same_run(ref: Path, run: Path, steps: int) -> None:
    """Two finished runs are the same run: weights, Adam state, loader position, and every logged step, loss and
    gradient norm (the comparison the exact-resume tests make)."""
    import torch

    from soundnet_fast.train import checkpoint as ckpt

    a, b = ckpt.load(ref / ckpt.CHECKPOINT), ckpt.load(run / ckpt.CHECKPOINT)
    assert a["step"] == b["step"] == steps and a["finished"] and b["finished"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for (pa, sa), sb in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].values(), strict=True):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (pa, k)
    assert a["loader"] == b["loader"]
    ra, rb = ckpt.read_metrics(ref), ckpt.read_metrics(run)
    assert [r["step"] for r in rb] == list(range(1, steps + 1))  # no step twice, none missing
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    assert [r["grad_norm"] for r in ra] == [r["grad_norm"] for r in rb]
