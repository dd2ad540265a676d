"""Video in: find the videos, decode their audio and the frame at the middle of every window, cut clips.

The decoding half of ``prepare`` (docs/design.md#distillation, #data-path), run in its worker processes; it uses PyAV,
soxr and numpy only (never torch), which is what lets ``prepare`` fork its workers safely.

Timeline: 0 is the start of the earliest stream used; an audio track that starts later is preceded by
silence, one that ends early is followed by it (codec priming is already dropped by FFmpeg: AAC in MP4 and
Opus pre-skip decode to the exact sample count). Frame w is the frame shown at (w + 0.5) * frame_every s:
the last frame whose timestamp is at or before it, so variable frame rates are handled (one rule,
:func:`pick_frames`, for the frames decoded here and for the frame indices handed to DALI,
:mod:`soundnet_fast.prepare.frames_dali`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from soundnet_fast.constants import SAMPLE_RATE

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .mpg .mpeg .ts .mts .m2ts .ogv .3gp .wmv .asf .vob".split()
)
FRAME_SHORT_SIDE = 256  # frames are kept at the teachers' Resize(256) size (teachers.py), not full resolution
SILENCE_PEAK = 10  # int16 units (~ -70 dBFS): a clip whose peak stays below is flagged silent


class VideoError(RuntimeError):
    """One video could not be used; ``kind`` is a short category for the summary."""

    def __init__(self, path: str, kind: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.kind = kind


# ------------------------------------------------------------------------------------------ inputs
def find_videos(source: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(video id, path) pairs: a folder searched recursively for video extensions (ids are paths relative to
    it), or a text file with one path per line (ids are the lines; relative paths are taken from the file's
    folder)."""
    source = os.fspath(source)
    if os.path.isdir(source):
        out = []
        for root, dirs, files in os.walk(source):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                    full = os.path.join(root, name)
                    out.append((os.path.relpath(full, source), full))
        return out
    if os.path.isfile(source):
        base = os.path.dirname(os.path.abspath(source))
        with open(source, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        return [(ln, ln if os.path.isabs(ln) else os.path.join(base, ln)) for ln in lines]
    raise FileNotFoundError(f"{source}: no such folder or list file")


# ------------------------------------------------------------------------------------------ decoding
@dataclass
class Decoded:
    """One video on a common timeline (0 = the start of its first used stream)."""

    audio: np.ndarray  # float32 mono at `sample_rate`, sample 0 at time 0
    duration: float  # seconds: the longer of the audio and the video
    frame_times: list[float] = field(default_factory=list)  # per window: the chosen frame's time
    frames: list[np.ndarray] = field(default_factory=list)  # per window: uint8 RGB (H, W, 3)
    # Filled instead of `frames` by decode(..., decode_frames=False): per window, the chosen frame's index in
    # presentation order (what DALI's decoder takes), the source frame size (width, height), the codec name.
    frame_indices: list[int] = field(default_factory=list)
    frame_size: tuple[int, int] | None = None
    video_codec: str = ""


def open_media(path: str) -> Any:
    """``av.open(path)``, with a missing, empty or unreadable file as a VideoError naming it."""
    import av

    if not os.path.exists(path):
        raise VideoError(path, "missing", "no such file")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "empty", "file is empty (0 bytes)")
    try:
        return av.open(path)
    except Exception as e:  # PyAV raises a family of FFmpeg errors; keep the reason
        raise VideoError(path, "not media", f"cannot open as a media file ({e})") from e


