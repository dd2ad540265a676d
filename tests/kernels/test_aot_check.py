"""The Triton kernels lower for a real GPU (sm_90, H100), checked without one: the interpreter that runs
the other tests cannot see code that fails to compile, grids over CUDA's limits or shared memory over
the device's. Runs in a fresh process without TRITON_INTERPRET (kernels are interpreter objects here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

from soundnet_fast.constants import SAMPLE_RATE

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not PTXAS.exists(), reason="this Triton build ships no NVIDIA backend (ptxas)")
def test_conv1_conv2_and_kl_compile_for_sm90() -> None:
    code = (
        "from bench.aot_check import compile_launches, soundnet8_launches\n"
        f"res = compile_launches(soundnet8_launches(64, {20 * SAMPLE_RATE}, 'tf32', blocks=2), arch=90)\n"
        "print('AOT-OK', len(res), max(r[2] for r in res))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert "AOT-OK" in res.stdout, res.stderr[-4000:]


@pytest.mark.skipif(not PTXAS.exists(), reason="this Triton build ships no NVIDIA backend (ptxas)")
@pytest.mark.parametrize(("arch", "smem_kb"), [(80, 163), (89, 99)], ids=["sm80_a100", "sm89_ada"])
def test_conv1_conv2_fit_the_shared_memory_of_smaller_gpus(arch: int, smem_kb: int) -> None:
    """The same launches planned for a GPU with less shared memory per CTA (``_common.SMEM_DEFAULT`` stands in for
    the device's limit on the meta tensors): they compile for that architecture and fit its limit (the H100's conv2
    band of 4 takes 196 KB, so an A100 or an Ada GPU would fail to launch it)."""
    code = (
        "import soundnet_fast.kernels._common as common\n"
        f"common.SMEM_DEFAULT = {smem_kb * 1024}\n"
        "from bench.aot_check import compile_launches, soundnet8_launches\n"
        f"res = compile_launches(soundnet8_launches(64, {20 * SAMPLE_RATE}, 'tf32', blocks=2), arch={arch}, "
        f"smem_limit={smem_kb * 1024})\n"
        "print('AOT-OK', len(res), max(r[2] for r in res))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert "AOT-OK" in res.stdout, res.stderr[-4000:]


def test_the_recorder_covers_every_launching_module() -> None:
    """A kernels module launching through wrap_triton but missing from the recorder would run its kernels on the
    meta tensors (or be left out of the static model) without anyone noticing."""
    import importlib
    import pkgutil

    import soundnet_fast.kernels as pkg
    from bench.aot_check import LAUNCHER_MODULES

    launching = set()
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        if hasattr(mod, "wrap_triton"):
            launching.add(mod.__name__)
    assert launching == {m.__name__ for m in LAUNCHER_MODULES}
