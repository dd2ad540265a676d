"""prepare --frames dali: frame indices from packets, DALI's decoded frames, alignment, the PyAV fallback.

DALI's CPU backend decodes VP9 (not H.264), so the DALI tests use VP9 WebM videos; on a GPU the same code
runs with the mixed backend. Tests that need DALI skip without it; the frame-index rule does not need it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

from soundnet_fast.cli import run_command
from soundnet_fast.data.shards import read_index, read_manifest
from soundnet_fast.prepare import run as prepare
from soundnet_fast.prepare.frames_dali import DaliError, DaliUnavailable
from soundnet_fast.prepare.video import decode, pick_frames
from tests.helpers.media import write_video
from tests.helpers.prepare import (
    clips_by_video,
    colour_frames,
    colour_teacher,
    frame_window,
    load_clip,
    window_tones,
)

VFR_TIMES = [0.0, 1.0, 4.0, 8.0, 9.0, 13.5, 16.0, 16.1, 21.0]
# Mean absolute difference (uint8 levels) between DALI's and PyAV's frame of a window. Measured here: at most
# ~2.0 on the flat-colour 64x48 videos (both convert YUV to RGB with swscale, with different flags) and
# ~0.2 on the 384x288 one shrunk to 341x256; neighbouring windows' colours differ by 40 or more.
FRAME_MAD = 3.0


def gradient(t: float) -> np.ndarray:
    h, w = 288, 384
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 255 // w + int(20 * t)) % 256, y * 255 // h, (x + y) // 3 % 256], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """vp9/: what DALI's CPU backend decodes (constant and variable frame rate, late audio, two clips, a
    frame larger than the teachers' size); h264/: what it does not (one with B-frames: packets out of order)."""
    d = tmp_path_factory.mktemp("dali_media")
    vp9 = {"sample_rate": 48000, "audio_fn": window_tones, "frame_fn": colour_frames()}
    write_video(d / "vp9/cfr.webm", 12, **vp9)
    write_video(d / "vp9/vfr.webm", 22, frame_times=VFR_TIMES, **vp9)
    write_video(d / "vp9/long.webm", 41, fps=4, **vp9)  # 9 windows: clips of windows 0-3 and 4-7
    write_video(d / "vp9/late_audio.webm", 20, audio_offset=2.0, audio_seconds=10.0, sample_rate=48000,
                audio_fn=lambda t: window_tones(t + 2), frame_fn=colour_frames())  # fmt: skip
    write_video(d / "big/big.webm", 3, fps=5, size=(384, 288), sample_rate=48000, frame_fn=gradient)
    write_video(d / "h264/vfr.mp4", 22, frame_times=VFR_TIMES, audio_fn=window_tones, frame_fn=colour_frames())
    write_video(d / "h264/bframes.mp4", 12, fps=7, audio_fn=window_tones, frame_fn=colour_frames(),
                video_options={"preset": "medium", "bf": "3"})  # fmt: skip
    return d


@pytest.fixture(scope="module")
def dali_cpu():
    pytest.importorskip("nvidia.dali")
    from soundnet_fast.prepare.frames_dali import DaliFrames

    return DaliFrames("cpu")


def all_videos(media: Path) -> list[Path]:
    return sorted(p for p in media.rglob("*") if p.suffix in (".webm", ".mp4"))


# ------------------------------------------------------------------------------------------ frame indices
def test_pick_frames_rule():
    # The frame shown at each window's middle (2.5, 7.5, 12.5 s): at or before it, else the first frame.
    assert pick_frames([3.0, 7.6], 3, 5.0) == [0, 0, 1]
    assert pick_frames([0.0, 2.5, 3.0], 2, 5.0) == [1, 2]
    assert pick_frames([0.0, 2.4, 9.0, 11.0], 3, 5.0) == [1, 1, 3]


