"""The static model against a GPU check's measured kernel times: ``python -m bench.sass.validate RESULTS``.

``RESULTS`` is a committed GPU-check folder (its ``05-kernels.jsonl``: every launch of one SoundNet-8 bf16
training step at batch 64 on 20 s clips, timed with ``do_bench`` at the SM clock it records). The model is run
again on this tree's kernels for the same configuration and each launch is matched by (layer, phase, kernel,
grid). Per launch it prints the measured time, the prediction the check was run against (``pred us``, from the
sass_report of that day) and this model's prediction with its binding bound (``dependency`` is the
per-warp stall term of bench/sass/stalls.py). ``--json`` writes the rows and the summary.

Pass ``--block-m`` with the conv tile size the check ran when the tree's differs (the 2026-11-30 H200 check ran
128-position tiles; the tree now uses 32). The kernels are compiled with the Triton version the check ran (its
``00-environment.jsonl``; Triton 3.6 and 3.9 compile the same source to different code). The measured times
came from the kernels of the commit the check ran; when this tree's kernels differ (the check's README names the
commit), the comparison is for the launches whose warp-instruction count still matches the check's prediction
(``same code`` column), and the others are listed but not summarised. These are predictions set against
measurements of one run on one H200: a model that fits them can still be wrong elsewhere.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

SAME_CODE_TOL = 0.01  # warp-instruction counts within 1 %: the same compiled code (the counts matched to 0.1 %)
TARGET = 0.30  # the kernels issue's criterion: the model within 30 % of the measured time


def measured_rows(folder: Path) -> list[dict[str, Any]]:
    """The per-launch rows (``measured vs predicted``) of a GPU check's kernels section."""
    path = folder / "05-kernels.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (a GPU check folder holds 05-kernels.jsonl)")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from None
            row = r.get("row", {}) if r.get("type") == "row" else {}
            if "kernel" in row and isinstance(row.get("us"), int | float):
                rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no per-launch rows")
    return rows


def check_triton(folder: Path) -> str | None:
    """The Triton version a GPU check ran (its ``00-environment.jsonl``), or None when it is not recorded."""
    path = folder / "00-environment.jsonl"
    if not path.is_file():
        return None
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("key") == "triton" and isinstance(r.get("value"), str):
                return r["value"]
    return None


def compare(measured: list[dict[str, Any]], predicted: list[dict[str, Any]], clock_mhz: float,
            launch_us: float) -> dict[str, Any]:  # fmt: skip
    """Match launches and compare. ``predicted``: model_launch rows of the same step; ``clock_mhz``: the SM
    clock the measurement ran at (the model's H200 clock is scaled to it, its ``launch_us`` per-launch cost
    is not)."""
    from .model import DEVICES

    scale = DEVICES["H200"].clock_hz / (clock_mhz * 1e6)
    phase = {"for": "forward", "bac": "backward"}
    by_key: dict[tuple, list[dict]] = {}
    for p in predicted:
        by_key.setdefault((p["layer"], p["phase"], p["kernel"], tuple(p["grid"])), []).append(p)
    out = []
    for m in measured:
        key = (m["layer"], phase.get(m["phase"], m["phase"]), m["kernel"], tuple(m["grid"]))
        cands = by_key.get(key)
        if not cands:
            continue
        p = cands.pop(0)
        old_wi = m.get("pred warp-instr")
        same = isinstance(old_wi, int | float) and math.isclose(p["warp_instructions"], old_wi, rel_tol=SAME_CODE_TOL)
        new_us = (p["predicted_us"]["H200"] - launch_us) * scale + launch_us
        out.append({
            "layer": m["layer"], "phase": key[1], "kernel": m["kernel"], "grid": list(key[3]),
            "measured_us": m["us"], "old_pred_us": m.get("pred us"), "pred_us": new_us,
            "ratio": m["us"] / new_us, "old_ratio": m.get("meas/pred"), "bound": p["detail"]["bound_H200"],
            "fixed_stall_mean": p["detail"].get("fixed_stall_mean"), "same_code": same,
        })  # fmt: skip
    same = [r for r in out if r["same_code"]]
    err = [abs(r["pred_us"] / r["measured_us"] - 1) for r in same]
    old = [abs(1 / r["old_ratio"] - 1) for r in same if isinstance(r["old_ratio"], int | float)]
    conv12 = [r for r in same if r["layer"] in ("conv1", "conv2")]
    summary = {
        "launches_matched": len(out),
        "launches_same_code": len(same),
        "median_abs_error": statistics.median(err) if err else None,
        "median_abs_error_old": statistics.median(old) if old else None,
        "within_30pct": sum(e <= TARGET for e in err),
        "conv1_conv2_within_30pct": f"{sum(abs(r['pred_us'] / r['measured_us'] - 1) <= TARGET for r in conv12)}"
                                    f" of {len(conv12)}",
        "sum_measured_us": sum(r["measured_us"] for r in same),
        "sum_pred_us": sum(r["pred_us"] for r in same),
    }  # fmt: skip
    return {"rows": out, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sass.validate", description=__doc__.splitlines()[0])
    ap.add_argument("results", help="a GPU check folder, e.g. bench/results/gpu_check-h200-2026-11-30")
    ap.add_argument("--workers", type=int, default=2, help="compile processes (default %(default)s)")
    ap.add_argument("--json", help="write the comparison here")
    ap.add_argument("--block-m", type=int, help="GPU conv tile positions to model (kernels/_conv_fwd.py "
                    "BLOCK_M_GPU; default: the tree's). The H200 check of 2026-11-30 ran 128")  # fmt: skip
    ap.add_argument("--triton", help="compile with this Triton version (default: the one the check ran, installed "
                    "once into .cache/triton-<version> when it is not the importable one)")  # fmt: skip
    args = ap.parse_args(argv)
    try:
        measured = measured_rows(Path(args.results))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    version = args.triton or check_triton(Path(args.results))
    if version:
        from .compile import rerun_with_triton

        rc = rerun_with_triton(version, "bench.sass.validate", list(argv if argv is not None else sys.argv[1:]))
        if rc is not None:
            return rc
    clocks = {float(r.get("SM MHz", 0) or 0) for r in measured}
    clock = max(clocks) if clocks and max(clocks) > 0 else 1980.0
    os.environ.pop("TRITON_INTERPRET", None)
    from . import run
    from .launches import Config
    from .model import ASSUMPTIONS

    if args.block_m:
        from soundnet_fast.kernels import _conv_fwd

        _conv_fwd.BLOCK_M_GPU = args.block_m  # read by conv_blocks at each launch the model records
    results, _ = run.evaluate([Config("soundnet8", 64, "bf16", 20.0)], workers=args.workers, progress=False)
    predicted = results[0][1]["launches"]
    res = compare(measured, predicted, clock, ASSUMPTIONS["launch_us"][0])
    print("| layer | phase | kernel | measured us | check's pred us | pred us | meas/pred | bound | mean stall | "
          "same code |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        st = f"{r['fixed_stall_mean']:.2f}" if r["fixed_stall_mean"] is not None else "-"
        same = "yes" if r["same_code"] else "no"
        print(f"| {r['layer']} | {r['phase']} | {r['kernel']} | {r['measured_us']:.1f} | {r['old_pred_us']} | "
              f"{r['pred_us']:.1f} | {r['ratio']:.2f} | {r['bound']} | {st} | {same} |")  # fmt: skip
    s = res["summary"]
    print(json.dumps(s, indent=1))
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps({"results": os.fspath(args.results), "clock_mhz": clock, **res}, indent=1))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
