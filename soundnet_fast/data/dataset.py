"""One dataset from one shard folder, a folder of parts, or several of either (docs/design.md#data-at-scale).

A folder of parts is what ``prepare --part K/N`` writes: ``OUT/part-0000K-of-0000N/``, each a shard folder with
``"part": {"index": K, "count": N}`` and ``"complete"`` in its manifest. :class:`Dataset` finds the parts, checks that
they were made the same way (:func:`disagreements`), lists missing and unfinished parts (refused unless
``allow_partial``), numbers every clip (parts in the order given, each folder's parts by name, then shard and
row order) and orders them canonically by clip key (:mod:`soundnet_fast.data.keys`): the order the loader samples
from, the same however the clips were split into parts or folders.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from soundnet_fast.data.keys import read_clip_keys, sort_keys
from soundnet_fast.data.parts import part_name
from soundnet_fast.data.shards import INDEX, MANIFEST, ShardFormatError, manifest_path, read_manifest, shard_files

# Settings every part must share: they decide what a clip's audio and targets are.
SETTINGS = ("sample_rate", "clip_samples", "steps", "frame_every")
# Compared when both parts record them (older folders do not): how the audio was mixed and decoded, and frames.
RECORDED = ("mono", "audio_decoder", "frame_decoder")

Paths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def _digest(video: np.ndarray, ordinal: np.ndarray) -> str:
    """BLAKE2b-128 of the clip count and the keys in the given order."""
    digest = hashlib.blake2b(str(len(video)).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(video).tobytes())
    digest.update(np.ascontiguousarray(ordinal).tobytes())
    return digest.hexdigest()


class DatasetIncomplete(ShardFormatError):
    """Parts are missing or unfinished and partial data was not allowed; the message lists them."""


@dataclass(frozen=True)
class Part:
    """One shard folder of a dataset: ``name`` is its path as given (the folder given, joined with the part's own)."""

    folder: str
    name: str
    manifest: dict[str, Any]

    @property
    def index(self) -> tuple[int, int] | None:
        """(K, N) for part K of N, None for a folder not written as a part."""
        p = self.manifest.get("part")
        return (int(p["index"]), int(p["count"])) if isinstance(p, dict) else None

    @property
    def complete(self) -> bool:
        """False while its ``prepare`` runs, or after one was killed; folders that do not say are complete."""
        return self.manifest.get("complete", True) is not False


def find_parts(path: str | os.PathLike[str]) -> tuple[list[Part], int | None]:
    """The parts in ``path`` and the part count N of the split it holds (None when it is one folder).

    ``path`` is a shard folder (one part, even when written as one) or a folder whose sub-folders are shard folders
    (those with a manifest, in name order). Raises ShardFormatError when it is neither, or holds parts of
    different splits or the same part twice.
    """
    given = os.fspath(path)
    folder = os.path.abspath(given)
    if os.path.isfile(manifest_path(folder)) or not os.path.isdir(folder):
        return [Part(folder, given, read_manifest(folder))], None  # read_manifest names a missing file
    subs = sorted(e.name for e in os.scandir(folder) if e.is_dir() and os.path.isfile(os.path.join(e.path, MANIFEST)))
    if not subs:
        raise ShardFormatError(
            f"{os.path.join(given, MANIFEST)}: no such file, and no part folders with one in {given} "
            "(not a shard folder written by `soundnet-fast prepare`?)"
        )
    parts = [
        Part(os.path.join(folder, s), os.path.join(given, s), read_manifest(os.path.join(folder, s))) for s in subs
    ]
    counts = {p.index[1] for p in parts if p.index}
    if len(counts) > 1:
        raise ShardFormatError(f"{given}: holds parts of splits into {sorted(counts)} parts; keep one split per folder")
    have = [p.index[0] for p in parts if p.index]
    twice = sorted({k for k in have if have.count(k) > 1})
    if twice:
        raise ShardFormatError(f"{given}: more than one folder holds part {twice} of {counts.pop()}")
    return parts, counts.pop() if counts else None


def _teacher_identity(t: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two parts' teacher the same: class count, names, and the weight file's sha256 (else the spec)."""
    return int(t["num_classes"]), t.get("class_names"), t.get("sha256") or t.get("spec")


def disagreements(parts: Sequence[Part]) -> list[str]:
    """One line per part whose settings differ from the first part's, naming the part, the setting and both values."""
    out = []
    ref = parts[0]
    for p in parts[1:]:
        m, r = p.manifest, ref.manifest
        diffs = [f"{k} = {m[k]} (vs {r[k]})" for k in SETTINGS if float(m[k]) != float(r[k])]
        diffs += [f"{k} = {m[k]!r} (vs {r[k]!r})" for k in RECORDED if k in m and k in r and m[k] != r[k]]
        if sorted(m["teachers"]) != sorted(r["teachers"]):
            diffs.append(f"teachers {sorted(m['teachers'])} (vs {sorted(r['teachers'])})")
        else:
            for t in sorted(m["teachers"]):
                a, b = m["teachers"][t], r["teachers"][t]
                if _teacher_identity(a) != _teacher_identity(b):
                    what = "sha256" if a.get("sha256") and b.get("sha256") and a["sha256"] != b["sha256"] else "spec"
                    diffs.append(f"teacher {t}: {a['num_classes']} classes, {what} {a.get(what)} "
                                 f"(vs {b['num_classes']} classes, {what} {b.get(what)})")  # fmt: skip
        if diffs:
            out.append(f"{p.name}: {'; '.join(diffs)}, unlike {ref.name}: parts of one dataset must be prepared alike")
    return out


class Dataset:
    """The clips of ``paths`` (a folder, a folder of parts, or a list of either) as one numbered set.

    Attributes: ``parts`` (those read), ``missing`` and ``unfinished`` (names), ``manifest`` (the first part's
    settings and teachers with the dataset's ``num_clips`` / ``num_videos``), ``num_clips``, ``offsets`` (int64
    (shards + 1,): clip id -> shard), ``canonical`` (clip ids in canonical order, (num_clips,)) and
    ``fingerprint`` (a digest of the canonical clip keys: equal fingerprints mean the same clips in the same
    order, whatever the parts) and ``layout_fingerprint`` (of the keys in storage order). Raises ShardFormatError
    naming the folder or part that is wrong, and
    :class:`DatasetIncomplete` for missing or unfinished parts unless ``allow_partial``. ``order=False`` skips the
    clip keys (no ``canonical`` / fingerprints): :func:`scan`.
    """

    def __init__(self, paths: Paths, *, allow_partial: bool = False, order: bool = True) -> None:
        roots = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        if not roots:
            raise ValueError("no shard folder given")
        self.parts: list[Part] = []
        splits: list[tuple[str, int]] = []
        for root in roots:
            found, count = find_parts(root)
            self.parts += found
            if count is not None:
                splits.append((os.fspath(root), count))
        # A folder of a split into N parts lacks part K when no folder given holds it (another may: a split can be
        # spread over several folders). A part folder given on its own is a choice: its siblings are not required.
        present = {p.index for p in self.parts if p.index}
        self.missing = [os.path.join(r, part_name(k, n)) for r, n in splits for k in range(n) if (k, n) not in present]
        seen: dict[str, str] = {}
        for p in self.parts:
            if p.folder in seen:
                raise ShardFormatError(f"{p.name}: given twice (also as {seen[p.folder]})")
            seen[p.folder] = p.name
        problems = disagreements(self.parts)
        if problems:
            raise ShardFormatError(problems[0])
        self.unfinished = [p.name for p in self.parts if not p.complete]
        if (self.missing or self.unfinished) and not allow_partial:
            raise DatasetIncomplete(
                f"{os.fspath(roots[0])}: "
                + "; ".join(
                    f"{what}: {', '.join(names)}"
                    for what, names in (("missing parts", self.missing), ("unfinished parts", self.unfinished))
                    if names
                )
                + " (run `soundnet-fast prepare` for them; --allow-partial trains on the shards that are complete)"
            )
        self.root = os.path.abspath(os.fspath(roots[0]))
        self.shard_names: list[str] = []
        shard_part, counts = [], []
        for i, p in enumerate(self.parts):
            listed = [int(s["num_clips"]) for s in p.manifest["shards"]]
            if sum(listed) != int(p.manifest["num_clips"]):
                raise ShardFormatError(
                    f"{os.path.join(p.name, MANIFEST)}: num_clips {p.manifest['num_clips']} but its shards hold "
                    f"{sum(listed)}"
                )
            self.shard_names += [s["name"] for s in p.manifest["shards"]]
            shard_part += [i] * len(listed)
            counts += listed
        self.shard_part = np.array(shard_part, dtype=np.int32)
        self.offsets = np.concatenate([[0], np.cumsum(np.array(counts, dtype=np.int64))]).astype(np.int64)
        self.num_clips = int(self.offsets[-1])
        first = self.parts[0].manifest
        self.manifest: dict[str, Any] = {
            **{k: v for k, v in first.items() if k not in ("shards", "part", "complete", "tail")},
            "num_clips": self.num_clips,
            "num_videos": sum(int(p.manifest.get("num_videos", 0)) for p in self.parts),
            "num_shards": len(self.shard_names),
            "silent_clips": sum(int(p.manifest.get("silent_clips", 0)) for p in self.parts),
            "audio_hours": sum(float(p.manifest.get("audio_hours", 0.0)) for p in self.parts),
        }
        if order:
            self._order_clips()

    def _order_clips(self) -> None:
        keys = np.concatenate([read_clip_keys(p.folder, p.manifest) for p in self.parts])
        order = sort_keys(keys)
        video, ordinal = keys["video"][order], keys["ordinal"][order]
        # Sorted by video (stably), each video's clips must count 0, 1, ...: a video stored in two places (parts that
        # overlap) shows as a count that does not go up. Without that, the order is the (video, ordinal) order.
        bad = np.flatnonzero((video[1:] == video[:-1]) & (ordinal[1:] <= ordinal[:-1]))
        if len(bad):
            i = int(bad[0]) + 1
            run = np.arange(np.searchsorted(video, video[i], "left"), np.searchsorted(video, video[i], "right"))
            j = int(run[(ordinal[run] == ordinal[i]) & (run != i)][0])
            raise ShardFormatError(
                f"{self.describe(int(order[j]))} and {self.describe(int(order[i]))} are the same clip (video key "
                f"{int(video[i]):016x}, clip {int(ordinal[i])} of it): the parts overlap (prepared from the same "
                "videos twice, or with different --part N?)"
            )
        self.fingerprint = _digest(video, ordinal)
        self.layout_fingerprint = _digest(keys["video"], keys["ordinal"])
        self.canonical = order.astype(np.int32 if self.num_clips < 2**31 else np.int64)

    # ------------------------------------------------------------------------------------------ lookup
    def locate(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, row) of clip ids: int64 arrays shaped like ``clips``."""
        shard = np.searchsorted(self.offsets, clips, side="right") - 1
        return shard, clips - self.offsets[shard]

    def files(self, shard: int, teachers: Sequence[str]) -> dict[str, str]:
        """Paths of shard ``shard``'s arrays: ``{"audio": ..., teacher: ...}``."""
        return shard_files(self.parts[self.shard_part[shard]].folder, self.shard_names[shard], teachers)

    def describe(self, clip: int) -> str:
        """``PART: shard-000001 row 3 (video ...)`` for a clip id (reads that part's index: for messages only)."""
        (shard,), (row,) = self.locate(np.array([clip]))
        part = self.parts[self.shard_part[shard]]
        name = self.shard_names[shard]
        from soundnet_fast.data.shards import read_index

        video = next((r.get("video") for r in read_index(part.folder, part.manifest)
                      if r.get("shard") == name and r.get("row") == row), None)  # fmt: skip
        return f"{os.path.join(part.name, INDEX)}: {name} row {row}" + (f" (video {video})" if video else "")


def scan(paths: Paths, *, allow_partial: bool = False) -> Dataset:
    """The parts, checks and merged manifest of ``paths`` without reading any clip key (a dataset's settings)."""
    return Dataset(paths, allow_partial=allow_partial, order=False)


__all__ = ["RECORDED", "SETTINGS", "Dataset", "DatasetIncomplete", "Part", "disagreements", "find_parts", "scan"]
