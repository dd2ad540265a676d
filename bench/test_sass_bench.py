"""The static SASS model (bench/sass_report.py) end to end: every SoundNet-8 / SoundNet-5 launch compiled
for sm_90a and modelled, invariants checked (exit status 1 on a failure). Smoke mode (``--benchmark-disable``,
as ``make test`` runs it): SoundNet-5, batch 64, bf16, no deterministic variant. Full mode (``make bench``):
every configuration (both archs, batch 64 and 256, bf16 and fp32, deterministic backward too). The
committed report under bench/results/ is written by ``python -m bench.sass_report`` itself, not by this test.
No GPU needed; nothing is timed (the figures are predictions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

ROOT = Path(__file__).resolve().parents[1]
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not PTXAS.exists(), reason="this Triton build ships no NVIDIA backend (ptxas)")
def test_sass_model_invariants(sizes, tmp_path) -> None:
    args = ["--out-dir", str(tmp_path)]
    if sizes.smoke:
        args += ["--archs", "soundnet5", "--batches", "64", "--dtypes", "bf16", "--no-deterministic"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "bench.sass_report", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=7200)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (js,) = tmp_path.glob("sass_report-triton*.json")
    data = json.loads(js.read_text())
    assert data["meta"]["source"] == "static prediction, not measured" and data["meta"]["arch"] == "sm_90a"
    for c in data["configs"]:
        assert c["invariants"]["status"] == "PASS"
        assert c["predicted_clips_per_s"]["H200"] > 0
        for r in c["launches"]:
            assert r["bound"] in ("issue", "int", "tensor", "L2", "DRAM", "latency", "dependency")
    assert "predicted (static), not measured" in js.with_suffix(".md").read_text()
