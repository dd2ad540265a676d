"""One bad input never takes good ones down in `soundnet-fast extract`: the per-file check
(``audio.check_wave``), the skipped file named with its reason, and a failed batch run again file by file."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from soundnet_fast import SoundNet8, audio
from soundnet_fast.audio import AudioDecodeError, check_wave
from soundnet_fast.cli import main as cli_main
from soundnet_fast.inference import extract
from soundnet_fast.inference.extract import features_by_file, output_paths
from soundnet_fast.weights import save_native
from tests.helpers.badaudio import nan_wav, write_float_wav
from tests.helpers.sounds import sine, write_audio

SR = audio.SAMPLE_RATE


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    m = SoundNet8(num_objects=10, num_scenes=6)
    for b in m.blocks:  # non-trivial running statistics so eval-mode BN is not the identity
        b[1].running_var.uniform_(0.5, 2.0)
    path = str(tmp_path_factory.mktemp("w") / "net.pt")
    save_native(path, m)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Four good 3 s tones at 22,050 Hz, one float WAV with a NaN at 1 s, one of digital silence."""
    d = tmp_path_factory.mktemp("media")
    out = {f"good{i}": write_audio(str(d / f"good{i}.wav"), sine(300 + 110 * i, 3.0, SR), SR) for i in range(4)}
    out["nan"] = nan_wav(d / "nan.wav", 3.0, SR, at=1.0)
    out["silent"] = write_float_wav(d / "silent.wav", np.zeros(3 * SR, np.float32), SR)
    return out


