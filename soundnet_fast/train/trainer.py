"""`soundnet-fast train SHARDS --out RUN`: distill the teachers' posteriors into SoundNet (docs/design.md#distillation).

:class:`Trainer` reads top to bottom as the training script it is (docs/design.md#layout):

1. config      ``train.config``: given options over the checkpoint's over the recipe's defaults, every one checked
               (:func:`~soundnet_fast.train.config.resolve_options`) before any work;
2. data        ``data.loader.ShardLoader`` over the training (and held-out) shards; head sizes from their manifest;
3. model       SoundNet, ``--init`` or checkpoint weights, sync-BN, DDP, fused Adam;
4. step        ``train.step.Stepper``: one optimizer step on the device with no host synchronisation, eager or
               captured whole in one CUDA graph (``--cuda-graphs``); a non-finite step is skipped and counted;
5. log         ``train.log``: ``metrics.jsonl``, TensorBoard, the progress bar (``soundnet_fast.console``); validation;
6. checkpoint  ``train.checkpoint``: atomic, every N steps, on SIGTERM / SIGINT, when :meth:`Trainer.fit`'s time
               budget runs out, and at the end; ``--resume`` continues bit for bit.

Scale-out: ``torchrun --nproc-per-node N -m soundnet_fast.train ...`` runs DDP (nccl on GPUs, gloo on CPU);
``--batch-size`` is the global batch, each rank reads its share of the clips, only rank 0 writes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from soundnet_fast.console import Progress, progress_enabled
from soundnet_fast.errors import UsageError, error_line
from soundnet_fast.model import build
from soundnet_fast.train import checkpoint as ckpt
from soundnet_fast.train.config import (
    KERNEL_BACKENDS,
    TrainConfig,
    TrainError,
    add_arguments,
    checked_manifest,
    config_from_args,
    fused_ops,
    head_sizes,
    lr_factor,
    resolve_options,
)
from soundnet_fast.train.distributed import DistEnv, StopSignals, convert_sync_bn, init_distributed, wrap_ddp
from soundnet_fast.train.log import RunLog, say
from soundnet_fast.train.losses import HEADS, distill_loss, top1_agreement
from soundnet_fast.train.step import Stepper

# What Trainer.fit returns (a signal stop returns 128 + the signal's number, as a shell reports it).
DONE = 0
TIME_UP = 75  # the time budget ran out first; sysexits.h EX_TEMPFAIL, "temporary failure: retry later"
_clock = time.perf_counter  # the time budget's clock (tests replace it)


def run(args: argparse.Namespace) -> int:
    """``soundnet-fast train``: exit status 0 done, 1 a run that could not go on, 128 + signal. Bad options, shards
    or checkpoints raise ``UsageError`` (``soundnet_fast.cli.run_command``: one line, exit status 2)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        cfg, state = config_from_args(args, world)
    except (TrainError, ckpt.CheckpointError) as e:
        raise UsageError(str(e)) from e
    if cfg.deterministic:  # read when cuBLAS makes its handle: before any CUDA work (CUDA reproducibility notes)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        env = init_distributed(cfg.device, cfg.cuda_graphs)
    except ValueError as e:
        raise UsageError(str(e)) from e
    try:
        trainer = Trainer(cfg, env, state)
    except (TrainError, ckpt.CheckpointError, ValueError, OSError) as e:
        env.close()
        raise UsageError(f"{e}{env.tag}") from e
    clean = False
    try:
        code = trainer.fit()
        clean = True
        return code
    except TrainError as e:
        print(error_line("train", f"{e}{env.tag}"), file=sys.stderr)
        return 1
    finally:
        # DDP holds the process group and gloo's workers hold tensors: both must go while the interpreter is
        # whole, or a rank can abort at exit ("terminate called without an active exception").
        trainer.close()
        del trainer
        env.close(wait_for_peers=clean)


def main(argv: list[str] | None = None) -> int:
    """``python -m soundnet_fast.train`` (and under torchrun): user errors as ``soundnet-fast train`` reports them
    (``soundnet_fast.cli.run_command``; ``--debug`` or SOUNDNET_FAST_DEBUG=1 for the traceback)."""
    from soundnet_fast.cli import run_command

    parser = argparse.ArgumentParser(prog="python -m soundnet_fast.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show a user error's traceback instead of one line")
    return run_command("train", run, parser.parse_args(argv))


