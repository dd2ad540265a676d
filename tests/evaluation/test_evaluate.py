"""`soundnet-fast evaluate` end to end on tiny generated datasets in the exact published layouts."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from soundnet_fast.cli import main
from soundnet_fast.evaluation import features as evalfeatures
from soundnet_fast.evaluation.evaluate import EvalConfig, EvaluationError, evaluate
from soundnet_fast.evaluation.protocols import DEFAULT_CS, window_frames
from soundnet_fast.model import SoundNet, SoundNet8
from tests.helpers.evaldata import make_dcase, make_esc50, make_weights

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def esc(tmp_path_factory):
    """ESC-50 layout, 3 classes x 2 clips x 5 folds of 5 s at 44.1 kHz, plus one broken file and one source
    recording that (unlike the official data) straddles folds 1 and 2."""
    root = make_esc50(tmp_path_factory.mktemp("esc") / "ESC-50-master")
    meta = os.path.join(root, "meta", "esc50.csv")
    with open(meta, newline="") as f:
        rows = list(csv.reader(f))
    rows[1][5] = rows[7][5]  # 1-1000-A-0.wav now shares the source of a fold-2 clip
    rows.append(["3-9999-A-1.wav", "3", "1", "rain", "False", "9999", "A"])
    with open(os.path.join(root, "audio", "3-9999-A-1.wav"), "wb") as f:
        f.write(b"RIFF....WAVEfmt garbage")
    with open(meta, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root, rows[7][0]


@pytest.fixture(scope="module")
def weights8(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("w") / "student8.pt", "soundnet8")


def test_esc50_whole_command_with_baselines_then_cached(esc, weights8, tmp_path, capsys, monkeypatch):
    root, straddler = esc
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = [
        "evaluate",
        "esc50",
        root,
        "--weights",
        weights8,
        "--baselines",
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ESC-50" in printed and "74.2" in printed and "1 excluded" in printed  # Table 4 rows from the paper
    r = json.loads((out / "results.json").read_text())
    assert r["dataset"] == "esc50" and r["layer"] == "pool5" and r["input_scale"] == 256.0
    assert r["num_excluded"] == 1 and r["excluded"][0]["file"] == "audio/3-9999-A-1.wav"
    assert r["num_clips"] == 30 and r["num_folds"] == 5
    assert set(r["methods"]) == {"soundnet", "mfcc", "random_init", "random_bn"}
    for m in r["methods"].values():
        assert m["features"] == {"extracted": 30, "cached": 0}
        assert set(m["fold_accuracy"]) == {"1", "2", "3", "4", "5"}
        assert m["mean_accuracy"] == pytest.approx(np.mean(list(m["fold_accuracy"].values())))
        assert set(m["per_class_accuracy"]) == {"dog", "rain", "clock_tick"}
        assert np.asarray(m["confusion_matrix"]).sum() == 30
        for f in m["folds"]:  # each fold tests exactly its own clips (ESC-50 names start with the fold)
            assert {os.path.basename(n).split("-")[0] for n in f["test_clips"]} == {str(f["fold"])}
            assert f["num_train"] + f["num_test"] + f["dropped_shared_source"] == 30
        # testing fold 1 drops both fold-2 takes of the shared source; testing fold 2 drops the fold-1 clip
        assert [f["dropped_shared_source"] for f in m["folds"]] == [2, 1, 0, 0, 0]
        assert sorted(n for f in m["folds"] for n in f["test_clips"]).count(f"audio/{straddler}") == 1
        assert (out / m["plots"]["confusion"]).read_bytes().startswith(PNG)
    assert (out / "tsne-soundnet.png").read_bytes().startswith(PNG)
    assert r["methods"]["mfcc"]["mean_accuracy"] >= 0.8  # pitch classes: MFCCs separate them
    assert r["methods"]["random_bn"]["bn_clips"] == 30 and not r["methods"]["random_bn"]["labels_used"]
    assert all(f["C"] in DEFAULT_CS for f in r["methods"]["soundnet"]["folds"])

    # Second run: every feature comes from the cache; neither the network nor BN re-estimation runs.
    def refuse(*a, **k):
        raise AssertionError("extraction ran although the cache holds every feature")

    monkeypatch.setattr(SoundNet, "features", refuse)
    monkeypatch.setattr(evalfeatures, "reestimate_bn", refuse)
    monkeypatch.setattr(evalfeatures, "mfcc_stats", refuse)
    again = evaluate(
        EvalConfig("esc50", root, weights8, baselines=True, out_dir=tmp_path / "again", cache_dir=cache, plots=False)
    )
    for key, m in again["methods"].items():
        assert m["features"] == {"extracted": 0, "cached": 30}
        assert m["fold_accuracy"] == r["methods"][key]["fold_accuracy"]
    assert again["num_excluded"] == 1


def test_esc10_windows_protocol_x512_soundnet5(esc, tmp_path, monkeypatch):
    root, _ = esc
    weights5 = make_weights(tmp_path / "student5.pt", "soundnet5", input_scale=256.0)
    peaks = []
    folded = []
    features = SoundNet.features

    def spy(self, x, layer="pool5"):
        peaks.append(float(x.abs().max()))
        folded.append(self.folded)
        return features(self, x, layer)

    monkeypatch.setattr(SoundNet, "features", spy)
    r = evaluate(
        EvalConfig(
            "esc10",
            root,
            weights5,
            protocol="windows",
            input_scale=512,
            out_dir=tmp_path / "o",
            cache_dir=tmp_path / "c",
            plots=False,
        )
    )
    assert r["classes"] == ["dog", "clock_tick"] and r["num_clips"] == 20 and r["num_excluded"] == 0
    assert r["arch"] == "soundnet5" and r["layer"] == "conv4" and r["input_scale"] == 512
    assert r["window_frames"] == 3 and r["methods"]["soundnet"]["protocol"] == "windows"
    assert all(f["C"] == 0.01 for f in r["methods"]["soundnet"]["folds"])  # the original's fixed C
    # x512 reached the network: generated clips peak near 0.5-0.75 of full scale
    assert max(peaks) > 256 and max(peaks) <= 512
    assert folded and all(folded)  # EvalConfig.fold (default): the inference form extracts the features
    done = len(peaks)
    again = evaluate(
        EvalConfig(
            "esc10",
            root,
            weights5,
            protocol="windows",
            input_scale=256,
            out_dir=tmp_path / "o",
            cache_dir=tmp_path / "c",
            plots=False,
        )
    )
    assert again["methods"]["soundnet"]["features"]["extracted"] == 20  # the cache is keyed by the input scale
    assert 128 < max(peaks[done:]) <= 256
    with pytest.raises(EvaluationError, match=r"needs 54 frames of conv4 per window.*shorter --window-seconds"):
        evaluate(
            EvalConfig(
                "esc10",
                root,
                weights5,
                protocol="windows",
                window_seconds=20.0,
                out_dir=tmp_path / "o",
                cache_dir=tmp_path / "c",
                plots=False,
            )
        )
    with pytest.raises(EvaluationError, match=r"unknown layer 'pool5' for SoundNet5"):
        evaluate(EvalConfig("esc10", root, weights5, layer="pool5", out_dir=tmp_path / "o", cache_dir=tmp_path / "c"))


def test_dcase2013_layout_with_test_set_and_layout_errors(weights8, tmp_path, capsys):
    dev = make_dcase(tmp_path / "dcase" / "scenes_stereo", recordings=5, seconds=12.0)
    test = make_dcase(tmp_path / "test", recordings=1, seconds=12.0, seed=7)
    os.rename(os.path.join(test, "bus01.wav"), os.path.join(test, "x.wav"))
    key = tmp_path / "key.txt"
    key.write_text("x.wav bus\noffice01.wav office\npark01.wav park\n")
    assert (
        main(
            [
                "evaluate",
                "dcase2013",
                str(tmp_path / "dcase"),
                "--weights",
                weights8,
                "--test-dir",
                test,
                "--test-key",
                str(key),
                "--protocol",
                "windows",
                "--out",
                str(tmp_path / "o"),
                "--cache-dir",
                str(tmp_path / "c"),
                "--no-plots",
            ]
        )
        == 0
    )
    assert "Test set (%)" in capsys.readouterr().out
    r = json.loads((tmp_path / "o" / "results.json").read_text())
    assert os.path.isdir(dev) and r["classes"] == ["bus", "office", "park"] and r["num_clips"] == 18
    m = r["methods"]["soundnet"]
    for f in m["folds"]:  # 5 recordings per class: recording NN is in fold NN
        assert {int(n[-6:-4]) for n in f["test_clips"]} == {f["fold"]} and f["num_test"] == 3
    assert m["test_set"]["num_clips"] == 3 and 0.0 <= m["test_set"]["accuracy"] <= 1.0
    assert "StratifiedKFold(5)" in r["fold_scheme"]
    assert r["window_frames"] == window_frames(5.0, SoundNet8.geometry("pool5").hop) == 14  # eval_dcase.lua: 5 s

    assert main(["evaluate", "dcase2013", str(tmp_path), "--weights", weights8, "--out", str(tmp_path / "e")]) == 2
    assert "holds no .wav files. DCASE 2013 scenes layout expected" in capsys.readouterr().err
    assert main(["evaluate", "esc50", str(tmp_path / "dcase"), "--weights", weights8]) == 2
    assert "meta/esc50.csv: not found" in capsys.readouterr().err


def test_cli_options_set_the_config_fields_and_default_to_theirs():
    from soundnet_fast.cli import build_parser
    from soundnet_fast.evaluation.evaluate import config_from_args

    parse = build_parser().parse_args
    assert config_from_args(parse(["evaluate", "esc50", "d", "--weights", "w"])) == EvalConfig("esc50", "d", "w")
    assert EvalConfig("esc50", "d", "w").output_folder() == os.path.join("evaluation", "esc50")
    argv = ["evaluate", "folder", "d", "--weights", "w", "--out", "o", "--folds", "3", "--jobs", "-1", "--no-plots"]
    cfg = config_from_args(parse([*argv, "--C", "0.1", "--mono", "mean", "--layer", "conv5", "--bn-clips", "7"]))
    assert (cfg.out_dir, cfg.num_folds, cfg.n_jobs, cfg.plots) == ("o", 3, -1, False)
    assert (cfg.C, cfg.mono, cfg.layer, cfg.bn_clips, cfg.Cs) == (0.1, "mean", "conv5", 7, DEFAULT_CS)
    assert cfg.fold and not config_from_args(parse([*argv, "--no-fold"])).fold
    with pytest.raises(EvaluationError, match="unknown protocol 'svm'"):
        evaluate(EvalConfig("esc50", "d", "w", protocol="svm"))
