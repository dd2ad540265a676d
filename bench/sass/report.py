"""Report pieces of the static model: the constants block, the by-hand count; the Markdown is in
``markdown.py`` (``bench/results/sass_report-triton<version>-<date>.{md,json}``)."""

from __future__ import annotations

import re
from typing import Any

from .model import ASSUMPTIONS, DEVICES, RATES

LABEL = "predicted (static), not measured"


def constants() -> dict[str, Any]:
    return {
        "devices": {d: {k: getattr(v, k) for k in v.__dataclass_fields__} for d, v in DEVICES.items()},
        "issue_rates_warp_inst_per_clk_per_scheduler": RATES,
        "assumptions": {k: {"value": v, "note": n} for k, (v, n) in ASSUMPTIONS.items()},
        "sources": {
            "issue_rates": "CUDA C++ Programming Guide, arithmetic instruction throughput table, compute "
            "capability 9.0 (per SM per clock: fp32 128, int add/logic/compare 64, IMAD 64, "
            "conversions and MUFU 16, shuffles 32); MIO 0.25 and uniform / control rates are "
            "assumptions",
            "devices": "NVIDIA H100 SXM5 / H200 SXM datasheets (132 SMs, 1.98 GHz boost, 3.35 / 4.8 TB/s, "
            "989 TFLOP/s dense bf16); per-SM limits from the CUDA Programming Guide (cc 9.0: 64 K "
            "registers, 228 KB shared memory, 227 KB per block, 64 warps, 32 blocks)",
        },
    }


# ------------------------------------------------------------------------------------------- hand count
def hand_count(sass: str, tiles: int, warps: int, programs: int, batch: int) -> dict[str, Any]:
    """Count conv1's statistics kernel (``_band_stats_kernel``) by hand, without the CFG / loop / trip
    machinery: instruction lines before the outer loop's label (prologue), from that label to the branch back
    to it (one row tile: the kernel has no inner loop), and after it up to the last EXIT (epilogue). ``tiles``
    is the tiles all ``programs`` walk together (NUM_TILES per channel block x channel blocks): in all,
    programs x (prologue + epilogue) + tiles x tile per thread; per clip = that x warps / batch."""
    lines = [ln for ln in sass.splitlines() if re.match(r"^\s*/\*[0-9a-f]+\*/", ln) or re.match(r"^\.L_x_\d+:", ln)]
    back = [i for i, ln in enumerate(lines) if re.search(r"BRA `\((\.L_x_\d+)\)", ln)]
    pos = {ln.rstrip(":"): i for i, ln in enumerate(lines) if ln.startswith(".L_x_")}
    loops = [(pos[re.search(r"\((\.L_x_\d+)\)", lines[i]).group(1)], i) for i in back]
    loops = [(h, e) for h, e in loops if h < e]
    head, end = min(loops)  # the outermost backward branch: the loop over row tiles
    exits = [i for i, ln in enumerate(lines) if re.search(r"\bEXIT\b", ln)]

    def n(a: int, b: int) -> int:
        return sum(1 for ln in lines[a:b] if not ln.startswith(".L_x_"))

    pro, tile, epi = n(0, head), n(head, end + 1), n(end + 1, exits[-1] + 1)
    total = programs * (pro + epi) + tiles * tile
    label = lines[head].rstrip(":")
    return {
        "label": label,
        "prologue": pro,
        "tile": tile,
        "epilogue": epi,
        "tiles": tiles,
        "per_thread_per_program": total / programs,
        "per_clip": total * warps / batch,
    }


def markdown(data: dict[str, Any]) -> str:
    from .markdown import markdown as render

    return render(data)
