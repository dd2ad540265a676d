"""The demo's training loop, old against new, on the same shards and config for the same wall-clock budget.

``python -m bench.demo_train_budget --minutes 8`` builds (or reuses) the demo's world and shards as
``soundnet-fast demo`` does (``soundnet_fast.demo.run``'s world and prepare stages, in ``--out``), then trains
back to back from scratch, each for ``--minutes``, after a one-step warm-up neither is timed on:

- ``old``: the loop the demo had before ``Trainer.fit(max_seconds)``: a new Trainer every ~30 s round, each
  resuming the last round's checkpoint (:func:`old_rebuild_loop`, a faithful copy kept as the baseline);
- ``new``: the demo's loop now (``soundnet_fast.demo.run._train``): one Trainer, ``fit(max_seconds=budget)``.

It prints, and writes to ``--json`` (default ``OUT/demo_train_budget.json``), the steps and seconds of each, the
steps ratio new / old, the CPU model (/proc/cpuinfo), the core count and the torch version. ``--shards`` skips the
world and trains on an existing shard folder (the smoke test's tiny shards). Runs in ``OUT/budget-old`` and
``OUT/budget-new`` are removed first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from typing import Any

from soundnet_fast.demo import run as demo


# ------------------------------------------------------------------------------- baseline (old loop)
def old_rebuild_loop(cfg: demo.DemoConfig, paths: dict[str, str], device: str, console: Any) -> int:
    """BASELINE, kept as it was: soundnet_fast/demo/run.py ``_train`` before ``Trainer.fit(max_seconds)``.

    Distil for ``cfg.minutes`` of wall clock: the trainer runs in short rounds, each resuming the last
    checkpoint exactly (``train.Trainer`` with its state), until the budget is spent. Returns the steps.
    (Only the import of ``init_distributed`` changed: ``train.runtime`` became ``train.distributed``.)
    """
    from soundnet_fast.fsutil import atomic_write_text
    from soundnet_fast.train import checkpoint as ckpt
    from soundnet_fast.train.distributed import init_distributed
    from soundnet_fast.train.trainer import TrainConfig, Trainer

    base = TrainConfig(
        shards=paths["shards"],
        out=paths["run"],
        model=cfg.arch,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed if cfg.train_seed is None else cfg.train_seed,
        device=device,
        checkpoint_every=10**9,
        log_every=10,
        progress="off",
        tensorboard=False,
    )
    path = ckpt.checkpoint_path(paths["run"])
    spent_path = os.path.join(paths["run"], "demo_train_seconds.json")
    step, rate, spent = 0, None, 0.0
    if os.path.exists(path):
        step = int(ckpt.load(path)["step"])
        if os.path.exists(spent_path):  # a rerun spends only what is left of the budget
            with open(spent_path, encoding="utf-8") as f:
                spent = float(json.load(f)["seconds"])
        console.print(f"resuming {path} at step {step} ({spent / 60:.1f} min of the budget spent)")
    deadline = time.perf_counter() + cfg.minutes * 60.0 - spent
    env = init_distributed(device)
    try:
        while step < cfg.steps:
            left = deadline - time.perf_counter()
            if left <= 0 and (rate is not None or step > 0):
                break
            # Rounds of ~30 s (at the measured rate) keep the overshoot of the budget small.
            chunk = 5 if rate is None else max(min(10, int(rate * left) + 1), int(rate * min(left, 30.0)))
            chunk = min(chunk, cfg.steps - step)
            state = ckpt.load(path) if os.path.exists(path) else None
            t0 = time.perf_counter()
            trainer = Trainer(dataclasses.replace(base, steps=step + chunk), env, state)
            try:
                code = trainer.fit()
            finally:
                trainer.close()
            dt = time.perf_counter() - t0
            spent += dt
            atomic_write_text(spent_path, json.dumps({"seconds": spent}) + "\n")
            if code != 0:  # stopped by a signal: the checkpoint holds the step it reached
                raise RuntimeError(f"training stopped (exit {code}); rerun the demo with the same --out to resume")
            rate = chunk / max(dt, 1e-6)
            step += chunk
            console.print(
                f"train: step {step}, {rate * cfg.batch_size:.1f} clips/s, "
                f"{max(deadline - time.perf_counter(), 0) / 60:.1f} min left"
            )
    finally:
        env.close()
    return step


# --------------------------------------------------------------------------------------- measuring
def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo ("model name"), or platform.processor() where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def compare(cfg: demo.DemoConfig, shards: str, device: str, console: Any) -> dict[str, Any]:
    """Train from scratch on ``shards`` with the old loop, then with the new one, each for ``cfg.minutes``;
    returns steps and seconds of both (seconds: the loop's wall clock, building and checkpoints included)."""
    import torch

    # Neither loop pays the process's one-time costs (lazy imports, first allocations: ~2 s measured on the
    # first Trainer of a process): one Trainer and one step on a scratch run first.
    scratch = os.path.join(cfg.out, "budget-warmup")
    shutil.rmtree(scratch, ignore_errors=True)
    old_rebuild_loop(
        dataclasses.replace(cfg, minutes=0.0, steps=1), {"shards": shards, "run": scratch}, device, console
    )
    shutil.rmtree(scratch, ignore_errors=True)
    result: dict[str, Any] = {}
    for name, loop in (("old", old_rebuild_loop), ("new", demo._train)):
        run = os.path.join(cfg.out, f"budget-{name}")
        shutil.rmtree(run, ignore_errors=True)
        console.rule(f"{name} loop: {cfg.minutes:g} min")
        t0 = time.perf_counter()
        steps = loop(cfg, {"shards": shards, "run": run}, device, console)
        result[name] = {"steps": steps, "seconds": round(time.perf_counter() - t0, 3)}
    old, new = result["old"]["steps"], result["new"]["steps"]
    result.update(
        steps_ratio=new / old if old else None,
        minutes=cfg.minutes,
        arch=cfg.arch,
        batch_size=cfg.batch_size,
        clip_seconds=cfg.clip_seconds,
        device=device,
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        python=platform.python_version(),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    return result


def build_shards(cfg: demo.DemoConfig, device: str, console: Any) -> str:
    """The demo's world and shards in ``cfg.out``, as ``soundnet-fast demo`` makes them (reused when there)."""
    paths = {k: os.path.join(cfg.out, k) for k in ("teachers", "videos", "labeled", "shards")}
    os.makedirs(cfg.out, exist_ok=True)
    demo._check_same_world(cfg)
    with demo._stage(cfg, console, "world"):
        teachers = demo._world(cfg, paths, console)
    with demo._stage(cfg, console, "prepare"):
        demo._prepare(cfg, paths, teachers, device, console)
    return paths["shards"]


def main(argv: list[str] | None = None) -> int:
    d = demo.DemoConfig()
    p = argparse.ArgumentParser(prog="python -m bench.demo_train_budget", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, required=True, help="training budget of each loop")
    p.add_argument(
        "--out", default=d.out, help="the demo's folder: its world is built there or reused (default %(default)s)"
    )
    p.add_argument("--shards", default=None, help="train on these shards instead of the demo's world")
    p.add_argument("--arch", choices=sorted(demo.CLIP_SECONDS), default=d.arch, help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    p.add_argument("--videos", type=int, default=d.videos, help="world videos (default %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="processes for the world (default %(default)s)")
    p.add_argument("--device", default="cpu", help="default %(default)s")
    p.add_argument("--json", default=None, help="where to write the result (default OUT/demo_train_budget.json)")
    args = p.parse_args(argv)
    from soundnet_fast.console import stderr_console

    console = stderr_console()
    cfg = demo.DemoConfig(
        out=args.out,
        minutes=args.minutes,
        steps=10**9,  # the budget alone stops both loops
        lr_schedule="constant",  # the loops compared ran the recipe's constant learning rate
        arch=args.arch,
        clip_seconds=demo.CLIP_SECONDS[args.arch],
        batch_size=args.batch_size,
        videos=args.videos,
        workers=args.workers,
        device=args.device,
    )
    shards = args.shards or build_shards(cfg, args.device, console)
    result = compare(cfg, shards, args.device, console)
    text = json.dumps(result, indent=1) + "\n"
    path = args.json or os.path.join(cfg.out, "demo_train_budget.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    sys.stdout.write(text)
    ratio = result["steps_ratio"]
    console.print(
        f"old {result['old']['steps']} steps in {result['old']['seconds']:.0f} s, new {result['new']['steps']} "
        f"steps in {result['new']['seconds']:.0f} s: ratio {'n/a' if ratio is None else f'{ratio:.3f}'} "
        f"({result['cpu_model']}, torch {result['torch']}); written to {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
