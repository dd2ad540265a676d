"""A training run's record: ``metrics.jsonl``, TensorBoard scalars, the progress bar's text and console lines.

Only rank 0 writes. The run folder is made, and ``config.json`` written, when the :class:`RunLog` is made: after
every check, so a run refused for its options leaves the folder as it was. A resumed run's records continue the
curve: records a killed run wrote past its checkpoint are dropped (``checkpoint.truncate_metrics``), and a fresh
run sets aside those of an earlier one that left no checkpoint (``checkpoint.set_aside_metrics``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from soundnet_fast.console import Progress
from soundnet_fast.fsutil import atomic_write_text
from soundnet_fast.train import checkpoint as ckpt
from soundnet_fast.train.config import TrainConfig

PRINT_EVERY_S = 10.0  # seconds between console lines when no progress bar is shown


def say(text: str, main: bool = True) -> None:
    """A line on stderr, from rank 0 only (``main``)."""
    if main:
        print(text, file=sys.stderr, flush=True)


class RunLog:
    """Where a run's numbers go. ``step`` is the step the run starts from; ``resumed``: from a checkpoint."""

    def __init__(self, cfg: TrainConfig, main: bool, step: int, resumed: bool) -> None:
        self.cfg, self.main = cfg, main
        self.tb: Any = None
        self._last_print = -math.inf
        self._t, self._step = time.perf_counter(), step
        if not main:
            return
        os.makedirs(cfg.out, exist_ok=True)
        if resumed:
            ckpt.truncate_metrics(cfg.out, step)  # records a killed run wrote past its checkpoint
        elif stale := ckpt.set_aside_metrics(cfg.out):
            say(f"note: {cfg.out} held records of a run that left no checkpoint: moved to {stale}")
        atomic_write_text(os.path.join(cfg.out, "config.json"), json.dumps(dataclasses.asdict(cfg), indent=1) + "\n")
        self.tb = self._tensorboard(step)

    def train(self, step: int, values: Mapping[str, float], bar: Progress, seconds_left: float | None) -> None:
        """The train record of the steps since the last one, from the step's counters (``Stepper.read``):
        mean loss (and per head, for the heads with a teacher) and gradient norm over the good steps, the skipped
        steps, clips/s. Shown on ``bar``, or every :data:`PRINT_EVERY_S` as a line when no bar is shown."""
        now = time.perf_counter()
        rate = (step - self._step) * self.cfg.batch_size / max(now - self._t, 1e-9)  # clips/s
        self._t, self._step = now, step
        ok = values["ok"]
        rec: dict[str, Any] = {"step": step, "split": "train"}
        for key in ("loss", "objects", "scenes"):
            name = "loss" if key == "loss" else f"loss_{key}"
            rec[name] = values[key] / ok if ok and (key == "loss" or key in self.cfg.teachers) else None
        rec.update(
            grad_norm=values["grad_norm"] / ok if ok else None,
            skipped=int(values["seen"] - ok),
            skipped_total=int(values["skipped"]),
            clips_per_s=rate,
            lr=self.cfg.lr,
            time=time.time(),
        )
        loss = "nan" if rec["loss"] is None else f"{rec['loss']:.4f}"
        bar.set_text(f"{rate:.1f} clips/s  loss {loss}")
        self.record(rec)
        if not bar.enabled and now - self._last_print > PRINT_EVERY_S:
            self._last_print = now
            left = "" if seconds_left is None else f"  {max(seconds_left, 0.0) / 60:.1f} min of the time budget left"
            say(
                f"step {step}/{self.cfg.steps}  loss {loss}  {rate:.1f} clips/s  skipped {rec['skipped_total']}{left}",
                self.main,
            )

    def record(self, rec: Mapping[str, Any]) -> None:
        """One line of ``metrics.jsonl`` (``step``, ``split``, the values), and its scalars in TensorBoard."""
        if not self.main:
            return
        with open(os.path.join(self.cfg.out, ckpt.METRICS), "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k not in ("step", "split", "time") and v is not None:
                    self.tb.add_scalar(f"{rec['split']}/{k}", v, rec["step"])

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def _tensorboard(self, step: int) -> Any:
        if not self.cfg.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            say(f"note: no TensorBoard scalars ({e}); pip install tensorboard")
            return None
        # purge_step hides events logged past the checkpoint by a killed run (or by one that left no checkpoint),
        # as truncate_metrics / set_aside_metrics do for metrics.jsonl.
        return SummaryWriter(os.path.join(self.cfg.out, "tb"), purge_step=step + 1)


__all__ = ["PRINT_EVERY_S", "RunLog", "say"]
