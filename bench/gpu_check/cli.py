"""Command line of ``python -m bench.gpu_check`` (the parent; ``--section`` and ``--ncu-child`` are internal)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import plan


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.gpu_check",
        description="GPU check of the fused kernels: one call, sections in subprocesses, JSON lines + report.md.",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="output folder (default bench/results/gpu_check-<UTC date>/)"
    )
    ap.add_argument("--budget", type=float, default=450.0, help="hard limit of the whole run, seconds (default 450)")
    ap.add_argument("--smoke", action="store_true", help="CPU + Triton interpreter at toy sizes (checks the script)")
    ap.add_argument("--batch", type=int, default=64, help="clips per batch (default 64, the recipe's)")
    ap.add_argument("--seconds", type=float, default=20.0, help="clip length in seconds (default 20)")
    ap.add_argument(
        "--predictions",
        type=Path,
        default=None,
        help="sass_report prediction file, or a folder to search (default: the newest in bench/results/)",
    )
    ap.add_argument(
        "--sections",
        default=None,
        help=f"comma-separated subset, run in plan order (default all: {','.join(s.name for s in plan.SECTIONS)})",
    )
    ap.add_argument(
        "--section-timeout",
        action="append",
        metavar="NAME=SECONDS",
        help="override one section's timeout (repeatable; the tests use it to force an overrun)",
    )
    ap.add_argument("--section", default=None, help=argparse.SUPPRESS)  # internal: run one section here
    ap.add_argument("--ncu-child", default=None, help=argparse.SUPPRESS)  # internal: the process ncu profiles
    ap.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)  # internal: section's kill time
    return ap


def check_usage(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors end here, with argparse's message and exit 2, before any folder is touched."""
    for name in (args.sections or "").split(",") if args.sections else []:
        try:
            plan.by_name(name.strip())
        except KeyError as e:
            ap.error(f"--sections: {e.args[0]}")
    for text in args.section_timeout or []:
        name, sep, secs = text.partition("=")
        try:
            plan.by_name(name)
            ok = bool(sep) and float(secs) > 0
        except (KeyError, ValueError):
            ok = False
        if not ok:
            ap.error(f"--section-timeout {text!r}: expected NAME=SECONDS with a known section and SECONDS > 0")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {args.out}: exists and is not a folder")


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    from . import runner

    if args.ncu_child is not None:
        from . import sec_ncu

        return sec_ncu.child(args)
    if args.section:
        return runner.section_main(args)
    check_usage(ap, args)
    return runner.parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
