"""`soundnet-fast extract`: SoundNet features of audio/video files, one .npy per input.

Long inputs run in chunks whose input windows overlap by at least the layer's receptive field and start on
multiples of the layer's hop, so every kept frame sees exactly the samples it sees in one pass
(docs/design.md#lengths-receptive-field-and-hop: pool5 receptive field 17,438 samples, hop 8,192).

One bad input never takes good ones down: every file is decoded and checked on its own
(:func:`soundnet_fast.audio.check_wave`: empty or non-finite audio is a failure, digital silence a warning) before
it joins a batch, and a batch the model fails on runs again one file at a time (:func:`features_by_file`), so
only the files that fail alone are reported, by name and reason, and skipped.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from soundnet_fast.audio import AudioDecodeError, check_wave, load, tile
from soundnet_fast.constants import INPUT_SCALE, SAMPLE_RATE
from soundnet_fast.errors import UsageError, each_alone_on_failure, reason
from soundnet_fast.fsutil import atomic_np_save
from soundnet_fast.model import SoundNet


@dataclass(frozen=True)
class Chunk:
    """Input samples [start, stop) of a waveform, producing the layer's frames [first, last)."""

    start: int
    stop: int
    first: int
    last: int


def plan_chunks(model: SoundNet | type[SoundNet], length: int, layer: str, chunk_samples: int) -> list[Chunk]:
    """Split a ``length``-sample input into chunks whose kept frames equal a single pass exactly."""
    cls = model if isinstance(model, type) else type(model)
    geo = cls.geometry(layer)
    n_frames = _layer_len(cls, length, layer)
    if n_frames <= 0:
        return []
    per_chunk = max(1, chunk_samples // geo.hop)
    chunks: list[Chunk] = []
    for f0 in range(0, n_frames, per_chunk):
        f1 = min(n_frames, f0 + per_chunk)
        # Start on a multiple of the hop so every intermediate grid lines up with the one-pass grid,
        # at or before the first frame's receptive field.
        a = max(0, ((geo.offset + f0 * geo.hop) // geo.hop) * geo.hop)
        b = min(length, geo.offset + (f1 - 1) * geo.hop + geo.receptive_field)
        while b < length and _layer_len(cls, b - a, layer) < f1 - a // geo.hop:
            b = min(length, b + geo.hop)
        chunks.append(Chunk(a, b, f0, f1))
    return chunks


def _layer_len(cls: type[SoundNet], length: int, layer: str) -> int:
    lengths = cls.output_lengths(length)
    return lengths["heads"] if layer in (h.name for h in cls.head_specs) else lengths[layer]


@torch.no_grad()
def features(
    model: SoundNet,
    wave: np.ndarray | Tensor,
    layer: str = "pool5",
    *,
    scale: float = INPUT_SCALE,
    min_seconds: float = 10.0,
    chunk_seconds: float = 120.0,
    device: str | torch.device = "cpu",
    fold: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of a [-1, 1] mono waveform as (T, C) float32, and each frame's time in seconds.

    Waves shorter than ``min_seconds`` are tiled circularly (the original scripts' rule); longer ones run
    in chunks of about ``chunk_seconds`` with bounded memory and the same result as one pass. ``fold``: see
    :func:`features_many`.
    """
    return features_many(
        model,
        [wave],
        layer,
        scale=scale,
        min_seconds=min_seconds,
        chunk_seconds=chunk_seconds,
        device=device,
        fold=fold,
    )[0]


@torch.no_grad()
def features_many(
    model: SoundNet,
    waves: list[np.ndarray] | list[Tensor],
    layer: str = "pool5",
    *,
    batch_size: int = 8,
    scale: float = INPUT_SCALE,
    min_seconds: float = 10.0,
    chunk_seconds: float = 120.0,
    device: str | torch.device = "cpu",
    fold: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`features` for several waveforms; chunks of equal length run together, ``batch_size`` at a time.

    ``fold`` (default): a model in eval mode runs its inference form, BN folded into the convs
    (:meth:`SoundNet.inference`, applied in place; the state dict is unchanged and the features equal the
    plain path's within 1e-5 of their largest value); a model in training mode runs as it is. ``fold=False``:
    the plain ops (a folded model is unfolded in place, :meth:`SoundNet.unfold`)."""
    if fold and not model.training:
        model.inference()
    elif not fold:
        model.unfold()
    cls = type(model)
    hop = cls.geometry(layer).hop
    min_len = max(int(np.ceil(min_seconds * SAMPLE_RATE)), cls.min_length(layer))
    inputs = [torch.from_numpy(tile(np.asarray(w, dtype=np.float32), min_len) * np.float32(scale)) for w in waves]
    # (wave index, chunk) work items, grouped by input length so a batch stacks without padding.
    items = [
        (i, c) for i, x in enumerate(inputs) for c in plan_chunks(cls, len(x), layer, int(chunk_seconds * SAMPLE_RATE))
    ]
    items.sort(key=lambda ic: ic[1].stop - ic[1].start)
    pieces: dict[tuple[int, int], Tensor] = {}
    for s in range(0, len(items), max(1, batch_size)):
        group = items[s : s + batch_size]
        by_len: dict[int, list[tuple[int, Chunk]]] = {}
        for i, c in group:
            by_len.setdefault(c.stop - c.start, []).append((i, c))
        for same in by_len.values():
            x = torch.stack([inputs[i][c.start : c.stop] for i, c in same]).unsqueeze(1).to(device)
            out = model.features(x, layer).float().cpu()
            for (i, c), f in zip(same, out, strict=True):
                lo = c.first - c.start // hop
                pieces[(i, c.first)] = f[:, lo : lo + c.last - c.first]
    results = []
    for i in range(len(inputs)):
        parts = [pieces[k] for k in sorted(k for k in pieces if k[0] == i)]
        feats = torch.cat(parts, dim=1).T.contiguous().numpy()
        results.append((feats, cls.geometry(layer).frame_times(feats.shape[0]).numpy()))
    return results


def output_paths(files: list[str], out_dir: str) -> list[str]:
    """One output per input, mirroring the inputs' folders below their common parent, so inputs with the
    same stem in different folders (or with different extensions) never overwrite each other."""
    parents = [os.path.dirname(os.path.abspath(f)) for f in files]
    root = os.path.commonpath(parents) if parents else ""
    return [os.path.join(out_dir, os.path.relpath(os.path.abspath(f), root) + ".npy") for f in files]


def _pool(feats: np.ndarray, how: str) -> np.ndarray:
    if how == "mean":
        return feats.mean(axis=0)
    if how == "max":
        return feats.max(axis=0)
    return feats


def iter_waves(files: list[str], mono: str) -> Iterator[tuple[str, np.ndarray | Exception, list[str]]]:
    """Each file decoded (:func:`soundnet_fast.audio.load`) and checked (:func:`soundnet_fast.audio.check_wave`)
    on its own: (path, waveform, warnings), or (path, the error, []) for a file that cannot be used."""
    for f in files:
        try:
            wave = load(f, mono=mono)  # type: ignore[arg-type]
            yield f, wave, check_wave(f, wave)
        except (AudioDecodeError, OSError, ValueError) as e:
            yield f, e, []


def features_by_file(
    model: SoundNet, items: list[tuple[str, np.ndarray]], layer: str, **kwargs: Any
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """:func:`features_many` over ``items`` (name, [-1, 1] mono waveform), isolating failures.

    Returns ({name: (features (T, C), frame times (T,) in s)}, {name: reason}). When the batched call raises
    anything (an input check, out of memory, ...), each file runs again alone, so a file only fails for its
    own sake (:func:`soundnet_fast.errors.each_alone_on_failure`). ``kwargs``: :func:`features_many`'s.
    """
    results = each_alone_on_failure(lambda batch: features_many(model, [w for _, w in batch], layer, **kwargs), items)
    done: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    failed: dict[str, str] = {}
    for (name, _), r in zip(items, results, strict=True):
        if isinstance(r, Exception):
            failed[name] = reason(name, r)
        else:
            done[name] = r
    return done, failed


def _positive(kind: type) -> Any:
    """An argparse type: a finite number above zero (``--batch-size 0`` or ``--chunk-seconds nan`` is a usage
    error, exit 2, not a failure of every file)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be above zero, got {text!r}")
        return value

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from soundnet_fast.releases import add_weights_argument

    p.add_argument("files", nargs="+", metavar="FILES", help="audio or video files (anything FFmpeg decodes)")
    add_weights_argument(p)
    p.add_argument("--layer", default="pool5", help="conv1..conv7, pool1, pool2, pool5 (SoundNet-5: its own names)")
    p.add_argument("--pool", choices=["none", "mean", "max"], default="none", help="pool features over time")
    p.add_argument("--out", required=True, help="output folder: one .npy (T x C, or C pooled) + .times.npy per input")
    p.add_argument("--batch-size", type=_positive(int), default=1, help="files of equal length run together")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=_positive(int), default=None, help="CPU threads for torch")
    p.add_argument(
        "--input-scale",
        type=float,
        default=INPUT_SCALE,
        help="waveform scale (default %(default)s, as in training; 512 as in the original evaluation scripts)",
    )
    p.add_argument("--mono", choices=["first", "mean"], default="first", help="first channel (original) or mean")
    p.add_argument(
        "--chunk-seconds", type=_positive(float), default=120.0, help="long inputs run in chunks of about this"
    )
    p.add_argument(
        "--no-fold",
        dest="fold",
        action="store_false",
        help="run conv -> BN -> ReLU -> pool as separate ops instead of the folded inference form (for comparison)",
    )


def run(args: argparse.Namespace) -> int:
    """``soundnet-fast extract``: exit status 0 when at least one file was written, 1 when none was; a file that
    cannot be used is reported (stderr) and skipped. Raises ``UsageError`` / ``WeightFileError`` for options and
    weights it cannot use (``soundnet_fast.cli``: one line, exit status 2)."""
    from soundnet_fast.console import Progress, progress_enabled
    from soundnet_fast.weights import load_pretrained

    # The same file named twice (a/x.wav, ./a/x.wav) is one input: one output, counted once.
    unique: dict[str, str] = {}
    for f in args.files:
        unique.setdefault(os.path.realpath(f), f)
    args.files = list(unique.values())
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    model = load_pretrained(args.weights).to(args.device)
    if args.fold:
        model.inference()  # BN folded into the convs; same features within rounding (SoundNet.inference)
    valid = type(model).layer_names() + [h.name for h in type(model).head_specs]
    if args.layer not in valid:
        raise UsageError(f"--layer {args.layer}: unknown layer for {model.arch}; choose one of {valid}")
    outs = dict(zip(args.files, output_paths(args.files, args.out), strict=True))
    options = dict(
        batch_size=args.batch_size,
        scale=args.input_scale,
        chunk_seconds=args.chunk_seconds,
        device=args.device,
        fold=args.fold,
    )
    failed = 0
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> int:
        done, bad = features_by_file(model, pending, args.layer, **options)
        for path, why in bad.items():
            bar.console.print(f"[red]failed[/red] {path}: {why}")
        for path, (feats, times) in done.items():
            atomic_np_save(outs[path], _pool(feats, args.pool))
            atomic_np_save(outs[path][: -len(".npy")] + ".times.npy", times)
        bar.advance(len(pending))
        pending.clear()
        return len(bad)

    # The bar and the per-file notes go to stderr (soundnet_fast.console); the summary line to stdout.
    with Progress(f"extract {args.layer}", len(args.files), enabled=progress_enabled("auto")) as bar:
        for path, wave, warnings in iter_waves(args.files, args.mono):
            if isinstance(wave, Exception):
                failed += 1
                bar.console.print(f"[red]skipped[/red] {path}: {reason(path, wave)}")
                bar.advance()
                continue
            for warning in warnings:
                bar.console.print(f"[yellow]warning[/yellow] {path}: {warning}")
            pending.append((path, wave))
            if len(pending) >= args.batch_size:
                failed += flush()
        if pending:
            failed += flush()
    ok = len(args.files) - failed
    print(f"wrote {ok} feature file(s) to {args.out}" + (f"; {failed} failed" if failed else ""))
    return 1 if ok == 0 else 0
