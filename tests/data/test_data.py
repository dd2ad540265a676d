"""Shard format, ShardWriter and ShardLoader: round trips, atomicity, sampling order, resumption."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from soundnet_fast.data import shards as data
from soundnet_fast.data.shards import ShardFormatError, ShardLoader, ShardWriter, epoch_order, read_index, read_manifest

CLIP = 2205  # 0.1 s at 22,050 Hz keeps fixtures tiny; the format does not care about the length
STEPS = 4
TEACHERS = {
    "objects": {"spec": "test:objects", "num_classes": 5, "class_names": [f"o{i}" for i in range(5)]},
    "scenes": {"spec": "test:scenes", "num_classes": 3, "class_names": None},
}


def clip_arrays(i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Clip ``i``: audio whose first sample is ``i`` (identifies the clip), one-hot teacher rows."""
    rng = np.random.default_rng(i)
    audio = rng.integers(-32768, 32767, CLIP, dtype=np.int16, endpoint=True)
    audio[0] = i
    probs = {}
    for name, t in TEACHERS.items():
        p = rng.random((STEPS, t["num_classes"]), dtype=np.float32)
        probs[name] = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    return audio, probs


def write_shards(out, num_videos=7, clips_per_video=3, clips_per_shard=5, silent_every=4):
    w = ShardWriter(out, TEACHERS, 22050, CLIP, STEPS, 5.0, clips_per_shard=clips_per_shard)
    i = 0
    for v in range(num_videos):
        for c in range(clips_per_video):
            audio, probs = clip_arrays(i)
            meta = {
                "video": f"v{v}.mp4",
                "start": 20.0 * c,
                "frame_times": [20.0 * c + 2.5 + 5 * t for t in range(4)],
                "silent": i % silent_every == 0,
            }
            w.add(audio, probs, meta)
            i += 1
    w.close()
    return i


def test_round_trip_manifest_index_and_arrays(tmp_path):
    n = write_shards(tmp_path)
    m = read_manifest(tmp_path)
    assert m["format"] == data.FORMAT and m["num_clips"] == n == 21 and m["num_videos"] == 7
    assert m["silent_clips"] == sum(1 for i in range(n) if i % 4 == 0)
    assert m["teachers"]["objects"]["class_names"] == TEACHERS["objects"]["class_names"]
    assert m["clip_seconds"] == pytest.approx(CLIP / 22050)
    # Shards are cut only between videos: 5 clips per shard rounds up to whole 3-clip videos.
    assert [s["num_clips"] for s in m["shards"]] == [6, 6, 6, 3]
    index = read_index(tmp_path)
    assert [r["clip"] for r in index] == list(range(n))
    by_shard: dict[str, set] = {}
    for r in index:
        by_shard.setdefault(r["shard"], set()).add(r["video"])
    assert sum(len(v) for v in by_shard.values()) == 7  # no video in two shards
    for r in index:
        files = data.shard_files(tmp_path, r["shard"], list(TEACHERS))
        audio, probs = clip_arrays(r["clip"])
        np.testing.assert_array_equal(np.load(files["audio"], mmap_mode="r")[r["row"]], audio)  # int16 exact
        for t in TEACHERS:
            stored = np.load(files[t])
            assert stored.dtype == np.float32 and stored.shape[1:] == (STEPS, TEACHERS[t]["num_classes"])
            np.testing.assert_array_equal(stored[r["row"]], probs[t])
            np.testing.assert_allclose(stored.sum(axis=2), 1.0, atol=1e-5)


def test_writer_rejects_bad_clips_and_keeps_state(tmp_path):
    w = ShardWriter(tmp_path, TEACHERS, 22050, CLIP, STEPS, 5.0)
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
        ShardWriter(tmp_path / "x", {"a/b": {"num_classes": 2}}, 22050, CLIP, STEPS, 5.0)


