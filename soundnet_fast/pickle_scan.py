"""Check a pickle's opcodes before any unpickler sees them, executing nothing.

Restricting globals stops code from running, but an unpickler can still be crashed by the shape of the data:
a tuple nested a million deep (a 1 MB file) overflows the C stack when it is hashed as a dict key, in
CPython's own unpickler and in torch's weights-only one alike (a segfault, not an exception). :func:`scan`
walks the opcodes with :func:`pickletools.genops`, simulates the stack as nesting depths only, and refuses
pickles that nest deeper than ``max_depth``, that are longer than ``max_opcodes``, or that use an opcode
outside ``allowed``. It reads the pickle once and leaves the file where the pickle ends.
"""

from __future__ import annotations

import pickle
import pickletools
from collections.abc import Collection
from typing import BinaryIO

MAX_DEPTH = 64  # weights nest ~6 deep (checkpoint -> dict -> tensor rebuild args -> tuples)
_MARK = -1  # a MARK on the simulated stack
# Opcodes that add items to the container below them and leave that container on the stack.
_MUTATORS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})


def scan(
    f: BinaryIO,
    *,
    allowed: Collection[str] | None = None,
    max_opcodes: int | None = None,
    max_depth: int = MAX_DEPTH,
) -> int:
    """Walk one pickle from ``f``'s position to its STOP; returns the number of opcodes.

    ``allowed``: opcode names (``pickletools`` names) permitted, or None for all. Raises
    :class:`pickle.UnpicklingError` naming the opcode and byte offset for a refused opcode, for more than
    ``max_opcodes`` opcodes, or for nesting deeper than ``max_depth`` containers; ``ValueError`` from
    ``genops`` for a truncated or malformed pickle.
    """
    stack: list[int] = []  # nesting depth of each item: 0 for a scalar, 1 + deepest child for a container
    memo: dict[object, int] = {}
    count = 0
    for count, (op, arg, pos) in enumerate(pickletools.genops(f), start=1):  # noqa: B007 - count is returned
        name = op.name
        if allowed is not None and name not in allowed:
            raise pickle.UnpicklingError(f"pickle opcode {name} at byte {pos} is not used by the format")
        if max_opcodes is not None and count > max_opcodes:
            raise pickle.UnpicklingError(f"more than {max_opcodes:,} pickle opcodes")
        if name == "MARK":
            stack.append(_MARK)
            continue
        if name in _MEMO_PUT or name == "MEMOIZE":
            memo[arg if name in _MEMO_PUT else len(memo)] = stack[-1] if stack else 0
            continue
        if name in _MEMO_GET:
            stack.append(memo.get(arg, 0))
            continue
        items = _pop(stack, op)
        if name == "DUP":
            stack += items * 2
            continue
        if not op.stack_after:
            continue
        if name in _MUTATORS:
            depth = max([items[0]] + [1 + d for d in items[1:]])
        else:
            depth = 1 + max(items, default=-1)
        if depth > max_depth:
            raise pickle.UnpicklingError(f"pickle nests deeper than {max_depth} at byte {pos} ({name})")
        stack.append(depth)
    return count


def _pop(stack: list[int], op: pickletools.OpcodeInfo) -> list[int]:
    """Pop ``op``'s arguments (depths), the item below a MARK first; a missing item counts as depth 0."""
    before = op.stack_before
    if pickletools.markobject in before:
        sliced: list[int] = []
        while stack and stack[-1] != _MARK:
            sliced.append(stack.pop())
        if stack:
            stack.pop()
        fixed = [stack.pop() if stack else 0 for _ in range(before.index(pickletools.markobject))][::-1]
        return fixed + sliced[::-1]
    n = len(before)
    items = stack[len(stack) - n :] if n else []
    del stack[len(stack) - len(items) :]
    return [0] * (n - len(items)) + [d if d != _MARK else 0 for d in items]