def test_check_wave_fails_empty_and_non_finite_and_warns_on_silence(files) -> None:
    t = sine(440, 1.0, SR)
    assert check_wave("a.wav", t) == []
    assert check_wave("a.wav", np.zeros(10, np.float32)) == ["digital silence (every sample is 0)"]
    assert check_wave("a.wav", t[1:3]) == []  # short is fine: it is tiled
    with pytest.raises(AudioDecodeError, match=r"^a\.wav: decoded to no samples$"):
        check_wave("a.wav", np.zeros(0, np.float32))
    bad = t.copy()
    bad[[2205, 4410]] = [np.inf, -np.inf]
    with pytest.raises(
        AudioDecodeError, match=r"^a\.wav: 2 non-finite sample\(s\) \(NaN or Inf\), the first at 0\.100 s$"
    ):
        check_wave("a.wav", bad)
    with pytest.raises(ValueError, match="1-D"):
        check_wave("a.wav", np.zeros((2, 10), np.float32))
    # A float WAV holding a NaN (or an Inf, which the clip to [-1, 1] would turn into 1.0) decodes; load runs the
    # check before clipping, naming the file and where.
    with pytest.raises(AudioDecodeError, match=rf"^{files['nan']}: 1 non-finite sample\(s\).*at 1\.000 s$"):
        audio.load(files["nan"])
    inf = t.copy()
    inf[SR // 2] = np.inf
    path = write_float_wav(os.path.join(os.path.dirname(files["nan"]), "inf.wav"), inf, SR)
    with pytest.raises(AudioDecodeError, match=r"1 non-finite sample\(s\) \(NaN or Inf\), the first at 0\.500 s$"):
        audio.load(path)


def _extract(files: list[str], weights: str, out, batch_size: int, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli_main(["extract", *files, "--weights", weights, "--layer", "conv5", "--out", str(out),
                   "--batch-size", str(batch_size)])  # fmt: skip
    printed = capsys.readouterr()
    return rc, printed.out, printed.err


@pytest.mark.parametrize("batch_size", [1, 4])
def test_one_nan_file_is_skipped_and_the_others_are_written_unchanged(
    files: dict[str, str], weights: str, batch_size: int, tmp_path, capsys
) -> None:
    good = [files["good0"], files["silent"], files["good1"], files["good2"], files["good3"]]
    with_bad = [good[0], files["nan"], *good[1:]]
    rc, out, err = _extract(good, weights, tmp_path / "ref", batch_size, capsys)
    assert rc == 0 and "wrote 5 feature file(s)" in out
    rc, out, err = _extract(with_bad, weights, tmp_path / "bad", batch_size, capsys)
    assert rc == 0 and "wrote 5 feature file(s)" in out and "1 failed" in out
    assert f"skipped {files['nan']}: 1 non-finite sample(s)" in err  # named once, with its reason
    assert f"warning {files['silent']}: digital silence" in err  # silence is written, with a warning
    assert err.count("good") == 0 and "failed" not in err
    ref_paths = output_paths(good, str(tmp_path / "ref"))
    got_paths = output_paths(with_bad, str(tmp_path / "bad"))
    assert got_paths[2:] == [p.replace(str(tmp_path / "ref"), str(tmp_path / "bad")) for p in ref_paths[1:]]
    for f, ref in zip(with_bad[:1] + with_bad[2:], ref_paths, strict=True):
        got = got_paths[with_bad.index(f)]
        # the same batches as without the bad file: bit for bit the same features and frame times
        np.testing.assert_array_equal(np.load(got), np.load(ref))
        np.testing.assert_array_equal(np.load(got[:-4] + ".times.npy"), np.load(ref[:-4] + ".times.npy"))
    assert not list((tmp_path / "bad").glob("nan*"))


def test_a_failed_batch_runs_again_file_by_file(files: dict[str, str], weights: str, tmp_path, capsys, monkeypatch):
    """Without the per-file check the NaN file reaches the model and its input check fails the whole batch; the
    batch runs again one file at a time, so only that file fails, named with the model's reason."""
    good = [files["good0"], files["good1"], files["good2"]]
    rc, _, _ = _extract(good, weights, tmp_path / "ref", 1, capsys)
    assert rc == 0
    monkeypatch.setattr(extract, "check_wave", lambda path, wave: [])
    monkeypatch.setattr(audio, "check_wave", lambda path, wave, rate: [])  # load's own check too
    batches: list[int] = []
    features = SoundNet8.features

    def spy(self, x, layer="pool5"):
        batches.append(x.shape[0])
        return features(self, x, layer)

    monkeypatch.setattr(SoundNet8, "features", spy)
    with_bad = [good[0], files["nan"], good[1], good[2]]
    rc, out, err = _extract(with_bad, weights, tmp_path / "bad", 4, capsys)
    assert rc == 0 and "wrote 3 feature file(s)" in out and "1 failed" in out
    assert f"failed {files['nan']}: input waveform holds non-finite samples" in err and err.count("failed") == 1
    assert batches == [4, 1, 1, 1, 1]  # the batch, then each file alone
    for f, ref in zip(good, output_paths(good, str(tmp_path / "ref")), strict=True):
        got = output_paths(with_bad, str(tmp_path / "bad"))[with_bad.index(f)]
        np.testing.assert_array_equal(np.load(got), np.load(ref))  # alone, as the batch-1 run computed it


def test_features_by_file_isolates_failures(monkeypatch) -> None:
    model = SoundNet8(num_objects=10, num_scenes=6).eval()
    items = [(f"f{i}", sine(300 + 50 * i, 1.0, SR)) for i in range(3)]
    features = SoundNet8.features

    def out_of_memory_above_one(self, x, layer="pool5"):
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return features(self, x, layer)

    monkeypatch.setattr(SoundNet8, "features", out_of_memory_above_one)
    done, failed = features_by_file(model, items, "pool1", batch_size=3)
    assert list(done) == ["f0", "f1", "f2"] and failed == {}  # a batch-level failure fails no file

    def bug(self, x, layer="pool5"):
        raise TypeError("a bug, not a bad file")

    monkeypatch.setattr(SoundNet8, "features", bug)
    with pytest.raises(TypeError):  # a bug still shows its traceback
        features_by_file(model, items, "pool1", batch_size=3)
