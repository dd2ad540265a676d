"""`python -m bench.gpu_check --smoke` runs the whole GPU check script on the CPU (Triton interpreter, toy
sizes) so the script that proves the GPU path cannot rot between GPU sessions."""

from __future__ import annotations

import os
import subprocess
import sys


def test_gpu_check_smoke_writes_a_passing_report(tmp_path) -> None:
    out = tmp_path / "gpu_check.md"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--smoke", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=600, cwd=os.getcwd())  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = out.read_text()
    assert "ALL PASS" in res.stdout and "| fp32 | conv1 |" in report and "FAIL" not in report
