"""`soundnet-fast prepare`: a folder of ordinary videos -> training shards (docs/design.md#distillation,
#performance-ceiling, #data-path).

For each video (in worker processes): decode the audio track with PyAV to 22,050 Hz mono (stream start
offsets placed on the container's timeline, codec priming already dropped by FFmpeg, audio shorter than the
video zero-padded) and pick the frame shown at the middle of every 5 s window by timestamp (so variable
frame rates are handled). In the main process: run every teacher on those frames, cut 20 s clips whose
teacher steps line up with the head steps, and append them to the shards (:class:`~soundnet_fast.data.shards.
ShardWriter`). Clip c of a long video covers [20c, 20c + 20) s and its teacher row t is the frame at
20c + 5t + 2.5 s (docs/design.md#distillation); a video shorter than a clip is zero-padded to a multiple of 5 s and
tiled to 20 s, as the original did, so its row t is window t mod W. A long video's last clip is zero-padded
by less than 5 s; windows left over after the last whole clip are dropped.

Frames come from PyAV in the workers, or (``--frames dali``, or ``auto`` on a GPU with DALI installed) from
DALI's video decoder in the main process (:mod:`~soundnet_fast.prepare.frames_dali`): the workers then still
decode the audio and read the video's packets (its timeline and end, and which frame each window shows),
without decoding the video. A video DALI cannot decode (H.264 on DALI's CPU backend) takes its frames from
PyAV instead; the summary counts those fallbacks with their reasons, and each index row says which decoder
made its frames (``frame_decoder``).

``--audio dali`` decodes the soundtracks with the native DALI plugin instead of in the workers
(:mod:`~soundnet_fast.prepare.audio_dali_jobs`); the manifest records which decoder wrote a folder's audio.

Bad input loses nothing: a file that fails is recorded in ``failures.jsonl`` with its reason and the run
goes on; a rerun skips every video already in the index or in ``failures.jsonl`` (``--retry-failed``
retries the latter).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from soundnet_fast.console import Progress, progress_enabled
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.data.parts import part_name, part_of, resolve_part, weights_sha256
from soundnet_fast.data.shards import FAILURES, ShardWriter, read_failures
from soundnet_fast.errors import UsageError
from soundnet_fast.prepare.audio_dali_jobs import AUDIO_DECODERS, MANIFEST_KEY, dali_results, open_audio_decoder
from soundnet_fast.prepare.video import find_videos
from soundnet_fast.prepare.workers import Workers

FRAME_DECODERS = ("auto", "pyav", "dali")


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
    frame_decoder: str = "none"  # the run's frames: "pyav", "dali-cpu", "dali-gpu" ("none": audio only)
    frame_fallbacks: Counter = field(default_factory=Counter)  # "codec: reason" -> videos DALI left to PyAV
    audio_decoder: str = "pyav"  # the soundtracks': "pyav" (workers) or "dali" (the native plugin)

    def line(self) -> str:
        rate = self.succeeded / self.seconds if self.seconds else 0.0
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.failure_kinds.items()))
        frames = ""
        if self.frame_decoder.startswith("dali"):
            falls = "; ".join(f"{k}: {n}" for k, n in sorted(self.frame_fallbacks.items()))
            frames = f"; frames by DALI ({self.frame_decoder[5:]}), by PyAV for {sum(self.frame_fallbacks.values())}"
            frames += f" videos DALI could not decode ({falls})" if falls else " videos"
        return (
            f"{self.succeeded} videos -> {self.clips} clips ({self.silent_clips} silent), "
            f"{self.failed} failed{f' ({kinds})' if kinds else ''}, {self.skipped} already done; "
            f"{self.audio_hours:.3f} h of audio in {self.seconds:.1f} s ({rate:.2f} videos/s, "
            f"{self.audio_hours / (self.seconds / 3600) if self.seconds else 0:.0f} audio h per wall h){frames}"
            f"{'; audio by the DALI plugin' if self.audio_decoder == 'dali' else ''}"
        )


@dataclass(frozen=True)
class PrepareConfig:
    """A run's settings besides its inputs, outputs, teachers and device: the one home of their defaults
    (:func:`prepare`'s keyword defaults and the CLI's; ``prepare(..., **asdict(cfg))`` runs a config)."""

    clip_seconds: float = 20.0  # training clips: main_train.lua's fineSize (docs/design.md#input)
    frame_every: float = 5.0  # video_frame_time = 5 in main_train.lua (docs/design.md#teachers-and-targets)
    workers: int = 1  # decoding processes (the CLI's default: min(8, CPUs))
    clips_per_shard: int = 256  # 256 clips of 20 s int16 mono: 226 MB of audio per shard file
    mono: str = "first"  # "first" channel, as the original, or the "mean" of the channels
    batch_size: int = 32  # teacher frames per forward
    frames: str = "auto"  # the frames' decoder, one of FRAME_DECODERS
    audio: str = "auto"  # the soundtracks' decoder, one of AUDIO_DECODERS (audio_dali_jobs.choose_decoder)
    retry_failed: bool = False  # redo the videos recorded in failures.jsonl


_DEFAULTS = PrepareConfig()


def prepare(
    videos: str | os.PathLike[str],
    out: str | os.PathLike[str],
    teachers: Mapping[str, Any],
    *,
    clip_seconds: float = _DEFAULTS.clip_seconds,
    frame_every: float = _DEFAULTS.frame_every,
    workers: int = _DEFAULTS.workers,
    clips_per_shard: int = _DEFAULTS.clips_per_shard,
    mono: str = _DEFAULTS.mono,
    class_names: Mapping[str, Any] | None = None,
    device: str | None = None,
    batch_size: int = _DEFAULTS.batch_size,
    retry_failed: bool = _DEFAULTS.retry_failed,
    progress: bool = False,
    sample_rate: int = SAMPLE_RATE,
    frames: str = _DEFAULTS.frames,
    audio: str = _DEFAULTS.audio,
    part: tuple[int, int] | None = None,
) -> Summary:
    """Turn the videos of ``videos`` (a folder or a list file) into shards in ``out``.

    ``part=(K, N)`` prepares only part K of N (the videos :func:`~soundnet_fast.data.parts.part_of` assigns to it,
    by a hash of their id) into ``out/part-0000K-of-0000N``; each part resumes on its own, and the folder of parts
    reads as one dataset (docs/design.md#data-at-scale). Its manifest says ``complete`` once the run got through
    every video of the part.

    ``teachers`` maps a head name (``objects``, ``scenes``) to a spec string, a
    :class:`~soundnet_fast.prepare.teachers.Teacher` or any ``torch.nn.Module`` (:func:`~soundnet_fast.prepare.teachers.
    build_teacher`); an empty mapping writes audio-only shards without decoding frames.

    ``frames`` picks the teacher frames' decoder: ``pyav``; ``dali`` (DALI on the GPU when CUDA is
    available, else DALI's CPU backend; raises :class:`~soundnet_fast.prepare.frames_dali.DaliUnavailable`
    without DALI); ``auto``: DALI on the GPU when CUDA is available and DALI imports, else PyAV.

    ``audio`` picks the soundtracks' decoder (:func:`~soundnet_fast.prepare.audio_dali_jobs.choose_decoder`):
    ``pyav`` in the workers, ``dali`` through the native DALI plugin (raises :class:`~soundnet_fast.prepare.
    dali_plugin.PluginUnavailable` when it cannot load), ``auto``: the decoder that wrote ``out`` when resuming,
    else ``dali`` when the plugin loads, else ``pyav``. Resuming with the other decoder raises ValueError.
    """
    steps = clip_seconds / frame_every
    if abs(steps - round(steps)) > 1e-9 or steps < 1:
        raise ValueError(f"clip_seconds ({clip_seconds}) must be a whole multiple of frame_every ({frame_every})")
    if mono not in ("first", "mean"):
        raise ValueError(f"mono must be 'first' or 'mean', got {mono!r}")
    if frames not in FRAME_DECODERS:
        raise ValueError(f"frames must be one of {', '.join(FRAME_DECODERS)}, got {frames!r}")
    if audio not in AUDIO_DECODERS:
        raise ValueError(f"audio must be one of {', '.join(AUDIO_DECODERS)}, got {audio!r}")
    steps = int(round(steps))
    # Forked before any teacher exists (see Workers); without teachers only when PyAV decodes the soundtracks
    # (_prepare starts them), so an audio-only run whose soundtracks DALI decodes forks no idle processes.
    pool = Workers(workers, start=bool(teachers))
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
            frames=frames,
            audio=audio,
            part=part,
        )
    finally:
        pool.close()


def _prepare(
    videos: str | os.PathLike[str],
    out: str | os.PathLike[str],
    teachers: Mapping[str, Any],
    pool: Workers,
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
    frames: str,
    audio: str,
    part: tuple[int, int] | None = None,
) -> Summary:
    from soundnet_fast.prepare.frames_dali import open_frame_decoder
    from soundnet_fast.prepare.teachers import TeacherError, build_teacher

    found = find_videos(videos)  # before anything is written: a wrong path leaves no empty output
    if part is not None:  # this part's videos, into its own folder (docs/design.md#data-at-scale)
        out = os.path.join(os.fspath(out), part_name(*part))
        found = [(vid, path) for vid, path in found if part_of(vid, part[1]) == part[0]]
    built = {
        name: build_teacher(spec, class_names=(class_names or {}).get(name), device=device, batch_size=batch_size)
        for name, spec in teachers.items()
    }
    # Before the writer, so a missing DALI leaves no empty output; after the pool forked (DALI starts threads).
    dali = open_frame_decoder(frames, device) if built else None
    audio_dec = open_audio_decoder(audio, out, mono=mono, sample_rate=sample_rate, threads=pool.workers, device=device)
    audio = "dali" if audio_dec is not None else "pyav"
    if audio_dec is None:
        pool.start()  # PyAV decodes in the workers: fork them now, before the writer and the progress bar's thread
    clip_samples = int(round(clip_seconds * sample_rate))
    writer = ShardWriter(
        out,
        {n: {**t.describe(), **weights_sha256(teachers[n])} for n, t in built.items()},
        sample_rate,
        clip_samples,
        steps,
        frame_every,
        clips_per_shard=clips_per_shard,
        extra={"mono": mono, "source": os.path.abspath(os.fspath(videos)), MANIFEST_KEY: audio},
    )
    # Until the run has been through every video, the folder says it is unfinished (a dataset refuses such parts).
    frames_by = "none" if not built else "dali" if dali is not None else "pyav"
    was = writer.extra.get("frame_decoder", frames_by) if writer.num_clips else frames_by
    writer.update(complete=False, frame_decoder=frames_by if was == frames_by else "mixed",
                  **({"part": {"index": part[0], "count": part[1], "videos": len(found)}} if part else {}))  # fmt: skip
    summary = Summary(videos=len(found), audio_decoder=audio)
    summary.frame_decoder = "none" if not built else f"dali-{dali.device}" if dali is not None else "pyav"
    done = writer.has_videos([vid for vid, _ in found])  # by video key: no per-clip Python objects
    failed_before = {str(r.get("video")) for r in read_failures(out)}
    todo = [(vid, path) for (vid, path), d in zip(found, done.tolist(), strict=True)
            if not d and (retry_failed or vid not in failed_before)]  # fmt: skip
    summary.skipped = len(found) - len(todo)
    opts = {
        "sample_rate": sample_rate,
        "frame_every": frame_every,
        "clip_seconds": clip_seconds,
        "mono": mono,
        "need_frames": bool(built),
        "frame_decoder": "dali" if dali is not None else "pyav",
    }
    paths = dict(todo)
    t0 = time.perf_counter()
    bar = Progress("prepare", len(todo), enabled=progress).start()
    fail_path = os.path.join(os.fspath(out), FAILURES)
    try:
        if audio_dec is not None:  # the soundtracks through DALI, the frames (DALI's or PyAV's) there too
            results = dali_results(todo, audio_dec, pool, opts, dali, summary)
        else:
            results = pool.results([(vid, path, opts) for vid, path in todo])
        for res in results:
            if audio_dec is None and res["ok"] and res.get("frame_decoder") == "dali" and dali is not None:
                res = _dali_frames(res, paths[res["video"]], dali, pool, opts, summary)
            if res["ok"]:
                try:
                    probs = {n: t([res["frames"][w] for w in sorted(res["frames"])]) for n, t in built.items()}
                except TeacherError as e:
                    res = {"video": res["video"], "ok": False, "kind": "teacher", "reason": f"{res['video']}: {e}"}
            if not res["ok"]:
                _append_failure(fail_path, {"video": res["video"], "reason": res["reason"], "kind": res["kind"]})
                summary.failed += 1
                summary.failure_kinds[res["kind"]] += 1
                bar.advance(1, text=_rates(summary, t0))
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
                if "frame_decoder" in res:
                    meta["frame_decoder"] = res["frame_decoder"]
                writer.add(clip.audio, clip_probs, meta)
                summary.clips += 1
                summary.silent_clips += clip.silent
            summary.succeeded += 1
            summary.audio_hours += res["duration"] / 3600.0
            bar.advance(1, text=_rates(summary, t0))
        failures = sorted({str(r.get("video")) for r in read_failures(out)})
        writer.extra["num_failures"] = sum(not d for d in writer.has_videos(failures).tolist())
        writer.extra["complete"] = True
        writer.close()
    finally:
        bar.stop()
    summary.seconds = time.perf_counter() - t0
    summary.total_videos = writer.num_videos
    return summary


def _dali_frames(
    res: dict[str, Any], path: str, dali: Any, pool: Workers, opts: dict[str, Any], summary: Summary
) -> dict[str, Any]:
    """Fill a worker's result with DALI's frames; when DALI cannot decode the file, redo the whole video with
    PyAV in a worker (so its shards are exactly the PyAV path's, and an FFmpeg crash stays in a worker) and
    count the fallback."""
    from soundnet_fast.prepare.frames_dali import DaliError

    windows = sorted(res["indices"])
    try:
        got = dali(path, [res["indices"][w] for w in windows], res["frame_size"])
    except DaliError as e:
        summary.frame_fallbacks[f"{res['codec'] or 'unknown codec'}: {e.reason}"] += 1
        return pool.run_one((res["video"], path, {**opts, "frame_decoder": "pyav"}))
    return {**res, "frames": dict(zip(windows, got, strict=True))}


def _append_failure(path: str, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _rates(summary: Summary, t0: float) -> str:
    """The progress bar's text: videos done (succeeded or failed) per second since ``t0``
    (``time.perf_counter``), and hours of audio decoded so far."""
    dt = max(time.perf_counter() - t0, 1e-9)
    return f"{(summary.succeeded + summary.failed) / dt:.2f} videos/s, {summary.audio_hours:.2f} h audio"


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
        "vgg16|resnet18|resnet50:WEIGHTS (torchvision layout, loaded weights-only), torchscript:FILE, "
        "export:FILE (torch.export; these two carry code: use only files you trust) or uniform:N",
    )
    p.add_argument(
        "--class-names",
        action="append",
        metavar="NAME=FILE",
        help="class names for a teacher, one a line (default: ImageNet names for 1000 classes)",
    )
    d = PrepareConfig()
    p.add_argument(
        "--clip-seconds", type=float, default=d.clip_seconds, help="training clip length (default %(default)s)"
    )
    p.add_argument(
        "--frame-every",
        type=float,
        default=d.frame_every,
        help="one teacher frame per this many seconds (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="decoding processes (default: the CPUs, at most 8; here %(default)s)",
    )
    p.add_argument(
        "--clips-per-shard", type=int, default=d.clips_per_shard, help="clips per shard file (default %(default)s)"
    )
    p.add_argument(
        "--mono",
        choices=("first", "mean"),
        default=d.mono,
        help="first channel (the original) or the mean of the channels (default %(default)s)",
    )
    p.add_argument("--device", default=None, help="teacher device (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="teacher batch size (default %(default)s)")
    p.add_argument(
        "--frames",
        choices=FRAME_DECODERS,
        default=d.frames,
        help="teacher frames' decoder: PyAV, or DALI (GPU when CUDA is available, else its CPU backend: VP8/VP9/"
        "MJPEG only; videos it cannot decode fall back to PyAV); auto: DALI on a GPU when installed, else PyAV "
        "(default %(default)s)",
    )
    p.add_argument(
        "--audio",
        choices=AUDIO_DECODERS,
        default=d.audio,
        help="soundtracks' decoder: PyAV in the workers, or the native DALI plugin (soundnet-fast build-dali-plugin "
        "builds it); auto: the decoder that wrote OUT when resuming, else DALI when the plugin is built, else PyAV "
        "(default %(default)s)",
    )
    p.add_argument("--retry-failed", action="store_true", help="retry videos recorded in failures.jsonl")
    p.add_argument(
        "--part",
        default=None,
        metavar="K/N|auto|all",
        help="prepare part K of N (from 0; videos split by a hash of their path) into OUT/part-0000K-of-0000N; "
        "auto: K and N from torchrun (RANK, WORLD_SIZE) or a Slurm array (SLURM_ARRAY_TASK_*); all: every video "
        "into OUT (the default, refused under a scheduler that runs several copies)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from soundnet_fast.prepare.dali_plugin import PluginUnavailable
    from soundnet_fast.prepare.frames_dali import DaliUnavailable

    teachers = _pairs(args.teacher, "--teacher")
    cfg = PrepareConfig(**{f.name: getattr(args, f.name) for f in fields(PrepareConfig)})
    if not teachers:
        print("prepare: no --teacher given: writing audio-only shards", file=sys.stderr)
    try:
        part = resolve_part(args.part)
        summary = prepare(
            args.videos,
            args.out,
            teachers,
            class_names=_pairs(args.class_names, "--class-names"),
            device=args.device,
            progress=progress_enabled("off" if args.no_progress else "auto"),
            **asdict(cfg),
            part=part,
        )
    except (FileNotFoundError, ValueError, DaliUnavailable, PluginUnavailable) as e:
        raise UsageError(str(e)) from e  # soundnet_fast.cli: one line, exit status 2
    print(summary.line())
    out = os.path.join(args.out, part_name(*part)) if part else args.out
    if summary.failed:
        print(f"failures recorded in {os.path.join(out, FAILURES)}")
    # Non-zero only when nothing usable exists: no video succeeded, now or before.
    return 0 if summary.total_videos > 0 else 1
