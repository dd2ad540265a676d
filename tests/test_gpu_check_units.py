"""Parts of bench.gpu_check that need no kernels: matching sass_report predictions (fixture files), the JSON-lines
records and report, and the import chain the lent GPU machine relies on (the checkout, not an install, and nothing
that pulls PyAV / DALI / librosa / scikit-learn)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.gpu_check import predictions as P
from bench.gpu_check.records import Writer, failures, read_records, render

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = {
    "layer": "conv2",
    "phase": "backward",
    "kernel": "_dx_kernel",
    "constexprs": {
        "K": 32,
        "KMAX": 16,
        "BLOCK_CI": 16,
        "BLOCK_Q": 128,
        "BLOCK_R": 64,
        "INTERP": False,
        "PRECISION": "ieee",
    },
}


def _pred(**over):
    p = {"layer": "conv2", "phase": "backward", "kernel": "_dx_kernel", "constexprs": {"K": 32, "BLOCK_Q": 128},
         "warp_instructions": 2.5e6, "predicted_us": {"H100": 80.0, "H200": 60.0}}  # fmt: skip
    return p | over


def _config(launches, **over):
    c = {"arch": "soundnet8", "batch": 64, "seconds": 20.0, "dtype": "bf16", "launches": launches,
         "predicted_clips_per_s": {"H100": 4000.0, "H200": 5500.0}}  # fmt: skip
    return c | over


def _write(folder: Path, name: str, configs) -> Path:
    path = folder / name
    path.write_text(json.dumps({"meta": {"triton": name}, "configs": configs}))
    return path


def test_newest_file_of_the_running_triton_minor_wins(tmp_path: Path) -> None:
    _write(tmp_path, "sass_report-triton3.6.0-2026-10-01.json", [])
    newer36 = _write(tmp_path, "sass_report-triton3.6.0-2026-11-01.json", [])
    newest = _write(tmp_path, "sass_report-triton3.9.0-2026-11-20.json", [])
    (tmp_path / "sass_report-notes.json").write_text("{}")  # not a prediction file name
    assert P.find_file("3.6.1", tmp_path)[0] == newer36
    path, note = P.find_file("3.7.0", tmp_path)  # none for 3.7: the newest of any version, said so
    assert path == newest and "none for the running 3.7.0" in note
    assert P.find_file("3.6.0", tmp_path / "empty") == (None, P.NO_PREDICTION)


def test_match_by_layer_kernel_and_constexprs(tmp_path: Path) -> None:
    cfg = _config([_pred(layer="conv3"), _pred(constexprs={"K": 32, "BLOCK_Q": 64}), _pred()])
    assert P.match(cfg, LAUNCH)["predicted_us"]["H200"] == 60.0  # a prediction may leave keys out (INTERP, ...)
    assert P.match(cfg, LAUNCH | {"phase": "forward"}) is None
    assert P.match(cfg, LAUNCH | {"constexprs": {**LAUNCH["constexprs"], "BLOCK_Q": 256}}) is None
    assert (
        P.match(
            _config([_pred(constexprs={"K": 32}), _pred(constexprs={"K": 32, "BLOCK_Q": 128, "KMAX": 16.0})]), LAUNCH
        )["constexprs"]["KMAX"]
        == 16.0
    )  # the candidate sharing the most keys, ints as floats too
    assert P.match(None, LAUNCH) is None
    path = _write(tmp_path, "sass_report-triton3.6.0-2026-11-01.json", [_config([_pred()]), _config([], batch=32)])
    pred = P.Predictions("3.6.0", 64, 20.0, tmp_path)
    assert P.predicted_us(pred.launch(LAUNCH), P.device_key("NVIDIA H200")) == 60.0
    assert pred.clips_per_s(P.device_key("NVIDIA H100 80GB HBM3")) == 4000.0
    assert path.name in pred.source
    assert P.Predictions("3.6.0", 16, 20.0, path).config is None  # the explicit file; no config for batch 16


def test_missing_or_broken_prediction_files_do_not_raise(tmp_path: Path) -> None:
    none = P.Predictions("3.6.0", 64, 20.0, tmp_path)
    assert none.source == P.NO_PREDICTION and none.launch(LAUNCH) is None and none.clips_per_s("H200") is None
    (tmp_path / "sass_report-triton3.6.0-2026-11-02.json").write_text("{not json")
    broken = P.Predictions("3.6.0", 64, 20.0, tmp_path)
    assert "unreadable" in broken.source and broken.launch(LAUNCH) is None
    odd = _write(tmp_path, "sass_report-triton3.6.0-2026-11-03.json", [_config("nope", batch="x"), 7])
    assert P.Predictions("3.6.0", 64, 20.0, odd).launch(LAUNCH) is None


def test_records_survive_a_cut_short_line_and_failures_are_counted(tmp_path: Path) -> None:
    w = Writer(tmp_path / "03-demo.jsonl", "demo")
    w.row("t", {"a": 1.0, "b": "x|y"}, "PASS")
    w.row("t", {"a": 2e-7}, "FAIL")
    with w.part("boom"):
        raise RuntimeError("broken part")
    w.note("after the error")
    w.close()
    with open(tmp_path / "03-demo.jsonl", "a") as f:
        f.write('{"section": "demo", "type": "row", "ta')  # a record cut short by a kill
    recs, bad = read_records(tmp_path)
    assert bad == 1 and [r["type"] for r in recs] == ["row", "row", "error", "timing", "note"]
    assert len(failures(recs)) == 2
    text = render(tmp_path)
    assert "| 1 | x\\|y | PASS |" in text and "**FAIL**" in text and "broken part" in text
    assert "1 record line(s) could not be parsed" in text


_BLOCK = """
import importlib.abc, importlib.machinery, sys
BLOCKED, ATTEMPTS = {blocked!r}, []
class Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        ATTEMPTS.append(spec.name)
        raise ModuleNotFoundError(f"{{spec.name}} is blocked in this test", name=spec.name)  # as if not installed
    def exec_module(self, module):
        raise ImportError(module.__name__)
