"""The distillation loss against a hand computation of docs/design.md#loss's formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from soundnet_fast.train.losses import LAMBDA, distill_loss, head_sum, top1_agreement


def _batch(seed: int = 0, b: int = 3, t: int = 4, classes: dict[str, int] | None = None):
    classes = {"objects": 5, "scenes": 4} if classes is None else classes
    g = torch.Generator().manual_seed(seed)
    logits = {k: torch.randn(b, c, t, generator=g) * 3 for k, c in classes.items()}
    probs = {}
    for k, c in classes.items():
        p = torch.rand(b, c, t, generator=g) ** 3
        p[0, 0, :] = 0.0  # exact zeros: 0 log 0 = 0, as Torch7's DistKLDivCriterion skips them
        probs[k] = p / p.sum(dim=1, keepdim=True)
    return logits, probs


def _hand(logits, probs, kind: str, lam: float = LAMBDA) -> float:
    """(lambda / n_terms) x sum over (head, step) of [sum over batch x classes / (B * C)], in float64 loops."""
    total, n_terms = 0.0, 0
    for h in probs:
        z, p = logits[h].double().numpy(), probs[h].double().numpy()
        b, c, t = p.shape
        for step in range(t):
            zt, pt = z[:, :, step], p[:, :, step]
            logq = zt - np.log(np.exp(zt).sum(axis=1, keepdims=True))
            if kind == "kl":
                elem = np.where(pt > 0, pt * (np.log(np.where(pt > 0, pt, 1.0)) - logq), 0.0)
            else:
                elem = (np.exp(logq) - pt) ** 2
            total += elem.sum() / (b * c)
            n_terms += 1
    return lam / n_terms * total


@pytest.mark.parametrize("kind", ["kl", "l2"])
def test_loss_equals_hand_computed_sum_over_the_eight_terms(kind):
    logits, probs = _batch()
    total, shares = distill_loss(logits, probs, kind=kind)
    want = _hand(logits, probs, kind)
    assert total.dtype == torch.float32
    assert float(total) == pytest.approx(want, rel=1e-5)
    assert float(sum(shares.values())) == pytest.approx(want, rel=1e-5)
    if kind == "kl":
        # docs/design.md#loss: equivalently 125 x (mean_obj + mean_scene), means over (B, C, T), for T = 4;
        # one reduction="mean" per head alone would be 1/T of that.
        means = [
            (torch.special.xlogy(probs[h], probs[h]) - probs[h] * F.log_softmax(logits[h], 1)).double().mean()
            for h in probs
        ]
        assert float(total) == pytest.approx(125.0 * float(sum(means)), rel=1e-5)


def test_one_teacher_and_short_heads_keep_the_per_term_normalisation():
    logits, probs = _batch(seed=1, t=2)
    only = {"objects": probs["objects"]}
    total, shares = distill_loss(logits, only, kind="kl")
    assert set(shares) == {"objects"}
    # main_train.lua divides by #labels: 2 terms here (one head x T = 2), so lambda / 2.
    assert float(total) == pytest.approx(_hand(logits, only, "kl"), rel=1e-5)
    one_term = head_sum(logits["objects"], probs["objects"]).double() / (3 * 5)
    assert float(total) == pytest.approx(LAMBDA / 2 * float(one_term), rel=1e-5)


def test_kl_gradient_is_scaled_softmax_minus_teacher():
    logits, probs = _batch(seed=2)
    z = {k: v.clone().requires_grad_(True) for k, v in logits.items()}
    total, _ = distill_loss(z, probs, kind="kl")
    total.backward()
    for h in probs:
        b, c, t = probs[h].shape
        want = LAMBDA / 8 / (b * c) * (F.softmax(logits[h], dim=1) - probs[h])
        torch.testing.assert_close(z[h].grad, want, rtol=1e-5, atol=1e-7)


def test_bf16_logits_are_scored_in_fp32():
    logits, probs = _batch(seed=3)
    total32, _ = distill_loss(logits, probs)
    total16, _ = distill_loss({k: v.bfloat16() for k, v in logits.items()}, probs)
    assert total16.dtype == torch.float32
    assert float(total16) == pytest.approx(float(total32), rel=2e-2)


def test_errors_name_the_problem():
    logits, probs = _batch()
    with pytest.raises(ValueError, match="differ"):
        distill_loss(logits, {"objects": probs["objects"][:, :, :2]})
    with pytest.raises(ValueError, match="no matching head"):
        distill_loss(logits, {"birds": probs["objects"]})
    with pytest.raises(ValueError, match="at least one"):
        distill_loss(logits, {})
    with pytest.raises(ValueError, match="'kl' or 'l2'"):
        distill_loss(logits, probs, kind="l1")  # type: ignore[arg-type]


def test_top1_agreement_counts_positions():
    probs = torch.zeros(2, 3, 2)
    probs[0, 1, :] = 1.0
    probs[1, 2, :] = 1.0
    logits = torch.zeros(2, 3, 2)
    logits[0, 1, 0] = 5.0  # agrees at (0, 0) only
    logits[1, 2, :] = 5.0  # agrees at (1, 0) and (1, 1)
    agree, n = top1_agreement(logits, probs)
    assert (int(agree), n) == (3, 4)


def test_fused_kl_sum_matches_the_reference():
    pytest.importorskip("triton")
    from soundnet_fast import kernels

    if not hasattr(kernels, "kl_div"):
        pytest.skip("soundnet_fast.kernels has no kl_div")
    logits, probs = _batch(seed=4)
    z_ref = {k: v.clone().requires_grad_(True) for k, v in logits.items()}
    z_fused = {k: v.clone().requires_grad_(True) for k, v in logits.items()}
    ref, _ = distill_loss(z_ref, probs, backend="reference")
    fused, _ = distill_loss(z_fused, probs, backend="fused")
    assert float(fused.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    ref.backward()
    fused.backward()
    for h in probs:
        torch.testing.assert_close(z_fused[h].grad, z_ref[h].grad, rtol=1e-5, atol=1e-7)
