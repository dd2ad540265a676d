"""prepare --part: parts prepared apart equal one folder prepared at once; a killed part resumes; parts made with
other teachers are refused; the part comes from --part, torchrun or a Slurm array (docs/design.md#data-at-scale)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from soundnet_fast.data.dataset import Dataset, DatasetIncomplete
from soundnet_fast.data.loader import ShardLoader
from soundnet_fast.data.parts import part_name, part_of
from soundnet_fast.data.shards import MANIFEST, ShardFormatError, read_index, read_manifest
from soundnet_fast.prepare import run as prepare
from tests.helpers.media import write_video
from tests.helpers.prepare import colour_frames, colour_teacher, load_clip, window_tones
from tests.prepare.test_prepare import cli_main

SECONDS = {"a.mp4": 45, "b.mp4": 25, "sub/c.mkv": 12, "d.mp4": 30, "e.webm": 22, "f.mp4": 8}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("videos")
    for name, seconds in SECONDS.items():
        rate = 48000 if name.endswith(".webm") else 44100  # Opus takes 48 kHz
        write_video(d / name, seconds, fps=2, size=(32, 32), sample_rate=rate, audio_fn=window_tones,
                    frame_fn=colour_frames((32, 32)))  # fmt: skip
    return d


@pytest.fixture(scope="module")
def one_and_parts(videos, tmp_path_factory) -> tuple[Path, Path]:
    """The videos prepared into one folder, and into a folder of 2 parts by two separate runs."""
    out = tmp_path_factory.mktemp("prepared")
    s = prepare.prepare(videos, out / "one", {"objects": colour_teacher()}, workers=1, clips_per_shard=2)
    assert s.succeeded == 6 and s.failed == 0
    for k in range(2):
        s = prepare.prepare(videos, out / "parts", {"objects": colour_teacher()}, workers=1, clips_per_shard=2,
                            part=(k, 2))  # fmt: skip
        assert s.succeeded == sum(part_of(v, 2) == k for v in SECONDS) and s.failed == 0
    return out / "one", out / "parts"


def _clips(folder: Path) -> dict[tuple[str, float], tuple[np.ndarray, np.ndarray]]:
    return {(r["video"], r["start"]): tuple(np.array(a) for a in load_clip(folder, r)) for r in read_index(folder)}


def test_two_parts_prepared_apart_equal_one_folder(one_and_parts):
    one, parts = one_and_parts
    whole = _clips(one)
    split = {}
    for k in range(2):
        folder = parts / part_name(k, 2)
        m = read_manifest(folder)
        assert m["part"] == {"index": k, "count": 2, "videos": sum(part_of(v, 2) == k for v in SECONDS)}
        assert m["complete"] is True and m["frame_decoder"] == "pyav"
        assert {r["video"] for r in read_index(folder)} == {v for v in SECONDS if part_of(v, 2) == k}
        split.update(_clips(folder))
    assert whole.keys() == split.keys() and len(whole) == 7  # a.mp4 (45 s) gives 2 clips, the others 1
    for key, (audio, probs) in whole.items():
        np.testing.assert_array_equal(split[key][0], audio)  # int16: exact
        np.testing.assert_array_equal(split[key][1], probs)
    a = [x for x, _ in ShardLoader(one, 3, seed=4, backend="numpy")]
    b = [x for x, _ in ShardLoader(parts, 3, seed=4, backend="numpy")]
    assert len(a) == len(b) == 2 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert Dataset(one).fingerprint == Dataset(parts).fingerprint


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from soundnet_fast.prepare import run as prepare
    from tests.helpers.prepare import ColourTeacher
    from soundnet_fast.prepare.teachers import Teacher

    class Killing(Teacher):
        calls = 0
        def __call__(self, frames):
            Killing.calls += 1
            if Killing.calls == 3:  # the first video's shard is committed when the second's clips arrive
                os.kill(os.getpid(), signal.SIGKILL)  # a hard kill: no cleanup, no finally
            return super().__call__(frames)

    teacher = Killing(ColourTeacher(), spec="test:colour", num_classes=10, device="cpu")
    prepare.prepare(sys.argv[1], sys.argv[2], {"objects": teacher}, workers=1, clips_per_shard=1, part=(0, 2))
    """
)


