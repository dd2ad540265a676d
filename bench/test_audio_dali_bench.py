"""Audio decode: the native DALI plugin against PyAV workers and one ffmpeg process per file
(docs/design.md#the-native-dali-audio-operator, #performance-ceiling).

Each contender turns the same videos (stereo AAC in MP4 with a small H.264 track, half 44.1 kHz, half 48 kHz)
into 22,050 Hz mono: ``prepare --audio dali`` and ``prepare --audio pyav`` (2 workers) write audio-only shards,
the baseline runs ``ffmpeg`` once per file (first channel, 22,050 Hz int16, saved as .npy), as
bench/test_data_bench.py does. Under pytest each is timed (one call each in the smoke run) and the DALI run's
shards are checked against PyAV's (correlation, recorded as ``parity_max_rel_err`` = 1 - the lowest).

``python -m bench.test_audio_dali_bench`` runs each contender in a fresh process (timed after a warm-up on one
short video) and prints videos/s, seconds of audio per second, the ratio to the baseline and the peak resident
memory of the whole process tree (RSS, and PSS, which counts a page shared by forked workers once; sampled
from /proc every 10 ms), then the same on one long video
(``--long-minutes``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from soundnet_fast.constants import SAMPLE_RATE

VARIANTS = ("dali plugin", "pyav workers w2", "ffmpeg per file")
ROOT = Path(__file__).resolve().parents[1]


def _ffmpeg() -> str | None:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return shutil.which("ffmpeg")


def make_videos(folder: Path, count: int, seconds: float, fps: float = 2) -> list[Path]:
    """``count`` MP4s of ``seconds``: stereo AAC (noise + a 440 Hz tone), 44.1 and 48 kHz in turn, 64x48 H.264."""
    from tests.helpers.media import write_video

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        rate = 44100 if i % 2 == 0 else 48000
        noise = (rng.standard_normal(rate * 7) * 0.1).astype(np.float32)  # 7 s of noise, repeated

        def audio(t: np.ndarray, noise: np.ndarray = noise, rate: int = rate) -> np.ndarray:
            n = noise[(t * rate).astype(np.int64) % len(noise)]
            return np.stack([n + 0.2 * np.sin(2 * np.pi * 440 * t), n])

        paths.append(write_video(folder / f"v{i:02d}.mp4", seconds, fps=fps, sample_rate=rate, channels=2,
                                 audio_fn=audio))  # fmt: skip
    return paths


def run_variant(variant: str, folder: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """One contender over every video of ``folder``, writing into ``out`` (a new folder)."""
    from soundnet_fast.prepare import run as prepare

    if variant in ("dali plugin", "pyav workers w2"):
        audio = "dali" if variant == "dali plugin" else "pyav"
        s = prepare.prepare(folder, out, {}, workers=2, audio=audio, clips_per_shard=64)
        assert s.failed == 0 and s.audio_decoder == audio, s.line()
        return
    exe = _ffmpeg()
    assert exe is not None, "no ffmpeg binary"
    os.makedirs(out, exist_ok=True)
    for f in sorted(Path(folder).glob("*.mp4")):
        pcm = subprocess.run(
            [exe, "-nostdin", "-v", "error", "-i", str(f), "-vn", "-af", "pan=mono|c0=c0", "-ar", str(SAMPLE_RATE),
             "-f", "s16le", "-"],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        np.save(os.path.join(out, f.stem + ".npy"), np.frombuffer(pcm, dtype=np.int16))


def _need(variant: str) -> None:
    if variant == "dali plugin":
        from tests.prepare.dali_audio_support import require_plugin

        require_plugin()  # fails under CI, skips elsewhere, when the plugin cannot be built
    elif variant == "ffmpeg per file" and _ffmpeg() is None:
        pytest.skip("no ffmpeg binary: pip install imageio-ffmpeg (or put ffmpeg on PATH)")


# ------------------------------------------------------------------------------------------ pytest
@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory, sizes) -> tuple[Path, int, float]:
    count, seconds = (2, 5.0) if sizes.smoke else (12, 30.0)
    d = tmp_path_factory.mktemp("bench_audio_dali")
    make_videos(d, count, seconds)
    return d, count, seconds


def _parity(folder: Path) -> float:
    """1 - the lowest correlation between the DALI and PyAV runs' audio rows (same videos, same clips)."""
    import json

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS[:2]:
            out = Path(tmp) / variant.split()[0]
            run_variant(variant, folder, out)
            with open(out / "index.jsonl", encoding="utf-8") as f:
                index = [json.loads(line) for line in f]
            clips = {r["shard"]: np.load(out / f"{r['shard']}.audio.npy") for r in index}
            rows[variant] = {(r["video"], r["start"]): clips[r["shard"]][r["row"]].astype(np.float64) for r in index}
    a, b = rows[VARIANTS[0]], rows[VARIANTS[1]]
    assert sorted(a) == sorted(b)
    return 1.0 - min(float(np.corrcoef(a[k], b[k])[0, 1]) for k in a)


