"""One bad clip never takes good ones down in the transfer evaluation: a float WAV holding NaN decodes, fails the
per-file check (``audio.check_wave``) and is excluded by name and reason; the other clips' features, and the
whole evaluation of the clips left, are what they are without it."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil

import numpy as np
import pytest

from soundnet_fast import audio
from soundnet_fast.cli import main
from soundnet_fast.evaluation import features as ef
from soundnet_fast.model import SoundNet8, build
from tests.helpers.badaudio import nan_wav, write_float_wav
from tests.helpers.evaldata import class_sound, make_esc50, make_weights, write_wav

BAD = "3-7777-A-1.wav"  # fold 3, class 1


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Four good 5 s clips, one with a NaN sample (float WAV) and one of digital silence."""
    d = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    good = [write_wav(d / f"c{i}.wav", class_sound(i % 2, 5.0, 44100, rng), 44100) for i in range(4)]
    bad = nan_wav(d / "nan.wav", 5.0, 44100, at=2.0)
    silent = write_float_wav(d / "silent.wav", np.zeros(5 * 44100, np.float32), 44100)
    return good, bad, silent


@pytest.mark.parametrize("batch_size", [1, 4])
def test_nan_clip_is_excluded_by_name_and_the_others_are_unchanged(clips, batch_size, tmp_path):
    good, bad, silent = clips
    model = build("soundnet8", 4, 3).eval()
    with_bad = [good[0], bad, good[1], silent, good[2], good[3]]
    without = [good[0], good[1], silent, good[2], good[3]]

    def maps(paths, name):
        hashes, failed = ef.audio_hashes(paths)
        assert not failed
        store = ef.FeatureStore(str(tmp_path / name), "k" * 64, "pool5")
        return ef.extract_maps(model, store, paths, hashes, layer="pool5", input_scale=256.0, batch_size=batch_size)

    got, stats = maps(with_bad, "with")
    ref, ref_stats = maps(without, "without")
    assert list(stats.failed) == [bad] and "non-finite sample" in stats.failed[bad]
    first = float(re.search(r"the first at ([0-9.]+) s", stats.failed[bad]).group(1))
    assert abs(first - 2.0) < 0.01  # the NaN at 2 s, spread over the resampling filter's span (44.1 -> 22.05 kHz)
    assert stats.extracted == 5 and set(got) == set(without) == set(ref)
    for p in without:  # the same batches as without the bad clip: bit for bit the same maps
        np.testing.assert_array_equal(got[p], ref[p])
    assert stats.warnings == ref_stats.warnings == {silent: ["digital silence (every sample is 0)"]}

    # MFCC statistics: the same per-file check
    hashes, _ = ef.audio_hashes(with_bad)
    mf, mstats = ef.extract_mfcc(ef.FeatureStore(str(tmp_path / "mfcc"), "mfcc", "v"), with_bad, hashes)
    assert list(mstats.failed) == [bad] and "non-finite" in mstats.failed[bad] and set(mf) == set(without)
    assert all(np.isfinite(v).all() for v in mf.values())


def test_a_failed_batch_runs_again_clip_by_clip(clips, tmp_path, monkeypatch):
    """Without the per-file check the NaN clip reaches the network and fails its batch (to_input's check); the
    batch runs again one clip at a time, so only that clip fails."""
    good, bad, _ = clips
    model = build("soundnet8", 4, 3).eval()
    paths = [good[0], bad, good[1], good[2]]
    hashes, _ = ef.audio_hashes(paths)
    ref, _ = ef.extract_maps(
        model, ef.FeatureStore(str(tmp_path / "r"), "k" * 64, "p"), good[:3], hashes, layer="pool5",
        input_scale=256.0, batch_size=1,
    )  # fmt: skip
    monkeypatch.setattr(ef, "check_wave", lambda path, wave: [])
    monkeypatch.setattr(audio, "check_wave", lambda path, wave, rate: [])  # load's own check too
    seen = []
    features = SoundNet8.features

    def spy(self, x, layer="pool5"):
        seen.append(x.shape[0])
        return features(self, x, layer)

    monkeypatch.setattr(SoundNet8, "features", spy)
    got, stats = ef.extract_maps(
        model, ef.FeatureStore(str(tmp_path / "g"), "k" * 64, "p"), paths, hashes, layer="pool5", input_scale=256.0,
        batch_size=4,
    )  # fmt: skip
    assert list(stats.failed) == [bad] and "non-finite" in stats.failed[bad]
    assert seen == [1, 1, 1] and stats.extracted == 3  # the batch of 4 never reached the network; 3 ran alone
    for p in good[:3]:
        np.testing.assert_array_equal(got[p], ref[p])