def test_a_killed_part_is_unfinished_and_resumes(videos, one_and_parts, tmp_path):
    _, parts = one_and_parts
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "out"
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), str(videos), str(out)], capture_output=True, text=True,
                          cwd=repo, env=env)  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    folder = out / part_name(0, 2)
    m = read_manifest(folder)
    assert m["complete"] is False and 0 < m["num_clips"] < 5
    with pytest.raises(DatasetIncomplete, match=r"missing parts: .*part-00001-of-00002; unfinished parts: .*00000"):
        Dataset(out)
    s = prepare.prepare(videos, out, {"objects": colour_teacher()}, workers=1, clips_per_shard=1, part=(0, 2))
    assert s.skipped >= 1 and s.succeeded + s.skipped == 4 and s.failed == 0
    assert read_manifest(folder)["complete"] is True
    got, ref = _clips(folder), _clips(parts / part_name(0, 2))
    assert got.keys() == ref.keys() and len(got) == 5
    for key, (audio, probs) in got.items():
        np.testing.assert_array_equal(audio, ref[key][0])
        np.testing.assert_array_equal(probs, ref[key][1])


class _Tiny(torch.nn.Module):
    def __init__(self, bias: float) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([bias, 0.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) + self.bias


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_parts_prepared_with_another_weight_file_are_refused(videos, tmp_path):
    specs = []
    for k, bias in enumerate((0.0, 0.5)):  # same architecture and class count, other weights
        path = tmp_path / f"teacher{k}.pt"
        torch.jit.script(_Tiny(bias)).save(str(path))
        specs.append(f"torchscript:{path}")
    for k in range(2):
        prepare.prepare(videos, tmp_path / "d", {"objects": specs[k]}, device="cpu", workers=1, part=(k, 2))
    sums = [read_manifest(tmp_path / "d" / part_name(k, 2))["teachers"]["objects"]["sha256"] for k in range(2)]
    assert sums[0] != sums[1] and all(len(s) == 64 for s in sums)
    with pytest.raises(ShardFormatError, match=r"part-00001-of-00002: teacher objects: 3 classes, sha256 "):
        Dataset(tmp_path / "d")


def test_cli_part_from_a_slurm_array_and_refusals(videos, tmp_path, monkeypatch, capsys):
    slurm = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "3",
             "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_STEP": "1"}  # fmt: skip
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    assert cli_main(["prepare", str(videos), str(out), "--workers", "1"]) == 2
    assert "Slurm array" in capsys.readouterr().err and not out.exists()
    assert cli_main(["prepare", str(videos), str(out), "--workers", "1", "--part", "auto"]) == 0
    m = json.loads((out / part_name(1, 3) / MANIFEST).read_text())
    assert m["part"]["index"] == 1 and m["part"]["count"] == 3 and m["complete"] is True
    assert {r["video"] for r in read_index(out / part_name(1, 3))} == {v for v in SECONDS if part_of(v, 3) == 1}
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")  # --array=1,3: not contiguous
    assert cli_main(["prepare", str(videos), str(out), "--part", "auto"]) == 2
    assert "not MIN, MIN+STEP" in capsys.readouterr().err
    assert cli_main(["prepare", str(videos), str(out), "--part", "5/3"]) == 2
    for key in slurm:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert cli_main(["prepare", str(videos), str(out), "--workers", "1", "--part", "auto"]) == 0
    assert (out / part_name(0, 3) / MANIFEST).exists()
    capsys.readouterr()
    assert cli_main(["prepare", str(videos), str(out), "--part", "2/3", "--workers", "1"]) == 0
    assert Dataset(out).num_clips == 7
