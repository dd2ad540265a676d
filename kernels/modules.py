"""``FusedConv1dBNReLU`` and the model rewrites ``fuse``, ``unfuse`` and ``fold``.

``FusedConv1dBNReLU`` is an ``nn.Sequential(Conv1d, BatchNorm1d, ReLU[, MaxPool1d])`` (children "0",
"1", "2"[, "3"], so its state_dict is that Sequential's, key for key) whose forward runs the one fused
op ``conv1d_bn_relu``. The parameters and buffers are the original modules' own objects, so an
optimizer built before ``fuse()`` keeps training the same tensors.

``fuse(model)`` rewrites runs of consecutive children Conv1d -> BatchNorm1d -> ReLU (-> MaxPool1d with
kernel == stride) inside plain ``nn.Sequential`` containers (subclasses that override ``forward`` are
left alone: their forward may not run children in order). A container that is exactly one run is
replaced whole, which keeps every state_dict key; a run inside a longer container takes the run's
first slot and the other slots become ``FusedAway`` placeholders (an ``nn.Identity``), the
convention of ``torch.ao.quantization.fuse_modules``, so later children keep their indices.
``unfuse(model)`` restores the plain modules exactly. ``fold(model)`` (inference) folds eval-mode
BatchNorm into the preceding conv's weight and bias, and asks modules that know how to fold themselves (a
``fold_bn_for_inference()`` method, as SoundNet's blocks have) to do so.
"""

from __future__ import annotations

import collections

import torch
from torch import Tensor, nn

from .conv_bn_relu import conv1d_bn_relu


class FusedAway(nn.Identity):
    """Placeholder for a child that ``fuse()`` moved into the preceding ``FusedConv1dBNReLU``."""


def conv_refusal(conv: nn.Module) -> str | None:
    """Why ``conv`` cannot be fused (None when it can)."""
    if not isinstance(conv, nn.Conv1d) or isinstance(conv, nn.modules.lazy.LazyModuleMixin):
        return f"expected an nn.Conv1d, got {type(conv).__name__}"
    if isinstance(conv.padding, str):
        return f"string padding {conv.padding!r} is not supported (pass an int)"
    if tuple(conv.dilation) != (1,):
        return f"dilation {conv.dilation} is not supported (only 1)"
    if conv.groups != 1:
        return f"groups={conv.groups} is not supported (only 1)"
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} is not supported (only 'zeros')"
    return None


def bn_refusal(bn: nn.Module, channels: int) -> str | None:
    if not isinstance(bn, nn.BatchNorm1d) or isinstance(bn, nn.modules.lazy.LazyModuleMixin):
        return f"expected an nn.BatchNorm1d, got {type(bn).__name__}"
    if not bn.affine:
        return "BatchNorm1d with affine=False is not fused"
    if not bn.track_running_stats:
        return "BatchNorm1d with track_running_stats=False is not fused"
    if bn.num_features != channels:
        return f"BatchNorm1d has {bn.num_features} features, the conv {channels} channels"
    return None


def pool_refusal(pool: nn.Module) -> str | None:
    if not isinstance(pool, nn.MaxPool1d):
        return f"expected an nn.MaxPool1d, got {type(pool).__name__}"
    k = _one(pool.kernel_size)
    s = _one(pool.stride) if pool.stride is not None else k
    if k != s or _one(pool.padding) != 0 or _one(pool.dilation) != 1 or pool.ceil_mode or pool.return_indices:
        return (
            "only MaxPool1d with kernel == stride, no padding, dilation 1, floor mode and no indices is "
            f"fused, got {pool}"
        )
    return None


def _one(v: int | tuple[int, ...]) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def conv_bn_relu_modules(
    x: Tensor,
    conv: nn.Conv1d,
    bn: nn.BatchNorm1d,
    *,
    pool: int | None = None,
    process_group: torch.distributed.ProcessGroup | None = None,
    deterministic: bool | None = None,
    feeds: tuple[int, int, int, int, int | None] | None = None,
    padded_input: bool = False,
) -> Tensor:
    """:func:`conv1d_bn_relu` on the parameters and buffers of existing ``conv`` and ``bn`` modules, with
    ``bn``'s mode: batch statistics in training (or without running statistics), running ones in eval.
    The one place that maps modules to the op's arguments (``FusedConv1dBNReLU`` and model blocks use it);
    ``feeds`` / ``padded_input``: chaining into / from the neighbouring fused block, as the op's."""
    update = bn.training and bn.running_mean is not None
    return conv1d_bn_relu(
        x,
        conv.weight,
        conv.bias,
        bn.weight,
        bn.bias,
        bn.running_mean,
        bn.running_var,
        stride=_one(conv.stride),
        padding=_one(conv.padding),
        training=bn.training or bn.running_mean is None,
        momentum=bn.momentum,
        eps=bn.eps,
        pool=pool,
        process_group=process_group,
        num_batches_tracked=bn.num_batches_tracked if update else None,
        deterministic=deterministic,
        feeds=feeds,
        padded_input=padded_input,
    )


