"""Training shards: the on-disk format, its readers and the writer (docs/design.md#distillation, #shard-layout).

Layout of a shard folder (the contract between ``prepare``, the loader, the trainer and the demo)::

    SHARDS/
      manifest.json                {"format": "soundnet_fast.shards/1", "sample_rate", "clip_seconds",
                                    "clip_samples", "frame_every", "steps", "teachers": {name: {"spec",
                                    "num_classes", "class_names"}}, "num_clips", "num_videos",
                                    "shards": [{"name", "num_clips"}], "silent_clips", ...}
      shard-000000.audio.npy       int16 (n, clip_samples)
      shard-000000.<teacher>.npy   float32 (n, steps, num_classes), each row sums to 1
      index.jsonl                  one line per clip: {"clip", "video", "start", "frame_times", "shard",
                                    "row", "silent", "frame_decoder" (pyav | dali; absent when audio only)}
      clipkeys.bin                 16 bytes per clip, in index order: video key, number within the video,
                                    flags (soundnet_fast.data.keys; the manifest's "tail" says it is current)
      failures.jsonl               one line per failed video: {"video", "reason", ...} (written by prepare)

The manifest is the source of truth: a shard exists once the manifest lists it. Shard files are written
atomically first, then their index lines are appended, then the manifest is replaced atomically; a run
killed anywhere in between leaves index lines for an unlisted shard, which readers ignore and the next
writer truncates (to the index length the manifest's ``tail`` recorded, without reading the index). Shards
hold whole videos (a shard is cut only between videos), so "this video is done"
is simply "this video is in the index" (resumption asks the clip keys, not the index).

Why one large ``.npy`` per shard rather than a file per clip: numpy memory-maps crops of one large file at
~1,250 clips/s per core while per-clip files read at ~216 clips/s (docs/design.md#data-path), and DALI's
``fn.readers.numpy`` reads row crops of the same files (``roi_start`` / ``roi_end``); reading them in
batches is :mod:`soundnet_fast.data.loader`'s job.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from soundnet_fast.data.keys import (
    KEY_DTYPE,
    KEYS,
    SILENT,
    KeyCounter,
    keys_array,
    read_clip_keys,
    read_keys_file,
    tail_current,
)
from soundnet_fast.data.parts import video_keys
from soundnet_fast.fsutil import atomic_np_save, atomic_open, atomic_write_text, read_jsonl

FORMAT = "soundnet_fast.shards/1"
MANIFEST = "manifest.json"
INDEX = "index.jsonl"
FAILURES = "failures.jsonl"
ROW_SUM_TOLERANCE = 1e-3  # float32 softmax rows over 1000 classes sum to 1 within ~1e-6; 1e-3 flags real errors
_NAME = re.compile(r"^[A-Za-z0-9_]+$")  # teacher names become file names


class ShardFormatError(ValueError):
    """A shard folder or one of its files is not what the format promises; the message names the file."""


# ------------------------------------------------------------------------------------------ reading
def manifest_path(path: str | os.PathLike[str]) -> str:
    """The manifest file of ``path`` (a shard folder, or the manifest file itself)."""
    path = os.fspath(path)
    return os.path.join(path, MANIFEST) if os.path.isdir(path) else path


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``manifest.json`` (``path`` is the shard folder or the manifest file)."""
    mpath = manifest_path(path)
    if not os.path.exists(mpath):
        raise ShardFormatError(f"{mpath}: no such file (not a shard folder written by `soundnet-fast prepare`?)")
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ShardFormatError(f"{mpath}: cannot read the manifest as JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ShardFormatError(f"{mpath}: format is {found!r}, expected {FORMAT!r}")
    required = ("sample_rate", "clip_samples", "steps", "frame_every", "teachers", "shards", "num_clips")
    missing = [k for k in required if k not in manifest]
    if missing:
        raise ShardFormatError(f"{mpath}: manifest lacks {missing}")
    for name, t in manifest["teachers"].items():
        if not _NAME.match(name) or "num_classes" not in t:
            raise ShardFormatError(f"{mpath}: teacher entry {name!r} is malformed: {t!r}")
    return manifest


def read_index(path: str | os.PathLike[str], manifest: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Index lines of the complete shards (those the manifest lists), in clip order.

    Lines of a shard the manifest does not list (a killed run) and a torn last line are skipped.
    """
    folder = os.path.dirname(manifest_path(path))
    manifest = read_manifest(folder) if manifest is None else manifest
    listed = {s["name"] for s in manifest["shards"]}
    ipath = os.path.join(folder, INDEX)
    out: list[dict[str, Any]] = []
    if not os.path.exists(ipath):
        return out
    with open(ipath, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line from a killed append; its shard is not listed either
            if rec.get("shard") in listed:
                out.append(rec)
    return out


def read_failures(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of ``failures.jsonl`` (empty when there is none); a torn last line is skipped."""
    folder = os.fspath(path) if os.path.isdir(path) else os.path.dirname(os.fspath(path))
    return read_jsonl(os.path.join(folder, FAILURES))


def shard_files(folder: str | os.PathLike[str], shard: str, teachers: Sequence[str]) -> dict[str, str]:
    """Paths of one shard's arrays: ``{"audio": ..., teacher: ...}``."""
    folder = os.fspath(folder)
    files = {"audio": os.path.join(folder, f"{shard}.audio.npy")}
    for t in teachers:
        files[t] = os.path.join(folder, f"{shard}.{t}.npy")
    return files


def check_model_steps(manifest: Mapping[str, Any], model: Any) -> int:
    """Raise when the model's head length T at the manifest's clip length differs from its teacher steps.

    Head step t is matched to teacher step t by index (docs/design.md#distillation), so a mismatch would silently
    train against the wrong frames. ``model`` is a SoundNet instance or class. Returns T.
    """
    cls = model if isinstance(model, type) else type(model)
    steps = int(manifest["steps"])
    t = int(cls.output_lengths(int(manifest["clip_samples"]))["heads"])
    if t != steps:
        raise ValueError(
            f"{cls.__name__} gives T = {t} head steps on {manifest['clip_samples']}-sample clips, but the shards "
            f"hold {steps} teacher steps per clip (one per {manifest['frame_every']} s): prepare the shards with "
            "matching --clip-seconds / --frame-every (SoundNet-8: 20 s / 5 s -> 4; SoundNet-5: 10 s / 5 s -> 2)"
        )
    return t


# ------------------------------------------------------------------------------------------ writing
class ShardWriter:
    """Append clips to a shard folder; each shard's files appear atomically, whole videos per shard.

    ``teachers`` maps a teacher name (a file-name-safe word such as ``objects``) to
    ``{"spec": str, "num_classes": int, "class_names": list[str] | None}`` and optionally ``"sha256"`` (of the
    teacher's weight file; none at all gives audio-only shards). Opening a folder that already holds a manifest
    resumes it (the settings must match); index lines of unlisted shards are dropped. Resuming reads the manifest
    and ``clipkeys.bin``, not the index (a legacy folder without current keys has its index read once).
    A shard is cut once it holds ``clips_per_shard`` clips and the next clip belongs to another video.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        teachers: Mapping[str, Mapping[str, Any]],
        sample_rate: int,
        clip_samples: int,
        steps: int,
        frame_every: float,
        clips_per_shard: int = 256,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.out_dir = os.fspath(out_dir)
        if clips_per_shard < 1:
            raise ValueError(f"clips_per_shard must be >= 1, got {clips_per_shard}")
        self.teachers: dict[str, dict[str, Any]] = {}
        for name, t in teachers.items():
            if not _NAME.match(name):
                raise ValueError(f"teacher name {name!r} must be letters, digits and '_' (it names files)")
            names = t.get("class_names")
            n = int(t["num_classes"])
            if names is not None and len(names) != n:
                raise ValueError(f"teacher {name!r}: {len(names)} class names for {n} classes")
            self.teachers[name] = {
                "spec": str(t.get("spec", "")),
                "num_classes": n,
                "class_names": list(names) if names is not None else None,
            }
            if t.get("sha256"):
                self.teachers[name]["sha256"] = str(t["sha256"])
        self.sample_rate, self.clip_samples, self.steps = int(sample_rate), int(clip_samples), int(steps)
        self.frame_every = float(frame_every)
        self.clips_per_shard = int(clips_per_shard)
        self.extra: dict[str, Any] = dict(extra or {})
        self.shards: list[dict[str, Any]] = []
        self.num_clips = self.silent_clips = self.num_videos = 0
        self.index_bytes = 0
        self._done = np.empty(0, np.uint64)  # sorted video keys of the shards found on resumption
        self._new: set[int] = set()  # video keys committed by this writer
        self._count = KeyCounter()
        self._buf_audio: list[np.ndarray] = []
        self._buf_probs: dict[str, list[np.ndarray]] = {t: [] for t in self.teachers}
        self._buf_meta: list[dict[str, Any]] = []
        self._buf_keys: list[tuple[int, int, int]] = []
        self._closed = False
        os.makedirs(self.out_dir, exist_ok=True)
        if os.path.exists(os.path.join(self.out_dir, MANIFEST)):
            self._resume()
        else:
            for name in (INDEX, KEYS):
                open(os.path.join(self.out_dir, name), "wb").close()
            self._write_manifest()

    # -------------------------------------------------------------------------------- resumption
    def _settings(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "clip_samples": self.clip_samples,
            "steps": self.steps,
            "frame_every": self.frame_every,
        }

    def _resume(self) -> None:
        mpath = os.path.join(self.out_dir, MANIFEST)
        old = read_manifest(mpath)
        for key, value in self._settings().items():
            if float(old[key]) != float(value):
                raise ShardFormatError(
                    f"{mpath}: holds {key} = {old[key]}, this run asks for {value}; use a new output folder"
                )
        old_t = {k: (v.get("spec"), int(v["num_classes"])) for k, v in old["teachers"].items()}
        new_t = {k: (v["spec"], v["num_classes"]) for k, v in self.teachers.items()}
        sums = {k: (v.get("sha256"), old["teachers"].get(k, {}).get("sha256")) for k, v in self.teachers.items()}
        changed = [k for k, (new, was) in sums.items() if new and was and new != was]
        if old_t != new_t or changed:
            why = f"; the weight file of {changed} changed (sha256)" if changed else ""
            raise ShardFormatError(
                f"{mpath}: holds teachers {old_t}, this run asks for {new_t}{why}; use a new output folder"
            )
        self.shards = [dict(s) for s in old["shards"]]
        self.extra = {**{k: v for k, v in old.items() if k not in _MANAGED}, **self.extra}
        self.num_clips = n = int(old["num_clips"])
        ipath, kpath = os.path.join(self.out_dir, INDEX), os.path.join(self.out_dir, KEYS)
        size = os.path.getsize(ipath) if os.path.exists(ipath) else -1
        keys = None
        if tail_current(old) and size >= int(old["tail"]["index_bytes"]):
            # Lines past the recorded length belong to a shard the manifest does not list (a killed run).
            self.index_bytes = int(old["tail"]["index_bytes"])
            if size > self.index_bytes:
                os.truncate(ipath, self.index_bytes)
            keys = read_keys_file(self.out_dir, n)
            if keys is not None and os.path.getsize(kpath) > n * KEY_DTYPE.itemsize:
                os.truncate(kpath, n * KEY_DTYPE.itemsize)  # records of that unlisted shard
        else:  # a folder from a writer without the tail: read the index once and rewrite it without those lines
            records = read_index(self.out_dir, old)
            data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
            with atomic_open(ipath, "wb") as f:
                f.write(data)
            self.index_bytes = len(data)
        if keys is None:  # no current keys file: derive it from the index, once
            keys = read_clip_keys(self.out_dir, {**old, "tail": None})
            with atomic_open(kpath, "wb") as f:
                f.write(keys.tobytes())
        self.silent_clips = int(np.count_nonzero(keys["flags"] & SILENT))
        self._done = np.unique(keys["video"])
        self.num_videos = int(np.count_nonzero(self._done))  # key 0: clips without a video id
        for name in os.listdir(self.out_dir):  # temporaries of a killed atomic write
            if name.startswith(".tmp-"):
                os.unlink(os.path.join(self.out_dir, name))

    @property
    def videos(self) -> set[str]:
        """Ids of the videos in the committed shards (reads the index: :meth:`has_videos` is the fast question)."""
        return {str(r["video"]) for r in read_index(self.out_dir) if "video" in r}

    def has_videos(self, videos: Sequence[str]) -> np.ndarray:
        """Which of ``videos`` (ids) are in the committed shards, by video key: bool (len(videos),)."""
        keys = video_keys(videos)
        done = np.isin(keys, self._done)
        if self._new:
            done |= np.isin(keys, np.fromiter(self._new, np.uint64, len(self._new)))
        return done

    # ------------------------------------------------------------------------------------ adding
    def add(self, audio: np.ndarray, probs: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Buffer one clip: ``audio`` int16 (clip_samples,), ``probs[t]`` float32 (steps, C_t), ``meta`` for
        the index (``video``, ``start``, ``frame_times``, ``silent``, ...)."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        where = f"clip {len(self._buf_meta)} of video {meta.get('video', '?')!r}"
        audio = np.asarray(audio)
        if audio.dtype != np.int16 or audio.shape != (self.clip_samples,):
            raise ValueError(f"{where}: audio must be int16 ({self.clip_samples},), got {audio.dtype} {audio.shape}")
        if set(probs) != set(self.teachers):
            raise ValueError(f"{where}: probabilities for {sorted(probs)}, expected {sorted(self.teachers)}")
        checked: dict[str, np.ndarray] = {}
        for t, p in probs.items():
            p = np.asarray(p, dtype=np.float32)
            shape = (self.steps, self.teachers[t]["num_classes"])
            if p.shape != shape:
                raise ValueError(f"{where}: teacher {t!r} probabilities shaped {p.shape}, expected {shape}")
            if not np.isfinite(p).all() or (p < 0).any():
                raise ValueError(f"{where}: teacher {t!r} probabilities hold non-finite or negative values")
            sums = p.sum(axis=1, dtype=np.float64)
            if np.abs(sums - 1.0).max() > ROW_SUM_TOLERANCE:
                raise ValueError(f"{where}: teacher {t!r} rows sum to {sums.tolist()}, not 1")
            checked[t] = p
        video = meta.get("video")
        last = self._buf_meta[-1].get("video") if self._buf_meta else None
        # Cut only between videos (module docstring): a shard never splits a video.
        if len(self._buf_meta) >= self.clips_per_shard and (video is None or video != last):
            self.flush()
        self._buf_audio.append(audio)
        for t, p in checked.items():
            self._buf_probs[t].append(p)
        self._buf_meta.append(dict(meta))
        self._buf_keys.append(self._count(meta))

    def flush(self) -> None:
        """Write the buffered clips as one shard (no-op when empty): arrays, index lines, keys, then the manifest."""
        if not self._buf_meta:
            return
        name = f"shard-{len(self.shards):06d}"
        files = shard_files(self.out_dir, name, list(self.teachers))
        atomic_np_save(files["audio"], np.stack(self._buf_audio))
        for t in self.teachers:
            atomic_np_save(files[t], np.stack(self._buf_probs[t]))
        lines = []
        for row, m in enumerate(self._buf_meta):
            rec = {"clip": self.num_clips + row, **m, "shard": name, "row": row}
            lines.append(json.dumps(rec) + "\n")
        keys = keys_array(self._buf_keys)
        for fname, data in ((INDEX, "".join(lines).encode("utf-8")), (KEYS, keys.tobytes())):
            with open(os.path.join(self.out_dir, fname), "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                if fname == INDEX:
                    self.index_bytes = f.tell()
        n = len(self._buf_meta)
        self.shards.append({"name": name, "num_clips": n})
        self.num_clips += n
        self.silent_clips += sum(bool(m.get("silent")) for m in self._buf_meta)
        for k in np.unique(keys["video"][keys["video"] != 0]).tolist():
            i = np.searchsorted(self._done, k)
            if k not in self._new and not (i < len(self._done) and self._done[i] == k):
                self._new.add(k)
                self.num_videos += 1
        self._write_manifest()  # the commit point: from here on the shard exists
        self._buf_audio.clear()
        for t in self.teachers:
            self._buf_probs[t].clear()
        self._buf_meta.clear()
        self._buf_keys.clear()

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            **self._settings(),
            "clip_seconds": self.clip_samples / self.sample_rate,
            "teachers": self.teachers,
            "num_clips": self.num_clips,
            "num_videos": self.num_videos,
            "shards": self.shards,
            "silent_clips": self.silent_clips,
            "audio_hours": self.num_clips * self.clip_samples / self.sample_rate / 3600.0,
            "tail": {"num_clips": self.num_clips, "index_bytes": self.index_bytes},
            **self.extra,
        }

    def _write_manifest(self) -> None:
        atomic_write_text(os.path.join(self.out_dir, MANIFEST), json.dumps(self.manifest(), indent=1) + "\n")

    def update(self, **extra: Any) -> None:
        """Set manifest fields of the caller's own (``complete``, ``part``, ...) and write the manifest now."""
        self.extra.update(extra)
        self._write_manifest()

    def close(self) -> None:
        """Flush the last shard and write the final manifest."""
        if self._closed:
            return
        self.flush()
        self._write_manifest()
        self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        # On an exception the buffered clips are dropped (their videos are redone on a rerun) rather than
        # committed from a state the failure may have left inconsistent.
        if exc_type is None:
            self.close()


_MANAGED = frozenset(  # the writer's own manifest fields; any other is kept from the folder on resumption
    "format sample_rate clip_samples steps frame_every clip_seconds teachers num_clips num_videos shards silent_clips "
    "audio_hours tail".split()
)
