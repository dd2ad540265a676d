"""``prepare --audio dali`` against ``--audio pyav`` on the same videos: the same index and teacher rows, audio rows
within the plugin's parity, the same failures; the manifest's record of the decoder and the resume rule
(docs/design.md#the-native-dali-audio-operator)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from soundnet_fast.cli import run_command
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.data.shards import read_failures, read_manifest
from soundnet_fast.prepare import run as prepare
from tests.helpers.media import write_garbage, write_video
from tests.helpers.prepare import colour_frames, colour_teacher, load_clip, stereo_tones, window_tones
from tests.helpers.sounds import write_video_only
from tests.prepare.dali_audio_support import peak_bin, require_plugin

WIN = 5 * SAMPLE_RATE  # samples per 5 s window
VFR_TIMES = [0.0, 1.0, 4.0, 8.0, 9.0, 13.5, 16.0, 16.1, 21.0]


@pytest.fixture(scope="module")
def plugin() -> Path:
    return require_plugin()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AAC/MP4 (variable frame rate), Opus/WebM (VP9: DALI's CPU video decoder reads it), FLAC/MKV stereo, audio
    that starts 2 s late, a video shorter than a clip, one of two clips; and four that must fail."""
    d = tmp_path_factory.mktemp("prepare_audio_dali")
    frames = colour_frames()
    write_video(d / "vfr.mp4", 22, frame_times=VFR_TIMES, audio_fn=window_tones, frame_fn=frames)
    write_video(d / "vp9.webm", 12, sample_rate=48000, audio_fn=window_tones, frame_fn=frames)
    write_video(d / "stereo.mkv", 9, sample_rate=48000, channels=2, audio_fn=stereo_tones, frame_fn=frames)
    write_video(d / "late.mp4", 20, audio_offset=2.0, audio_seconds=10.0, audio_fn=lambda t: window_tones(t + 2),
                frame_fn=frames)  # fmt: skip
    write_video(d / "long.webm", 41, fps=4, sample_rate=48000, audio_fn=window_tones, frame_fn=frames)
    (d / "bad").mkdir()
    (d / "bad/empty.mp4").write_bytes(b"")
    (d / "bad/text.mkv").write_text("this is not a video\n")
    write_garbage(d / "bad/random.webm", 5000)
    write_video_only(str(d / "bad/no_audio.mp4"))
    return d


def _run(videos: Path, out: Path, audio: str, teachers: bool = True, **kw: object) -> prepare.Summary:
    t = {"objects": colour_teacher()} if teachers else {}
    return prepare.prepare(videos, out, t, audio=audio, workers=2, clips_per_shard=3, **kw)


