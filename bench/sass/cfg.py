"""SASS text (``nvdisasm -c -gi``) -> instructions with inlined line info -> control-flow graph -> loops.

Basic blocks are split at labels and after branches / EXIT / RET; a predicated branch or EXIT falls
through, an unconditional one does not. Loops are natural loops of back-edges (an edge to a block that
dominates its source), found on the blocks reachable from the entry (subroutines reached only by CALL,
such as a division slow path, and the trap loop after the last EXIT are not executed in the model).
Instruction classes (issue pipes, memory spaces, MMA shapes) are in ``classify``.
"""

from __future__ import annotations

import dataclasses
import re
from functools import cached_property

_INSTR = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;\s*(?:/\*.*\*/)?\s*$")
_LOC = re.compile(r'^\s*//## File "([^"]+)", line (\d+)')
_LABEL = re.compile(r"^([.\w$]+):\s*$")
_TARGET = re.compile(r"`\(([^)]+)\)")
_PRED = re.compile(r"^@(!?)(U?P[T0-9]+)\s+")
_HI_WORD = re.compile(r"^\s*/\*\s*0x([0-9a-f]{16})\s*\*/\s*$")  # nvdisasm -hex: an instruction's second 64-bit word

Frame = tuple[str, int]  # (file, line)


@dataclasses.dataclass
class Instr:
    offset: int
    pred: str  # "" or e.g. "@!P0"
    opcode: str  # full mnemonic with modifiers, e.g. "LDG.E.U16"
    operands: str
    loc: tuple[Frame, ...]  # innermost frame first, outermost (the kernel) last
    ctrl: int | None = None  # the scheduling control bits (bench/sass/stalls.py), when parsed from ``-hex`` output

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]

    @property
    def never(self) -> bool:
        """Predicated on the constant-false predicate (ptxas padding such as ``@!PT LDS RZ, [RZ]``)."""
        return self.pred in ("@!PT", "@!UPT")

    @property
    def target(self) -> str | None:
        m = _TARGET.search(self.operands)
        return m.group(1) if m else None


def parse(sass: str) -> tuple[list[Instr], dict[str, int]]:
    """Instructions (in address order) of the first function in ``sass`` and label -> instruction index.

    With ``-hex``, each instruction's control bits (bits 105-125 of the 128-bit word, i.e. bits 41-63 of the
    second 64-bit word printed on the line after it) are kept in ``Instr.ctrl``. ``-gi`` prints, when the
    source location changes, one ``//## File`` line per inlining level (innermost first); the location holds
    for the instructions that follow."""
    instrs: list[Instr] = []
    labels: dict[str, int] = {}
    loc: tuple[Frame, ...] = ()
    pending: list[Frame] = []
    for line in sass.splitlines():
        h = _HI_WORD.match(line)
        if h:
            if instrs and instrs[-1].ctrl is None:
                instrs[-1].ctrl = int(h.group(1), 16) >> 41
            continue
        m = _LOC.match(line)
        if m:
            pending.append((m.group(1), int(m.group(2))))
            continue
        if pending:
            loc, pending = tuple(pending), []
        m = _INSTR.match(line)
        if m:
            text = m.group(2).strip()
            pred = ""
            pm = _PRED.match(text)
            if pm:
                pred = "@" + pm.group(1) + pm.group(2)
                text = text[pm.end() :]
            parts = text.split(None, 1)
            instrs.append(Instr(int(m.group(1), 16), pred, parts[0], parts[1] if len(parts) > 1 else "", loc))
            continue
        m = _LABEL.match(line.strip())
        if m and not line.lstrip().startswith("."):  # the function symbol itself
            labels[m.group(1)] = len(instrs)
        elif m:
            labels[m.group(1)] = len(instrs)
    return instrs, labels


@dataclasses.dataclass
class Block:
    index: int
    start: int  # first instruction index
    end: int  # one past the last
    succs: list[int] = dataclasses.field(default_factory=list)
    preds: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Loop:
    header: int
    blocks: frozenset[int]
    latches: tuple[int, ...]  # blocks with a back-edge to the header
    parent: int | None = None  # index into Cfg.loops
    depth: int = 1


