"""`soundnet-fast evaluate`: the paper's transfer evaluation of any SoundNet weights
(docs/design.md#transfer-evaluation).

    soundnet-fast evaluate esc50|esc10|dcase2013|folder DATA --weights P [--layer pool5]
        [--protocol pooled|windows] [--input-scale 256|512] [--baselines] [--out DIR]

From Python (the demo calls this)::

    from soundnet_fast.evaluation.evaluate import evaluate
    results = evaluate("esc50", "ESC-50-master", "sound8.npy", layer="pool5", protocol="pooled",
                       input_scale=512, baselines=True, out_dir="eval/esc50")

:func:`evaluate` returns the content of ``out_dir/results.json``: per method (``soundnet``, and with
``baselines`` also ``mfcc``, ``random_init``, ``random_bn``) the mean, standard deviation and per-fold
accuracy, per-class accuracy, the confusion matrix, the C used per fold and each fold's test clips; the
excluded files with their reasons; the input scale, layer, protocol and fold scheme. A confusion-matrix PNG per
method (``confusion-<method>.png``, over every held-out clip) and a t-SNE PNG of the weights' pooled (mean+max)
features coloured by class (``tsne-soundnet.png``) are written next to it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from soundnet_fast.evaluation.datasets import DATASETS, Clip, Dataset, DatasetLayoutError, load_dataset
from soundnet_fast.evaluation.protocols import (
    DEFAULT_CS,
    PROTOCOLS,
    cross_validate,
    pool_map,
    train_and_predict,
    window_frames,
)

RESULTS_FORMAT = "soundnet_fast.evaluate/1"
DEFAULT_LAYER = {"soundnet8": "pool5", "soundnet5": "conv4"}  # pool5: the paper's best ESC layer (section 3)
SCALE_NOTE = (
    "x256 is the training scale; x512 (2^-22 of int32 samples) is what the original evaluation scripts "
    "used for the paper's numbers (docs/design.md#transfer-evaluation)"
)


class EvaluationError(ValueError):
    """The evaluation cannot run as asked (bad layer, too few usable clips, ...); the message says why."""


def evaluate(
    dataset: str,
    data_dir: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    *,
    layer: str | None = None,
    protocol: str = "pooled",
    input_scale: float | None = None,
    baselines: bool = False,
    out_dir: str | os.PathLike[str] = "evaluation",
    cache_dir: str | os.PathLike[str] | None = None,
    mono: str = "first",
    min_seconds: float = 10.0,
    num_folds: int = 5,
    test_dir: str | os.PathLike[str] | None = None,
    test_key: str | os.PathLike[str] | None = None,
    C: float | None = None,
    Cs: Sequence[float] = DEFAULT_CS,
    window_seconds: float | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    backend: str = "reference",
    seed: int = 0,
    bn_clips: int = 256,
    plots: bool = True,
    n_jobs: int | None = 1,
    console: Any = None,
) -> dict:
    """Run the transfer evaluation; write ``results.json`` and the plots into ``out_dir``; return the results.

    ``layer`` defaults to pool5 (SoundNet-8) or conv4 (SoundNet-5). ``input_scale`` defaults to the scale the
    checkpoint records, else 256. ``protocol``: ``pooled`` (mean+max over time, standardised, C by inner
    cross-validation unless ``C`` is given) or ``windows`` (the original: sliding windows, C = 0.01 unless
    given, ``window_seconds`` defaulting to 1 s for ESC and 5 s for DCASE as in the original scripts).
    ``baselines`` adds MFCC statistics (librosa) and the same network with random weights, as initialised
    and with BN statistics re-estimated (label-free) on up to ``bn_clips`` development clips.
    ``n_jobs`` parallelises the search for C (joblib; -1 uses every core).
    """
    from rich.console import Console

    from soundnet_fast.evaluation import features as ef
    from soundnet_fast.evaluation.report import summarize
    from soundnet_fast.fsutil import atomic_write_text
    from soundnet_fast.weights import load_pretrained

    t0 = time.perf_counter()
    console = console or Console(stderr=True)
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    if mono not in ("first", "mean"):
        raise EvaluationError(f"mono must be 'first' or 'mean', got {mono!r}")
    ds = load_dataset(dataset, data_dir, num_folds=num_folds, test_dir=test_dir, test_key=test_key)
    weights = os.path.abspath(os.fspath(weights))
    model = load_pretrained(weights, backend=backend)
    layer = layer or DEFAULT_LAYER[model.arch]
    try:
        geometry = type(model).geometry(layer)
    except ValueError as e:
        raise EvaluationError(f"{weights}: {e}") from e
    if input_scale is None:
        input_scale = float(getattr(model, "weights_meta", {}).get("input_scale", 256.0))
    if input_scale <= 0:
        raise EvaluationError(f"input_scale must be positive, got {input_scale}")
    window = window_frames(window_seconds or ds.window_seconds, geometry.hop)
    cache_root = os.fspath(cache_dir) if cache_dir is not None else ef.default_cache_dir()
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)

    clips: list[Clip] = ds.clips + ds.test_clips
    paths = list(dict.fromkeys(c.path for c in clips))
    hashes, failed = ef.audio_hashes(paths)
    variant = f"{layer}-x{input_scale:g}-{mono}-{min_seconds:g}s"
    extract = dict(
        layer=layer, input_scale=input_scale, mono=mono, min_seconds=min_seconds, batch_size=batch_size, device=device
    )

    def maps_for(net: Any, key: str, what: str) -> tuple[dict[str, np.ndarray], ef.ExtractStats]:
        store = ef.FeatureStore(cache_root, key, variant, {"model": what, "layer": layer, "scale": input_scale})
        with _progress(console, f"{what}: {layer} features", len(hashes)) as advance:
            feats, stats = ef.extract_maps(net, store, paths, hashes, progress=advance, **extract)
        failed.update(stats.failed)
        return feats, stats

    wkey = ef.file_sha256(weights)
    arch_title = {"soundnet8": "SoundNet-8", "soundnet5": "SoundNet-5"}[model.arch]
    methods: dict[str, tuple[str, dict[str, np.ndarray], ef.ExtractStats, dict]] = {}
    feats, stats = maps_for(model, wkey, os.path.basename(weights))
    methods["soundnet"] = (
        f"{arch_title} {layer} ({os.path.basename(weights)})",
        feats,
        stats,
        {"weights": weights, "sha256": wkey},
    )
    if baselines:
        store = ef.FeatureStore(
            cache_root, "mfcc", f"{ef.MFCC_VERSION.replace('/', '_')}-{mono}", {"model": ef.MFCC_VERSION}
        )
        with _progress(console, "MFCC statistics (librosa)", len(hashes)) as advance:
            feats, stats = ef.extract_mfcc(store, paths, hashes, mono=mono, progress=advance)  # type: ignore[arg-type]
        failed.update(stats.failed)
        methods["mfcc"] = ("SVM on MFCC statistics (librosa)", feats, stats, {"features": ef.MFCC_VERSION})
        rnd = ef.random_model(model, seed)
        rkey = ef.state_sha256(rnd)
        feats, stats = maps_for(rnd, rkey, f"random init (seed {seed})")
        methods["random_init"] = (f"{arch_title}, random init", feats, stats, {"seed": seed, "sha256": rkey})
        # BN statistics from the development audio only (labels are never used); the set is a seeded sample
        # chosen by content hash, so it does not depend on file order and the cache key can name it.
        usable = sorted(hashes[c.path] for c in ds.clips if c.path in hashes and c.path not in failed)
        chosen = sorted(random.Random(seed).sample(usable, min(bn_clips, len(usable))))
        bkey = ef.model_bytes_key("bn-reestimated", rkey, layer, input_scale, mono, min_seconds, *chosen)
        bn_net = ef.random_model(model, seed)
        bn_store = ef.FeatureStore(cache_root, bkey, variant)
        if any(not os.path.isfile(bn_store.path(hashes[p])) for p in paths if p in hashes and p not in failed):
            by_hash = {hashes[c.path]: c.path for c in ds.clips if c.path in hashes}
            console.log(f"re-estimating BN statistics on {len(chosen)} development clips")
            ef.reestimate_bn(
                bn_net,
                _waves([by_hash[h] for h in chosen], mono, min_seconds),
                layer=layer,
                input_scale=input_scale,
                device=device,
            )
        feats, stats = maps_for(bn_net, bkey, "random init, BN re-estimated")
        methods["random_bn"] = (
            f"{arch_title}, random init, BN re-estimated",
            feats,
            stats,
            {"seed": seed, "bn_clips": len(chosen), "labels_used": False},
        )

    # A file any method could not read is left out of every method, so all rows see the same clips.
    dev = [c for c in ds.clips if c.path not in failed and all(c.path in m[1] for m in methods.values())]
    test = [c for c in ds.test_clips if c.path not in failed and all(c.path in m[1] for m in methods.values())]
    kept = {c.path for c in dev} | {c.path for c in test}
    excluded = [{"file": c.name, "reason": failed.get(c.path, "no features")} for c in clips if c.path not in kept]
    if excluded:
        shown = "; ".join(f"{e['file']} ({e['reason']})" for e in excluded[:5])
        console.log(f"[yellow]{len(excluded)} file(s) excluded[/yellow]: {shown}{' ...' if len(excluded) > 5 else ''}")
    _check_usable(ds, dev)
    shortest = min(methods["soundnet"][1][c.path].shape[-1] for c in dev + test)
    if protocol == "windows" and shortest < window:
        raise EvaluationError(
            f"the windows protocol needs {window} frames of {layer} per window, but the shortest "
            f"clip gives {shortest}; pass a shorter --window-seconds or an earlier layer"
        )
    y = np.asarray([c.label for c in dev])
    folds = np.asarray([c.fold for c in dev])
    groups = np.asarray([c.group for c in dev])
    names = [c.name for c in dev]

    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "dataset": ds.name,
        "data_dir": ds.root,
        "classes": ds.classes,
        "num_clips": len(dev) + len(test),
        "num_excluded": len(excluded),
        "excluded": excluded,
        "num_folds": len(set(folds.tolist())),
        "fold_scheme": ds.fold_scheme,
        "weights": weights,
        "arch": model.arch,
        "layer": layer,
        "protocol": protocol,
        "input_scale": input_scale,
        "input_scale_note": SCALE_NOTE,
        "mono": mono,
        "min_seconds": min_seconds,
        "window_frames": window if protocol == "windows" else None,
        "C": C if C is not None else ("inner-CV search over " + str(list(Cs)) if protocol == "pooled" else 0.01),
        "cache_dir": cache_root,
        "methods": {},
    }
    for key, (label, feats, stats, info) in methods.items():
        # MFCC statistics are already one vector per clip: they always go through the pooled classifier.
        proto = "pooled" if key == "mfcc" else protocol
        X = [feats[c.path] for c in dev]
        console.log(f"{label}: {proto} SVM, {results['num_folds']} folds")
        fold_results = cross_validate(
            proto,
            X,
            y,
            folds,
            groups,
            C=C,
            Cs=Cs,
            window=window,  # type: ignore[arg-type]
            n_jobs=n_jobs,
        )
        entry: dict[str, Any] = {
            "label": label,
            "protocol": proto,
            **info,
            "features": {"extracted": stats.extracted, "cached": stats.cached},
        }
        entry.update(summarize(fold_results, y, names, ds.classes))
        if test:
            pred, used_C, _ = train_and_predict(
                proto,
                X,
                y,
                folds,
                groups,
                [feats[c.path] for c in test],  # type: ignore[arg-type]
                C=C,
                Cs=Cs,
                window=window,
                n_jobs=n_jobs,
            )
            y_test = np.asarray([c.label for c in test])
            entry["test_set"] = {"accuracy": float(np.mean(pred == y_test)), "C": used_C, "num_clips": len(test)}
        if plots:
            entry["plots"] = _plots(out_dir, key, label, entry, np.stack([pool_map(x) for x in X]), y, ds, seed)
        results["methods"][key] = entry
    results["elapsed_s"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(os.path.join(out_dir, "results.json"), _json(results))
    return results


def _waves(paths: Sequence[str], mono: str, min_seconds: float) -> Any:
    from soundnet_fast.audio import AudioDecodeError
    from soundnet_fast.evaluation.features import load_clip

    for p in paths:
        try:
            yield load_clip(p, mono=mono, min_seconds=min_seconds)  # type: ignore[arg-type]
        except AudioDecodeError:
            continue  # already reported by the feature pass


def _check_usable(ds: Dataset, dev: list[Clip]) -> None:
    empty = sorted({c.fold for c in ds.clips} - {c.fold for c in dev})
    if empty:
        raise EvaluationError(f"{ds.root}: fold(s) {empty} have no readable clips left; nothing to test on")
    if len({c.label for c in dev}) < 2:
        raise EvaluationError(f"{ds.root}: fewer than two classes have readable clips")


def _plots(
    out_dir: str, key: str, label: str, entry: dict, X: np.ndarray, y: np.ndarray, ds: Dataset, seed: int
) -> dict[str, str]:
    from soundnet_fast.evaluation.report import output_path, plot_confusion, plot_tsne

    acc = 100 * entry["mean_accuracy"]
    cm = plot_confusion(
        entry["confusion_matrix"],
        ds.classes,
        output_path(out_dir, "confusion", key),
        f"{label}\n{ds.name}, mean accuracy {acc:.1f} %",
    )
    out = {"confusion": os.path.basename(cm)}
    if key == "soundnet":  # t-SNE of 2,000 ESC-50 clips takes about a minute on CPU: the weights' features only
        out["tsne"] = os.path.basename(
            plot_tsne(X, y, ds.classes, output_path(out_dir, "tsne", key), f"t-SNE: {label}", seed=seed)
        )
    return out


class _progress:
    """A rich progress bar (transient) whose ``advance(n)`` the extractors call."""

    def __init__(self, console: Any, what: str, total: int) -> None:
        from rich.progress import Progress

        self.bar = Progress(console=console, transient=True)
        self.task = self.bar.add_task(what, total=total)

    def __enter__(self) -> Any:
        self.bar.start()
        return lambda n: self.bar.advance(self.task, n)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)) + "\n"


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", choices=DATASETS, help="dataset layout (docs/design.md#datasets)")
    p.add_argument("data", help="dataset folder (ESC-50: with meta/ and audio/; DCASE 2013: the .wav files)")
    p.add_argument("--weights", required=True, help="sound8.npy, .t7, sound8.pth or a native checkpoint")
    p.add_argument("--layer", default=None, help="feature layer (default pool5 for SoundNet-8, conv4 for SoundNet-5)")
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="pooled",
        help="pooled: mean+max over time, linear SVM, C by inner CV; windows: the original protocol",
    )
    p.add_argument(
        "--input-scale",
        type=float,
        default=None,
        help="waveform scale: 256 (training) or 512 (the original evaluation); default: the checkpoint's",
    )
    p.add_argument(
        "--baselines",
        action="store_true",
        help="also evaluate MFCC statistics and the same network with random weights (with and "
        "without re-estimated BN statistics)",
    )
    p.add_argument("--out", default=None, help="output folder (default: evaluation/<dataset>)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: ~/.cache/soundnet_fast/features)")
    p.add_argument(
        "--mono",
        choices=("first", "mean"),
        default="first",
        help="stereo to mono: first channel (the original) or the mean",
    )
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds for the folder dataset")
    p.add_argument("--test-dir", default=None, help="dcase2013: the challenge's test set folder")
    p.add_argument("--test-key", default=None, help="dcase2013: the test set's key file (<file> <class> lines)")
    p.add_argument(
        "--C",
        type=float,
        default=None,
        dest="C",
        help="fix the SVM's C (default: inner-CV search for pooled, 0.01 for windows)",
    )
    p.add_argument(
        "--window-seconds",
        type=float,
        default=None,
        help="windows protocol: window length (default 1 s for ESC, 5 s for DCASE, as the original)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", choices=("reference", "fused"), default="reference")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-weight baselines and of t-SNE")
    p.add_argument(
        "--bn-clips",
        type=int,
        default=256,
        help="development clips used to re-estimate BN statistics for the random baseline",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the confusion-matrix and t-SNE PNGs")
    p.add_argument("--jobs", type=int, default=1, help="parallel fits in the search for C (-1: every core)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from soundnet_fast.evaluation.report import print_table
    from soundnet_fast.weights import WeightFileError

    out = args.out or os.path.join("evaluation", args.dataset)
    try:
        results = evaluate(
            args.dataset,
            args.data,
            args.weights,
            layer=args.layer,
            protocol=args.protocol,
            input_scale=args.input_scale,
            baselines=args.baselines,
            out_dir=out,
            cache_dir=args.cache_dir,
            mono=args.mono,
            num_folds=args.folds,
            test_dir=args.test_dir,
            test_key=args.test_key,
            C=args.C,
            window_seconds=args.window_seconds,
            batch_size=args.batch_size,
            device=args.device,
            backend=args.backend,
            seed=args.seed,
            bn_clips=args.bn_clips,
            plots=not args.no_plots,
            n_jobs=args.jobs,
        )
    except (DatasetLayoutError, EvaluationError, WeightFileError) as e:
        print(f"soundnet-fast evaluate: error: {e}", file=sys.stderr)
        return 2
    print_table(results, Console())
    print(
        f"input scale x{results['input_scale']:g} ({SCALE_NOTE}); {results['num_excluded']} file(s) excluded; "
        f"results in {os.path.join(out, 'results.json')}"
    )
    return 0


__all__ = ["EvaluationError", "add_arguments", "evaluate", "run"]
