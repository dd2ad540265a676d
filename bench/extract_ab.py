"""Interleaved A/B of CPU feature extraction: the unmodified eval model against ``SoundNet.inference()``.

``python -m bench.extract_ab --rounds 40`` times pool5 features of 10 s clips (uniform noise x256, the model's
input) at batch 1 and 16, torch threads = 2: each round runs eager and inference back to back in ABBA order
(eager, inference, inference, eager), so a load change on the machine hits both sides of the ratio alike. It
reports per batch the median milliseconds of each side, the median of the per-round ratios eager / inference
with its 10th-90th percentiles, and the parity (max|a - b| / max|b|, the inference form's contract is 1e-5), and
writes them with the CPU model, its vector extensions, the torch version and the load average before and after to
``--json`` (default ``bench/results/extract_ab-cpu-<date>.json``). The pytest-benchmark matrix
(``bench/test_extract_bench.py``) times each side in its own block; this is the paired form of the same question.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import statistics
import time
from typing import Any

import numpy as np
import torch

from bench.conftest import cpu_info
from bench.test_extract_bench import MATRIX_THREADS, eval_model
from soundnet_fast.constants import INPUT_SCALE, SAMPLE_RATE


def measure(batch: int, rounds: int, seconds: float = 10.0, layer: str = "pool5") -> dict[str, Any]:
    """Paired timings of one cell; see the module docstring."""
    eager = eval_model()
    folded = copy.deepcopy(eager).inference()
    rng = np.random.default_rng(batch)
    x = torch.from_numpy(rng.uniform(-0.5, 0.5, (batch, 1, int(seconds * SAMPLE_RATE))).astype(np.float32))
    x = x * INPUT_SCALE
    with torch.no_grad():
        ref, got = eager.features(x, layer), folded.features(x, layer)
        parity = float((got - ref).abs().max() / ref.abs().max())
        for _ in range(3):  # warm-up: allocator, oneDNN primitives, the polyphase weights
            eager.features(x, layer), folded.features(x, layer)
        t_e, t_i = [], []
        for _ in range(rounds):
            pair = {}
            for side in ("e", "i", "i", "e"):
                model = eager if side == "e" else folded
                t0 = time.perf_counter()
                model.features(x, layer)
                pair.setdefault(side, []).append(time.perf_counter() - t0)
            t_e.append(sum(pair["e"]) / 2)
            t_i.append(sum(pair["i"]) / 2)
    ratios = sorted(e / i for e, i in zip(t_e, t_i, strict=True))
    q = statistics.quantiles(ratios, n=10) if len(ratios) >= 2 else ratios * 9
    return {
        "batch": batch,
        "seconds": seconds,
        "layer": layer,
        "rounds": rounds,
        "eager_ms": statistics.median(t_e) * 1e3,
        "inference_ms": statistics.median(t_i) * 1e3,
        "eager_clips_per_s": batch / statistics.median(t_e),
        "inference_clips_per_s": batch / statistics.median(t_i),
        "ratio_median": statistics.median(ratios),
        "ratio_p10": q[0],
        "ratio_p90": q[-1],
        "parity_max_rel_err": parity,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.extract_ab", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=40, help="ABBA rounds per batch size (default %(default)s)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes (default 1 16)")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length (default %(default)s)")
    p.add_argument("--json", help="where to write the results (default bench/results/extract_ab-cpu-<date>.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(MATRIX_THREADS)
    load_before = os.getloadavg()
    cells = []
    for batch in args.batch:
        cell = measure(batch, args.rounds, args.seconds)
        cells.append(cell)
        spread = f"p10-p90 {cell['ratio_p10']:.2f}-{cell['ratio_p90']:.2f}"
        print(f"pool5 {args.seconds:g} s b{batch}: eager {cell['eager_ms']:.1f} ms, inference "
              f"{cell['inference_ms']:.1f} ms; eager / inference {cell['ratio_median']:.2f}x "
              f"({spread}); parity {cell['parity_max_rel_err']:.1e}")  # fmt: skip
    date = dt.date.today().isoformat()
    doc = {
        "what": "pool5 extraction, eager SoundNet8().eval() vs SoundNet.inference(), ABBA-interleaved rounds",
        "date": date,
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "torch_threads": MATRIX_THREADS,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cells": cells,
    }
    path = args.json or os.path.join(os.path.dirname(__file__), "results", f"extract_ab-cpu-{date}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
