"""What an autograd graph keeps alive for its backward (docs/design.md#memory-accounting).

``saved_activation_bytes(output)`` walks ``output.grad_fn`` and its ``next_functions`` and adds up the
storages of every tensor the graph holds for the backward: the ``_saved_*`` attributes of built-in
nodes, ``saved_tensors`` of custom Functions, and tensors kept as plain attributes of a custom
Function's ctx (``saved_tensors_hooks`` does not see those). Storages are counted once each (two
views of one buffer are one buffer), and tensors listed in ``exclude`` (usually the model's parameters
and buffers, which exist with or without a graph) are not counted. Works on meta tensors too, so the
policy of what a graph saves can be measured at full size without running the kernels.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor


def _tensors(value: object) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _key(t: Tensor) -> tuple[str, int]:
    storage = t.untyped_storage()
    # Meta tensors have no data pointer; the StorageImpl address identifies a storage everywhere.
    return (str(t.device), storage._cdata)


def saved_tensors(output: Tensor | Iterable[Tensor]) -> list[Tensor]:
    """Every tensor held by the autograd graph behind ``output`` for its backward (with repeats)."""
    outs = [output] if isinstance(output, Tensor) else list(output)
    stack = [t.grad_fn for t in outs if t.grad_fn is not None]
    seen: set[int] = set()
    found: list[Tensor] = []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for name in dir(node):
            if name.startswith("_saved_"):
                try:
                    found += _tensors(getattr(node, name))
                except RuntimeError:  # already freed by a backward
                    pass
        if hasattr(node, "saved_tensors"):  # custom autograd.Function (also torch.library ops)
            try:
                found += _tensors(tuple(node.saved_tensors))
            except RuntimeError:
                pass
            for value in getattr(node, "__dict__", {}).values():  # tensors kept as ctx attributes
                found += _tensors(value)
        stack += [fn for fn, _ in node.next_functions if fn is not None]
    return found


def saved_activation_bytes(output: Tensor | Iterable[Tensor], exclude: Iterable[Tensor] = ()) -> int:
    """Bytes of the distinct storages the graph behind ``output`` keeps for its backward, leaving
    out the storages of ``exclude`` (e.g. ``[*model.parameters(), *model.buffers()]``)."""
    skip = {_key(t) for t in exclude}
    sizes: dict[tuple[str, int], int] = {}
    for t in saved_tensors(output):
        k = _key(t)
        if k not in skip:
            sizes[k] = t.untyped_storage().nbytes()
    return sum(sizes.values())
