"""The trainer: options pairwise on CPU, overfitting, ablation wiring, non-finite steps, bad arguments, validation,
and torchrun/DDP on gloo against single-process emulations."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from torch.func import functional_call

from soundnet_fast.data import loader as data
from soundnet_fast.data.loader import ShardLoader
from soundnet_fast.model import SoundNet5, build
from soundnet_fast.train import checkpoint as ckpt
from soundnet_fast.train import trainer as train
from soundnet_fast.train.losses import distill_loss, top1_agreement
from soundnet_fast.train.step import Stepper
from soundnet_fast.weights import load_pretrained, save_native
from tests.helpers.train import CLASSES, SN8_CLIP, child_env, make_shards

BASE = ["--batch-size", "2", "--log-every", "1", "--progress", "off", "--no-tensorboard"]


@pytest.fixture(scope="module")
def sn5_shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("sn5"), num_clips=8)


@pytest.fixture(scope="module")
def sn8_shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("sn8"), num_clips=4, clip_samples=SN8_CLIP)


def _metrics(run):
    return [r for r in ckpt.read_metrics(run) if r["split"] == "train"]


def _first_batch(shards, batch=2, teachers=None):
    return next(iter(ShardLoader(shards, batch, shuffle=False, backend="numpy", teachers=teachers)))


def _stepper(seed=0, loss="kl", lr=1e-3):
    torch.manual_seed(seed)
    model = build("soundnet5", CLASSES["objects"], CLASSES["scenes"])
    model.check_inputs = False
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    return model, opt, Stepper(model, model, opt, device=torch.device("cpu"), loss=loss)


# ------------------------------------------------------------------------------------------- options
# A pairwise covering array over model x loss x teachers x precision x backend (8 rows, not all 48), plus auto.
PAIRWISE = [
    ("soundnet5", "kl", "objects,scenes", "fp32", "reference"),
    ("soundnet5", "l2", "objects", "bf16", "fused"),
    ("soundnet8", "kl", "scenes", "fp32", "fused"),
    ("soundnet8", "l2", "objects,scenes", "bf16", "reference"),
    ("soundnet5", "kl", "scenes", "bf16", "reference"),
    ("soundnet8", "kl", "objects", "fp32", "reference"),
    ("soundnet5", "l2", "objects,scenes", "fp32", "fused"),
    ("soundnet5", "l2", "scenes", "fp32", "reference"),
    ("soundnet5", "kl", "objects", "bf16", "auto"),  # the trainer must accept it (it once asked no kernels for it)
]


@pytest.mark.parametrize(("model", "loss", "teachers", "precision", "backend"), PAIRWISE)
def test_options_pairwise(tmp_path, sn5_shards, sn8_shards, capsys, model, loss, teachers, precision, backend):
    shards = sn8_shards if model == "soundnet8" else sn5_shards
    run = tmp_path / "run"
    argv = [shards, "--out", str(run), "--model", model, "--loss", loss, "--teachers", teachers,
            "--precision", precision, "--backend", backend, "--steps", "2", *BASE]  # fmt: skip
    rc = train.main(argv)
    err = capsys.readouterr().err
    assert rc == 0, err
    active = teachers.split(",")
    recs = _metrics(run)
    assert [r["step"] for r in recs] == [1, 2]
    for r in recs:
        assert math.isfinite(r["loss"]) and r["skipped"] == 0
        for h in ("objects", "scenes"):
            assert (r[f"loss_{h}"] is not None) == (h in active)
        assert r["loss"] == pytest.approx(sum(r[f"loss_{h}"] for h in active), rel=1e-5)
    # The checkpoint is a native weight file too; an inactive head is exactly its initialisation.
    trained = load_pretrained(run / "checkpoint.pt")
    assert (trained.arch, trained.num_objects, trained.num_scenes) == (model, CLASSES["objects"], CLASSES["scenes"])
    torch.manual_seed(0)
    init = build(model, CLASSES["objects"], CLASSES["scenes"])
    for h, head in (("objects", "objects_head"), ("scenes", "scenes_head")):
        same = torch.equal(getattr(trained, head).weight, getattr(init, head).weight)
        assert same == (h not in active), h
    assert not torch.equal(trained.conv1[0].weight, init.conv1[0].weight)


@pytest.mark.parametrize("kind", ["kl", "l2"])
def test_each_loss_overfits_one_batch(sn5_shards, kind):
    audio, targets = _first_batch(sn5_shards, batch=1)
    _, _, st = _stepper(loss=kind)
    losses = []
    for _ in range(12):
        st.step(audio, targets)
        losses.append(st.read()["loss"])
    assert all(math.isfinite(v) for v in losses)
    # Measured here: KL falls to ~5 % of its start by step 12, L2 (smaller softmax-space gradients) to ~28 %.
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0] and min(losses) < 0.2 * losses[0], losses


def test_objects_only_leaves_the_scene_head_without_gradient(tmp_path, sn5_shards):
    cfg = train.TrainConfig(shards=sn5_shards, out=str(tmp_path / "r"), model="soundnet5", teachers=["objects"],
                            batch_size=2, steps=1, progress="off", tensorboard=False)  # fmt: skip
    tr = train.Trainer(cfg, train.DistEnv(0, 1, torch.device("cpu")))
    audio, targets = _first_batch(sn5_shards, teachers=["objects"])
    scenes_before = tr.core.scenes_head.weight.detach().clone()
    tr.stepper.step(audio, targets)
    head = tr.core.scenes_head
    assert head.weight.grad is None or not head.weight.grad.any()
    assert head.bias.grad is None or not head.bias.grad.any()
    assert tr.core.objects_head.weight.grad.abs().sum() > 0
    assert torch.equal(head.weight, scenes_before)
    tr.close()


# ------------------------------------------------------------------------------------- non-finite
def test_a_nonfinite_step_is_skipped_as_if_it_never_happened(sn5_shards):
    audio, targets = _first_batch(sn5_shards)
    poisoned = audio.clone()
    poisoned[0, 0, 100] = float("nan")
    model_a, opt_a, st_a = _stepper()
    model_b, opt_b, st_b = _stepper()
    st_a.step(poisoned, targets)  # skipped: weights, Adam moments and step, BN statistics untouched
    st_a.step(audio, targets)
    st_b.step(audio, targets)
    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    for sa, sb in zip(opt_a.state.values(), opt_b.state.values(), strict=True):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    got = st_a.read()
    assert (got["skipped"], got["seen"], got["ok"], got["max_bad_run"], got["bad_run"]) == (1, 2, 1, 1, 0)
    assert got["loss"] == pytest.approx(st_b.read()["loss"])  # the skipped step adds nothing to the sums


class _PoisonAfter(ShardLoader):
    """A loader whose batches turn non-finite from the ``start``-th batch on (a diverging run)."""

    start = 3

    def __iter__(self):
        for audio, targets in super().__iter__():
            _PoisonAfter.served = getattr(_PoisonAfter, "served", 0) + 1
            yield (audio * float("nan") if _PoisonAfter.served > self.start else audio), targets


def test_nonfinite_steps_in_a_row_stop_the_run_keeping_the_last_good_checkpoint(
    tmp_path, sn5_shards, monkeypatch, capsys
):
    monkeypatch.setattr(data, "ShardLoader", _PoisonAfter)
    monkeypatch.setattr(_PoisonAfter, "served", 0, raising=False)
    run = tmp_path / "run"
    argv = [sn5_shards, "--out", str(run), "--model", "soundnet5", "--steps", "20", "--checkpoint-every", "2",
            "--max-bad-steps", "3", *BASE]  # fmt: skip
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert "3 non-finite steps in a row" in err and str(run / "checkpoint.pt") in err and "step 4" in err
    state = ckpt.load(run / "checkpoint.pt")
    # Steps 1-3 trained; step 4 was skipped (checkpointed, its state is step 3's); 5 and 6 made the run of 3.
    assert state["step"] == 4 and int(state["counters"]["skipped"]) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    recs = _metrics(run)
    assert [r["skipped"] for r in recs] == [0, 0, 0, 1, 1, 1]
    assert [r["loss"] is None for r in recs] == [False, False, False, True, True, True]


# ---------------------------------------------------------------------------------- bad arguments
def _existing_run(tmp_path, shards, **cfg_overrides):
    """A run folder with a training checkpoint, written without training (cheap)."""
    run = tmp_path / "old"
    cfg = train.TrainConfig(shards=shards, out=str(run), model="soundnet5", batch_size=2, **cfg_overrides)
    torch.manual_seed(0)
    model = build("soundnet5", CLASSES["objects"], CLASSES["scenes"])
    opt = torch.optim.Adam(model.parameters(), fused=True)
    st = Stepper(model, model, opt, device=torch.device("cpu"))
    ckpt.save(run, model, optimizer=opt, step=1, loader={"epoch": 0, "position": 1}, counters=st.state_dict(),
              config=vars(cfg) | {"world_size": 1})  # fmt: skip
    return run


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "init_heads",
        "resume_heads",
        "too_big",
        "steps_mismatch",
        "exists",
        "changed",
        "teachers",
        "absent_teacher",
        "no_checkpoint",
    ],  # fmt: skip
)
def test_bad_arguments_fail_before_any_work(tmp_path, sn5_shards, capsys, case):
    out = str(tmp_path / "run")
    common = ["--model", "soundnet5", *BASE]
    if case == "missing":
        argv, msg = [str(tmp_path / "nope"), "--out", out, *common], "no such folder"
    elif case == "init_heads":
        wrong = build("soundnet5", 12, CLASSES["scenes"])
        save_native(tmp_path / "w.pt", wrong)
        argv, msg = [sn5_shards, "--out", out, "--init", str(tmp_path / "w.pt"), *common], "has 12 classes"
    elif case == "resume_heads":
        out = str(_existing_run(tmp_path, sn5_shards))
        other = make_shards(tmp_path / "other", num_clips=4, classes={"objects": 12, "scenes": 7})
        argv, msg = [other, "--out", out, "--resume", *common], "has 12"
    elif case == "too_big":
        argv, msg = [sn5_shards, "--out", out, *common, "--batch-size", "16"], "larger than the data"
    elif case == "steps_mismatch":
        argv, msg = [sn5_shards, "--out", out, *BASE, "--model", "soundnet8"], "head steps"
    elif case == "exists":
        out = str(_existing_run(tmp_path, sn5_shards))
        argv, msg = [sn5_shards, "--out", out, *common], "pass --resume"
    elif case == "changed":
        out = str(_existing_run(tmp_path, sn5_shards))
        argv, msg = [sn5_shards, "--out", out, "--resume", "--loss", "l2", *common], "would change the run"
    elif case == "teachers":
        argv, msg = [sn5_shards, "--out", out, "--teachers", "birds", *common], "choose one or both"
    elif case == "absent_teacher":
        only = make_shards(tmp_path / "only", num_clips=4, classes={"objects": 10})
        argv, msg = [only, "--out", out, "--teachers", "scenes", *common], "no teacher ['scenes']"
    else:
        argv, msg = [sn5_shards, "--out", out, "--resume", *common], "no checkpoint to resume"
    before = set(os.listdir(out)) if os.path.isdir(out) else set()
    assert train.main(argv) == 2
    assert msg in capsys.readouterr().err
    after = set(os.listdir(out)) if os.path.isdir(out) else set()
    assert after == before  # nothing written, nothing lost


def test_cuda_graphs_fall_back_on_cpu_with_a_message(tmp_path, sn5_shards, capsys):
    argv = [sn5_shards, "--out", str(tmp_path / "r"), "--model", "soundnet5", "--steps", "1", "--cuda-graphs", *BASE]
    assert train.main(argv) == 0
    assert "--cuda-graphs needs a CUDA device; running eager steps on cpu" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        _stepper()[2].capture(*_first_batch(sn5_shards))


@pytest.mark.parametrize(("backend", "precision"), [("fused", "bf16"), ("fused", "fp32"), ("reference", "bf16")])
def test_the_captured_steps_static_audio_is_the_models_input_buffer(sn5_shards, backend, precision):
    """What capture copies the first batch into (invariant 1): for a fused conv1 the model's input_buffer, laid out
    inside the zero-padded waveform conv1's kernels read (the trunk then pads nothing per replay), else a plain
    tensor; bf16 under bf16 autocast (the cast autocast makes on entry), holding the batch."""
    from soundnet_fast.kernels import is_padded_input

    torch.manual_seed(0)
    model = build("soundnet5", CLASSES["objects"], CLASSES["scenes"], backend=backend)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    st = Stepper(model, model, opt, device=torch.device("cpu"), backend=backend, precision=precision)
    audio = _first_batch(sn5_shards)[0]
    static = st._static_audio(audio)
    assert static.shape == audio.shape and static.dtype == (torch.bfloat16 if precision == "bf16" else audio.dtype)
    assert torch.equal(static, audio.to(static.dtype))
    assert is_padded_input(static) == (backend == "fused") and static.is_contiguous() == (backend != "fused")


# ------------------------------------------------------------------------------------- validation
def test_validation_reports_the_checkpoint_models_loss_and_agreement(tmp_path, sn5_shards, capsys):
    val = make_shards(tmp_path / "val", num_clips=3, seed=7)
    run = tmp_path / "run"
    run.mkdir()
    (run / ckpt.METRICS).write_text('{"step": 7, "split": "train", "loss": 1.0}\n')  # a run that left no checkpoint
    argv = [sn5_shards, "--out", str(run), "--val", val, "--val-every", "2", "--model", "soundnet5", "--steps", "2",
            "--batch-size", "2", "--log-every", "1", "--progress", "on", "--tensorboard",
            "--deterministic"]  # fmt: skip
    assert train.main(argv) == 0
    assert not torch.are_deterministic_algorithms_enabled()  # the process-wide flag is restored
    assert "moved to" in capsys.readouterr().err and (run / f"{ckpt.METRICS}.stale-0").exists()
    rec = [r for r in ckpt.read_metrics(run) if r["split"] == "val"]
    assert [r["step"] for r in ckpt.read_metrics(run)] == [1, 2, 2]
    assert [r["step"] for r in rec] == [2]
    model = load_pretrained(run / "checkpoint.pt")  # eval mode: running statistics
    audio, targets = _first_batch(val, batch=3)
    with torch.no_grad():
        objects, scenes = model(audio)
    loss, _ = distill_loss({"objects": objects, "scenes": scenes}, targets)
    assert rec[0]["loss"] == pytest.approx(float(loss), rel=1e-4)
    for h, out in (("objects", objects), ("scenes", scenes)):
        agree, n = top1_agreement(out, targets[h])
        assert rec[0][f"top1_{h}"] == pytest.approx(int(agree) / n)
    # TensorBoard holds the same scalars as metrics.jsonl.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in _metrics(run)])
    assert [e.value for e in events.Scalars("val/top1_objects")] == pytest.approx([rec[0]["top1_objects"]])


# ------------------------------------------------------------------------------------ torchrun DDP
def _torchrun(shards, out, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "soundnet_fast.train.trainer", shards, "--out", str(out), "--model", "soundnet5", "--batch-size", "4",
           "--steps", "2", "--log-every", "1", "--progress", "off", "--no-tensorboard", *extra]  # fmt: skip
    env = child_env(threads=1)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return ckpt.load(os.path.join(out, "checkpoint.pt")), [r["loss"] for r in _metrics(out)]


def _rank_batches(shards):
    """Each rank's batches, as torchrun's ranks read them (ShardLoader with shard_id = rank)."""
    loaders = [ShardLoader(shards, 2, seed=0, shard_id=r, num_shards=2, backend="numpy") for r in (0, 1)]
    return list(zip(*(list(ld) for ld in loaders), strict=True))


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks run with OMP_NUM_THREADS=1: same kernels, same rounding
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_torchrun_gloo_sync_bn_matches_one_process_on_the_global_batch(tmp_path, sn5_shards, one_thread, backend):
    # fused: the blocks pass the synchronised BN's group to the fused op, which gathers the statistics.
    state, losses = _torchrun(sn5_shards, tmp_path / "ddp", "--sync-bn", "--backend", backend)
    model, _, st = _stepper()
    ref = []
    for (a0, t0), (a1, t1) in _rank_batches(sn5_shards):
        st.step(torch.cat([a0, a1]), {k: torch.cat([t0[k], t1[k]]) for k in t0})
        ref.append(st.read()["loss"])
    # Global statistics by two all_reduces vs one native BatchNorm: equal up to float rounding.
    assert losses == pytest.approx(ref, rel=1e-5)
    lr_steps = 1e-3 * 2  # how far Adam can move any parameter in two steps
    for k, v in model.state_dict().items():
        got = state["model"][k]
        if _is_trunk_conv_bias(k):
            # Batch-statistics BN cancels the conv bias before it (docs/design.md#kernels): its true gradient is 0, so
            # Adam normalises rounding noise into steps of ~lr in either direction. Bound it, do not compare it.
            assert got.abs().max() <= lr_steps * 1.01 and v.abs().max() <= lr_steps * 1.01, k
        elif k.endswith("running_mean"):  # includes that bias (times momentum 0.1)
            torch.testing.assert_close(got, v, rtol=1e-4, atol=0.1 * 2 * lr_steps, msg=k)
        else:  # within 1 % of the largest step Adam could take
            # Adam divides by sqrt(v): an element whose gradient is the size of its own rounding error moves by a
            # rounding-dependent fraction of lr (measured: 1 of conv4's 262,144 weights, off by 2.9 % of 2 lr).
            # Allow 1 in 10,000 such elements; a wrong gradient or BN synchronisation moves far more.
            far = ((got - v).abs() > 0.01 * lr_steps + 1e-4 * v.abs()).sum().item()
            assert far <= got.numel() // 10_000, f"{k}: {far} of {got.numel()} elements differ by > 1 % of 2 lr"


def _is_trunk_conv_bias(key: str) -> bool:
    name, idx, leaf = key.split(".")
    return idx == "0" and leaf == "bias" and name in {s.name for s in SoundNet5.trunk_specs}


def test_torchrun_gloo_per_rank_bn_matches_one_process_with_half_batch_statistics(tmp_path, sn5_shards, one_thread):
    state, losses = _torchrun(sn5_shards, tmp_path / "ddp")
    model, opt, _ = _stepper()
    batches = _rank_batches(sn5_shards)
    ref = []
    for (a0, t0), (a1, t1) in batches:
        opt.zero_grad(set_to_none=True)
        # Running statistics follow rank 0 (DDP broadcast_buffers): rank 1's half updates throwaway copies.
        scratch = {k: b.clone() for k, b in model.named_buffers()}
        l1 = distill_loss(dict(zip(("objects", "scenes"), functional_call(model, scratch, (a1,)), strict=True)), t1)[0]
        l0 = distill_loss(dict(zip(("objects", "scenes"), model(a0), strict=True)), t0)[0]
        loss = (l0 + l1) / 2  # DDP averages the ranks' gradients
        loss.backward()
        opt.step()
        ref.append(float(loss.detach()))
    # The same ops on the same halves, and gradients averaged exactly (halving is exact): bit-identical.
    assert losses == ref
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v), k
    # The case is real: the global batch's statistics give another loss.
    torch.manual_seed(0)
    fresh = build("soundnet5", CLASSES["objects"], CLASSES["scenes"])
    (a0, t0), (a1, t1) = batches[0]
    objects, scenes = fresh(torch.cat([a0, a1]))
    global_loss = distill_loss({"objects": objects, "scenes": scenes}, {k: torch.cat([t0[k], t1[k]]) for k in t0})[0]
    assert abs(float(global_loss.detach()) - ref[0]) > 1e-4 * abs(ref[0])
