"""prepare: videos (written here with PyAV) -> shards. Alignment, clip counts, failures, resumption, workers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from soundnet_fast.cli import run_command
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.data.loader import ShardLoader
from soundnet_fast.data.shards import read_failures, read_index, read_manifest
from soundnet_fast.prepare import run as prepare
from soundnet_fast.prepare import workers
from soundnet_fast.prepare.teachers import IMAGENET_MEAN, IMAGENET_STD, Teacher
from tests.helpers.media import write_garbage, write_truncated, write_video
from tests.helpers.prepare import (
    NUM_COLOURS,
    ColourTeacher,
    clips_by_video,
    colour_frames,
    colour_teacher,
    frame_window,
    load_clip,
    stereo_tones,
    tone_of,
    window_tones,
)

SR = SAMPLE_RATE
WIN = 5 * SR  # samples per 5 s window


def dominant_freq(x: np.ndarray) -> float:
    x = x[len(x) // 8 : -len(x) // 8].astype(np.float64)  # away from the window edges
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * SR / len(x))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Containers x codecs x channels x rates x lengths; every frame's colour and every 5 s tone encode the
    window index."""
    d = tmp_path_factory.mktemp("videos")
    write_video(d / "long.mp4", 45, sample_rate=44100, audio_fn=window_tones, frame_fn=colour_frames())
    write_video(d / "vp9.webm", 12, sample_rate=48000, channels=2, audio_fn=stereo_tones, frame_fn=colour_frames())
    write_video(d / "sub/flac.mkv", 23, sample_rate=48000, channels=2, audio_fn=stereo_tones, fps=25,
                frame_fn=colour_frames((80, 60)))  # fmt: skip
    write_video(d / "short.mp4", 3, sample_rate=48000, audio_fn=window_tones, frame_fn=colour_frames())
    # Variable frame rate: frames at irregular times, some windows' middles fall far after their last frame.
    vfr_times = [0.0, 1.0, 4.0, 8.0, 9.0, 13.5, 16.0, 16.1, 21.0]
    write_video(d / "vfr.mp4", 22, frame_times=vfr_times, audio_fn=window_tones, frame_fn=colour_frames())
    # The audio track starts 2 s after the video and ends at 12 s of a 20 s video.
    write_video(d / "late_audio.mp4", 20, audio_offset=2.0, audio_seconds=10.0, audio_fn=lambda t: window_tones(t + 2),
                frame_fn=colour_frames())  # fmt: skip
    return d