class Trainer:
    """One training run, built from a config (checked in full before any work); :meth:`fit` trains it.

    ``state`` is a loaded checkpoint (``--resume``): the run continues exactly where it stopped.
    Raises :class:`TrainError` (or ``CheckpointError`` / ``ShardFormatError``) naming what is wrong.
    """

    def __init__(self, cfg: TrainConfig, env: DistEnv, state: dict[str, Any] | None = None) -> None:
        from soundnet_fast.data import shards

        # config: what will run, checked for this process (a pure function; its notes are printed here).
        self.env, self.device = env, env.device
        self.ckpt_path = ckpt.checkpoint_path(cfg.out)
        resolved = resolve_options(
            cfg,
            env,
            resuming=state is not None,
            checkpoint_exists=os.path.exists(self.ckpt_path),
            kernels=fused_ops() if cfg.backend in KERNEL_BACKENDS else frozenset(),
        )
        self.cfg = cfg = resolved.cfg
        self.loss_backend = resolved.loss_backend
        for note in resolved.notes:
            self._say(note)

        # data: the shards' manifest (teachers, head steps) and this rank's loaders.
        self.manifest = checked_manifest(cfg.shards, cfg.teachers, "training shards", allow_partial=cfg.allow_partial)
        self.loader = self._loader(cfg.shards, self.manifest, train=True)
        self.val_loader = None
        if cfg.val:
            vm = checked_manifest(cfg.val, cfg.teachers, "validation shards", like=self.manifest,
                                  allow_partial=cfg.allow_partial)  # fmt: skip
            self.val_loader = self._loader(cfg.val, vm, train=False)

        # model: built from the seed (the same on every rank; DDP also broadcasts rank 0's), then the
        # checkpoint's or --init's weights; heads without a teacher frozen; sync-BN; fused Adam; DDP.
        heads = head_sizes(cfg, self.manifest, state, self.ckpt_path)
        torch.manual_seed(cfg.seed)
        core = build(cfg.model, heads["objects"], heads["scenes"]).to(self.device)
        core.check_inputs = False  # its finiteness check syncs the host; the step skips non-finite input anyway
        try:
            shards.check_model_steps(self.manifest, core)
        except ValueError as e:
            raise TrainError(f"{cfg.shards}: {e}") from e
        if state is not None:
            core.load_state_dict(state["model"])
        elif cfg.init:
            from soundnet_fast.weights import load_pretrained

            core.load_state_dict(load_pretrained(cfg.init).state_dict())
        for name, head in (("objects", core.objects_head), ("scenes", core.scenes_head)):
            if name not in cfg.teachers:  # --teachers ablation: this head gets no loss and stays as it is
                head.requires_grad_(False)
        if cfg.sync_bn and env.world > 1:
            core = convert_sync_bn(core, self.device)
        core.set_backend(cfg.backend)  # type: ignore[arg-type]
        self.core = core
        self.optimizer = torch.optim.Adam(
            [p for p in core.parameters() if p.requires_grad],
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            fused=True,  # the Stepper skips a non-finite step through fused Adam's found_inf
            capturable=cfg.cuda_graphs,  # step count on the device (train.step, invariant 3)
        )
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.net: Any = wrap_ddp(core, self.device, cfg.cuda_graphs) if env.world > 1 else core
        if cfg.compile:
            self.net = torch.compile(self.net)

        # step: forward, loss, backward, Adam (train.step).
        self.stepper = Stepper(
            self.net,
            core,
            self.optimizer,
            device=self.device,
            loss=cfg.loss,  # type: ignore[arg-type]
            lam=cfg.lam,
            backend=self.loss_backend,
            precision=cfg.precision,
            cuda_graphs=cfg.cuda_graphs,
            world=env.world,
        )

        # checkpoint: continue where the loaded one left off (the loader's position, counters, RNG, step).
        self.step = 0
        self.saved_step: int | None = None
        if state is not None:
            self.loader.load_state_dict({**state["loader"], "shard_id": env.rank})
            self.stepper.load_state_dict(state["counters"])
            ckpt.set_rng_state(state["rng"])
            self.step = self.saved_step = int(state["step"])

        # log: the run folder, its config, metrics continuing from the checkpoint, TensorBoard.
        self.log = RunLog(cfg, env.main, self.step, resumed=state is not None)
        self._deadline: float | None = None
        self._on_checkpoint: Callable[[int], None] | None = None
        # Last, so a run that fails its checks leaves the process-wide flag alone; close() restores it.
        self._was_deterministic = torch.are_deterministic_algorithms_enabled()
        if cfg.deterministic:
            # The fused kernels follow this flag too (conv1d_bn_relu's deterministic=None). warn_only: an op
            # without a deterministic version warns rather than stopping a long run.
            torch.use_deterministic_algorithms(True, warn_only=True)
        # Every batch has the same shapes: let cuDNN time its algorithms once (as the H200 figures in README.md were
        # measured), unless the run must repeat bit for bit. close() restores the flag.
        self._was_benchmark = torch.backends.cudnn.benchmark
        if self.device.type == "cuda" and not cfg.deterministic:
            torch.backends.cudnn.benchmark = True

    # ----------------------------------------------------------------------------------- the loop
    def fit(self, max_seconds: float | None = None, *, on_checkpoint: Callable[[int], None] | None = None) -> int:
        """Train to ``cfg.steps``, or for ``max_seconds`` of wall clock (None: no limit) from this call.

        Returns :data:`DONE` at ``cfg.steps``; :data:`TIME_UP` after the step during which the budget ran out
        (with several ranks: at the first log point after it, where the ranks agree); ``128 + signum`` after a
        SIGTERM / SIGINT. Each writes a checkpoint of the step it stopped at, so ``--resume`` (or a new Trainer
        with the checkpoint's state) continues bit for bit, and so may another call of ``fit``.
        ``on_checkpoint(step)`` is called on rank 0 after each checkpoint is written.
        Raises :class:`TrainError` after ``--max-bad-steps`` non-finite steps in a row.
        """
        cfg = self.cfg
        self._deadline = None if max_seconds is None else _clock() + max_seconds
        self._on_checkpoint = on_checkpoint
        if self.step >= cfg.steps:
            self._say(f"{self.ckpt_path} is at step {self.step} of {cfg.steps}: nothing to do (raise --steps to go on)")
            return DONE
        self._say(self._summary())
        shown = self.env.main and progress_enabled(cfg.progress)
        scheduled = cfg.lr_schedule != "constant" or cfg.warmup_steps > 0  # else lr stays the optimizer's float
        with StopSignals() as stop, Progress("train", cfg.steps, completed=self.step, enabled=shown) as bar:
            while True:  # epochs: the loader resumes mid-epoch, then starts the next one
                with contextlib.closing(iter(self.loader)) as batches:
                    for audio, targets in batches:
                        if cfg.cuda_graphs and self.stepper.graph is None:
                            self.stepper.capture(audio, targets, warmup=11 if self.env.world > 1 else 3)
                        if scheduled:
                            for group in self.optimizer.param_groups:
                                group["lr"] = cfg.lr * lr_factor(cfg, self.step)
                        self.stepper.step(audio, targets)
                        self.step += 1
                        bar.advance()
                        status = self._after_step(stop.signum, bar)
                        if status is not None:
                            return status

    def _after_step(self, signum: int, bar: Progress) -> int | None:
        """Log, validate and checkpoint as due; the status to return when the run stops after this step."""
        cfg = self.cfg
        signum, time_up = self._agreed_stop(signum)
        done = self.step >= cfg.steps
        save = done or bool(signum) or time_up or self.step % cfg.checkpoint_every == 0
        if done or self.step % cfg.log_every == 0:
            self._log(bar)
        elif save:  # the bad-run check must see every step before a checkpoint is written
            self._check_bad(self.stepper.read(reset=False))
        if self.val_loader is not None and (done or self.step % cfg.val_every == 0):
            self._validate()
        if save:
            self._save(finished=done)
        where = f"{self.ckpt_path} holds it: continue with --resume"
        if signum:
            self._say(f"stopped by {signal.Signals(signum).name} at step {self.step}; {where}")
            return 128 + signum
        if done:
            self._say(f"done: step {self.step}; weights and state in {self.ckpt_path}")
            return DONE
        if time_up:
            self._say(f"time budget spent at step {self.step} of {cfg.steps}; {where}")
            return TIME_UP
        return None

    def _agreed_stop(self, signum: int) -> tuple[int, bool]:
        """(signal to stop for, time budget spent), the same on every rank (they must stop after the same step)."""
        if self.env.world > 1 and self.step % self.cfg.log_every:  # ranks agree at log points only: no host sync
            return 0, False
        time_up = self._deadline is not None and _clock() >= self._deadline
        if self.env.world == 1:
            return signum, time_up
        flags = torch.tensor([signum, int(time_up)], dtype=torch.int64, device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        agreed = flags.tolist()
        return int(agreed[0]), bool(agreed[1])

    def _check_bad(self, values: Mapping[str, float]) -> None:
        run = int(values["max_bad_run"])
        if run >= self.cfg.max_bad_steps:
            kept = (
                f"the last good checkpoint is {self.ckpt_path} (step {self.saved_step})"
                if self.saved_step is not None
                else "no checkpoint was written"
            )
            raise TrainError(
                f"{run} non-finite steps in a row (by step {self.step}; --max-bad-steps "
                f"{self.cfg.max_bad_steps}); stopped without saving: {kept}"
            )

    def _log(self, bar: Progress) -> None:
        values = self.stepper.read()
        left = None if self._deadline is None else self._deadline - _clock()
        self.log.train(self.step, values, bar, left)
        self._check_bad(values)  # after the record, so the metrics show the run of skipped steps

    @torch.no_grad()
    def _validate(self) -> None:
        """KL (the training loss) on held-out shards, and top-1 agreement with each teacher."""
        cfg, core, loader = self.cfg, self.core, self.val_loader
        assert loader is not None
        core.eval()  # running statistics; the fused kernels likewise
        loader.load_state_dict({"epoch": 0, "position": 0})
        acc = torch.zeros(2 + 2 * len(HEADS), dtype=torch.float64, device=self.device)
        try:
            for i, (audio, targets) in enumerate(loader):
                if cfg.val_batches and i >= cfg.val_batches:
                    break
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                    objects, scenes = core(audio)
                outputs = {"objects": objects, "scenes": scenes}
                kind: Any = cfg.loss
                loss, _ = distill_loss(outputs, targets, kind=kind, lam=cfg.lam, backend=self.loss_backend)
                acc[0] += audio.shape[0]
                acc[1] += loss.double() * audio.shape[0]
                for j, h in enumerate(HEADS):
                    if h in targets:
                        agree, n = top1_agreement(outputs[h], targets[h])
                        acc[2 + 2 * j] += agree
                        acc[3 + 2 * j] += n
        finally:
            core.train()
        if self.env.world > 1:
            dist.all_reduce(acc)
        a = acc.cpu().tolist()
        rec: dict[str, Any] = {"step": self.step, "split": "val", "loss": a[1] / a[0] if a[0] else None}
        for j, h in enumerate(HEADS):
            rec[f"top1_{h}"] = a[2 + 2 * j] / a[3 + 2 * j] if a[3 + 2 * j] else None
        self.log.record(rec)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in rec.items() if isinstance(v, float))
        self._say(f"validation at step {self.step}: {shown}")

    # --------------------------------------------------------------------------------- checkpoint
    def _save(self, finished: bool) -> None:
        if self.env.main:
            ckpt.save(
                self.cfg.out,
                self.core,
                optimizer=self.optimizer,
                step=self.step,
                loader=self.loader.state_dict(),
                counters=self.stepper.state_dict(),
                config=dataclasses.asdict(self.cfg),
                finished=finished,
            )
            self.log.flush()
            if self._on_checkpoint is not None:
                self._on_checkpoint(self.step)
        self.saved_step = self.step

    # ------------------------------------------------------------------------------------- set-up
    def _loader(self, path: str | list[str], manifest: Mapping[str, Any], train: bool) -> Any:
        from soundnet_fast.data import loader as data

        cfg, env = self.cfg, self.env
        per_rank = cfg.batch_size // env.world
        share = int(manifest["num_clips"]) // env.world
        if train and per_rank > share:
            raise TrainError(
                f"--batch-size {cfg.batch_size} ({per_rank} per rank over {env.world}) is larger than "
                f"the data: {path} holds {manifest['num_clips']} clips ({share} per rank)"
            )
        return data.ShardLoader(
            path,
            per_rank,
            shuffle=train,
            seed=cfg.seed,
            shard_id=env.rank,
            num_shards=env.world,
            drop_last=train,
            backend=cfg.loader,  # type: ignore[arg-type]
            device=self.device,
            teachers=cfg.teachers,
            allow_partial=cfg.allow_partial,
        )

    # -------------------------------------------------------------------------------------- misc
    def _summary(self) -> str:
        cfg, env = self.cfg, self.env
        n = sum(p.numel() for p in self.core.parameters())
        return (
            f"training {cfg.model} ({n / 1e6:.2f} M parameters; teachers {','.join(cfg.teachers)}; loss {cfg.loss}) "
            f"on {self.device} x {env.world}: batch {cfg.batch_size} ({cfg.batch_size // env.world} per rank), "
            f"{len(self.loader)} batches per epoch, steps {self.step} -> {cfg.steps}, backend {cfg.backend}, "
            f"{cfg.precision}{', CUDA graphs' if cfg.cuda_graphs else ''}{', compiled' if cfg.compile else ''}"
            f"{', sync-BN' if cfg.sync_bn and env.world > 1 else ''}"
        )

    def _say(self, text: str) -> None:
        say(text, self.env.main)

    def close(self) -> None:
        self.log.close()
        # Drop the DDP wrapper (it references the process group) and the loaders (their prefetch threads).
        self.net = self.stepper = self.loader = self.val_loader = None  # type: ignore[assignment]
        if self.cfg.deterministic:
            torch.use_deterministic_algorithms(self._was_deterministic)
        torch.backends.cudnn.benchmark = self._was_benchmark


__all__ = [
    "DONE",
    "TIME_UP",
    "DistEnv",
    "TrainConfig",
    "TrainError",
    "Trainer",
    "add_arguments",
    "config_from_args",
    "main",
    "run",
]


if __name__ == "__main__":
    sys.exit(main())
