"""`soundnet-fast convert IN OUT`: any supported weight file -> a native checkpoint (docs/design.md#weight-formats)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "src", metavar="IN", help="soundnet8 (the cached release), sound8.npy, .t7, sound8.pth or a native checkpoint"
    )
    p.add_argument("dst", metavar="OUT", help="native checkpoint to write (.pt)")


def run(args: argparse.Namespace) -> int:
    from soundnet_fast.weights import convert

    model = convert(args.src, args.dst)  # a WeightFileError becomes "error: ..." and exit 2 in cli.main
    print(
        f"wrote {args.dst}: {model.arch}, {model.num_objects} object / {model.num_scenes} scene classes, "
        f"{model.num_parameters():,} parameters"
    )
    return 0
