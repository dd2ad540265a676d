"""Datasets of several parts or folders: the same batches whatever the split and the ranks, exact resumption across
splits, and the refusals (parts that disagree, overlap, are missing or unfinished) naming the part."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.data.dataset import Dataset, DatasetIncomplete
from soundnet_fast.data.keys import KEYS
from soundnet_fast.data.loader import ShardLoader
from soundnet_fast.data.shards import MANIFEST, ShardFormatError, ShardWriter
from tests.data.parts_helpers import batches, clip_ids, write_parts
from tests.helpers.shards import CLIP, STEPS, TEACHERS, clip_arrays, write_shards


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same 21 clips as one folder, 2 parts, 3 parts, and two folders of parts (2 + 2 of a 4-way split)."""
    root = tmp_path_factory.mktemp("layouts")
    write_shards(root / "one")
    write_parts(root / "two", 2)
    write_parts(root / "three", 3, clips_per_shard=2)
    write_parts(root / "fourA", 4, only=[0, 1])
    write_parts(root / "fourB", 4, only=[2, 3])
    return {
        "one": root / "one",
        "two": root / "two",
        "three": root / "three",
        "two folders": [
            root / "fourA" / "part-00000-of-00004",
            root / "fourA" / "part-00001-of-00004",
            root / "fourB",
        ],  # fmt: skip
    }


def test_every_split_yields_the_same_batches_and_targets(layouts):
    ref = batches(ShardLoader(layouts["one"], 4, seed=3, backend="numpy"), epochs=2)
    assert sorted(i for ids, _ in ref[: len(ref) // 2] for i in ids) != list(range(20))  # shuffled
    for name, path in layouts.items():
        loader = ShardLoader(path, 4, seed=3, backend="numpy")
        assert loader.num_clips == 21 and len(loader) == 5, name
        got = batches(loader, epochs=2)
        assert [ids for ids, _ in got] == [ids for ids, _ in ref], name
        for (ids, t), (_, r) in zip(got, ref, strict=True):
            for k in TEACHERS:
                np.testing.assert_array_equal(t[k], r[k])
            np.testing.assert_array_equal(t["objects"][0], clip_arrays(ids[0])[1]["objects"].T)


@pytest.mark.parametrize("layout", ["one", "three"])
def test_the_global_batch_is_the_same_for_any_number_of_ranks(layouts, layout):
    """Global batch 6: one rank of 6, two of 3, three of 2 read the same six clips at every step."""
    single = [set(ids) for ids, _ in batches(ShardLoader(layouts["one"], 6, seed=9, backend="numpy"))]
    for world in (2, 3):
        ranks = [batches(ShardLoader(layouts[layout], 6 // world, seed=9, shard_id=r, num_shards=world,
                                     backend="numpy")) for r in range(world)]  # fmt: skip
        steps = [set().union(*(set(rank[i][0]) for rank in ranks)) for i in range(len(ranks[0]))]
        assert steps == single, (layout, world)


def test_gather_and_threads_do_not_change_batches(layouts):
    ref = ShardLoader(layouts["two"], 4, seed=1, backend="numpy", gather="numpy")
    want = [(a.clone(), {k: v.clone() for k, v in t.items()}) for a, t in ref]
    for gather, threads in (("numba", 1), ("numba", 3), ("auto", 2), ("numpy", 2)):
        pytest.importorskip("numba")
        loader = ShardLoader(layouts["two"], 4, seed=1, backend="numpy", gather=gather, num_threads=threads)
        assert loader.gather == gather
        got = list(loader)
        assert len(got) == len(want)
        for (a, t), (b, u) in zip(got, want, strict=True):
            assert torch.equal(a, b) and all(torch.equal(t[k], u[k]) for k in TEACHERS)


def test_batches_kept_by_the_caller_are_never_overwritten(layouts):
    loader = ShardLoader(layouts["one"], 4, seed=2, backend="numpy")
    kept = list(loader)  # every batch alive at once: the buffer pool must hand out fresh arrays
    ids = [clip_ids(a) for a, _ in kept]
    assert len({i for b in ids for i in b}) == 20
    again = [clip_ids(a) for a, _ in ShardLoader(layouts["one"], 4, seed=2, backend="numpy")]
    assert ids == again
    first = next(iter(loader))[0]
    del kept, first
    a1 = next(iter(loader))[0]
    p1 = a1.data_ptr()
    del a1
    a2 = next(iter(loader))[0]  # the previous batch is gone: its array is reused
    assert a2.data_ptr() == p1


def test_resume_mid_epoch_over_another_split_is_exact(layouts):
    ref = batches(ShardLoader(layouts["one"], 2, seed=7, backend="numpy"), epochs=2)
    loader = ShardLoader(layouts["two"], 2, seed=7, backend="numpy")
    got = []
    for audio, _ in loader:
        got.append(clip_ids(audio))
        if len(got) == 4:
            break
    state = loader.state_dict()
    assert state["position"] == 4 and state["dataset"] == loader.dataset.fingerprint
    for path in (layouts["three"], layouts["two folders"], layouts["one"]):
        resumed = ShardLoader(path, 2, seed=7, backend="numpy")
        resumed.load_state_dict(state)
        resumed.set_epoch(0)
        rest = [ids for ids, _ in batches(resumed, epochs=2)][: len(ref) - 4]
        assert got + rest == [ids for ids, _ in ref], path


def test_resume_over_other_clips_is_refused(layouts, tmp_path):
    state = ShardLoader(layouts["two"], 2, seed=7, backend="numpy").state_dict()
    write_parts(tmp_path / "more", 2, num_videos=8)
    with pytest.raises(ValueError, match="num_clips"):
        ShardLoader(tmp_path / "more", 2, seed=7, backend="numpy").load_state_dict(state)
    write_parts(tmp_path / "other", 2, prefix="w")  # as many clips, from other videos
    with pytest.raises(ValueError, match="fingerprint"):
        ShardLoader(tmp_path / "other", 2, seed=7, backend="numpy").load_state_dict(state)
    old = {k: v for k, v in state.items() if k != "dataset"}  # a state saved before clip keys existed
    one = ShardLoader(layouts["one"], 2, seed=7, backend="numpy")
    one.load_state_dict({**old, "position": 0})
    with pytest.raises(ValueError, match="mid-epoch"):
        one.load_state_dict(old | {"position": 3})


def test_unshuffled_reads_as_stored_and_its_state_needs_the_same_storage(layouts):
    one = ShardLoader(layouts["one"], 7, shuffle=False, backend="numpy")
    assert [ids for ids, _ in batches(one)] == [list(range(0, 7)), list(range(7, 14)), list(range(14, 21))]
    two = ShardLoader(layouts["two"], 7, shuffle=False, backend="numpy")
    assert sorted(i for ids, _ in batches(two) for i in ids) == list(range(21))
    with pytest.raises(ValueError, match="stored in the same order"):
        two.load_state_dict({**one.state_dict(), "position": 1})


def _edit_manifest(folder, **changes):
    path = os.path.join(folder, MANIFEST)
    m = json.loads(open(path).read())
    for key, value in changes.items():
        if "." in key:
            a, b, c = key.split(".")
            m[a][b][c] = value
        else:
            m[key] = value
    open(path, "w").write(json.dumps(m))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"clip_samples": CLIP + 1}, "clip_samples"),
        ({"teachers.scenes.num_classes": 4}, "teacher scenes: 4 classes"),
        ({"teachers.objects.sha256": "ab" * 32}, "teacher objects"),
        ({"audio_decoder": "dali"}, "audio_decoder"),
        ({"frame_decoder": "dali"}, "frame_decoder"),
        ({"mono": "mean"}, "mono"),
    ],
)
def test_parts_that_disagree_are_refused_naming_the_part(tmp_path, change, message):
    folders = write_parts(tmp_path / "d", 2, extra={"audio_decoder": "pyav", "frame_decoder": "pyav"})
    if "teachers.objects.sha256" in change:
        _edit_manifest(folders[0], **{"teachers.objects.sha256": "cd" * 32})
    _edit_manifest(folders[1], **change)
    with pytest.raises(ShardFormatError, match=rf"part-00001-of-00002: .*{message}.*unlike .*part-00000-of-00002"):
        ShardLoader(tmp_path / "d", 2, backend="numpy")


