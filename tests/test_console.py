"""The one console / progress helper: modes, a disabled bar that needs no rich, labels that are data."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from soundnet_fast.console import PROGRESS_MODES, Progress, progress_enabled


def test_modes() -> None:
    assert PROGRESS_MODES == ("auto", "on", "off")
    assert progress_enabled("on") and not progress_enabled("off")
    assert progress_enabled("auto") == sys.stderr.isatty()
    with pytest.raises(ValueError, match="'sometimes'"):
        progress_enabled("sometimes")


def test_disabled_bar_is_a_no_op_without_rich(capsys) -> None:
    code = (
        "import sys\n"
        "from soundnet_fast.console import Progress\n"
        "with Progress('x', 3, enabled=False) as bar:\n"
        "    bar.advance(2, text='t'); bar.set_text('u'); bar.console.print('[red]failed[/red] a.wav: bad')\n"
        "print('rich' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"
    assert res.stderr.strip() == "failed a.wav: bad"  # markup stripped on the plain console


def test_label_and_text_are_shown_verbatim() -> None:
    from rich.console import Console

    out = Console(file=io.StringIO(), force_terminal=False, width=120)
    with Progress("w{eights}[b].npy", 4, console=out) as bar:
        bar.advance(3, text="12.5 clips/s  loss 4.2000")
    shown = out.file.getvalue()
    assert "w{eights}[b].npy" in shown and "3/4" in shown and "12.5 clips/s  loss 4.2000" in shown
