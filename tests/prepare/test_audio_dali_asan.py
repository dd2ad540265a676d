"""The DALI audio plugin under AddressSanitizer: truncated, bit-flipped and random inputs, in memory and read from
a file (``from_path``), never read or write outside their buffers (docs/design.md#the-native-dali-audio-operator).

A second copy of the plugin is built with ``-fsanitize=address`` (``build_plugin(asan=True)``, cached by source
hash like the plain one) and loaded in a subprocess whose ``LD_PRELOAD`` puts GCC's libasan first (a sanitized
library needs the runtime loaded before anything else). ASan stops that process at the first invalid access,
so the test passes only if every input comes back with a status and the process exits cleanly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from tests.helpers.sounds import write_audio, write_video_only
from tests.prepare.dali_audio_support import on_ci, parity_signal, require_plugin

ROOT = Path(__file__).resolve().parents[2]


def _libasan() -> str | None:
    try:
        out = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = out.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def test_truncated_and_random_inputs_under_address_sanitizer(tmp_path: Path) -> None:
    import pytest

    from tests.helpers.media import write_video

    lib = require_plugin(asan=True)
    libasan = _libasan()
    if libasan is None:
        message = "gcc's libasan.so was not found (gcc -print-file-name=libasan.so)"
        if on_ci():
            pytest.fail(message)
        pytest.skip(message)
    sources = [
        write_audio(str(tmp_path / "a.mp3"), parity_signal(1.0, 44100, 1), 44100),
        write_audio(str(tmp_path / "a.m4a"), parity_signal(1.0, 48000, 2), 48000),
        write_audio(str(tmp_path / "a.flac"), parity_signal(1.0, 44100, 2), 44100),
        write_audio(str(tmp_path / "a.ogg"), parity_signal(1.0, 44100, 2), 44100),
        write_audio(str(tmp_path / "a.wav"), parity_signal(1.0, 44100, 1), 44100),
        str(write_video(tmp_path / "v.mp4", 2, fps=5)),
        str(write_video(tmp_path / "v.webm", 2, fps=5, sample_rate=48000)),
        str(write_video(tmp_path / "v.mkv", 2, fps=5)),
        write_video_only(str(tmp_path / "silent.mp4")),
    ]
    # Every prefix length class (header only, mid-stream, missing the last bytes), bit flips, pure noise.
    rng = np.random.default_rng(0)
    inputs: list[np.ndarray] = [np.zeros(0, np.uint8), np.frombuffer(b"RIFF", np.uint8)]
    for src in sources:
        data = np.fromfile(src, np.uint8)
        for keep in (1, 8, 64, 200, 1000, *(int(len(data) * f) for f in np.linspace(0.02, 0.995, 12))):
            inputs.append(data[:keep].copy())
        for _ in range(4):
            flipped = data.copy()
            at = rng.integers(0, len(data), max(1, len(data) // 300))
            flipped[at] ^= rng.integers(1, 256, len(at)).astype(np.uint8)
            inputs.append(flipped)
    inputs += [rng.integers(0, 256, int(n), dtype=np.uint8) for n in rng.integers(1, 1 << 15, 16)]
    np.savez(tmp_path / "inputs.npz", *inputs)
    code = f"""
    import numpy as np
    from soundnet_fast.prepare.audio_dali import DaliAudio
    stored = np.load({str(tmp_path / "inputs.npz")!r})
    inputs = [stored[f"arr_{{i}}"] for i in range(len(stored.files))]
    dec = DaliAudio(batch_size=8, num_threads=2)
    statuses = []
    for i in range(0, len(inputs), 8):
        statuses += [r.status for r in dec.decode(inputs[i : i + 8])]
    by_path = []  # the from_path mode (files over the byte cap) on every third input, written to a file
    for i in range(0, len(inputs), 3):
        inputs[i].tofile({str(tmp_path / "one.bin")!r})
        by_path.append(dec.decode_path({str(tmp_path / "one.bin")!r}).status)
    maps = open("/proc/self/maps").read()
    print(len(statuses), len(by_path), sorted(set(statuses)), "libasan" in maps, {str(lib)!r} in maps)
    """
    env = {**os.environ, "LD_PRELOAD": libasan, "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1"}
    env["SOUNDNET_FAST_DALI_PLUGIN"] = str(lib)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert "AddressSanitizer" not in proc.stderr, proc.stderr[-6000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, paths, rest = proc.stdout.split(" ", 2)
    assert int(count) == len(inputs) and int(paths) == len(range(0, len(inputs), 3)), proc.stdout
    assert rest.strip().endswith("True True"), proc.stdout  # the runtime and the sanitized plugin were loaded
    assert "[0, 1, 2, 3]" in rest, proc.stdout  # ok, no audio, undecodable and empty all occurred