def decode(
    path: str,
    *,
    sample_rate: int = SAMPLE_RATE,
    frame_every: float = 5.0,
    mono: str = "first",
    need_frames: bool = True,
    decode_frames: bool = True,
) -> Decoded:
    """Decode the first audio track and, if ``need_frames``, the frame at the middle of each window.

    With ``decode_frames=False`` the video is demuxed but not decoded: the result holds the chosen frames'
    indices and times (``frame_indices``, ``frame_times``) for another decoder (DALI), and the same timeline
    and duration as a full decode, since the video stream's start and end count either way.
    """
    import av
    import soxr

    with open_media(path) as container:
        if not container.streams.audio:
            raise VideoError(path, "no audio", "holds no audio track")
        if need_frames and not container.streams.video:
            raise VideoError(path, "no video", "holds no video track")
        astream = container.streams.audio[0]
        vstream = container.streams.video[0] if need_frames else None
        streams = [s for s in (astream, vstream) if s is not None]
        origin = stream_origin(streams)
        # Video packets only (their timestamps) when another decoder (DALI) makes the frames.
        clock = _PacketTimes(origin) if vstream is not None and not decode_frames else None
        picker = _FramePicker(frame_every) if vstream is not None and decode_frames else None
        if picker is not None:
            vstream.thread_type = "AUTO"
        chunks: list[np.ndarray] = []
        resampler: Any = None
        native_rate = drop = 0
        try:
            for packet in container.demux(*streams):
                if clock is not None and vstream is not None and packet.stream_index == vstream.index:
                    clock.add(packet)
                    continue
                for frame in packet.decode():
                    if isinstance(frame, av.AudioFrame):
                        x = _mono(frame, mono)
                        if resampler is None:
                            native_rate = frame.sample_rate
                            resampler = soxr.ResampleStream(native_rate, sample_rate, 1, dtype="float32", quality="HQ")
                            first = float(frame.pts * frame.time_base) if frame.pts is not None else origin
                            shift = int(round((first - origin) * native_rate))
                            if shift > 0:  # the track starts after the timeline: silence before it
                                chunks.append(resampler.resample_chunk(np.zeros(shift, np.float32)))
                            drop = max(0, -shift)
                        elif frame.sample_rate != native_rate:
                            raise VideoError(path, "decode error", "audio sample rate changes mid-stream")
                        if drop:
                            cut = min(drop, len(x))
                            x, drop = x[cut:], drop - cut
                        chunks.append(resampler.resample_chunk(x))
                    elif picker is not None and frame.pts is not None:
                        picker.add(frame, float(frame.pts * frame.time_base) - origin)
        except VideoError:
            raise
        except Exception as e:  # FFmpeg decode errors: a corrupt file
            raise VideoError(path, "decode error", f"cannot decode ({type(e).__name__}: {e})") from e
        if resampler is None:
            raise VideoError(path, "no audio", "audio track decoded to no samples")
        chunks.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        audio = np.clip(np.concatenate(chunks), -1.0, 1.0).astype(np.float32, copy=False)
        duration = len(audio) / sample_rate
        if picker is not None:
            if picker.last is None:
                raise VideoError(path, "no video", "video track decoded to no frames")
            duration = max(duration, picker.end)
            times, frames = picker.finish(num_windows(duration, frame_every))
            return Decoded(audio, duration, times, frames)
        if clock is not None and vstream is not None:
            if not clock.times:
                raise VideoError(path, "no video", "video track holds no frames")
            duration = max(duration, clock.end)
            indices, times = clock.finish(num_windows(duration, frame_every), frame_every)
            cc = vstream.codec_context
            size = (int(cc.width), int(cc.height)) if cc.width and cc.height else None
            return Decoded(audio, duration, times, [], indices, size, str(cc.name))
        return Decoded(audio, duration)


def stream_origin(streams: Sequence[Any]) -> float:
    """Time 0 of the common timeline: the earliest start of the streams used (seconds)."""
    starts = [float(s.start_time * s.time_base) for s in streams if s.start_time is not None and s.time_base]
    return min(starts) if starts else 0.0


def num_windows(duration: float, frame_every: float) -> int:
    """Windows of a video: its duration rounded up to whole windows (at least one)."""
    return max(1, math.ceil(duration / frame_every - 1e-6))


def windows_before(t: float, decided: int, frame_every: float) -> int:
    """How many windows are decided once a frame at time ``t`` arrives (frames come in presentation order):
    ``decided`` plus every later window whose middle, (w + 0.5) * frame_every, precedes ``t`` and so shows an
    earlier frame. The one step both pickers take (:class:`_FramePicker`, :func:`pick_frames`)."""
    while (decided + 0.5) * frame_every < t:
        decided += 1
    return decided


def pick_frames(times: Sequence[float], windows: int, frame_every: float) -> list[int]:
    """For each window, the index into ``times`` (sorted: presentation order) of the frame shown at its
    middle: the last frame at or before it, the first frame when the middle precedes every frame; windows
    after the last frame repeat it."""
    picked: list[int] = []
    for i, t in enumerate(times):
        n = windows_before(t, len(picked), frame_every)
        picked += [max(i - 1, 0)] * (n - len(picked))
        if len(picked) >= windows:
            break
    picked += [len(times) - 1] * (windows - len(picked))
    return picked[:windows]


