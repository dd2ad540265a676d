"""What every section shares: the checkout import chain, sizes, nvidia-smi queries, timing and error measures.

Import chain: the GPU machine has the checkout but not the project installed (and no PyAV, DALI, librosa or
scikit-learn). :func:`load_checkout` puts the repository root first on ``sys.path`` and installs a meta-path
finder that maps the package ``soundnet_fast.kernels`` to ``ROOT/kernels`` (what setuptools' ``package-dir`` in
pyproject.toml does for an install), so ``soundnet_fast.model``, ``soundnet_fast.train.step`` and the kernels
import from this checkout. Nothing on that chain imports av / nvidia.dali / librosa / sklearn (a test checks it
with those modules blocked); numpy is imported by ``soundnet_fast/__init__.py`` (weights), and when numpy is
missing the package is registered without running its ``__init__`` (model, losses and train.step need no numpy).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _load_constants() -> types.ModuleType:
    """``soundnet_fast/constants.py`` of this checkout, loaded by path: the parent process imports no torch, and
    the package's ``__init__`` would (the module itself imports only the standard library)."""
    spec = importlib.util.spec_from_file_location("_checkout_constants", ROOT / "soundnet_fast" / "constants.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CONSTANTS = _load_constants()
SAMPLE_RATE: int = _CONSTANTS.SAMPLE_RATE  # Hz, docs/design.md#input
HEAD_CLASSES: dict[str, int] = dict(_CONSTANTS.HEAD_CLASSES)  # objects, scenes: docs/design.md#teachers-and-targets
FORBIDDEN = ("av", "nvidia.dali", "librosa", "sklearn")  # never on the import chain of the checks


class _KernelsFinder(importlib.abc.MetaPathFinder):
    """``soundnet_fast.kernels`` -> ROOT/kernels (its submodules are then found through the package's __path__)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "soundnet_fast.kernels":
            return None
        return importlib.util.spec_from_file_location(
            fullname, ROOT / "kernels" / "__init__.py", submodule_search_locations=[str(ROOT / "kernels")]
        )


def load_checkout() -> str:
    """Make ``soundnet_fast`` and ``soundnet_fast.kernels`` import from this checkout; returns how (for the report)."""
    root = str(ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
    if not any(isinstance(f, _KernelsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _KernelsFinder())
    pkg = sys.modules.get("soundnet_fast")
    if pkg is not None:
        where = Path(getattr(pkg, "__file__", None) or list(getattr(pkg, "__path__", [""]))[0]).resolve()
        if ROOT not in where.parents:
            raise RuntimeError(f"soundnet_fast was already imported from {where}, not from this checkout {ROOT}")
        return "already imported from the checkout"
    try:
        importlib.import_module("soundnet_fast")
        how = "package from the checkout"
    except ModuleNotFoundError as e:
        if e.name != "numpy":
            raise
        for name in [m for m in sys.modules if m == "soundnet_fast" or m.startswith("soundnet_fast.")]:
            del sys.modules[name]
        bare = types.ModuleType("soundnet_fast")
        bare.__path__ = [str(ROOT / "soundnet_fast")]
        bare.__spec__ = importlib.util.spec_from_loader("soundnet_fast", loader=None, is_package=True)
        bare.__spec__.submodule_search_locations = bare.__path__
        sys.modules["soundnet_fast"] = bare
        how = "package from the checkout without its __init__ (numpy missing)"
    kernels = importlib.import_module("soundnet_fast.kernels")
    if Path(kernels.__file__).resolve() != ROOT / "kernels" / "__init__.py":
        raise RuntimeError(f"soundnet_fast.kernels resolved to {kernels.__file__}, not {ROOT / 'kernels'}")
    return how


def git_commit() -> str:
    """HEAD of the checkout (with a note when the tree has uncommitted changes); reads .git when git is missing."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if out.returncode == 0:
            return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    head = ROOT / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (ROOT / ".git" / ref[5:]).read_text().strip()
        return ref
    except OSError:
        return "unknown"


@dataclass(frozen=True)
class Sizes:
    """The measured configuration: full size is the recipe's batch 64 of 20 s clips; smoke is a toy."""

    smoke: bool
    batch: int
    seconds: float

    @property
    def samples(self) -> int:
        return int(round(self.seconds * SAMPLE_RATE))

    @property
    def block_samples(self) -> int:
        """Input length of the per-block checks: the clip, or on the smoke run the fewest samples that still
        give every SoundNet-8 block (to conv7) an output (SoundNet8.min_length('conv7') = 4,574)."""
        return 4_574 if self.smoke else self.samples

    def describe(self) -> str:
        return f"batch {self.batch}, {self.seconds:g} s clips ({self.samples:,} samples)" + (
            " [smoke: CPU, Triton interpreter, toy sizes]" if self.smoke else ""
        )


def smoke_sizes() -> Sizes:
    return Sizes(smoke=True, batch=2, seconds=0.4)


def dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------------------- nvidia-smi
def _smi_index() -> str:
    vis = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return vis if vis.isdigit() else "0"


def nvidia_smi(args: list[str], timeout: float = 15.0) -> str | None:
    """stdout of ``nvidia-smi ARGS``, or None when it is missing or fails."""
    try:
        res = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def gpu_query(fields: list[str]) -> dict[str, str]:
    """``nvidia-smi --query-gpu`` of the device in use; fields it does not know are dropped one by one."""
    fields = list(fields)
    while fields:
        out = nvidia_smi([f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", "-i", _smi_index()])
        if out is not None:
            vals = [v.strip() for v in out.splitlines()[0].split(",")]
            return dict(zip(fields, vals, strict=False))
        if len(fields) == 1:
            return {}
        # one unknown field fails the whole query: find the fields that work on their own
        good = [f for f in fields if nvidia_smi([f"--query-gpu={f}", "--format=csv,noheader,nounits"]) is not None]
        if good == fields:
            return {}
        fields = good
    return {}


def sm_clock_mhz() -> float | None:
    """Current SM clock (nvidia-smi, else torch.cuda.clock_rate, which needs pynvml); None when unknown."""
    q = gpu_query(["clocks.sm"])
    with contextlib.suppress(ValueError, KeyError):
        return float(q["clocks.sm"])
    try:
        import torch

        return float(torch.cuda.clock_rate())
    except Exception:  # pynvml missing, or no CUDA
        return None


class ClockReader:
    """The SM clock, re-read at most every ``interval`` seconds (an nvidia-smi call costs 50-500 ms; the clock of a
    busy GPU changes slowly), so it can be read after every short measurement."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval, self._t, self._mhz = interval, -1e9, None

    def __call__(self) -> float | None:
        if time.monotonic() - self._t >= self.interval:
            self._mhz, self._t = sm_clock_mhz(), time.monotonic()
        return self._mhz


def clock_snapshot() -> dict[str, Any]:
    """SM / memory clock, power draw and temperature now (for before/after a measurement)."""
    q = gpu_query(["clocks.sm", "clocks.mem", "power.draw", "temperature.gpu"])
    if q:
        return q
    mhz = sm_clock_mhz()
    return {"clocks.sm": mhz} if mhz is not None else {"clocks.sm": "unknown"}


# ------------------------------------------------------------------------------------------- timing
def sync(torch: Any, device: Any) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_abab(torch: Any, fns: dict[str, Callable[[], Any]], device: Any, reps: int, warmup: int = 2) -> dict:
    """Per-call milliseconds of each function, measured in blocks in A/B/.../B/A order (each function twice,
    ``reps`` calls per block) so a drift (clocks, temperature) shows as a difference between a function's two
    blocks. CUDA events around each call with no host synchronisation in between; perf_counter on a CPU.
    Returns {name: {"median", "p10", "p90", "min", "max", "n", "block_medians"}}."""
    names = list(fns)
    for n in names:
        for _ in range(warmup):
            fns[n]()
    sync(torch, device)
    times: dict[str, list[float]] = {n: [] for n in names}
    blocks: dict[str, list[float]] = {n: [] for n in names}
    for n in names + names[::-1]:
        fn = fns[n]
        if str(device).startswith("cuda"):
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
            for a, b in ev:
                a.record()
                fn()
                b.record()
            torch.cuda.synchronize()
            got = [a.elapsed_time(b) for a, b in ev]
        else:
            got = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                got.append((time.perf_counter() - t0) * 1e3)
        times[n] += got
        blocks[n].append(statistics.median(got))
    return {n: summarize(times[n]) | {"block_medians": blocks[n]} for n in names}


def summarize(ms: list[float]) -> dict[str, Any]:
    s = sorted(ms)
    q = lambda f: s[min(len(s) - 1, max(0, round(f * (len(s) - 1))))]
    return {"median": statistics.median(s), "p10": q(0.1), "p90": q(0.9), "min": s[0], "max": s[-1], "n": len(s)}


# ------------------------------------------------------------------------------------- error measures
def nrel(a: Any, ref: Any, floor: float = 0.0) -> float:
    """Relative Frobenius error of ``a`` against ``ref`` (float64), the denominator at least ``floor``."""
    den = max(ref.double().norm().item(), floor)
    return (a.double() - ref.double()).norm().item() / den if den > 0 else 0.0


def tf32_round(torch: Any, t: Any) -> Any:
    """fp32 -> the nearest TF32 value (10 explicit mantissa bits, round to nearest even), kept as fp32: the
    operands a TF32 tensor-core product sees."""
    u = t.float().contiguous().view(torch.int32)
    lsb = (u >> 13) & 1
    r = (u + 0x0FFF + lsb) & ~0x1FFF
    return r.view(torch.float32)
