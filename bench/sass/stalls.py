"""Per-warp dependency stalls from the SASS control bits: how many cycles one warp needs for its own instruction
stream, as opposed to how many issue slots it takes.

The first GPU check (bench/results/gpu_check-h200-2026-11-30) measured the static model's instruction counts
within 0.1 % but its times 1.5-6.5x too short: the kernels ran 2-3 warps per scheduler (255 registers) and
each warp waited ~3-4 cycles per instruction (Nsight Compute: ``wait`` 0.8-1.7, ``long_scoreboard`` 0.2-1.25
cycles per issue), so no scheduler issued every cycle as an issue-slot bound assumes. This module predicts that
wait from the compiled code itself:

- **fixed-latency stalls**: every Volta-to-Hopper instruction carries ``ctrl`` bits that ptxas sets
  (bits 105-125 of the 128-bit word; Jia et al., "Dissecting the NVIDIA Volta GPU Architecture via
  Microbenchmarking", 2018, section 2.1): a stall count (cycles before the warp may issue again), a yield
  bit, a write and a read scoreboard (barrier 0-5; 7 = none) and a 6-bit mask of scoreboards to wait on.
  Nsight Compute's ``selected`` + ``wait`` stalls are these counts.
- **scoreboard waits** (``long_scoreboard`` / ``short_scoreboard``): a variable-latency instruction (memory,
  MUFU, S2R, ...) releases its write scoreboard :data:`LATENCY_CYCLES` after it issues; an instruction that
  waits on it stalls for whatever is left of that latency after the cycles the warp spent in between.

``block_cycles`` walks each basic block in program order for one warp alone. A scoreboard set in an earlier
block counts as released, except around a single-block loop, whose previous iteration's producers are carried
into the next (the inner loops of these kernels). What it leaves out, and the GPU check shows: instruction
cache misses (``no_instruction``: 0.01-0.59 cycles per issue), pipe throttles, barrier and dispatch stalls.
"""

from __future__ import annotations

import dataclasses
import math

from . import cfg as cfgmod
from .cfg import Cfg, Instr

NO_BARRIER = 7

# Cycles from issue until a variable-latency result is usable (ASSUMPTIONS, rounded, from Hopper
# microbenchmarks: Luo et al., "Benchmarking and Dissecting the Nvidia Hopper GPU Architecture", 2024,
# arXiv:2402.13499, latency tables: L1 hit ~33, shared ~30, L2 hit ~260 cycles). "global" is an L1 hit:
# these kernels re-read overlapping windows; a kernel streaming from L2 waits longer than modelled.
LATENCY_CYCLES = {
    "global": 33,
    "local": 33,  # spills: written and re-read within a program, L1-resident
    "shared": 30,
    "atomic": 260,  # atomics resolve at L2; also an L2 hit's latency (local_latency)
    "short": 20,  # MUFU, S2R, LDC, SHFL, conversions, tensor cores: the short scoreboard (ASSUMPTION)
}
READ_RELEASE_CYCLES = 10  # a read scoreboard (a store's source registers read): ASSUMPTION
# Spills stay in L1 only while every resident thread's spill area fits in the L1 left beside shared memory:
# 256 KB of L1 + shared per SM (NVIDIA Hopper tuning guide) less the shared-memory carveout, which the driver set
# to 100 KB for the conv kernels the H200 check profiled (Nsight Compute `launch__shared_mem_config_size`
# 102.4 KB; ASSUMPTION for other kernels, or the CTAs' own shared memory if larger). Beyond that a spill reload
# waits an L2 hit.
L1_AND_SHARED_BYTES = 256 * 1024
SHARED_CARVEOUT_BYTES = 100 * 1024


def local_latency(spill_bytes_per_thread: int, threads_resident: int, smem_resident: int) -> int:
    """Cycles a local-memory (spill) load waits: L1's while the resident spill areas fit beside the shared-memory
    carveout, else L2's (see :data:`L1_AND_SHARED_BYTES`)."""
    l1 = L1_AND_SHARED_BYTES - max(SHARED_CARVEOUT_BYTES, smem_resident)
    footprint = spill_bytes_per_thread * threads_resident
    return LATENCY_CYCLES["local"] if footprint <= l1 else LATENCY_CYCLES["atomic"]