def test_killed_run_leaves_no_half_shard_and_resume_appends(tmp_path):
    write_shards(tmp_path, num_videos=4)  # 12 clips: shards of 6 and 6
    m = read_manifest(tmp_path)
    # Simulate a run killed after its shard files and index lines were written but before the manifest:
    # index lines of an unlisted shard, a torn line, and a stray temporary.
    with open(tmp_path / data.INDEX, "a") as f:
        f.write(json.dumps({"clip": 12, "video": "ghost", "shard": "shard-000002", "row": 0}) + "\n")
        f.write('{"clip": 13, "video": "gho')
    (tmp_path / ".tmp-shard-000002.audio.npy-xyz").write_bytes(b"partial")
    assert len(read_index(tmp_path)) == 12
    assert read_manifest(tmp_path) == m
    # Resuming with the same settings drops the ghost lines and continues numbering.
    w = ShardWriter(tmp_path, TEACHERS, 22050, CLIP, STEPS, 5.0, clips_per_shard=5)
    assert w.num_clips == 12 and w.videos == {f"v{v}.mp4" for v in range(4)}
    audio, probs = clip_arrays(12)
    w.add(audio, probs, {"video": "new.mp4"})
    w.close()
    index = read_index(tmp_path)
    assert [r["clip"] for r in index] == list(range(13)) and index[-1]["video"] == "new.mp4"
    assert not any(name.startswith(".tmp-") for name in os.listdir(tmp_path))
    with open(tmp_path / data.INDEX) as f:
        assert all("ghost" not in line for line in f)
    # Different settings refuse to mix into the same folder.
    with pytest.raises(ShardFormatError, match="clip_samples"):
        ShardWriter(tmp_path, TEACHERS, 22050, CLIP + 1, STEPS, 5.0)
    other = {**TEACHERS, "scenes": {**TEACHERS["scenes"], "num_classes": 4, "class_names": None}}
    with pytest.raises(ShardFormatError, match="teachers"):
        ShardWriter(tmp_path, other, 22050, CLIP, STEPS, 5.0)


def test_writer_exception_commits_nothing_buffered(tmp_path):
    audio, probs = clip_arrays(0)
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(tmp_path, TEACHERS, 22050, CLIP, STEPS, 5.0) as w:
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


def test_epoch_order_is_seeded_epoch_aware_and_disjoint():
    a, b = epoch_order(103, 0, seed=1), epoch_order(103, 0, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, epoch_order(103, 1, seed=1))
    assert not np.array_equal(a, epoch_order(103, 0, seed=2))
    np.testing.assert_array_equal(np.sort(a), np.arange(103))
    shares = [epoch_order(103, 3, seed=1, shard_id=r, num_shards=4) for r in range(4)]
    assert all(len(s) == 25 for s in shares)
    joined = np.concatenate(shares)
    assert len(np.unique(joined)) == 100  # disjoint
    padded = [epoch_order(103, 3, seed=1, shard_id=r, num_shards=4, drop_last=False) for r in range(4)]
    assert all(len(s) == 26 for s in padded) and len(np.unique(np.concatenate(padded))) == 103
    np.testing.assert_array_equal(epoch_order(5, 0, shuffle=False), np.arange(5))
    with pytest.raises(ValueError, match="shard_id"):
        epoch_order(10, 0, shard_id=2, num_shards=2)