@pytest.fixture(scope="module")
def esc_pair(tmp_path_factory):
    """The same ESC-50-layout clips twice: as generated, and with one more clip (fold 3) holding a NaN."""
    base = tmp_path_factory.mktemp("escbad")
    good = make_esc50(base / "good" / "ESC-50-master")
    bad = str(base / "bad" / "ESC-50-master")
    shutil.copytree(good, bad)
    nan_wav(os.path.join(bad, "audio", BAD), 5.0, 44100)
    with open(os.path.join(bad, "meta", "esc50.csv"), "a", newline="") as f:
        csv.writer(f).writerow([BAD, "3", "1", "rain", "False", "7777", "A"])
    return good, bad, make_weights(base / "w.pt", "soundnet8")


def _evaluate(root: str, weights: str, out, batch_size: int) -> int:
    return main(["evaluate", "esc50", root, "--weights", weights, "--out", str(out), "--cache-dir", str(out / "cache"),
                 "--batch-size", str(batch_size), "--C", "0.01", "--no-plots"])  # fmt: skip


@pytest.fixture(scope="module")
def reference(esc_pair, tmp_path_factory):
    """The run without the bad clip, per batch size: (results, output folder)."""
    good, _, weights = esc_pair
    done = {}

    def get(batch_size: int):
        if batch_size not in done:
            out = tmp_path_factory.mktemp(f"ref{batch_size}")
            assert _evaluate(good, weights, out, batch_size) == 0
            done[batch_size] = json.loads((out / "results.json").read_text()), out
        return done[batch_size]

    return get


@pytest.mark.parametrize("batch_size", [1, 4])
def test_evaluate_excludes_the_nan_clip_and_scores_the_rest_as_without_it(
    esc_pair, reference, batch_size, tmp_path, capsys
):
    _, bad, weights = esc_pair
    reference_results, reference_out = reference(batch_size)
    capsys.readouterr()
    assert _evaluate(bad, weights, tmp_path, batch_size) == 0
    printed = capsys.readouterr().out
    r = json.loads((tmp_path / "results.json").read_text())
    name = f"audio/{BAD}"
    assert r["num_excluded"] == 1 and r["excluded"][0]["file"] == name and r["excluded"][0]["fold"] == 3
    assert "non-finite sample" in r["excluded"][0]["reason"]
    assert "1 file(s) excluded" in printed and f"excluded {name} (fold 3): " in printed, printed
    assert "non-finite" in printed.split(f"excluded {name}")[1]
    assert r["num_clips"] == reference_results["num_clips"] == 30 and r["num_folds"] == 5
    m, ref = r["methods"]["soundnet"], reference_results["methods"]["soundnet"]
    assert m["features"]["extracted"] == 30
    # Fold 3 is scored on the clips it has left, and lists the one it lost; every fold is what it is without it.
    assert [f["excluded_clips"] for f in m["folds"]] == [[], [], [name], [], []]
    assert [f["excluded_clips"] for f in ref["folds"]] == [[]] * 5
    for key in ("fold_accuracy", "mean_accuracy", "pooled_accuracy", "per_class_accuracy", "confusion_matrix"):
        assert m[key] == ref[key], key
    for f, g in zip(m["folds"], ref["folds"], strict=True):
        assert (f["test_clips"], f["num_train"], f["num_test"]) == (g["test_clips"], g["num_train"], g["num_test"])
    # The good clips' features (the cache files, named by content hash) are bit for bit those without the bad clip.
    got, want = _cached_features(tmp_path, weights), _cached_features(reference_out, weights)
    assert len(got) == 30 and sorted(got) == sorted(want)
    for n, f in got.items():
        np.testing.assert_array_equal(f, want[n])


def _cached_features(out, weights: str) -> dict[str, np.ndarray]:
    """Every cached feature map of the weights under test in ``out/cache`` (``FeatureStore``'s layout:
    <model key[:24]>/<variant>/<audio hash>.npy), by file name."""
    return {p.name: np.load(p) for p in (out / "cache" / ef.file_sha256(weights)[:24]).glob("*/*.npy")}
