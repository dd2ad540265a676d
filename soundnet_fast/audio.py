"""Audio in: decode any file PyAV (FFmpeg) reads, resample properly, scale and tile for SoundNet.

docs/design.md#input, #data-path: 22,050 Hz mono; the original takes the first channel; inputs are scaled x256
and short clips are tiled circularly to 10 s. AAC adds priming samples: trimmed by the stream's start time.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Literal

import numpy as np

from soundnet_fast.constants import INPUT_SCALE, SAMPLE_RATE

Mono = Literal["first", "mean"]


class AudioDecodeError(RuntimeError):
    """A file could not be decoded; the message names the file and the reason."""


def load(
    path: str | os.PathLike[str],
    sample_rate: int = SAMPLE_RATE,
    mono: Mono = "first",
    *,
    start: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Decode the first audio stream of ``path`` to float32 mono in [-1, 1] at ``sample_rate``.

    Works for WAV/FLAC/OGG/MP3 and the audio track of video containers (MP4, MKV, WebM).
    ``mono="first"`` keeps the first channel as the original SoundNet scripts did; ``"mean"`` averages.
    Samples before the stream's start time (codec priming, e.g. AAC's) are dropped, so sample 0 is
    presentation time 0 of the stream. ``start`` / ``duration`` (seconds) select a window. Samples beyond
    [-1, 1] (float files) are clipped; NaN or Inf samples raise :class:`AudioDecodeError` naming the file
    (:func:`check_wave`), as does a file that cannot be opened or decoded.
    """
    import av  # PyAV bundles FFmpeg; imported here to keep `import soundnet_fast` light

    path = os.fspath(path)
    if mono not in ("first", "mean"):
        raise ValueError(f"mono must be 'first' or 'mean', got {mono!r}")
    if not os.path.exists(path):
        raise AudioDecodeError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise AudioDecodeError(f"{path}: file is empty (0 bytes)")
    try:
        container = _open(av, path)
    except Exception as e:  # PyAV raises a family of FFmpeg errors; name the file and keep the reason
        raise AudioDecodeError(f"{path}: cannot open as a media file ({e})") from e
    with container:
        if not container.streams.audio:
            raise AudioDecodeError(f"{path}: holds no audio stream")
        stream = container.streams.audio[0]
        native_rate = stream.codec_context.sample_rate or stream.rate
        if not native_rate:
            raise AudioDecodeError(f"{path}: audio stream has no sample rate")
        chunks: list[np.ndarray] = []
        first_pts_s: float | None = None
        try:
            for frame in container.decode(stream):
                arr = frame.to_ndarray()
                # Planar formats come as (channels, n); packed as (1, n * channels).
                if not frame.format.is_planar:
                    arr = arr.reshape(-1, len(frame.layout.channels)).T
                arr = _to_float(arr)
                if first_pts_s is None and frame.pts is not None and frame.time_base is not None:
                    first_pts_s = float(frame.pts * Fraction(frame.time_base))
                chunks.append(arr[0] if mono == "first" else arr.mean(axis=0))
        except av.error.FFmpegError as e:
            if not chunks:
                raise AudioDecodeError(f"{path}: cannot decode audio ({e})") from e
            # A damaged tail: keep what decoded, as ffmpeg does.
        if not chunks:
            raise AudioDecodeError(f"{path}: audio stream decoded to no samples")
        wave = np.concatenate(chunks).astype(np.float32, copy=False)
        # Codec priming: samples presented before t=0 (negative pts, or a stream start_time
        # that the first packet precedes) are not part of the signal.
        start_time = 0.0
        if stream.start_time is not None and stream.time_base is not None:
            start_time = float(stream.start_time * Fraction(stream.time_base))
        lead = (first_pts_s if first_pts_s is not None else start_time) - 0.0
        if lead < 0:
            wave = wave[int(round(-lead * native_rate)) :]
        # Encoders pad the last frame (AAC: to 1,024 samples); the container's duration says where the
        # signal ends. Trim only a small excess: some containers estimate durations roughly.
        if stream.duration is not None and stream.time_base is not None:
            expected = int(round(float(stream.duration * Fraction(stream.time_base)) * native_rate))
            if 0 < expected < len(wave) <= expected + native_rate // 10:
                wave = wave[:expected]
    wave = resample(wave, int(native_rate), sample_rate)
    if start or duration is not None:
        a = int(round(start * sample_rate))
        b = None if duration is None else a + int(round(duration * sample_rate))
        wave = wave[a:b]
    if not np.isfinite(wave).all():  # NaN / Inf (a float file can hold them): refused before the clip hides Inf
        check_wave(path, wave, sample_rate)
    return np.clip(wave, -1.0, 1.0)