@pytest.mark.parametrize("variant", VARIANTS)
def test_audio_decode_throughput(timed, videos, variant: str) -> None:
    _need(variant)
    folder, count, seconds = videos
    parity = _parity(folder) if variant == "dali plugin" else None
    outs: list[str] = []

    def run() -> None:
        out = tempfile.mkdtemp(prefix="bench-audio-dali-")  # prepare skips done videos: every call starts empty
        outs.append(out)
        shutil.rmtree(out)
        run_variant(variant, folder, out)

    try:
        timed(
            run,
            group="audio decode: DALI plugin vs PyAV vs ffmpeg",
            variant=variant,
            baseline=variant == "ffmpeg per file",
            items=count,
            audio_seconds=count * seconds,
            unit="videos/s",
            parity_err=parity,
            tol=1e-3 if parity is not None else None,
            note="stereo AAC in MP4 -> 22,050 Hz mono; 2 threads / workers",
        )
    finally:
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)
    assert parity is None or parity <= 1e-3


# ------------------------------------------------------------------------------------------ standalone
def _tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of ``pid`` and all its descendants ((0, 0) once gone). RSS counts a page shared by
    forked workers once per process; PSS divides it among them, so it is the tree's own share of memory."""
    rss = pss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status", encoding="utf-8") as f:
                rss += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) * 1024
            with open(f"/proc/{p}/smaps_rollup", encoding="utf-8") as f:
                pss += next(int(ln.split()[1]) for ln in f if ln.startswith("Pss:")) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", encoding="utf-8") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return rss, pss


def measure(variant: str, folder: Path, warm: Path) -> tuple[float, int, int]:
    """Wall seconds of one contender over ``folder`` in a fresh Python process, after a warm-up run over ``warm``
    (imports, DALI's start, the plugin's load: once per process in real use), and the peak RSS of that process
    and its children over the whole run, warm-up included, and the peak of their PSS (see :func:`_tree_memory`)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-audio-dali-"))
    code = (
        "import time\nfrom bench.test_audio_dali_bench import run_variant\n"
        f"run_variant({variant!r}, {str(warm)!r}, {str(tmp / 'warm')!r})\n"
        f"t0 = time.perf_counter(); run_variant({variant!r}, {str(folder)!r}, {str(tmp / 'out')!r})\n"
        "print(time.perf_counter() - t0)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    peak = [0, 0]

    def sample() -> None:
        while proc.poll() is None:
            rss, pss = _tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    thread.join()
    shutil.rmtree(tmp, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed (exit {proc.returncode})")
    return float(out.strip().splitlines()[-1]), peak[0], peak[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--long-minutes", type=float, default=20.0, help="one long video for peak memory (0: none)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-audio-dali-videos-") as tmp:
        folder, warm = Path(tmp) / "videos", Path(tmp) / "warm"
        make_videos(folder, args.videos, args.seconds)
        make_videos(warm, 1, 2.0)
        audio = args.videos * args.seconds
        print(f"{args.videos} videos x {args.seconds:.0f} s, {os.cpu_count()} CPUs\n")
        print(
            "| contender | wall s | videos/s | audio s per s | vs ffmpeg per file | peak RSS (tree) | peak PSS (tree) |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        results = {v: measure(v, folder, warm) for v in VARIANTS}
        base = results["ffmpeg per file"][0]
        for v, (secs, rss, pss) in results.items():
            print(f"| {v} | {secs:.2f} | {args.videos / secs:.2f} | {audio / secs:.0f} | {base / secs:.2f}x "
                  f"| {rss / 2**20:.0f} MiB | {pss / 2**20:.0f} MiB |")  # fmt: skip
        if args.long_minutes > 0:
            long = Path(tmp) / "long"
            make_videos(long, 1, args.long_minutes * 60, fps=0.2)
            print(f"\none {args.long_minutes:.0f}-minute video (stereo AAC 44.1 kHz):\n")
            print("| contender | wall s | peak RSS (tree) | peak PSS (tree) |")
            print("| --- | ---: | ---: | ---: |")
            for v in VARIANTS:
                secs, rss, pss = measure(v, long, warm)
                print(f"| {v} | {secs:.2f} | {rss / 2**20:.0f} MiB | {pss / 2**20:.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
