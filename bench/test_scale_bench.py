"""Data at the paper's scale (docs/design.md#data-at-scale): a synthetic dataset of 2,000,000 clips in 8,000 shards in
the real layout (bench/scale_layout.py: 16-sample clips and 2 + 3 classes keep it at ~0.6 GB), then

- the loader's start-up (``ShardLoader(...)``: manifests, every shard header, clip keys, the canonical order) and its
  first batch (numba's kernels from their cache, the first shards mapped), with the resident-set growth;
- ``prepare``'s resume start-up on the 2 M-line index: opening the folder with ShardWriter and asking which of the
  1 M videos are done, against what the writer did before clip keys (read the whole index into records and a set
  of video ids) as the baseline.

Goals: loader start-up <= 5 s and <= 500 MB, resume start-up <= 30 s, on 2 cores. The smoke run (--benchmark-disable)
builds 20,000 clips in 80 shards instead.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench.conftest import Sizes, _status_kib, peak_rss_growth
from bench.scale_layout import TEACHERS, build, folder_bytes
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.data.loader import ShardLoader
from soundnet_fast.data.parts import part_name
from soundnet_fast.data.shards import ShardWriter, read_index, read_manifest

CLIPS, SHARDS, PER_VIDEO = 2_000_000, 8_000, 2


@pytest.fixture(scope="module")
def scale_data(tmp_path_factory: pytest.TempPathFactory, sizes: Sizes) -> dict:
    clips, shards = (20_000, 80) if sizes.smoke else (CLIPS, SHARDS)
    root = tmp_path_factory.mktemp("scale")
    t0 = time.perf_counter()
    build(root, clips, shards, 1, clips_per_video=PER_VIDEO)
    seconds = time.perf_counter() - t0
    size = folder_bytes(root)
    print(f"\nbuilt {clips:,} clips in {shards:,} shards: {size / 1e9:.2f} GB in {seconds:.1f} s")
    return {"root": root, "clips": clips, "shards": shards, "build_s": seconds, "gb": size / 1e9}


def _info(d: dict) -> dict:
    return {"clips": d["clips"], "shards": d["shards"], "build_s": round(d["build_s"], 1), "dataset_gb": d["gb"]}


def test_loader_startup(timed, scale_data) -> None:
    root = scale_data["root"]
    growth, how = peak_rss_growth(lambda: ShardLoader(root, 64, backend="numpy"))
    loader = ShardLoader(root, 64, backend="numpy")
    assert loader.num_clips == scale_data["clips"] and len(loader.shard_names) == scale_data["shards"]
    rss = _status_kib("VmRSS") / 1024
    print(f"\nloader start-up at {loader.num_clips:,} clips: peak RSS growth {growth / 1e6:.0f} MB ({how}); "
          f"process RSS {rss:.0f} MB with torch, numba and the loader")  # fmt: skip
    del loader
    timed(lambda: ShardLoader(root, 64, backend="numpy"), group="data at scale: 2 M clips, 8,000 shards",
          variant="loader start-up", items=1, unit="start-ups/s", rounds=3, peak_rss_mb=growth / 1e6,
          process_rss_mb=rss, rss_how=how, **_info(scale_data))  # fmt: skip


def test_loader_first_batch(timed, scale_data) -> None:
    root = scale_data["root"]

    def first() -> None:
        next(iter(ShardLoader(root, 64, backend="numpy")))

    timed(first, group="data at scale: 2 M clips, 8,000 shards", variant="loader start-up + first batch of 64",
          items=1, unit="start-ups/s", rounds=3, **_info(scale_data))  # fmt: skip


def _teachers() -> dict:
    return {t: {"spec": f"synthetic:{t}", "num_classes": c, "class_names": None} for t, c in TEACHERS.items()}


def test_prepare_resume_startup(timed, scale_data) -> None:
    folder = os.path.join(scale_data["root"], part_name(0, 1))
    m = read_manifest(folder)
    videos = [f"v{v:07d}.mp4" for v in range(-(-scale_data["clips"] // PER_VIDEO))]

    def resume() -> None:
        w = ShardWriter(folder, _teachers(), SAMPLE_RATE, m["clip_samples"], m["steps"], 5.0)
        assert w.num_clips == scale_data["clips"] and bool(w.has_videos(videos).all())

    timed(resume, group="prepare resume start-up on a 2 M-line index", variant="clip keys (now)",
          items=1, unit="start-ups/s", rounds=3, **_info(scale_data))  # fmt: skip


def test_prepare_resume_startup_before(timed, sizes: Sizes, scale_data) -> None:
    """What resuming cost before clip keys: every index line parsed into a record, a set of the video ids (the old
    writer also rewrote the whole index, not timed here: this is a lower bound)."""
    folder = Path(scale_data["root"]) / part_name(0, 1)

    def resume() -> None:
        records = read_index(folder)
        videos = {str(r["video"]) for r in records}
        assert len(records) == scale_data["clips"] and len(videos) == -(-scale_data["clips"] // PER_VIDEO)

    timed(resume, group="prepare resume start-up on a 2 M-line index", variant="index records (before)",
          baseline=True, items=1, unit="start-ups/s", rounds=1, **_info(scale_data))  # fmt: skip
