"""`soundnet-fast inspect SHARDS`: the manifest, the counts, and the teachers' top classes for a few clips."""

from __future__ import annotations

import argparse
import os
from collections import Counter
from typing import Any

import numpy as np

from soundnet_fast.console import stdout_console
from soundnet_fast.data.shards import (
    ShardFormatError,
    manifest_path,
    read_failures,
    read_index,
    read_manifest,
    shard_files,
)
from soundnet_fast.errors import UsageError


def summarize_shards(path: str | os.PathLike[str], clips: int = 3, top: int = 3, seed: int = 0) -> dict[str, Any]:
    """Everything `inspect` prints, as a dict: manifest settings, counts, failures by kind, sample clips."""
    manifest = read_manifest(path)
    folder = os.path.dirname(os.path.abspath(manifest_path(path)))
    index = read_index(folder, manifest)
    failures = read_failures(folder)
    teachers = list(manifest["teachers"])
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(index), size=min(clips, len(index)), replace=False).tolist()) if index else []
    samples = []
    for i in picks:
        rec = index[i]
        files = shard_files(folder, rec["shard"], teachers)
        audio = np.load(files["audio"], mmap_mode="r")[rec["row"]]
        entry: dict[str, Any] = {
            "clip": rec["clip"],
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
        samples.append(entry)
    return {
        "folder": folder,
        "manifest": {k: v for k, v in manifest.items() if k not in ("teachers", "shards")},
        "teachers": {t: {k: v for k, v in m.items() if k != "class_names"} for t, m in manifest["teachers"].items()},
        "num_shards": len(manifest["shards"]),
        "index_clips": len(index),
        "failures": dict(Counter(str(r.get("kind", "error")) for r in failures)),
        "samples": samples,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", help="a shard folder written by `soundnet-fast prepare`")
    p.add_argument("--clips", type=int, default=3, help="how many clips to show (default %(default)s)")
    p.add_argument("--top", type=int, default=3, help="top classes per teacher step (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="which clips: a seeded random pick (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    try:
        s = summarize_shards(args.shards, clips=args.clips, top=args.top, seed=args.seed)
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
    return 0
