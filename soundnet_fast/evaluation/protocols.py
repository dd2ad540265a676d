"""Linear-SVM protocols on frozen features, cross-validated without leaks (docs/design.md#transfer-evaluation).

- ``pooled``: each clip's feature map (C, T) becomes [mean over T, max over T] (2C values), standardised,
  then a linear SVM whose C is chosen by an inner cross-validation on the training folds only.
- ``windows``: the original evaluation (cvondrick/soundnet eval_esc50.lua / eval_dcase.lua): every sliding
  window of ``w`` frames (stride 1) of the map, flattened, is one training sample with its clip's label;
  liblinear's L2-regularised L2-loss SVM (``-s 1 -B 1``, C = 0.01, no standardisation); a test clip's
  decision values are averaged over its windows and the largest wins.

Leaks: a clip of the test fold, or any clip sharing a source recording (group) with one, is never in a
training set; the inner search for C holds out one training fold at a time under the same rule. scikit-learn
does the SVMs (``LinearSVC`` wraps liblinear) and the search (``GridSearchCV`` over explicit leak-free splits).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from soundnet_fast.constants import SAMPLE_RATE

Protocol = Literal["pooled", "windows"]
PROTOCOLS: tuple[str, ...] = ("pooled", "windows")
# Standardised SoundNet features are high-dimensional (512 for pool5 mean+max) and nearly separable: liblinear
# needs minutes per fit at C >= 1 on ESC-50-sized folds (bench/test_evaluate_bench.py), and the paper's C = 0.01
# sits inside this grid.
DEFAULT_CS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
WINDOWS_C = 0.01  # eval_esc50.lua / eval_dcase.lua: liblinear -c 0.01 -s 1 -B 1
MAX_ITER = 20000


@dataclass
class FoldResult:
    fold: int  # the held-out fold (1-based); 0 for a separate test set
    test_index: np.ndarray  # positions of the test clips in the clip list
    y_pred: np.ndarray  # predicted labels, aligned with test_index
    C: float  # the SVM's C (chosen by the inner search, or fixed)
    num_train: int  # training clips
    num_dropped: int  # clips of training folds left out because they share a group with a test clip
    convergence_warnings: int = 0


# ------------------------------------------------------------------------------------- features
def pool_map(feature: np.ndarray) -> np.ndarray:
    """[mean over time, max over time] of a (C, T) map; a 1-D vector (e.g. MFCC statistics) passes as is."""
    feature = np.asarray(feature, dtype=np.float32)
    if feature.ndim == 1:
        return feature
    if feature.ndim != 2 or feature.shape[1] < 1:
        raise ValueError(f"expected a (channels, time) feature map, got shape {feature.shape}")
    return np.concatenate([feature.mean(axis=1), feature.max(axis=1)])


def window_frames(window_seconds: float, hop: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Frames per window: the original's ceil(window / clip_length * T), with T = clip_length * rate / hop."""
    return max(1, math.ceil(window_seconds * sample_rate / hop - 1e-9))


def windows_of(feature: np.ndarray, w: int) -> np.ndarray:
    """Every window of ``w`` consecutive frames of a (C, T) map, flattened channel-major: (T - w + 1, C * w)."""
    feature = np.asarray(feature, dtype=np.float32)
    if feature.ndim != 2:
        raise ValueError(f"the windows protocol needs (channels, time) feature maps, got shape {feature.shape}")
    c, t = feature.shape
    if t < w:
        raise ValueError(f"feature map has {t} frames, fewer than the {w}-frame window")
    view = np.lib.stride_tricks.sliding_window_view(feature, w, axis=1)  # (C, T - w + 1, w)
    return np.ascontiguousarray(view.transpose(1, 0, 2)).reshape(t - w + 1, c * w)


