"""Which part a video belongs to, and which part a process prepares: --part K/N, torchrun, Slurm arrays."""

from __future__ import annotations

import hashlib

import pytest

from soundnet_fast.data.parts import (
    PartError,
    parse_part,
    part_from_env,
    part_name,
    part_of,
    resolve_part,
    video_key,
    weights_sha256,
)


def test_video_key_is_blake2b_and_parts_are_stable_disjoint_and_cover():
    assert video_key("a.mp4") == int.from_bytes(hashlib.blake2b(b"a.mp4", digest_size=8).digest(), "big")
    videos = [f"dir{i % 7}/clip{i}.mp4" for i in range(3000)]
    split = {v: part_of(v, 8) for v in videos}
    assert set(split.values()) == set(range(8))
    counts = [list(split.values()).count(k) for k in range(8)]
    assert min(counts) > 300 and max(counts) < 450  # about 3000 / 8 each: a hash, not a list position
    more = videos + [f"new/clip{i}.mp4" for i in range(500)]  # adding videos moves none of the others
    assert all(part_of(v, 8) == split[v] for v in more[:3000])
    assert part_name(3, 8) == "part-00003-of-00008"


def test_parse_part():
    assert parse_part("3/8") == (3, 8) and parse_part(" 0 / 1 ") == (0, 1) and parse_part("all") is None
    for bad in ("8/8", "-1/4", "3", "a/b", "1/0", "0/100000"):
        with pytest.raises(PartError, match="--part"):
            parse_part(bad)


def test_torchrun_environment():
    assert part_from_env({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}) == (2, 4)
    with pytest.raises(PartError, match="outside"):
        part_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    assert part_from_env({}) is None


def _slurm(task, lo, hi, count, step=None):
    env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(lo), "SLURM_ARRAY_TASK_MAX": str(hi),
           "SLURM_ARRAY_TASK_COUNT": str(count)}  # fmt: skip
    if step is not None:
        env["SLURM_ARRAY_TASK_STEP"] = str(step)
    return env


def test_slurm_arrays_map_to_every_part_once():
    # --array=1-8: ids 1..8 are parts 0..7, none lost.
    assert sorted(part_from_env(_slurm(t, 1, 8, 8)) for t in range(1, 9)) == [(k, 8) for k in range(8)]
    assert part_from_env(_slurm(0, 0, 3, 4, step=1)) == (0, 4)
    # --array=1-7:2 is 1, 3, 5, 7: parts 0..3 of 4.
    assert [part_from_env(_slurm(t, 1, 7, 4, step=2)) for t in (1, 3, 5, 7)] == [(k, 4) for k in range(4)]


@pytest.mark.parametrize(
    "env",
    [
        _slurm(4, 1, 5, 3),  # --array=1,4,5: COUNT 3 but MIN..MAX holds 5 ids
        _slurm(2, 1, 7, 4, step=2),  # an id off the step
        _slurm(9, 1, 8, 8),  # outside MIN..MAX
    ],
)
def test_non_contiguous_slurm_arrays_are_refused(env):
    with pytest.raises(PartError, match="not MIN, MIN\\+STEP"):
        part_from_env(env)


def test_slurm_without_its_variables_is_refused():
    with pytest.raises(PartError, match="SLURM_ARRAY_TASK_COUNT"):
        part_from_env({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "2"})


def test_resolve_part_refuses_every_copy_writing_one_folder():
    assert resolve_part("auto", _slurm(3, 1, 8, 8)) == (2, 8)
    assert resolve_part(None, {}) is None and resolve_part("all", _slurm(3, 1, 8, 8)) is None
    with pytest.raises(PartError, match="Slurm array .*--part auto"):
        resolve_part(None, _slurm(3, 1, 8, 8))
    with pytest.raises(PartError, match="torchrun"):
        resolve_part(None, {"RANK": "0", "WORLD_SIZE": "2"})
    assert resolve_part(None, {"RANK": "0", "WORLD_SIZE": "1"}) is None
    with pytest.raises(PartError, match="neither"):
        resolve_part("auto", {})
    with pytest.raises(PartError, match="single task.*--part K/N"):  # sbatch --array=17 to redo one part
        resolve_part("auto", _slurm(17, 17, 17, 1))


def test_weights_sha256(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"weights")
    want = hashlib.sha256(b"weights").hexdigest()
    assert weights_sha256(f"vgg16:{f}") == {"sha256": want} and weights_sha256(str(f)) == {"sha256": want}
    assert weights_sha256("uniform:5") == {} and weights_sha256(object()) == {}
