"""Training checkpoints that survive being killed, and what ``--resume`` needs to continue exactly.

A checkpoint is a native weight file (``weights.native_dict``: ``load_pretrained`` reads it as a model) with
the rest of the run's state added: optimizer, step, loader position, the trainer's device counters, RNG
states and the run's config. It is written with ``fsutil.atomic_torch_save`` (temporary file, fsync,
rename), so a process killed at any instant leaves the previous checkpoint or the new one, never a torn file.
Everything in it is a tensor or a plain Python value, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from soundnet_fast.fsutil import atomic_open, atomic_torch_save, read_jsonl
from soundnet_fast.weights import native_dict

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
TRAIN_FORMAT = "soundnet_fast.train/1"

# Config fields that define what is computed: a resumed run must keep them, or it is a different run.
# The rest (steps, logging cadence, backend, precision, CUDA graphs, ...) may change on --resume.
RUN_FIELDS = (
    "model",
    "teachers",
    "loss",
    "lam",
    "batch_size",
    "lr",
    "lr_schedule",
    "warmup_steps",
    "beta1",
    "beta2",
    "seed",
    "sync_bn",
    "world_size",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run it is asked to continue."""


def checkpoint_path(run_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(run_dir), CHECKPOINT)


# ---------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Every global RNG the training process could draw from (torch CPU and CUDA, numpy, Python)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple | list) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


# ------------------------------------------------------------------------------------- save / load
def save(
    run_dir: str | os.PathLike[str],
    model: torch.nn.Module,
    *,
    optimizer: torch.optim.Optimizer,
    step: int,
    loader: Mapping[str, Any],
    counters: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    finished: bool = False,
) -> str:
    """Write the run's full state to ``run_dir/checkpoint.pt`` atomically; returns the path."""
    path = checkpoint_path(run_dir)
    state = native_dict(
        model,  # type: ignore[arg-type]
        train_format=TRAIN_FORMAT,
        step=int(step),
        finished=bool(finished),
        optimizer=optimizer.state_dict(),
        loader=dict(loader),
        counters={k: v.detach().cpu().clone() for k, v in counters.items()},
        rng=rng_state(),
        config=dict(config),
    )
    atomic_torch_save(state, path)
    return path


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint; a clear error names the file when it is not one."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle errors, ...: all mean "not a readable checkpoint"
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from e
    if not isinstance(state, dict) or state.get("train_format") != TRAIN_FORMAT:
        found = state.get("train_format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: not a training checkpoint (train_format {found!r}, expected {TRAIN_FORMAT!r}); "
            "to start from weights, pass them with --init instead of --resume"
        )
    return state


def check_compatible(saved: Mapping[str, Any], wanted: Mapping[str, Any], path: str) -> None:
    """Raise when ``wanted`` (this invocation's config) changes a field that defines the run."""
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, now {wanted.get(k)!r}"
        for k in RUN_FIELDS
        if _norm(saved.get(k)) != _norm(wanted.get(k))
    ]
    if diffs:
        raise CheckpointError(
            f"{path}: --resume would change the run ({'; '.join(diffs)}); "
            "start a new run with another --out to change these"
        )


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple | list) else v


# ---------------------------------------------------------------------------------------- metrics
def truncate_metrics(run_dir: str | os.PathLike[str], step: int) -> None:
    """Drop ``metrics.jsonl`` records written after ``step`` (by a run killed past its last checkpoint), so
    the resumed run's records continue the curve without duplicates. A torn last line is dropped too."""
    path = os.path.join(os.fspath(run_dir), METRICS)
    if not os.path.exists(path):
        return
    kept: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if int(rec.get("step", 0)) <= step:
                kept.append(json.dumps(rec) + "\n")
    with atomic_open(path, "w") as f:
        f.writelines(kept)


def set_aside_metrics(run_dir: str | os.PathLike[str]) -> str | None:
    """A fresh run in a folder whose earlier run died before its first checkpoint: keep that run's records, under
    ``metrics.jsonl.stale-N``, rather than mixing them into the new curve. Returns the new name, if any."""
    path = os.path.join(os.fspath(run_dir), METRICS)
    if not os.path.exists(path):
        return None
    n = 0
    while os.path.exists(f"{path}.stale-{n}"):
        n += 1
    os.replace(path, f"{path}.stale-{n}")
    return f"{path}.stale-{n}"


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return read_jsonl(os.path.join(os.fspath(run_dir), METRICS))


__all__ = [
    "CHECKPOINT",
    "METRICS",
    "RUN_FIELDS",
    "TRAIN_FORMAT",
    "CheckpointError",
    "check_compatible",
    "checkpoint_path",
    "load",
    "read_metrics",
    "rng_state",
    "save",
    "set_aside_metrics",
    "set_rng_state",
    "truncate_metrics",
]
