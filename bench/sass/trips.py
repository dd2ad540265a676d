"""Trip counts of SASS loops from the Triton source loops they came from, evaluated on the launch arguments.

A SASS loop is mapped to a source ``for`` through the line info of its closing branch (nvdisasm ``-gi``
gives the whole inlining chain, e.g. ``_conv_fwd.py:44`` (conv_tile's ``for r0 in range(0, R, BLOCK_R)``)
inlined at ``_conv_fwd.py:99`` inside ``_conv_stats_kernel``). The ``range`` arguments are then evaluated
by walking that chain outwards: a callee's parameter is the caller's argument expression at the call site,
a local is its (single) assignment, the kernel's parameters are the bound launch arguments, and
``tl.program_id(axis)`` is every program id along that grid axis (so per-program trip counts, such as the
split-K ``range(pid_s, NUM_MT, SPLIT)``, are exact when summed over the grid).

Triton's software pipeliner keeps the loop's trip count (loads for later stages are predicated in the
loop, the prologue loads the first stages), so a SASS loop runs once per source iteration; a loop that
ptxas unrolled or peeled would break that, which the MMA-FLOP invariant of the model catches.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .cfg import Cfg, Frame, Loop


class TripError(ValueError):
    pass


@functools.cache
def _module_ast(path: str) -> ast.Module:
    return ast.parse(Path(path).read_text())


def _functions(path: str) -> list[ast.FunctionDef]:
    return [n for n in ast.walk(_module_ast(path)) if isinstance(n, ast.FunctionDef)]


def function_at(path: str, line: int) -> ast.FunctionDef | None:
    best = None
    for f in _functions(path):
        if f.lineno <= line <= (f.end_lineno or f.lineno):
            if best is None or f.lineno > best.lineno:
                best = f
    return best


def for_at(path: str, line: int) -> ast.For | None:
    if not Path(path).exists():
        return None
    for n in ast.walk(_module_ast(path)):
        if isinstance(n, ast.For) and n.lineno == line:
            return n
    return None


def _module_globals(path: str) -> dict[str, Any]:
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and Path(f).resolve() == Path(path).resolve():
            return vars(mod)
    return {}


class Evaluator:
    """Evaluates scalar expressions at one frame of an inlining chain (innermost frame first)."""

    def __init__(self, chain: tuple[Frame, ...], launch: dict[str, Any], grid: tuple[int, ...]) -> None:
        self.chain = chain
        self.launch = launch
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.funcs = [function_at(f, ln) for f, ln in chain]
        if any(fn is None for fn in self.funcs):
            raise TripError(f"no function around {chain}")

    def program_id(self, axis: int) -> np.ndarray:
        shape = [1, 1, 1]
        shape[axis] = self.grid[axis]
        return np.arange(self.grid[axis], dtype=np.int64).reshape(shape)

    def name(self, level: int, name: str) -> Any:
        fn = self.funcs[level]
        params = [a.arg for a in fn.args.args]
        if name in params:
            if level == len(self.chain) - 1:
                if name not in self.launch:
                    raise TripError(f"launch argument {name} unknown")
                return self.launch[name]
            return self.evaluate(level + 1, self._call_arg(level, name, params))
        assigns = [n for n in ast.walk(fn) if isinstance(n, ast.Assign) and len(n.targets) == 1
                   and isinstance(n.targets[0], ast.Name) and n.targets[0].id == name]  # fmt: skip
        if len(assigns) == 1:
            return self.evaluate(level, assigns[0].value)
        if assigns:
            raise TripError(f"{name} is assigned {len(assigns)} times in {fn.name}")
        glob = _module_globals(self.chain[level][0])
        if name in glob:
            v = glob[name]
            return getattr(v, "value", v)  # tl.constexpr globals
        raise TripError(f"cannot resolve {name} in {fn.name}")

    def _call_arg(self, level: int, name: str, params: list[str]) -> ast.expr:
        callee = self.funcs[level].name
        caller_file, call_line = self.chain[level + 1]
        caller = self.funcs[level + 1]
        calls = [n for n in ast.walk(caller) if isinstance(n, ast.Call) and n.lineno <= call_line
                 <= (n.end_lineno or n.lineno) and _callee_name(n) == callee]  # fmt: skip
        if not calls:
            raise TripError(f"no call of {callee} at {caller_file}:{call_line}")
        call = min(calls, key=lambda c: call_line - c.lineno)
        for kw in call.keywords:
            if kw.arg == name:
                return kw.value
        i = params.index(name)
        if i < len(call.args):
            return call.args[i]
        fn = self.funcs[level]
        defaults = fn.args.defaults
        j = i - (len(params) - len(defaults))
        if j >= 0:
            return defaults[j]
        raise TripError(f"argument {name} of {callee} missing at {caller_file}:{call_line}")

    def evaluate(self, level: int, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self.name(level, node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -self.evaluate(level, node.operand)
        if isinstance(node, ast.BinOp):
            a, b = self.evaluate(level, node.left), self.evaluate(level, node.right)
            ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
                   ast.FloorDiv: lambda: a // b, ast.Mod: lambda: a % b}  # fmt: skip
            if type(node.op) not in ops:
                raise TripError(f"operator {type(node.op).__name__} not modelled")
            return ops[type(node.op)]()
        if isinstance(node, ast.Call):
            fname = _callee_name(node)
            args = node.args
            if fname == "program_id":
                return self.program_id(int(self.evaluate(level, args[0])))
            if fname == "num_programs":
                return self.grid[int(self.evaluate(level, args[0]))]
            vals = [self.evaluate(level, a) for a in args]
            if fname == "cdiv":
                return (vals[0] + vals[1] - 1) // vals[1]
            if fname in ("maximum", "max"):
                return np.maximum(vals[0], vals[1])
            if fname in ("minimum", "min"):
                return np.minimum(vals[0], vals[1])
            if fname == "to" and isinstance(node.func, ast.Attribute):
                return self.evaluate(level, node.func.value)
            if fname == "int":
                return vals[0]
            raise TripError(f"call {fname} not modelled")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Call):
            return self.evaluate(level, node.value)
        raise TripError(f"expression {ast.dump(node)[:80]} not modelled")


def _callee_name(call: ast.Call) -> str:
    f = call.func
    if isinstance(f, ast.Attribute):
        return f.attr
    if isinstance(f, ast.Name):
        return f.id
    return ""


def range_trips(ev: Evaluator, level: int, loop: ast.For) -> Any:
    it = loop.iter
    if not (isinstance(it, ast.Call) and _callee_name(it) in ("range", "static_range")):
        raise TripError(f"loop at line {loop.lineno} is not over range()")
    vals = [ev.evaluate(level, a) for a in it.args]
    start, stop, step = (0, vals[0], 1) if len(vals) == 1 else (vals[0], vals[1], vals[2] if len(vals) > 2 else 1)
    if np.any(np.asarray(step) <= 0):
        raise TripError("non-positive range step")
    return np.maximum(0, (stop - start + step - 1) // step)


def for_around(path: str, line: int) -> ast.For | None:
    """The innermost ``for`` statement whose body holds ``line`` (None if none does)."""
    if not Path(path).exists():
        return None
    best = None
    for n in ast.walk(_module_ast(path)):
        if isinstance(n, ast.For) and n.lineno < line <= (n.end_lineno or n.lineno):
            if best is None or n.lineno > best.lineno:
                best = n
    return best


def _direct_loop(cfg: Cfg, loop: Loop) -> tuple[int, ast.For, tuple[Frame, ...]] | None:
    """The innermost frame of the loop's closing branch's inlining chain that is a ``for`` statement, or None."""
    ins = cfg.back_edge_instr(loop)
    for level, (path, line) in enumerate(ins.loc):
        node = for_at(path, line)
        if node is not None:
            return level, node, ins.loc
    return None


def source_loop(cfg: Cfg, loop: Loop, claimed: frozenset = frozenset()) -> tuple[int, ast.For, tuple[Frame, ...]]:
    """(chain level, For node, chain) of the source loop a SASS loop implements: the innermost frame of
    its closing branch's inlining chain that is a ``for`` statement. ptxas sometimes gives the closing branch the
    line of a statement of the body, or of an inlined helper's body with its caller's frame lost: then, of the
    ``for`` statements no other loop's closing branch names (``claimed``: (path, line)), the one most instructions
    of the loop's own blocks name (the induction variable's update and compare carry its line), or else the
    innermost ``for`` around the branch's own line."""
    direct = _direct_loop(cfg, loop)
    if direct is not None:
        return direct
    ins = cfg.back_edge_instr(loop)
    inner = set().union(*(o.blocks for o in cfg.loops if o is not loop and o.blocks < loop.blocks))
    votes: dict[tuple[str, int, int], list] = {}
    for b in sorted(loop.blocks - inner):
        for other in cfg.instrs_of(b):
            for level, (path, line) in enumerate(other.loc or ()):
                node = for_at(path, line)
                if node is not None and (path, line) not in claimed:
                    votes.setdefault((path, line, level), []).append((level, node, other.loc))
                    break
    if votes:
        return max(votes.values(), key=len)[0]
    for level, (path, line) in enumerate(ins.loc):
        node = for_around(path, line)
        if node is not None:
            return level, node, ins.loc
    raise TripError(f"loop closing at {ins.offset:#x} has no source for-loop in its line info {ins.loc}")


