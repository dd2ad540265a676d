"""`predict` on random weights: chunking, step times, the warning rule, the clip summary, the CLI's outputs and
one bad file among good ones. The released model on real recordings: tests/test_released_weights.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from soundnet_fast.cli import main as cli_main
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.inference.predict import (
    LOW_LOGIT,
    QUIET_DBFS,
    SHORT_SECONDS,
    edge_trim,
    min_samples,
    predict,
    rms_dbfs,
    trust_warnings,
)
from soundnet_fast.model import SoundNet5, SoundNet8
from soundnet_fast.weights import save_native
from tests.helpers.badaudio import nan_wav
from tests.helpers.sounds import sine, write_audio


@pytest.fixture(scope="module")
def model() -> SoundNet8:
    torch.manual_seed(0)
    return SoundNet8(10, 7).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, model: SoundNet8) -> str:
    path = str(tmp_path_factory.mktemp("w") / "net.pt")
    save_native(path, model)
    return path


def test_edge_trim_follows_the_training_length() -> None:
    # 20 s: 15 conv7 frames, the 4 head steps (k 8, s 2) read frames 0..13: the last one is never read.
    assert SoundNet8.output_lengths(20 * SAMPLE_RATE)["conv7"] == 15 and edge_trim(SoundNet8) == 1
    assert edge_trim(SoundNet8, train_seconds=19.0) == 0  # 14 frames: the last step reads the last frame
    n = min_samples(SoundNet8, 1)
    assert n > 10 * SAMPLE_RATE and SoundNet8.output_lengths(n)["conv7"] - 1 >= 8
    assert SoundNet8.output_lengths(n - SoundNet8.geometry("conv7").hop)["conv7"] - 1 < 8  # the shortest one
    assert min_samples(SoundNet5, 0) == 10 * SAMPLE_RATE


def test_chunked_predict_equals_one_pass_without_the_edge_step(model: SoundNet8) -> None:
    wave = np.random.default_rng(0).uniform(-0.4, 0.4, 40 * SAMPLE_RATE).astype(np.float32)
    assert SoundNet8.output_lengths(len(wave))["conv7"] == 28  # the last step (frames 20..27) reads frame 27
    one = predict(model, wave, chunk_seconds=600.0, fold=False)
    chunked = predict(model, wave, chunk_seconds=12.0)
    np.testing.assert_allclose(chunked.objects, one.objects, atol=1e-5)
    np.testing.assert_allclose(chunked.scenes, one.scenes, atol=1e-5)
    with torch.no_grad():
        model.unfold()
        obj, _ = model(torch.from_numpy(wave * 256).view(1, 1, -1))
    assert obj.shape[-1] == one.objects.shape[0] + 1
    np.testing.assert_allclose(one.objects, obj[0, :, :-1].softmax(0).T.numpy(), atol=1e-6)
    assert np.all(np.diff(one.times) > 0) and one.times[-1] <= one.seconds


def test_step_times_never_pass_the_end_of_a_tiled_clip(model: SoundNet8) -> None:
    pred = predict(model, sine(440, 2.5, SAMPLE_RATE))
    assert pred.seconds == 2.5 and len(pred.times) >= 1
    assert pred.times.min() >= 0.0 and pred.times.max() <= 2.5


def test_the_warning_rule() -> None:
    assert trust_warnings(-20.0, 3.0, 10.0) == []
    assert [w.split(" (")[0] for w in trust_warnings(QUIET_DBFS - 1, 3.0, 10.0)] == ["input is near silence"]
    assert trust_warnings(-20.0, LOW_LOGIT - 1, 10.0)[0].startswith("the model recognises nothing")
    assert "tiled" in trust_warnings(-20.0, 3.0, SHORT_SECONDS / 2)[0]
    assert len(trust_warnings(-math.inf, -90.0, 0.3)) == 3
    assert rms_dbfs(np.zeros(100, np.float32)) == -math.inf
    assert rms_dbfs(np.ones(100, np.float32)) == pytest.approx(0.0)
    assert rms_dbfs(np.full(100, 1e-3, np.float32)) == pytest.approx(-60.0, abs=1e-4)


def test_summary_is_the_mean_over_steps(model: SoundNet8) -> None:
    pred = predict(model, np.random.default_rng(1).uniform(-0.3, 0.3, 30 * SAMPLE_RATE).astype(np.float32))
    mean = pred.scenes.mean(axis=0)
    top = pred.summary("scenes", 3)
    assert [i for i, _ in top] == list(np.argsort(-mean, kind="stable")[:3])
    assert [p for _, p in top] == pytest.approx([float(mean[i]) for i, _ in top])


def test_cli_json_text_mono_and_a_bad_file_among_good_ones(
    weights: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    left, right = sine(300, 3.0, SAMPLE_RATE), np.random.default_rng(2).uniform(-0.5, 0.5, 3 * SAMPLE_RATE)
    stereo = write_audio(str(tmp_path / "stereo.wav"), np.stack([left, right.astype(np.float32)]), SAMPLE_RATE, 2)
    quiet = write_audio(str(tmp_path / "quiet.wav"), sine(300, 12.0, SAMPLE_RATE, amplitude=1e-4), SAMPLE_RATE)
    bad = nan_wav(tmp_path / "nan.wav", 3.0, SAMPLE_RATE)
    missing = str(tmp_path / "missing.wav")
    files = [stereo, bad, quiet, missing]
    assert cli_main(["predict", *files, "--weights", weights, "--json", "--top-k", "2"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert [r["file"] for r in doc["files"]] == [stereo, quiet]
    assert [f["file"] for f in doc["failed"]] == [bad, missing]
    assert "non-finite" in doc["failed"][0]["error"] and doc["failed"][0]["error"].startswith(bad)
    assert f"skipped {bad}:" in captured.err and f"skipped {missing}:" in captured.err
    first, second = doc["files"]
    assert len(first["summary"]["objects"]) == 2 and {"class", "name", "p"} <= set(first["summary"]["scenes"][0])
    assert first["steps"] and all(0 <= s["time"] <= first["seconds"] for s in first["steps"])
    assert any("near silence" in w for w in second["warnings"]) and first["rms_dbfs"] > QUIET_DBFS
    assert cli_main(["predict", stereo, "--weights", weights, "--json", "--mono", "mean"]) == 0
    mean = json.loads(capsys.readouterr().out)["files"][0]
    assert mean["rms_dbfs"] != first["rms_dbfs"]  # the other channel went in
    assert cli_main(["predict", stereo, "--weights", weights, "--top-k", "1"]) == 0
    assert "step 0" not in capsys.readouterr().out  # the clip summary only, unless --steps
    assert cli_main(["predict", stereo, "--weights", weights, "--steps", "--top-k", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"== {stereo} (3.0 s,") and "  step 0 (~" in text and "objects:" in text
    assert cli_main(["predict", bad, missing, "--weights", weights]) == 1  # nothing predicted: exit 1


def test_class_name_files_must_match_the_heads(weights: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names = tmp_path / "scenes.txt"
    names.write_text("/a/abbey\n/b/bus_station/indoor\n")
    wav = write_audio(str(tmp_path / "a.wav"), sine(300, 2.0, SAMPLE_RATE), SAMPLE_RATE)
    assert cli_main(["predict", wav, "--weights", weights, "--scene-names", str(names)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"soundnet-fast predict: error: {names}: 2 scene names, the model has 7 scene classes"
    names.write_text("".join(f"/a/scene_{i}\n" for i in range(7)))
    assert cli_main(["predict", wav, "--weights", weights, "--scene-names", str(names)]) == 0
    assert "scene_" in capsys.readouterr().out


def test_broken_weights_give_a_warning_and_strict_json(model: SoundNet8, tmp_path: Path, capsys) -> None:
    broken = SoundNet8(10, 7).eval()
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.conv8[0].weight[0, 0, 0] = float("nan")
    path = str(tmp_path / "nan.pt")
    save_native(path, broken)
    wav = write_audio(str(tmp_path / "a.wav"), sine(300, 2.0, SAMPLE_RATE), SAMPLE_RATE)
    assert cli_main(["predict", wav, "--weights", path, "--json"]) == 0

    def refuse(word: str) -> None:
        raise AssertionError(f"not strict JSON: {word}")

    doc = json.loads(capsys.readouterr().out, parse_constant=refuse)
    record = doc["files"][0]
    assert any("not finite" in w for w in record["warnings"]) and record["max_object_logit"] is None


def test_extract_writes_a_file_named_twice_once(weights: str, tmp_path: Path, capsys) -> None:
    wav = write_audio(str(tmp_path / "a.wav"), sine(300, 2.0, SAMPLE_RATE), SAMPLE_RATE)
    same = str(tmp_path / "." / "a.wav")
    assert (
        cli_main(["extract", wav, same, wav, "--weights", weights, "--layer", "conv3", "--out", str(tmp_path / "o")])
        == 0
    )
    assert "wrote 1 feature file(s)" in capsys.readouterr().out