class Cfg:
    def __init__(self, sass: str) -> None:
        self.instrs, self.labels = parse(sass)
        if not self.instrs:
            raise ValueError("no SASS instructions found")
        self.blocks = self._split()
        self.reachable = self._reach({0})

    # ---------------------------------------------------------------------------------------- blocks
    def _split(self) -> list[Block]:
        n = len(self.instrs)
        leaders = {0}
        for idx in self.labels.values():
            if idx < n:
                leaders.add(idx)
        for i, ins in enumerate(self.instrs):
            if ins.base in ("BRA", "EXIT", "RET", "BRX", "JMX", "JMP") and i + 1 < n:
                leaders.add(i + 1)
        starts = sorted(leaders)
        blocks = [Block(k, s, starts[k + 1] if k + 1 < len(starts) else n) for k, s in enumerate(starts)]
        at = {b.start: b.index for b in blocks}
        for b in blocks:
            last = self.instrs[b.end - 1]
            fall = b.index + 1 if b.index + 1 < len(blocks) else None
            succ: list[int] = []
            if last.base == "BRA":
                tgt = last.target
                if tgt is None or tgt not in self.labels:
                    raise ValueError(f"branch without a known target at {last.offset:#x}: {last.operands}")
                succ.append(at[self.labels[tgt]])
                if last.pred and not last.never and fall is not None:
                    succ.append(fall)
                elif last.never and fall is not None:  # never taken
                    succ = [fall]
            elif last.base in ("EXIT", "RET"):
                if last.pred and fall is not None:
                    succ.append(fall)
            elif last.base in ("BRX", "JMX", "JMP"):
                raise ValueError(f"indirect branch at {last.offset:#x} is not modelled")
            elif fall is not None:
                succ.append(fall)
            b.succs = list(dict.fromkeys(succ))
        for b in blocks:
            for s in b.succs:
                blocks[s].preds.append(b.index)
        return blocks

    def _reach(self, start: set[int], removed: frozenset[int] = frozenset()) -> set[int]:
        seen = set(s for s in start if s not in removed)
        todo = list(seen)
        while todo:
            b = todo.pop()
            for s in self.blocks[b].succs:
                if s not in seen and s not in removed:
                    seen.add(s)
                    todo.append(s)
        return seen

    def instrs_of(self, b: int) -> list[Instr]:
        blk = self.blocks[b]
        return self.instrs[blk.start : blk.end]

    # ------------------------------------------------------------------------------------ dominators
    @cached_property
    def dominators(self) -> dict[int, set[int]]:
        nodes = sorted(self.reachable)
        dom = {n: set(nodes) for n in nodes}
        dom[0] = {0}
        changed = True
        while changed:
            changed = False
            for n in nodes:
                if n == 0:
                    continue
                preds = [p for p in self.blocks[n].preds if p in self.reachable]
                new = set.intersection(*(dom[p] for p in preds)) if preds else set()
                new = new | {n}
                if new != dom[n]:
                    dom[n], changed = new, True
        return dom

    @cached_property
    def loops(self) -> list[Loop]:
        """Natural loops (back-edges to the same header merged), outermost first, with nesting."""
        dom = self.dominators
        by_header: dict[int, list[int]] = {}
        for b in sorted(self.reachable):
            for s in self.blocks[b].succs:
                if s in dom[b]:
                    by_header.setdefault(s, []).append(b)
        loops = []
        for h, latches in by_header.items():
            body = {h}
            todo = [lt for lt in latches if lt != h]
            body.update(todo)
            while todo:
                b = todo.pop()
                for p in self.blocks[b].preds:
                    if p in self.reachable and p not in body:
                        body.add(p)
                        todo.append(p)
            loops.append(Loop(h, frozenset(body), tuple(latches)))
        loops.sort(key=lambda lp: -len(lp.blocks))
        for i, lp in enumerate(loops):
            enclosing = [j for j in range(i) if lp.blocks < loops[j].blocks]
            if enclosing:
                lp.parent = min(enclosing, key=lambda j: len(loops[j].blocks))
                lp.depth = loops[lp.parent].depth + 1
        return loops

    def loops_of(self, b: int) -> list[int]:
        """Indices of the loops containing block ``b``."""
        return [i for i, lp in enumerate(self.loops) if b in lp.blocks]

    def back_edge_instr(self, loop: Loop) -> Instr:
        """The branch closing the loop (the last latch's last instruction)."""
        latch = max(loop.latches, key=lambda b: self.blocks[b].end)
        return self.instrs[self.blocks[latch].end - 1]

    def guards(self, loop: Loop) -> tuple[set[int], set[int]]:
        """(blocks outside ``loop`` run only when it is entered, blocks run only when it is skipped),
        from the conditional branch that decides whether the loop is entered at all: for each such
        branch block G with successors S1 (reaches the header without passing G) and S2 (does not),
        the blocks reachable from only one of them (G removed)."""
        entered: set[int] = set()
        skipped: set[int] = set()
        parent = self.loops[loop.parent].blocks if loop.parent is not None else frozenset(self.reachable)
        level = {b for b in parent if all(b not in o.blocks for o in self.loops if o.blocks < parent)}
        level |= {loop.header}
        for g in sorted(self.reachable - loop.blocks):
            succ = self.blocks[g].succs
            # a guard sits at the loop's own nesting level and dominates its header
            if len(succ) != 2 or g not in level or g not in self.dominators[loop.header]:
                continue
            removed = frozenset({g})
            r = [self._reach({s}, removed) for s in succ]
            hits = [loop.header in x for x in r]
            if hits[0] == hits[1]:
                continue
            on, off = (r[0], r[1]) if hits[0] else (r[1], r[0])
            entered |= ((on - off) - loop.blocks) & level
            skipped |= (off - on) & level
        return entered, skipped


