"""Audio files that decode "fine" but cannot be used: a float WAV holding NaN, and digital silence.

A 32-bit IEEE-float WAV (format tag 3, WAVE_FORMAT_IEEE_FLOAT; Microsoft's RIFF/WAVE specification) can hold
NaN and Inf; FFmpeg's pcm_f32le decoder passes them on, so ``soundnet_fast.audio.load`` returns them.
"""

from __future__ import annotations

import os
import struct

import numpy as np

WAVE_FORMAT_IEEE_FLOAT = 3


def write_float_wav(path: str | os.PathLike[str], samples: np.ndarray, rate: int) -> str:
    """Mono float32 WAV of ``samples`` (n,), written byte for byte (the ``wave`` module writes PCM only)."""
    data = np.asarray(samples, dtype="<f4").tobytes()
    # fmt chunk: format tag, channels, sample rate, byte rate, block align, bits per sample
    fmt = struct.pack("<HHIIHH", WAVE_FORMAT_IEEE_FLOAT, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)
    return os.fspath(path)


def nan_wav(path: str | os.PathLike[str], seconds: float, rate: int, at: float = 0.5) -> str:
    """A quiet tone with one NaN sample at ``at`` seconds."""
    t = np.arange(int(round(seconds * rate))) / rate
    wave = (0.3 * np.sin(2 * np.pi * 330.0 * t)).astype(np.float32)
    wave[int(at * rate)] = np.nan
    return write_float_wav(path, wave, rate)
