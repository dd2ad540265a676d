"""Audio test files written with PyAV (it bundles FFmpeg: no system libraries needed)."""

from __future__ import annotations

import numpy as np

# container extension -> (codec, sample format). FFmpeg's native Vorbis encoder is experimental and
# stereo only, so OGG fixtures are stereo Vorbis or Opus (docs/design.md#data-path).
CODECS = {
    ".wav": ("pcm_s16le", "s16"),
    ".flac": ("flac", "s16"),
    ".ogg": ("vorbis", "fltp"),
    ".opus": ("libopus", "flt"),
    ".mp3": ("libmp3lame", "fltp"),
    ".m4a": ("aac", "fltp"),
    ".mp4": ("aac", "fltp"),
    ".aac": ("aac", "fltp"),  # raw ADTS: rate and channels only in the frames
}


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_audio(path: str, wave: np.ndarray, rate: int, channels: int = 1, codec: str | None = None) -> str:
    """Write ``wave`` (mono float32 in [-1, 1], or (channels, n)) to ``path``; the codec follows the extension."""
    import av

    ext = path[path.rfind(".") :]
    name, fmt = CODECS[ext]
    if codec is not None:
        name, fmt = codec, {"libopus": "flt", "vorbis": "fltp"}.get(codec, fmt)
    wave = np.asarray(wave, dtype=np.float32)
    planes = wave if wave.ndim == 2 else np.stack([wave] * channels)
    layout = "mono" if planes.shape[0] == 1 else "stereo"
    with av.open(path, "w") as c:
        s = c.add_stream(name, rate=rate, layout=layout)
        if name == "vorbis":
            s.options = {"strict": "experimental"}
        n = planes.shape[1]
        step = 960 if name == "libopus" else 1024
        for i in range(0, n, step):
            chunk = planes[:, i : i + step]
            if fmt == "s16":
                data = (np.clip(chunk, -1, 1) * 32767).astype(np.int16).T.reshape(1, -1)
            elif fmt.endswith("p"):
                data = np.ascontiguousarray(chunk)
            else:
                data = np.ascontiguousarray(chunk.T.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
            frame.sample_rate = rate
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def write_video_only(path: str, seconds: float = 1.0, fps: int = 10) -> str:
    """An MP4 with an H.264 video track and no audio track."""
    import av

    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.full((48, 64, 3), (i * 20) % 255, dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def write_video_with_audio(path: str, wave: np.ndarray, rate: int, seconds: float, fps: int = 10) -> str:
    """An MP4 (H.264 + AAC) holding ``wave`` as a stereo audio track."""
    import av

    with av.open(path, "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("aac", rate=rate, layout="stereo")
        for i in range(int(seconds * fps)):
            img = np.full((48, 64, 3), (i * 20) % 255, dtype=np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for i in range(0, len(wave), 1024):
            chunk = np.ascontiguousarray(np.stack([wave[i : i + 1024]] * 2))
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, i
            for p in a.encode(frame):
                c.mux(p)
        for s in (v, a):
            for p in s.encode(None):
                c.mux(p)
    return path
