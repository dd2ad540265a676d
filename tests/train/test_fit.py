"""``Trainer.fit(max_seconds)``: it stops after the step during which the budget ran out, with a status of its own,
and its checkpoint resumes bit for bit to an uninterrupted run's result; without a budget nothing changes.
The budget's clock is replaced by the step count (one "second" per step), so no test depends on timing."""

from __future__ import annotations

import json

import pytest
import torch

from soundnet_fast.train import checkpoint as ckpt
from soundnet_fast.train import trainer as train
from tests.helpers.train import assert_same_run, make_shards

STEPS = 6
ARGS = ["--model", "soundnet5", "--batch-size", "2", "--steps", str(STEPS), "--checkpoint-every", "4",
        "--log-every", "1", "--progress", "off", "--no-tensorboard"]  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("fit") / "shards", num_clips=8)


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    """An uninterrupted run of STEPS steps, as the command line makes it (fit without a budget)."""
    ref = tmp_path_factory.mktemp("fit") / "ref"
    assert train.main([shards, "--out", str(ref), *ARGS]) == 0
    return ref


def _trainer(shards, out, steps=STEPS, state=None):
    cfg = train.TrainConfig(shards=shards, out=str(out), model="soundnet5", batch_size=2, steps=steps,
                            checkpoint_every=4, log_every=1, progress="off", tensorboard=False)  # fmt: skip
    return train.Trainer(cfg, train.DistEnv(0, 1, torch.device("cpu")), state)


def _step_clock(monkeypatch, tr):
    monkeypatch.setattr(train, "_clock", lambda: float(tr.step))


def test_a_spent_budget_stops_after_that_step_and_the_checkpoint_resumes_bit_exactly(
    shards, reference, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    tr = _trainer(shards, run)
    _step_clock(monkeypatch, tr)
    code = tr.fit(max_seconds=2.5)  # runs out during step 3 (not a checkpoint or epoch boundary)
    tr.close()
    assert code == train.TIME_UP
    assert code not in (train.DONE, 1, 2) and code < 128  # neither done, an error, nor 128 + a signal
    assert "time budget spent at step 3" in capsys.readouterr().err
    state = ckpt.load(run / ckpt.CHECKPOINT)
    assert state["step"] == 3 and not state["finished"]
    assert [r["step"] for r in ckpt.read_metrics(run)] == [1, 2, 3]
    # Resumed as a signal-stopped run is: from the command line.
    assert train.main(["--out", str(run), "--resume"]) == 0
    assert_same_run(reference, run, STEPS)


def test_fit_again_after_a_spent_budget_continues_the_same_run(shards, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    tr = _trainer(shards, run)
    _step_clock(monkeypatch, tr)
    assert tr.fit(max_seconds=1.5) == train.TIME_UP and tr.step == 2
    assert tr.fit(max_seconds=0.0) == train.TIME_UP and tr.step == 3  # a budget already spent: one step
    assert tr.fit() == train.DONE and tr.step == STEPS
    tr.close()
    assert_same_run(reference, run, STEPS)


def test_without_a_budget_or_within_it_fit_runs_to_the_end(shards, tmp_path, monkeypatch):
    outs = []
    for name, budget in (("none", None), ("ample", 100.0)):
        out = tmp_path / name
        tr = _trainer(shards, out, steps=3)
        _step_clock(monkeypatch, tr)
        assert tr.fit(max_seconds=budget) == train.DONE and tr.step == 3
        assert tr.fit(max_seconds=budget) == train.DONE and tr.step == 3  # nothing left to do
        tr.close()
        outs.append(ckpt.load(out / ckpt.CHECKPOINT))
    a, b = outs
    assert a["step"] == b["step"] == 3 and a["finished"] and b["finished"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_the_demo_budget_bench_runs_both_loops(shards, tmp_path):
    """bench/demo_train_budget.py on tiny shards with a 2 s budget each: both loops train and it reports them."""
    from bench import demo_train_budget as bench

    out = tmp_path / "json" / "budget.json"
    argv = ["--minutes", str(2 / 60), "--shards", shards, "--out", str(tmp_path), "--batch-size", "2",
            "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["old"]["steps"] >= 5  # the old loop's first round is 5 steps whatever the budget
    assert res["new"]["steps"] >= 1
    assert res["steps_ratio"] == pytest.approx(res["new"]["steps"] / res["old"]["steps"])
    assert res["cpu_model"] and res["torch"] == torch.__version__
    for name in ("old", "new"):
        assert ckpt.load(tmp_path / f"budget-{name}" / ckpt.CHECKPOINT)["step"] == res[name]["steps"]
