"""Parts of a dataset: which videos a part holds, its folder's name, and which part this process prepares
(docs/design.md#data-at-scale).

A video belongs to part ``video_key(id) % N`` of N: a hash of its id (the path relative to the videos folder,
or the line of a list file), not its position in the list, so adding videos never moves one between parts and
the N parts are disjoint and cover every video. The same 64-bit key (with the clip's number within its video)
orders clips canonically across parts (:mod:`soundnet_fast.data.keys`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping

import numpy as np

PART_DIR = re.compile(r"^part-(\d+)-of-(\d+)$")
MAX_PARTS = 99_999  # five digits in the folder name


class PartError(ValueError):
    """A ``--part`` value, or a scheduler's environment, that does not name one part of N; the message says why."""


def video_key(video: str) -> int:
    """The 64-bit key of a video id: the first 8 bytes of BLAKE2b (``digest_size=8``) of its UTF-8, big-endian.

    Stable across machines, Python versions and list orders (unlike ``hash()``); 64 bits make a collision among
    2 M videos about 1e-7 likely (the birthday bound n^2 / 2^65).
    """
    return int.from_bytes(hashlib.blake2b(video.encode("utf-8"), digest_size=8).digest(), "big")


def video_keys(videos: Iterable[str]) -> np.ndarray:
    """:func:`video_key` of each id, as uint64 (n,)."""
    return np.fromiter((video_key(v) for v in videos), dtype=np.uint64)


def part_of(video: str, count: int) -> int:
    """The part (0 .. count - 1) that holds ``video`` in a split into ``count`` parts."""
    return video_key(video) % count


def part_name(index: int, count: int) -> str:
    """The folder of part ``index`` of ``count`` inside the output folder: ``part-00003-of-00008``."""
    return f"part-{index:05d}-of-{count:05d}"


def parse_part(text: str) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N), 0 <= K < N; ``"all"`` -> None (every video, into the output folder itself).

    ``"auto"`` is resolved by :func:`part_from_env`, not here. Raises :class:`PartError`.
    """
    if text == "all":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise PartError(f"--part {text}: expected K/N (part K of N, counted from 0), auto or all")
    k, n = int(m.group(1)), int(m.group(2))
    if not 1 <= n <= MAX_PARTS or not 0 <= k < n:
        raise PartError(f"--part {text}: K must be in 0 .. N - 1 and N in 1 .. {MAX_PARTS}")
    return k, n


def part_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """The part this process prepares, from torchrun's ``RANK`` / ``WORLD_SIZE`` or a Slurm array; None outside both.

    torchrun (and any launcher that sets both): K = ``RANK``, N = ``WORLD_SIZE``. A Slurm array
    (https://slurm.schedmd.com/job_array.html): K = (``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN``) /
    ``SLURM_ARRAY_TASK_STEP``, N = ``SLURM_ARRAY_TASK_COUNT``, so ``--array=1-8`` gives parts 0..7 of 8. An array
    whose ids are not MIN, MIN + STEP, ..., MAX (``--array=1,4,5``) would leave parts unprepared or prepare one
    twice: it raises :class:`PartError`, as does a torchrun world with a rank outside it.
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        try:
            k, n = int(env["RANK"]), int(env["WORLD_SIZE"])
        except ValueError as e:
            raise PartError(f"RANK={env['RANK']!r} WORLD_SIZE={env['WORLD_SIZE']!r}: not integers") from e
        if not 0 <= k < n:
            raise PartError(f"RANK={k} is outside WORLD_SIZE={n}")
        return k, n
    if "SLURM_ARRAY_TASK_ID" in env:
        names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_COUNT")
        missing = [v for v in names if v not in env]
        if missing:
            raise PartError(f"a Slurm array task without {', '.join(missing)} in its environment")
        try:
            task, lo, hi, count = (int(env[v]) for v in names)
            step = int(env.get("SLURM_ARRAY_TASK_STEP", "1"))
        except ValueError as e:
            raise PartError(f"Slurm array variables are not integers: {[env.get(v) for v in names]}") from e
        seen = f"SLURM_ARRAY_TASK_ID={task} MIN={lo} MAX={hi} STEP={step} COUNT={count}"
        if step < 1 or (hi - lo) % step or (hi - lo) // step + 1 != count or (task - lo) % step or not lo <= task <= hi:
            raise PartError(
                f"{seen}: the array's ids are not MIN, MIN+STEP, ..., MAX, so parts would be lost or repeated; "
                "submit a contiguous array (--array=0-N-1 or 1-N, optionally :STEP) or pass --part K/N"
            )
        return (task - lo) // step, count
    return None


def env_says_parallel(env: Mapping[str, str] | None = None) -> str | None:
    """A description of the scheduler's environment when it runs several copies of this command (a Slurm array
    of more than one task, a torchrun world of more than one rank); None otherwise."""
    env = os.environ if env is None else env
    if env.get("WORLD_SIZE", "1") not in ("", "1") and "RANK" in env:
        return f"torchrun (WORLD_SIZE={env['WORLD_SIZE']})"
    if env.get("SLURM_ARRAY_TASK_COUNT", "1") not in ("", "1"):
        return f"a Slurm array (SLURM_ARRAY_TASK_COUNT={env['SLURM_ARRAY_TASK_COUNT']})"
    return None


def resolve_part(text: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``prepare --part``'s value as (K, N), or None for every video into the output folder itself.

    ``auto`` reads :func:`part_from_env`. Raises :class:`PartError` for a bad value, ``auto`` outside a scheduler or
    in a single-task one, or no value at all where the environment runs several copies (:func:`env_says_parallel`):
    they would all write the same folder at once.
    """
    if text == "auto":
        part = part_from_env(env)
        if part is None:
            raise PartError("--part auto: neither torchrun's RANK / WORLD_SIZE nor a Slurm array's variables are set")
        if part[1] == 1:  # e.g. one array id resubmitted on its own: it would be part 0 of a split into 1
            raise PartError(
                "--part auto: this array or world has a single task, which would prepare part 0 of 1 (everything); "
                "to redo one part of a split give it as --part K/N, or resubmit the whole array (finished parts "
                "skip their videos)"
            )
        return part
    if text is None and (parallel := env_says_parallel(env)):
        raise PartError(
            f"running under {parallel}: every copy would write the same OUT; pass --part auto (one part per task), "
            "--part K/N, or --part all to really prepare everything in each copy"
        )
    return parse_part(text or "all")


def weights_sha256(spec: object) -> dict[str, str]:
    """``{"sha256": hex}`` of a teacher spec's weight file (``KIND:PATH``, or a bare TorchScript / export file), so
    parts prepared on other machines can be checked to share their teachers; ``{}`` for other teachers (``uniform:N``,
    modules given from Python)."""
    if not isinstance(spec, str | os.PathLike):
        return {}
    kind, sep, path = os.fspath(spec).partition(":")
    path = path if sep else kind
    if kind == "uniform" or not os.path.isfile(path):
        return {}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest()}


__all__ = [
    "MAX_PARTS",
    "PART_DIR",
    "PartError",
    "env_says_parallel",
    "parse_part",
    "part_from_env",
    "part_name",
    "part_of",
    "resolve_part",
    "video_key",
    "video_keys",
    "weights_sha256",
]
