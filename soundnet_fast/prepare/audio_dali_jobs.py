"""``prepare --audio dali``: the soundtracks through the DALI plugin, the frames as before
(docs/design.md#the-native-dali-audio-operator, #data-path).

:func:`dali_results` yields the same records as the PyAV path (:func:`soundnet_fast.prepare.workers.decode_job`):
one per video, in input order, with its clips and frames or its failure. The audio of a batch of videos decodes
in one DALI pipeline run (:class:`~soundnet_fast.prepare.audio_dali.DaliAudio`, resampled to 22,050 Hz there).
Without teachers that is all. With teachers, a worker process reads the video stream alone with PyAV
(:func:`video_job`): the frame shown at the middle of each window (or, for DALI's video decoder, its index), the
video's start and end; the audio track is never decoded there.

Timeline, as :func:`soundnet_fast.prepare.video.decode` builds it: 0 is the earliest start of the streams used,
the audio's start being the presentation time of its first decoded sample (the plugin's ``first_time``: the
stream's container start time differs between FFmpeg versions, e.g. WebM's codec delay); an audio track that
starts later is preceded by silence. The audio is placed on it at 22,050 Hz, so it can sit up to half a sample
from where the PyAV path, which shifts at the native rate, puts it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from soundnet_fast.prepare.audio_dali import MISSING, NO_AUDIO, OK, DaliAudio, DecodedAudio
from soundnet_fast.prepare.video import (
    Decoded,
    VideoError,
    _FramePicker,
    _PacketTimes,
    make_clips,
    num_windows,
    open_media,
)

AUDIO_DECODERS = ("auto", "pyav", "dali")
MANIFEST_KEY = "audio_decoder"  # the manifest's record of which decoder wrote the shards' audio


# ------------------------------------------------------------------------------------------ which decoder
def recorded_decoder(out: str | os.PathLike[str]) -> str | None:
    """The audio decoder recorded in ``out``'s manifest: ``pyav`` for folders written before it was recorded,
    None when ``out`` holds no shards yet."""
    from soundnet_fast.data.shards import manifest_path, read_manifest

    if not os.path.isfile(manifest_path(os.fspath(out))):
        return None
    return str(read_manifest(os.fspath(out)).get(MANIFEST_KEY, "pyav"))


def choose_decoder(requested: str, out: str | os.PathLike[str]) -> str:
    """``pyav`` or ``dali`` for a run that asked for ``requested`` (one of :data:`AUDIO_DECODERS`).

    A folder being resumed keeps the decoder that wrote it: ``auto`` takes it, the other one is refused
    (ValueError, a usage error on the command line), so one folder never mixes soundtracks decoded by two
    FFmpeg builds. A new folder's ``auto`` is ``dali`` when the plugin loads, else ``pyav``. Raises
    :class:`~soundnet_fast.prepare.dali_plugin.PluginUnavailable` when ``dali`` is needed and cannot load.
    """
    from soundnet_fast.prepare.dali_plugin import load_plugin, plugin_available

    if requested not in AUDIO_DECODERS:
        raise ValueError(f"audio must be one of {', '.join(AUDIO_DECODERS)}, got {requested!r}")
    before = recorded_decoder(out)
    if before is not None and requested not in ("auto", before):
        raise ValueError(
            f"{os.fspath(out)}: its shards' audio was decoded by {before}; resume it with --audio {before} "
            "(or leave --audio out), or write to a new output folder"
        )
    choice = before or requested
    if choice == "auto":
        choice = "dali" if plugin_available() else "pyav"
    if choice == "dali":
        load_plugin()  # the reason, when it cannot load
    return choice


def open_audio_decoder(
    requested: str, out: str | os.PathLike[str], *, mono: str, sample_rate: int, threads: int, device: str | None
) -> DaliAudio | None:
    """The DALI audio decoder for a ``prepare`` run (:func:`choose_decoder`), or None for PyAV's workers.

    Decoding runs on ``threads`` CPU threads (prepare's ``--workers``), 2 videos per thread in a batch;
    resampling on the GPU when CUDA is available and ``device`` (the teachers') is not the CPU. ``trim=False``:
    prepare places the audio on the video's timeline itself (module docstring).
    """
    if choose_decoder(requested, out) != "dali":
        return None
    from soundnet_fast.prepare.frames_dali import dali_device

    cuda, device_id = dali_device(device)
    threads = max(1, threads)
    return DaliAudio(sample_rate, mono, trim=False, batch_size=2 * threads, num_threads=threads,
                     device="gpu" if cuda else "cpu", device_id=device_id)  # fmt: skip


# ------------------------------------------------------------------------------------------ the main process
def dali_results(
    todo: list[tuple[str, str]],
    audio: DaliAudio,
    pool: Any,
    opts: dict[str, Any],
    frames: Any = None,
    summary: Any = None,
) -> Iterator[dict[str, Any]]:
    """One record per video of ``todo`` ((video id, path) pairs), in order, as the PyAV path's.

    ``audio``: the decoder (``trim=False``, ``sample_rate`` = ``opts["sample_rate"]``). ``pool``: the
    :class:`~soundnet_fast.prepare.workers.Workers` that read the video streams (used only when
    ``opts["need_frames"]``). ``frames``: a :class:`~soundnet_fast.prepare.frames_dali.DaliFrames` for the frames,
    or None for PyAV's; a video it cannot decode takes PyAV's frames (the audio stays DALI's), counted in
    ``summary.frame_fallbacks``.
    """
    decoded = audio.decode_files([p for _, p in todo])
    if not opts["need_frames"]:
        for (vid, path), a in zip(todo, decoded, strict=True):
            yield _audio_only(vid, path, a, opts) if a.ok else _failure(vid, path, a)
        return
    held: dict[str, DecodedAudio] = {}
    frame_decoder = "dali" if frames is not None else "pyav"

    def jobs() -> Iterator[tuple[str, str, dict[str, Any]]]:
        for (vid, path), a in zip(todo, decoded, strict=True):
            if not a.ok:  # the worker hands the failure back in order
                yield vid, path, {**opts, "audio_decoder": "dali", "failure": _failure(vid, path, a)}
                continue
            held[vid] = a
            first = a.first_time if math.isfinite(a.first_time) else None
            yield vid, path, {**opts, "audio_decoder": "dali", "frame_decoder": frame_decoder,
                              "audio_first": first, "audio_samples": len(a.wave)}  # fmt: skip

    for res in pool.results(jobs()):
        a = held.pop(res["video"], None)
        if res["ok"] and a is not None:
            res = _with_audio(res, a, opts)
            if res["frame_decoder"] == "dali":
                res = _dali_frames(res, a, frames, pool, opts, summary)
        yield {k: v for k, v in res.items() if k not in _PRIVATE}


_PRIVATE = ("indices", "frame_times", "shift", "opts", "path", "frame_size", "codec")


def _dali_frames(
    res: dict[str, Any], a: DecodedAudio, frames: Any, pool: Any, opts: dict[str, Any], summary: Any
) -> dict[str, Any]:
    """DALI's frames for the windows the clips use; when DALI cannot decode them, the video stream again in a
    worker with PyAV's frames (the audio stays DALI's), counted in ``summary.frame_fallbacks``."""
    from soundnet_fast.prepare.frames_dali import DaliError

    windows = sorted(res["indices"])
    try:
        got = frames(res["path"], [res["indices"][w] for w in windows], res["frame_size"])
    except DaliError as e:
        if summary is not None:
            summary.frame_fallbacks[f"{res['codec'] or 'unknown codec'}: {e.reason}"] += 1
        redo = pool.run_one((res["video"], res["path"], {**res["opts"], "frame_decoder": "pyav"}))
        return _with_audio(redo, a, opts) if redo["ok"] else redo
    return {**res, "frames": dict(zip(windows, got, strict=True))}


def _with_audio(res: dict[str, Any], a: DecodedAudio, opts: dict[str, Any]) -> dict[str, Any]:
    """A video-stream record plus the DALI audio: the audio placed on the video's timeline, the clips, and the
    frames (or DALI's frame indices) of just the windows the clips use."""
    sr = opts["sample_rate"]
    wave = np.concatenate([np.zeros(res["shift"], np.float32), a.wave]) if res["shift"] > 0 else a.wave
    dec = Decoded(wave, res["duration"], res["frame_times"])
    clips = make_clips(dec, clip_seconds=opts["clip_seconds"], frame_every=opts["frame_every"], sample_rate=sr)
    used = sorted({w for c in clips for w in c.windows})
    out = {**res, "clips": clips, "frames": {w: res["frames"][w] for w in used if w in res["frames"]}}
    if "indices" in res:
        out["indices"] = {w: res["indices"][w] for w in used}
    return out


def _audio_only(vid: str, path: str, a: DecodedAudio, opts: dict[str, Any]) -> dict[str, Any]:
    sr = opts["sample_rate"]
    dec = Decoded(a.wave, len(a.wave) / sr)  # the audio's own first sample is time 0
    clips = make_clips(dec, clip_seconds=opts["clip_seconds"], frame_every=opts["frame_every"], sample_rate=sr)
    return {"video": vid, "ok": True, "clips": clips, "frames": {}, "duration": dec.duration, "seconds": 0.0}


def _failure(vid: str, path: str, a: DecodedAudio) -> dict[str, Any]:
    """The PyAV path's failure kinds (:class:`~soundnet_fast.prepare.video.VideoError`) for a DALI status."""
    if a.status == MISSING:
        kind = "missing"
    elif a.status == NO_AUDIO:
        kind = "no audio"
    elif a.message.startswith("file is empty"):
        kind = "empty"
    elif a.message.startswith(("cannot open as a media file", "cannot read the streams")):
        kind = "not media"
    elif "decoded to no samples" in a.message:
        kind = "no audio"
    else:
        kind = "decode error"
    assert a.status != OK
    return {"video": vid, "ok": False, "kind": kind, "reason": f"{path}: {a.message}"}


# ------------------------------------------------------------------------------------------ the workers
def video_job(vid: str, path: str, opts: dict[str, Any]) -> dict[str, Any]:
    """In a worker: the video stream of ``path`` alone (its audio was decoded by DALI), as a record for
    :func:`dali_results`. Raises :class:`~soundnet_fast.prepare.video.VideoError` (the caller records it).

    ``opts``: prepare's options plus ``audio_first`` (s, or None) and ``audio_samples`` (at ``sample_rate``)
    of the DALI audio, and ``frame_decoder``: ``pyav`` decodes the frame of every window (``frames``),
    ``dali`` only reads the packets for DALI's frame indices (``indices``, ``frame_size``, ``codec``).
    """
    if "failure" in opts:
        return opts["failure"]
    sr, every = opts["sample_rate"], opts["frame_every"]
    decode_frames = opts["frame_decoder"] == "pyav"
    with open_media(path) as container:
        if not container.streams.video:
            raise VideoError(path, "no video", "holds no video track")
        vstream = container.streams.video[0]
        starts = [float(vstream.start_time * vstream.time_base)] if vstream.start_time is not None else []
        first = opts["audio_first"]
        origin = min(starts + ([first] if first is not None else [])) if starts or first is not None else 0.0
        picker = _FramePicker(every) if decode_frames else None
        clock = None if decode_frames else _PacketTimes(origin)
        if picker is not None:
            vstream.thread_type = "AUTO"
        try:
            for packet in container.demux(vstream):
                if clock is not None:
                    clock.add(packet)
                    continue
                for frame in packet.decode():
                    if frame.pts is not None:
                        picker.add(frame, float(frame.pts * frame.time_base) - origin)
        except Exception as e:  # FFmpeg decode errors: a corrupt file
            raise VideoError(path, "decode error", f"cannot decode ({type(e).__name__}: {e})") from e
        shift = int(round((first - origin) * sr)) if first is not None else 0
        audio_end = (shift + opts["audio_samples"]) / sr
        res: dict[str, Any] = {"video": vid, "ok": True, "shift": shift, "path": path, "opts": opts,
                               "frame_decoder": opts["frame_decoder"]}  # fmt: skip
        if picker is not None:
            if picker.last is None:
                raise VideoError(path, "no video", "video track decoded to no frames")
            res["duration"] = max(audio_end, picker.end)
            times, got = picker.finish(num_windows(res["duration"], every))
            res.update(frame_times=times, frames=dict(enumerate(got)))
            return res
        if not clock.times:
            raise VideoError(path, "no video", "video track holds no frames")
        res["duration"] = max(audio_end, clock.end)
        indices, times = clock.finish(num_windows(res["duration"], every), every)
        cc = vstream.codec_context
        size = (int(cc.width), int(cc.height)) if cc.width and cc.height else None
        res.update(frame_times=times, frames={}, indices=dict(enumerate(indices)), frame_size=size, codec=str(cc.name))
        return res


__all__ = [
    "AUDIO_DECODERS",
    "MANIFEST_KEY",
    "choose_decoder",
    "dali_results",
    "open_audio_decoder",
    "recorded_decoder",
    "video_job",
]
