"""The loader's gather of 20 s clips from mapped int16 shards (docs/design.md#data-at-scale): the numpy path the loader
had (a fresh batch tensor per batch, one row at a time), and the gather module's numpy rows and numba kernels into
reused batch arrays on 1 and 2 threads; same run, same clips, identical batches (checked before timing).

Two groups: int16 batches (the GPU path: rows go to pinned memory as int16 and are converted on the device; there
torch's caching host allocator already reused the pinned batch, so "numpy 1 thread" is that path, and the "before"
row, a fresh pageable batch, is the CPU's) and float32 batches (the CPU path: converted while gathered), plus a whole
ShardLoader epoch on the CPU. Figures are
clips/s with the shards in the page cache; ``extra_info`` adds clips/s per core for the 1-thread variants and the
cores one H200 would need at 60 K clips/s (its step rate, docs/design.md#performance-ceiling; PCIe carries ~72 K
clips/s of int16 20 s clips).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.conftest import Sizes, write_random_shards
from soundnet_fast.constants import HEAD_CLASSES, INPUT_SCALE
from soundnet_fast.data.gather import kernels
from soundnet_fast.data.loader import ShardLoader

TARGET = 60_000  # clips/s one H200 trains at (docs/design.md#performance-ceiling)


@pytest.fixture(scope="module")
def gather_shards(tmp_path_factory: pytest.TempPathFactory, sizes: Sizes) -> tuple[Path, int, int]:
    """(folder, clips, batch): random int16 clips in shards of 64 with two teachers of the released sizes."""
    out = tmp_path_factory.mktemp("gather_shards")
    seconds, clips, batch = (1.0, 16, 4) if sizes.smoke else (20.0, 256, 64)
    write_random_shards(out, clips, seconds, amplitude=20000, clips_per_shard=64)
    return out, clips, batch


def _before(loader: ShardLoader, batches: list[np.ndarray], scaled: bool) -> list[np.ndarray]:
    """The loader's numpy path before the gather module: a fresh batch per batch, rows copied one at a time."""
    factor = np.float32(loader.scale / 32768.0)
    out = []
    for clips in batches:
        audio = torch.empty((len(clips), 1, loader.clip_samples), dtype=torch.float32 if scaled else torch.int16)
        a = audio.numpy()[:, 0]
        shard, row = loader.locate(clips)
        for p, (s, r) in enumerate(zip(shard.tolist(), row.tolist(), strict=True)):
            src = loader._mapped(s)["audio"][r]  # noqa: SLF001 - the same mapped rows the new paths read
            if scaled:
                np.multiply(src, factor, out=a[p], dtype=np.float32)
            else:
                a[p] = src
        out.append(a)
    return out


def _after(loader: ShardLoader, batches: list[np.ndarray], scaled: bool, keep: list[np.ndarray]) -> list[np.ndarray]:
    """The gather module's path into reused batch arrays (``keep``: one per batch, made on the first call)."""
    dtype = np.float32 if scaled else np.int16
    while len(keep) < len(batches):
        keep.append(np.empty((len(batches[0]), loader.clip_samples), dtype))
    targets = {t: np.empty((len(batches[0]), HEAD_CLASSES[t], loader.steps), np.float32) for t in loader.teachers}
    for clips, a in zip(batches, keep, strict=False):
        loader.read_into(clips, a, targets, scaled=scaled)
    return keep[: len(batches)]


BEFORE = "numpy rows, fresh batch (before)"
VARIANTS = [BEFORE, "numpy 1 thread", "numpy 2 threads", "numba 1 thread", "numba 2 threads"]


@pytest.mark.parametrize("dtype", ["int16", "float32"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_gather(timed, benchmark, sizes: Sizes, gather_shards, dtype: str, variant: str) -> None:
    if variant.startswith("numba") and kernels() is None:
        pytest.skip("numba is not installed")
    folder, clips, batch = gather_shards
    threads = 2 if variant.endswith("2 threads") else 1
    gather = "numba" if variant.startswith("numba") else "numpy"
    loader = ShardLoader(folder, batch, backend="numpy", gather=gather, num_threads=threads)
    rng = np.random.default_rng(1)
    batches = [rng.choice(clips, batch, replace=False) for _ in range(4)]  # the same picks for every variant
    scaled = dtype == "float32"
    keep: list[np.ndarray] = []
    ref = _before(loader, batches, scaled)
    got = ref if variant.endswith("(before)") else _after(loader, batches, scaled, keep)
    err = max(float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) for a, b in zip(got, ref, strict=True))

    def call() -> None:
        if variant.endswith("(before)"):
            _before(loader, batches, scaled)
        else:
            _after(loader, batches, scaled, keep)

    items = len(batches) * batch
    timed(call, group=f"gather {dtype} batches of 20 s clips", variant=variant, baseline=variant.endswith("(before)"),
          items=items, parity_err=err, tol=0.0, threads=threads, rounds=15)  # fmt: skip
    stats = getattr(benchmark, "stats", None)
    if stats is not None and not sizes.smoke:
        rate = items / stats.stats.median
        benchmark.extra_info.update(clips_per_s_per_core=rate / threads, cores_for_60k=TARGET * threads / rate)
        print(
            f"\n{dtype} {variant}: {rate:,.0f} clips/s on {threads} thread(s), {rate / threads:,.0f} per core; "
            f"{TARGET * threads / rate:.1f} cores for {TARGET:,} clips/s"
        )


@pytest.mark.parametrize("gather", ["numpy", "numba"])
def test_cpu_loader_epoch(timed, sizes: Sizes, gather_shards, gather: str) -> None:
    """A whole ShardLoader epoch on the CPU (float32 batches): the CPU float path end to end, 2 threads."""
    if gather == "numba" and kernels() is None:
        pytest.skip("numba is not installed")
    folder, clips, batch = gather_shards
    loader = ShardLoader(folder, batch, backend="numpy", gather=gather, num_threads=2, seed=0, prefetch=0)
    ref = [a.clone() for a, _ in ShardLoader(folder, batch, backend="numpy", gather="numpy", seed=0)]
    got = [a.clone() for a, _ in loader]
    err = max(float((a.double() - b.double()).abs().max()) for a, b in zip(got, ref, strict=True))

    def epoch() -> None:
        for audio, _ in loader:
            assert audio.dtype == torch.float32

    group = "CPU loader epoch of 20 s clips (float32, scale x256)"
    variant = "numba gather, 2 threads" if gather == "numba" else "numpy gather"
    timed(epoch, group=group, variant=variant, baseline=gather == "numpy", items=len(loader) * batch,
          parity_err=err, tol=0.0, scale=INPUT_SCALE)  # fmt: skip