# FFmpeg reads up to 5 MB of a file to probe its streams (avformat_find_stream_info): for a WAV that is the whole
# file, 22 ms of a 5 s clip's 30 ms to decode (measured, 2-core CPU). A PCM container's header defines its stream
# completely, so those open on their first bytes; every other format (raw ADTS, for one, would find another
# duration) is probed in full as before.
PROBE_BYTES = 4096
HEADER_DEFINED = frozenset({"wav", "w64", "aiff"})  # FFmpeg demuxer names


def _open(av: object, path: str):  # -> av.container.InputContainer
    """``av.open(path)``, on a small probe when the file is a PCM container whose header gives its audio stream."""
    container = av.open(path, options={"probesize": str(PROBE_BYTES)})  # type: ignore[attr-defined]
    audio = container.streams.audio
    if container.format.name in HEADER_DEFINED and audio and audio[0].codec_context.sample_rate:
        return container
    container.close()
    return av.open(path)  # type: ignore[attr-defined]


def check_wave(path: str | os.PathLike[str], wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[str]:
    """Check one decoded mono waveform before it joins a batch; every command runs this per file.

    Raises :class:`AudioDecodeError` naming ``path`` for a waveform with no samples or with non-finite samples
    (NaN or Inf: a float WAV can hold them, :func:`load` passes them on, and one such row would fail its whole
    batch at the model's input check). Returns warnings that do not stop the file, each a phrase without the
    file name: digital silence (every sample exactly 0). Short waveforms are fine (they are tiled). ``wave``:
    shape (n,); ``sample_rate`` only places the first bad sample in seconds. ValueError for a non-1-D array
    (a caller's bug, not the file's).
    """
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"check_wave expects a 1-D mono waveform, got shape {wave.shape}")
    name = os.fspath(path)
    if wave.size == 0:
        raise AudioDecodeError(f"{name}: decoded to no samples")
    finite = np.isfinite(wave)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        first = int(np.argmin(finite))
        raise AudioDecodeError(
            f"{name}: {bad} non-finite sample(s) (NaN or Inf), the first at {first / sample_rate:.3f} s"
        )
    if not np.any(wave):
        return ["digital silence (every sample is 0)"]
    return []


def _to_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.int16:
        return arr.astype(np.float32) / 32768.0
    if arr.dtype == np.int32:
        return (arr.astype(np.float64) / 2147483648.0).astype(np.float32)
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) - 128.0) / 128.0
    return arr.astype(np.float32, copy=False)


def resample(wave: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Anti-aliased resampling (soxr, high quality); a no-op when the rates match."""
    if from_rate == to_rate:
        return np.asarray(wave, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(wave, dtype=np.float32), from_rate, to_rate, quality="HQ").astype(np.float32)


def tile(wave: np.ndarray, min_samples: int) -> np.ndarray:
    """Repeat ``wave`` circularly until it has at least ``min_samples`` (the original scripts' tiling)."""
    n = len(wave)
    if n == 0:
        raise ValueError("cannot tile an empty waveform")
    if n >= min_samples:
        return wave
    reps = -(-min_samples // n)
    return np.tile(wave, reps)


def to_input(
    wave: np.ndarray,
    min_seconds: float = 10.0,
    scale: float = INPUT_SCALE,
    sample_rate: int = SAMPLE_RATE,
):
    """Scale a [-1, 1] waveform x``scale`` and tile it circularly to at least ``min_seconds``.

    Returns a float32 tensor shaped (1, 1, L), ready for ``model(x)`` / ``model.features(x)``.
    x256 is the training scale; the original evaluation scripts used x512 (docs/design.md#transfer-evaluation).
    """
    import torch

    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"to_input expects a 1-D mono waveform, got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise ValueError("waveform holds non-finite samples (NaN or Inf)")
    wave = tile(wave, int(np.ceil(min_seconds * sample_rate)))
    return torch.from_numpy(wave * np.float32(scale)).view(1, 1, -1)
