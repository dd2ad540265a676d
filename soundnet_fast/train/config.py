"""The trainer's options: :class:`TrainConfig`, its command line, and :func:`resolve_options`.

Defaults are the original recipe (main_train.lua; docs/design.md#distillation, #optimiser): SoundNet-8, batch 64,
Adam lr 1e-3 beta1 0.9, the KL loss with lambda = 250 over the (head, step) terms (soundnet_fast.train.losses).
They are written once, in :class:`TrainConfig`; the command line reads them from there and its help shows them.

Three layers make a run's config (:func:`config_from_args`): the options given on the command line, over the
checkpoint's config on ``--resume``, over the dataclass defaults. :func:`resolve_options` then checks it against
the process (world size, device, what is on disk, which fused kernels exist) and returns what will actually run,
with the notes to print, without changing its input or doing any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from soundnet_fast.console import PROGRESS_MODES
from soundnet_fast.constants import BACKENDS, HEAD_CLASSES
from soundnet_fast.model import ARCHITECTURES
from soundnet_fast.train import checkpoint as ckpt
from soundnet_fast.train.losses import HEADS, LAMBDA

if TYPE_CHECKING:
    from soundnet_fast.train.distributed import DistEnv

DEFAULT_HEADS = dict(HEAD_CLASSES)  # VGG16 ImageNet / Places2 teachers, docs/design.md#teachers-and-targets


LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
KERNEL_BACKENDS: tuple[str, ...] = ("fused", "auto")  # the --backend values that run soundnet_fast.kernels


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (0-based: the steps done before it) as a fraction of ``cfg.lr``: a linear
    warm-up over ``cfg.warmup_steps`` ((step + 1) / warmup_steps), then 1 (``constant``) or half a cosine from 1 to
    0 at ``cfg.steps`` (``cosine``). A function of the step alone, so a resumed run continues it exactly."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        span = max(cfg.steps - cfg.warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - cfg.warmup_steps, span) / span))
    return 1.0


class TrainError(RuntimeError):
    """A run that cannot start or cannot go on; the message says why and what was kept."""


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training run (``config.json`` and the checkpoint hold it as a dict)."""

    shards: str | list[str] = ""  # a shard folder, a folder of parts, or a list of either (one dataset)
    out: str = ""
    val: str | None = None
    model: str = "soundnet8"
    teachers: list[str] = dataclasses.field(default_factory=lambda: list(HEADS))
    loss: str = "kl"
    lam: float = LAMBDA
    batch_size: int = 64  # global, over all ranks (main_train.lua batchSize)
    lr: float = 1e-3  # main_train.lua, docs/design.md#optimiser
    lr_schedule: str = "constant"  # the recipe's (main_train.lua keeps lr fixed); "cosine": to 0 at `steps`
    warmup_steps: int = 0  # linear warm-up over the first steps, from lr / warmup_steps to lr
    beta1: float = 0.9  # main_train.lua, docs/design.md#optimiser
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
    allow_partial: bool = False  # train on the complete shards of a dataset with missing or unfinished parts
    world_size: int = 1  # set from torchrun's environment, recorded so --resume can check it


# ------------------------------------------------------------------------------------------------ CLI
class _Default:
    """A dataclass default as argparse holds it: ``%(default)s`` in a help string shows it, and
    :func:`config_from_args` tells it from a given value, so ``--resume`` keeps the checkpoint's value of every
    option not given. Not a ``str``, so argparse never runs it through the option's ``type``."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        v = self.value
        if isinstance(v, bool):
            return "on" if v else "off"
        if isinstance(v, list | tuple):
            return ",".join(str(x) for x in v)
        return f"{v:g}" if isinstance(v, float) else str(v)


def _defaults() -> dict[str, _Default]:
    """Each field's default, read from the dataclass (a default_factory called) without building a TrainConfig."""
    out = {}
    for f in dataclasses.fields(TrainConfig):
        value = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        out[f.name] = _Default(value)
    return out