def loop_trips(cfg: Cfg, launch: dict[str, Any], grid: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per SASS loop: its source location and per-program trip counts (array broadcastable to the grid)."""
    direct = [_direct_loop(cfg, lp) for lp in cfg.loops]
    claimed = frozenset(d[2][d[0]] for d in direct if d is not None)
    out = []
    for lp, d in zip(cfg.loops, direct, strict=True):
        level, node, chain = d if d is not None else source_loop(cfg, lp, claimed)
        ev = Evaluator(chain, launch, grid)
        trips = range_trips(ev, level, node)
        path, line = chain[level]
        out.append({"source": f"{Path(path).name}:{line}", "text": ast.unparse(node.iter), "trips": trips})
    return out


def block_frequencies(cfg: Cfg, trips: list[Any], grid: tuple[int, ...]) -> dict[int, float]:
    """Executions per warp summed over all programs of the grid, per reachable block: the product of the
    trip counts of the loops around it; blocks run only when a loop is entered (skipped) count only for
    programs where its trip count is > 0 (== 0). Other forward branches are taken as executing both
    sides (the instructions of a branch-skipped region count as issued: an upper bound)."""
    g = tuple(grid) + (1,) * (3 - len(grid))
    guards = [cfg.guards(lp) for lp in cfg.loops]
    freq: dict[int, float] = {}
    for b in sorted(cfg.reachable):
        f: Any = np.ones((1, 1, 1), dtype=np.float64)
        for i, lp in enumerate(cfg.loops):
            t = np.asarray(trips[i], dtype=np.float64)
            if b in lp.blocks:
                f = f * t
            elif b in guards[i][0]:
                f = f * (t > 0)
            elif b in guards[i][1]:
                f = f * (t == 0)
        freq[b] = float(np.broadcast_to(f, g).sum())
    return freq
