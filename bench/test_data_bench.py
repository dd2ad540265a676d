"""Data path throughput (docs/design.md#performance-ceiling, #data-path).

prepare without teachers (videos/s and audio hours per wall hour) from 44.1 and 48 kHz MP4 (H.264 + AAC)
sources, side by side with the usual per-file baseline: one ``ffmpeg`` subprocess per video decoding its
first audio channel to 22,050 Hz int16 and saving it as .npy. Also prepare with frames decoded (a uniform
teacher: frame decoding and selection, no network), and the loader's clips/s of 20 s clips per backend.

The ffmpeg binary comes from the ``imageio-ffmpeg`` package (or PATH); without one the baseline skips.
Throughput is ``items / median`` in the report (items: videos per call for prepare, clips per epoch for the
loader); ``extra_info`` adds audio hours per wall hour. Loader figures are with the shards in the page cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from bench.conftest import Sizes, write_random_shards
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.data.loader import ShardLoader
from soundnet_fast.data.shards import read_manifest
from soundnet_fast.prepare import run as prepare
from tests.helpers.media import write_video


def _ffmpeg() -> str | None:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return shutil.which("ffmpeg")


@pytest.fixture(scope="module")
def source_videos(tmp_path_factory: pytest.TempPathFactory, sizes: Sizes) -> tuple[Path, int, float]:
    """Half at 44.1 kHz, half at 48 kHz, stereo AAC in MP4 with a small H.264 track: (folder, count, seconds)."""
    d = tmp_path_factory.mktemp("bench_videos")
    count, seconds = (2, 5.0) if sizes.smoke else (12, 30.0)
    rng = np.random.default_rng(0)
    for i in range(count):
        rate = 44100 if i % 2 == 0 else 48000
        noise = rng.standard_normal(int(seconds * rate) + rate).astype(np.float32) * 0.1

        def audio(t: np.ndarray, noise: np.ndarray = noise, rate: int = rate) -> np.ndarray:
            idx = np.minimum((t * rate).astype(np.int64), len(noise) - 1)
            return np.stack([noise[idx] + 0.2 * np.sin(2 * np.pi * 440 * t), noise[idx]])

        write_video(d / f"v{i:02d}.mp4", seconds, fps=5, size=(64, 48), sample_rate=rate, channels=2, audio_fn=audio)
    return d, count, seconds


def _fresh_dir() -> str:
    return tempfile.mkdtemp(prefix="bench-prepare-")


@pytest.mark.parametrize("variant", ["audio w1", "audio w2", "audio+frames w1"])
def test_prepare_throughput(timed, sizes: Sizes, source_videos, variant: str) -> None:
    folder, count, seconds = source_videos
    workers = 2 if variant.endswith("w2") else 1
    teachers = {"objects": "uniform:1"} if "frames" in variant else {}
    outs: list[str] = []

    def run() -> None:
        out = _fresh_dir()  # prepare skips videos already done: every call starts empty
        outs.append(out)
        # PyAV in the workers, as the variants say (the DALI plugin: bench/test_audio_dali_bench.py)
        s = prepare.prepare(folder, out, teachers, workers=workers, clips_per_shard=64, audio="pyav")
        assert s.succeeded == count and s.failed == 0

    try:
        timed(
            run,
            group="prepare (no teacher network)",
            variant=variant,
            items=count,
            audio_seconds=count * seconds,
            unit="videos/s",
            note="videos per call; 44.1/48 kHz stereo AAC in MP4",
        )
    finally:
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)


def test_prepare_ffmpeg_subprocess_baseline(timed, sizes: Sizes, source_videos) -> None:
    exe = _ffmpeg()
    if exe is None:
        pytest.skip("no ffmpeg binary: pip install imageio-ffmpeg (or put ffmpeg on PATH)")
    folder, count, seconds = source_videos
    files = sorted(folder.glob("*.mp4"))
    outs: list[str] = []

    def run() -> None:
        out = _fresh_dir()
        outs.append(out)
        for f in files:
            # The first channel at 22,050 Hz, as prepare keeps it (docs/design.md#input).
            pcm = subprocess.run(
                [
                    exe,
                    "-nostdin",
                    "-v",
                    "error",
                    "-i",
                    str(f),
                    "-vn",
                    "-af",
                    "pan=mono|c0=c0",
                    "-ar",
                    str(SAMPLE_RATE),
                    "-f",
                    "s16le",
                    "-",
                ],
                check=True,
                capture_output=True,
            ).stdout
            np.save(os.path.join(out, f.stem + ".npy"), np.frombuffer(pcm, dtype=np.int16))

    try:
        timed(
            run,
            group="prepare (no teacher network)",
            variant="ffmpeg subprocess per file",
            baseline=True,
            items=count,
            audio_seconds=count * seconds,
            unit="videos/s",
            note="baseline: decode + resample + save, one process per file",
        )
    finally:
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def loader_shards(tmp_path_factory: pytest.TempPathFactory, sizes: Sizes) -> tuple[Path, int, int]:
    """Random int16 clips of 20 s (1 s in smoke mode) with two teachers of the released sizes."""
    out = tmp_path_factory.mktemp("bench_shards")
    seconds, clips, batch = (1.0, 8, 4) if sizes.smoke else (20.0, 96, 16)
    write_random_shards(out, clips, seconds, amplitude=2000, clips_per_shard=32)
    return out, clips, batch


@pytest.mark.parametrize("backend", ["numpy", "numpy+prefetch", "dali"])
def test_loader_throughput(timed, sizes: Sizes, loader_shards, backend: str) -> None:
    prefetch = 2 if backend.endswith("+prefetch") else 0
    if backend == "dali":
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'soundnet-fast[dali]')")
    folder, clips, batch = loader_shards
    loader = ShardLoader(folder, batch, backend=backend.split("+")[0], seed=0, num_threads=2, prefetch=prefetch)

    def epoch() -> None:
        n = 0
        for audio, _ in loader:
            n += audio.shape[0]
        assert n == len(loader) * batch

    timed(
        epoch,
        group="loader clips of 20 s",
        variant=backend,
        baseline=backend == "numpy",
        items=len(loader) * batch,
        clip_seconds=float(read_manifest(folder)["clip_seconds"]),
    )
