"""Shard format and ShardWriter: round trips, atomicity, resumption, the readers' errors, the head-step check."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.data.shards import (
    FORMAT,
    INDEX,
    ShardFormatError,
    ShardWriter,
    check_model_steps,
    read_index,
    read_manifest,
    shard_files,
)
from tests.helpers.shards import CLIP, STEPS, TEACHERS, clip_arrays, write_shards


def test_round_trip_manifest_index_and_arrays(tmp_path):
    n = write_shards(tmp_path)
    m = read_manifest(tmp_path)
    assert m["format"] == FORMAT and m["num_clips"] == n == 21 and m["num_videos"] == 7
    assert m["silent_clips"] == sum(1 for i in range(n) if i % 4 == 0)
    assert m["teachers"]["objects"]["class_names"] == TEACHERS["objects"]["class_names"]
    assert m["clip_seconds"] == pytest.approx(CLIP / SAMPLE_RATE)
    # Shards are cut only between videos: 5 clips per shard rounds up to whole 3-clip videos.
    assert [s["num_clips"] for s in m["shards"]] == [6, 6, 6, 3]
    index = read_index(tmp_path)
    assert [r["clip"] for r in index] == list(range(n))
    by_shard: dict[str, set] = {}
    for r in index:
        by_shard.setdefault(r["shard"], set()).add(r["video"])
    assert sum(len(v) for v in by_shard.values()) == 7  # no video in two shards
    for r in index:
        files = shard_files(tmp_path, r["shard"], list(TEACHERS))
        audio, probs = clip_arrays(r["clip"])
        np.testing.assert_array_equal(np.load(files["audio"], mmap_mode="r")[r["row"]], audio)  # int16 exact
        for t in TEACHERS:
            stored = np.load(files[t])
            assert stored.dtype == np.float32 and stored.shape[1:] == (STEPS, TEACHERS[t]["num_classes"])
            np.testing.assert_array_equal(stored[r["row"]], probs[t])
            np.testing.assert_allclose(stored.sum(axis=2), 1.0, atol=1e-5)


def test_writer_rejects_bad_clips_and_keeps_state(tmp_path):
    w = ShardWriter(tmp_path, TEACHERS, SAMPLE_RATE, CLIP, STEPS, 5.0)
    audio, probs = clip_arrays(0)
    with pytest.raises(ValueError, match="int16"):
        w.add(audio.astype(np.float32), probs, {"video": "a"})
    with pytest.raises(ValueError, match="shaped"):
        w.add(audio, {**probs, "objects": probs["objects"][:2]}, {"video": "a"})
    bad = probs["objects"].copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite.*|.*non-finite"):
        w.add(audio, {**probs, "objects": bad}, {"video": "a"})
    with pytest.raises(ValueError, match="sum to"):
        w.add(audio, {**probs, "objects": probs["objects"] * 2}, {"video": "a"})
    with pytest.raises(ValueError, match="expected"):
        w.add(audio, {"objects": probs["objects"]}, {"video": "a"})
    w.add(audio, probs, {"video": "a"})
    w.close()
    assert read_manifest(tmp_path)["num_clips"] == 1
    with pytest.raises(ValueError, match="names files"):
        ShardWriter(tmp_path / "x", {"a/b": {"num_classes": 2}}, SAMPLE_RATE, CLIP, STEPS, 5.0)


def test_killed_run_leaves_no_half_shard_and_resume_appends(tmp_path):
    write_shards(tmp_path, num_videos=4)  # 12 clips: shards of 6 and 6
    m = read_manifest(tmp_path)
    # Simulate a run killed after its shard files and index lines were written but before the manifest:
    # index lines of an unlisted shard, a torn line, and a stray temporary.
    with open(tmp_path / INDEX, "a") as f:
        f.write(json.dumps({"clip": 12, "video": "ghost", "shard": "shard-000002", "row": 0}) + "\n")
        f.write('{"clip": 13, "video": "gho')
    (tmp_path / ".tmp-shard-000002.audio.npy-xyz").write_bytes(b"partial")
    assert len(read_index(tmp_path)) == 12
    assert read_manifest(tmp_path) == m
    # Resuming with the same settings drops the ghost lines and continues numbering.
    w = ShardWriter(tmp_path, TEACHERS, SAMPLE_RATE, CLIP, STEPS, 5.0, clips_per_shard=5)
    assert w.num_clips == 12 and w.videos == {f"v{v}.mp4" for v in range(4)}
    audio, probs = clip_arrays(12)
    w.add(audio, probs, {"video": "new.mp4"})
    w.close()
    index = read_index(tmp_path)
    assert [r["clip"] for r in index] == list(range(13)) and index[-1]["video"] == "new.mp4"
    assert not any(name.startswith(".tmp-") for name in os.listdir(tmp_path))
    with open(tmp_path / INDEX) as f:
        assert all("ghost" not in line for line in f)
    # Different settings refuse to mix into the same folder.
    with pytest.raises(ShardFormatError, match="clip_samples"):
        ShardWriter(tmp_path, TEACHERS, SAMPLE_RATE, CLIP + 1, STEPS, 5.0)
    other = {**TEACHERS, "scenes": {**TEACHERS["scenes"], "num_classes": 4, "class_names": None}}
    with pytest.raises(ShardFormatError, match="teachers"):
        ShardWriter(tmp_path, other, SAMPLE_RATE, CLIP, STEPS, 5.0)


def test_writer_exception_commits_nothing_buffered(tmp_path):
    audio, probs = clip_arrays(0)
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(tmp_path, TEACHERS, SAMPLE_RATE, CLIP, STEPS, 5.0) as w:
        w.add(audio, probs, {"video": "a"})
        raise RuntimeError("boom")
    assert read_manifest(tmp_path)["num_clips"] == 0 and read_index(tmp_path) == []


def test_read_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(ShardFormatError, match="manifest.json: no such file"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ShardFormatError, match=r"manifest\.json: cannot read"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other/1"}))
    with pytest.raises(ShardFormatError, match="'other/1'"):
        read_manifest(tmp_path)


def test_check_model_steps():
    from soundnet_fast.model import SoundNet5, SoundNet8

    m20 = {"steps": 4, "clip_samples": 20 * SAMPLE_RATE, "frame_every": 5.0}
    assert check_model_steps(m20, SoundNet8) == 4
    m10 = {"steps": 2, "clip_samples": 10 * SAMPLE_RATE, "frame_every": 5.0}
    assert check_model_steps(m10, SoundNet5) == 2
    with pytest.raises(ValueError, match="T = 1 head steps"):
        check_model_steps(m10, SoundNet8)