def test_loader_yields_scaled_audio_and_transposed_targets(tmp_path):
    write_shards(tmp_path)
    loader = ShardLoader(tmp_path, 4, seed=3, backend="numpy")
    assert len(loader) == 21 // 4
    index = {r["clip"]: r for r in read_index(tmp_path)}
    seen = []
    for audio, targets in loader:
        assert audio.dtype == torch.float32 and audio.shape == (4, 1, CLIP)
        assert targets["objects"].shape == (4, 5, STEPS) and targets["scenes"].shape == (4, 3, STEPS)
        for k in range(4):
            clip = int(audio[k, 0, 0].item() * 128.0)  # x256 of int16/32768 = int16/128
            assert index[clip]["clip"] == clip
            ref_audio, ref_probs = clip_arrays(clip)
            torch.testing.assert_close(audio[k, 0], torch.from_numpy(ref_audio.astype(np.float32) / 128.0))
            torch.testing.assert_close(targets["objects"][k], torch.from_numpy(ref_probs["objects"].T.copy()))
            seen.append(clip)
    assert seen == loader.order(0)[:20].tolist()
    assert len(set(seen)) == 20
    assert loader.epoch == 1 and loader.position == 0  # moved on to the next epoch


def test_loader_teacher_subset_scale_and_errors(tmp_path):
    write_shards(tmp_path)
    loader = ShardLoader(tmp_path, 3, backend="numpy", teachers=["scenes"], scale=512.0, shuffle=False)
    audio, targets = next(iter(loader))
    assert list(targets) == ["scenes"]
    assert audio[0, 0, 0].item() == pytest.approx(0.0) and audio[1, 0, 0].item() == pytest.approx(1 / 64)
    with pytest.raises(ValueError, match="no teacher"):
        ShardLoader(tmp_path, 3, backend="numpy", teachers=["faces"])
    with pytest.raises(ValueError, match="no batch"):
        ShardLoader(tmp_path, 64, backend="numpy")
    np.save(tmp_path / "shard-000001.audio.npy", np.zeros((6, CLIP + 1), np.int16))
    with pytest.raises(ShardFormatError, match=r"shard-000001\.audio\.npy: holds"):
        ShardLoader(tmp_path, 3, backend="numpy")


def test_loader_resumes_exactly_and_set_epoch(tmp_path):
    write_shards(tmp_path)
    full = ShardLoader(tmp_path, 2, seed=7, backend="numpy")
    ref = [a[:, 0, 0].clone() for a, _ in full] + [a[:, 0, 0].clone() for a, _ in full]  # epochs 0 and 1
    loader = ShardLoader(tmp_path, 2, seed=7, backend="numpy")
    got = []
    for a, _ in loader:
        got.append(a[:, 0, 0].clone())
        if len(got) == 4:
            break
    state = loader.state_dict()
    assert state["epoch"] == 0 and state["position"] == 4
    resumed = ShardLoader(tmp_path, 2, seed=7, backend="numpy")
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # same epoch: keeps the restored position
    got += [a[:, 0, 0].clone() for a, _ in resumed]
    got += [a[:, 0, 0].clone() for a, _ in resumed]
    assert len(got) == len(ref) and all(torch.equal(x, y) for x, y in zip(got, ref, strict=True))
    resumed.set_epoch(5)
    assert resumed.state_dict()["position"] == 0
    first5 = next(iter(resumed))[0][:, 0, 0]
    assert first5.mul(128).round().long().tolist() == resumed.order(5)[:2].tolist()
    with pytest.raises(ValueError, match="seed"):
        ShardLoader(tmp_path, 2, seed=8, backend="numpy").load_state_dict(state)


def test_loader_shares_are_disjoint_across_ranks(tmp_path):
    write_shards(tmp_path)
    clips = []
    for rank in range(3):
        loader = ShardLoader(tmp_path, 2, seed=1, shard_id=rank, num_shards=3, backend="numpy")
        assert len(loader) == 3
        for a, _ in loader:
            clips += a[:, 0, 0].mul(128).round().long().tolist()
    assert len(clips) == 18 and len(set(clips)) == 18


