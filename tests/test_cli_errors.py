"""User errors on the command line: one line ``soundnet-fast <command>: error: <file>: <what is wrong>`` on stderr,
exit status 2, no traceback, on every subcommand; ``--debug`` / SOUNDNET_FAST_DEBUG=1 show the traceback. Also
``errors.each_alone_on_failure``, the one rule by which a bad input never fails a batch's good ones."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from soundnet_fast.cli import COMMANDS, main
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.errors import DEBUG_ENV, UsageError, debug_requested, each_alone_on_failure, user_error_message
from soundnet_fast.tf_npy import WeightFileError
from tests.helpers.sounds import sine, write_audio

REPO = Path(__file__).resolve().parents[1]


def _cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Per subcommand: arguments naming one missing (or unusable) file, and that file."""
    wav = write_audio(str(tmp / "a.wav"), sine(440.0, 1.0, SAMPLE_RATE), SAMPLE_RATE)
    missing, weights, not_a_folder = tmp / "missing", tmp / "missing.pt", tmp / "a_file"
    not_a_folder.write_text("x")
    return {
        "extract": (["extract", wav, "--weights", str(weights), "--out", str(tmp / "o")], str(weights)),
        "predict": (["predict", wav, "--weights", str(weights)], str(weights)),
        "prepare": (["prepare", str(missing), str(tmp / "o"), "--teacher", "objects=uniform:3"], str(missing)),
        "inspect": (["inspect", str(missing)], str(missing)),
        "train": (["train", str(missing), "--out", str(tmp / "run")], str(missing)),
        "convert": (["convert", str(weights), str(tmp / "out.pt")], str(weights)),
        "evaluate": (["evaluate", "esc50", str(missing), "--weights", str(weights), "--out", str(tmp / "o")],
                     str(missing)),
        "demo": (["demo", "--out", str(not_a_folder)], str(not_a_folder)),
    }  # fmt: skip


@pytest.mark.parametrize(
    "command", ["extract", "predict", "prepare", "inspect", "train", "convert", "evaluate", "demo"]
)
def test_a_missing_file_is_one_line_and_exit_2(command: str, tmp_path, capsys, monkeypatch) -> None:
    assert command in [c for c, _, _ in COMMANDS]
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    argv, path = _cases(tmp_path)[command]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.fullmatch(rf"soundnet-fast {command}: error: {re.escape(path)}: \S.*", lines[0]), lines[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "out.pt").exists()  # nothing written
    # --debug, or the environment variable, re-raises it: the traceback shows
    with pytest.raises((UsageError, WeightFileError)):
        main(["--debug", *argv])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises((UsageError, WeightFileError)):
        main(argv)


def _python(*args: str, debug: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if debug is not None:
        env[DEBUG_ENV] = debug
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def test_entry_points_in_a_process_of_their_own(tmp_path) -> None:
    """The console script's module and ``python -m soundnet_fast.train`` (what torchrun runs) report the same way."""
    missing = str(tmp_path / "missing")
    res = _python("-m", "soundnet_fast.cli", "inspect", missing)
    assert res.returncode == 2 and res.stderr.startswith(f"soundnet-fast inspect: error: {missing}: ")
    assert len(res.stderr.splitlines()) == 1 and "Traceback" not in res.stderr
    res = _python("-m", "soundnet_fast.cli", "--debug", "inspect", missing)
    assert res.returncode == 1 and "Traceback" in res.stderr and "UsageError" in res.stderr
    res = _python("-m", "soundnet_fast.train", missing, "--out", str(tmp_path / "run"))
    assert (
        res.returncode == 2
        and res.stderr == f"soundnet-fast train: error: {missing}: no such folder (training shards)\n"
    )
    res = _python("-m", "soundnet_fast.train", missing, "--out", str(tmp_path / "run"), debug="1")
    assert res.returncode == 1 and "Traceback" in res.stderr and "TrainError" in res.stderr  # the cause, chained


def test_argparse_usage_errors_stay_as_they_are(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["extract", "--no-such-option"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: soundnet-fast") and "error: " in err and "Traceback" not in err


def test_internal_errors_keep_their_traceback(monkeypatch) -> None:
    import soundnet_fast.data.inspect as inspect

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(inspect, "run", bug)
    with pytest.raises(KeyError):
        main(["inspect", "x"])
    assert user_error_message(OSError("no file named")) is None  # an OSError without a path is not the user's
    assert user_error_message(FileNotFoundError(2, "No such file or directory", "f.wav")) == (
        "f.wav: no such file or directory"
    )
    assert user_error_message(UsageError("a.wav: bad\nsecond line")) == "a.wav: bad; second line"


def test_debug_requested(monkeypatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert not debug_requested() and debug_requested(True)
    for value, on in (("1", True), ("yes", True), ("0", False), ("", False), ("false", False)):
        monkeypatch.setenv(DEBUG_ENV, value)
        assert debug_requested() is on, value


def test_each_alone_on_failure() -> None:
    calls: list[list[int]] = []

    def run(batch: list[int]) -> list[int]:
        calls.append(batch)
        if 3 in batch:
            raise ValueError("three is bad")
        return [10 * i for i in batch]

    got = each_alone_on_failure(run, [1, 2, 3, 4])
    assert got[:2] + got[3:] == [10, 20, 40] and isinstance(got[2], ValueError)
    assert calls == [[1, 2, 3, 4], [1], [2], [3], [4]]
    calls.clear()
    assert each_alone_on_failure(run, [1, 2]) == [10, 20] and calls == [[1, 2]]
    calls.clear()
    (alone,) = each_alone_on_failure(run, [3])
    assert isinstance(alone, ValueError) and calls == [[3]]  # a batch of one is not run twice

    def batch_only(batch: list[int]) -> list[int]:  # e.g. out of memory above one item: every item is fine alone
        if len(batch) > 1:
            raise MemoryError("too big")
        return batch

    assert each_alone_on_failure(batch_only, [5, 6, 7]) == [5, 6, 7]

    def bug(batch: list[int]) -> list[int]:
        raise TypeError("a bug")

    with pytest.raises(TypeError):
        each_alone_on_failure(bug, [1, 2])


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import soundnet_fast.releases as rel

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(rel, "run", interrupted)
    assert main(["weights", "list"]) == 130
    assert capsys.readouterr().err.strip() == "soundnet-fast weights: error: interrupted"
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", "weights", "list"])


def test_an_atomic_write_names_the_file_asked_for_not_its_temporary(tmp_path: Path) -> None:
    from soundnet_fast.fsutil import atomic_write_text

    (tmp_path / "out.pt").mkdir()  # the output path is a folder
    with pytest.raises(IsADirectoryError) as e:
        atomic_write_text(tmp_path / "out.pt", "x")
    assert e.value.filename == str(tmp_path / "out.pt")
    assert user_error_message(e.value) == f"{tmp_path / 'out.pt'}: is a directory"
    assert [p.name for p in tmp_path.iterdir()] == ["out.pt"]  # no temporary left behind
