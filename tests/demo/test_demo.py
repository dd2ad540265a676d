"""`soundnet-fast demo`: a miniature world through every stage (world, prepare, train, evaluate), and the
table's verdict logic."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.demo import run as demo


def _ev(means: dict[str, float], stds: dict[str, float]) -> dict:
    """An evaluate() result with the given per-method mean and std (fractions)."""
    methods = {}
    for key, m in means.items():
        s = stds[key]
        folds = [m - s, m + s, m - s, m + s, m]  # mean m, population std 0.8944 * s
        methods[key] = {
            "label": key,
            "mean_accuracy": float(np.mean(folds)),
            "std_accuracy": float(np.std(folds)),
            "fold_accuracy": {str(i + 1): a for i, a in enumerate(folds)},
            "per_class_accuracy": {"a": m},
        }
    return {"methods": methods, "layer": "conv4"}


def _summary(means: dict[str, float], stds: dict[str, float]) -> dict:
    return demo.summarize_demo(_ev(means, stds), demo.DemoConfig(), 10, 1.0, {}, {"run": "r", "eval": "e"})


def test_verdict_needs_twenty_points_two_std_and_twenty_over_mfcc() -> None:
    stds = {"soundnet": 0.02, "random_init": 0.02, "random_bn": 0.02, "mfcc": 0.02}
    ok = _summary({"soundnet": 0.93, "random_init": 0.70, "random_bn": 0.72, "mfcc": 0.40}, stds)
    assert ok["best_random"] == "random_bn"  # the better of the two random baselines is the baseline
    assert ok["gap_random"] == pytest.approx(21.0) and ok["verdict"]["all"]
    close = _summary({"soundnet": 0.91, "random_init": 0.70, "random_bn": 0.72, "mfcc": 0.40}, stds)
    assert close["gap_random"] == pytest.approx(19.0)
    assert not close["verdict"]["random_by_margin"] and not close["verdict"]["all"]
    noisy = _summary(
        {"soundnet": 0.93, "random_init": 0.70, "random_bn": 0.72, "mfcc": 0.40}, {**stds, "soundnet": 0.12}
    )
    assert noisy["verdict"]["random_by_margin"] and not noisy["verdict"]["random_by_2std"]
    mfcc = _summary({"soundnet": 0.93, "random_init": 0.70, "random_bn": 0.72, "mfcc": 0.80}, stds)
    assert not mfcc["verdict"]["mfcc_by_margin"] and not mfcc["verdict"]["all"]
    # A gap of exactly 20 points passes, though 100 * 0.5125 - 100 * 0.3125 is 19.999999999999993 in floating point.
    edge = _summary({"soundnet": 0.5125, "random_init": 0.3125, "random_bn": 0.30, "mfcc": 0.10}, stds)
    assert edge["gap_random"] != 20.0 and edge["verdict"]["random_by_margin"]


def test_cli_registers_demo() -> None:
    from soundnet_fast.cli import build_parser

    args = build_parser().parse_args(["demo", "--out", "x", "--minutes", "2"])
    assert args._run is demo.run and args.minutes == 2.0


def test_miniature_world_through_every_stage(tmp_path, capsys) -> None:
    """Every stage on a miniature world (3 videos, 1 labeled clip per class per fold, 3 training steps)."""
    from soundnet_fast.data import shards as data
    from soundnet_fast.demo import world as synth

    cfg = demo.DemoConfig(
        out=str(tmp_path / "demo"),
        videos=3,
        segments=2,
        per_fold=1,
        batch_size=2,
        teacher_frames=160,
        teacher_epochs=2,
        workers=1,
        device="cpu",
        steps=3,
        plots=False,
        recordings=str(tmp_path / "no-recordings"),  # tests/demo/test_released.py runs the released model
    )
    res = demo.run_demo(cfg)
    out = capsys.readouterr().out
    assert "distilled student" in out and "MFCC + SVM" in out and "timings (" in out
    assert res["released"] and ("no recordings in" in res["released"][0] or "not cached" in res["released"][0])
    assert res["released"][0] in out

    shards = os.path.join(cfg.out, "shards")
    manifest = data.read_manifest(shards)
    # SoundNet-5 on 3 s clips: one head step, one teacher frame per clip (docs/design.md#model, #distillation).
    assert (manifest["steps"], manifest["clip_samples"]) == (1, 3 * SAMPLE_RATE)
    assert manifest["num_clips"] == 3 * 2  # segments line up with clips: no padded extra clip
    assert manifest["audio_decoder"] == "pyav"  # the same decoder on every machine, plugin or not
    assert manifest["teachers"]["objects"]["class_names"] == [s for s, _ in synth.OBJECTS]
    assert manifest["teachers"]["scenes"]["num_classes"] == len(synth.SCENES)

    assert res["train_steps"] == 3
    saved = json.loads(open(os.path.join(cfg.out, "demo.json")).read())
    assert set(saved["rows"]) == {"soundnet", "random_init", "random_bn", "mfcc"}
    for row in saved["rows"].values():
        assert 0.0 <= row["mean"] <= 100.0 and len(row["folds"]) == 5
    assert set(saved["timings"]) == {"world", "prepare", "train", "evaluate", "released", "total"}
    assert saved["machine"] and saved["released"] == res["released"]
    assert 0.0 <= saved["teacher_agreement"] <= 1.0
    results = json.loads(open(os.path.join(cfg.out, "eval", "results.json")).read())
    assert results["num_clips"] == 5 * len(synth.LABELED_CLASSES)


def test_a_rerun_with_another_world_in_the_same_folder_is_refused(tmp_path) -> None:
    cfg = demo.DemoConfig(out=str(tmp_path), videos=5)
    demo._check_same_world(cfg)
    demo._check_same_world(demo.DemoConfig(out=str(tmp_path), videos=5, train_seed=3))  # training may differ
    with pytest.raises(ValueError, match=r"demo_world.json: .* another world \(videos 5 -> 6\)"):
        demo._check_same_world(demo.DemoConfig(out=str(tmp_path), videos=6))


def test_exit_status_reports_the_margin_only_with_check(monkeypatch) -> None:
    from soundnet_fast.cli import build_parser

    monkeypatch.setattr(demo, "run_demo", lambda cfg: {"verdict": {"all": False}})
    assert demo.run(build_parser().parse_args(["demo"])) == 0  # the pipeline ran; the table says the verdict
    assert demo.run(build_parser().parse_args(["demo", "--check"])) == 3
    monkeypatch.setattr(demo, "run_demo", lambda cfg: {"verdict": {"all": True}})
    assert demo.run(build_parser().parse_args(["demo", "--check"])) == 0


def test_a_clip_too_short_for_the_student_is_refused_before_any_work(tmp_path) -> None:
    cfg = demo.DemoConfig(out=str(tmp_path / "demo"), clip_seconds=2.0)  # SoundNet-5 needs 2.6 s
    with pytest.raises(ValueError, match=r"--clip-seconds 2 is too short for soundnet5: .*56,798 samples"):
        demo.run_demo(cfg)
    assert not os.path.exists(cfg.out)


def test_training_length_is_steps_by_default_and_a_budget_only_when_asked(tmp_path) -> None:
    """--steps fixes the student (a rerun finds it done); --minutes stops at the budget: with none left a fresh run
    still takes its first 5 steps, so there is a student to evaluate."""
    from soundnet_fast.console import stderr_console
    from tests.helpers.train import make_shards

    shards = make_shards(tmp_path / "shards", num_clips=4)
    console = stderr_console()

    def train(run: str, **kw) -> int:
        cfg = demo.DemoConfig(batch_size=2, device="cpu", **kw)
        return demo._train(cfg, {"shards": shards, "run": str(tmp_path / run)}, "cpu", console)

    assert demo.DemoConfig().minutes is None and demo.DemoConfig().steps == demo.STEPS
    assert train("fixed", steps=3) == 3
    assert train("fixed", steps=3) == 3  # done: the rerun resumes at the end and trains nothing
    from soundnet_fast.train import checkpoint as ckpt

    saved = ckpt.load(ckpt.checkpoint_path(str(tmp_path / "fixed")))
    assert saved["config"]["lr_schedule"] == "constant" and saved["config"]["steps"] == 3
    assert train("budget", steps=50, minutes=0.0) == 5
    # A student trained otherwise is never reported as this run's.
    with pytest.raises(ValueError, match=r"trained with other settings \(lr 0.001 -> 0.002\); choose another --out"):
        train("fixed", steps=3, lr=2e-3)
    with pytest.raises(ValueError, match=r"seed 0 -> 4"):
        train("fixed", steps=3, train_seed=4)
