"""Checkpoints: killed with SIGKILL and stopped with SIGTERM, a resumed run is bit-identical to an uninterrupted one;
the checkpoint file's own guarantees (atomic, readable as weights, clear errors)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from soundnet_fast.train import checkpoint as ckpt
from soundnet_fast.train import trainer as train
from soundnet_fast.weights import save_native
from tests.helpers.train import REPO, assert_same_run, child_env, make_shards, train_cmd

STEPS = 15
# A warm-up and a cosine schedule: the learning rate is a function of the step, so a resumed run continues it.
ARGS = ["--model", "soundnet5", "--batch-size", "2", "--steps", str(STEPS), "--checkpoint-every", "3",
        "--log-every", "1", "--progress", "off", "--no-tensorboard", "--lr-schedule", "cosine",
        "--warmup-steps", "2"]  # fmt: skip


def _last_step(path) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            return max((json.loads(line)["step"] for line in f if line.endswith("\n")), default=0)
    except FileNotFoundError:
        return 0


def _start_and_signal(cmd, metrics, after_step, sig, timeout=240.0):
    """Start the trainer, wait until ``metrics`` holds a record of ``after_step``, send ``sig``; returns the rc."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while _last_step(metrics) < after_step:
            if proc.poll() is not None:
                pytest.fail(f"trainer ended before the signal (rc {proc.returncode}): {proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("trainer too slow to reach the signal point")
            time.sleep(0.01)
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_killed_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    shards = make_shards(tmp_path / "shards", num_clips=8)
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert train.main([shards, "--out", str(ref), *ARGS]) == 0

    metrics = run / ckpt.METRICS
    # SIGKILL part-way: at least one checkpoint (step 3) is behind, records of later steps are ahead of it.
    rc = _start_and_signal(train_cmd(shards, "--out", str(run), *ARGS), metrics, 5, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    killed_at = ckpt.load(run / ckpt.CHECKPOINT)["step"]
    assert 3 <= killed_at < STEPS and killed_at % 3 == 0
    # Resume, then stop it with SIGTERM: it checkpoints the step it is on and exits 128 + 15. The killed run may have
    # left records up to killed_at + 3 (the next checkpoint unfinished): wait for one past that.
    rc = _start_and_signal(train_cmd("--out", str(run), "--resume"), metrics, killed_at + 4, signal.SIGTERM)
    assert rc == 128 + signal.SIGTERM
    termed_at = ckpt.load(run / ckpt.CHECKPOINT)["step"]
    assert killed_at < termed_at < STEPS
    # Resume to the end (in this process, as the reference ran).
    assert train.main(["--out", str(run), "--resume"]) == 0

    assert_same_run(ref, run, STEPS)
    # The schedule ran: the last step's learning rate is the cosine's, near 0 (the optimizer state keeps it).
    lr = ckpt.load(run / ckpt.CHECKPOINT)["optimizer"]["param_groups"][0]["lr"]
    cfg = train.TrainConfig(steps=STEPS, lr_schedule="cosine", warmup_steps=2)
    assert lr == pytest.approx(cfg.lr * train.lr_factor(cfg, STEPS - 1)) and 0 < lr < 0.05 * cfg.lr


def test_resume_at_the_end_does_nothing_and_more_steps_continue(tmp_path, capsys):
    shards = make_shards(tmp_path / "shards", num_clips=4)
    run = tmp_path / "run"
    base = ["--model", "soundnet5", "--batch-size", "2", "--log-every", "1", "--progress", "off", "--no-tensorboard"]
    assert train.main([shards, "--out", str(run), "--steps", "1", *base]) == 0
    assert train.main(["--out", str(run), "--resume"]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert train.main(["--out", str(run), "--resume", "--steps", "2"]) == 0  # steps may change on resume
    assert ckpt.load(run / ckpt.CHECKPOINT)["step"] == 2
    assert [r["step"] for r in ckpt.read_metrics(run)] == [1, 2]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["steps"] == 2 and cfg["model"] == "soundnet5"


def test_truncate_metrics_drops_later_and_torn_records(tmp_path):
    path = tmp_path / ckpt.METRICS
    recs = [{"step": s, "split": "train", "loss": float(s)} for s in range(1, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 6, "spl')
    ckpt.truncate_metrics(tmp_path, 3)
    assert [r["step"] for r in ckpt.read_metrics(tmp_path)] == [1, 2, 3]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_load_names_the_file_and_the_problem(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load(tmp_path / "missing.pt")
    bad = tmp_path / "torn.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ckpt.CheckpointError, match=r"torn\.pt: not a readable checkpoint"):
        ckpt.load(bad)
    from soundnet_fast.model import build

    weights = tmp_path / "weights.pt"
    save_native(weights, build("soundnet5", 3, 2))
    with pytest.raises(ckpt.CheckpointError, match="not a training checkpoint.*--init"):
        ckpt.load(weights)


def test_check_compatible_lists_every_changed_field():
    saved = vars(train.TrainConfig(model="soundnet5"))
    ckpt.check_compatible(saved, {**saved, "steps": 5, "backend": "fused", "precision": "bf16"}, "x.pt")
    with pytest.raises(ckpt.CheckpointError, match="loss: checkpoint 'kl', now 'l2'; lr: checkpoint 0.001, now 0.1"):
        ckpt.check_compatible(saved, {**saved, "loss": "l2", "lr": 0.1}, "x.pt")


def test_rng_state_round_trips():
    state = ckpt.rng_state()
    want = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    ckpt.set_rng_state(state)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]
