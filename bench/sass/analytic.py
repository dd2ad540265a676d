"""Analytic figures, independent of the SASS: tensor-core FLOPs each kernel must issue (its tl.dot shapes,
padded to the blocks, times how often the source calls them) and the useful conv FLOPs; and the bytes
moved by eager PyTorch and by torch.compile on the same shapes (the baselines).

The padded MMA FLOPs are the invariant the SASS model must reproduce exactly: a SASS loop counted with
the wrong trip count (ptxas unrolled, peeled or split it) changes the dynamic MMA count.
"""

from __future__ import annotations

import math
from typing import Any


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# The banded single-channel kernels (kernels/_conv_banded.py).
BANDED = ("_band_stats_kernel", "_band_bn_relu_pool_kernel", "_band_bwd_reduce_kernel", "_band_gz_dw_kernel")
# Kernels without a tl.dot: the statistics merge, BN's running-statistics update (kernels/bn_running.py), the
# pooled BN sums (kernels/_bn_sums.py), KL.
ELEMENTWISE = (
    "_merge_stats_kernel",
    "_running_stats_kernel",
    "_pooled_bn_sums_kernel",
    "_pooled_bn_sums_rows_kernel",
    "_kl_kernel",
)
# The row-GEMM kernels (kernels/_conv_rows.py) that walk windows x slots.
ROWS_WINDOWS = ("_rows_bn_relu_pool_kernel", "_rows_bwd_reduce_kernel", "_rows_gz_kernel")


def padded_mma_flops(name: str, v: dict[str, Any], grid: tuple[int, ...]) -> float:
    """FLOPs of the tl.dot calls of one launch, with every dot dimension padded to its block."""
    progs = math.prod(grid)
    if name in ELEMENTWISE:
        return 0.0
    if name in ("_conv_stats_kernel", "_bwd_reduce_kernel", "_bwd_gz_kernel", "_bwd_gz_dw_kernel"):
        tiles = v.get("TILES", 1)
        conv = 2.0 * v["BLOCK_CO"] * v["BLOCK_M"] * _cdiv(v["R"], v["BLOCK_R"]) * v["BLOCK_R"]
        dw = 2.0 * v["BLOCK_CO"] * v["BLOCK_M"] * v["BLOCK_RW"] if name == "_bwd_gz_dw_kernel" else 0.0
        return progs * tiles * (conv + dw)
    if name == "_conv_bn_relu_pool_kernel":
        return progs * 2.0 * v["BLOCK_CO"] * v["BLOCK_Q"] * v["PP"] * _cdiv(v["R"], v["BLOCK_R"]) * v["BLOCK_R"]
    if name == "_dw_kernel":
        split, nmt = v["SPLIT"], v["NUM_MT"]
        iters = sum(len(range(s, nmt, split)) for s in range(grid[2]))
        return grid[0] * grid[1] * iters * 2.0 * v["BLOCK_CO"] * v["BLOCK_M"] * v["BLOCK_R"]
    if name in BANDED:  # persistent grid: the programs of a channel block (or slot group) walk all NUM_TILES tiles
        cols = v.get("SP", v["PP"]) * v["BLOCK_C"]  # SP: the gz kernel's slots per program (``grad_plan``)
        one = 2.0 * v["BLOCK_Q"] * (v["J1"] + v["J2"]) * cols
        if name == "_band_stats_kernel":  # each program's first tile twice: once more for its shift
            return (grid[1] * v["NUM_TILES"] + progs) * one
        if name == "_band_gz_dw_kernel":  # two dots (Z, dW) per sub-tile, SUB sub-tiles per tile
            return grid[1] * v["NUM_TILES"] * one * 2 * v["SUB"]
        return grid[1] * v["NUM_TILES"] * one
    if name == "_rows_stats_kernel":  # BAND > 1: R the band's rows, BAND column blocks
        return grid[1] * v["NUM_TILES"] * 2.0 * v["BLOCK_M"] * v["R"] * v["BLOCK_CO"] * v.get("BAND", 1)
    if name in ROWS_WINDOWS:  # HAS_Z: the conv output read from the statistics pass's copy, no dot
        if v.get("HAS_Z"):
            return 0.0
        return grid[1] * v["NUM_TILES"] * 2.0 * v["BLOCK_Q"] * v["PP"] * v["R"] * v["BLOCK_CO"]
    if name == "_rows_dw_kernel":  # BAND > 1: BAND * BLOCK_CO columns (gz's band rows); SHIFTS > 0: SHIFTS * BLOCK_CO
        iters = sum(len(range(s, v["NUM_MT"], v["SPLIT"])) for s in range(grid[2]))
        cols = v["BLOCK_CO"] * v.get("BAND", 1) * max(v.get("SHIFTS", 0), 1)
        return grid[0] * grid[1] * iters * 2.0 * v["BLOCK_M"] * cols * v["BLOCK_RW"]
    if name == "_rows_dx_kernel":  # each channel block walks all NUM_TILES tiles, the phases side by side (x BAND)
        return grid[1] * v["NUM_TILES"] * 2.0 * v["BLOCK_M"] * v["R2"] * v["PHASES"] * v["BLOCK_CI"] * v.get("BAND", 1)
    if name == "_dx_kernel":
        r2 = v["C_OUT"] * v["KMAX"]
        return progs * _cdiv(r2, v["BLOCK_R"]) * 2.0 * v["BLOCK_CI"] * v["BLOCK_Q"] * v["BLOCK_R"]
    raise KeyError(f"no analytic FLOP formula for {name}")