# Python 3.10's BooleanOptionalAction appends " (default: %(default)s)" to its help itself; 3.11 does not.
_FLAG_SAYS_DEFAULT = "%(default)" in str(argparse.BooleanOptionalAction(["--x"], "x", default=False, help="").help)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The trainer's options on ``p``; every default comes from :class:`TrainConfig` (see :class:`_Default`)."""
    d = _defaults()

    def flag(name: str, dest: str, text: str) -> None:
        text = text if _FLAG_SAYS_DEFAULT else f"{text} (default %(default)s)"
        p.add_argument(name, dest=dest, action=argparse.BooleanOptionalAction, default=d[dest], help=text)

    p.add_argument(
        "shards",
        nargs="*",
        default=None,
        help="shard folder written by `soundnet-fast prepare`, a folder of its parts (--part), or several: one dataset",
    )
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, metrics.jsonl, tb/, config.json")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt (exactly where it left)")
    p.add_argument("--val", default=None, help="held-out shard folder for validation")
    p.add_argument("--model", choices=sorted(ARCHITECTURES), default=d["model"], help="default %(default)s")
    p.add_argument("--teachers", default=d["teachers"], help="comma list of teachers to distill (default %(default)s)")
    p.add_argument("--loss", choices=("kl", "l2"), default=d["loss"], help="default %(default)s (docs/design.md#loss)")
    p.add_argument("--lambda", dest="lam", type=float, default=d["lam"], help="loss scale (default %(default)s)")
    p.add_argument(
        "--batch-size", type=int, default=d["batch_size"], help="global batch over all ranks (default %(default)s)"
    )
    p.add_argument("--lr", type=float, default=d["lr"], help="Adam learning rate (default %(default)s)")
    p.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=d["lr_schedule"],
        help="constant (the recipe's) or cosine: half a cosine from lr to 0 at --steps, after any warm-up "
        "(default %(default)s)",
    )
    p.add_argument(
        "--warmup-steps", type=int, default=d["warmup_steps"], help="linear lr warm-up steps (default %(default)s)"
    )
    p.add_argument("--beta1", type=float, default=d["beta1"], help="Adam beta1 (default %(default)s)")
    p.add_argument("--steps", type=int, default=d["steps"], help="optimizer steps in all (default %(default)s)")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=d["precision"],
        help="bf16: autocast, fp32 master weights (default %(default)s)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=d["backend"],
        help="PyTorch ops, the Triton kernels, or auto: the Triton kernels where they measured faster than cuDNN in "
        "bf16 training on an H200 (conv1 on CUDA; soundnet_fast.model.fused_pays), and on a CPU BN + ReLU + pool "
        "fused by numba in training (soundnet_fast.model.cpu_fusion_pays) (default %(default)s)",
    )
    flag("--cuda-graphs", "cuda_graphs", "capture forward+backward+Adam in one CUDA graph (CUDA only)")
    flag("--compile", "compile", "torch.compile the model")
    flag(
        "--deterministic",
        "deterministic",
        "deterministic kernels (torch.use_deterministic_algorithms; the fused backward then uses no atomics): "
        "for GPU runs that must repeat bit for bit, at some cost in speed (CPU runs repeat bit for bit anyway)",
    )
    flag("--sync-bn", "sync_bn", "BatchNorm statistics over the global batch rather than per rank")
    p.add_argument("--device", default=d["device"], help="auto, cpu, cuda (default %(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"], help="initialisation and data order (default %(default)s)")
    p.add_argument(
        "--loader",
        choices=("auto", "numpy", "dali"),
        default=d["loader"],
        help="shard loader backend (default %(default)s)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=d["checkpoint_every"],
        help="steps between checkpoints (default %(default)s)",
    )
    p.add_argument(
        "--log-every", type=int, default=d["log_every"], help="steps between metrics records (default %(default)s)"
    )
    p.add_argument(
        "--val-every", type=int, default=d["val_every"], help="steps between validations (default %(default)s)"
    )
    p.add_argument(
        "--val-batches", type=int, default=d["val_batches"], help="validation batches, 0: all (default %(default)s)"
    )
    p.add_argument(
        "--max-bad-steps",
        type=int,
        default=d["max_bad_steps"],
        help="stop after this many non-finite steps in a row (default %(default)s)",
    )
    p.add_argument(
        "--init",
        default=None,
        help="start from these weights (soundnet8: the cached release; sound8.npy, .t7, .pth, native)",
    )
    p.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default=d["progress"],
        help="progress bar, auto: on a terminal (default %(default)s)",
    )
    flag("--tensorboard", "tensorboard", "write TensorBoard scalars to RUN/tb")
    flag("--allow-partial", "allow_partial", "train on the finished shards of missing or unfinished parts")


