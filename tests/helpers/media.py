"""Test media written with PyAV (which bundles FFmpeg): small videos whose content the tests control.

Other test files may import this. The API is one function::

    write_video(path, seconds, fps=10, size=(64, 48), sample_rate=44100, channels=1,
                audio_fn=None, frame_fn=None, ...)  -> path

``audio_fn(t)`` gets sample times in seconds (float64 array) and returns samples in [-1, 1], shaped (n,)
(copied to every channel) or (channels, n); default: a 440 Hz tone at 0.3. ``frame_fn(t)`` gets a frame's
time in seconds and returns uint8 RGB (height, width, 3); default: a grey ramp over time. The container
follows the suffix: ``.mp4`` H.264 + AAC, ``.webm`` VP9 + Opus (48 kHz only: Opus has no 44.1 kHz mode),
``.mkv`` H.264 + FLAC, ``.mov`` H.264 + AAC, ``.ogg`` audio-only Opus; codecs can be overridden.
``frame_times`` (seconds) gives a variable frame rate; ``audio_seconds`` a track shorter (or longer) than
the video; ``audio_offset`` starts the audio track that many seconds after the video (the stream's start offset);
``video=False`` / ``audio=False`` leave a stream out; ``video_options`` overrides the encoder's options (e.g.
``{"preset": "medium", "bf": "2"}`` for H.264 with B-frames: packets stored out of presentation order).

Also: ``tone(freq)``, a sine helper, and the broken files ``write_garbage`` / ``write_truncated``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

AudioFn = Callable[[np.ndarray], np.ndarray]
FrameFn = Callable[[float], np.ndarray]

# suffix -> (video codec, audio codec)
DEFAULT_CODECS: dict[str, tuple[str | None, str | None]] = {
    ".mp4": ("libx264", "aac"),
    ".mov": ("libx264", "aac"),
    ".mkv": ("libx264", "flac"),
    ".webm": ("libvpx-vp9", "libopus"),
    ".ogg": (None, "libopus"),
}


def tone(freq: float, amplitude: float = 0.3) -> AudioFn:
    return lambda t: amplitude * np.sin(2 * np.pi * freq * t)


def grey_ramp(size: tuple[int, int]) -> FrameFn:
    w, h = size
    return lambda t: np.full((h, w, 3), int(t * 20) % 256, dtype=np.uint8)


def write_video(
    path: str | os.PathLike[str],
    seconds: float,
    fps: float = 10,
    size: tuple[int, int] = (64, 48),
    sample_rate: int = 44100,
    channels: int = 1,
    audio_fn: AudioFn | None = None,
    frame_fn: FrameFn | None = None,
    *,
    video_codec: str | None = None,
    audio_codec: str | None = None,
    frame_times: Sequence[float] | None = None,
    audio_seconds: float | None = None,
    video: bool = True,
    audio: bool = True,
    gop: int | None = None,
    audio_offset: float = 0.0,
    video_options: dict[str, str] | None = None,
) -> Path:
    """Write a test video (module docstring); ``size`` is (width, height), even numbers for H.264."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    vcodec, acodec = DEFAULT_CODECS.get(suffix, ("libx264", "aac"))
    vcodec, acodec = video_codec or vcodec, audio_codec or acodec
    audio_fn = audio_fn or tone(440.0)
    frame_fn = frame_fn or grey_ramp(size)
    times = list(frame_times) if frame_times is not None else [i / fps for i in range(int(round(seconds * fps)))]
    with av.open(str(path), "w") as out:
        vs = as_ = None
        if video and vcodec is not None:
            vs = out.add_stream(vcodec, rate=Fraction(fps).limit_denominator(1000))
            vs.width, vs.height = size
            vs.pix_fmt = "yuv420p"
            # A millisecond time base lets frame_times place frames anywhere (variable frame rate).
            vs.codec_context.time_base = Fraction(1, 1000)
            vs.time_base = Fraction(1, 1000)
            if gop is not None:
                vs.codec_context.gop_size = gop
            if vcodec == "libx264":
                vs.options = {"preset": "ultrafast"}
            elif vcodec.startswith("libvpx"):
                vs.options = {"deadline": "realtime", "cpu-used": "8"}
            if video_options:
                vs.options = {**vs.options, **video_options}
        if audio and acodec is not None:
            as_ = out.add_stream(acodec, rate=sample_rate)
            as_.layout = "mono" if channels == 1 else "stereo"
        if as_ is not None:
            _write_audio(
                out,
                as_,
                seconds if audio_seconds is None else audio_seconds,
                sample_rate,
                channels,
                audio_fn,
                (vs, times, frame_fn),
                audio_offset,
            )
        elif vs is not None:
            for t in times:
                _encode_frame(out, vs, t, frame_fn)
        if vs is not None:
            for packet in vs.encode():
                out.mux(packet)
    return path


