"""The stall term of the static model (bench/sass/stalls.py): control-bit decoding, one warp's cycles through a
block (fixed stalls, exposed scoreboard waits, a loop's carried loads), the queueing rate, its place in the
model's bounds, and the validation against a GPU check's measured rows (bench/sass/validate.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.sass import stalls
from bench.sass.cfg import Cfg, parse
from bench.sass.model import DEVICES, analyse, times
from bench.sass.validate import compare, measured_rows


def _hi(stall: int = 1, write: int = 7, read: int = 7, wait: int = 0, yield_: int = 0) -> str:
    bits = stall | yield_ << 4 | write << 5 | read << 8 | wait << 11
    return f"{bits << 41:#018x}"


def _sass(lines: list[tuple[str, str]], label_first: bool = False) -> str:
    """``nvdisasm -c -gi -hex`` shaped text: (instruction, second word) pairs from offset 0."""
    out = [".text.k:", "k:"]
    if label_first:
        out.append(".L_x_0:")
    for i, (ins, hi) in enumerate(lines):
        out.append(f"        /*{i * 16:04x}*/                   {ins} ;   /* 0x0000000000000000 */")
        out.append(f"                                                  /* {hi} */")
    return "\n".join(out) + "\n"


def test_control_bits_decode_as_nvdisasm_encodes_them() -> None:
    """Second words taken from a compiled conv kernel: LDC (stall 8, yield, write scoreboard 1), then VIADD
    waiting on scoreboard 1 (mask 0b10)."""
    ldc = stalls.Ctrl.of(0x000E700000000800 >> 41)
    assert (ldc.stall, ldc.yield_, ldc.write, ldc.read, ldc.wait) == (8, True, 1, 7, 0)
    viadd = stalls.Ctrl.of(0x002FE20000000000 >> 41)
    assert (viadd.stall, viadd.write, viadd.read, viadd.wait) == (1, 7, 7, 0b10)
    instrs, _ = parse(_sass([("LDC R1, c[0x0][0x28]", "0x000e700000000800"), ("EXIT", _hi())]))
    assert [i.ctrl for i in instrs] == [0x000E700000000800 >> 41, int(_hi(), 16) >> 41]


def test_one_warp_waits_for_what_is_left_of_a_load() -> None:
    """LDL (local: 33 cycles) sets scoreboard 0; 4 instructions of stall 2 pass (8 cycles); the consumer waits
    for the remaining 33 - 1 - 8 = 24 cycles. Without the wait bit the same code takes 1 + 8 + 1 + 1 cycles."""
    body = [("LDL R2, [R1]", _hi(stall=1, write=0))] + [("IADD3 R3, R3, 0x1, RZ", _hi(stall=2))] * 4
    waited = _sass(body + [("FADD R4, R2, R2", _hi(stall=1, wait=0b1)), ("EXIT", _hi())])
    plain = _sass(body + [("FADD R4, R2, R2", _hi(stall=1)), ("EXIT", _hi())])
    (w,) = stalls.block_cycles(Cfg(waited)).values()
    (p,) = stalls.block_cycles(Cfg(plain)).values()
    assert p == 1 + 8 + 1 + 1
    assert w == 33 + 1 + 1  # issue at cycle 33, then its own cycle and EXIT's
    assert w - p == 33 - 1 - 8


def test_a_loop_carries_its_last_load_into_the_next_iteration() -> None:
    """A self-loop whose load is consumed at the top of the next iteration: the second pass waits for it."""
    text = _sass(
        [
            ("FADD R4, R2, R2", _hi(stall=1, wait=0b1)),
            ("LDG.E R2, desc[UR4][R6.64]", _hi(stall=1, write=0)),
            ("@P0 BRA `(.L_x_0)", _hi(stall=5)),
            ("EXIT", _hi()),
        ],
        label_first=True,
    )
    g = Cfg(text)
    cycles = stalls.block_cycles(g)
    loop = next(b for b in g.reachable if b in g.blocks[b].succs)
    # one pass: 1 + 1 + 5 = 7 cycles; the load issued at cycle 1 is ready 33 later, 27 cycles into the next pass
    assert cycles[loop] == 1 + 1 + 5 + (stalls.LATENCY_CYCLES["global"] - 6)


def test_analyse_without_control_bits_has_no_stall_term() -> None:
    """SASS without ``-hex`` (the second words) still parses; the stall term is then absent, not invented."""
    text = _sass([("MOV R0, RZ", _hi()), ("EXIT", _hi())])
    assert analyse(text).cycles is not None
    plain = "\n".join(line for line in text.splitlines() if not line.strip().startswith("/* 0x"))
    assert analyse(plain).cycles is None


def test_spill_reloads_wait_for_l2_once_the_spill_areas_overflow_l1() -> None:
    """256 threads of 304 B (conv1's stats kernel: 76 KB) fit the 156 KB of L1 left beside a 100 KB shared
    carveout; 256 threads of 944 B (conv3's pool kernel: 236 KB) do not; a kernel whose CTAs hold more shared
    memory than the carveout leaves less L1."""
    l1 = stalls.LATENCY_CYCLES["local"]
    l2 = stalls.LATENCY_CYCLES["atomic"]
    assert stalls.local_latency(304, 256, 2 * 21 * 1024) == l1
    assert stalls.local_latency(944, 256, 2 * 41 * 1024) == l2
    assert stalls.local_latency(400, 256, 200 * 1024) == l2  # 100 KB spilled, 56 KB of L1 left
    assert stalls.local_latency(0, 2048, 0) == l1
    loop = [("LDL R2, [R1]", _hi(stall=1, write=0)), ("FADD R4, R2, R2", _hi(stall=1, wait=0b1)), ("EXIT", _hi())]
    g = Cfg(_sass(loop))
    assert sum(stalls.block_cycles(g, local=l2).values()) - sum(stalls.block_cycles(g).values()) == l2 - l1


def test_issue_rate_is_mean_value_analysis() -> None:
    """One warp: 1 / (delay + demands). Two warps at one server of demand 1 with delay 1: n=1 gives rate 0.5 and
    queue 0.5; n=2: residence 1.5, rate 2 / 2.5 = 0.8. Fractional warps interpolate."""
    assert stalls.issue_rate(1, 3.0, [1.0, 0.5]) == pytest.approx(1 / 4.5)
    assert stalls.issue_rate(2, 1.0, [1.0]) == pytest.approx(0.8)
    assert stalls.issue_rate(1.5, 1.0, [1.0]) == pytest.approx(0.65)
    assert stalls.issue_rate(64, 0.0, [1.0]) == pytest.approx(1.0)  # saturated: one instruction per cycle
    assert stalls.issue_rate(0, 1.0, [1.0]) == 0.0


def test_times_reports_the_dependency_bound() -> None:
    """A launch whose warps stall 4 cycles per instruction with 2 warps per scheduler is bound by the stalls,
    not by their issue slots; without the stall figures the bound is absent."""
    dev = DEVICES["H200"]
    n, warps, ctas = 1000, 4, dev.sms * 2
    tot = {"warp_instructions": float(n * warps * ctas), "pipes": {"alu": float(n * warps * ctas) / 4}, "mma": {},
           "loops": [], "mem_l1": 0.0, "warp_cycles": float(4 * n * warps * ctas)}  # fmt: skip
    t = times(dev, tot, (ctas,), warps, 1, 255, 0, 0.0, 0.0)
    assert t["binding"] == "dependency"
    assert t["bounds_s"]["dependency"] > t["bounds_s"]["issue"]
    ipc = stalls.issue_rate(2, 3.0, [1.0, 0.25 / 0.5])
    assert t["bounds_s"]["dependency"] == pytest.approx(1 * 2 * n / ipc / dev.clock_hz)
    del tot["warp_cycles"]
    assert "dependency" not in times(dev, tot, (ctas,), warps, 1, 255, 0, 0.0, 0.0)["bounds_s"]


def _check_folder(tmp_path: Path, rows: list[dict]) -> Path:
    lines = [json.dumps({"section": "kernels", "type": "row", "row": r}) for r in rows]
    (tmp_path / "05-kernels.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_validate_matches_launches_and_summarises_only_the_same_code(tmp_path: Path) -> None:
    measured = measured_rows(_check_folder(tmp_path, [
        {"layer": "conv1", "phase": "for", "kernel": "_k", "grid": [8, 1], "us": 100.0, "pred us": 50.0,
         "meas/pred": 2.0, "pred warp-instr": 1e6, "SM MHz": 1980.0},
        {"layer": "conv2", "phase": "bac", "kernel": "_k", "grid": [4, 1], "us": 10.0, "pred us": 5.0,
         "meas/pred": 2.0, "pred warp-instr": 1e6, "SM MHz": 1980.0},
    ]))  # fmt: skip
    launch = 4.0

    def pred(layer: str, phase: str, grid: list[int], us: float, wi: float) -> dict:
        return {"layer": layer, "phase": phase, "kernel": "_k", "grid": grid, "warp_instructions": wi,
                "predicted_us": {"H200": us + launch}, "detail": {"bound_H200": "dependency"}}  # fmt: skip

    preds = [pred("conv1", "forward", [8, 1], 80.0, 1e6), pred("conv2", "backward", [4, 1], 9.0, 2e6)]
    res = compare(measured, preds, 1980.0, launch)
    a, b = res["rows"]
    assert a["same_code"] and not b["same_code"]
    assert a["pred_us"] == pytest.approx(84.0) and a["ratio"] == pytest.approx(100 / 84)
    s = res["summary"]
    assert s["launches_matched"] == 2 and s["launches_same_code"] == 1
    assert s["median_abs_error"] == pytest.approx(abs(84 / 100 - 1))
    assert s["within_30pct"] == 1 and s["conv1_conv2_within_30pct"] == "1 of 1"
    # measured at a lower clock: the prediction (less the launch cost) stretches with it
    slow = compare(measured, [pred("conv1", "forward", [8, 1], 80.0, 1e6)], 990.0, launch)["rows"][0]
    assert slow["pred_us"] == pytest.approx(80.0 * 2 + launch)


def test_validate_names_a_folder_without_measurements(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="05-kernels.jsonl"):
        measured_rows(tmp_path)
    (tmp_path / "05-kernels.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"05-kernels.jsonl:1: not JSON"):
        measured_rows(tmp_path)


def test_committed_validation_is_what_the_note_reports() -> None:
    """The committed comparison (python -m bench.sass.validate bench/results/gpu_check-h200-2026-11-30
    --block-m 128) holds
    rows for every measured launch and a summary computed from them."""
    path = Path(__file__).resolve().parents[1] / "bench" / "results" / "sass_validate-h200-2026-11-30.json"
    data = json.loads(path.read_text())
    rows = [r for r in data["rows"] if r["same_code"]]
    errs = sorted(abs(r["pred_us"] / r["measured_us"] - 1) for r in rows)
    assert data["summary"]["launches_same_code"] == len(rows)
    assert math.isclose(data["summary"]["median_abs_error"], errs[len(errs) // 2] if len(errs) % 2 else
                        (errs[len(errs) // 2 - 1] + errs[len(errs) // 2]) / 2)  # fmt: skip
    assert data["results"].endswith("gpu_check-h200-2026-11-30")
