"""The steps of one transfer evaluation, in the order :func:`soundnet_fast.evaluation.evaluate.evaluate` runs
them: resolve the setup, hash the audio, keep the clips every method has features for, score each method by
cross-validation (and on a test set), plot, write ``results.json`` (docs/design.md#transfer-evaluation).

A clip some method has no features for (it cannot be decoded, is empty, holds NaN / Inf, or the network fails on
it alone: ``features.extract_maps``) is excluded from every method, so all rows score the same clips
(:func:`common_clips`). Its fold is scored on the clips it has left: the fold's accuracy is over those, the mean
accuracy stays the unweighted mean over folds (the ESC-50 score, docs/design.md#esc-50-and-esc-10), and
results.json lists the clip under ``excluded`` (file, reason, fold; 0 for the test set) and under its fold's
``excluded_clips``. Training sets simply lack it. A fold left with no clips, or fewer than two classes left,
stops the evaluation (:func:`check_split`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from soundnet_fast.constants import INPUT_SCALE
from soundnet_fast.evaluation import features as ef
from soundnet_fast.evaluation.config import (
    DEFAULT_LAYER,
    RESULTS_FORMAT,
    SCALE_NOTE,
    EvalConfig,
    EvaluationError,
    Setup,
)
from soundnet_fast.evaluation.datasets import Clip, Dataset
from soundnet_fast.evaluation.methods import Method, MethodFeatures
from soundnet_fast.evaluation.protocols import WINDOWS_C, cross_validate, pool_map, train_and_predict, window_frames


def load_setup(cfg: EvalConfig, ds: Dataset) -> Setup:
    """Load the weights and resolve the config's derived options; create the output folder.

    Raises ``WeightFileError`` for weights that cannot be read, :class:`EvaluationError` for a layer the
    architecture lacks or a scale that is not positive.
    """
    from soundnet_fast.releases import resolve
    from soundnet_fast.weights import load_pretrained

    weights = os.path.abspath(resolve(cfg.weights))  # a release name -> its cached file (hashed for the cache)
    model = load_pretrained(weights, backend=cfg.backend)
    layer = cfg.layer or DEFAULT_LAYER[model.arch]
    try:
        geometry = type(model).geometry(layer)
    except ValueError as e:
        raise EvaluationError(f"{weights}: {e}") from e
    input_scale = cfg.input_scale
    if input_scale is None:  # the checkpoint's scale, else the training scale (docs/design.md#input)
        input_scale = float(getattr(model, "weights_meta", {}).get("input_scale", INPUT_SCALE))
    if input_scale <= 0:
        raise EvaluationError(f"input_scale must be positive, got {input_scale}")
    out_dir = cfg.output_folder()
    os.makedirs(out_dir, exist_ok=True)
    return Setup(
        weights=weights,
        model=model,
        layer=layer,
        input_scale=input_scale,
        window=window_frames(cfg.window_seconds or ds.window_seconds, geometry.hop),
        cache_root=os.fspath(cfg.cache_dir) if cfg.cache_dir is not None else ef.default_cache_dir(),
        out_dir=out_dir,
    )


def audio_files(ds: Dataset) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Every clip file once (development, then test), their content hashes, and those that cannot be read."""
    paths = list(dict.fromkeys(c.path for c in ds.clips + ds.test_clips))
    hashes, failed = ef.audio_hashes(paths)
    return paths, hashes, failed


@dataclass
class Split:
    """The clips every method has features for: development (cross-validated) and test, and the rest."""

    dev: list[Clip]
    test: list[Clip]
    excluded: list[dict[str, Any]]  # {"file": name, "reason": why, "fold": its fold, 0 for the test set}
    warnings: list[dict[str, str]] = field(default_factory=list)  # {"file": name, "warning": what}: kept clips

    def labels(self) -> np.ndarray:
        return np.asarray([c.label for c in self.dev])

    def excluded_in(self, fold: int) -> list[str]:
        """Names of the excluded clips of ``fold`` (0: the test set), in dataset order."""
        return [e["file"] for e in self.excluded if e["fold"] == fold]


def common_clips(ds: Dataset, features: dict[str, MethodFeatures], failed: dict[str, str], console: Any) -> Split:
    """Leave a file any method could not read out of every method, so all rows see the same clips; note (log and
    ``Split.warnings``) the kept clips whose check warned, e.g. digital silence."""

    def kept(clips: list[Clip]) -> list[Clip]:
        return [c for c in clips if c.path not in failed and all(c.path in f.maps for f in features.values())]

    dev, test = kept(ds.clips), kept(ds.test_clips)
    paths = {c.path for c in dev} | {c.path for c in test}
    excluded = [
        {"file": c.name, "reason": failed.get(c.path, "no features"), "fold": c.fold}
        for c in ds.clips + ds.test_clips
        if c.path not in paths
    ]
    if excluded:
        shown = "; ".join(f"{e['file']} ({e['reason']})" for e in excluded[:5])
        console.log(f"[yellow]{len(excluded)} file(s) excluded[/yellow]: {shown}{' ...' if len(excluded) > 5 else ''}")
    notes: dict[str, list[str]] = {}
    for f in features.values():
        for path, said in f.stats.warnings.items():
            notes.setdefault(path, [])
            notes[path] += [w for w in said if w not in notes[path]]
    warned = [{"file": c.name, "warning": w} for c in dev + test for w in notes.get(c.path, [])]
    for w in warned:
        console.log(f"[yellow]warning[/yellow] {w['file']}: {w['warning']}")
    return Split(dev, test, excluded, warned)


