"""`soundnet-fast prepare`: a folder of ordinary videos -> training shards (DESIGN.md sections 2, 6, 7).

For each video (in worker processes): decode the audio track with PyAV to 22,050 Hz mono (stream start
offsets placed on the container's timeline, codec priming already dropped by FFmpeg, audio shorter than the
video zero-padded) and pick the frame shown at the middle of every 5 s window by timestamp (so variable
frame rates are handled). In the main process: run every teacher on those frames, cut 20 s clips whose
teacher steps line up with the head steps, and append them to the shards (:class:`~soundnet_fast.data.
ShardWriter`). Clip c of a long video covers [20c, 20c + 20) s and its teacher row t is the frame at
20c + 5t + 2.5 s (DESIGN.md section 2); a video shorter than a clip is zero-padded to a multiple of 5 s and
tiled to 20 s, as the original did, so its row t is window t mod W. A long video's last clip is zero-padded
by less than 5 s; windows left over after the last whole clip are dropped.

Bad input loses nothing: a file that fails is recorded in ``failures.jsonl`` with its reason and the run
goes on; a rerun skips every video already in the index or in ``failures.jsonl`` (``--retry-failed``
retries the latter).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from soundnet_fast import data

SAMPLE_RATE = 22050  # DESIGN.md section 1
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


def decode(
    path: str,
    *,
    sample_rate: int = SAMPLE_RATE,
    frame_every: float = 5.0,
    mono: str = "first",
    need_frames: bool = True,
) -> Decoded:
    """Decode the first audio track and, if ``need_frames``, the frame at the middle of each window."""
    import av
    import soxr

    if not os.path.exists(path):
        raise VideoError(path, "missing", "no such file")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "empty", "file is empty (0 bytes)")
    try:
        container = av.open(path)
    except Exception as e:  # PyAV raises a family of FFmpeg errors; keep the reason
        raise VideoError(path, "not media", f"cannot open as a media file ({e})") from e
    with container:
        if not container.streams.audio:
            raise VideoError(path, "no audio", "holds no audio track")
        if need_frames and not container.streams.video:
            raise VideoError(path, "no video", "holds no video track")
        astream = container.streams.audio[0]
        vstream = container.streams.video[0] if need_frames else None
        streams = [s for s in (astream, vstream) if s is not None]
        starts = [float(s.start_time * s.time_base) for s in streams if s.start_time is not None and s.time_base]
        origin = min(starts) if starts else 0.0
        if vstream is not None:
            vstream.thread_type = "AUTO"
        picker = _FramePicker(frame_every) if vstream is not None else None
        chunks: list[np.ndarray] = []
        resampler: Any = None
        native_rate = drop = 0
        try:
            for packet in container.demux(*streams):
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
            windows = max(1, math.ceil(duration / frame_every - 1e-6))
            times, frames = picker.finish(windows)
            return Decoded(audio, duration, times, frames)
        return Decoded(audio, duration)


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
    # The original takes the first channel (DESIGN.md section 1); averaging is the documented option.
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
            w, h = frame.width, frame.height
            s = FRAME_SHORT_SIDE / min(w, h)
            if s < 1:  # shrink in FFmpeg (area filter: antialiased); never upscale here
                w, h = max(1, round(w * s)), max(1, round(h * s))
            self._converted = (t, frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray())
        return self._converted

    def add(self, frame: Any, t: float) -> None:
        while (len(self.picked) + 0.5) * self.every < t:
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
    """Cut clips whose teacher step t is window ``steps * c + t`` (module docstring, DESIGN.md section 2)."""
    steps = int(round(clip_seconds / frame_every))
    win = int(round(frame_every * sample_rate))
    windows = max(1, math.ceil(dec.duration / frame_every - 1e-6))
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


def _work(job: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """Worker: decode one video and cut its clips; failures come back as records, never as exceptions."""
    vid, path, opts = job
    t0 = time.perf_counter()
    try:
        dec = decode(
            path,
            sample_rate=opts["sample_rate"],
            frame_every=opts["frame_every"],
            mono=opts["mono"],
            need_frames=opts["need_frames"],
        )
        clips = make_clips(
            dec, clip_seconds=opts["clip_seconds"], frame_every=opts["frame_every"], sample_rate=opts["sample_rate"]
        )
        used = sorted({w for c in clips for w in c.windows})
        frames = {w: dec.frames[w] for w in used} if dec.frames else {}
        return {
            "video": vid,
            "ok": True,
            "clips": clips,
            "frames": frames,
            "duration": dec.duration,
            "seconds": time.perf_counter() - t0,
        }
    except VideoError as e:
        return {"video": vid, "ok": False, "kind": e.kind, "reason": str(e)}
    except Exception as e:  # anything else is still this video's failure, not the run's
        return {"video": vid, "ok": False, "kind": "error", "reason": f"{path}: {type(e).__name__}: {e}"}


# ------------------------------------------------------------------------------------------ the run
@dataclass
class Summary:
    videos: int = 0  # found in VIDEOS
    skipped: int = 0  # already done (in the index or in failures.jsonl)
    succeeded: int = 0
    failed: int = 0
    failure_kinds: Counter = field(default_factory=Counter)
    clips: int = 0
    silent_clips: int = 0
    audio_hours: float = 0.0  # of source video decoded this run
    seconds: float = 0.0
    total_videos: int = 0  # in the shards after the run

    def line(self) -> str:
        rate = self.succeeded / self.seconds if self.seconds else 0.0
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.failure_kinds.items()))
        return (
            f"{self.succeeded} videos -> {self.clips} clips ({self.silent_clips} silent), "
            f"{self.failed} failed{f' ({kinds})' if kinds else ''}, {self.skipped} already done; "
            f"{self.audio_hours:.3f} h of audio in {self.seconds:.1f} s ({rate:.2f} videos/s, "
            f"{self.audio_hours / (self.seconds / 3600) if self.seconds else 0:.0f} audio h per wall h)"
        )


def prepare(
    videos: str | os.PathLike[str],
    out: str | os.PathLike[str],
    teachers: Mapping[str, Any],
    *,
    clip_seconds: float = 20.0,
    frame_every: float = 5.0,
    workers: int = 1,
    clips_per_shard: int = 256,
    mono: str = "first",
    class_names: Mapping[str, Any] | None = None,
    device: str | None = None,
    batch_size: int = 32,
    retry_failed: bool = False,
    progress: bool = False,
    sample_rate: int = SAMPLE_RATE,
) -> Summary:
    """Turn the videos of ``videos`` (a folder or a list file) into shards in ``out``.

    ``teachers`` maps a head name (``objects``, ``scenes``) to a spec string, a
    :class:`~soundnet_fast.teachers.Teacher` or any ``torch.nn.Module`` (:func:`~soundnet_fast.teachers.
    build_teacher`); an empty mapping writes audio-only shards without decoding frames.
    """
    steps = clip_seconds / frame_every
    if abs(steps - round(steps)) > 1e-9 or steps < 1:
        raise ValueError(f"clip_seconds ({clip_seconds}) must be a whole multiple of frame_every ({frame_every})")
    if mono not in ("first", "mean"):
        raise ValueError(f"mono must be 'first' or 'mean', got {mono!r}")
    steps = int(round(steps))
    pool = _Workers(workers)  # before any teacher exists (see _Workers)
    try:
        return _prepare(
            videos,
            out,
            teachers,
            pool,
            clip_seconds=clip_seconds,
            frame_every=frame_every,
            steps=steps,
            clips_per_shard=clips_per_shard,
            mono=mono,
            class_names=class_names,
            device=device,
            batch_size=batch_size,
            retry_failed=retry_failed,
            progress=progress,
            sample_rate=sample_rate,
        )
    finally:
        pool.close()


def _prepare(
    videos: str | os.PathLike[str],
    out: str | os.PathLike[str],
    teachers: Mapping[str, Any],
    pool: _Workers,
    *,
    clip_seconds: float,
    frame_every: float,
    steps: int,
    clips_per_shard: int,
    mono: str,
    class_names: Mapping[str, Any] | None,
    device: str | None,
    batch_size: int,
    retry_failed: bool,
    progress: bool,
    sample_rate: int,
) -> Summary:
    from soundnet_fast.teachers import TeacherError, build_teacher

    found = find_videos(videos)  # before anything is written: a wrong path leaves no empty output
    built = {
        name: build_teacher(spec, class_names=(class_names or {}).get(name), device=device, batch_size=batch_size)
        for name, spec in teachers.items()
    }
    clip_samples = int(round(clip_seconds * sample_rate))
    writer = data.ShardWriter(
        out,
        {n: t.describe() for n, t in built.items()},
        sample_rate,
        clip_samples,
        steps,
        frame_every,
        clips_per_shard=clips_per_shard,
        extra={"mono": mono, "source": os.path.abspath(os.fspath(videos))},
    )
    summary = Summary(videos=len(found))
    done = set(writer.videos)
    failed_before = {str(r.get("video")) for r in data.read_failures(out)}
    if not retry_failed:
        done |= failed_before
    todo = [(vid, path) for vid, path in found if vid not in done]
    summary.skipped = len(found) - len(todo)
    opts = {
        "sample_rate": sample_rate,
        "frame_every": frame_every,
        "clip_seconds": clip_seconds,
        "mono": mono,
        "need_frames": bool(built),
    }
    t0 = time.perf_counter()
    bar = _Progress(len(todo), enabled=progress)
    fail_path = os.path.join(os.fspath(out), data.FAILURES)
    try:
        for res in pool.results([(vid, path, opts) for vid, path in todo]):
            if res["ok"]:
                try:
                    probs = {n: t([res["frames"][w] for w in sorted(res["frames"])]) for n, t in built.items()}
                except TeacherError as e:
                    res = {"video": res["video"], "ok": False, "kind": "teacher", "reason": f"{res['video']}: {e}"}
            if not res["ok"]:
                _append_failure(fail_path, {"video": res["video"], "reason": res["reason"], "kind": res["kind"]})
                summary.failed += 1
                summary.failure_kinds[res["kind"]] += 1
                bar.advance(0.0)
                continue
            row_of = {w: i for i, w in enumerate(sorted(res["frames"]))}
            for clip in res["clips"]:
                clip_probs = {n: p[[row_of[w] for w in clip.windows]] for n, p in probs.items()}
                meta = {
                    "video": res["video"],
                    "start": clip.start,
                    "frame_times": clip.frame_times,
                    "windows": clip.windows,
                    "silent": clip.silent,
                }
                writer.add(clip.audio, clip_probs, meta)
                summary.clips += 1
                summary.silent_clips += clip.silent
            summary.succeeded += 1
            summary.audio_hours += res["duration"] / 3600.0
            bar.advance(res["duration"])
        failures = {str(r.get("video")) for r in data.read_failures(out)} - writer.videos
        writer.extra["num_failures"] = len(failures)
        writer.close()
    finally:
        bar.stop()
    summary.seconds = time.perf_counter() - t0
    summary.total_videos = len(writer.videos)
    return summary


class _Workers:
    """Decoding processes; results come back in input order with a bounded number in flight.

    fork, not spawn: spawn re-imports the caller's ``__main__`` (a script without the ``if __name__`` guard
    would fail), and the workers only use PyAV, soxr and numpy, never torch. The pool is started before any
    teacher is built or run, so the forked parent holds no torch thread pool or CUDA context yet.
    A worker that dies (an FFmpeg crash on a hostile file) breaks the pool: the jobs in flight are then rerun
    one at a time in fresh single-worker pools, so only the video that crashes again is recorded as failed.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = self._new(workers) if workers > 1 else None

    @staticmethod
    def _new(workers: int) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        pool = ProcessPoolExecutor(workers, mp_context=ctx)
        pool.submit(int).result()  # with fork, the first submit starts every worker
        return pool

    def results(self, jobs: list[tuple[str, str, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        from concurrent.futures.process import BrokenProcessPool

        if self.pool is None:
            yield from map(_work, jobs)
            return
        it = iter(jobs)
        pending: list[tuple[Any, Any]] = []
        while True:
            while len(pending) < 2 * self.workers and (job := next(it, None)) is not None:
                pending.append((job, self.pool.submit(_work, job)))
            if not pending:
                return
            job, fut = pending.pop(0)
            try:
                res = fut.result()
            except BrokenProcessPool:
                self.pool.shutdown(wait=False, cancel_futures=True)
                for retry in [job] + [j for j, _ in pending]:
                    yield self._isolated(retry)
                pending = []
                self.pool = self._new(self.workers)
                continue
            yield res

    def _isolated(self, job: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
        from concurrent.futures.process import BrokenProcessPool

        solo = self._new(1)
        try:
            return solo.submit(_work, job).result()
        except BrokenProcessPool:
            return {"video": job[0], "ok": False, "kind": "crash", "reason": f"{job[1]}: the decoder crashed"}
        finally:
            solo.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def _append_failure(path: str, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


class _Progress:
    """A rich progress bar with videos/s and hours of audio (no-op when disabled)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar: Any = None
        self.hours = 0.0
        self.t0 = time.perf_counter()
        self.done = 0
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("prepare"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=_stderr_console(),
        )
        self.task = self.bar.add_task("prepare", total=total, info="")
        self.bar.start()

    def advance(self, seconds_of_video: float) -> None:
        self.done += 1
        self.hours += seconds_of_video / 3600.0
        if self.bar is not None:
            dt = max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, advance=1, info=f"{self.done / dt:.2f} videos/s, {self.hours:.2f} h audio")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


# ------------------------------------------------------------------------------------------ CLI
def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or []:
        name, sep, spec = v.partition("=")
        if not sep or not name or not spec:
            raise SystemExit(f"{what} must look like NAME=VALUE (e.g. objects=vgg16:vgg16.pth), got {v!r}")
        out[name] = spec
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("videos", help="a folder of videos (searched recursively) or a text file with one path a line")
    p.add_argument("out", help="the shard folder (created; a rerun resumes it)")
    p.add_argument(
        "--teacher",
        action="append",
        metavar="NAME=SPEC",
        help="a teacher per head, e.g. objects=vgg16:vgg16_imagenet.pth scenes=vgg16:places.pth; SPEC is "
        "vgg16|resnet18|resnet50:WEIGHTS (torchvision layout), torchscript:FILE, export:FILE (torch.export) "
        "or uniform:N",
    )
    p.add_argument(
        "--class-names",
        action="append",
        metavar="NAME=FILE",
        help="class names for a teacher, one a line (default: ImageNet names for 1000 classes)",
    )
    p.add_argument("--clip-seconds", type=float, default=20.0, help="training clip length (default 20)")
    p.add_argument("--frame-every", type=float, default=5.0, help="one teacher frame per this many seconds (5)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes")
    p.add_argument("--clips-per-shard", type=int, default=256, help="clips per shard file (default 256)")
    p.add_argument(
        "--mono",
        choices=("first", "mean"),
        default="first",
        help="first channel (the original) or the mean of the channels",
    )
    p.add_argument("--device", default=None, help="teacher device (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=32, help="teacher batch size")
    p.add_argument("--retry-failed", action="store_true", help="retry videos recorded in failures.jsonl")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    teachers = _pairs(args.teacher, "--teacher")
    if not teachers:
        print("prepare: no --teacher given: writing audio-only shards", file=sys.stderr)
    try:
        summary = prepare(
            args.videos,
            args.out,
            teachers,
            clip_seconds=args.clip_seconds,
            frame_every=args.frame_every,
            workers=args.workers,
            clips_per_shard=args.clips_per_shard,
            mono=args.mono,
            class_names=_pairs(args.class_names, "--class-names"),
            device=args.device,
            batch_size=args.batch_size,
            retry_failed=args.retry_failed,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 2
    print(summary.line())
    if summary.failed:
        print(f"failures recorded in {os.path.join(args.out, data.FAILURES)}")
    # Non-zero only when nothing usable exists: no video succeeded, now or before.
    return 0 if summary.total_videos > 0 else 1
