"""Pieces of the static SASS model (bench/sass): parsing, CFG and loops, guards, trip counts through an
inlining chain, pipe / memory / MMA classification, occupancy, the hand count, and the MMA-FLOP invariant
on a real compiled kernel (which must fail when a loop's trip count is wrong)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import triton

from bench.sass import cfg as C
from bench.sass.model import DEVICES, analyse, occupancy
from bench.sass.report import hand_count
from bench.sass.trips import block_frequencies, loop_trips

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"

SRC = textwrap.dedent("""\
    def toy(x_ptr, N, REPS, BLOCK):
        pid = tl.program_id(0)
        for r in range(REPS):
            for i in range(pid, N, BLOCK):
                pass
        tail(x_ptr, N * 2)


    def tail(p, Q):
        for j in range(0, Q, 64):
            pass
    """)


def _sass(src: str) -> str:
    """A kernel in nvdisasm -c -gi form: an early exit, a guard that skips a two-deep loop nest (with an
    entered-only and a skipped-only block), a loop inlined from ``tail``, padding, a trap loop after EXIT."""
    f = f'"{src}"'
    return textwrap.dedent(f"""\
        \t.target\tsm_90a
        //--------------------- .text.toy  --------------------------
        \t.section\t.text.toy,"ax",@progbits
                .global         toy
        toy:
        .text.toy:
        \t//## File {f}, line 2
                /*0000*/                   S2R R0, SR_CTAID.X ;
                /*0010*/                   ISETP.GE.AND P0, PT, R0, 0x10, PT ;
                /*0020*/               @P0 EXIT ;
                /*0030*/                   ISETP.GE.AND P1, PT, R4, 0x1, PT ;
                /*0040*/              @!P1 BRA `(.L_x_0) ;
        .L_x_2:
        \t//## File {f}, line 3
                /*0050*/                   IMAD R2, R0, 0x4, RZ ;
        .L_x_1:
        \t//## File {f}, line 4
                /*0060*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
                /*0070*/                   FFMA R8, R4, R5, R8 ;
                /*0080*/                   HMMA.16816.F32.BF16 R12, R4, R6, R12 ;
                /*0090*/               @P2 BRA `(.L_x_1) ;
        \t//## File {f}, line 3
                /*00a0*/               @P3 BRA `(.L_x_2) ;
                /*00b0*/                   BRA `(.L_x_3) ;
        .L_x_0:
                /*00c0*/                   MOV R8, RZ ;
        .L_x_3:
        \t//## File {f}, line 10 inlined at {f}, line 6
        \t//## File {f}, line 6
                /*00d0*/              @!PT LDS RZ, [RZ] ;
                /*00e0*/                   STG.E [R2.64], R8 ;
                /*00f0*/               @P4 BRA `(.L_x_3) ;
                /*0100*/                   EXIT ;
        .L_x_4:
                /*0110*/                   BRA `(.L_x_4);
        .L_x_5:
        """)


@pytest.fixture
def toy(tmp_path: Path) -> tuple[C.Cfg, str]:
    src = tmp_path / "toy_kernel.py"
    src.write_text(SRC)
    return C.Cfg(_sass(str(src))), str(src)


def test_parse_blocks_and_reachability(toy) -> None:
    g, src = toy
    assert len(g.instrs) == 18 and g.instrs[2].pred == "@P0" and g.instrs[2].base == "EXIT"
    assert g.instrs[13].loc == ((src, 10), (src, 6))  # inlined: innermost frame first
    starts = [g.instrs[b.start].offset for b in g.blocks]
    assert starts == [0x0, 0x30, 0x50, 0x60, 0xA0, 0xB0, 0xC0, 0xD0, 0x100, 0x110]
    assert g.blocks[0].succs == [1]  # predicated EXIT falls through
    assert sorted(g.blocks[1].succs) == [2, 6]
    assert g.blocks[5].succs == [7]  # unconditional branch: no fall-through
    assert 9 not in g.reachable  # the trap loop after the last EXIT


def test_loops_nesting_and_guards(toy) -> None:
    g, _ = toy
    loops = {lp.header: lp for lp in g.loops}
    assert set(loops) == {2, 3, 7}
    assert loops[2].blocks == {2, 3, 4} and loops[3].blocks == {3} and loops[7].blocks == {7}
    assert loops[3].parent is not None and g.loops[loops[3].parent].header == 2 and loops[3].depth == 2
    entered, skipped = g.guards(loops[2])
    assert entered == {5} and skipped == {6}
    assert g.guards(loops[3]) == (set(), set())  # the outer guard does not guard the inner loop


def test_trips_through_program_id_and_inlining(toy) -> None:
    g, _ = toy
    res = loop_trips(g, {"N": 100, "REPS": 3, "BLOCK": 16, "x_ptr": None}, (4,))
    by = {r["source"]: r for r in res}
    assert by["toy_kernel.py:3"]["trips"] == 3
    assert np.array_equal(np.ravel(by["toy_kernel.py:4"]["trips"]), [7, 7, 7, 7])  # range(pid, 100, 16)
    assert by["toy_kernel.py:10"]["trips"] == 4  # tail(x_ptr, N * 2): range(0, 200, 64)
    freq = block_frequencies(g, [r["trips"] for r in res], (4,))
    assert freq[2] == 4 * 3 and freq[3] == 4 * 3 * 7 and freq[7] == 4 * 4
    assert freq[5] == 4 and freq[6] == 0  # entered-only / skipped-only blocks of the outer loop
    freq0 = block_frequencies(g, [0 * np.asarray(r["trips"]) if r["source"].endswith(":3") else r["trips"]
                                  for r in res], (4,))  # fmt: skip
    assert freq0[5] == 0 and freq0[6] == 4 and freq0[3] == 0


def test_a_closing_branch_on_a_helper_line_maps_to_its_loops_for(tmp_path: Path) -> None:
    """ptxas may give a loop's closing branch the line of an inlined helper with its caller's frame lost (the tile
    walk's ``walk_next``): the loop then maps to the ``for`` its own blocks name, the one no other loop claims."""
    src = tmp_path / "toy_kernel.py"
    src.write_text(SRC + "\n\ndef step(n):\n    return n + 1\n")  # line 15: ``return n + 1``, in no for
    lines = _sass(str(src)).splitlines()
    at = next(i for i, line in enumerate(lines) if "/*00a0*/" in line) - 1  # the outer loop's closing branch
    lines[at] = lines[at].replace("line 3", "line 15")
    g = C.Cfg("\n".join(lines) + "\n")
    outer = next(lp for lp in g.loops if lp.header == 2)
    assert g.back_edge_instr(outer).loc == ((str(src), 15),)
    by = {r["source"]: r for r in loop_trips(g, {"N": 100, "REPS": 3, "BLOCK": 16, "x_ptr": None}, (4,))}
    assert by["toy_kernel.py:3"]["trips"] == 3  # the outer for (line 3), not the inner one (line 4) it holds
    assert np.array_equal(np.ravel(by["toy_kernel.py:4"]["trips"]), [7, 7, 7, 7])


def test_classification() -> None:
    def ins(op: str, operands: str = "R0, R1, R2", pred: str = "") -> C.Instr:
        return C.Instr(0, pred, op, operands, ())

    assert C.pipe(ins("IMAD.MOV.U32")) == "imad" and C.pipe(ins("FFMA")) == "fp32"
    assert C.pipe(ins("ISETP.GE.AND")) == "alu" and C.pipe(ins("FSEL")) == "alu" and C.pipe(ins("LOP3.LUT")) == "alu"
    assert C.pipe(ins("MUFU.EX2")) == "xu" and C.pipe(ins("I2F.RP")) == "xu"
    assert C.pipe(ins("LDSM.16.M88.4")) == "mio" and C.pipe(ins("SHFL.BFLY")) == "mio"
    assert C.pipe(ins("ULDC.64")) == "uniform" and C.pipe(ins("BAR.SYNC.DEFER_BLOCKING")) == "control"
    assert C.pipe(ins("HMMA.16816.F32.BF16")) == "tensor"
    assert C.access(ins("LDG.E.U16")) == ("global_ld", 64)
    assert C.access(ins("LDGSTS.E.BYPASS.128")) == ("global_ld_bypass", 512)
    assert C.access(ins("LDSM.16.M88.4")) == ("shared_ld", 512)
    assert C.access(ins("STL.64")) == ("local_st", 256)
    assert C.access(ins("ATOMG.E.ADD.F32.FTZ.RN.STRONG.GPU")) == ("global_atom", 128)
    assert C.mma_flops_per_warp_instr(ins("HMMA.16816.F32.BF16")) == 2 * 16 * 8 * 16
    assert C.mma_flops_per_warp_instr(ins("HMMA.1684.F32.TF32")) == 2 * 16 * 8 * 4
    hg = ins("HGMMA.64x128x16.F32.BF16", "R24, gdesc[UR4], R24")
    assert C.mma_flops_per_warp_instr(hg) == 2 * 64 * 128 * 16 / 4
    assert C.mma_shape(hg)[4] == "A:shared,B:shared"
    assert C.mma_shape(ins("HGMMA.64x64x16.F32.BF16", "R24, R152, gdesc[UR8], R24"))[4] == "A:registers,B:shared"
    assert ins("LDS", "RZ, [RZ]", "@!PT").never


def test_never_executed_padding_counts_for_issue_only(toy) -> None:
    g, src = toy
    st = analyse(_sass(src))
    assert st.pipes[7].get("mio", 0) == 1  # the STG; the @!PT LDS is an issue slot ("control")
    assert st.pipes[7]["control"] == 2 and st.mem[7] == {"global_st": 128}
    assert st.mma_flops[3] == 4096


def test_occupancy() -> None:
    h = DEVICES["H100"]
    assert occupancy(h, 255, 20480, 4) == (2, "registers")
    assert occupancy(h, 128, 16384, 4)[0] == 4
    assert occupancy(h, 32, 100 * 1024, 4) == (2, "shared memory")
    assert occupancy(h, 16, 0, 1) == (32, "CTAs")


def test_hand_count_counts_the_outer_loop_span(toy) -> None:
    _, src = toy
    h = hand_count(_sass(src), tiles=50, warps=4, programs=10, batch=2)
    # prologue: 5 instructions before .L_x_2; span .L_x_2 .. its back-edge: 6; epilogue to the EXIT: 6
    assert (h["prologue"], h["tile"], h["epilogue"]) == (5, 6, 6)
    assert h["per_thread_per_program"] == 5 + 5 * 6 + 6 and h["per_clip"] == 41 * 4 * 10 / 2


@pytest.mark.skipif(not PTXAS.exists(), reason="this Triton build ships no NVIDIA backend (ptxas)")
def test_mma_invariant_on_a_compiled_kernel(monkeypatch, tmp_path) -> None:
    """conv3's fp32 statistics kernel (SoundNet-8, batch 8; row GEMMs; in fp32 its 128 KB weight is re-read per tile
    by an inner loop over the reduction, in bf16 it stays in shared memory): the dynamic MMA FLOPs equal the padded
    analytic FLOPs; doubling the loops' trip counts (as a missed ptxas unroll would) breaks the check."""
    import torch

    from bench import aot_check
    from bench.sass import run
    from bench.sass.compile import CACHE, compile_spec, specialise
    from bench.sass.launches import trunk_rows
    from soundnet_fast.constants import SAMPLE_RATE

    monkeypatch.setenv("TRITON_CACHE_DIR", str(CACHE / "triton" / triton.__version__))
    rows = trunk_rows("soundnet8")[:3]  # conv1..conv3
    launches, _ = aot_check.train_step_launches(rows, 8, 20 * SAMPLE_RATE, torch.float32, precision="tf32")
    lc = next(x for x in launches if x.layer == "conv3" and x.kernel.__name__ == "_rows_stats_kernel")
    spec, bound = specialise(lc.kernel, lc.args, lc.kwargs)
    comp = compile_spec(spec, lc.kernel)
    st = analyse(comp["sass"])
    row = run.model_launch(lc, spec, bound, comp, st)
    assert row["mma"]["invariant"] == "PASS" and row["detail"]["bytes_invariant"] == "PASS"
    # the stall term (bench/sass/stalls.py) from nvdisasm -hex: every instruction costs its warp >= 1 cycle
    assert row["detail"]["fixed_stall_mean"] >= 1.0
    assert row["detail"]["warp_cycles"] >= row["warp_instructions"]
    assert "dependency" in row["detail"]["bounds_us"]
    inner = [lp for lp in row["detail"]["loops"] if lp["range"] == "range(0, R, BLOCK_R)"]
    assert len(inner) == 1 and inner[0]["trips_mean"] == 512 // 32  # R = k * C_in = 16 * 32, BLOCK_R 32 (fp32)

    import bench.sass.model as model_mod

    real = model_mod.loop_trips

    def doubled(*a, **k):
        out = real(*a, **k)
        for lp in out:
            lp["trips"] = lp["trips"] * 2
        return out

    monkeypatch.setattr(model_mod, "loop_trips", doubled)
    assert run.model_launch(lc, spec, bound, comp, st)["mma"]["invariant"] == "FAIL"


def test_bad_arguments_are_usage_errors() -> None:
    for args, message in [
        (["--archs", "soundnet9"], "choose from soundnet8, soundnet5"),
        (["--dtypes", "fp16"], "choose from bf16, fp32"),
        (["--batches", "0"], "expected positive integers"),
        (["--out-dir", __file__], "exists and is not a folder"),
    ]:
        res = subprocess.run([sys.executable, "-m", "bench.sass_report", *args], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr[-300:])


def test_register_table_pairs_launches_by_kernel_not_position() -> None:
    """fp32 runs a kernel bf16 does not (the BN sums' recompute); each row must still pair the same kernel."""
    from bench.sass.markdown import _pair_launches

    def row(layer: str, phase: str, kernel: str, regs: int) -> dict:
        return {"layer": layer, "phase": phase, "kernel": kernel, "regs": regs}

    bf16 = [row("conv1", "backward", "gz", 1), row("conv2", "forward", "stats", 2), row("conv2", "forward", "merge", 3)]
    fp32 = [row("conv1", "backward", "reduce", 10), row("conv1", "backward", "gz", 11),
            row("conv2", "forward", "stats", 12), row("conv2", "forward", "merge", 13)]  # fmt: skip
    pairs = [((b or {}).get("regs"), (f or {}).get("regs")) for b, f in _pair_launches(bf16, fp32)]
    assert pairs == [(1, 11), (None, 10), (2, 12), (3, 13)]


def test_narrow_load_audit_lists_loops_with_sub_16_byte_loads() -> None:
    from bench.sass.markdown import _narrow

    launch = {"layer": "conv2", "phase": "backward", "kernel": "_rows_gz_kernel",
              "detail": {"loops": [{"source": "_conv_rows.py:248", "narrow_loads": {"LDG.E.U16": 16}},
                                   {"source": "_conv_rows.py:62", "narrow_loads": {}}]}}  # fmt: skip
    wide = {"layer": "conv2", "phase": "forward", "kernel": "_rows_stats_kernel",
            "detail": {"loops": [{"source": "_conv_rows.py:100", "narrow_loads": {}}]}}  # fmt: skip
    data = {"configs": [{"arch": "soundnet8", "batch": 64, "seconds": 20.0, "dtype": "bf16",
                         "launches": [launch, wide]}]}  # fmt: skip
    lines: list[str] = []
    _narrow(data, lines.append)
    text = "\n".join(lines)
    assert "1 of 2 launches" in text
    assert "| conv2 | backward | _rows_gz_kernel | _conv_rows.py:248 | 16 LDG.E.U16 |" in text
    assert "_rows_stats_kernel" not in text