def scaled_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of a kept frame: the short side shrunk to FRAME_SHORT_SIDE, never enlarged."""
    s = FRAME_SHORT_SIDE / min(width, height)
    if s < 1:
        return max(1, round(width * s)), max(1, round(height * s))
    return width, height


class _PacketTimes:
    """A video's frame times from its packets alone (no decoding), on the common timeline.

    Mirrors the frame index DALI's video decoder builds: one frame per packet of the stream, at its pts (its
    dts when the pts is missing), sorted into presentation order; frame i of DALI is times[i] here.
    """

    def __init__(self, origin: float) -> None:
        self.origin = origin
        self.times: list[float] = []
        self.end = 0.0

    def add(self, packet: Any) -> None:
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None or packet.time_base is None:  # the demuxer's empty flush packet
            return
        t = float(ts * packet.time_base) - self.origin
        self.times.append(t)
        dur = float(packet.duration * packet.time_base) if packet.duration else 0.0
        self.end = max(self.end, t + dur)

    def finish(self, windows: int, frame_every: float) -> tuple[list[int], list[float]]:
        order = sorted(self.times)
        indices = pick_frames(order, windows, frame_every)
        return indices, [order[i] for i in indices]


def _mono(frame: Any, mono: str) -> np.ndarray:
    arr = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: (1, n * channels)
        arr = arr.reshape(-1, len(frame.layout.channels)).T
    if arr.dtype == np.int16:
        arr = arr.astype(np.float32) / 32768.0
    elif arr.dtype == np.int32:
        arr = (arr / 2147483648.0).astype(np.float32)
    elif arr.dtype == np.uint8:
        arr = (arr.astype(np.float32) - 128.0) / 128.0
    arr = arr.astype(np.float32, copy=False)
    # The original takes the first channel (docs/design.md#input); averaging is the documented option.
    return np.ascontiguousarray(arr[0] if mono == "first" else arr.mean(axis=0))


class _FramePicker:
    """Keeps, for each window w, the frame shown at (w + 0.5) * frame_every: the last frame whose time is
    at or before it (the first frame when the window's middle precedes every frame)."""

    def __init__(self, frame_every: float) -> None:
        self.every = frame_every
        self.last: Any = None
        self.last_time = 0.0
        self.end = 0.0
        self.picked: list[tuple[float, np.ndarray]] = []
        self._converted: tuple[float, np.ndarray] | None = None

    def _rgb(self, frame: Any, t: float) -> tuple[float, np.ndarray]:
        if self._converted is None or self._converted[0] != t:
            w, h = scaled_size(frame.width, frame.height)  # shrunk in FFmpeg (area filter: antialiased)
            self._converted = (t, frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray())
        return self._converted

    def add(self, frame: Any, t: float) -> None:
        for _ in range(windows_before(t, len(self.picked), self.every) - len(self.picked)):
            self.picked.append(self._rgb(self.last, self.last_time) if self.last is not None else self._rgb(frame, t))
        self.last, self.last_time = frame, t
        dur = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
        self.end = max(self.end, t + dur)

    def finish(self, windows: int) -> tuple[list[float], list[np.ndarray]]:
        while len(self.picked) < windows:
            self.picked.append(self._rgb(self.last, self.last_time))
        picked = self.picked[:windows]
        return [t for t, _ in picked], [f for _, f in picked]


# ------------------------------------------------------------------------------------------ clips
@dataclass
class Clip:
    audio: np.ndarray  # int16 (clip_samples,)
    windows: list[int]  # teacher row t = window windows[t]
    start: float
    frame_times: list[float]
    silent: bool


def make_clips(dec: Decoded, *, clip_seconds: float, frame_every: float, sample_rate: int = SAMPLE_RATE) -> list[Clip]:
    """Cut clips whose teacher step t is window ``steps * c + t`` (docs/design.md#distillation).

    The audio is zero-padded to a whole number of windows. A video of W >= steps windows gives W // steps
    clips (the last one padded by less than a window; windows after the last whole clip are dropped); a
    shorter one is tiled circularly to one clip, as the original did, so its step t is window t mod W.
    """
    steps = int(round(clip_seconds / frame_every))
    win = int(round(frame_every * sample_rate))
    windows = num_windows(dec.duration, frame_every)
    # Zero-pad (or cut) to a whole number of windows: audio shorter than the video becomes silence.
    audio = np.zeros(windows * win, np.float32)
    n = min(len(dec.audio), len(audio))
    audio[:n] = dec.audio[:n]
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)  # the loader divides by 32768
    times = dec.frame_times or [frame_every * (w + 0.5) for w in range(windows)]
    if windows < steps:  # a short video: tile the padded audio to one clip, as the original did
        rows = [t % windows for t in range(steps)]
        clips = [(np.resize(pcm, steps * win), rows, 0.0)]
    else:
        clips = [
            (pcm[c * steps * win : (c + 1) * steps * win], list(range(c * steps, (c + 1) * steps)), c * clip_seconds)
            for c in range(windows // steps)
        ]
    return [
        Clip(a, rows, start, [times[w] for w in rows], bool(np.abs(a.astype(np.int32)).max() < SILENCE_PEAK))
        for a, rows, start in clips
    ]