def test_missing_and_unfinished_parts_are_refused_unless_partial(tmp_path):
    write_parts(tmp_path / "d", 3, only=[0, 2])
    with pytest.raises(DatasetIncomplete, match=r"missing parts: .*part-00001-of-00003 .*--allow-partial"):
        ShardLoader(tmp_path / "d", 2, backend="numpy")
    partial = ShardLoader(tmp_path / "d", 2, backend="numpy", allow_partial=True)
    assert partial.dataset.missing == [os.path.join(str(tmp_path / "d"), "part-00001-of-00003")]
    write_parts(tmp_path / "d", 3, only=[1])
    _edit_manifest(tmp_path / "d" / "part-00002-of-00003", complete=False)
    with pytest.raises(DatasetIncomplete, match=r"unfinished parts: .*part-00002-of-00003"):
        Dataset(tmp_path / "d")
    full = ShardLoader(tmp_path / "d", 2, backend="numpy", allow_partial=True)
    assert full.num_clips == 21 and full.dataset.unfinished and not full.dataset.missing


def test_overlapping_parts_and_mixed_splits_are_refused(tmp_path):
    write_parts(tmp_path / "a", 2)
    write_parts(tmp_path / "b", 3, only=[0])
    with pytest.raises(ShardFormatError, match="the same clip .*overlap"):
        Dataset([tmp_path / "a", tmp_path / "b" / "part-00000-of-00003"])
    write_parts(tmp_path / "a", 3, only=[1])
    with pytest.raises(ShardFormatError, match=r"splits into \[2, 3\] parts"):
        Dataset(tmp_path / "a")
    with pytest.raises(ShardFormatError, match="given twice"):
        Dataset([tmp_path / "b", tmp_path / "b" / "part-00000-of-00003"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardFormatError, match="no part folders"):
        Dataset(tmp_path / "empty")


def test_a_folder_without_clip_keys_reads_the_same_and_resumes(tmp_path, layouts):
    """A folder written before clip keys (no clipkeys.bin, no tail): the loader derives the keys from the index, and
    a resumed writer rebuilds the file."""
    write_shards(tmp_path / "old")
    os.unlink(tmp_path / "old" / KEYS)
    m = json.loads((tmp_path / "old" / MANIFEST).read_text())
    del m["tail"]
    (tmp_path / "old" / MANIFEST).write_text(json.dumps(m))
    old = batches(ShardLoader(tmp_path / "old", 4, seed=5, backend="numpy"))
    new = batches(ShardLoader(layouts["one"], 4, seed=5, backend="numpy"))
    assert [ids for ids, _ in old] == [ids for ids, _ in new]
    w = ShardWriter(tmp_path / "old", TEACHERS, SAMPLE_RATE, CLIP, STEPS, 5.0, clips_per_shard=5)
    assert w.num_clips == 21 and w.num_videos == 7 and os.path.getsize(tmp_path / "old" / KEYS) == 21 * 16
    w.close()
    assert Dataset(tmp_path / "old").fingerprint == Dataset(layouts["one"]).fingerprint
    assert json.loads((tmp_path / "old" / MANIFEST).read_text())["tail"]["num_clips"] == 21