@pytest.mark.parametrize("every", [5.0, 1.0])
def test_frame_indices_pick_the_pyav_pickers_frames(media, every):
    """Packets only (no decoding) give the times the PyAV picker chooses, and decode(decode_frames=False)
    gives the same timeline, duration, audio and windows as a full decode: CFR, VFR, B-frames, late audio."""
    for path in all_videos(media):
        ref = decode(str(path), frame_every=every)
        lite = decode(str(path), frame_every=every, decode_frames=False)
        assert lite.frame_times == ref.frame_times, path.name
        assert (len(lite.frame_indices), lite.duration) == (len(ref.frame_times), ref.duration), path.name
        assert lite.frame_indices == sorted(lite.frame_indices), path.name  # windows in time order
        np.testing.assert_array_equal(lite.audio, ref.audio)
        source = (384, 288) if path.name == "big.webm" else (ref.frames[0].shape[1], ref.frames[0].shape[0])
        assert lite.frames == [] and lite.frame_size == source
    vfr = decode(str(media / "vp9/vfr.webm"), frame_every=5.0, decode_frames=False)
    assert vfr.frame_indices == [1, 2, 4, 7, 8] and vfr.frame_times == [1.0, 4.0, 9.0, 16.1, 21.0]


# ------------------------------------------------------------------------------------------ DALI frames
def test_dali_cpu_frames_match_pyav_frames(media, dali_cpu):
    for path in [*sorted((media / "vp9").iterdir()), media / "big/big.webm"]:
        ref = decode(str(path), frame_every=1.0)
        lite = decode(str(path), frame_every=1.0, decode_frames=False)
        got = dali_cpu(path, lite.frame_indices, lite.frame_size)
        assert len(got) == len(ref.frames)
        for w, (a, b) in enumerate(zip(got, ref.frames, strict=True)):
            assert a.dtype == np.uint8 and a.shape == b.shape, (path.name, w)
            assert np.abs(a.astype(np.int16) - b).mean() < FRAME_MAD, (path.name, w)
        if path.name == "vfr.webm":  # the bound tells windows apart: another window's frame is far off
            assert np.abs(got[0].astype(np.int16) - ref.frames[10]).mean() > 10 * FRAME_MAD
    assert got[0].shape == (256, 341, 3)  # big.webm: 384x288 shrunk to the teachers' short side


def test_dali_error_names_the_file_and_the_decoder_goes_on(media, dali_cpu):
    bad = media / "h264/vfr.mp4"
    with pytest.raises(DaliError, match="vfr.mp4") as info:
        dali_cpu(bad, [0, 1])
    assert "DALI (cpu)" in info.value.reason
    ok = media / "vp9/cfr.webm"
    lite = decode(str(ok), decode_frames=False)
    assert len(dali_cpu(ok, lite.frame_indices)) == 3  # a fresh pipeline after the failed run


def test_without_dali(media, tmp_path, monkeypatch):
    from soundnet_fast.prepare.frames_dali import DaliFrames

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # makes `import nvidia.dali` fail
    with pytest.raises(DaliUnavailable, match="--frames pyav"):
        DaliFrames("cpu")
    with pytest.raises(DaliUnavailable):
        prepare.prepare(media / "vp9", tmp_path / "out", {"objects": colour_teacher()}, frames="dali")
    assert not (tmp_path / "out").exists()  # nothing written
    s = prepare.prepare(media / "big", tmp_path / "auto", {"objects": colour_teacher()}, frames="auto")
    assert s.succeeded == 1 and s.frame_decoder == "pyav"


