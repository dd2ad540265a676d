"""The numba BatchNorm -> ReLU -> max-pool of CPU training against its eager reference, and the auto backend."""

from __future__ import annotations

import copy

import pytest
import torch

from soundnet_fast.train import cpu_bn_relu_pool as fused

pytestmark = pytest.mark.skipif(not fused.available(), reason="needs numba (the train extra)")


def _pair(c: int, seed: int) -> tuple[torch.nn.BatchNorm1d, torch.nn.BatchNorm1d]:
    g = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm1d(c)
    with torch.no_grad():  # negative scales too: the max then comes from the smallest conv output
        bn.weight.copy_(torch.rand(c, generator=g) * 3 - 1)
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.normal_(generator=g)
    return bn, copy.deepcopy(bn)


@pytest.mark.parametrize(
    ("shape", "pool"),
    [((4, 8, 1003), 8), ((3, 5, 64), None), ((2, 4, 37), 4), ((1, 3, 16), 16), ((2, 2, 9), 3)],
)
def test_matches_eager_forward_backward_and_running_stats(shape: tuple[int, int, int], pool: int | None) -> None:
    bn, ref_bn = _pair(shape[1], sum(shape))
    g = torch.Generator().manual_seed(len(shape) + shape[2])
    z = (torch.randn(shape, generator=g) * 3 + 5).requires_grad_()  # a mean far from 0: the shifted sums
    z_ref = z.detach().clone().requires_grad_()
    out, ref = fused.bn_relu_pool(z, bn, pool), fused.reference(z_ref, ref_bn, pool)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(ref.shape, generator=g)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bn.weight.grad, ref_bn.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.bias.grad, ref_bn.bias.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean)
    torch.testing.assert_close(bn.running_var, ref_bn.running_var)
    assert int(bn.num_batches_tracked) == int(ref_bn.num_batches_tracked) == 1


def test_same_bits_on_every_run_and_thread_count() -> None:
    """The kernels run on torch's thread count (1, 2, 1 here): the bits do not depend on it."""
    z = torch.randn(3, 6, 801, generator=torch.Generator().manual_seed(3))
    runs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            bn, _ = _pair(6, 1)
            zz = z.clone().requires_grad_()
            out = fused.bn_relu_pool(zz, bn, 8)
            out.backward(torch.ones_like(out))
            runs.append((out, zz.grad, bn.weight.grad, bn.running_var))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)


def test_a_second_derivative_is_refused_not_silently_wrong() -> None:
    bn, _ = _pair(3, 2)
    z = torch.randn(2, 3, 16, requires_grad=True)
    out = fused.bn_relu_pool(z, bn, 4)
    (gz,) = torch.autograd.grad(out.square().sum(), z, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|marked with @once_differentiable"):
        gz.sum().backward()


def test_supports_only_what_it_computes() -> None:
    z = torch.randn(2, 4, 32)
    bn = torch.nn.BatchNorm1d(4)
    assert fused.supports(z, bn)
    assert not fused.supports(z.double(), bn)
    assert not fused.supports(z, bn.eval())
    assert not fused.supports(z, torch.nn.BatchNorm1d(4, affine=False))
    assert not fused.supports(z, torch.nn.BatchNorm1d(4, momentum=None))  # cumulative average: eager
    assert not fused.supports(torch.randn(0, 4, 32), bn.train())  # an empty batch: eager leaves the stats alone
    with pytest.raises(ValueError, match="pool must be"):
        fused.bn_relu_pool(z, bn, 0)
    with pytest.raises(ValueError, match="training-mode"):
        fused.bn_relu_pool(z, bn.eval(), 2)


def test_a_window_wider_than_int16_keeps_its_gradient() -> None:
    z = torch.zeros(1, 1, 40_000)
    z[0, 0, 35_000] = 5.0
    z.requires_grad_()
    z_ref = z.detach().clone().requires_grad_()
    bn, ref_bn = torch.nn.BatchNorm1d(1), torch.nn.BatchNorm1d(1)
    fused.bn_relu_pool(z, bn, 40_000).sum().backward()
    fused.reference(z_ref, ref_bn, 40_000).sum().backward()
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bn.bias.grad, ref_bn.bias.grad)


def test_auto_backend_trains_a_soundnet_like_reference_on_cpu() -> None:
    """A SoundNet-5 training step with backend auto (the numba ops) against the reference backend: same loss and
    gradients to float32 rounding; eval mode keeps the plain / folded path."""
    from soundnet_fast.model import SoundNet5, cpu_fusion_pays

    torch.manual_seed(0)
    ref = SoundNet5()
    auto = copy.deepcopy(ref).set_backend("auto")
    x = torch.randn(2, 1, 60_000) * 40
    losses = []
    for m in (ref, auto):
        m.train()
        obj, scn = m(x)
        loss = obj.logsumexp(1).mean() + scn.square().mean()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(ref.named_parameters(), auto.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-3, atol=1e-4, msg=name)
    conv1 = auto.blocks[0]
    assert cpu_fusion_pays(conv1[0](x), conv1[1])
    auto.eval()
    assert not cpu_fusion_pays(conv1[0](x), conv1[1])