def _encode_frame(out, vs, t: float, frame_fn: FrameFn) -> None:
    import av

    img = np.ascontiguousarray(frame_fn(t), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(img, format="rgb24")
    frame.pts = int(round(t * 1000))
    frame.time_base = Fraction(1, 1000)
    for packet in vs.encode(frame):
        out.mux(packet)


def _write_audio(out, as_, seconds, sample_rate, channels, audio_fn, interleave_with, offset) -> None:

    vs, times, frame_fn = interleave_with
    n_total = int(round(seconds * sample_rate))
    chunk = 1024 * 4
    next_frame = 0
    fmt = as_.codec_context.codec.audio_formats[0].name if as_.codec_context.codec.audio_formats else "fltp"
    for start in range(0, n_total, chunk):
        n = min(chunk, n_total - start)
        t = (start + np.arange(n)) / sample_rate
        x = np.asarray(audio_fn(t), dtype=np.float64)
        x = np.broadcast_to(x, (channels, n)) if x.ndim == 1 else x
        x = np.clip(x, -1.0, 1.0)
        frame = _audio_frame(x, fmt, channels)
        frame.sample_rate = sample_rate
        frame.pts = start + int(round(offset * sample_rate))
        frame.time_base = Fraction(1, sample_rate)
        for packet in as_.encode(frame):
            out.mux(packet)
        # Interleave video up to this audio time, as real muxers see it.
        while vs is not None and next_frame < len(times) and times[next_frame] <= offset + (start + n) / sample_rate:
            _encode_frame(out, vs, times[next_frame], frame_fn)
            next_frame += 1
    for packet in as_.encode(None):
        out.mux(packet)
    while vs is not None and next_frame < len(times):
        _encode_frame(out, vs, times[next_frame], frame_fn)
        next_frame += 1


def _audio_frame(x: np.ndarray, fmt: str, channels: int):
    import av

    layout = "mono" if channels == 1 else "stereo"
    if fmt in ("s16", "s16p"):
        data = np.round(x * 32767).astype(np.int16)
    elif fmt in ("s32", "s32p"):
        data = np.round(x * 2147483647).astype(np.int32)
    else:
        data = x.astype(np.float32)
    if fmt.endswith("p"):
        return av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
    return av.AudioFrame.from_ndarray(np.ascontiguousarray(data.T.reshape(1, -1)), format=fmt, layout=layout)


def write_garbage(path: str | os.PathLike[str], nbytes: int = 4096, seed: int = 0) -> Path:
    """Random bytes under a video name: not a media file."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    return path


def write_truncated(src: str | os.PathLike[str], path: str | os.PathLike[str], keep: float = 0.3) -> Path:
    """The first ``keep`` fraction of ``src``'s bytes: a corrupt (cut-off) file."""
    data = Path(src).read_bytes()
    path = Path(path)
    path.write_bytes(data[: int(len(data) * keep)])
    return path
