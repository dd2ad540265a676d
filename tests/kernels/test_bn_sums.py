"""kernels/_bn_sums.py: the backward's pooled BatchNorm sums against their PyTorch reference. Runs under
TRITON_INTERPRET=1 (Makefile): 2 persistent programs, tiles of 32 pooled positions, so every program walks
several tiles and channel blocks."""

from __future__ import annotations

import warnings

import pytest
import torch

from soundnet_fast.kernels._bn_sums import pooled_bn_sums, reference_pooled_bn_sums
from soundnet_fast.kernels._common import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1 (the kernel on CPU tensors)")


def _case(n: int, c: int, tp: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(n, c, tp, generator=g).to(dtype)
    code = torch.randint(-1, 8, (n, c, tp), generator=g, dtype=torch.int8)
    zmax = torch.where(code >= 0, torch.randn(n, c, tp, generator=g), 0.0).to(dtype)
    return grad, code, zmax


@pytest.mark.parametrize(("n", "c", "tp"), [(1, 1, 5), (3, 16, 100), (2, 40, 33)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("deterministic", [True, False])
def test_matches_reference(n: int, c: int, tp: int, dtype: torch.dtype, deterministic: bool) -> None:
    grad, code, zmax = _case(n, c, tp, dtype)
    got = pooled_bn_sums(grad, code, zmax, deterministic)
    assert got.shape == (2, c) and got.dtype == torch.float32
    torch.testing.assert_close(got, reference_pooled_bn_sums(grad, code, zmax), rtol=1e-5, atol=1e-5)


def test_strided_gradient_and_repeatability() -> None:
    grad, code, zmax = _case(3, 20, 70, torch.bfloat16, seed=1)
    strided = grad.transpose(1, 2).contiguous().transpose(1, 2)  # same values, time not the inner axis
    a = pooled_bn_sums(strided, code, zmax, True)
    torch.testing.assert_close(a, reference_pooled_bn_sums(grad, code, zmax), rtol=1e-5, atol=1e-5)
    assert torch.equal(a, pooled_bn_sums(strided, code, zmax, True))  # deterministic: bitwise


@pytest.mark.parametrize("contiguous", [True, False], ids=["rows", "tiles"])
def test_an_infinite_gradient_outside_the_maxima_stays_out(contiguous: bool) -> None:
    """Selected out, never multiplied (inf x 0 would be NaN: the interpreter warns, turned into an error here)."""
    grad, code, zmax = _case(2, 4, 40, torch.bfloat16, seed=2)
    code[0, 1, 3] = -1  # ReLU output 0 there: no gradient passes
    zmax[0, 1, 3] = 0
    grad[0, 1, 3] = float("inf")
    g = grad if contiguous else grad.transpose(1, 2).contiguous().transpose(1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = pooled_bn_sums(g, code, zmax, True)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, reference_pooled_bn_sums(grad, code, zmax), rtol=1e-5, atol=1e-5)


def test_a_contiguous_gradient_takes_the_row_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long contiguous rows run ``_pooled_bn_sums_rows_kernel`` (chunks from a 16-element boundary before each row,
    the neighbours' elements selected out); a strided gradient or short rows the tile kernel. Both match."""
    import soundnet_fast.kernels._bn_sums as bn_sums

    names: list[str] = []
    real = bn_sums.wrap_triton
    monkeypatch.setattr(bn_sums, "wrap_triton", lambda k: (names.append(k.fn.__name__), real(k))[1])
    grad, code, zmax = _case(3, 5, 77, torch.bfloat16, seed=3)
    ref = reference_pooled_bn_sums(grad, code, zmax)
    strided = grad.transpose(1, 2).contiguous().transpose(1, 2)
    for g, tp in ((grad, 77), (strided, 77), (grad[..., :9].contiguous(), 9)):
        got = pooled_bn_sums(g, code[..., :tp].contiguous(), zmax[..., :tp].contiguous(), False)
        want = ref if tp == 77 else reference_pooled_bn_sums(g, code[..., :tp], zmax[..., :tp])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert names == ["_pooled_bn_sums_rows_kernel", "_pooled_bn_sums_kernel", "_pooled_bn_sums_kernel"]