@pytest.fixture(scope="module")
def shards(videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    s = prepare.prepare(videos, out, {"objects": colour_teacher()}, workers=1, clips_per_shard=2)
    assert s.succeeded == 6 and s.failed == 0
    return out


def test_clip_counts_and_manifest(shards):
    m = read_manifest(shards)
    # long 45 s -> 9 windows -> 2 clips; 12 s, 3 s, 20 s -> 1 (padded/tiled); 23 s -> 1; 22 s -> 1
    counts = {v: len(c) for v, c in clips_by_video(shards).items()}
    assert counts == {"long.mp4": 2, "vp9.webm": 1, "sub/flac.mkv": 1, "short.mp4": 1, "vfr.mp4": 1,
                      "late_audio.mp4": 1}  # fmt: skip
    assert m["num_clips"] == 7 and m["num_videos"] == 6 and m["silent_clips"] == 0
    assert m["clip_samples"] == 20 * SR and m["steps"] == 4 and m["sample_rate"] == SR
    assert m["teachers"]["objects"] == {"spec": "test:colour", "num_classes": NUM_COLOURS, "class_names": None}
    for r in read_index(shards):
        audio, probs = load_clip(shards, r)
        assert audio.dtype == np.int16 and audio.shape == (20 * SR,)
        assert probs.dtype == np.float32 and probs.shape == (4, NUM_COLOURS)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_teacher_rows_and_tones_align_with_windows(shards):
    """Row t of every clip is the frame of window 4c + t (tiled for short videos), and the audio of step t
    carries that window's tone (docs/design.md#distillation)."""
    expect = {"long.mp4": (9, 0), "vp9.webm": (3, 0), "sub/flac.mkv": (5, 0), "short.mp4": (1, 0)}
    for video, (windows, _) in expect.items():
        for c, rec in enumerate(clips_by_video(shards)[video]):
            audio, probs = load_clip(shards, rec)
            want = [(4 * c + t) % windows if windows < 4 else 4 * c + t for t in range(4)]
            assert rec["windows"] == want, video
            assert probs.argmax(axis=1).tolist() == want, video
            assert rec["start"] == 20.0 * c
            for t, w in enumerate(want):
                seg = audio[t * WIN : (t + 1) * WIN].astype(np.float32) / 32768
                if video == "vp9.webm" and w == 2:
                    seg = seg[: 2 * SR]  # window 2 holds 2 s of audio, then the zero padding
                elif video == "short.mp4":
                    seg = seg[: 3 * SR]
                assert dominant_freq(seg) == pytest.approx(tone_of(w), abs=2.0), (video, c, t)
            assert rec["frame_times"] == pytest.approx([5 * w + 2.5 for w in want], abs=0.11) or video != "long.mp4"


def test_padding_and_tiling_of_short_video(shards):
    (rec,) = clips_by_video(shards)["vp9.webm"]  # 12 s -> padded to 15 s -> tiled to 20 s
    audio, _ = load_clip(shards, rec)
    assert np.abs(audio[12 * SR + 100 : 15 * SR]).max() == 0  # zero padding 12..15 s
    np.testing.assert_array_equal(audio[15 * SR : 20 * SR], audio[: 5 * SR])  # the tile starts over
    (rec,) = clips_by_video(shards)["short.mp4"]  # 3 s -> 5 s -> four copies
    audio, _ = load_clip(shards, rec)
    for k in range(1, 4):
        np.testing.assert_array_equal(audio[k * WIN : (k + 1) * WIN], audio[:WIN])


def test_variable_frame_rate_picks_the_frame_shown_at_each_window_middle(shards):
    (rec,) = clips_by_video(shards)["vfr.mp4"]
    vfr_times = np.array([0.0, 1.0, 4.0, 8.0, 9.0, 13.5, 16.0, 16.1, 21.0])
    shown = [vfr_times[vfr_times <= 5 * t + 2.5].max() for t in range(4)]  # 1.0, 4.0, 9.0, 16.1
    assert rec["frame_times"] == pytest.approx(shown, abs=1e-3)
    _, probs = load_clip(shards, rec)
    assert probs.argmax(axis=1).tolist() == [frame_window(t) for t in shown]  # [0, 0, 1, 3]


def test_late_and_short_audio_sits_on_the_video_timeline(shards):
    (rec,) = clips_by_video(shards)["late_audio.mp4"]
    audio, probs = load_clip(shards, rec)
    assert np.abs(audio[: int(1.9 * SR)]).max() == 0  # before the track starts
    assert np.abs(audio[int(12.1 * SR) :]).max() == 0  # after it ends: padded with silence
    # Window 1 (5..10 s) carries the tone written for video time 5..10 s.
    assert dominant_freq(audio[WIN : 2 * WIN].astype(np.float32)) == pytest.approx(tone_of(1), abs=2.0)
    assert probs.argmax(axis=1).tolist() == [0, 1, 2, 3]


def test_failures_are_recorded_and_the_run_goes_on(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    good = write_video(d / "good.mp4", 6, audio_fn=window_tones, frame_fn=colour_frames())
    write_video(d / "silent.mp4", 6, audio_fn=lambda t: 0 * t, frame_fn=colour_frames())
    write_garbage(d / "garbage.mp4")
    (d / "empty.webm").write_bytes(b"")
    write_truncated(good, d / "truncated.mp4", keep=0.5)
    write_video(d / "no_audio.mp4", 6, audio=False)
    write_video(d / "no_video.mkv", 6, video=False)
    write_video(d / "nan.mp4", 6, frame_fn=lambda t: np.zeros((48, 64, 3), np.uint8))
    (d / "notes.txt").write_text("not a video extension: not considered")

    class NanOnBlack(ColourTeacher):
        def forward(self, x):
            y = super().forward(x)
            black = x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            return torch.where(black.mean(dim=(1, 2, 3), keepdim=True).squeeze(-1).squeeze(-1) < 0.05,
                               torch.nan, y)  # fmt: skip

    out = tmp_path / "out"
    teacher = Teacher(NanOnBlack(), spec="test:nan", num_classes=NUM_COLOURS, device="cpu")
    s = prepare.prepare(d, out, {"objects": teacher}, workers=1, progress=True)
    assert s.videos == 8 and s.succeeded == 2 and s.failed == 6
    failures = {r["video"]: r for r in read_failures(out)}
    assert set(failures) == {"garbage.mp4", "empty.webm", "truncated.mp4", "no_audio.mp4", "no_video.mkv", "nan.mp4"}
    assert failures["empty.webm"]["kind"] == "empty" and "0 bytes" in failures["empty.webm"]["reason"]
    assert failures["garbage.mp4"]["kind"] == "not media"
    assert failures["truncated.mp4"]["kind"] in ("not media", "decode error")
    assert failures["no_audio.mp4"]["kind"] == "no audio" and "no_audio.mp4" in failures["no_audio.mp4"]["reason"]
    assert failures["no_video.mkv"]["kind"] == "no video"
    assert failures["nan.mp4"]["kind"] == "teacher" and "non-finite" in failures["nan.mp4"]["reason"]
    m = read_manifest(out)
    assert m["num_videos"] == 2 and m["silent_clips"] == 1 and m["num_failures"] == 6
    silent = [r for r in read_index(out) if r["video"] == "silent.mp4"]
    assert len(silent) == 1 and silent[0]["silent"] is True
    # A rerun skips both the done and the failed videos; --retry-failed retries only the failed ones.
    again = prepare.prepare(d, out, {"objects": teacher}, workers=1)
    assert again.skipped == 8 and again.succeeded == again.failed == 0
    retry = prepare.prepare(d, out, {"objects": teacher}, workers=1, retry_failed=True)
    assert retry.skipped == 2 and retry.failed == 6
    assert read_manifest(out)["num_clips"] == 2


def cli_main(argv: list[str]) -> int:
    """`soundnet-fast prepare ...` through this module's own parser (the CLI table imports every command)."""
    import argparse

    parser = argparse.ArgumentParser()
    prepare.add_arguments(parser)
    assert argv[0] == "prepare"
    return run_command("prepare", prepare.run, parser.parse_args(argv[1:]))  # user errors: one line, exit 2


def test_registered_in_the_cli_table():
    from soundnet_fast.cli import COMMANDS

    assert ("prepare", "soundnet_fast.prepare.run") in [(c, m) for c, m, _ in COMMANDS]


def test_cli_exit_status_and_audio_only_shards(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    write_garbage(d / "a.mp4")
    assert cli_main(["prepare", str(d), str(tmp_path / "o1"), "--teacher", "objects=uniform:7", "--workers", "1"]) == 1
    write_video(d / "b.mkv", 4, video=False)  # audio only: fine when no teacher needs frames
    listing = tmp_path / "list.txt"
    listing.write_text("in/a.mp4\n# a comment\nin/b.mkv\n")
    assert cli_main(["prepare", str(listing), str(tmp_path / "o2"), "--workers", "1", "--clip-seconds", "10"]) == 0
    m = read_manifest(tmp_path / "o2")
    assert m["teachers"] == {} and m["num_clips"] == 1 and m["steps"] == 2 and m["clip_samples"] == 10 * SR
    assert "1 videos -> 1 clips" in capsys.readouterr().out
    assert cli_main(["prepare", str(tmp_path / "nowhere"), str(tmp_path / "o3")]) == 2


def test_parallel_workers_write_the_same_shards(videos, shards, tmp_path):
    out = tmp_path / "par"
    prepare.prepare(videos, out, {"objects": colour_teacher()}, workers=2, clips_per_shard=2)
    a, b = read_index(shards), read_index(out)
    assert a == b
    for name in [s["name"] for s in read_manifest(out)["shards"]]:
        for f in ("audio", "objects"):
            np.testing.assert_array_equal(np.load(out / f"{name}.{f}.npy"), np.load(shards / f"{name}.{f}.npy"))


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from soundnet_fast.prepare import run as prepare
    from soundnet_fast.prepare.teachers import UniformTeacher

    class KillingTeacher(UniformTeacher):
        calls = 0
        def __call__(self, frames):
            KillingTeacher.calls += 1
            if KillingTeacher.calls == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)  # a hard kill: no cleanup, no finally
            return super().__call__(frames)

    prepare.prepare(sys.argv[1], sys.argv[2], {"objects": KillingTeacher(5)}, workers=1, clips_per_shard=3)
    """
)


def test_resumption_after_a_kill(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(7):
        write_video(d / f"v{i}.mp4", 25 if i % 2 else 45, audio_fn=window_tones, size=(32, 32), fps=2)
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(script), str(d), str(out), "6"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    m = read_manifest(out)
    index = read_index(out)
    assert 0 < m["num_clips"] == len(index) < 11  # some shards made it, not all
    for s in m["shards"]:
        assert np.load(out / f"{s['name']}.audio.npy", mmap_mode="r").shape[0] == s["num_clips"]
    done_before = {r["video"] for r in index}
    from soundnet_fast.prepare.teachers import UniformTeacher

    s = prepare.prepare(d, out, {"objects": UniformTeacher(5)}, workers=1, clips_per_shard=3)
    assert s.skipped == len(done_before) and s.succeeded == 7 - len(done_before)
    index = read_index(out)
    counts: dict[str, int] = {}
    for r in index:
        counts[r["video"]] = counts.get(r["video"], 0) + 1
    assert counts == {f"v{i}.mp4": 1 if i % 2 else 2 for i in range(7)}  # every clip once, none twice
    assert [r["clip"] for r in index] == list(range(11))
    loader = ShardLoader(out, 11, backend="numpy", shuffle=False)
    assert len(loader) == 1 and next(iter(loader))[0].shape == (11, 1, 20 * SR)


_ORIGINAL_WORK = workers.decode_job


def _crashing_work(job):
    """A worker that dies on one video, as an FFmpeg crash on a hostile file would."""
    import os

    if job[0] == "crash.mp4":
        os._exit(1)
    return _ORIGINAL_WORK(job)


def test_a_crashing_worker_fails_only_its_video(tmp_path, monkeypatch):
    d = tmp_path / "in"
    for name in ("a.mp4", "b.mp4", "crash.mp4", "c.mp4", "d.mp4"):
        write_video(d / name, 4, size=(32, 32), fps=2)
    monkeypatch.setattr(workers, "decode_job", _crashing_work)  # forked workers inherit the patched module
    s = prepare.prepare(d, tmp_path / "out", {}, workers=2, audio="pyav")  # the audio in the workers
    assert s.succeeded == 4 and s.failed == 1 and s.failure_kinds == {"crash": 1}
    (failure,) = read_failures(tmp_path / "out")
    assert failure["video"] == "crash.mp4" and "crashed" in failure["reason"]
    assert sorted(r["video"] for r in read_index(tmp_path / "out")) == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
