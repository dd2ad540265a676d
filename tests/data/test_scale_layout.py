"""The scale benchmark's synthetic layout (bench/scale_layout.py), small: exactly what ShardWriter writes; any part
count gives the same dataset; a writer resumes it from the clip keys without reading the index."""

from __future__ import annotations

import json
import os

import numpy as np

from bench.scale_layout import TEACHERS, build, clip_audio, clip_probs
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.data import shards as shards_mod
from soundnet_fast.data.dataset import Dataset
from soundnet_fast.data.keys import KEYS
from soundnet_fast.data.loader import ShardLoader
from soundnet_fast.data.parts import part_name
from soundnet_fast.data.shards import INDEX, MANIFEST, ShardWriter, read_index


def _writer_copy(src: str, dst: str) -> None:
    """The clips of part folder ``src`` re-written through ShardWriter, in its index order."""
    m = json.loads(open(os.path.join(src, MANIFEST)).read())
    teachers = {t: {"spec": f"synthetic:{t}", "num_classes": c, "class_names": None} for t, c in TEACHERS.items()}
    extra = {k: m[k] for k in ("mono", "frame_decoder", "complete", "part")}
    per_shard = m["shards"][0]["num_clips"]
    with ShardWriter(dst, teachers, SAMPLE_RATE, m["clip_samples"], m["steps"], 5.0, clips_per_shard=per_shard,
                     extra=extra) as w:  # fmt: skip
        for r in read_index(src):
            i = np.array([int(np.load(os.path.join(src, f"{r['shard']}.audio.npy"))[r["row"], 0])])
            probs = {t: clip_probs(i, m["steps"], c)[0] for t, c in TEACHERS.items()}
            w.add(clip_audio(i, m["clip_samples"])[0], probs, {k: r[k] for k in ("video", "start", "frame_times")})


def test_small_layout_is_what_the_writer_writes(tmp_path):
    build(tmp_path / "built", 60, 6, 1, clips_per_video=2)
    src = str(tmp_path / "built" / part_name(0, 1))
    _writer_copy(src, str(tmp_path / "written"))
    dst = str(tmp_path / "written")
    a, b = (json.loads(open(os.path.join(d, MANIFEST)).read()) for d in (src, dst))
    assert a == b
    for name in (INDEX, KEYS):
        assert open(os.path.join(src, name), "rb").read() == open(os.path.join(dst, name), "rb").read(), name
    for s in a["shards"]:
        for key in ("audio", *TEACHERS):
            f = f"{s['name']}.{key}.npy"
            np.testing.assert_array_equal(np.load(os.path.join(src, f)), np.load(os.path.join(dst, f)))


def test_any_part_count_is_the_same_dataset_and_resumes_without_the_index(tmp_path, monkeypatch):
    build(tmp_path / "p1", 2000, 40, 1, clips_per_video=3)
    build(tmp_path / "p8", 2000, 40, 8, clips_per_video=3)
    one, eight = Dataset(tmp_path / "p1"), Dataset(tmp_path / "p8")
    assert one.num_clips == eight.num_clips == 2000 and len(eight.parts) == 8
    assert one.fingerprint == eight.fingerprint and one.layout_fingerprint != eight.layout_fingerprint
    first = [next(iter(ShardLoader(p, 16, seed=1, backend="numpy")))[0] for p in (tmp_path / "p1", tmp_path / "p8")]
    assert first[0][:, 0, 0].mul(128).round().tolist() == first[1][:, 0, 0].mul(128).round().tolist()
    # Resuming a part: the index is not read (the manifest's tail and clipkeys.bin suffice).
    part = tmp_path / "p8" / part_name(3, 8)
    m = json.loads((part / MANIFEST).read_text())
    with open(part / INDEX, "ab") as f:
        f.write(b'{"clip": 99999, "video": "ghost", "shard": "shard-999999", "row": 0}\n{"torn')
    monkeypatch.setattr(shards_mod, "read_index", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    w = ShardWriter(part, {t: {"spec": f"synthetic:{t}", "num_classes": c} for t, c in TEACHERS.items()},
                    SAMPLE_RATE, m["clip_samples"], m["steps"], 5.0)  # fmt: skip
    assert w.num_clips == m["num_clips"] and w.num_videos == m["num_videos"]
    assert os.path.getsize(part / INDEX) == m["tail"]["index_bytes"]  # the ghost and the torn line are gone
    videos = [f"v{v:07d}.mp4" for v in range(700)]
    done = w.has_videos(videos)
    held = {r["video"] for r in _index(part)}
    assert [v for v, d in zip(videos, done.tolist(), strict=True) if d] == sorted(held)


def _index(folder):
    with open(os.path.join(folder, INDEX), encoding="utf-8") as f:
        return [json.loads(line) for line in f]