def useful_flops(name: str, v: dict[str, Any]) -> float:
    """Multiply-adds x 2 the launch needs without padding (one conv pass = 2 * C_out * M * R)."""
    if name in ELEMENTWISE or (name in ROWS_WINDOWS and v.get("HAS_Z")):
        return 0.0
    if name == "_conv_bn_relu_pool_kernel":
        return 2.0 * v["C_OUT"] * v["Q"] * v["POOL"] * v["R"]
    if name in ("_conv_stats_kernel", "_bwd_reduce_kernel", "_bwd_gz_kernel", "_dw_kernel"):
        return 2.0 * v["C_OUT"] * v["M"] * v["R"]
    if name == "_bwd_gz_dw_kernel":
        return 2 * 2.0 * v["C_OUT"] * v["M"] * v["R"]
    if name == "_dx_kernel":
        return 2.0 * v["C_OUT"] * v["M"] * v["C_IN"] * v["K"]
    if name == "_rows_stats_kernel":  # KC = K * C_in (R is the band's length where BAND > 1)
        return 2.0 * v["C_OUT"] * v["M"] * v["KC"]
    if name == "_rows_dw_kernel":
        return 2.0 * v["C_OUT"] * v["M"] * v["KC"]
    if name in ("_rows_bn_relu_pool_kernel", "_rows_bwd_reduce_kernel"):  # window tiles never cross a clip
        return 2.0 * v["C_OUT"] * (v["NUM_TILES"] // v["TPC"]) * v["TP"] * v["POOL"] * v["R"]
    if name == "_rows_dx_kernel":  # the taps past k of the last slot per phase are zeros, counted (as _dx_kernel)
        return 2.0 * v["C_IN"] * v["ROWS"] * v["stride"] * v["KC"]  # KC = J * C_out (R2: a band's longer rows)
    if name == "_rows_gz_kernel":
        return 2.0 * v["C_OUT"] * v["R"] * v["T"] * (v["NUM_TILES"] // v["TPC"])
    if name in BANDED:  # tiles never cross a clip: NUM_TILES // TPC clips
        clips = v["NUM_TILES"] // v["TPC"]
        if name == "_band_stats_kernel":
            return 2.0 * v["C_OUT"] * v["K"] * v["T"] * clips
        if name == "_band_gz_dw_kernel":
            return 2 * 2.0 * v["C_OUT"] * v["K"] * v["T"] * clips
        return 2.0 * v["C_OUT"] * v["K"] * v["TP"] * v["POOL"] * clips
    raise KeyError(name)


# ------------------------------------------------------------------------------------------ baselines
def layer_tensors(rows: list[tuple], samples: int, batch: int, elem: int) -> list[dict[str, float]]:
    """Per trunk layer: bytes of input X, conv output Z, pooled output P (per batch), in ``elem`` bytes."""
    out = []
    c_in, length = 1, samples
    for name, c_out, k, s, p, pool in rows:
        t = (length + 2 * p - k) // s + 1
        tp = t // pool if pool else t
        out.append({"layer": name, "X": batch * c_in * length * elem, "Z": batch * c_out * t * elem,
                    "P": batch * c_out * tp * elem, "n_pool": batch * c_out * tp if pool else 0,
                    "W": c_out * c_in * k * elem, "first": name == rows[0][0]})  # fmt: skip
        length, c_in = tp, c_out
    return out


def eager_bytes(t: dict[str, float]) -> float:
    """Eager PyTorch, one block fwd + bwd (bf16 activations): conv reads X writes Z; BN training reads Z
    twice (statistics, normalise) and writes Z; ReLU reads and writes Z; max-pool reads Z, writes P and int64
    indices. Backward: pool reads dP and the indices and writes dZ; ReLU backward reads dZ and its output,
    writes dZ; BN backward reads dZ and Z twice each and writes dZ; conv backward reads dZ and X (dW) and,
    except for conv1, dZ and writes dX. Weights and per-channel vectors ignored."""
    x, z, p, idx = t["X"], t["Z"], t["P"], 8 * t["n_pool"]
    fwd = x + z + 3 * z + 2 * z + ((z + p + idx) if idx else 0)
    bwd = ((p + idx + z) if idx else 0) + 3 * z + 5 * z + (z + x) + (0 if t["first"] else z + x)
    return fwd + bwd


def compile_bytes(t: dict[str, float]) -> float:
    """torch.compile (Inductor), conv in cuDNN, BN / ReLU / pool fused: conv reads X writes Z; one pass
    reads Z for the statistics; one reads Z and writes P and int8 window offsets. Backward: one pass reads Z
    (+ dP, offsets) for BN's sums, one reads them again and writes dZ; cuDNN reads dZ and X (dW) and, except
    for conv1, dZ and writes dX. Z is saved by the forward (Inductor's default partitioner keeps the conv
    output rather than recomputing a cuDNN conv)."""
    x, z, p, off = t["X"], t["Z"], t["P"], t["n_pool"]
    fwd = x + z + z + z + p + off
    bwd = (z + p + off) + (z + p + off + z) + (z + x) + (0 if t["first"] else z + x)
    return fwd + bwd


def conv_flops(t: dict[str, float], rows_row: tuple, elem: int) -> float:
    """Useful conv FLOPs of one block fwd + bwd (forward, dW, and dX except conv1)."""
    _, c_out, k, s, p, pool = rows_row
    z_elems = t["Z"] / elem
    c_in = t["W"] / elem / c_out / k
    one = 2.0 * z_elems * c_in * k
    return one * (2 if t["first"] else 3)
