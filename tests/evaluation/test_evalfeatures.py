"""Evaluation features: tiling, cache, broken files, input scale, MFCC statistics, BN re-estimation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.evaluation import features as ef
from soundnet_fast.model import SoundNet8, build
from tests.helpers.evaldata import class_sound, write_wav


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    paths = [write_wav(d / f"c{i}.wav", class_sound(i % 2, 5.0, 44100, rng), 44100) for i in range(3)]
    (d / "garbage.wav").write_bytes(b"RIFF not really a wav file" * 10)
    (d / "empty.wav").write_bytes(b"")
    return paths + [str(d / "garbage.wav"), str(d / "empty.wav"), str(d / "missing.wav")]


def test_short_clips_are_tiled_and_cut_at_exactly_ten_seconds(clips):
    wave = ef.load_clip(clips[0])
    assert len(wave) == 10 * SAMPLE_RATE  # eval_esc50.lua: repeat, then keep the first 10 s
    assert np.array_equal(wave[: 5 * SAMPLE_RATE], wave[5 * SAMPLE_RATE :])
    assert len(ef.load_clip(clips[0], min_seconds=2.0)) == 5 * SAMPLE_RATE  # longer clips are used whole


def test_cache_second_pass_extracts_nothing_and_broken_files_are_named(clips, tmp_path, monkeypatch):
    model = build("soundnet8", 4, 3).eval()
    hashes, failed = ef.audio_hashes(clips)
    assert failed == {clips[4]: "file is empty (0 bytes)", clips[5]: "no such file"}
    store = ef.FeatureStore(str(tmp_path), "k" * 64, "pool5-x256")
    seen = []
    features = SoundNet8.features

    def spy(self, x, layer="pool5"):
        seen.append(x.detach().clone())
        return features(self, x, layer)

    monkeypatch.setattr(SoundNet8, "features", spy)
    first, stats = ef.extract_maps(model, store, clips, hashes, layer="pool5", input_scale=512.0, batch_size=2)
    assert (stats.extracted, stats.cached) == (3, 0)
    assert list(stats.failed) == [clips[3]] and "cannot" in stats.failed[clips[3]]
    t10 = SoundNet8.output_lengths(10 * SAMPLE_RATE)["pool5"]
    assert set(first) == set(clips[:3]) and first[clips[0]].shape == (256, t10)
    x = torch.cat(seen)
    assert x.shape == (3, 1, 10 * SAMPLE_RATE)
    raw = torch.from_numpy(ef.load_clip(clips[0]))
    assert torch.allclose(x[0, 0], raw * 512)  # the scale asked for reaches the model

    seen.clear()
    second, stats = ef.extract_maps(model, store, clips, hashes, layer="pool5", input_scale=512.0)
    assert (stats.extracted, stats.cached) == (0, 3) and not seen
    assert all(np.array_equal(first[p], second[p]) for p in first)
    # A damaged cache entry is recomputed, not trusted.
    with open(store.path(hashes[clips[1]]), "wb") as f:
        f.write(b"junk")
    _, stats = ef.extract_maps(model, store, clips, hashes, layer="pool5", input_scale=512.0)
    assert (stats.extracted, stats.cached) == (1, 2)


def test_mfcc_statistics(clips, tmp_path):
    hashes, _ = ef.audio_hashes(clips)
    store = ef.FeatureStore(str(tmp_path), "mfcc", "v")
    feats, stats = ef.extract_mfcc(store, clips, hashes)
    assert stats.extracted == 3 and list(stats.failed) == [clips[3]]
    a, b, c = (feats[p] for p in clips[:3])
    assert a.shape == (26,) and a.dtype == np.float32  # 12 MFCC means + 12 stds + ZCR mean + std
    # clips 0 and 2 share a class (pitch), clip 1 does not
    assert np.linalg.norm(a - c) < np.linalg.norm(a - b)
    _, stats = ef.extract_mfcc(store, clips, hashes)
    assert (stats.extracted, stats.cached) == (0, 3)


def test_random_model_is_seeded_and_keyed_by_its_state():
    like = build("soundnet5", 5, 4)
    a, b, c = ef.random_model(like, 0), ef.random_model(like, 0), ef.random_model(like, 1)
    assert a.arch == "soundnet5" and a.num_objects == 5
    assert ef.state_sha256(a) == ef.state_sha256(b) != ef.state_sha256(c)


def test_bn_reestimation_uses_the_clips_statistics():
    torch.manual_seed(0)
    model = ef.random_model(build("soundnet8", 2, 2), seed=3)
    rng = np.random.default_rng(1)
    waves = [rng.uniform(-0.5, 0.5, 10 * SAMPLE_RATE).astype(np.float32) * (i + 1) for i in range(3)]
    ef.reestimate_bn(model, waves, layer="pool1", input_scale=256.0)
    conv = model.conv1[0]
    means = []
    for w in waves:
        y = F.conv1d(torch.from_numpy(w * 256).view(1, 1, -1), conv.weight, conv.bias, stride=2, padding=32)
        means.append(y.mean(dim=(0, 2)))
    # momentum None: the cumulative average of the per-clip (per-batch) means
    assert torch.allclose(model.conv1[1].running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)
    assert int(model.conv1[1].num_batches_tracked) == 3 and model.conv1[1].momentum == 0.1
    assert torch.all(model.conv2[1].running_mean == 0)  # pool1 does not reach conv2
    assert not model.training