# ------------------------------------------------------------------------------------------ prepare
def test_prepare_with_dali_aligns_teacher_rows_with_windows(media, tmp_path):
    pytest.importorskip("nvidia.dali")
    out = tmp_path / "dali"
    teachers = {"objects": colour_teacher()}
    s = prepare.prepare(media / "vp9", out, teachers, frames="dali", workers=1, clips_per_shard=2)
    assert s.succeeded == 4 and s.failed == 0 and s.frame_decoder == "dali-cpu" and not s.frame_fallbacks
    assert "frames by DALI (cpu)" in s.line()
    clips = clips_by_video(out)
    assert {v: len(c) for v, c in clips.items()} == {"cfr.webm": 1, "vfr.webm": 1, "long.webm": 2,
                                                      "late_audio.webm": 1}  # fmt: skip
    for video, recs in clips.items():
        for c, rec in enumerate(recs):
            assert rec["frame_decoder"] == "dali"
            _, probs = load_clip(out, rec)
            # Row t is the frame of window rec["windows"][t]: its colour says which window it was taken in.
            assert probs.argmax(axis=1).tolist() == [frame_window(t) for t in rec["frame_times"]], video
            if video != "vfr.webm":
                want = [(4 * c + t) % 3 if video == "cfr.webm" else 4 * c + t for t in range(4)]
                assert rec["windows"] == want and probs.argmax(axis=1).tolist() == want, video
    (vfr,) = clips["vfr.webm"]
    assert vfr["frame_times"] == pytest.approx([1.0, 4.0, 9.0, 16.1]) and vfr["windows"] == [0, 1, 2, 3]
    # The same run with PyAV frames: the same clips, audio and teacher classes.
    ref = tmp_path / "pyav"
    prepare.prepare(media / "vp9", ref, teachers, frames="pyav", workers=1, clips_per_shard=2)
    a, b = read_index(out), read_index(ref)
    assert [{**r, "frame_decoder": "-"} for r in a] == [{**r, "frame_decoder": "-"} for r in b]
    assert {r["frame_decoder"] for r in b} == {"pyav"}
    for rec in a:
        (audio_a, probs_a), (audio_b, probs_b) = load_clip(out, rec), load_clip(ref, rec)
        np.testing.assert_array_equal(audio_a, audio_b)
        assert probs_a.argmax(axis=1).tolist() == probs_b.argmax(axis=1).tolist()


def test_h264_on_cpu_dali_falls_back_to_pyav_and_matches_it(media, tmp_path):
    pytest.importorskip("nvidia.dali")
    teachers = {"objects": colour_teacher()}
    out = tmp_path / "dali"
    s = prepare.prepare(media / "h264", out, teachers, frames="dali", workers=2, clips_per_shard=1)
    assert s.succeeded == 2 and s.failed == 0 and sum(s.frame_fallbacks.values()) == 2
    assert all(k.startswith("h264: DALI (cpu) cannot decode it") for k in s.frame_fallbacks), s.frame_fallbacks
    assert "by PyAV for 2 videos DALI could not decode (h264: " in s.line()
    ref = tmp_path / "auto"
    r = prepare.prepare(media / "h264", ref, teachers, frames="auto", workers=1, clips_per_shard=1)
    import torch

    assert r.frame_decoder == "pyav" or torch.cuda.is_available()  # auto on a machine without CUDA: PyAV
    assert read_index(out) == read_index(ref)
    assert {rec["frame_decoder"] for rec in read_index(out)} == {"pyav"}
    for shard in read_manifest(out)["shards"]:
        for f in ("audio", "objects"):
            name = f"{shard['name']}.{f}.npy"
            np.testing.assert_array_equal(np.load(out / name), np.load(ref / name))


def test_cli_frames_option(monkeypatch, tmp_path):
    parser = argparse.ArgumentParser()
    prepare.add_arguments(parser)
    assert parser.parse_args(["v", "o"]).frames == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["v", "o", "--frames", "nvdec"])
    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise DaliUnavailable("no DALI here")

    monkeypatch.setattr(prepare, "prepare", fake)
    assert run_command("prepare", prepare.run, parser.parse_args(["v", str(tmp_path / "o"), "--frames", "dali"])) == 2
    assert seen["frames"] == "dali"
