"""Decoding (PyAV), resampling (soxr), scaling and tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundnet_fast import audio
from soundnet_fast.audio import AudioDecodeError
from tests.helpers.sounds import sine, write_audio, write_video_only, write_video_with_audio

SR = audio.SAMPLE_RATE


def peak_hz(wave: np.ndarray, rate: int = SR) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spec) * rate / len(wave))


@pytest.mark.parametrize(
    ("name", "rate", "channels", "codec"),
    [
        ("a.wav", 48_000, 1, None),
        ("b.flac", 44_100, 1, None),
        ("c.ogg", 48_000, 2, None),  # stereo Vorbis
        ("d.ogg", 48_000, 2, "libopus"),  # Opus in Ogg
        ("e.mp3", 44_100, 2, None),
        ("f.m4a", 48_000, 2, None),  # AAC: priming samples to trim
    ],
)
def test_sine_decodes_to_right_length_and_pitch(name: str, rate: int, channels: int, codec: str | None, tmp_path):
    path = write_audio(str(tmp_path / name), sine(440, 2.0, rate), rate, channels, codec)
    w = audio.load(path)
    assert w.dtype == np.float32 and w.ndim == 1
    # Within the codec priming / padding tolerance (a few ms), not AAC's raw 1,024 + padding.
    assert abs(len(w) - 2 * SR) <= 0.004 * SR, len(w)
    assert abs(peak_hz(w) - 440) < 2
    assert np.abs(w).max() <= 1.0 and 0.4 < np.abs(w).max() < 0.6


def test_small_probe_opens_headed_files_and_falls_back_for_the_rest(tmp_path, monkeypatch) -> None:
    """A WAV opens on its first bytes (no full probe); other formats (here an MPEG-TS whose audio a small probe
    would miss, and raw ADTS AAC, whose duration estimate depends on the probe) are probed in full as before."""
    import av

    wav = write_audio(str(tmp_path / "a.wav"), sine(440, 2.0, 44_100), 44_100)
    adts = write_audio(str(tmp_path / "h.aac"), sine(440, 2.0, 44_100), 44_100)
    ts = str(tmp_path / "late.ts")  # ~1 s of MP2 audio in an MPEG-TS: no header, streams found by probing
    with av.open(ts, "w", format="mpegts") as c:
        s = c.add_stream("mp2", rate=48_000, layout="stereo")
        for i in range(40):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 2304), np.int16), format="s16", layout="stereo")
            f.sample_rate, f.pts = 48_000, i * 1152
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    opened: list[dict] = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda path, **kw: opened.append(kw) or real_open(path, **kw))
    assert abs(len(audio.load(wav)) - 2 * SR) <= 1
    assert opened == [{"options": {"probesize": str(audio.PROBE_BYTES)}}]
    opened.clear()
    assert abs(len(audio.load(ts)) - 40 * 1152 * SR / 48_000) <= 0.03 * SR
    assert opened[-1] == {}, opened  # the full probe
    got = audio.load(adts)
    assert opened[-1] == {}, opened
    monkeypatch.setattr(audio, "HEADER_DEFINED", frozenset())
    np.testing.assert_array_equal(got, audio.load(adts))


def test_mp4_audio_track_of_a_video(tmp_path) -> None:
    path = write_video_with_audio(str(tmp_path / "v.mp4"), sine(440, 3.0, 44_100), 44_100, 3.0)
    w = audio.load(path)
    assert abs(len(w) - 3 * SR) <= 0.004 * SR and abs(peak_hz(w) - 440) < 2
    # The start lines up with t = 0: the first 10 ms carry the sine's start, not codec priming silence.
    start = audio.load(path, start=0.0, duration=0.01)
    assert np.abs(start).max() > 0.1


def test_mono_first_vs_mean(tmp_path) -> None:
    left, right = sine(440, 1.0, SR), sine(1000, 1.0, SR, amplitude=0.3)
    path = write_audio(str(tmp_path / "st.wav"), np.stack([left, right]), SR)
    first, mean = audio.load(path, mono="first"), audio.load(path, mono="mean")
    np.testing.assert_allclose(first, left, atol=1e-3)
    np.testing.assert_allclose(mean, (left + right) / 2, atol=1e-3)
    with pytest.raises(ValueError, match="mono"):
        audio.load(path, mono="left")  # type: ignore[arg-type]


def test_resampling_is_anti_aliased() -> None:
    # A 15 kHz tone at 48 kHz is above the 11,025 Hz Nyquist of 22,050 Hz: it must vanish, not fold to 7,050 Hz.
    w = audio.resample(sine(15_000, 1.0, 48_000), 48_000, SR)
    assert len(w) == SR and np.abs(w[1000:-1000]).max() < 0.01


def test_errors_name_the_file_and_reason(tmp_path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio")
    silent_video = write_video_only(str(tmp_path / "noaudio.mp4"))
    for path, reason in ((empty, "empty"), (text, "cannot open"), (silent_video, "no audio stream"),
                         (tmp_path / "missing.wav", "no such file")):  # fmt: skip
        with pytest.raises(AudioDecodeError, match=reason) as e:
            audio.load(path)
        assert str(path) in str(e.value)


def test_to_input_scales_and_tiles_circularly() -> None:
    w = np.linspace(-1, 1, 1000, dtype=np.float32)
    x = audio.to_input(w, min_seconds=0.1)  # 2,205 samples -> 3 tiles
    assert x.shape == (1, 1, 3000) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0, 0, :1000].numpy(), w * 256)
    np.testing.assert_allclose(x[0, 0, 1000:2000].numpy(), w * 256)
    assert audio.to_input(w, min_seconds=0.01, scale=512).abs().max() == 512
    with pytest.raises(ValueError, match="1-D"):
        audio.to_input(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="non-finite"):
        audio.to_input(np.array([0.0, np.inf]))
