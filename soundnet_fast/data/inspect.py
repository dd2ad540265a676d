"""`soundnet-fast inspect SHARDS...`: the manifest, the counts, the parts (missing, unfinished, or made differently)
and the teachers' top classes for a few clips. SHARDS is a shard folder, a folder of parts, or several
(docs/design.md#data-at-scale)."""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from soundnet_fast.console import stdout_console
from soundnet_fast.data.dataset import Part, disagreements, find_parts
from soundnet_fast.data.keys import tail_current
from soundnet_fast.data.parts import part_name
from soundnet_fast.data.shards import INDEX, ShardFormatError, read_failures, read_index, shard_files
from soundnet_fast.errors import UsageError


def _index_lines(part: Part) -> int:
    """Lines of the part's index that belong to listed shards (a byte count when the manifest's tail is current)."""
    path = os.path.join(part.folder, INDEX)
    if tail_current(part.manifest) and os.path.exists(path):
        with open(path, "rb") as f:
            return f.read(int(part.manifest["tail"]["index_bytes"])).count(b"\n")
    return len(read_index(part.folder, part.manifest))


def summarize_shards(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], clips: int = 3, top: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Everything `inspect` prints, as a dict: settings, counts, failures by kind, parts (``parts``, ``missing``,
    ``unfinished``, ``problems``: parts whose settings disagree), and a few sample clips."""
    roots = [path] if isinstance(path, str | os.PathLike) else list(path)
    parts: list[Part] = []
    splits = []
    for root in roots:
        found, count = find_parts(root)
        parts += found
        if count is not None:
            splits.append((os.fspath(root), count))
    present = {p.index for p in parts if p.index}
    missing = [os.path.join(r, part_name(k, n)) for r, n in splits for k in range(n) if (k, n) not in present]
    first = parts[0].manifest
    teachers = list(first["teachers"])
    counts = [int(p.manifest["num_clips"]) for p in parts]
    manifest = {k: v for k, v in first.items() if k not in ("teachers", "shards", "tail", "part", "complete")}
    for key in ("num_clips", "num_videos", "silent_clips", "audio_hours"):
        manifest[key] = sum(type(first.get(key, 0))(p.manifest.get(key, 0)) for p in parts)
    failures: Counter = Counter()
    for p in parts:
        failures.update(str(r.get("kind", "error")) for r in read_failures(p.folder))
    rng = np.random.default_rng(seed)
    total = sum(counts)
    picks = sorted(rng.choice(total, size=min(clips, total), replace=False).tolist()) if total else []
    offsets = np.concatenate([[0], np.cumsum(counts)])
    samples = []
    for g in picks:
        i = int(np.searchsorted(offsets, g, side="right") - 1)
        samples.append(_sample(parts[i], g - int(offsets[i]), teachers, top))
    return {
        "folder": parts[0].folder if len(parts) == 1 else os.path.abspath(os.fspath(roots[0])),
        "manifest": manifest,
        "teachers": {t: {k: v for k, v in m.items() if k != "class_names"} for t, m in first["teachers"].items()},
        "num_shards": sum(len(p.manifest["shards"]) for p in parts),
        "index_clips": sum(_index_lines(p) for p in parts),
        "failures": dict(failures),
        "parts": [
            {
                "name": p.name,
                "num_clips": n,
                "num_shards": len(p.manifest["shards"]),
                "complete": p.complete,
                "part": p.index,
            }
            for p, n in zip(parts, counts, strict=True)
        ],  # fmt: skip
        "missing": missing,
        "unfinished": [p.name for p in parts if not p.complete],
        "problems": disagreements(parts),
        "samples": samples,
    }


def _sample(part: Part, clip: int, teachers: list[str], top: int) -> dict[str, Any]:
    """The index record, peak and top teacher classes of clip number ``clip`` of ``part``."""
    manifest = part.manifest
    rec = next(r for r in read_index(part.folder, manifest) if r.get("clip") == clip)
    files = shard_files(part.folder, rec["shard"], teachers)
    audio = np.load(files["audio"], mmap_mode="r")[rec["row"]]
    entry: dict[str, Any] = {
        "clip": rec["clip"],
        "part": part.name,
        "video": rec.get("video"),
        "start": rec.get("start"),
        "frame_times": rec.get("frame_times"),
        "silent": rec.get("silent"),
        "peak": float(np.abs(audio.astype(np.int32)).max()) / 32768.0,
        "teachers": {},
    }
    for t in teachers:
        probs = np.load(files[t], mmap_mode="r")[rec["row"]]  # (steps, C)
        names = manifest["teachers"][t].get("class_names")
        steps = []
        for row in probs:
            best = np.argsort(row)[::-1][:top]
            steps.append([(names[k] if names else f"#{k}", float(row[k])) for k in best])
        entry["teachers"][t] = steps
    return entry


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "shards", nargs="+", help="shard folder written by `soundnet-fast prepare`, a folder of its parts, or several"
    )
    p.add_argument("--clips", type=int, default=3, help="how many clips to show (default %(default)s)")
    p.add_argument("--top", type=int, default=3, help="top classes per teacher step (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="which clips: a seeded random pick (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Print the summary; exit status 1 when parts are missing, unfinished or disagree (the loader would refuse)."""
    from rich.table import Table

    shards = args.shards[0] if isinstance(args.shards, list) and len(args.shards) == 1 else args.shards
    try:
        s = summarize_shards(shards, clips=args.clips, top=args.top, seed=args.seed)
    except (ShardFormatError, OSError) as e:  # soundnet_fast.cli: one line, exit status 2
        raise UsageError(str(e)) from e
    console = stdout_console()
    m = s["manifest"]
    console.print(f"[bold]{s['folder']}[/bold]  ({m.get('format')})")
    console.print(
        f"{m['num_clips']} clips of {m['clip_seconds']:g} s from {m.get('num_videos', '?')} videos in "
        f"{s['num_shards']} shards ({m.get('audio_hours', 0):.2f} h of audio); {m.get('silent_clips', 0)} silent; "
        f"{m['sample_rate']} Hz; {m['steps']} teacher steps per clip, one frame every {m['frame_every']:g} s"
    )
    if s["index_clips"] != m["num_clips"]:
        console.print(f"[red]the index lists {s['index_clips']} clips, the manifest {m['num_clips']}[/red]")
    if s["failures"]:
        console.print("failures: " + ", ".join(f"{k}: {n}" for k, n in sorted(s["failures"].items())))
    for t, info in s["teachers"].items():
        console.print(f"teacher [bold]{t}[/bold]: {info['num_classes']} classes, {info.get('spec')}")
    if len(s["parts"]) > 1 or any(p["part"] for p in s["parts"]):
        common = os.path.commonpath([os.path.abspath(p["name"]) for p in s["parts"]])
        common = os.path.dirname(common) if len(s["parts"]) == 1 else common
        table = Table(title=f"{len(s['parts'])} parts in {common}")
        for col in ("part", "clips", "shards", "status"):
            table.add_column(col, no_wrap=col == "part")
        for p in s["parts"]:
            status = "complete" if p["complete"] else "[red]unfinished[/red]"
            name = os.path.relpath(os.path.abspath(p["name"]), common)
            table.add_row(name, str(p["num_clips"]), str(p["num_shards"]), status)
        console.print(table)
    for what in ("missing", "unfinished"):
        if s[what]:
            console.print(f"[red]{what} parts ({len(s[what])}): {', '.join(s[what])}[/red]")
    for line in s["problems"]:
        console.print(f"[red]{line}[/red]")
    for clip in s["samples"]:
        table = Table(title=f"clip {clip['clip']}: {clip['video']} from {clip['start']} s"
                      f"{' (silent)' if clip['silent'] else ''}, peak {clip['peak']:.3f}")  # fmt: skip
        table.add_column("step")
        table.add_column("frame at")
        for t in clip["teachers"]:
            table.add_column(t)
        times = clip.get("frame_times") or []
        for i in range(m["steps"]):
            cells = [", ".join(f"{name} {p:.2f}" for name, p in clip["teachers"][t][i]) for t in clip["teachers"]]
            table.add_row(str(i), f"{times[i]:.2f} s" if i < len(times) else "", *cells)
        console.print(table)
    return 1 if s["missing"] or s["unfinished"] or s["problems"] else 0
