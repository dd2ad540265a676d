"""`python -m bench.gpu_check --smoke` runs the whole GPU check on the CPU (Triton interpreter, toy sizes), so the
script that is run once on a lent GPU cannot rot between GPU sessions: every section writes its JSON lines and the
report has no failure; a kill of the whole run keeps the finished sections' records intact; a section that overruns
its timeout is recorded as timed out and the sections after it still run; a prediction file is matched launch by
launch. Each run is a subprocess (the check starts its own processes anyway)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.gpu_check import plan
from bench.gpu_check.common import SAMPLE_RATE
from bench.gpu_check.records import read_records

ROOT = Path(__file__).resolve().parents[2]


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench.gpu_check", "--smoke", "--out", str(out), *extra]


def _run(out: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    return subprocess.run(_cmd(out, *extra), capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def _lines(path: Path) -> list[dict]:
    """Every line of a JSON-lines file, parsed (fails on a cut-short line)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _outcomes(out: Path) -> dict[str, str]:
    return {r["name"]: r["status"] for r in _lines(out / "run.jsonl") if r["type"] == "section"}


def test_smoke_writes_every_section_and_a_passing_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    t0 = time.time()
    res = _run(out)
    elapsed = time.time() - t0
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:]
    for sec in plan.SECTIONS:  # every section wrote records, all of them whole JSON lines
        recs = _lines(out / f"{plan.index(sec.name):02d}-{sec.name}.jsonl")
        assert recs and all(r["section"] == sec.name for r in recs), sec.name
    outcomes = _outcomes(out)
    assert set(outcomes) == {s.name for s in plan.SECTIONS}
    assert all(v in ("done", "skipped: no CUDA") for v in outcomes.values()), outcomes
    assert {k for k, v in outcomes.items() if v == "skipped: no CUDA"} == {s.name for s in plan.SECTIONS if s.cuda_only}
    report = (out / "report.md").read_text()
    assert "**Result: ALL PASS**" in report and "FAIL" not in report and "ERROR" not in report
    recs, bad = read_records(out)
    assert bad == 0
    # the smoke run exercised the real paths: the process pool, parity rows, the product's Stepper, predictions
    rows = [r for r in recs if r["type"] == "row"]
    assert any(r["table"] == "specialisations" and r["status"] == "SKIP" for r in rows)
    assert sum(1 for r in rows if r["section"] == "parity" and r["status"] == "PASS") >= 4
    assert any(r["section"] == "throughput" and r["table"].startswith("train step") for r in rows)
    assert any(r["section"] == "kernels" and "interpreter ms" in r["row"] for r in rows)
    assert elapsed < 280, f"the smoke run took {elapsed:.0f} s"


def test_a_killed_run_keeps_the_finished_sections(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    p = subprocess.Popen(_cmd(out, "--sections", "environment,precompile,parity"), cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and "environment" not in _safe_outcomes(out):
            time.sleep(0.2)
        assert "environment" in _safe_outcomes(out), "the first section did not finish in 120 s"
        time.sleep(2.0)  # the next section is running now
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    env_recs = _lines(out / "00-environment.jsonl")  # whole and parseable
    assert any(r["type"] == "kv" and r["key"] == "cuda_available" for r in env_recs)
    assert any(r["type"] == "row" and r["status"] == "PASS" for r in env_recs)  # its import-chain check
    assert _outcomes(out)["environment"] == "done"
    assert "Run in progress or interrupted" in (out / "report.md").read_text()  # rendered after the first section
    # the running section dies with the parent (PR_SET_PDEATHSIG): nothing keeps writing into the folder
    deadline = time.time() + 15
    while time.time() < deadline and _section_pids(out):
        time.sleep(0.5)
    left = _section_pids(out)
    for pid in left:  # clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert not left, "a section process outlived the killed parent"
    recs, _ = read_records(out)  # the interrupted section's lines parse too (at most the last one cut short)
    assert {r["section"] for r in recs} >= {"run", "environment"}


def _safe_outcomes(out: Path) -> dict[str, str]:
    try:
        return _outcomes(out)
    except (OSError, ValueError):
        return {}


def _section_pids(out: Path) -> list[int]:
    """Processes of this test's run: their command line names its (unique) output folder."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(out) in cmd and "bench.gpu_check" in cmd:
                pids.append(int(d.name))
    return pids


def test_an_overrunning_section_times_out_and_the_next_still_runs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = _run(out, "--sections", "environment,parity,eval_parity", "--section-timeout", "parity=1")
    assert res.returncode == 1, res.stdout[-3000:]
    outcomes = _outcomes(out)
    assert outcomes["parity"] == "timed out after 1 s"
    assert outcomes["environment"] == outcomes["eval_parity"] == "done"
    assert any(r["status"] == "PASS" for r in _lines(out / f"{plan.index('eval_parity'):02d}-eval_parity.jsonl")
               if r["type"] == "row")  # fmt: skip
    report = (out / "report.md").read_text()
    assert "parity: timed out after 1 s" in report and "FAILURE" in report


def test_kernels_section_puts_the_prediction_beside_each_launch(tmp_path: Path) -> None:
    """A fixture prediction file made from the launches the section will record (interpreter constexprs here):
    every launch finds its prediction, a launch whose constexprs differ does not."""
    code = (
        "import json, sys\n"
        "from bench.gpu_check.common import load_checkout\n"
        "load_checkout()\n"
        "from bench.gpu_check.launches import bf16_training_launches\n"
        f"print(json.dumps(bf16_training_launches(64, {20 * SAMPLE_RATE})))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    launches = json.loads(got.stdout)
    preds = []
    for la in launches:
        c = dict(la["constexprs"])
        if la["layer"] == "conv3" and la["kernel"] == "_rows_dx_kernel":
            c["BLOCK_M"] = 7  # not what is launched: no match
        preds.append({"layer": la["layer"], "phase": la["phase"], "kernel": la["kernel"], "constexprs": c,
                      "warp_instructions": 1e6, "predicted_us": {"H100": 12.5, "H200": 10.0}})  # fmt: skip
    fixture = tmp_path / "sass_report-triton3.6.0-2026-01-01.json"
    config = {"arch": "soundnet8", "batch": 64, "seconds": 20.0, "dtype": "bf16", "launches": preds,
              "predicted_clips_per_s": {"H100": 5000.0, "H200": 6000.0}}  # fmt: skip
    fixture.write_text(json.dumps({"meta": {}, "configs": [config]}))
    out = tmp_path / "run"
    res = _run(out, "--sections", "kernels", "--predictions", str(fixture))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    rows = [r["row"] for r in _lines(out / f"{plan.index('kernels'):02d}-kernels.jsonl") if r["type"] == "row"]
    assert len(rows) == len(launches)
    unmatched = [(r["layer"], r["kernel"]) for r in rows if r["pred us (H200)"] != 10.0]
    assert unmatched == [("conv3", "_rows_dx_kernel")]
    assert fixture.name in (out / "report.md").read_text()


def test_opcheck_cases_match_the_ops() -> None:
    """Section 6c runs only on CUDA: here its cases run on CPU tensors (the PyTorch reference, a process without
    TRITON_INTERPRET), so a change of the ops' signatures cannot leave the GPU check calling them wrongly."""
    code = (
        "import torch\n"
        "from bench.gpu_check.sec_extra import _opcheck_cases\n"
        "cases = _opcheck_cases(torch, device='cpu')\n"
        "for name, op, args in cases:\n"
        "    torch.library.opcheck(op, args)\n"
        "print('CASES', len(cases))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert "CASES 20" in res.stdout, res.stderr[-3000:]
