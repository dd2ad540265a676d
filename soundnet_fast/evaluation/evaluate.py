"""`soundnet-fast evaluate`: the paper's transfer evaluation of any SoundNet weights
(docs/design.md#transfer-evaluation).

    soundnet-fast evaluate esc50|esc10|dcase2013|folder DATA --weights P [--layer pool5]
        [--protocol pooled|windows] [--input-scale 256|512] [--baselines] [--out DIR]

From Python (the demo calls this)::

    from soundnet_fast.evaluation.evaluate import EvalConfig, evaluate
    results = evaluate(EvalConfig("esc50", "ESC-50-master", "sound8.npy", layer="pool5", protocol="pooled",
                                  input_scale=512, baselines=True, out_dir="eval/esc50"))

:func:`evaluate` returns the content of ``out_dir/results.json``: per method (``soundnet``, and with
``baselines`` also ``mfcc``, ``random_init``, ``random_bn``) the mean, standard deviation and per-fold
accuracy, per-class accuracy, the confusion matrix, the C used per fold and each fold's test and excluded clips;
the excluded files with their reasons and folds (a file that cannot be decoded, is empty or holds NaN / Inf is
left out of every method and its fold is scored on the clips it has left: :mod:`soundnet_fast.evaluation.steps`)
and the warnings on kept clips (digital silence); the input scale, layer, protocol and fold scheme. A
confusion-matrix PNG per method (``confusion-<method>.png``, over every held-out clip) and a t-SNE PNG of the
weights' pooled (mean+max) features coloured by class (``tsne-soundnet.png``) are written next to it.

The options and their defaults are :class:`~soundnet_fast.evaluation.config.EvalConfig`'s; the steps are in
:mod:`soundnet_fast.evaluation.steps`, the methods in :mod:`soundnet_fast.evaluation.methods`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any

from soundnet_fast.constants import BACKENDS
from soundnet_fast.evaluation.config import (
    ARCH_TITLES,
    DEFAULT_LAYER,
    MONO_MODES,
    RESULTS_FORMAT,
    SCALE_NOTE,
    EvalConfig,
    EvaluationError,
)
from soundnet_fast.evaluation.datasets import DATASETS, DatasetLayoutError, load_dataset
from soundnet_fast.evaluation.protocols import PROTOCOLS, WINDOWS_C


def evaluate(cfg: EvalConfig, console: Any = None) -> dict:
    """Run the transfer evaluation ``cfg`` describes; write ``results.json`` and the plots into its output
    folder; return the results. ``console``: a rich Console for progress and notes (default: stderr).

    Raises :class:`EvaluationError` (bad protocol, mono mode, layer or scale; a fold or a class left without
    readable clips; clips shorter than one window), ``DatasetLayoutError`` (the folder is not in the dataset's
    layout) and ``WeightFileError`` (unreadable weights).
    """
    from soundnet_fast.console import stderr_console
    from soundnet_fast.evaluation import steps
    from soundnet_fast.evaluation.methods import FeatureContext, methods_for

    t0 = time.perf_counter()
    console = console or stderr_console()
    cfg.check()
    ds = load_dataset(cfg.dataset, cfg.data_dir, num_folds=cfg.num_folds, test_dir=cfg.test_dir, test_key=cfg.test_key)
    setup = steps.load_setup(cfg, ds)
    paths, hashes, failed = steps.audio_files(ds)
    ctx = FeatureContext(cfg, setup, ds, paths, hashes, failed, console)
    methods = methods_for(cfg, setup)
    features = {m.key: m.features(ctx) for m in methods}  # in order: each may add to ctx.failed
    split = steps.common_clips(ds, features, failed, console)
    steps.check_split(ds, split, features["soundnet"].maps, cfg, setup)
    results = steps.results_header(cfg, ds, setup, split)
    for m in methods:
        entry = steps.score_method(m, features[m.key], split, ds, cfg, setup, console)
        if cfg.plots:
            entry["plots"] = steps.plot_method(m, features[m.key], entry, split, ds, cfg, setup.out_dir)
        results["methods"][m.key] = entry
    results["elapsed_s"] = round(time.perf_counter() - t0, 2)
    steps.write_results(setup.out_dir, results)
    return results


# ---------------------------------------------------------------------------------------------- CLI
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EvalConfig)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from soundnet_fast.releases import add_weights_argument

    """The ``evaluate`` command's options; each ``dest`` is the :class:`EvalConfig` field it sets, each default
    that field's."""
    d = _DEFAULTS
    p.add_argument("dataset", choices=DATASETS, help="dataset layout (docs/design.md#datasets)")
    p.add_argument(
        "data_dir",
        metavar="data",
        help="dataset folder (ESC-50: with meta/ and audio/; DCASE 2013: the .wav files)",
    )
    add_weights_argument(p)
    layers = ", ".join(
        f"{layer} for {ARCH_TITLES[arch]}" for arch, layer in sorted(DEFAULT_LAYER.items(), reverse=True)
    )
    p.add_argument("--layer", default=d["layer"], help=f"feature layer (default {layers})")
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=d["protocol"],
        help="pooled: mean+max over time, linear SVM, C by inner CV; windows: the original protocol "
        "(default %(default)s)",
    )
    p.add_argument(
        "--input-scale",
        type=float,
        default=d["input_scale"],
        help="waveform scale: 256 (training) or 512 (the original evaluation); default: the checkpoint's",
    )
    p.add_argument(
        "--baselines",
        action="store_true",
        default=d["baselines"],
        help="also evaluate MFCC statistics and the same network with random weights (with and "
        "without re-estimated BN statistics)",
    )
    p.add_argument(
        "--out",
        dest="out_dir",
        metavar="OUT",
        default=d["out_dir"],
        help="output folder (default: evaluation/<dataset>)",
    )
    p.add_argument(
        "--cache-dir", default=d["cache_dir"], help="feature cache (default: ~/.cache/soundnet_fast/features)"
    )
    p.add_argument(
        "--mono",
        choices=MONO_MODES,
        default=d["mono"],
        help="stereo to mono: first channel (the original) or the mean (default %(default)s)",
    )
    p.add_argument(
        "--folds",
        dest="num_folds",
        metavar="FOLDS",
        type=int,
        default=d["num_folds"],
        help="cross-validation folds for the folder dataset (default %(default)s)",
    )
    p.add_argument("--test-dir", default=d["test_dir"], help="dcase2013: the challenge's test set folder")
    p.add_argument(
        "--test-key", default=d["test_key"], help="dcase2013: the test set's key file (<file> <class> lines)"
    )
    p.add_argument(
        "--C",
        type=float,
        default=d["C"],
        dest="C",
        help=f"fix the SVM's C (default: inner-CV search for pooled, {WINDOWS_C:g} for windows)",
    )
    p.add_argument(
        "--window-seconds",
        type=float,
        default=d["window_seconds"],
        help="windows protocol: window length (default 1 s for ESC, 5 s for DCASE, as the original)",
    )
    p.add_argument(
        "--batch-size", type=int, default=d["batch_size"], help="clips per forward pass (default %(default)s)"
    )
    p.add_argument("--device", default=d["device"], help="torch device of the network (default %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, default=d["backend"], help="network backend (default %(default)s)")
    p.add_argument(
        "--no-fold",
        dest="fold",
        action="store_false",
        default=d["fold"],
        help="run BN as its own op instead of folded into the convs (the plain path, for comparison)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d["seed"],
        help="seed of the random-weight baselines and of t-SNE (default %(default)s)",
    )
    p.add_argument(
        "--bn-clips",
        type=int,
        default=d["bn_clips"],
        help="development clips used to re-estimate BN statistics for the random baseline (default %(default)s)",
    )
    p.add_argument(
        "--no-plots",
        dest="plots",
        action="store_false",
        default=d["plots"],
        help="skip the confusion-matrix and t-SNE PNGs",
    )
    p.add_argument(
        "--jobs",
        dest="n_jobs",
        metavar="JOBS",
        type=int,
        default=d["n_jobs"],
        help="parallel fits in the search for C (-1: every core; default %(default)s)",
    )


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The :class:`EvalConfig` of parsed ``evaluate`` arguments (a field with no option keeps its default)."""
    return EvalConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig) if hasattr(args, f.name)}
    )


def run(args: argparse.Namespace) -> int:
    """``soundnet-fast evaluate``: the table (and the excluded files) on stdout. Data, weights or options it cannot
    use raise ``UsageError`` / ``WeightFileError`` (``soundnet_fast.cli``: one line, exit status 2)."""
    from soundnet_fast.console import stdout_console
    from soundnet_fast.errors import UsageError
    from soundnet_fast.evaluation.report import print_table

    cfg = config_from_args(args)
    try:
        results = evaluate(cfg)
    except (DatasetLayoutError, EvaluationError) as e:
        raise UsageError(str(e)) from e
    print_table(results, stdout_console())
    print(
        f"input scale x{results['input_scale']:g} ({SCALE_NOTE}); {results['num_excluded']} file(s) excluded; "
        f"results in {os.path.join(cfg.output_folder(), 'results.json')}"
    )
    return 0


__all__ = [
    "DEFAULT_LAYER",
    "RESULTS_FORMAT",
    "SCALE_NOTE",
    "EvalConfig",
    "EvaluationError",
    "add_arguments",
    "config_from_args",
    "evaluate",
    "run",
]
