"""Shared benchmark plumbing: device, sizes, parity-then-time, and what the report needs.

Every benchmark first checks its output against the reference once and records the result beside its
timing (``extra_info``), then times with warm-up rounds; on a GPU each call ends with a synchronisation so
the wall time covers the kernels. ``--benchmark-disable`` is the smoke mode CI runs: one call of each at
small sizes, so the suites cannot rot; no test asserts a timing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from soundnet_fast.constants import SAMPLE_RATE

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")


@dataclass(frozen=True)
class Sizes:
    smoke: bool
    seconds: float  # clip length
    batch: int  # clips per call
    rounds: int
    warmup: int

    @property
    def samples(self) -> int:
        return int(self.seconds * SAMPLE_RATE)


@pytest.fixture(scope="session")
def sizes(request: pytest.FixtureRequest) -> Sizes:
    if request.config.getoption("benchmark_disable") or os.environ.get("BENCH_SMOKE") == "1":
        return Sizes(smoke=True, seconds=1.0, batch=1, rounds=1, warmup=0)
    if ON_GPU:  # the original recipe: batch 64 of 20 s clips (docs/design.md#distillation)
        return Sizes(smoke=False, seconds=20.0, batch=64, rounds=20, warmup=5)
    return Sizes(smoke=False, seconds=20.0, batch=2, rounds=5, warmup=1)


# Vector extensions worth naming in a report, in /proc/cpuinfo's spelling (x86 "flags", Arm "Features").
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")  # fmt: skip


@functools.cache
def cpu_info() -> dict[str, Any]:
    """The CPU's model name, logical core count and vector extensions (from /proc/cpuinfo where it exists)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpu_cores": os.cpu_count(),
        "cpu_vector_extensions": [f for f in VECTOR_FLAGS if f in flags],
    }


def peak_rss_growth(fn: Callable[[], Any]) -> tuple[float, str]:
    """Bytes the process's resident set grew to at its peak during ``fn()``, and how that was measured.

    torch's CPU tensors come from malloc, outside tracemalloc's view, so this reads the kernel's counters: free
    memory is first returned to the OS (glibc ``malloc_trim``), then the peak RSS is reset (Linux
    ``/proc/self/clear_refs`` 5) and ``VmHWM - VmRSS`` read after the call. Where that reset is refused, the
    growth of ``getrusage`` maxrss: 0 unless ``fn`` sets a new process-wide peak (a lower bound).
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
        fn()
        return 1024.0 * (_status_kib("VmHWM") - before), "VmHWM - VmRSS (clear_refs reset)"
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return 1024.0 * (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before), "getrusage maxrss delta"


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def write_random_shards(out: Any, clips: int, seconds: float, amplitude: int, clips_per_shard: int) -> None:
    """``clips`` random int16 clips of ``seconds`` (uniform in +-``amplitude``) into shards at ``out``, two teachers
    of the released head sizes (uniform posteriors, 4 frames per clip, one per 5 s), seeded: the benches' data."""
    import numpy as np

    from soundnet_fast.constants import HEAD_CLASSES
    from soundnet_fast.data.shards import ShardWriter

    samples = int(seconds * SAMPLE_RATE)
    teachers = {name: {"num_classes": n} for name, n in HEAD_CLASSES.items()}
    probs = {t: np.full((4, v["num_classes"]), 1.0 / v["num_classes"], np.float32) for t, v in teachers.items()}
    rng = np.random.default_rng(0)
    with ShardWriter(out, teachers, SAMPLE_RATE, samples, 4, 5.0, clips_per_shard=clips_per_shard) as w:
        for i in range(clips):
            w.add(rng.integers(-amplitude, amplitude, samples, dtype=np.int16), probs, {"video": f"v{i}"})


def sync() -> None:
    if ON_GPU:
        torch.cuda.synchronize()


def max_rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest error relative to the reference's largest magnitude (robust to near-zero entries)."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


@pytest.fixture
def timed(benchmark: Any, sizes: Sizes) -> Callable[..., Any]:
    """``timed(fn, group=..., variant=..., items=..., parity_err=..., tol=..., **info)`` times ``fn``.

    Every benchmark's ``extra_info`` also records the CPU (:func:`cpu_info`: model, cores, vector extensions).
    ``device`` names where a CPU benchmark ran on a GPU machine; ``rounds`` overrides the timed rounds (not in
    the smoke run).
    ``group`` names what is compared (e.g. ``conv1 fwd fp32``); ``variant`` is one of the compared
    implementations; the report divides every figure by the group's baseline: the variant timed with
    ``baseline=True``, else the one named ``eager``. ``items`` is clips (or videos) per call.
    """

    def run(
        fn: Callable[[], Any],
        *,
        group: str,
        variant: str,
        items: int,
        baseline: bool = False,
        parity_err: float | None = None,
        tol: float | None = None,
        device: str | None = None,
        rounds: int | None = None,
        **info: Any,
    ) -> Any:
        benchmark.group = group
        benchmark.extra_info.update(
            group=group,
            variant=variant,
            items=items,
            baseline=baseline or variant == "eager",
            device=device or str(DEVICE),  # a CPU benchmark on a GPU machine names the CPU
            smoke=sizes.smoke,
            gpu=torch.cuda.get_device_name() if ON_GPU else None,
            **cpu_info(),
            **info,
        )
        if parity_err is not None:
            benchmark.extra_info.update(parity_max_rel_err=parity_err, parity_ok=bool(tol is None or parity_err <= tol))

        def call() -> None:
            fn()
            sync()

        rounds = sizes.rounds if sizes.smoke or rounds is None else rounds  # more rounds for short calls
        return benchmark.pedantic(call, rounds=rounds, warmup_rounds=sizes.warmup, iterations=1)

    return run