# --------------------------------------------------------------------------------------- splits
def leak_free_train(candidates: np.ndarray, held_out: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``candidates`` minus every clip whose group also appears among the ``held_out`` clips."""
    banned = set(groups[held_out].tolist())
    return np.asarray([i for i in candidates if groups[i] not in banned], dtype=np.int64)


def outer_splits(folds: np.ndarray, groups: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray, int]]:
    """(fold, train positions, test positions, dropped count) for each fold held out in turn."""
    folds, groups = np.asarray(folds), np.asarray(groups)
    out = []
    for k in sorted(set(folds.tolist())):
        test = np.flatnonzero(folds == k)
        rest = np.flatnonzero(folds != k)
        train = leak_free_train(rest, test, groups)
        out.append((int(k), train, test, len(rest) - len(train)))
    return out


def inner_splits(folds: np.ndarray, groups: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-one-fold-out splits of a training set (positions into it), leak-free by group."""
    splits = [(train, val) for _, train, val, _ in outer_splits(folds, groups) if len(train) and len(val)]
    if not splits:
        raise ValueError(
            "choosing C by inner cross-validation needs at least two training folds; use more folds or fix C"
        )
    return splits


# ------------------------------------------------------------------------------------ estimators
def _svc(C: float, *, dual: bool | str) -> Any:
    from sklearn.svm import LinearSVC

    # LinearSVC is liblinear; squared hinge + L2 penalty is its `-s 1` (dual) / `-s 2` (primal) solver, and
    # fit_intercept with intercept_scaling=1 is liblinear's `-B 1` (the bias is a regularised feature).
    return LinearSVC(C=C, loss="squared_hinge", penalty="l2", dual=dual, intercept_scaling=1.0, max_iter=MAX_ITER)


def fit_pooled(
    X: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    groups: np.ndarray,
    *,
    C: float | None = None,
    Cs: Sequence[float] = DEFAULT_CS,
    n_jobs: int | None = 1,
) -> tuple[Any, float]:
    """Standardise + linear SVM on pooled vectors; C from a leak-free inner search unless given."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    # The primal solver: the same optimum as the dual, which on standardised pooled maps needs 5-10x the time at the
    # upper Cs (measured, 320 clips x 512 values: dual 1,510 iterations at C 0.1, primal 8).
    pipe = Pipeline([("scale", StandardScaler()), ("svc", _svc(1.0 if C is None else C, dual=False))])
    if C is not None:
        return pipe.fit(X, y), float(C)
    search = GridSearchCV(
        pipe,
        {"svc__C": list(Cs)},
        cv=inner_splits(folds, groups),
        scoring="accuracy",
        refit=True,
        n_jobs=n_jobs,
        error_score="raise",
    )
    search.fit(X, y)
    return search.best_estimator_, float(search.best_params_["svc__C"])


def fit_windows(maps: Sequence[np.ndarray], y: np.ndarray, w: int, *, C: float = WINDOWS_C) -> Any:
    """The original protocol's SVM: every window is a sample labelled with its clip's class."""
    from sklearn.pipeline import Pipeline

    wins = [windows_of(m, w) for m in maps]
    X = np.concatenate(wins)
    labels = np.repeat(np.asarray(y), [len(v) for v in wins])
    return Pipeline([("svc", _svc(C, dual=True))]).fit(X, labels)


def predict_windows(model: Any, maps: Sequence[np.ndarray], w: int) -> np.ndarray:
    """Average each clip's decision values over its windows; the class with the largest mean wins."""
    preds = []
    for m in maps:
        scores = np.asarray(model.decision_function(windows_of(m, w)))
        if scores.ndim == 1:  # two classes: one signed score for classes_[1]
            scores = np.stack([-scores, scores], axis=1)
        preds.append(model.classes_[int(np.argmax(scores.mean(axis=0)))])
    return np.asarray(preds)


def train_and_predict(
    protocol: Protocol,
    train_feats: Sequence[np.ndarray],
    y_train: np.ndarray,
    folds_train: np.ndarray,
    groups_train: np.ndarray,
    test_feats: Sequence[np.ndarray],
    *,
    C: float | None = None,
    Cs: Sequence[float] = DEFAULT_CS,
    window: int = 1,
    n_jobs: int | None = 1,
) -> tuple[np.ndarray, float, int]:
    """Fit on the training clips and predict the test clips: (predictions, C, convergence warnings).

    ``n_jobs`` runs the inner search's fits in parallel (joblib; -1: all cores); warnings raised in worker
    processes are not counted."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if protocol == "pooled":
            X = np.stack([pool_map(f) for f in train_feats])
            model, used_C = fit_pooled(
                X, np.asarray(y_train), np.asarray(folds_train), np.asarray(groups_train), C=C, Cs=Cs, n_jobs=n_jobs
            )
            pred = model.predict(np.stack([pool_map(f) for f in test_feats]))
        elif protocol == "windows":
            used_C = WINDOWS_C if C is None else float(C)
            model = fit_windows(train_feats, np.asarray(y_train), window, C=used_C)
            pred = predict_windows(model, test_feats, window)
        else:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    n_warn = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    for w in caught:  # anything else is passed on
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return np.asarray(pred), used_C, n_warn


def cross_validate(
    protocol: Protocol,
    feats: Sequence[np.ndarray],
    y: np.ndarray,
    folds: np.ndarray,
    groups: np.ndarray,
    *,
    C: float | None = None,
    Cs: Sequence[float] = DEFAULT_CS,
    window: int = 1,
    n_jobs: int | None = 1,
) -> list[FoldResult]:
    """Hold out each fold in turn (train on the others, leak-free by group); one :class:`FoldResult` each."""
    y, folds, groups = np.asarray(y), np.asarray(folds), np.asarray(groups)
    results = []
    for k, train, test, dropped in outer_splits(folds, groups):
        pred, used_C, n_warn = train_and_predict(
            protocol,
            [feats[i] for i in train],
            y[train],
            folds[train],
            groups[train],
            [feats[i] for i in test],
            C=C,
            Cs=Cs,
            window=window,
            n_jobs=n_jobs,
        )
        results.append(FoldResult(k, test, pred, used_C, len(train), dropped, n_warn))
    return results


__all__ = [
    "DEFAULT_CS",
    "PROTOCOLS",
    "WINDOWS_C",
    "FoldResult",
    "cross_validate",
    "fit_pooled",
    "fit_windows",
    "inner_splits",
    "outer_splits",
    "pool_map",
    "predict_windows",
    "train_and_predict",
    "window_frames",
    "windows_of",
]