def _rows(out: Path) -> list[dict]:
    with open(out / "index.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _audio(out: Path, rec: dict) -> np.ndarray:
    (shard,) = [s for s in read_manifest(out)["shards"] if s["name"] == rec["shard"]]
    return np.load(out / f"{shard['name']}.audio.npy", mmap_mode="r")[rec["row"]].astype(np.float32) / 32768


def assert_same_shards(a: Path, b: Path, teachers: bool = True) -> None:
    """The same index rows (bar the shard/row numbering) and teacher rows; audio rows: correlation >= 0.999,
    the same lag (cross-correlation peak within one sample) and each 5 s window's tone in the same bin."""
    ra, rb = _rows(a), _rows(b)
    key = ("video", "start", "windows", "frame_times", "silent", "frame_decoder")
    assert [{k: r.get(k) for k in key} for r in ra] == [{k: r.get(k) for k in key} for r in rb]
    for x, y in zip(ra, rb, strict=True):
        wa, wb = _audio(a, x), _audio(b, y)
        assert float(np.corrcoef(wa, wb)[0, 1]) >= 0.999, x["video"]
        lag = np.argmax(np.correlate(wa[WIN : WIN + 2000], wb[WIN - 5 : WIN + 2005], "valid")) - 5
        assert abs(lag) <= 1, (x["video"], lag)
        for w in range(len(wa) // WIN):
            assert peak_bin(wa[w * WIN :], WIN) == peak_bin(wb[w * WIN :], WIN), (x["video"], w)
        if teachers:
            np.testing.assert_allclose(load_clip(a, x)[1], load_clip(b, y)[1], atol=1e-6)
    fa = sorted((r["video"], r["kind"]) for r in read_failures(a))
    assert fa == sorted((r["video"], r["kind"]) for r in read_failures(b))


def test_dali_and_pyav_audio_give_the_same_shards(plugin: Path, videos: Path, tmp_path: Path) -> None:
    ref = _run(videos, tmp_path / "pyav", "pyav", frames="pyav")
    got = _run(videos, tmp_path / "dali", "dali", frames="pyav")
    assert (got.succeeded, got.failed, got.clips) == (ref.succeeded, ref.failed, ref.clips) == (5, 4, 6)
    assert got.audio_decoder == "dali" and ref.audio_decoder == "pyav" and "audio by the DALI plugin" in got.line()
    assert got.failure_kinds == ref.failure_kinds == {"empty": 1, "not media": 2, "no audio": 1}
    assert_same_shards(tmp_path / "pyav", tmp_path / "dali")
    assert read_manifest(tmp_path / "dali")["audio_decoder"] == "dali"
    assert read_manifest(tmp_path / "pyav")["audio_decoder"] == "pyav"


def test_with_dali_frames_and_the_pyav_fallback(plugin: Path, videos: Path, tmp_path: Path) -> None:
    # DALI's CPU video decoder takes the VP9 videos; H.264 falls back to PyAV's frames, the audio staying DALI's.
    ref = _run(videos, tmp_path / "pyav", "pyav", frames="dali")
    got = _run(videos, tmp_path / "dali", "dali", frames="dali")
    assert got.frame_decoder == "dali-cpu" and got.frame_fallbacks == ref.frame_fallbacks
    assert sum(got.frame_fallbacks.values()) == 3  # vfr.mp4, stereo.mkv, late.mp4: H.264
    assert {r["video"]: r["frame_decoder"] for r in _rows(tmp_path / "dali")}["vp9.webm"] == "dali"
    assert_same_shards(tmp_path / "pyav", tmp_path / "dali")


def test_audio_only_shards(plugin: Path, videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An audio-only run forks its decoding processes only when PyAV decodes: DALI needs none (no frames to read).
    from soundnet_fast.prepare.workers import Workers

    forks: list[int] = []
    real = Workers._new
    monkeypatch.setattr(Workers, "_new", staticmethod(lambda n: forks.append(n) or real(n)))
    _run(videos, tmp_path / "pyav", "pyav", teachers=False)
    assert forks == [2]
    s = _run(videos, tmp_path / "dali", "dali", teachers=False)
    assert forks == [2]
    assert s.succeeded == 5 and s.failure_kinds == {"empty": 1, "not media": 2, "no audio": 1}
    assert_same_shards(tmp_path / "pyav", tmp_path / "dali", teachers=False)


# ------------------------------------------------------------------------------------------ the decoder on record
def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    prepare.add_arguments(parser)
    return run_command("prepare", prepare.run, parser.parse_args(argv))


def test_resume_keeps_the_decoder_that_wrote_the_folder(plugin: Path, videos: Path, tmp_path: Path, capsys) -> None:
    one = tmp_path / "one"
    one.mkdir()
    (one / "vp9.webm").symlink_to(videos / "vp9.webm")
    out = tmp_path / "out"
    assert _run(one, out, "auto", teachers=False).audio_decoder == "dali"  # the plugin loads: auto is DALI
    with pytest.raises(ValueError, match=r"decoded by dali; resume it with --audio dali"):
        _run(one, out, "pyav", teachers=False)
    assert _cli([str(one), str(out), "--audio", "pyav", "--no-progress"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 1 and err[0].startswith("soundnet-fast prepare: error: ") and "decoded by dali" in err[0]
    s = _run(one, out, "auto", teachers=False)
    assert s.audio_decoder == "dali" and s.skipped == 1
    # A folder written by PyAV (or before the decoder was recorded) stays PyAV under auto; DALI is refused.
    old = tmp_path / "old"
    _run(one, old, "pyav", teachers=False)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["audio_decoder"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    (one / "short.mp4").symlink_to(videos / "late.mp4")
    s = _run(one, old, "auto", teachers=False)
    assert s.audio_decoder == "pyav" and s.succeeded == 1 and read_manifest(old)["audio_decoder"] == "pyav"
    with pytest.raises(ValueError, match="decoded by pyav"):
        _run(one, old, "dali", teachers=False)


def test_without_the_plugin(videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import soundnet_fast.prepare.dali_plugin as dali_plugin

    def unavailable(path: object = None) -> Path:
        raise dali_plugin.PluginUnavailable("the DALI audio plugin is not built: run `soundnet-fast build-dali-plugin`")

    monkeypatch.setattr(dali_plugin, "load_plugin", unavailable)
    one = tmp_path / "one"
    one.mkdir()
    (one / "vp9.webm").symlink_to(videos / "vp9.webm")
    assert _run(one, tmp_path / "auto", "auto", teachers=False).audio_decoder == "pyav"  # auto falls back
    assert _cli([str(one), str(tmp_path / "dali"), "--audio", "dali", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "soundnet-fast prepare: error: the DALI audio plugin is not built" in err
    assert not (tmp_path / "dali").exists()  # refused before anything was written


def test_cli_audio_option() -> None:
    parser = argparse.ArgumentParser()
    prepare.add_arguments(parser)
    assert parser.parse_args(["v", "o"]).audio == "auto"
    assert parser.parse_args(["v", "o", "--audio", "dali"]).audio == "dali"
    with pytest.raises(SystemExit):
        parser.parse_args(["v", "o", "--audio", "ffmpeg"])
    with pytest.raises(ValueError, match="audio must be one of"):
        prepare.prepare("v", "o", {}, audio="ffmpeg")
