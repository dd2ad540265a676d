"""ShardLoader: the sampling order, scaled batches, resumption, ranks, the DALI backend and the prefetch thread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundnet_fast.data.loader import ShardLoader, _prefetched, epoch_order
from soundnet_fast.data.shards import ShardFormatError, read_index
from tests.helpers.shards import CLIP, STEPS, clip_arrays, write_shards


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


def test_prefetch_thread_same_batches_errors_and_early_stop(tmp_path):
    import threading

    write_shards(tmp_path)
    a = [x for x, _ in ShardLoader(tmp_path, 4, seed=2, backend="numpy", prefetch=0)]
    b = [x for x, _ in ShardLoader(tmp_path, 4, seed=2, backend="numpy", prefetch=3)]
    assert len(a) == len(b) == 5 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    def failing():
        yield 1
        raise OSError("disk gone")

    it = _prefetched(failing(), 2)
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)
    loader = ShardLoader(tmp_path, 2, seed=2, backend="numpy", prefetch=2)
    for _ in loader:
        break  # the generator is closed here: its thread must stop
    assert not any(t.name == "ShardLoader-prefetch" and t.is_alive() for t in threading.enumerate())
    assert loader.state_dict()["position"] == 1
