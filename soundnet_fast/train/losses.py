"""The distillation loss (docs/design.md#loss) and the teacher-agreement metric.

For each active head h and each head step t, a term is the per-element divergence between the teacher's
probabilities and the student's, averaged over batch x classes (Torch7's ``DistKLDivCriterion`` with
``sizeAverage``). The total is ``lambda / n_terms`` times the sum of the terms, where ``n_terms`` is the number
of (head, step) terms: main_train.lua scales by ``opt.lambda / #labels`` with 8 labels (2 heads x 4 steps), so
the recipe's total is (250 / 8) x sum of 8 terms = 125 x (mean_obj + mean_scene) (lambda = 250,
docs/design.md#loss). An ablation with one teacher, or a head with T = 2, has fewer terms and keeps the original's
``/ #labels`` normalisation.

The scale is computed explicitly from sums and counts, never through ``reduction="mean"`` (which averages
over (B, C, T) at once, 1/T of the per-step sum, and whose meaning PyTorch is changing). The per-head sum
is the only thing a backend computes, so the fused Triton ``kl_div(..., reduction="sum")`` from
``soundnet_fast.kernels`` drops in for the reference without touching the scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from soundnet_fast.constants import HEADS  # teacher name -> model head, in the model's output order

LossKind = Literal["kl", "l2"]
LAMBDA = 250.0  # docs/design.md#loss (main_train.lua opt.lambda)


def head_sum(logits: Tensor, probs: Tensor, kind: LossKind = "kl", backend: str = "reference") -> Tensor:
    """Sum over (B, C, T) of the per-element loss between student ``logits`` and teacher ``probs``.

    Both are (B, C, T) with classes on dim 1. ``kl``: p * (log p - log_softmax(logits)), with 0 log 0 = 0 as
    Torch7's DistKLDivCriterion skips zero targets. ``l2``: (softmax(logits) - p) ** 2 (docs/design.md#loss's
    L2 ablation). Computed in fp32 whatever the autocast dtype of ``logits``.
    """
    if logits.shape != probs.shape:
        raise ValueError(f"student logits {tuple(logits.shape)} and teacher probabilities {tuple(probs.shape)} differ")
    logits, probs = logits.float(), probs.float()
    if kind == "kl":
        if backend == "fused":
            from soundnet_fast.kernels import kl_div  # torch + triton only; imported on use

            return kl_div(logits, probs, dim=1, reduction="sum")
        return (torch.special.xlogy(probs, probs) - probs * F.log_softmax(logits, dim=1)).sum()
    if kind == "l2":
        return (F.softmax(logits, dim=1) - probs).square().sum()
    raise ValueError(f"loss must be 'kl' or 'l2', got {kind!r}")


def distill_loss(
    outputs: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    *,
    kind: LossKind = "kl",
    lam: float = LAMBDA,
    backend: str = "reference",
) -> tuple[Tensor, dict[str, Tensor]]:
    """The total loss over the heads named in ``targets``, and each head's share of it.

    ``outputs[h]`` are a head's logits (B, C_h, T); ``targets[h]`` the teacher's probabilities in the same
    layout. Heads in ``outputs`` but not in ``targets`` contribute nothing (the ``--teachers`` ablations).
    Returns ``(total, {head: (lam / n_terms) * sum_t term_{h,t}})``; the shares add up to ``total``.
    """
    if not targets:
        raise ValueError("no teacher targets: at least one of 'objects', 'scenes' is needed")
    n_terms = 0
    per_head: dict[str, Tensor] = {}
    for name, probs in targets.items():
        if name not in outputs:
            raise ValueError(f"teacher {name!r} has no matching head; heads are {sorted(outputs)}")
        logits = outputs[name]
        b, c, t = probs.shape
        n_terms += t
        # sum over t of [sum_{b,c} / (B * C)] == sum over (B, C, T) / (B * C): each step term is a mean
        # over batch x classes (DistKLDivCriterion, sizeAverage), the steps are then summed.
        per_head[name] = head_sum(logits, probs, kind, backend) / (b * c)
    scale = lam / n_terms  # main_train.lua: err / #labels * opt.lambda
    shares = {name: scale * v for name, v in per_head.items()}
    total = torch.stack(list(shares.values())).sum()
    return total, shares


def top1_agreement(logits: Tensor, probs: Tensor) -> tuple[Tensor, int]:
    """Number of (clip, step) positions where the student's top class is the teacher's, and their count."""
    agree = (logits.argmax(dim=1) == probs.argmax(dim=1)).sum()
    return agree, int(probs.shape[0] * probs.shape[2])


__all__ = ["HEADS", "LAMBDA", "LossKind", "distill_loss", "head_sum", "top1_agreement"]