class Block(importlib.abc.MetaPathFinder):  # found (torch probes find_spec), but importing it raises ImportError
    def find_spec(self, name, path, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            return importlib.machinery.ModuleSpec(name, Refuse())
sys.meta_path.insert(0, Block())
# not installed: drop the editable install's finder, so only the checkout can provide soundnet_fast
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
from bench.gpu_check.common import ROOT, load_checkout
how = load_checkout()
import soundnet_fast.kernels, soundnet_fast.train.losses, soundnet_fast.model, soundnet_fast.train.step
from soundnet_fast.kernels import conv1d_bn_relu, kl_div
assert soundnet_fast.kernels.__file__ == str(ROOT / "kernels" / "__init__.py"), soundnet_fast.kernels.__file__
assert soundnet_fast.model.__file__ == str(ROOT / "soundnet_fast" / "model.py")
pulled = [m for m in sys.modules if m.split(".")[0] in ("av", "librosa", "sklearn") or m.startswith("nvidia.dali")]
assert not pulled, pulled
tried = [m for m in ATTEMPTS if m != "numpy"]
assert not tried, f"the import chain tried to import {{tried}}"
print("IMPORT-OK", how)
"""


def _import_check(blocked: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    code = _BLOCK.format(blocked=blocked)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_the_checkout_imports_without_av_dali_librosa_sklearn() -> None:
    res = _import_check(["av", "nvidia.dali", "librosa", "sklearn"])
    assert "IMPORT-OK package from the checkout" in res.stdout, res.stderr[-3000:]


def test_the_checkout_imports_without_numpy_too() -> None:
    """numpy is only needed by soundnet_fast/__init__ (weights): without it the package is registered bare."""
    code = _BLOCK.split("from bench")[0].format(blocked=["numpy"]) + "import torch"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    if probe.returncode != 0:  # this torch build cannot start without numpy: nothing to check
        return
    res = _import_check(["av", "nvidia.dali", "librosa", "sklearn", "numpy"])
    assert "IMPORT-OK package from the checkout without its __init__" in res.stdout, res.stderr[-3000:]


NCU_RAW = """\
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC",\
"dram__bytes_read.sum","dram__bytes_write.sum","gpu__time_duration.sum",\
"l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum","l1tex__t_sectors_pipe_lsu_mem_global_op_ld_lookup_hit.sum",\
"launch__registers_per_thread","lts__t_bytes.sum","lts__t_sectors_srcunit_tex_op_read.sum",\
"smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",\
"smsp__average_warps_issue_stalled_wait_per_issue_active.ratio","smsp__inst_executed.sum",\
"smsp__inst_executed_pipe_alu.sum","smsp__inst_executed_pipe_lsu.sum"
"","","","","","","","","","","","Mbyte","Kbyte","usecond","sector","sector","register/thread","Mbyte","sector","","",\
"inst","inst","inst"
"0","42","python","h","_conv_stats_kernel","1","7","(128, 1, 1)","(13782, 1, 1)","0","9.0","56.50","1.20","250.30",\
"4,000,000","3,000,000","96","180.2","1,500,000","3.1","0.8","12,345,678","1,000,000","2,000,000"
"""


def test_ncu_raw_csv_is_parsed_into_a_table(tmp_path: Path) -> None:
    from bench.gpu_check import sec_ncu

    fake = tmp_path / "ncu"
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write({NCU_RAW!r})\n")
    fake.chmod(0o755)
    (tmp_path / "profile-metrics.ncu-rep").write_bytes(b"")
    rows = sec_ncu._import_csv(str(fake), tmp_path / "profile-metrics", tmp_path / "raw.csv")
    assert len(rows) == 2 and (tmp_path / "raw.csv").read_text() == NCU_RAW
    w = Writer(tmp_path / "06-ncu.jsonl", "ncu")
    sec_ncu._report(w, rows, [{"layer": "conv1", "phase": "forward"}], "metrics")
    w.close()
    (rec,) = [r for r in read_records(tmp_path)[0] if r["type"] == "row"]
    row = rec["row"]
    assert row["kernel"] == "_conv_stats_kernel" and row["layer (launch order)"] == "conv1 for"
    assert row["us"] == 250.3 and row["DRAM MB"] == 56.5 and row["L2 MB"] == 180.2
    assert row["warp-instr"] == 12_345_678 and row["top pipes (warp-instr)"] == "lsu 2e+06, alu 1e+06"
    assert row["L1 global-load hit %"] == 75.0 and row["L2 MB read by L1"] == 48.0  # 1.5 M sectors of 32 B
    assert row["top stalls (cycles per issue)"] == "long_scoreboard 3.1, wait 0.8"


def _gpu_check(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)  # fmt: skip


def test_without_cuda_nothing_is_run_or_written(tmp_path: Path) -> None:
    earlier = tmp_path / "run"  # a folder holding an earlier run's report: it must stay as it is
    earlier.mkdir()
    (earlier / "report.md").write_text("an earlier GPU run")
    res = _gpu_check("--out", str(earlier))
    assert res.returncode == 2 and "needs a CUDA GPU" in res.stderr and "nothing was run" in res.stderr
    assert [p.name for p in earlier.iterdir()] == ["report.md"]
    assert (earlier / "report.md").read_text() == "an earlier GPU run"


def test_usage_errors_exit_2_before_any_folder_is_made(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args, message in [
        (["--sections", "environment,bogus"], "unknown section 'bogus'"),
        (["--section-timeout", "parity"], "expected NAME=SECONDS"),
        (["--section-timeout", "nope=5"], "expected NAME=SECONDS"),
        (["--out", str(afile)], "exists and is not a folder"),
    ]:
        out = ["--out", str(tmp_path / "new")] if "--out" not in args else []
        res = _gpu_check("--smoke", *args, *out)
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr[-500:])
        assert not (tmp_path / "new").exists()
