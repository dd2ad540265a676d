"""The demo's lines on the released SoundNet-8: real recordings when cached, one clear line when not.

Under CI (``CI=true``) the test with the weights fails when they or the recordings are missing; elsewhere it skips."""

from __future__ import annotations

import os
import shutil

import pytest

from soundnet_fast import releases
from soundnet_fast.demo import released
from tests.helpers.recordings import recording


def test_one_line_when_the_weights_are_not_cached(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(releases.HOME_ENV, str(tmp_path / "empty-home"))
    lines = released.released_lines(str(tmp_path))
    want = "the released soundnet8 is not cached: `soundnet-fast weights fetch soundnet8` (make demo does it)"
    assert lines == [want]


def test_released_model_on_recordings_with_a_bad_file_and_the_warning_rule(tmp_path) -> None:
    if releases.cached_path("soundnet8") is None:
        why = f"released weights not cached in {releases.home()}: run `soundnet-fast weights fetch soundnet8`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    assert released.released_lines(str(tmp_path / "none")) == [
        f"no recordings in {tmp_path / 'none'}/ to run the released soundnet8 on (make setup fetches three)"
    ]
    shutil.copy(recording("street.wav"), tmp_path / "street.wav")
    (tmp_path / "broken.wav").write_bytes(b"RIFF....not a wave file")
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "folder.wav").mkdir()  # a folder named like audio: not a recording
    lines = released.released_lines(str(tmp_path))
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"broken.wav: skipped ({tmp_path / 'broken.wav'}: ")
    # The street scene: a vehicle among the top objects, an outdoor transport scene among the top scenes
    # (the README's predict example).
    assert lines[1].startswith("street.wav (10.0 s): passenger car") and "train station/platform" in lines[1]
    assert lines[2].startswith("street.wav's first 0.5 s at -70 dBFS peak: warning: input is near silence")
    assert "do not trust this prediction" in lines[2]
