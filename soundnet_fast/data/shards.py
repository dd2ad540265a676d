"""Training shards: the format, the writer, and the loader (docs/design.md#distillation, #data-path).

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
      failures.jsonl               one line per failed video: {"video", "reason", ...} (written by prepare)

The manifest is the source of truth: a shard exists once the manifest lists it. Shard files are written
atomically first, then their index lines are appended, then the manifest is replaced atomically; a run
killed anywhere in between leaves index lines for an unlisted shard, which readers ignore and the next
writer truncates. Shards hold whole videos (a shard is cut only between videos), so "this video is done"
is simply "this video is in the index".

Why one large ``.npy`` per shard rather than a file per clip: numpy memory-maps crops of one large file at
~1,250 clips/s per core while per-clip files read at ~216 clips/s (docs/design.md#data-path), and DALI's
``fn.readers.numpy`` reads row crops of the same files (``roi_start`` / ``roi_end``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from soundnet_fast.fsutil import atomic_np_save, atomic_open, atomic_write_text, read_jsonl

FORMAT = "soundnet_fast.shards/1"
MANIFEST = "manifest.json"
INDEX = "index.jsonl"
FAILURES = "failures.jsonl"
INPUT_SCALE = 256.0  # waveform in [-1, 1] times 256, docs/design.md#input
ROW_SUM_TOLERANCE = 1e-3  # float32 softmax rows over 1000 classes sum to 1 within ~1e-6; 1e-3 flags real errors
_NAME = re.compile(r"^[A-Za-z0-9_]+$")  # teacher names become file names

Backend = Literal["numpy", "dali", "auto"]


class ShardFormatError(ValueError):
    """A shard folder or one of its files is not what the format promises; the message names the file."""


# ------------------------------------------------------------------------------------------ reading
def _manifest_path(path: str | os.PathLike[str]) -> str:
    path = os.fspath(path)
    return os.path.join(path, MANIFEST) if os.path.isdir(path) else path


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``manifest.json`` (``path`` is the shard folder or the manifest file)."""
    mpath = _manifest_path(path)
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
    folder = os.path.dirname(_manifest_path(path))
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
    ``{"spec": str, "num_classes": int, "class_names": list[str] | None}`` (none at all gives audio-only
    shards). Opening a folder that already
    holds a manifest resumes it (the settings must match); index lines of unlisted shards are dropped.
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
        self.sample_rate, self.clip_samples, self.steps = int(sample_rate), int(clip_samples), int(steps)
        self.frame_every = float(frame_every)
        self.clips_per_shard = int(clips_per_shard)
        self.extra: dict[str, Any] = dict(extra or {})
        self.shards: list[dict[str, Any]] = []
        self.num_clips = self.silent_clips = 0
        self.videos: set[str] = set()
        self._buf_audio: list[np.ndarray] = []
        self._buf_probs: dict[str, list[np.ndarray]] = {t: [] for t in self.teachers}
        self._buf_meta: list[dict[str, Any]] = []
        self._closed = False
        os.makedirs(self.out_dir, exist_ok=True)
        if os.path.exists(os.path.join(self.out_dir, MANIFEST)):
            self._resume()
        else:
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
        if old_t != new_t:
            raise ShardFormatError(
                f"{mpath}: holds teachers {old_t}, this run asks for {new_t}; use a new output folder"
            )
        self.shards = [dict(s) for s in old["shards"]]
        self.extra = {**{k: v for k, v in old.items() if k not in _MANAGED}, **self.extra}
        records = read_index(self.out_dir, old)
        self.num_clips = len(records)
        self.silent_clips = sum(bool(r.get("silent")) for r in records)
        self.videos = {str(r["video"]) for r in records if "video" in r}
        # Rewrite the index without the lines of unlisted shards, so appends continue from a clean end.
        ipath = os.path.join(self.out_dir, INDEX)
        with atomic_open(ipath, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        for name in os.listdir(self.out_dir):  # temporaries of a killed atomic write
            if name.startswith(".tmp-"):
                os.unlink(os.path.join(self.out_dir, name))

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

    def flush(self) -> None:
        """Write the buffered clips as one shard (no-op when empty)."""
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
        with open(os.path.join(self.out_dir, INDEX), "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        n = len(self._buf_meta)
        self.shards.append({"name": name, "num_clips": n})
        self.num_clips += n
        self.silent_clips += sum(bool(m.get("silent")) for m in self._buf_meta)
        self.videos.update(str(m["video"]) for m in self._buf_meta if "video" in m)
        self._write_manifest()  # the commit point: from here on the shard exists
        self._buf_audio.clear()
        for t in self.teachers:
            self._buf_probs[t].clear()
        self._buf_meta.clear()

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            **self._settings(),
            "clip_seconds": self.clip_samples / self.sample_rate,
            "teachers": self.teachers,
            "num_clips": self.num_clips,
            "num_videos": len(self.videos),
            "shards": self.shards,
            "silent_clips": self.silent_clips,
            "audio_hours": self.num_clips * self.clip_samples / self.sample_rate / 3600.0,
            **self.extra,
        }

    def _write_manifest(self) -> None:
        atomic_write_text(os.path.join(self.out_dir, MANIFEST), json.dumps(self.manifest(), indent=1) + "\n")

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


_MANAGED = frozenset(
    (
        "format",
        "sample_rate",
        "clip_samples",
        "steps",
        "frame_every",
        "clip_seconds",
        "teachers",
        "num_clips",
        "num_videos",
        "shards",
        "silent_clips",
        "audio_hours",
    )
)


# ------------------------------------------------------------------------------------------ loading
def epoch_order(
    num_clips: int,
    epoch: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    shard_id: int = 0,
    num_shards: int = 1,
    drop_last: bool = True,
) -> np.ndarray:
    """Global clip ids this rank reads in ``epoch``, in order: the one sampling order every backend follows.

    A seeded permutation per epoch (``numpy.random.default_rng([seed, epoch])``), split round-robin across
    ``num_shards`` ranks as ``torch.utils.data.DistributedSampler`` does: with ``drop_last`` the tail that
    does not divide evenly is dropped (shares are disjoint); without it the order wraps around to pad the
    last rank's share (a few clips are then read twice per epoch).
    """
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
    order = np.random.default_rng([seed, epoch]).permutation(num_clips) if shuffle else np.arange(num_clips)
    if drop_last:
        order = order[: (num_clips // num_shards) * num_shards]
    elif num_clips % num_shards:
        total = math.ceil(num_clips / num_shards) * num_shards
        order = np.resize(order, total)  # np.resize repeats the array cyclically
    return order[shard_id::num_shards]


class ShardLoader:
    """Batches ``(audio, targets)`` from a shard folder, in an order the project owns.

    ``audio`` is float32 (B, 1, clip_samples), the int16 PCM scaled to [-1, 1] times ``scale`` (x256,
    docs/design.md#input), on ``device``; ``targets`` maps each teacher name to float32 (B, C, steps), the model's
    (B, C, T) layout. Backends: ``"numpy"`` memory-maps the shards (the CPU default, the faster one there);
    ``"dali"`` reads them with DALI's numpy reader and converts int16 on the device (the GPU default;
    a CPU-only pipeline when ``device`` is the CPU); ``"auto"`` picks DALI for a CUDA device when it imports.
    Every backend yields the same clips in the same order for the same seed (:func:`epoch_order`).

    ``prefetch`` batches are read ahead in a thread by the numpy backend (default: 2 on a GPU, 0 on a CPU).

    Epochs: ``len(loader)`` is batches per epoch; iterating resumes at the current position and, at the end
    of an epoch, moves on to the next. ``set_epoch(e)`` switches to epoch ``e`` at its start (a no-op when
    ``e`` is the current epoch, so calling it after ``load_state_dict`` keeps the restored position).
    ``state_dict()`` / ``load_state_dict()`` hold the epoch and the number of batches already yielded.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        shard_id: int = 0,
        num_shards: int = 1,
        drop_last: bool = True,
        backend: Backend = "auto",
        device: Any = "cpu",
        teachers: Sequence[str] | None = None,
        scale: float = INPUT_SCALE,
        num_threads: int = 2,
        prefetch: int | None = None,
    ) -> None:
        import torch

        self.folder = os.path.dirname(os.path.abspath(_manifest_path(path)))
        self.manifest = read_manifest(self.folder)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
        all_teachers = list(self.manifest["teachers"])
        self.teachers = all_teachers if teachers is None else list(teachers)
        unknown = [t for t in self.teachers if t not in all_teachers]
        if unknown:
            raise ValueError(f"{self.folder}: no teacher {unknown}; the shards hold {all_teachers}")
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.shard_id, self.num_shards, self.drop_last = int(shard_id), int(num_shards), bool(drop_last)
        self.device = torch.device(device)
        self.scale = float(scale)
        self.num_threads = int(num_threads)
        self.clip_samples, self.steps = int(self.manifest["clip_samples"]), int(self.manifest["steps"])
        self.shard_names = [s["name"] for s in self.manifest["shards"]]
        counts = np.array([int(s["num_clips"]) for s in self.manifest["shards"]], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])  # global clip id -> (shard, row)
        self.num_clips = int(self.offsets[-1])
        if self.num_clips != int(self.manifest["num_clips"]):
            raise ShardFormatError(
                f"{self.folder}/{MANIFEST}: num_clips {self.manifest['num_clips']} but its shards hold {self.num_clips}"
            )
        self._arrays = [self._open_shard(name, int(n)) for name, n in zip(self.shard_names, counts, strict=True)]
        self.backend = self._pick_backend(backend)
        # A reading thread pays on a GPU (it overlaps the device's step); on a CPU the step needs the same cores,
        # and on 2 cores the thread measured slower (bench/test_data_bench.py), so it is off there by default.
        self.prefetch = int(prefetch) if prefetch is not None else (2 if self.device.type == "cuda" else 0)
        self.epoch = 0
        self.position = 0
        if len(self) == 0:
            raise ValueError(
                f"{self.folder}: {self.num_clips} clips give no batch of {batch_size} for rank "
                f"{shard_id} of {num_shards} (drop_last={drop_last})"
            )

    def _open_shard(self, name: str, n: int) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for key, fpath in shard_files(self.folder, name, self.teachers).items():
            try:
                a = np.load(fpath, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ShardFormatError(f"{fpath}: cannot memory-map ({e})") from e
            if key == "audio":
                want, dtype = (n, self.clip_samples), np.dtype(np.int16)
            else:
                want, dtype = (n, self.steps, int(self.manifest["teachers"][key]["num_classes"])), np.dtype(np.float32)
            if a.shape != want or a.dtype != dtype:
                raise ShardFormatError(f"{fpath}: holds {a.dtype} {a.shape}, the manifest promises {dtype} {want}")
            arrays[key] = a
        return arrays

    def _pick_backend(self, backend: str) -> str:
        if backend not in ("numpy", "dali", "auto"):
            raise ValueError(f"backend must be 'numpy', 'dali' or 'auto', got {backend!r}")
        if backend == "auto":
            if self.device.type != "cuda":
                return "numpy"
            try:
                import nvidia.dali  # noqa: F401
            except ImportError:
                return "numpy"
            return "dali"
        if backend == "dali":
            try:
                import nvidia.dali  # noqa: F401
            except ImportError as e:
                raise ImportError("backend='dali' needs NVIDIA DALI: pip install 'soundnet-fast[dali]'") from e
        return backend

    # --------------------------------------------------------------------------------- sampling
    def order(self, epoch: int | None = None) -> np.ndarray:
        """Global clip ids of this rank for ``epoch`` (default: the current one), in reading order."""
        return epoch_order(
            self.num_clips,
            self.epoch if epoch is None else epoch,
            seed=self.seed,
            shuffle=self.shuffle,
            shard_id=self.shard_id,
            num_shards=self.num_shards,
            drop_last=self.drop_last,
        )

    def locate(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, row) of global clip ids."""
        shard = np.searchsorted(self.offsets, clips, side="right") - 1
        return shard, clips - self.offsets[shard]

    def __len__(self) -> int:
        per_rank = self.num_clips // self.num_shards if self.drop_last else math.ceil(self.num_clips / self.num_shards)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_clips": self.num_clips,
            "batch_size": self.batch_size,
            "shard_id": self.shard_id,
            "num_shards": self.num_shards,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the epoch and position; the settings that define the order must match."""
        for key in ("seed", "num_clips", "batch_size", "shard_id", "num_shards", "shuffle", "drop_last"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state has {key} = {state[key]!r} but this loader has "
                    f"{getattr(self, key)!r}: the batch order would differ"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    # -------------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        if self.position >= len(self):  # a state saved right after an epoch's last batch
            self.epoch, self.position = self.epoch + 1, 0
        order = self.order()
        batches = [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.position, len(self))]
        if self.backend == "numpy":
            source = _prefetched(self._numpy_batches(batches), self.prefetch)
        else:
            source = self._dali_batches(batches)
        for batch in source:
            self.position += 1  # counted when handed over: state_dict() now says "this batch is consumed"
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def _numpy_batches(self, batches: list[np.ndarray]) -> Iterator[tuple[Any, dict[str, Any]]]:
        import torch

        cuda = self.device.type == "cuda"
        factor = np.float32(self.scale / 32768.0)  # int16 -> [-1, 1) -> x scale
        for clips in batches:
            b = len(clips)
            # On a GPU the int16 rows travel (half the bytes of float32) from pinned memory and are converted on
            # the device, as the DALI backend does; on the CPU they are converted straight into the batch.
            audio = torch.empty(
                (b, 1, self.clip_samples), dtype=torch.int16 if cuda else torch.float32, pin_memory=cuda
            )
            targets = {
                t: torch.empty(
                    (b, int(self.manifest["teachers"][t]["num_classes"]), self.steps),
                    dtype=torch.float32,
                    pin_memory=cuda,
                )
                for t in self.teachers
            }
            a_np = audio.numpy()[:, 0]
            t_np = {t: v.numpy() for t, v in targets.items()}
            shard, row = self.locate(clips)
            for s in np.unique(shard):
                pos = np.nonzero(shard == s)[0]
                arrays = self._arrays[s]
                # Row by row from the memory map: each clip is one contiguous read straight into the batch
                # (fancy indexing would copy the same bytes twice).
                for p, r in zip(pos.tolist(), row[pos].tolist(), strict=True):
                    if cuda:
                        a_np[p] = arrays["audio"][r]
                    else:
                        np.multiply(arrays["audio"][r], factor, out=a_np[p], dtype=np.float32)
                    for t in self.teachers:
                        t_np[t][p] = arrays[t][r].T
            if cuda:
                x = audio.to(self.device, non_blocking=True).float().mul_(float(factor))
                yield x, {t: v.to(self.device, non_blocking=True) for t, v in targets.items()}
            else:
                yield audio, targets

    def _dali_batches(self, batches: list[np.ndarray]) -> Iterator[tuple[Any, dict[str, Any]]]:
        """The same batches through DALI: ``fn.readers.numpy`` reads row crops (``roi_start``/``roi_end`` on axis
        0) of the shard files in the order :meth:`order` gives; on a GPU the int16 rows go to the device and are
        converted there (half the bytes of float32 over PCIe); CPU-only pipelines run with ``device_id=None``."""
        from nvidia.dali import fn, pipeline_def, types

        if not batches:
            return
        bsz, n = self.batch_size, len(batches)
        sizes = [len(b) for b in batches]
        # DALI batches are fixed-size: a short last batch (drop_last=False) is padded by wrapping, then trimmed.
        flat = np.concatenate([np.resize(b, bsz) for b in batches])
        shard, row = self.locate(flat)
        paths = [shard_files(self.folder, name, self.teachers) for name in self.shard_names]
        rois = [[np.array([r], np.int32) for r in row[i * bsz : (i + 1) * bsz]] for i in range(n)]
        gpu = self.device.type == "cuda"
        factor = self.scale / 32768.0  # int16 -> [-1, 1) -> x scale, as the numpy backend

        @pipeline_def(batch_size=bsz, num_threads=self.num_threads, device_id=(self.device.index or 0) if gpu else None,
                      prefetch_queue_depth=2)  # fmt: skip
        def pipeline():  # type: ignore[no-untyped-def]
            start = fn.external_source(source=iter(rois), dtype=types.INT32, no_copy=False)
            end = start + 1
            outs = []
            for key in ["audio", *self.teachers]:
                x = fn.readers.numpy(files=[paths[s][key] for s in shard], roi_start=start, roi_end=end, roi_axes=[0],
                                     random_shuffle=False, name=f"read_{key}")  # fmt: skip
                if gpu:
                    x = x.gpu()
                if key == "audio":  # (1, L) int16 -> (1, L) float32, converted on the pipeline's device
                    x = fn.cast(x, dtype=types.FLOAT) * factor
                else:  # (1, steps, C) -> (C, steps), the model's layout
                    x = fn.transpose(fn.reshape(x, shape=[self.steps, -1]), perm=[1, 0])
                outs.append(x)
            return tuple(outs)

        pipe = pipeline()
        pipe.build()
        for i in range(n):
            outs = pipe.run()
            tensors = [self._from_dali(o, gpu)[: sizes[i]] for o in outs]
            yield tensors[0], dict(zip(self.teachers, tensors[1:], strict=True))

    def _from_dali(self, tensor_list: Any, gpu: bool) -> Any:
        import torch

        if not gpu:
            return torch.from_numpy(np.asarray(tensor_list.as_array()))
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = tensor_list.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch.float32, device=self.device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(self.device))
        return out


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _prefetched(source: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``source`` in a background thread, ``depth`` items ahead (numpy copies release the GIL, so reading
    the next batch overlaps the training step). Stopping early stops the thread."""
    if depth <= 0:
        yield from source
        return
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer, raised there
            put(_Raised(e))

    thread = threading.Thread(target=work, name="ShardLoader-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)
