"""The demo's table: distilled student vs random weights (as initialised, BN re-estimated) vs MFCC + SVM,
the demo's margins checked, per-stage timings and where the results and plots are."""

from __future__ import annotations

import os
from typing import Any

# The demo's margins (README.md, "The demo", shows them measured): distilled beats the better random baseline by
# >= 20 points (10 until the demo trained a fixed 1200 steps) and by more than twice the standard deviation across
# folds, and MFCC + SVM by >= 20 points.
MARGIN_RANDOM, MARGIN_MFCC = 20.0, 20.0


def summarize_demo(
    ev: dict[str, Any],
    cfg: Any,
    steps: int,
    agreement: float,
    teachers: dict[str, dict],
    paths: dict[str, str],
) -> dict[str, Any]:
    """What demo.json records and the table shows: the four rows of ``ev`` (an ``evaluate`` result with
    baselines) in percent, the margins and their :func:`verdict`, the config ``cfg`` (a ``DemoConfig``) without
    its timings, training steps, the objects teacher's agreement with the world, the timings and the paths."""
    m = ev["methods"]

    def row(key: str) -> dict[str, Any]:
        e = m[key]
        return {
            "label": e["label"],
            "mean": 100 * float(e["mean_accuracy"]),
            "std": 100 * float(e["std_accuracy"]),
            "folds": [100 * float(a) for a in e["fold_accuracy"].values()],
            "per_class": {c: (None if a is None else 100 * a) for c, a in e["per_class_accuracy"].items()},
        }

    rows = {k: row(k) for k in ("soundnet", "random_init", "random_bn", "mfcc")}
    return {
        "config": {k: v for k, v in vars(cfg).items() if k != "timings"},
        "rows": rows,
        **verdict(rows),
        "train_steps": steps,
        "teacher_agreement": agreement,
        "teacher_accuracy": {k: v.get("accuracy") for k, v in teachers.items()},
        "layer": ev["layer"],
        "timings": dict(cfg.timings),
        "machine": machine(),
        "paths": {
            "run": paths["run"],
            "checkpoint": os.path.join(paths["run"], "checkpoint.pt"),
            "results": os.path.join(paths["eval"], "results.json"),
            "plots": sorted(
                os.path.join(paths["eval"], p) for e in m.values() for p in (e.get("plots") or {}).values()
            ),
        },
    }


def machine() -> str:
    """The CPU's model name and the threads torch uses, e.g. "AMD EPYC 7B13, 2 threads" (the printed timings
    name the machine they were measured on)."""
    import contextlib
    import platform

    import torch

    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:  # Linux: the model name
        name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    return f"{name}, {torch.get_num_threads()} threads"


def verdict(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The demo's margins from ``rows`` (key -> {"mean", "std"} in percent, keys soundnet, random_init,
    random_bn, mfcc): the better random baseline, the gaps in points, twice the larger standard deviation, and
    under "verdict" whether each margin (MARGIN_RANDOM, 2 std, MARGIN_MFCC) holds and whether all do."""
    best_random = max(("random_init", "random_bn"), key=lambda k: rows[k]["mean"])
    d = rows["soundnet"]
    gap_random = d["mean"] - rows[best_random]["mean"]
    gap_mfcc = d["mean"] - rows["mfcc"]["mean"]
    two_std = 2 * max(d["std"], rows[best_random]["std"])
    checks = {
        "random_by_margin": round(gap_random, 6) >= MARGIN_RANDOM,
        "random_by_2std": gap_random > two_std,
        "mfcc_by_margin": round(gap_mfcc, 6) >= MARGIN_MFCC,
    }
    checks["all"] = all(checks.values())
    return {
        "best_random": best_random,
        "gap_random": gap_random,
        "gap_mfcc": gap_mfcc,
        "two_std": two_std,
        "verdict": checks,
    }


def print_table(res: dict[str, Any]) -> None:
    from rich.table import Table

    from soundnet_fast.console import stdout_console

    console = stdout_console()  # the table goes to stdout; progress went to stderr
    c = res["config"]
    t = Table(title=f"Transfer to the labeled set: 5-fold accuracy, {c['arch']} layer {res['layer']}, linear SVM")
    t.add_column("features")
    t.add_column("mean", justify="right")
    t.add_column("std", justify="right")
    t.add_column("per fold", justify="right")
    names = {"soundnet": "distilled student", "random_init": "random weights, as initialised",
             "random_bn": "random weights, BN re-estimated", "mfcc": "MFCC + SVM"}  # fmt: skip
    for key, r in res["rows"].items():
        mark = " (better random)" if key == res["best_random"] else ""
        t.add_row(names[key] + mark, f"{r['mean']:.1f} %", f"{r['std']:.1f}", " ".join(f"{a:.0f}" for a in r["folds"]))
    console.print(t)
    v = res["verdict"]
    ok = lambda b: "[green]yes[/green]" if b else "[red]no[/red]"
    by_random, by_2std, by_mfcc = (ok(v[k]) for k in ("random_by_margin", "random_by_2std", "mfcc_by_margin"))
    console.print(
        f"distilled - better random = {res['gap_random']:+.1f} points (>= {MARGIN_RANDOM:g}: {by_random}; "
        f"> 2 std = {res['two_std']:.1f}: {by_2std});  "
        f"distilled - MFCC = {res['gap_mfcc']:+.1f} points (>= {MARGIN_MFCC:g}: {by_mfcc})"
    )
    acc = ", ".join(f"{k} {a:.0%}" for k, a in res["teacher_accuracy"].items() if a is not None)
    console.print(
        f"{c['arch']}, {c['clip_seconds']:g} s clips, {res['train_steps']} steps of batch {c['batch_size']}; "
        f"objects teacher agrees with the world's ground truth on {res['teacher_agreement']:.0%} of clips"
        + (f" (held-out frames: {acc})" if acc else "")
    )
    if res.get("released"):
        console.print("the released SoundNet-8 on real recordings (top objects | top scenes, mean over steps):")
        for line in res["released"]:
            console.print("  " + line, markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"timings ({res.get('machine') or machine()}): "
        + ", ".join(f"{k} {s / 60:.1f} min" for k, s in res["timings"].items())
    )
    p = res["paths"]
    console.print(f"run: {p['run']}  results: {p['results']}")
    if p["plots"]:
        console.print("plots: " + "  ".join(p["plots"]))