@dataclasses.dataclass(frozen=True)
class Ctrl:
    """The decoded control bits of one instruction."""

    stall: int
    yield_: bool
    write: int  # scoreboard released when the result is written (7: none)
    read: int  # scoreboard released when the sources are read (7: none)
    wait: int  # mask of scoreboards 0-5 to wait for before issuing

    @classmethod
    def of(cls, bits: int) -> Ctrl:
        """``bits``: the 23 control bits (the second 64-bit word of the encoding shifted right by 41)."""
        return cls(bits & 0xF, bool((bits >> 4) & 1), (bits >> 5) & 7, (bits >> 8) & 7, (bits >> 11) & 0x3F)


def latency_class(ins: Instr) -> str:
    """Which :data:`LATENCY_CYCLES` entry a scoreboard-releasing instruction follows."""
    a = cfgmod.access(ins)
    if a is None:
        return "short"
    space = a[0]
    if space.startswith("global_atom"):
        return "atomic"
    if space.startswith("global"):
        return "global"
    if space.startswith("local"):
        return "local"
    return "shared"


def _walk(instrs: list[Instr], ready: dict[int, float], local: int) -> tuple[float, dict[int, float]]:
    """(cycles one warp needs for ``instrs`` in order, scoreboard release times relative to the block's end)."""
    t = 0.0
    ready = dict(ready)
    for ins in instrs:
        if ins.ctrl is None:
            raise ValueError(f"no control bits at {ins.offset:#x}: disassemble with nvdisasm -hex")
        c = Ctrl.of(ins.ctrl)
        for sb in range(6):
            if c.wait >> sb & 1 and sb in ready:
                t = max(t, ready.pop(sb))
        issue = t
        t += max(1, c.stall)
        if ins.never:
            continue
        if c.write != NO_BARRIER:
            kind = latency_class(ins)
            ready[c.write] = issue + (local if kind == "local" else LATENCY_CYCLES[kind])
        if c.read != NO_BARRIER:
            ready[c.read] = max(ready.get(c.read, 0.0), issue + READ_RELEASE_CYCLES)
    return t, {sb: r - t for sb, r in ready.items() if r > t}


def block_cycles(g: Cfg, local: int = LATENCY_CYCLES["local"]) -> dict[int, float]:
    """Cycles one warp alone needs per execution of each reachable block (issue + fixed stalls + exposed
    scoreboard waits); a block that branches to itself is walked twice, its second pass carrying the first
    pass's outstanding scoreboards, and the second pass counts. ``local``: a spill reload's latency
    (:func:`local_latency`)."""
    out: dict[int, float] = {}
    for b in g.reachable:
        instrs = g.instrs_of(b)
        cycles, carry = _walk(instrs, {}, local)
        if b in g.blocks[b].succs and carry:
            cycles, _ = _walk(instrs, carry, local)
        out[b] = cycles
    return out


def fixed_stall_mean(g: Cfg, freq: dict[int, float]) -> float:
    """Mean stall count (``max(1, stall)``) over the executed instruction stream (``freq``: executions per
    block): the static counterpart of Nsight Compute's ``selected`` + ``wait`` cycles per issue."""
    n = s = 0.0
    for b, f in freq.items():
        for ins in g.instrs_of(b):
            n += f
            s += f * max(1, Ctrl.of(ins.ctrl).stall) if ins.ctrl is not None else f
    return s / n if n else 0.0


def issue_rate(warps: float, delay: float, demands: list[float]) -> float:
    """Warp-instructions per cycle one scheduler issues (exact mean value analysis of a closed queueing network;
    Reiser & Lavenberg, "Mean-Value Analysis of Closed Multichain Queuing Networks", JACM 1980).

    ``warps`` warps circulate: each instruction spends ``delay`` cycles in its own dependency stalls (a delay
    station: one warp's alone-cycles per instruction minus its issue cycle) and ``demands[i]`` cycles at each
    shared server (the scheduler's issue slot, 1; a pipe at rate r warp-instructions per cycle, its share of the
    mix / r), where warps queue for each other. Fractional ``warps`` interpolate linearly between the neighbouring whole
    populations (below one warp, in proportion to the one-warp rate).
    """
    if warps <= 0:
        return 0.0

    def solve(n: int) -> float:
        queue = [0.0] * len(demands)
        rate = 0.0
        for k in range(1, n + 1):
            resid = [d * (1.0 + q) for d, q in zip(demands, queue, strict=True)]
            rate = k / (delay + sum(resid))
            queue = [rate * r for r in resid]
        return rate

    lo, hi = math.floor(warps), math.ceil(warps)
    if lo == hi:
        return solve(lo)
    low = solve(lo) if lo >= 1 else 0.0
    return low + (solve(hi) - low) * (warps - lo)