def check_split(ds: Dataset, split: Split, maps: dict[str, np.ndarray], cfg: EvalConfig, setup: Setup) -> None:
    """Raise :class:`EvaluationError` when a fold lost every clip, fewer than two classes are left, or (windows
    protocol) the shortest clip's ``maps`` entry is shorter than one window."""
    empty = sorted({c.fold for c in ds.clips} - {c.fold for c in split.dev})
    if empty:
        raise EvaluationError(f"{ds.root}: fold(s) {empty} have no readable clips left; nothing to test on")
    if len({c.label for c in split.dev}) < 2:
        raise EvaluationError(f"{ds.root}: fewer than two classes have readable clips")
    shortest = min(maps[c.path].shape[-1] for c in split.dev + split.test)
    if cfg.protocol == "windows" and shortest < setup.window:
        raise EvaluationError(
            f"the windows protocol needs {setup.window} frames of {setup.layer} per window, but the shortest "
            f"clip gives {shortest}; pass a shorter --window-seconds or an earlier layer"
        )


def results_header(cfg: EvalConfig, ds: Dataset, setup: Setup, split: Split) -> dict[str, Any]:
    """results.json's fields that describe the run (every method's entry goes under ``methods``)."""
    if cfg.C is not None:
        C: Any = cfg.C
    else:
        C = "inner-CV search over " + str(list(cfg.Cs)) if cfg.protocol == "pooled" else WINDOWS_C
    return {
        "format": RESULTS_FORMAT,
        "dataset": ds.name,
        "data_dir": ds.root,
        "classes": ds.classes,
        "num_clips": len(split.dev) + len(split.test),
        "num_excluded": len(split.excluded),
        "excluded": split.excluded,
        "warnings": split.warnings,
        "num_folds": len({c.fold for c in split.dev}),
        "fold_scheme": ds.fold_scheme,
        "weights": setup.weights,
        "arch": setup.model.arch,
        "layer": setup.layer,
        "protocol": cfg.protocol,
        "input_scale": setup.input_scale,
        "input_scale_note": SCALE_NOTE,
        "mono": cfg.mono,
        "min_seconds": cfg.min_seconds,
        "window_frames": setup.window if cfg.protocol == "windows" else None,
        "C": C,
        "cache_dir": setup.cache_root,
        "methods": {},
    }


def score_method(
    method: Method, feats: MethodFeatures, split: Split, ds: Dataset, cfg: EvalConfig, setup: Setup, console: Any
) -> dict[str, Any]:
    """One method's results entry: cross-validated accuracy over the development folds (``summarize_folds``)
    and, when the dataset has one, accuracy on its test set trained on every development clip."""
    from soundnet_fast.evaluation.report import summarize_folds

    proto = method.protocol(cfg.protocol)
    dev = split.dev
    X = [feats.maps[c.path] for c in dev]
    y = split.labels()
    folds = np.asarray([c.fold for c in dev])
    groups = np.asarray([c.group for c in dev])
    console.log(f"{method.label}: {proto} SVM, {len(set(folds.tolist()))} folds")
    svm = dict(C=cfg.C, Cs=cfg.Cs, window=setup.window, n_jobs=cfg.n_jobs)
    fold_results = cross_validate(proto, X, y, folds, groups, **svm)  # type: ignore[arg-type]
    entry: dict[str, Any] = {
        "label": method.label,
        "protocol": proto,
        **feats.info,
        "features": {"extracted": feats.stats.extracted, "cached": feats.stats.cached},
    }
    entry.update(summarize_folds(fold_results, y, [c.name for c in dev], ds.classes))
    for f in entry["folds"]:  # scored on the clips it has left (module docstring)
        f["excluded_clips"] = split.excluded_in(f["fold"])
    if split.test:
        X_test = [feats.maps[c.path] for c in split.test]
        pred, used_C, _ = train_and_predict(proto, X, y, folds, groups, X_test, **svm)  # type: ignore[arg-type]
        y_test = np.asarray([c.label for c in split.test])
        entry["test_set"] = {
            "accuracy": float(np.mean(pred == y_test)),
            "C": used_C,
            "num_clips": len(split.test),
            "excluded_clips": split.excluded_in(0),
        }
    return entry


def plot_method(
    method: Method, feats: MethodFeatures, entry: dict[str, Any], split: Split, ds: Dataset, cfg: EvalConfig, out: str
) -> dict[str, str]:
    """The method's confusion-matrix PNG (every held-out clip) and, for the weights under test only, the t-SNE
    of their pooled (mean+max) development features: {"confusion": file name, "tsne": file name}."""
    from soundnet_fast.evaluation.report import output_path, plot_confusion, plot_tsne

    acc = 100 * entry["mean_accuracy"]
    cm = plot_confusion(
        entry["confusion_matrix"],
        ds.classes,
        output_path(out, "confusion", method.key),
        f"{method.label}\n{ds.name}, mean accuracy {acc:.1f} %",
    )
    files = {"confusion": os.path.basename(cm)}
    if method.key == "soundnet":  # t-SNE of 2,000 ESC-50 clips takes about a minute on CPU: the weights' only
        X = np.stack([pool_map(feats.maps[c.path]) for c in split.dev])
        path = output_path(out, "tsne", method.key)
        tsne = plot_tsne(X, split.labels(), ds.classes, path, f"t-SNE: {method.label}", seed=cfg.seed)
        files["tsne"] = os.path.basename(tsne)
    return files


def write_results(out_dir: str, results: dict[str, Any]) -> str:
    """Write ``out_dir/results.json`` atomically (``fsutil.atomic_write_text``); returns its path."""
    from soundnet_fast.fsutil import atomic_write_text

    path = os.path.join(out_dir, "results.json")
    text = json.dumps(results, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
    atomic_write_text(path, text + "\n")
    return path


__all__ = [
    "Split",
    "audio_files",
    "check_split",
    "common_clips",
    "load_setup",
    "plot_method",
    "results_header",
    "score_method",
    "write_results",
]