# -------------------------------------------------------------------------------- classification
PIPES = ("fp32", "imad", "alu", "xu", "mio", "uniform", "tensor", "control")

_FP32 = set(
    (
        "FADD FMUL FFMA FADD32I FMUL32I FFMA32I HADD2 HMUL2 HFMA2 HADD2_32I HMUL2_32I HFMA2_32I FSWZADD "
        "FMNMX FSEL FSET FSETP HSETP2 HMNMX2"
    ).split()
)
_FP32_ALU = set("FMNMX FSEL FSET FSETP HSETP2 HMNMX2".split())  # comparisons / selects: ALU pipe
_IMAD = set("IMAD IMAD32I IMUL IMUL32I IDP IDP4A IMADSP".split())
_ALU = set(
    (
        "IADD3 IADD IADD32I LOP3 LOP LOP32I SHF SHL SHR LEA ISETP ICMP SEL PRMT IABS IMNMX VIMNMX "
        "VIMNMX3 SGXT BMSK PLOP3 PSETP P2R R2P MOV MOV32I CS2R VIADD VIADDMNMX VABSDIFF VABSDIFF4 FLO "
        "POPC BREV F2FP I2FP ISCADD LEPC VOTE VOTEU FCHK I2IP F2IP HADD2.F32"
    ).split()
)
_XU = set("MUFU F2F F2I I2F FRND I2I DADD DMUL DFMA DSETP DMNMX".split())
_MIO = set(
    (
        "LDG STG LD ST LDS STS LDSM STSM LDL STL LDGSTS LDC ATOM ATOMG RED REDG ATOMS SHFL MATCH S2R "
        "CS2R.32 RED.E SUST SULD TLD TEX UBLKCP UTMALDG UTMASTG UTMAPF UBLKRED UTMACMDFLUSH SYNCS"
    ).split()
)
_TENSOR = set("HMMA HGMMA IMMA IGMMA DMMA BMMA QGMMA BGMMA".split())