class FusedConv1dBNReLU(nn.Sequential):
    """Conv1d -> BatchNorm1d -> ReLU (-> MaxPool1d, kernel == stride) in one fused op.

    Build it like the layers it replaces, or from existing modules with :meth:`from_modules`.
    ``process_group`` gives SyncBatchNorm semantics; ``deterministic`` (None: follow
    ``torch.are_deterministic_algorithms_enabled()``) picks the atomics-free backward.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        pool: int | None = None,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        process_group: torch.distributed.ProcessGroup | None = None,
        deterministic: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        kw = {"device": device, "dtype": dtype}
        layers: list[nn.Module] = [
            nn.Conv1d(in_channels, out_channels, kernel_size, stride, padding, bias=bias, **kw),
            nn.BatchNorm1d(out_channels, eps=eps, momentum=momentum, **kw),
            nn.ReLU(),
        ]
        if pool is not None:
            layers.append(nn.MaxPool1d(pool, pool))
        super().__init__(*layers)
        self._check()
        self.process_group = process_group
        self.deterministic = deterministic

    @classmethod
    def from_modules(
        cls,
        conv: nn.Conv1d,
        bn: nn.BatchNorm1d,
        relu: nn.ReLU | None = None,
        pool: nn.MaxPool1d | None = None,
        process_group: torch.distributed.ProcessGroup | None = None,
        deterministic: bool | None = None,
    ) -> FusedConv1dBNReLU:
        """Wrap existing modules (their parameters and buffers are shared, not copied)."""
        self = cls.__new__(cls)
        mods = [conv, bn, relu if relu is not None else nn.ReLU()] + ([pool] if pool is not None else [])
        nn.Sequential.__init__(self, *mods)
        self._check()
        self.process_group = process_group
        self.deterministic = deterministic
        return self

    def _check(self) -> None:
        reason = conv_refusal(self[0]) or bn_refusal(self[1], self[0].out_channels)
        if reason is None and not isinstance(self[2], nn.ReLU):
            reason = f"expected an nn.ReLU, got {type(self[2]).__name__}"
        if reason is None and len(self) > 3:
            reason = pool_refusal(self[3])
        if reason is not None:
            raise ValueError(f"FusedConv1dBNReLU: {reason}")

    @property
    def pool(self) -> int | None:
        return _one(self[3].kernel_size) if len(self) > 3 else None

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return conv_bn_relu_modules(
            x, self[0], self[1], pool=self.pool, process_group=self.process_group, deterministic=self.deterministic
        )


def _is_plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _match(children: list[nn.Module], i: int, uses: collections.Counter) -> int:
    """Length of the fusable run starting at children[i]: 4 (with pool), 3, or 0."""
    if i + 3 > len(children):
        return 0
    conv, bn, relu = children[i : i + 3]
    if conv_refusal(conv) or bn_refusal(bn, getattr(conv, "out_channels", -1)) or not isinstance(relu, nn.ReLU):
        return 0
    if uses[id(conv)] > 1 or uses[id(bn)] > 1:  # shared between two places: fusing one would split it
        return 0
    if i + 3 < len(children) and pool_refusal(children[i + 3]) is None:
        return 4
    return 3


def fuse(model: nn.Module) -> int:
    """Replace every fusable Conv1d -> BatchNorm1d -> ReLU (-> MaxPool1d) run by a FusedConv1dBNReLU;
    returns how many runs were replaced. Left alone: dilation != 1, groups != 1, padding_mode !=
    'zeros', string padding, BN with affine=False or track_running_stats=False, a conv or BN module
    used in more than one place, and containers whose forward is not nn.Sequential's. A MaxPool1d that
    cannot be fused (kernel != stride, padding, dilation, ceil_mode) stays as its own module after
    the fused conv-BN-ReLU."""
    uses = collections.Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not _is_plain_sequential(child):
                continue
            kids = list(child.children())
            if len(kids) in (3, 4) and _match(kids, 0, uses) == len(kids):  # the whole container
                setattr(parent, name, FusedConv1dBNReLU.from_modules(*kids))
                count += 1
    for container in [m for m in model.modules() if _is_plain_sequential(m)]:
        names = list(container._modules.keys())
        kids = [container._modules[k] for k in names]
        i = 0
        while i < len(kids):
            n = _match(kids, i, uses)
            if n == 0:
                i += 1
                continue
            container._modules[names[i]] = FusedConv1dBNReLU.from_modules(*kids[i : i + n])
            for k in names[i + 1 : i + n]:
                container._modules[k] = FusedAway()
            count += 1
            i += n
    return count


def unfuse(model: nn.Module) -> int:
    """Undo ``fuse``: every FusedConv1dBNReLU below ``model`` becomes its plain modules again (in its
    slots, or as an nn.Sequential with the same state_dict keys). Returns how many were undone."""
    count = 0
    for parent in list(model.modules()):
        names = list(parent._modules.keys())
        for j, name in enumerate(names):
            child = parent._modules[name]
            if not isinstance(child, FusedConv1dBNReLU):
                continue
            kids = list(child.children())
            slots = names[j + 1 : j + len(kids)]
            if len(slots) == len(kids) - 1 and all(isinstance(parent._modules[k], FusedAway) for k in slots):
                for k, m in zip([name, *slots], kids, strict=True):
                    parent._modules[k] = m
            else:
                parent._modules[name] = nn.Sequential(*kids)
            count += 1
    return count


@torch.no_grad()
def _folded(conv: nn.Conv1d, bn: nn.BatchNorm1d) -> nn.Conv1d:
    scale = bn.weight.double() * torch.rsqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    new = nn.Conv1d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        True,
        conv.padding_mode,
        conv.weight.device,
        conv.weight.dtype,
    )
    new.weight.copy_(conv.weight.double() * scale[:, None, None])
    new.bias.copy_((bias - bn.running_mean.double()) * scale + bn.bias.double())
    return new


def fold(model: nn.Module) -> int:
    """For inference: fold each eval-mode BatchNorm1d into the Conv1d before it; returns how many were folded.

    - Modules that fold themselves: a module with a callable ``fold_bn_for_inference()`` (duck-typed; SoundNet's
      blocks, ``soundnet_fast.model.Block``) is asked to. It returns True when it folded now and False when
      there was nothing to fold (already folded, say), keeps its own state dict, and decides how it runs folded;
      fold() leaves its children alone. On SoundNet this folds every block (the count is the number of blocks;
      0 on a second call).
    - FusedConv1dBNReLU modules and consecutive Conv1d -> BatchNorm1d children of plain nn.Sequential
      containers: the BN becomes an nn.Identity and the conv a new nn.Conv1d; a FusedConv1dBNReLU becomes a
      plain nn.Sequential(conv, Identity, ReLU[, MaxPool1d]). These rewrites change the state dict's keys.

    Raises ValueError when a module it would fold is in training mode (every self-folding module is checked
    before any of them folds)."""
    own: list[nn.Module] = []  # outermost self-folding modules; everything inside them is theirs
    inside: set[int] = set()
    for m in model.modules():
        if id(m) not in inside and callable(getattr(m, "fold_bn_for_inference", None)):
            own.append(m)
            inside.update(id(sub) for sub in m.modules())
    if any(sub.training for m in own for sub in m.modules()):  # checked before any folds: all or nothing
        raise ValueError("fold() is for inference: a module is in training mode (call model.eval() first)")
    count = sum(bool(m.fold_bn_for_inference()) for m in own)
    uses = collections.Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))

    def foldable(conv: nn.Module, bn: nn.Module) -> bool:
        ok = (
            isinstance(conv, nn.Conv1d)
            and isinstance(bn, nn.BatchNorm1d)
            and bn.track_running_stats
            and bn.affine
            and bn.num_features == conv.out_channels
            and uses[id(bn)] == 1
            and uses[id(conv)] == 1
        )
        if ok and bn.training:
            raise ValueError("fold() is for inference: BatchNorm1d in training mode (call model.eval() first)")
        return ok

    for parent in [m for m in model.modules() if id(m) not in inside]:
        for name, child in list(parent._modules.items()):
            if isinstance(child, FusedConv1dBNReLU) and foldable(child[0], child[1]):
                kids = list(child.children())
                parent._modules[name] = nn.Sequential(_folded(kids[0], kids[1]), nn.Identity(), *kids[2:])
                count += 1
    for container in [m for m in model.modules() if _is_plain_sequential(m) and id(m) not in inside]:
        names = list(container._modules.keys())
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = container._modules[a], container._modules[b]
            if foldable(conv, bn):
                container._modules[a] = _folded(conv, bn)
                container._modules[b] = nn.Identity()
                count += 1
    return count