def config_from_args(args: argparse.Namespace, world_size: int = 1) -> tuple[TrainConfig, dict[str, Any] | None]:
    """This invocation's config: given options over the checkpoint's config (--resume) over the defaults.

    Returns the config and the checkpoint state when resuming. Raises :class:`TrainError` without a shard folder,
    ``checkpoint.CheckpointError`` when the checkpoint cannot be read or a given option would change the run.
    """
    given = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None and not isinstance(value, _Default):
            given[f.name] = value
    if isinstance(given.get("shards"), list):  # one folder stays a string; none given: the checkpoint's
        folders = given.pop("shards")
        if folders:
            given["shards"] = folders[0] if len(folders) == 1 else folders
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


# ----------------------------------------------------------------------------------- resolution
@dataclasses.dataclass(frozen=True)
class Resolved:
    """What a run will do: ``cfg`` as it runs (``cuda_graphs`` off where there is no CUDA device), the loss's
    backend (``"fused"`` only with ``--backend fused`` or ``auto``, ``--loss kl`` and a fused ``kl_div``), notes to
    print."""

    cfg: TrainConfig
    loss_backend: str
    notes: tuple[str, ...]


def fused_ops() -> frozenset[str] | ImportError:
    """The names ``soundnet_fast.kernels`` provides, or the ImportError that stopped it importing (Triton)."""
    try:
        from soundnet_fast import kernels
    except ImportError as e:
        return e
    return frozenset(dir(kernels))


