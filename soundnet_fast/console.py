"""Terminal output in one place: the consoles and the one progress bar every long-running command shows.

Progress and messages go to stderr so that a command's results (tables, JSON) on stdout stay clean to pipe.
rich is imported only when something is shown: a disabled bar costs nothing and needs no rich.
"""

from __future__ import annotations

import sys
from typing import Any

PROGRESS_MODES = ("auto", "on", "off")  # auto: a bar only when stderr is a terminal


def stderr_console() -> Any:
    """A rich ``Console`` on stderr (progress, warnings, per-file failures)."""
    from rich.console import Console

    return Console(stderr=True)


def stdout_console() -> Any:
    """A rich ``Console`` on stdout (result tables)."""
    from rich.console import Console

    return Console()


def progress_enabled(mode: str) -> bool:
    """``mode`` in :data:`PROGRESS_MODES` -> whether to draw a bar. Raises ``ValueError`` for any other mode."""
    if mode not in PROGRESS_MODES:
        raise ValueError(f"progress mode must be one of {PROGRESS_MODES}, got {mode!r}")
    return mode == "on" or (mode == "auto" and sys.stderr.isatty())


class _PlainConsole:
    """What ``Progress.console`` is while no bar is shown: ``print`` to stderr, rich markup stripped."""

    def print(self, *objects: Any, **_: Any) -> None:
        import re

        text = " ".join(str(o) for o in objects)
        print(re.sub(r"\[/?[a-z ]+\]", "", text), file=sys.stderr)


class Progress:
    """A progress bar on stderr: ``label``, the bar, done/total, a free text field (rates, loss), time left.

    ``total`` and ``completed`` count work items (steps, videos, clips). ``transient`` removes the bar when
    it stops. ``enabled=False`` makes every call a no-op. Use as a context manager, or ``start`` / ``stop``.
    ``console`` prints lines above the bar (or plainly to stderr when disabled).
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        completed: int = 0,
        enabled: bool = True,
        transient: bool = False,
        console: Any = None,
    ) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self.console: Any = _PlainConsole()
        if not enabled:
            return
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("{task.description}"),  # the label is data (a file name may hold '{' or '['), not a format
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[text]}"),
            TimeRemainingColumn(),
            console=console or stderr_console(),
            transient=transient,
        )
        self._task = self._bar.add_task(escape(label), total=total, completed=completed, text="")
        self.console = self._bar.console

    def start(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def advance(self, n: float = 1, text: str | None = None) -> None:
        """``n`` more items done; ``text`` replaces the free text field when given."""
        if self._bar is not None:
            fields = {} if text is None else {"text": text}
            self._bar.update(self._task, advance=n, **fields)

    def set_text(self, text: str) -> None:
        """Replace the free text field (e.g. ``"812.3 clips/s  loss 4.2021"``)."""
        if self._bar is not None:
            self._bar.update(self._task, text=text)


__all__ = ["PROGRESS_MODES", "Progress", "progress_enabled", "stderr_console", "stdout_console"]
