"""`soundnet-fast train SHARDS --out RUN`: distill the teachers' posteriors into SoundNet (docs/design.md#distillation).

Defaults are the original recipe (main_train.lua): SoundNet-8 on 20 s clips, batch 64, Adam lr 1e-3 beta1 0.9,
the KL loss with lambda = 250 over the (head, step) terms (soundnet_fast.train.losses). Head sizes come from the shards'
manifest.

Pieces, top to bottom:
- ``train_runtime.Stepper`` does one optimizer step on the device with no host synchronisation; a non-finite
  step is skipped by predication and counted on the device. The same code runs eagerly (CPU or GPU) or captured
  whole - forward, backward, optimizer - in one CUDA graph (``--cuda-graphs``).
- :class:`Trainer` (this file, the trainer top to bottom: docs/design.md#layout) checks every option before any
  work, then owns the loop: data (``data.ShardLoader``), logging (rich progress bar, ``metrics.jsonl``,
  TensorBoard), validation on held-out shards, atomic checkpoints every N steps and on SIGTERM/SIGINT, ``--resume``.
- Scale-out: ``torchrun --nproc-per-node N -m soundnet_fast.train ...`` runs DDP (nccl on GPUs, gloo on CPU);
  ``--batch-size`` is the global batch, each rank reads its share of the clips, only rank 0 writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from soundnet_fast.fsutil import atomic_write_text
from soundnet_fast.model import ARCHITECTURES, SoundNet, build
from soundnet_fast.train import checkpoint as ckpt
from soundnet_fast.train.losses import HEADS, LAMBDA, distill_loss, top1_agreement
from soundnet_fast.train.runtime import DistEnv, ProgressBar, Stepper, StopSignals, convert_sync_bn, init_distributed

DEFAULT_HEADS = {"objects": 1000, "scenes": 401}  # VGG16 ImageNet / Places2 teachers, docs/design.md#distillation


class TrainError(RuntimeError):
    """A run that cannot start or cannot go on; the message says why and what was kept."""


@dataclasses.dataclass
class TrainConfig:
    shards: str = ""
    out: str = ""
    val: str | None = None
    model: str = "soundnet8"
    teachers: list[str] = dataclasses.field(default_factory=lambda: list(HEADS))
    loss: str = "kl"
    lam: float = LAMBDA
    batch_size: int = 64  # global, over all ranks (main_train.lua batchSize)
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999  # optim.adam's default, which main_train.lua keeps
    steps: int = 100_000  # "about 100 K iterations", docs/design.md#optimiser
    precision: str = "fp32"
    backend: str = "reference"
    cuda_graphs: bool = False
    compile: bool = False
    deterministic: bool = False
    sync_bn: bool = False
    device: str = "auto"
    seed: int = 0
    loader: str = "auto"
    checkpoint_every: int = 1000
    log_every: int = 50
    val_every: int = 1000
    val_batches: int = 0  # 0: the whole held-out set
    max_bad_steps: int = 10
    init: str | None = None
    progress: str = "auto"
    tensorboard: bool = True
    world_size: int = 1  # set from torchrun's environment, recorded so --resume can check it


# ------------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    # Every default is None so that --resume can tell what was given from what the checkpoint's config holds.
    p.add_argument("shards", nargs="?", help="shard folder written by `soundnet-fast prepare`")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, metrics.jsonl, tb/, config.json")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt (exactly where it left)")
    p.add_argument("--val", default=None, help="held-out shard folder for validation")
    p.add_argument("--model", choices=sorted(ARCHITECTURES), default=None, help="default soundnet8")
    p.add_argument("--teachers", default=None, help="comma list of teachers to distill: objects,scenes (default)")
    p.add_argument("--loss", choices=("kl", "l2"), default=None, help="default kl (docs/design.md#loss)")
    p.add_argument("--lambda", dest="lam", type=float, default=None, help=f"loss scale (default {LAMBDA:g})")
    p.add_argument("--batch-size", type=int, default=None, help="global batch over all ranks (default 64)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3)")
    p.add_argument("--beta1", type=float, default=None, help="Adam beta1 (default 0.9)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps in all (default 100000)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="bf16: autocast, fp32 master weights")
    p.add_argument("--backend", choices=("reference", "fused"), default=None, help="PyTorch ops or Triton kernels")
    p.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="capture forward+backward+Adam in one CUDA graph (CUDA only)",
    )
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
    p.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="deterministic kernels (torch.use_deterministic_algorithms; the fused backward then uses no atomics): "
        "for GPU runs that must repeat bit for bit, at some cost in speed (CPU runs repeat bit for bit anyway)",
    )
    p.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="BatchNorm statistics over the global batch (default: per rank)",
    )
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    p.add_argument("--seed", type=int, default=None, help="initialisation and data order (default 0)")
    p.add_argument("--loader", choices=("auto", "numpy", "dali"), default=None, help="shard loader backend")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 1000)")
    p.add_argument("--log-every", type=int, default=None, help="steps between metrics records (default 50)")
    p.add_argument("--val-every", type=int, default=None, help="steps between validations (default 1000)")
    p.add_argument("--val-batches", type=int, default=None, help="validation batches (default 0: all)")
    p.add_argument(
        "--max-bad-steps", type=int, default=None, help="stop after this many non-finite steps in a row (default 10)"
    )
    p.add_argument("--init", default=None, help="start from these weights (sound8.npy, .t7, .pth, native)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default=None, help="progress bar (auto: on a tty)")
    p.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write TensorBoard scalars to RUN/tb (default on)",
    )


def config_from_args(args: argparse.Namespace, world_size: int = 1) -> tuple[TrainConfig, dict[str, Any] | None]:
    """This invocation's config: given options over the checkpoint's config (--resume) over the defaults.

    Returns the config and the checkpoint state when resuming.
    """
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    if isinstance(given.get("teachers"), str):
        given["teachers"] = [t.strip() for t in given["teachers"].split(",") if t.strip()]
    given["world_size"] = world_size
    state = None
    base = dataclasses.asdict(TrainConfig())
    if args.resume:
        path = ckpt.checkpoint_path(args.out)
        state = ckpt.load(path)
        saved = dict(state.get("config", {}))
        ckpt.check_compatible(saved, {**saved, **given}, path)
        base.update({k: v for k, v in saved.items() if k in base})
    cfg = TrainConfig(**{**base, **given})
    if not cfg.shards:
        raise TrainError("no shard folder given: soundnet-fast train SHARDS --out RUN")
    return cfg, state


def run(args: argparse.Namespace) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        cfg, state = config_from_args(args, world)
    except (TrainError, ckpt.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.deterministic:  # read when cuBLAS makes its handle: before any CUDA work (CUDA reproducibility notes)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        env = init_distributed(cfg.device, cfg.cuda_graphs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        trainer = Trainer(cfg, env, state)
    except (TrainError, ckpt.CheckpointError, ValueError, OSError) as e:
        print(f"error{env.tag}: {e}", file=sys.stderr)
        env.close()
        return 2
    clean = False
    try:
        code = trainer.fit()
        clean = True
        return code
    except TrainError as e:
        print(f"error{env.tag}: {e}", file=sys.stderr)
        return 1
    finally:
        # DDP holds the process group and gloo's workers hold tensors: both must go while the interpreter is
        # whole, or a rank can abort at exit ("terminate called without an active exception").
        trainer.close()
        del trainer
        env.close(wait_for_peers=clean)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soundnet_fast.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


# ------------------------------------------------------------------------------------------ trainer
class Trainer:
    """Builds everything from a config (checking it all before any work) and runs the loop."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, state: dict[str, Any] | None = None) -> None:
        from soundnet_fast.data import shards as data

        self.cfg, self.env, self.device = cfg, env, env.device
        self.ckpt_path = ckpt.checkpoint_path(cfg.out)
        self._check_options(state)
        self.manifest = self._manifest(cfg.shards, "training shards")
        heads = self._head_sizes(state)
        torch.manual_seed(cfg.seed)  # the same initialisation on every rank (DDP also broadcasts rank 0's)
        core = build(cfg.model, heads["objects"], heads["scenes"]).to(self.device)
        core.check_inputs = False  # its finiteness check syncs the host; the step skips non-finite input anyway
        try:
            data.check_model_steps(self.manifest, core)
        except ValueError as e:
            raise TrainError(f"{cfg.shards}: {e}") from e
        if state is not None:
            core.load_state_dict(state["model"])
        elif cfg.init:
            self._load_init(core)
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
            fused=True,
            capturable=cfg.cuda_graphs,  # fused: device-side found_inf skip (Stepper)
        )
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.net = self._wrap(core)
        self.loader = self._loader(cfg.shards, self.manifest, train=True)
        self.val_loader = None
        if cfg.val:
            vm = self._manifest(cfg.val, "validation shards")
            for key in ("clip_samples", "steps"):
                if vm[key] != self.manifest[key]:
                    raise TrainError(
                        f"{cfg.val}: {key} {vm[key]} differs from the training shards' {self.manifest[key]}"
                    )
            self.val_loader = self._loader(cfg.val, vm, train=False)
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
        self.step = 0
        self.saved_step: int | None = None
        if state is not None:
            self.loader.load_state_dict({**state["loader"], "shard_id": env.rank})
            self.stepper.load_state_dict(state["counters"])
            ckpt.set_rng_state(state["rng"])
            self.step = self.saved_step = int(state["step"])
        self.tb: Any = None
        self._last_print = -math.inf
        self._t_log, self._step_log = time.perf_counter(), self.step
        if env.main:
            os.makedirs(cfg.out, exist_ok=True)
            if state is not None:
                ckpt.truncate_metrics(cfg.out, self.step)  # records a killed run wrote past its checkpoint
            elif stale := ckpt.set_aside_metrics(cfg.out):
                self._say(f"note: {cfg.out} held records of a run that left no checkpoint: moved to {stale}")
            atomic_write_text(
                os.path.join(cfg.out, "config.json"), json.dumps(dataclasses.asdict(cfg), indent=1) + "\n"
            )
            self.tb = self._tensorboard()
        # Last, so a run that fails its checks leaves the process-wide flag alone; close() restores it.
        self._was_deterministic = torch.are_deterministic_algorithms_enabled()
        if cfg.deterministic:
            # The fused kernels follow this flag too (conv1d_bn_relu's deterministic=None). warn_only: an op
            # without a deterministic version warns rather than stopping a long run.
            torch.use_deterministic_algorithms(True, warn_only=True)

    # ------------------------------------------------------------------------------ checks, setup
    def _check_options(self, state: dict[str, Any] | None) -> None:
        cfg, env = self.cfg, self.env
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "val_every", "max_bad_steps"):
            if getattr(cfg, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
        bad = [t for t in cfg.teachers if t not in HEADS]
        if bad or not cfg.teachers or len(set(cfg.teachers)) != len(cfg.teachers):
            raise TrainError(f"--teachers {','.join(cfg.teachers)}: choose one or both of {','.join(HEADS)}")
        if cfg.model not in ARCHITECTURES:
            raise TrainError(f"--model {cfg.model}: choose one of {sorted(ARCHITECTURES)}")
        if cfg.batch_size % env.world:
            raise TrainError(f"--batch-size {cfg.batch_size} does not split evenly over {env.world} ranks")
        if state is None and os.path.exists(self.ckpt_path):
            raise TrainError(f"{self.ckpt_path} exists: pass --resume to continue that run, or choose another --out")
        if state is not None and cfg.init:
            raise TrainError("--init starts a new run; --resume continues one: pass only one of them")
        if cfg.cuda_graphs and cfg.compile:
            raise TrainError(
                "--cuda-graphs and --compile: pick one (torch.compile's mode='reduce-overhead' "
                "captures CUDA graphs itself)"
            )
        if cfg.cuda_graphs and self.device.type != "cuda":
            self._say(f"note: --cuda-graphs needs a CUDA device; running eager steps on {self.device} instead")
            cfg.cuda_graphs = False
        self.loss_backend = "reference"
        if cfg.backend == "fused":
            try:
                from soundnet_fast import kernels
            except ImportError as e:
                raise TrainError(f"--backend fused: the fused kernels do not import ({e})") from e
            if not hasattr(kernels, "conv1d_bn_relu"):
                raise TrainError("--backend fused: soundnet_fast.kernels has no conv1d_bn_relu")
            if cfg.loss == "kl" and hasattr(kernels, "kl_div"):
                self.loss_backend = "fused"
            elif cfg.loss == "kl":
                self._say("note: soundnet_fast.kernels has no fused kl_div yet; the loss uses the reference ops")
            if self.device.type != "cuda":
                self._say(
                    f"note: on {self.device} the fused ops run their PyTorch reference (or, with "
                    "TRITON_INTERPRET=1, the Triton interpreter): use a CUDA device for speed"
                )
        if cfg.sync_bn and env.world == 1:
            self._say("note: --sync-bn has no effect in a single process")

    def _manifest(self, path: str, what: str) -> dict[str, Any]:
        from soundnet_fast.data import shards as data

        if not os.path.isdir(path):
            raise TrainError(f"{path}: no such folder ({what})")
        manifest = data.read_manifest(path)  # ShardFormatError names the file
        missing = [t for t in self.cfg.teachers if t not in manifest["teachers"]]
        if missing:
            raise TrainError(
                f"{path}: no teacher {missing} in its manifest (it holds {sorted(manifest['teachers'])}); "
                f"pick --teachers from those"
            )
        return manifest

    def _head_sizes(self, state: dict[str, Any] | None) -> dict[str, int]:
        """Head sizes follow the teachers in the manifest (docs/design.md#distillation); a head without a teacher there
        keeps the size of the checkpoint, the --init weights or the released model."""
        sizes = dict(DEFAULT_HEADS)
        source, where = None, ""
        if state is not None:
            source, where = state, self.ckpt_path
        elif self.cfg.init:
            from soundnet_fast.weights import read_state_dict

            init_state, arch, _ = read_state_dict(self.cfg.init)
            if arch != self.cfg.model:
                raise TrainError(f"{self.cfg.init}: holds {arch} weights but --model is {self.cfg.model}")
            cls = ARCHITECTURES[arch]
            source = {
                f"num_{h}": int(init_state[f"{spec.name}.0.weight"].shape[0])
                for h, spec in zip(HEADS, cls.head_specs, strict=True)
            }
            where = self.cfg.init
        for h in HEADS:
            teacher = self.manifest["teachers"].get(h)
            have = int(source[f"num_{h}"]) if source is not None else None
            if teacher is not None:
                want = int(teacher["num_classes"])
                if have is not None and have != want:
                    raise TrainError(
                        f"{where}: its {h} head has {have} classes but the {h} teacher in "
                        f"{self.cfg.shards}/manifest.json has {want}"
                    )
                sizes[h] = want
            elif have is not None:
                sizes[h] = have
        return sizes

    def _load_init(self, core: SoundNet) -> None:
        from soundnet_fast.weights import load_pretrained

        src = load_pretrained(self.cfg.init)  # type: ignore[arg-type]
        core.load_state_dict(src.state_dict())

    def _wrap(self, core: SoundNet) -> nn.Module:
        net: nn.Module = core
        if self.env.world > 1:
            import inspect

            from torch.nn.parallel import DistributedDataParallel as DDP

            # Running statistics follow rank 0 before every forward; newer torch names the option
            # forward_sync_buffers and deprecates broadcast_buffers (PyTorch 2.11 on the GPU machine knows only it).
            option = "forward_sync_buffers"
            sync_buffers = {option if option in inspect.signature(DDP).parameters else "broadcast_buffers": True}

            ids = [self.device.index] if self.device.type == "cuda" else None
            # Per-rank batch statistics by default; running statistics follow rank 0 (buffer sync),
            # so every rank evaluates and resumes with the same ones.
            if self.cfg.cuda_graphs:  # DDP must be built on a side stream before capture (CUDA graphs notes)
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    net = DDP(core, device_ids=ids, **sync_buffers)
                torch.cuda.current_stream(self.device).wait_stream(side)
            else:
                net = DDP(core, device_ids=ids, **sync_buffers)
        if self.cfg.compile:
            net = torch.compile(net)  # type: ignore[assignment]
        return net

    def _loader(self, path: str, manifest: Mapping[str, Any], train: bool) -> Any:
        from soundnet_fast.data import shards as data

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
            backend=cfg.loader,
            device=self.device,  # type: ignore[arg-type]
            teachers=cfg.teachers,
        )

    def _tensorboard(self) -> Any:
        if not self.cfg.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            self._say(f"note: no TensorBoard scalars ({e}); pip install tensorboard")
            return None
        # purge_step hides events logged past the checkpoint by a killed run (or by one that left no checkpoint),
        # as truncate_metrics / set_aside_metrics do for metrics.jsonl.
        return SummaryWriter(os.path.join(self.cfg.out, "tb"), purge_step=self.step + 1)

    # ----------------------------------------------------------------------------------- the loop
    def fit(self) -> int:
        cfg = self.cfg
        if self.step >= cfg.steps:
            self._say(f"{self.ckpt_path} is at step {self.step} of {cfg.steps}: nothing to do (raise --steps to go on)")
            return 0
        self._say(self._summary())
        with StopSignals() as stop, ProgressBar(cfg.progress, self.step, cfg.steps, self.env.main) as bar:
            while self.step < cfg.steps:
                for audio, targets in self.loader:
                    if cfg.cuda_graphs and self.stepper.graph is None:
                        self.stepper.capture(audio, targets, warmup=11 if self.env.world > 1 else 3)
                    self.stepper.step(audio, targets)
                    self.step += 1
                    bar.advance()
                    signum = self._agreed_signal(stop.signum)
                    done = self.step >= cfg.steps
                    save = done or bool(signum) or self.step % cfg.checkpoint_every == 0
                    if done or self.step % cfg.log_every == 0:
                        self._log(bar)
                    elif save:  # the bad-run check must see every step before a checkpoint is written
                        self._check_bad(self.stepper.read(reset=False))
                    if self.val_loader is not None and (done or self.step % cfg.val_every == 0):
                        self._validate()
                    if save:
                        self._save(finished=done)
                    if signum:
                        self._say(
                            f"stopped by {signal.Signals(signum).name} at step {self.step}; "
                            f"{self.ckpt_path} holds it: continue with --resume"
                        )
                        return 128 + signum
                    if done:
                        break
        self._say(f"done: step {self.step}; weights and state in {self.ckpt_path}")
        return 0

    def _agreed_signal(self, signum: int) -> int:
        """The signal to stop for, the same on every rank (they must stop after the same step)."""
        if self.env.world == 1:
            return signum
        if self.step % self.cfg.log_every:  # ranks agree at log points only: no per-step host sync
            return 0
        flag = torch.tensor([signum], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

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

    def _log(self, bar: ProgressBar) -> None:
        values = self.stepper.read()
        now = time.perf_counter()
        steps = self.step - self._step_log
        rate = steps * self.cfg.batch_size / max(now - self._t_log, 1e-9)
        self._t_log, self._step_log = now, self.step
        ok = values["ok"]
        rec: dict[str, Any] = {"step": self.step, "split": "train"}
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
        bar.update(rate, rec["loss"])
        self._record(rec)
        self._check_bad(values)  # after the record, so the metrics show the run of skipped steps
        if not bar.enabled and now - self._last_print > 10.0:
            self._last_print = now
            loss = "nan" if rec["loss"] is None else f"{rec['loss']:.4f}"
            self._say(
                f"step {self.step}/{self.cfg.steps}  loss {loss}  {rate:.1f} clips/s  skipped {rec['skipped_total']}"
            )

    def _record(self, rec: Mapping[str, Any]) -> None:
        if not self.env.main:
            return
        with open(os.path.join(self.cfg.out, ckpt.METRICS), "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k not in ("step", "split", "time") and v is not None:
                    self.tb.add_scalar(f"{rec['split']}/{k}", v, rec["step"])

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
                loss, _ = distill_loss(
                    outputs,
                    targets,
                    kind=cfg.loss,
                    lam=cfg.lam,  # type: ignore[arg-type]
                    backend=self.loss_backend,
                )
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
        self._record(rec)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in rec.items() if isinstance(v, float))
        self._say(f"validation at step {self.step}: {shown}")

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
            if self.tb is not None:
                self.tb.flush()
        self.saved_step = self.step

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
        if self.env.main:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        # Drop the DDP wrapper (it references the process group) and the loaders (their prefetch threads).
        self.net = self.stepper = self.loader = self.val_loader = None  # type: ignore[assignment]
        if self.cfg.deterministic:
            torch.use_deterministic_algorithms(self._was_deterministic)


__all__ = ["TrainConfig", "TrainError", "Trainer", "add_arguments", "main", "run"]


if __name__ == "__main__":
    sys.exit(main())