def pipe(ins: Instr) -> str:
    """The issue pipe of an instruction (names in ``PIPES``; see the report's constants table)."""
    b = ins.base
    if b in _TENSOR:
        return "tensor"
    if b in _IMAD:
        return "imad"
    if b in _FP32_ALU:
        return "alu"
    if b in _FP32:
        return "fp32"
    if b in _XU:
        return "xu"
    if b in _MIO:
        return "mio"
    if b.startswith("U") or b in ("S2UR", "R2UR", "ELECT", "REDUX"):
        return "uniform"
    if b in _ALU:
        return "alu"
    return "control"  # BRA, EXIT, BSSY, BSYNC, BAR, NOP, DEPBAR, LDGDEPBAR, WARPSYNC, MEMBAR, WARPGROUP, ...


_WIDTH = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16, "F16x2": 4, "BF16x2": 4}


def access(ins: Instr) -> tuple[str, int] | None:
    """(space, bytes per warp-instruction assuming 32 active lanes) of a memory instruction, else None.
    Spaces: "global_ld" (L1-cached), "global_ld_bypass" (cp.async.cg: L2 -> shared, L1 bypassed),
    "global_st", "global_atom", "local_ld", "local_st", "shared_ld", "shared_st"."""
    b = ins.base
    mods = ins.opcode.split(".")[1:]
    width = 4
    for m in mods:
        if m in _WIDTH:
            width = _WIDTH[m]
    if b == "LDSM" or b == "STSM":
        n = 4 if "4" in mods else (2 if "2" in mods else 1)
        return ("shared_ld" if b == "LDSM" else "shared_st"), 128 * n
    if b in ("LDG", "LD"):
        return "global_ld", 32 * width
    if b == "LDGSTS":
        return ("global_ld_bypass" if "BYPASS" in mods else "global_ld"), 32 * width
    if b in ("STG", "ST"):
        return "global_st", 32 * width
    if b in ("ATOM", "ATOMG", "RED", "REDG"):
        return "global_atom", 32 * (8 if "64" in mods else 4)
    if b == "LDL":
        return "local_ld", 32 * width
    if b == "STL":
        return "local_st", 32 * width
    if b in ("LDS",):
        return "shared_ld", 32 * width
    if b in ("STS", "ATOMS"):
        return "shared_st", 32 * width
    return None


_HMMA = re.compile(r"^(\d)(\d)(\d+)$")  # e.g. 16816 -> m16 n8 k16, 1688 -> m16 n8 k8, 1684 -> m16 n8 k4
_GMMA = re.compile(r"^(\d+)x(\d+)x(\d+)$")


def mma_shape(ins: Instr) -> tuple[str, int, int, int, str] | None:
    """(kind, m, n, k, operand source) of a tensor-core instruction; FLOPs per warp-instruction follow
    (HGMMA is one warpgroup instruction issued by each of its 4 warps)."""
    mods = ins.opcode.split(".")
    if mods[0] == "HMMA":
        s = mods[1]
        m, rest = int(s[:2]), s[2:]
        n, k = int(rest[0]), int(rest[1:])
        return "HMMA", m, n, k, "registers"
    if mods[0] in ("HGMMA", "QGMMA", "IGMMA", "BGMMA"):
        g = _GMMA.match(mods[1])
        if g is None:
            raise ValueError(f"unrecognised wgmma shape {ins.opcode}")
        ops = [o.strip() for o in ins.operands.split(",")]
        src = "A:registers,B:shared" if len(ops) > 1 and ops[1].startswith("R") else "A:shared,B:shared"
        return mods[0], int(g.group(1)), int(g.group(2)), int(g.group(3)), src
    if mods[0] in ("IMMA", "DMMA", "BMMA"):
        m, rest = int(mods[1][:2]), mods[1][2:]
        return mods[0], m, int(rest[0]), int(rest[1:]), "registers"
    return None


def mma_flops_per_warp_instr(ins: Instr) -> float:
    shape = mma_shape(ins)
    if shape is None:
        return 0.0
    kind, m, n, k, _ = shape
    flops = 2.0 * m * n * k
    return flops / 4 if kind.endswith("GMMA") else flops
