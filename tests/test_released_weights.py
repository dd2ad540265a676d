"""The released SoundNet-8 (``soundnet-fast weights fetch soundnet8``, run by ``make setup``) on real recordings:
every layer against an independent forward, the folded inference form, and ``predict``.

Under CI (``CI=true``) these fail when the weights or recordings are missing; elsewhere they skip."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from soundnet_fast import releases, tf_npy
from soundnet_fast.audio import load
from soundnet_fast.cli import main as cli_main
from soundnet_fast.constants import INPUT_SCALE, SAMPLE_RATE
from soundnet_fast.inference.predict import LOW_LOGIT, predict
from soundnet_fast.model import SoundNet8
from soundnet_fast.weights import load_pretrained
from tests.helpers.recordings import RECORDINGS, recording
from tests.helpers.weights import np_forward

RELEASE = releases.RELEASES["soundnet8"]
# Places scenes and ImageNet objects that a street with cars and a bicycle can fairly be heard as.
ROAD_SCENES = {"highway", "street", "parking lot", "driveway", "train railway", "railroad track", "crosswalk",
               "train station/platform", "bridge", "gas station", "motel", "garage/outdoor"}  # fmt: skip
VEHICLES = {"passenger car", "car mirror", "fire engine", "electric locomotive", "bullet train", "trolleybus",
            "streetcar", "minivan", "cab", "sports car", "police van", "jeep", "moving van", "tow truck",
            "trailer truck", "garbage truck", "school bus", "racer", "limousine",
            "mountain bike", "tricycle", "moped", "car wheel", "grille", "freight car"}  # fmt: skip


def _missing(why: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def sound8() -> str:
    path = releases.cached_path(RELEASE)
    if path is None:
        _missing(f"released weights not cached in {releases.home()}: run `soundnet-fast weights fetch soundnet8`")
    return str(path)


@pytest.fixture(scope="module")
def model(sound8: str) -> SoundNet8:
    m = load_pretrained("soundnet8")
    assert isinstance(m, SoundNet8) and m.weights_meta["release"] == "soundnet8"
    return m


@pytest.fixture(scope="module")
def street() -> np.ndarray:
    return load(recording("street.wav"))


def test_the_cached_file_is_the_pinned_release(sound8: str) -> None:
    with open(sound8, "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == RELEASE.sha256
    names = releases.scene_names(RELEASE)
    assert names is not None and len(names) == 401 and names[0] == "abbey" and names[-1] == "zen_garden"


def test_every_layer_matches_an_independent_forward(sound8: str, model: SoundNet8, street: np.ndarray) -> None:
    raw = tf_npy.read(sound8)  # the file's own layout, mapped here independently of soundnet_fast.weights
    layers = {}
    for name, p in raw.items():
        w = np.asarray(p["weights"], dtype=np.float64)  # (k, 1, C_in, C_out), the Torch weight transposed
        layers[name] = {"w": w[:, 0].transpose(2, 1, 0), "b": np.asarray(p["biases"], dtype=np.float64)}
        if "mean" in p:
            layers[name].update({k: np.asarray(p[k], dtype=np.float64) for k in ("gamma", "beta", "mean", "var")})
    x = street[: SoundNet8.min_length() + 3 * SAMPLE_RATE] * INPUT_SCALE
    expected = np_forward(layers, x)
    model.unfold()
    t = torch.from_numpy(x).view(1, 1, -1)
    with torch.no_grad():
        for layer in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "conv6", "conv7"):
            ref = expected[layer]
            got = model.features(t, layer)[0].double().numpy()
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=layer)
        for got, name in zip(model(t), ("conv8", "conv8_2"), strict=True):
            ref = expected[name]
            np.testing.assert_allclose(got[0].double().numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_folded_inference_form_keeps_every_layer(model: SoundNet8, street: np.ndarray) -> None:
    t = torch.from_numpy(street * INPUT_SCALE).view(1, 1, -1)
    names = SoundNet8.layer_names() + ["conv8", "conv8_2"]
    with torch.no_grad():
        model.unfold()
        plain = {n: model.features(t, n) for n in names}
        assert model.inference() is model and model.folded
        for n in names:
            a, b = model.features(t, n), plain[n]
            assert (a - b).abs().max() <= 1e-5 * b.abs().max(), n


def test_predict_hears_a_street_and_trusts_real_recordings(model: SoundNet8, street: np.ndarray) -> None:
    from soundnet_fast.inference.predict import class_names

    objects, scenes = class_names(model, None, None)
    pred = predict(model, street)
    assert pred.warnings == [] and pred.max_object_logit > LOW_LOGIT
    # 10 s: tiled and cut to 11.49 s, one head step, its time within the clip
    assert len(pred.times) == 1 and 0 <= pred.times[0] <= pred.seconds
    assert pred.seconds == pytest.approx(10.0, abs=1e-3)
    top_scenes = {scenes[i] for i, _ in pred.summary("scenes", 5)}
    top_objects = {objects[i] for i, _ in pred.summary("objects", 5)}
    assert top_scenes & ROAD_SCENES, top_scenes
    assert top_objects & VEHICLES, top_objects
    for name in ("song.wav", "speech.wav"):
        p = predict(model, load(recording(name)))
        assert p.warnings == [] and np.isfinite(p.objects).all(), (name, p.warnings)
        np.testing.assert_allclose(p.objects.sum(axis=1), 1.0, rtol=1e-5)


def test_the_right_edge_step_is_dropped(model: SoundNet8, street: np.ndarray) -> None:
    """A head step that reads conv7's last frame (never read in training at 20 s) gives logits near -100 on
    anything; predict drops it and keeps the other steps exactly."""
    x13 = np.tile(street, 2)[: 13 * SAMPLE_RATE]  # conv7: 10 frames, the raw heads' step 1 reads frame 9
    with torch.no_grad():
        obj, _ = model(torch.from_numpy(x13 * INPUT_SCALE).view(1, 1, -1))
    assert obj.shape[-1] == 2 and obj[0, :, 1].max() < LOW_LOGIT < obj[0, :, 0].max()
    pred = predict(model, x13)
    assert pred.objects.shape[0] == 1 and pred.warnings == []
    np.testing.assert_allclose(pred.objects[0], obj[0, :, 0].softmax(0).numpy(), atol=1e-5)
    silence = predict(model, np.zeros(12 * SAMPLE_RATE, np.float32))
    assert any("near silence" in w for w in silence.warnings)


def test_predict_cli_on_real_recordings(sound8: str, capsys: pytest.CaptureFixture) -> None:
    files = [recording(n) for n in RECORDINGS]
    assert cli_main(["predict", *files, "--json", "--top-k", "3"]) == 0  # --weights soundnet8 is the default
    doc = json.loads(capsys.readouterr().out)
    assert doc["weights"] == "soundnet8" and doc["failed"] == [] and [r["file"] for r in doc["files"]] == files
    street = doc["files"][0]
    assert street["warnings"] == [] and len(street["summary"]["scenes"]) == 3 and len(street["steps"]) == 1
    assert {s["name"] for s in street["summary"]["scenes"]} & ROAD_SCENES
    assert cli_main(["predict", files[0], "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"== {files[0]} (10.0 s, 1 step)") and "warning" not in out
    assert "step 0" not in out and out.count("objects:") == 1  # steps only with --steps


def test_evaluate_and_convert_take_the_release_by_name(sound8: str, tmp_path, capsys: pytest.CaptureFixture) -> None:
    from tests.helpers.evaldata import make_esc50

    data = make_esc50(tmp_path / "ESC-50-master", num_classes=2, clips_per_fold=1, seconds=2.0, rate=SAMPLE_RATE)
    out = tmp_path / "eval"
    argv = ["evaluate", "esc50", data, "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-plots"]
    assert cli_main(argv) == 0  # --weights soundnet8 is the default
    results = json.loads((out / "results.json").read_text())
    assert json.dumps(results).count(RELEASE.sha256) >= 1  # the features are keyed by the released file's hash
    ckpt = tmp_path / "s8.pt"
    assert cli_main(["convert", "soundnet8", str(ckpt)]) == 0
    model = load_pretrained(str(ckpt))
    from soundnet_fast.inference.predict import class_names

    assert model.weights_meta["release"] == "soundnet8"
    assert class_names(model, None, None)[1][:2] == ["abbey", "airfield"]  # the release's scenes, by name
    capsys.readouterr()
