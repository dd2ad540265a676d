"""User errors: what a command cannot do with the files or options it was given.

Every ``soundnet-fast`` subcommand reports one as a single line on stderr,
``soundnet-fast <command>: error: <file or option>: <what is wrong>``, with exit status 2 (argparse's status
for a usage error), and shows a traceback only when asked (``soundnet-fast --debug ...`` or
``SOUNDNET_FAST_DEBUG=1``); any other exception is an internal error and keeps its traceback
(:func:`soundnet_fast.cli.run_command`).

Per-file failures are not user errors of the command: a bad input is reported by name and reason
(:func:`reason`) and skipped, and a batch that fails runs again one item at a time
(:func:`each_alone_on_failure`), so one bad input never takes good ones down.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

EXIT_USAGE = 2  # argparse exits with 2 on a usage error; user errors share it
DEBUG_ENV = "SOUNDNET_FAST_DEBUG"


class UsageError(Exception):
    """A file or option the command cannot use. The message starts with the file (or option) it is about,
    e.g. ``UsageError("data/esc50: no such folder")``; raise it ``from`` the original error so ``--debug``
    shows both."""


# OSErrors that are about the path the user named (``e.filename``), not about the program.
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def user_error_message(error: BaseException) -> str | None:
    """The one-line message of a user error, or None when ``error`` is not one (an internal error).

    User errors: :class:`UsageError`; ``WeightFileError`` (a weight file that cannot be used, from
    ``soundnet_fast.tf_npy``); ``AudioDecodeError`` (an audio file, from ``soundnet_fast.audio``); and
    ``FileNotFoundError``, ``FileExistsError``, ``IsADirectoryError``, ``NotADirectoryError`` or
    ``PermissionError`` that name their path (``e.filename``), as ``<path>: <strerror>``. A message over several
    lines is joined with "; " so the report stays one line.
    """
    from soundnet_fast.audio import AudioDecodeError
    from soundnet_fast.tf_npy import WeightFileError

    if isinstance(error, (UsageError, WeightFileError, AudioDecodeError)):
        text = str(error)
    elif isinstance(error, _PATH_ERRORS) and error.filename is not None:
        what = error.strerror or str(error)
        name = error.filename
        name = os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else str(name)
        text = f"{name}: {what[:1].lower() + what[1:]}"
    else:
        return None
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(error).__name__


def reason(path: str | os.PathLike[str], error: BaseException) -> str:
    """Why ``path`` failed, as one line: the first line of ``error``'s message without the ``<path>: `` prefix that
    the audio and weight errors start with (the report names the file itself)."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[0].removeprefix(f"{os.fspath(path)}: ")


def debug_requested(flag: bool = False) -> bool:
    """True with ``--debug`` (``flag``) or with the environment variable SOUNDNET_FAST_DEBUG set to anything
    but "", "0", "false" or "no": user errors then end in their traceback."""
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def error_line(command: str, message: str) -> str:
    """``soundnet-fast <command>: error: <message>``, the one line every subcommand reports a user error with."""
    return f"soundnet-fast {command}: error: {message}"


# What one input can make a model run raise on its own: an input check (ValueError), a torch error or out of
# memory (RuntimeError, torch.OutOfMemoryError among them). Anything else is a bug and propagates.
ITEM_ERRORS: tuple[type[Exception], ...] = (RuntimeError, ValueError)


def each_alone_on_failure(run: Callable[[list[T]], Sequence[R]], items: list[T]) -> list[R | Exception]:
    """``run(items)`` as one batch; if it raises anything, ``run([item])`` for each item in turn, so an item fails
    only for its own sake (one bad input never takes the others down).

    Returns, aligned with ``items``, each one's result or the :data:`ITEM_ERRORS` exception it raised alone; any
    other exception raised by an item alone propagates. ``run`` must return one result per item.
    """
    try:
        results = list(run(items))
    except Exception as e:
        if len(items) == 1:  # it already ran alone
            if isinstance(e, ITEM_ERRORS):
                return [e]
            raise
    else:
        if len(results) != len(items):
            raise ValueError(f"run returned {len(results)} results for {len(items)} items")
        return results
    out: list[R | Exception] = []
    for item in items:
        try:
            out.append(run([item])[0])
        except ITEM_ERRORS as e:
            out.append(e)
    return out


__all__ = [
    "DEBUG_ENV",
    "EXIT_USAGE",
    "ITEM_ERRORS",
    "UsageError",
    "debug_requested",
    "each_alone_on_failure",
    "error_line",
    "reason",
    "user_error_message",
]