def test_check_model_steps():
    from soundnet_fast.model import SoundNet5, SoundNet8

    m20 = {"steps": 4, "clip_samples": 441000, "frame_every": 5.0}
    assert data.check_model_steps(m20, SoundNet8) == 4
    m10 = {"steps": 2, "clip_samples": 220500, "frame_every": 5.0}
    assert data.check_model_steps(m10, SoundNet5) == 2
    with pytest.raises(ValueError, match="T = 1 head steps"):
        data.check_model_steps(m10, SoundNet8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": 3},
        {"shuffle": False, "drop_last": False},  # a short last batch
        {"seed": 5, "shard_id": 1, "num_shards": 2, "teachers": ["scenes"]},
    ],
)
def test_dali_backend_yields_identical_batches(tmp_path, kwargs):
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'soundnet-fast[dali]')")
    write_shards(tmp_path)
    ref = ShardLoader(tmp_path, 4, backend="numpy", **kwargs)
    dali = ShardLoader(tmp_path, 4, backend="dali", num_threads=2, **kwargs)
    assert dali.backend == "dali" and len(dali) == len(ref)
    for epoch in range(2):
        pairs = list(zip(ref, dali, strict=True))
        assert len(pairs) == len(ref), epoch
        for (a, ta), (b, tb) in pairs:
            assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
            assert list(ta) == list(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    # Resuming mid-epoch through DALI continues exactly where the numpy loader would.
    ref.set_epoch(7)
    dali.load_state_dict({**ref.state_dict(), "position": 1})
    want = list(ref)[1:]
    got = list(dali)
    assert len(got) == len(want) and all(torch.equal(a, b) for (a, _), (b, _) in zip(want, got, strict=True))


def test_auto_backend_is_numpy_on_cpu(tmp_path):
    write_shards(tmp_path)
    assert ShardLoader(tmp_path, 4).backend == "numpy"
    with pytest.raises(ValueError, match="backend"):
        ShardLoader(tmp_path, 4, backend="arrow")


def test_inspect_summarizes_and_prints(tmp_path, capsys):
    import argparse

    from soundnet_fast.data import inspect as shardinfo

    write_shards(tmp_path)
    (tmp_path / data.FAILURES).write_text(
        json.dumps({"video": "x.mp4", "reason": "x.mp4: empty", "kind": "empty"}) + "\n"
    )
    s = shardinfo.summarize(tmp_path, clips=2, top=2)
    assert s["index_clips"] == 21 and s["num_shards"] == 4 and s["failures"] == {"empty": 1}
    assert len(s["samples"]) == 2
    clip = s["samples"][0]
    _, probs = clip_arrays(clip["clip"])
    best = int(np.argmax(probs["objects"][0]))
    assert clip["teachers"]["objects"][0][0] == (f"o{best}", pytest.approx(float(probs["objects"][0, best])))
    assert clip["teachers"]["scenes"][0][0][0].startswith("#")  # no class names: indices
    parser = argparse.ArgumentParser()
    shardinfo.add_arguments(parser)
    assert shardinfo.run(parser.parse_args([str(tmp_path), "--clips", "1"])) == 0
    out = capsys.readouterr().out
    assert "21 clips" in out and "7 videos" in out and "empty: 1" in out and "teacher objects: 5 classes" in out
    assert shardinfo.run(parser.parse_args([str(tmp_path / "nowhere")])) == 2


def test_prefetch_thread_same_batches_errors_and_early_stop(tmp_path):
    import threading

    write_shards(tmp_path)
    a = [x for x, _ in ShardLoader(tmp_path, 4, seed=2, backend="numpy", prefetch=0)]
    b = [x for x, _ in ShardLoader(tmp_path, 4, seed=2, backend="numpy", prefetch=3)]
    assert len(a) == len(b) == 5 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    def failing():
        yield 1
        raise OSError("disk gone")

    it = data._prefetched(failing(), 2)
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)
    loader = ShardLoader(tmp_path, 2, seed=2, backend="numpy", prefetch=2)
    for _ in loader:
        break  # the generator is closed here: its thread must stop
    assert not any(t.name == "ShardLoader-prefetch" and t.is_alive() for t in threading.enumerate())
    assert loader.state_dict()["position"] == 1
