"""kernels/bn_running.py: the one-launch running-statistics update against its PyTorch reference and against
nn.BatchNorm1d itself. Runs under TRITON_INTERPRET=1 (Makefile), where CPU tensors take the kernel."""

from __future__ import annotations

import pytest
import torch

from soundnet_fast.kernels import bn_running
from soundnet_fast.kernels._common import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1 (the kernel on CPU tensors)")


def _stats(c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(c, generator=g)
    var = torch.rand(c, generator=g) + 0.5
    return torch.stack([mean, var.rsqrt(), var, torch.full((c,), 37.0)])


@pytest.mark.parametrize("c", [3, 16, 1500])  # 1500: two channel blocks of 1024
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(c: int, momentum: float | None, dtype: torch.dtype) -> None:
    stats = _stats(c, c)
    mine = [torch.randn(c).to(dtype), (torch.rand(c) + 0.5).to(dtype), torch.tensor(4)]
    ref = [t.clone() for t in mine]
    for _ in range(3):  # the counter and the cumulative factor move every call
        bn_running.update_running_stats(*mine, stats, momentum)
        bn_running.reference_update_running_stats(*ref, stats, momentum)
        # bf16 too: rounded to nearest as the reference's copy_ (the interpreter's plain store truncated: half off)
        torch.testing.assert_close(mine[0], ref[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(mine[1], ref[1], rtol=1e-6, atol=1e-6)
        ref[0].copy_(mine[0])
        ref[1].copy_(mine[1])
    assert int(mine[2]) == int(ref[2]) == 7
    assert mine[0].dtype == dtype


def test_without_counter_and_misuse() -> None:
    stats = _stats(5, 1)
    rm, rv = torch.zeros(5), torch.ones(5)
    bn_running.update_running_stats(rm, rv, None, stats, 0.25)
    torch.testing.assert_close(rm, 0.25 * stats[0])
    torch.testing.assert_close(rv, 0.75 + 0.25 * stats[2])
    with pytest.raises(ValueError, match="num_batches_tracked"):
        bn_running.update_running_stats(rm, rv, None, stats, None)
    with pytest.raises(ValueError, match="1-D"):
        bn_running.update_running_stats(rm[None], rv[None], None, stats, 0.1)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_fused_op_updates_like_batchnorm(momentum: float | None) -> None:
    """Through the public function (its torch.library op), two training steps: the buffers of nn.BatchNorm1d."""
    from soundnet_fast.kernels import conv1d_bn_relu

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(4, 8, 5, padding=2)
    bn = torch.nn.BatchNorm1d(8, momentum=momentum)
    rm, rv, nbt = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    for step in range(2):
        x = torch.randn(3, 4, 40) + step
        bn(conv(x))
        conv1d_bn_relu(x, conv.weight, conv.bias, bn.weight, bn.bias, rm, rv, stride=1, padding=2, training=True,
                       momentum=momentum, num_batches_tracked=nbt)  # fmt: skip
    torch.testing.assert_close(rm, bn.running_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rv, bn.running_var, rtol=1e-5, atol=1e-5)
    assert int(nbt) == int(bn.num_batches_tracked) == 2
