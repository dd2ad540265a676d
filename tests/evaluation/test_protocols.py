"""SVM protocols: leak-free folds (outer and inner), the original windows protocol, pooled features."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.evaluation.protocols import (
    DEFAULT_CS,
    cross_validate,
    inner_splits,
    outer_splits,
    pool_map,
    predict_windows,
    train_and_predict,
    window_frames,
    windows_of,
)
from soundnet_fast.model import SoundNet8


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 7)), min_size=2, max_size=40))
def test_splits_never_share_a_clip_or_a_source(items):
    folds = np.array([f for f, _ in items])
    groups = np.array([f"g{g}" for _, g in items])
    for k, train, test, dropped in outer_splits(folds, groups):
        assert set(test.tolist()) == set(np.flatnonzero(folds == k).tolist())
        assert not set(train.tolist()) & set(test.tolist())
        assert not set(groups[train].tolist()) & set(groups[test].tolist())
        assert len(train) + len(test) + dropped == len(folds)
        sub_folds, sub_groups = folds[train], groups[train]
        if not any(len(a) and len(b) for _, a, b, _ in outer_splits(sub_folds, sub_groups)):
            with pytest.raises(ValueError, match="at least two training folds"):
                inner_splits(sub_folds, sub_groups)
        else:
            for tr, va in inner_splits(sub_folds, sub_groups):
                assert len(set(sub_folds[va].tolist())) == 1  # one training fold held out at a time
                assert not set(sub_groups[tr].tolist()) & set(sub_groups[va].tolist())
                assert not set(tr.tolist()) & set(va.tolist())


def _id_maps(n_clips: int, rng: np.random.Generator, y: np.ndarray) -> list[np.ndarray]:
    """Feature maps whose channel 0 is the clip's id everywhere, so any fitted matrix reveals its clips."""
    maps = []
    for i in range(n_clips):
        m = rng.normal(size=(4, 9)).astype(np.float32)
        m[1 + y[i]] += 3.0  # learnable class signal, one channel per class
        m[0] = i
        maps.append(m)
    return maps


@pytest.mark.parametrize("protocol", ["pooled", "windows"])
def test_no_fit_sees_a_test_clip_or_its_source(protocol, monkeypatch):
    rng = np.random.default_rng(0)
    folds = np.repeat([1, 2, 3, 4], 6)
    y = np.tile([0, 1, 2], 8)
    groups = np.array([f"src{i // 2}" for i in range(24)])
    groups[13] = groups[0]  # one source recording straddles folds 1 and 3: it must never be split
    maps = _id_maps(24, rng, y)
    seen: list[set[int]] = []
    fit = Pipeline.fit

    def spy(self, X, y=None, **kw):
        seen.append(set(np.round(np.asarray(X)[:, 0]).astype(int).tolist()))  # channel 0 leads either layout
        return fit(self, X, y, **kw)

    monkeypatch.setattr(Pipeline, "fit", spy)
    results = cross_validate(protocol, maps, y, folds, groups, window=3)
    per_fold = 1 + (len(DEFAULT_CS) * 3 if protocol == "pooled" else 0)  # (inner search: 3 folds x Cs) + refit
    assert len(seen) == 4 * per_fold
    for r, fits in zip(results, (seen[i * per_fold : (i + 1) * per_fold] for i in range(4)), strict=True):
        banned = set(r.test_index.tolist()) | {i for i in range(24) if groups[i] in set(groups[r.test_index])}
        assert all(not (s & banned) for s in fits), f"fold {r.fold} leaked"
        assert fits[-1] == set(range(24)) - banned  # the final fit uses every allowed clip
        assert r.num_dropped == len(banned) - len(r.test_index)
    assert [r.num_dropped for r in results] == [1, 0, 2, 0]  # src0: clips 0, 1 (fold 1) and 13 (fold 3)
    assert all(np.array_equal(r.y_pred, y[r.test_index]) for r in results)  # the class signal is learnt


def test_window_frames_match_the_original_scripts():
    hop = SoundNet8.geometry("pool5").hop
    t10 = SoundNet8.output_lengths(10 * SAMPLE_RATE)["pool5"]
    t30 = SoundNet8.output_lengths(30 * SAMPLE_RATE)["pool5"]
    # eval_esc50.lua / eval_dcase.lua: ceil(window / sound_length * T)
    assert window_frames(1.0, hop) == math.ceil(1 / 10 * t10) == 3
    assert window_frames(5.0, hop) == math.ceil(5 / 30 * t30)


def test_windows_of_and_pool_map():
    m = np.arange(2 * 5, dtype=np.float32).reshape(2, 5)
    w = windows_of(m, 3)
    assert w.shape == (3, 6)
    for i in range(3):
        assert np.array_equal(w[i], m[:, i : i + 3].reshape(-1))  # channel-major, as torch's view(-1) of (C, w)
    assert np.array_equal(pool_map(m), [2, 7, 4, 9])
    assert np.array_equal(pool_map(np.array([1.0, 2.0])), [1.0, 2.0])
    with pytest.raises(ValueError, match="fewer than the 6-frame window"):
        windows_of(m, 6)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_windows_prediction_averages_decision_values(n_classes):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 6))
    labels = rng.integers(0, n_classes, 40)
    model = Pipeline([("svc", LinearSVC(C=0.01))]).fit(X, labels)
    maps = [rng.normal(size=(2, 7)) for _ in range(5)]
    got = predict_windows(model, maps, 3)
    for m, g in zip(maps, got, strict=True):
        scores = np.atleast_2d(model.decision_function(windows_of(m, 3)).T).T
        if n_classes == 2:
            scores = np.stack([-scores[:, 0], scores[:, 0]], axis=1)
        assert g == model.classes_[np.argmax(scores.mean(axis=0))]


def test_fixed_C_and_separate_test_set():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 10)
    X = [rng.normal(size=3) + 4 * lab for lab in y]
    pred, C, _ = train_and_predict(
        "pooled", X, y, np.tile([1, 2], 10), np.arange(20).astype(str), [np.full(3, 4.0), np.zeros(3)], C=0.5
    )
    assert C == 0.5 and pred.tolist() == [1, 0]
    pred, C, _ = train_and_predict("pooled", X, y, np.tile([1, 2], 10), np.arange(20).astype(str), [np.zeros(3)])
    assert C in DEFAULT_CS and pred.tolist() == [0]
    with pytest.raises(ValueError, match="at least two training folds"):
        train_and_predict("pooled", X, y, np.ones(20), np.arange(20).astype(str), [np.zeros(3)])
    with pytest.raises(ValueError, match="unknown protocol"):
        train_and_predict("svm", X, y, np.ones(20), np.arange(20).astype(str), [np.zeros(3)])
