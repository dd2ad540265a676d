"""Shared benchmark plumbing: device, sizes, parity-then-time, and what the report needs.

Every benchmark first checks its output against the reference once and records the result beside its
timing (``extra_info``), then times with warm-up rounds; on a GPU each call ends with a synchronisation so
the wall time covers the kernels. ``--benchmark-disable`` is the smoke mode CI runs: one call of each at
small sizes, so the suites cannot rot; no test asserts a timing.
"""

from __future__ import annotations

import os
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
        **info: Any,
    ) -> Any:
        benchmark.group = group
        benchmark.extra_info.update(
            group=group,
            variant=variant,
            items=items,
            baseline=baseline or variant == "eager",
            device=str(DEVICE),
            smoke=sizes.smoke,
            gpu=torch.cuda.get_device_name() if ON_GPU else None,
            **info,
        )
        if parity_err is not None:
            benchmark.extra_info.update(parity_max_rel_err=parity_err, parity_ok=bool(tol is None or parity_err <= tol))

        def call() -> None:
            fn()
            sync()

        return benchmark.pedantic(call, rounds=sizes.rounds, warmup_rounds=sizes.warmup, iterations=1)

    return run
