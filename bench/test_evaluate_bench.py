"""Transfer evaluation's SVM stage at ESC-10 scale: 5-fold cross-validation, clips/s.

Synthetic pool5-shaped maps (400 clips x 256 channels x 27 frames, 10 classes, 5 folds), so the time is the
classifier's alone (feature extraction is timed in test_extract_bench.py). ``windows`` is the original protocol
(C = 0.01 fixed, every 3-frame window a sample); ``pooled`` includes the inner 4-fold search over the default
C grid. One round each. ESC-50 scale (2,000 clips, 50 one-vs-rest classes) costs roughly 25x as much: it took
6-13 minutes per protocol on a shared 2-core CPU, too long for `make bench`'s 10-minute budget.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from bench.conftest import Sizes
from soundnet_fast.evaluation.protocols import DEFAULT_CS, cross_validate


def _esc50_like(smoke: bool) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    n_classes, per_class = (3, 10) if smoke else (10, 40)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(n_classes), per_class)
    folds = np.tile(np.arange(1, 6), len(y) // 5)
    groups = np.asarray([f"clip{i}" for i in range(len(y))])  # one source per clip: no training clip is dropped
    centers = rng.normal(size=(n_classes, 256, 1)).astype(np.float32)
    maps = [np.maximum(0.0, centers[c] + rng.normal(scale=3.0, size=(256, 27))).astype(np.float32) for c in y]
    return maps, y, folds, groups


@pytest.mark.parametrize(("protocol", "n_jobs"), [("windows", 1), ("pooled", 1), ("pooled", -1)])
def test_svm_cross_validation(benchmark, sizes: Sizes, protocol: str, n_jobs: int) -> None:
    maps, y, folds, groups = _esc50_like(sizes.smoke)
    variant = protocol if protocol == "windows" else f"pooled, search over {len(DEFAULT_CS)} C, n_jobs={n_jobs}"
    benchmark.group = "evaluate: 5-fold linear SVM"
    benchmark.extra_info.update(
        group=benchmark.group,
        variant=variant,
        items=len(y),
        device="cpu",
        smoke=sizes.smoke,
        baseline=protocol == "windows",
        unit="clips/s",
    )
    out: list = []
    cpu0 = time.process_time()
    benchmark.pedantic(
        lambda: out.append(cross_validate(protocol, maps, y, folds, groups, window=3, n_jobs=n_jobs)),
        rounds=1,
        iterations=1,
        warmup_rounds=0,
    )
    # This process's CPU seconds: on a shared machine a steadier figure than wall time (joblib workers excluded).
    benchmark.extra_info["process_cpu_s"] = time.process_time() - cpu0
    results = out[-1]
    acc = float(np.mean([np.mean(r.y_pred == y[r.test_index]) for r in results]))
    benchmark.extra_info.update(
        accuracy=acc, chosen_C=[r.C for r in results], convergence_warnings=sum(r.convergence_warnings for r in results)
    )
    assert len(results) == 5