def resolve_options(
    cfg: TrainConfig,
    env: DistEnv,
    *,
    resuming: bool,
    checkpoint_exists: bool,
    kernels: frozenset[str] | ImportError = frozenset(),
) -> Resolved:
    """Check ``cfg`` for this process and say what will run; ``cfg`` is left as it is.

    ``env``: rank, world size and device; ``resuming``: a checkpoint state was loaded (``--resume``);
    ``checkpoint_exists``: ``OUT/checkpoint.pt`` is on disk; ``kernels``: :func:`fused_ops` (looked at only with
    ``--backend fused`` or ``auto``). Raises :class:`TrainError` naming the option, in the order the checks are listed.
    """
    for name in ("steps", "batch_size", "checkpoint_every", "log_every", "val_every", "max_bad_steps"):
        if getattr(cfg, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    bad = [t for t in cfg.teachers if t not in HEADS]
    if bad or not cfg.teachers or len(set(cfg.teachers)) != len(cfg.teachers):
        raise TrainError(f"--teachers {','.join(cfg.teachers)}: choose one or both of {','.join(HEADS)}")
    if cfg.model not in ARCHITECTURES:
        raise TrainError(f"--model {cfg.model}: choose one of {sorted(ARCHITECTURES)}")
    if cfg.progress not in PROGRESS_MODES:
        raise TrainError(f"--progress {cfg.progress}: choose one of {', '.join(PROGRESS_MODES)}")
    if cfg.batch_size % env.world:
        raise TrainError(f"--batch-size {cfg.batch_size} does not split evenly over {env.world} ranks")
    path = ckpt.checkpoint_path(cfg.out)
    if not resuming and checkpoint_exists:
        raise TrainError(f"{path} exists: pass --resume to continue that run, or choose another --out")
    if resuming and cfg.init:
        raise TrainError("--init starts a new run; --resume continues one: pass only one of them")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise TrainError(f"--lr-schedule {cfg.lr_schedule}: choose one of {', '.join(LR_SCHEDULES)}")
    if not 0 <= cfg.warmup_steps < cfg.steps:
        raise TrainError(f"--warmup-steps {cfg.warmup_steps}: must be >= 0 and below --steps {cfg.steps}")
    if cfg.cuda_graphs and (cfg.lr_schedule != "constant" or cfg.warmup_steps):
        raise TrainError(
            "--cuda-graphs bakes the learning rate into the captured step (train.step, invariant 3): use a constant "
            "--lr-schedule with no --warmup-steps, or leave out --cuda-graphs"
        )
    if cfg.cuda_graphs and cfg.compile:
        raise TrainError(
            "--cuda-graphs and --compile: pick one (torch.compile's mode='reduce-overhead' captures CUDA graphs itself)"
        )
    notes: list[str] = []
    device = env.device
    if cfg.cuda_graphs and device.type != "cuda":
        notes.append(f"note: --cuda-graphs needs a CUDA device; running eager steps on {device} instead")
        cfg = dataclasses.replace(cfg, cuda_graphs=False)
    loss_backend = "reference"
    if cfg.backend in KERNEL_BACKENDS:
        if isinstance(kernels, ImportError):
            raise TrainError(f"--backend {cfg.backend}: the fused kernels do not import ({kernels})") from kernels
        if "conv1d_bn_relu" not in kernels:
            raise TrainError(f"--backend {cfg.backend}: soundnet_fast.kernels has no conv1d_bn_relu")
        if cfg.loss == "kl" and "kl_div" in kernels:
            loss_backend = "fused"
        elif cfg.loss == "kl":
            notes.append("note: soundnet_fast.kernels has no fused kl_div yet; the loss uses the reference ops")
        if device.type != "cuda" and cfg.backend == "auto":
            notes.append(
                f"note: on {device} --backend auto runs the reference ops, with BatchNorm, ReLU and max-pool fused by "
                "numba in training (soundnet_fast.train.cpu_bn_relu_pool)"
            )
        elif device.type != "cuda":
            notes.append(
                f"note: on {device} the fused ops run their PyTorch reference (or, with "
                "TRITON_INTERPRET=1, the Triton interpreter): use a CUDA device for speed"
            )
    if cfg.sync_bn and env.world == 1:
        notes.append("note: --sync-bn has no effect in a single process")
    return Resolved(cfg, loss_backend, tuple(notes))


# ------------------------------------------------------------------------------ against the data
def checked_manifest(
    path: str | Sequence[str],
    teachers: Sequence[str],
    what: str,
    like: Mapping[str, Any] | None = None,
    allow_partial: bool = False,
) -> dict[str, Any]:
    """The manifest of the dataset ``path`` (a shard folder, a folder of parts or a list; ``what``: "training
    shards", ...), which must hold every one of ``teachers`` and, with ``like`` (the training shards' manifest), the
    same clip length and head steps. Raises :class:`TrainError`, or ``ShardFormatError`` naming the file or part
    (parts that disagree; missing or unfinished parts unless ``allow_partial``)."""
    from soundnet_fast.data.dataset import scan

    for folder in [path] if isinstance(path, str) else path:
        if not os.path.isdir(folder):
            raise TrainError(f"{folder}: no such folder ({what})")
    manifest = scan(path, allow_partial=allow_partial).manifest
    missing = [t for t in teachers if t not in manifest["teachers"]]
    if missing:
        raise TrainError(
            f"{path}: no teacher {missing} in its manifest (it holds {sorted(manifest['teachers'])}); "
            f"pick --teachers from those"
        )
    if like is not None:
        for key in ("clip_samples", "steps"):
            if manifest[key] != like[key]:
                raise TrainError(f"{path}: {key} {manifest[key]} differs from the training shards' {like[key]}")
    return manifest


def head_sizes(
    cfg: TrainConfig, manifest: Mapping[str, Any], state: Mapping[str, Any] | None, ckpt_path: str
) -> dict[str, int]:
    """Classes per head: the teachers' in ``manifest`` (docs/design.md#distillation); a head without a teacher
    there keeps the size of the checkpoint ``state``, the ``--init`` weights or the released model
    (:data:`DEFAULT_HEADS`). Raises :class:`TrainError` when the weights' heads differ from the teachers'."""
    sizes = dict(DEFAULT_HEADS)
    source: Mapping[str, Any] | None = None
    where = ""
    if state is not None:
        source, where = state, ckpt_path
    elif cfg.init:
        from soundnet_fast.weights import read_state_dict

        init_state, arch, _ = read_state_dict(cfg.init)
        if arch != cfg.model:
            raise TrainError(f"{cfg.init}: holds {arch} weights but --model is {cfg.model}")
        cls = ARCHITECTURES[arch]
        source = {
            f"num_{h}": int(init_state[f"{spec.name}.0.weight"].shape[0])
            for h, spec in zip(HEADS, cls.head_specs, strict=True)
        }
        where = cfg.init
    for h in HEADS:
        teacher = manifest["teachers"].get(h)
        have = int(source[f"num_{h}"]) if source is not None else None
        if teacher is not None:
            want = int(teacher["num_classes"])
            if have is not None and have != want:
                raise TrainError(
                    f"{where}: its {h} head has {have} classes but the {h} teacher in "
                    f"{cfg.shards}/manifest.json has {want}"
                )
            sizes[h] = want
        elif have is not None:
            sizes[h] = have
    return sizes


__all__ = [
    "DEFAULT_HEADS",
    "Resolved",
    "TrainConfig",
    "TrainError",
    "add_arguments",
    "checked_manifest",
    "config_from_args",
    "fused_ops",
    "head_sizes",
    "resolve_options",
]
