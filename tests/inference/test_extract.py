"""`soundnet-fast extract` / `predict` end to end on generated files, and chunked == one pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundnet_fast import SoundNet5, SoundNet8, audio
from soundnet_fast.cli import main as cli_main
from soundnet_fast.inference.extract import features, features_many, output_paths, plan_chunks
from soundnet_fast.weights import save_native
from tests.helpers.sounds import sine, write_audio, write_video_with_audio

SR = audio.SAMPLE_RATE


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    m = SoundNet8(num_objects=1000, num_scenes=6)
    # Non-trivial running statistics so eval-mode BN is not the identity.
    for b in m.blocks:
        b[1].running_mean.uniform_(-0.01, 0.01)
        b[1].running_var.uniform_(0.5, 2.0)
    path = str(tmp_path_factory.mktemp("w") / "net.pt")
    save_native(path, m)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    noise = (0.3 * rng.standard_normal(int(3.0 * 48_000))).astype(np.float32)
    (d / "x").mkdir()
    (d / "y").mkdir()
    return {
        "wav": write_audio(str(d / "x" / "clip.wav"), sine(440, 3.0, SR), SR),
        "same_stem": write_audio(str(d / "y" / "clip.wav"), sine(660, 2.0, SR), SR),
        "ogg": write_audio(str(d / "x" / "tone.ogg"), np.stack([noise, noise]), 48_000),  # stereo Vorbis, 48 kHz
        "flac": write_audio(str(d / "x" / "short.flac"), sine(300, 0.6, 44_100), 44_100),  # under one second
        "mp4": write_video_with_audio(str(d / "x" / "movie.mp4"), sine(440, 2.0, 48_000), 48_000, 2.0),
        "long": write_audio(str(d / "x" / "long.flac"), (0.2 * rng.standard_normal(40 * SR)).astype(np.float32), SR),
    }


def test_extract_every_format_equals_model_features(weights: str, media: dict[str, str], tmp_path) -> None:
    files = list(media.values())
    out = tmp_path / "feats"
    assert cli_main(["extract", *files, "--weights", weights, "--layer", "pool5", "--out", str(out),
                     "--chunk-seconds", "12", "--batch-size", "3", "--threads", "2"]) == 0  # fmt: skip
    from soundnet_fast import load_pretrained

    model = load_pretrained(weights)
    paths = output_paths(files, str(out))
    assert len(set(paths)) == len(files)  # clip.wav in x/ and y/ do not collide
    for f, p in zip(files, paths, strict=True):
        got, times = np.load(p), np.load(p[:-4] + ".times.npy")
        wave = audio.load(f)
        x = audio.to_input(wave, min_seconds=10.0)
        with torch.no_grad():
            ref = model.features(x, "pool5")[0].T.numpy()
        assert got.shape == ref.shape and times.shape == (ref.shape[0],), f
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
        assert np.all(np.diff(times) > 0)


def test_pooled_output_and_failures(weights: str, media: dict[str, str], tmp_path, capsys) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    out = tmp_path / "pooled"
    assert cli_main(["extract", media["wav"], str(bad), "--weights", weights, "--layer", "conv5",
                     "--pool", "mean", "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr()
    assert "bad.wav" in printed.err and "1 failed" in printed.out  # per-file failures on stderr, the summary on stdout
    p = output_paths([media["wav"], str(bad)], str(out))[0]
    assert np.load(p).shape == (256,)
    assert cli_main(["extract", str(bad), "--weights", weights, "--out", str(out)]) == 1  # every file failed


@pytest.mark.parametrize(("cls", "layer"), [(SoundNet8, "pool5"), (SoundNet8, "conv2"), (SoundNet5, "pool3")])
def test_chunked_equals_one_pass(cls: type, layer: str) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    for b in model.blocks:
        b[1].running_var.uniform_(0.5, 2.0)
    wave = np.random.default_rng(3).uniform(-1, 1, 33 * SR).astype(np.float32)
    one, t1 = features(model, wave, layer, chunk_seconds=1e6)
    assert len(plan_chunks(model, len(wave), layer, int(1e6 * SR))) == 1
    chunks = plan_chunks(model, len(wave), layer, 4 * SR)
    assert len(chunks) >= 8
    # Every chunk's input overlaps the next by at least the layer's receptive field (minus one hop).
    rf = cls.geometry(layer).receptive_field
    assert all(a.stop - b.start >= rf - cls.geometry(layer).hop for a, b in zip(chunks, chunks[1:], strict=False))
    many, t2 = features(model, wave, layer, chunk_seconds=4)
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-5 * np.abs(one).max())


def test_features_many_batches_equal_lengths() -> None:
    model = SoundNet5().eval()
    rng = np.random.default_rng(0)
    waves = [rng.uniform(-1, 1, n).astype(np.float32) for n in (3 * SR, 3 * SR, 5 * SR)]
    together = features_many(model, waves, "pool2", batch_size=3)
    for w, (f, t) in zip(waves, together, strict=True):
        f1, t1 = features(model, w, "pool2")
        np.testing.assert_allclose(f, f1, rtol=1e-4, atol=1e-4 * np.abs(f1).max())
        np.testing.assert_array_equal(t, t1)


def test_predict_prints_top5_per_step(weights: str, media: dict[str, str], tmp_path, capsys) -> None:
    names = tmp_path / "scenes.txt"
    names.write_text("".join(f"/{c[0]}/{c}\n" for c in ["abbey", "beach", "canyon", "desert", "forest", "glacier"]))
    assert cli_main(["predict", media["wav"], "--weights", weights, "--scene-names", str(names), "--steps"]) == 0
    out = capsys.readouterr().out
    # a short input tiled to 11.5 s gives one head step: the clip summary, then that step
    assert out.count("objects:") == 2 and "step 0" in out and "step 1" not in out
    assert any(s in out for s in ["abbey", "beach", "canyon", "desert", "forest", "glacier"])
    assert out.split("objects:")[1].split("\n")[0].count(",") == 4  # five classes
    bad = tmp_path / "few.txt"
    bad.write_text("a\nb\n")
    assert cli_main(["predict", media["wav"], "--weights", weights, "--scene-names", str(bad)]) == 2


def test_cli_help_for_every_command(capsys) -> None:
    from soundnet_fast.cli import COMMANDS

    with pytest.raises(SystemExit):
        cli_main(["--help"])
    top = capsys.readouterr().out
    for name, _, _ in COMMANDS:
        assert name in top
        with pytest.raises(SystemExit):
            cli_main([name, "--help"])
        assert "usage" in capsys.readouterr().out


def test_extract_and_predict_fold_by_default_and_no_fold_agrees(
    weights: str, media: dict[str, str], tmp_path, capsys, monkeypatch
) -> None:
    """The commands run the folded inference form (SoundNet.inference) unless --no-fold; both give the same
    features, frame times and printed predictions."""
    from soundnet_fast import model as model_module

    calls: list[int] = []
    conv = model_module._folded_conv

    def spy(*a):
        calls.append(1)
        return conv(*a)

    monkeypatch.setattr(model_module, "_folded_conv", spy)
    files = [media["wav"], media["long"]]
    outs = {}
    for flag in ([], ["--no-fold"]):
        out = tmp_path / ("plain" if flag else "folded")
        del calls[:]
        assert cli_main(["extract", *files, "--weights", weights, "--layer", "conv5", "--out", str(out),
                         "--chunk-seconds", "15", *flag]) == 0  # fmt: skip
        assert bool(calls) == (not flag)  # the folded conv ran, or not at all
        outs[bool(flag)] = [(np.load(p), np.load(p[:-4] + ".times.npy")) for p in output_paths(files, str(out))]
    for (f_fold, t_fold), (f_plain, t_plain) in zip(outs[False], outs[True], strict=True):
        np.testing.assert_array_equal(t_fold, t_plain)
        assert f_fold.shape == f_plain.shape and np.abs(f_fold - f_plain).max() <= 1e-5 * np.abs(f_plain).max()
    capsys.readouterr()
    printed = {}
    for flag in ([], ["--no-fold"]):
        del calls[:]
        assert cli_main(["predict", media["wav"], "--weights", weights, *flag]) == 0
        assert bool(calls) == (not flag)
        printed[bool(flag)] = capsys.readouterr().out
    assert printed[False] == printed[True] and "objects:" in printed[False]


@pytest.mark.parametrize(
    "args", [["--batch-size", "0"], ["--batch-size", "-3"], ["--threads", "-1"], ["--chunk-seconds", "nan"]]
)
def test_bad_numbers_are_usage_errors(args: list[str], capsys) -> None:
    from soundnet_fast.cli import main

    with pytest.raises(SystemExit) as e:
        main(["extract", *args, "x.wav"])
    assert e.value.code == 2
    assert "must be above zero" in capsys.readouterr().err
