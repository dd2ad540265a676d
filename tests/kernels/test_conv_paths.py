"""kernels/_conv_paths.py: which kernel family each phase of a block runs, read against the shape rules."""

from __future__ import annotations

import pytest
import torch

import soundnet_fast.kernels._conv_banded as banded
import soundnet_fast.kernels._conv_rows as rows
from soundnet_fast.kernels import conv1d_bn_relu, is_padded_input, padded_input_buffer
from soundnet_fast.kernels._common import INTERPRET
from soundnet_fast.kernels._conv_paths import (
    Paths,
    block_paths,
    chain_rows,
    conv_moments,
    kept_input,
    reused_input,
)
from soundnet_fast.kernels.conv_bn_relu import finalize_stats
from tests.helpers.kernels import SOUNDNET_LAYERS

# SoundNet-8 (docs/design.md#soundnet-8), bf16, the waveform needing no gradient as in training
EXPECTED = {
    "conv1": Paths("banded", "banded", "banded"),
    "conv2": Paths("rows", "rows", "rows"),  # pools 8
    "conv3": Paths("rows", "rows", "rows"),  # no pool: windows of one position
    "conv4": Paths("rows", "rows", "rows"),
    "conv5": Paths("rows", "rows", "rows"),  # pools 4
    "conv6": Paths("rows", "rows", "rows"),
    "conv7": Paths("rows", "rows", "rows"),
}


@pytest.mark.parametrize("layer", list(EXPECTED))
def test_soundnet8_blocks(layer: str) -> None:
    c_in, c_out, k, s, _, pool = SOUNDNET_LAYERS[layer]
    assert block_paths(c_in, c_out, k, s, pool, torch.bfloat16, input_grad=layer != "conv1") == EXPECTED[layer]


def test_other_shapes() -> None:
    # a waveform block whose input needs a gradient: the banded backward computes no dx
    assert block_paths(1, 16, 64, 2, 8, torch.float32, input_grad=True) == Paths("banded", "banded", "generic")
    # a pool of 100 needs 128 slots: the pool and backward kernels take 64 columns, only the statistics band
    assert block_paths(1, 4, 3, 1, 100, torch.float32, input_grad=False) == Paths("banded", "generic", "generic")
    # rows not 16-byte aligned (C_in 3): everything generic
    assert block_paths(3, 16, 5, 1, 4, torch.float32) == Paths("generic", "generic", "generic")


@pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1 (the kernels on CPU tensors)")
@pytest.mark.parametrize(("c_in", "c_out", "k", "s", "p"),
                         [SOUNDNET_LAYERS["conv1"][:5], SOUNDNET_LAYERS["conv2"][:5], (3, 5, 5, 1, 2)])  # fmt: skip
def test_merge_kernel_finalises_like_finalize_stats(c_in: int, c_out: int, k: int, s: int, p: int) -> None:
    """conv_moments with BN's eps returns the stats rows finalize_stats makes from its moments (banded, rows and
    generic statistics, in that order of the cases)."""
    torch.manual_seed(0)
    x = torch.randn(2, c_in, 300)
    w2d = torch.randn(c_out, c_in * k) / (c_in * k) ** 0.5
    b = torch.randn(c_out)
    t = (300 + 2 * p - k) // s + 1
    moments = conv_moments(x, w2d, b, k, s, p, t)
    stats = conv_moments(x, w2d, b, k, s, p, t, 1e-3)
    assert moments.shape == (3, c_out) and stats.shape == (4, c_out)
    torch.testing.assert_close(stats, finalize_stats(moments, 1e-3), rtol=1e-6, atol=1e-6)
    z = torch.nn.functional.conv1d(x, w2d.reshape(c_out, c_in, k), b, s, p)
    torch.testing.assert_close(stats[0], z.mean((0, 2)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stats[2], z.var((0, 2)), rtol=1e-4, atol=1e-4)  # unbiased
    torch.testing.assert_close(stats[1], (z.var((0, 2), unbiased=False) + 1e-3).rsqrt(), rtol=1e-4, atol=1e-4)
    assert stats[3].eq(2 * t).all()


@pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1 (the kernels on CPU tensors)")
@pytest.mark.parametrize(("c_in", "c_out", "k", "s", "p", "pool"),
                         [SOUNDNET_LAYERS[name] for name in ("conv1", "conv2", "conv3")])  # fmt: skip
def test_a_training_forward_pads_its_input_once(c_in, c_out, k, s, p, pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The banded and row passes of one forward share forward_input's copy (the no-pool row block: only its
    statistics pass reads one). Counted as calls of F.pad, which makes every such copy."""
    import torch.nn.functional as F

    calls = []
    real = F.pad
    monkeypatch.setattr(F, "pad", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = torch.randn(2, c_in, 400)
    w = torch.randn(c_out, c_in, k) / (c_in * k) ** 0.5
    ones, zeros = torch.ones(c_out), torch.zeros(c_out)
    out = conv1d_bn_relu(x, w, None, ones, zeros, zeros.clone(), ones.clone(), stride=s, padding=p, training=True,
                         pool=pool)  # fmt: skip
    assert len(calls) == 1
    monkeypatch.undo()
    ref = F.batch_norm(F.conv1d(x, w, None, s, p), None, None, ones, zeros, True)
    ref = F.max_pool1d(torch.relu(ref), pool, pool) if pool else torch.relu(ref)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


class _Pads:
    """Counts the padded copies the kernels' launchers make (their ``F.pad`` calls)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for mod in (banded, rows):
            monkeypatch.setattr(mod, "F", self)

    def pad(self, *args, **kwargs):
        self.count += 1
        return torch.nn.functional.pad(*args, **kwargs)


@pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1 (the kernels on CPU tensors)")
@pytest.mark.parametrize("layer", ["conv1", "conv2"])  # banded, rows
def test_the_backward_reuses_the_forwards_padded_copy(monkeypatch: pytest.MonkeyPatch, layer: str) -> None:
    """The forward pads x once (``forward_input``) and keeps that copy in place of x (``kept_input``); the backward
    reads x as a view of it and pads nothing (a re-pad: 113 MB per step for conv1 and for conv2 at batch 64)."""
    c_in, c_out, k, s, p, pool = SOUNDNET_LAYERS[layer]
    assert kept_input(c_in, c_out, k, s, pool, torch.bfloat16) == ("banded" if layer == "conv1" else "rows")
    torch.manual_seed(0)
    x = torch.randn(2, c_in, 900 if layer == "conv1" else 300, dtype=torch.bfloat16, requires_grad=layer != "conv1")
    w = (torch.randn(c_out, c_in, k) / (c_in * k) ** 0.5).to(torch.bfloat16).requires_grad_()
    g, beta = torch.ones(c_out, requires_grad=True), torch.zeros(c_out, requires_grad=True)
    pads = _Pads(monkeypatch)
    out = conv1d_bn_relu(x, w, None, g, beta, None, None, stride=s, padding=p, training=True, pool=pool)
    assert pads.count == 1
    out.backward(torch.randn_like(out))
    assert pads.count == 1
    assert w.grad is not None and (layer == "conv1" or x.grad is not None)


@pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1 (the kernels on CPU tensors)")
@pytest.mark.parametrize("layer", ["conv1", "conv2"])  # banded (a waveform), rows (channels-last)
def test_a_padded_input_buffer_is_read_in_place(monkeypatch: pytest.MonkeyPatch, layer: str) -> None:
    """x from ``padded_input_buffer``, called with ``padded_input=True``: neither the forward nor the backward pads
    it (the trainer's static input: conv1's pad was a 113 MB pass per step at batch 64), the results are those of
    the same data in a plain tensor, and only x itself is vouched for (not a view or a copy of it)."""
    c_in, c_out, k, s, p, pool = SOUNDNET_LAYERS[layer]
    gen = torch.Generator().manual_seed(7)
    data = torch.randn(2, c_in, 900 if layer == "conv1" else 300, generator=gen)
    w = torch.randn(c_out, c_in, k, generator=gen) / (c_in * k) ** 0.5
    g, beta = torch.rand(c_out, generator=gen) + 0.5, torch.randn(c_out, generator=gen)
    x = padded_input_buffer(2, c_in, data.shape[-1], (c_out, k, s, p, pool), torch.float32, "cpu")
    assert not x.is_contiguous() and reused_input(x, c_out, k, s, p, pool) is not None
    x.copy_(data)
    assert is_padded_input(x) and not is_padded_input(x[..., :-1]) and not is_padded_input(x.clone())
    # views: a waveform's never read in place (its LP is rounded: the op's entry asks is_padded_input), a chained
    # buffer's where the strides fit (cropped in batch)
    for view in (x[..., :-8], x[..., 8:], x[:1]):
        if layer == "conv2":
            assert (reused_input(view, c_out, k, s, p, pool) is not None) == (view.shape[0] == 1)
        out = conv1d_bn_relu(view, w, None, g, beta, None, None, stride=s, padding=p, training=True, pool=pool,
                             padded_input=True)  # fmt: skip
        ref = conv1d_bn_relu(view.contiguous(), w, None, g, beta, None, None, stride=s, padding=p, training=True,
                             pool=pool)  # fmt: skip
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    results = []
    for xin, padded in ((data, False), (x, True)):
        xin = xin if layer == "conv1" else xin.detach().requires_grad_()  # conv1: x itself (is_padded_input)
        wi, gi, bi = (t.clone().requires_grad_() for t in (w, g, beta))
        pads = _Pads(monkeypatch)
        out = conv1d_bn_relu(xin, wi, None, gi, bi, None, None, stride=s, padding=p, training=True, pool=pool,
                             padded_input=padded)  # fmt: skip
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
        assert pads.count == (0 if padded else 1)
        monkeypatch.undo()
        results.append([out, wi.grad, gi.grad, bi.grad] + ([xin.grad] if layer != "conv1" else []))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


_CONV1 = SOUNDNET_LAYERS["conv1"][1:]  # (C_out, kernel, stride, padding, pool)


@pytest.mark.parametrize(
    ("conv", "problem"),
    [((*_CONV1[:3], -1, _CONV1[4]), "padding >= 0"), ((*_CONV1[:2], 0, *_CONV1[3:]), "stride"),
     (_CONV1[:4], "(C_out, kernel"), ((_CONV1[0], torch.tensor(_CONV1[1]), *_CONV1[2:]), "Python ints"),
     ((*_CONV1[:4], 0), "pool >= 1")],
)  # fmt: skip
def test_padded_input_buffer_rejects_a_bad_geometry(conv: tuple, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        padded_input_buffer(2, 1, 1000, conv, torch.float32, "cpu")
    with pytest.raises(ValueError, match="positive sizes"):
        padded_input_buffer(2, 1, 0, _CONV1, torch.float32, "cpu")


# conv1 -> conv2 -> conv3 -> conv4 -> conv5 of SoundNet-8 at test sizes: banded into rows (pool 8), rows into rows
# without a pool and with pool 4
_CHAIN = [SOUNDNET_LAYERS[name] for name in ("conv1", "conv2", "conv3", "conv4", "conv5")]


def _run_chain(x: torch.Tensor, params: list, chained: bool) -> tuple[torch.Tensor, list, list]:
    """The blocks of _CHAIN in training on x, chained (``feeds`` / ``padded_input``, as the model runs its fused
    blocks) or not; returns (output, the gradients of a fixed loss, each block's output)."""
    outs, h = [], x
    for i, ((_, _, _, s, p, pool), (w, b, g, beta)) in enumerate(zip(_CHAIN, params, strict=True)):
        feeds = _CHAIN[i + 1][1:] if chained and i + 1 < len(_CHAIN) else None
        h = conv1d_bn_relu(h, w, b, g, beta, None, None, stride=s, padding=p, training=True, pool=pool,
                           feeds=feeds, padded_input=chained and i > 0)  # fmt: skip
        outs.append(h)
    loss = (h.float() * torch.linspace(-1, 1, h.shape[-1])).sum()
    return h, list(torch.autograd.grad(loss, [t for ps in params for t in ps])), outs


def _chain_params(dtype: torch.dtype) -> list:
    gen = torch.Generator().manual_seed(3)
    params = []
    for c_in, c_out, k, *_ in _CHAIN:
        w = (torch.randn(c_out, c_in, k, generator=gen) / (c_in * k) ** 0.5).to(dtype).requires_grad_()
        b = (0.1 * torch.randn(c_out, generator=gen)).to(dtype).requires_grad_()
        g = (1 + 0.2 * torch.randn(c_out, generator=gen)).requires_grad_()
        params.append((w, b, g, (0.1 * torch.randn(c_out, generator=gen)).requires_grad_()))
    return params


@pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1 (the kernels on CPU tensors)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_chained_blocks_copy_nothing_between_them_and_equal_unchained(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """Chained, each block's pool pass writes its output into the zero-padded channels-last buffer the next block
    reads (no F.pad after the waveform's: the unchained blocks pad each input, and their backward reuses that copy),
    and every output and gradient is bit for bit the unchained one. Each buffer is poisoned with NaN where torch.empty
    makes it: the zero rows around each clip must be written by the kernel."""
    import soundnet_fast.kernels._conv_fwd as fwd

    x = torch.randn(2, 1, 6000, generator=torch.Generator().manual_seed(4)).to(dtype)
    params = _chain_params(dtype)
    out0, grads0, outs0 = _run_chain(x, params, chained=False)
    real = torch.empty

    def poisoned(*args, **kwargs):
        t = real(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(fwd.torch, "empty", poisoned)
    pads = _Pads(monkeypatch)
    out1, grads1, outs1 = _run_chain(x, params, chained=True)
    assert pads.count == 1  # conv1's waveform only
    for i, h in enumerate(outs1[:-1]):
        _, c2, k2, s2, p2, pool2 = _CHAIN[i + 1]
        buf = reused_input(h, c2, k2, s2, p2, pool2)
        assert buf is not None and h.stride()[1:] == (1, _CHAIN[i][1])  # the chained layout
        assert torch.isfinite(buf).all() and buf[:, :p2].eq(0).all() and buf[:, p2 + h.shape[-1] :].eq(0).all()
    assert outs0[-1].is_contiguous() and outs1[-1].is_contiguous()  # the last feeds nothing: the usual layout
    assert torch.equal(out0, out1)
    for a, b in zip(grads0, grads1, strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1 (the kernels on CPU tensors)")
def test_padded_input_without_the_chained_layout_is_copied_as_usual() -> None:
    """``padded_input`` vouches only for a chained x: any other x (here contiguous, and a chained one cloned) is
    read through a copy, with the same results."""
    c_in, c_out, k, s, p, pool = SOUNDNET_LAYERS["conv2"]
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, c_in, 300, generator=gen)
    w = torch.randn(c_out, c_in, k, generator=gen) / (c_in * k) ** 0.5
    g, beta = torch.ones(c_out), torch.zeros(c_out)
    ref = conv1d_bn_relu(x, w, None, g, beta, None, None, stride=s, padding=p, training=True, pool=pool)
    assert reused_input(x, c_out, k, s, p, pool) is None
    for xin in (x, x.transpose(1, 2).contiguous().transpose(1, 2)):
        out = conv1d_bn_relu(xin, w, None, g, beta, None, None, stride=s, padding=p, training=True, pool=pool,
                             padded_input=True)  # fmt: skip
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1 (the kernels on CPU tensors)")
def test_a_chained_output_cropped_in_time_is_copied_not_read_as_padded() -> None:
    """A view of a chained output cropped in time keeps the buffer's strides, and the rows after it hold data: the
    consumer must not read them as its zero padding (``chain_rows`` makes LP grow with x's length, so the view's
    strides fail ``chained_input``). Cropped in batch, it reads the clips it keeps. Either way the output equals
    that of the same block on a contiguous copy of the view."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 16, 120, generator=gen)
    w1 = torch.randn(32, 16, 3, generator=gen) / 48**0.5
    w2 = torch.randn(32, 32, 3, generator=gen) / 96**0.5
    g, beta = torch.rand(32, generator=gen) + 0.5, torch.randn(32, generator=gen)
    h = conv1d_bn_relu(x, w1, None, g, beta, None, None, stride=1, padding=1, training=True, pool=2,
                       feeds=(32, 3, 1, 1, None))  # fmt: skip
    assert not h.is_contiguous() and reused_input(h, 32, 3, 1, 1, None) is not None, "h is chained"
    views = {"h[..., :-1]": h[..., :-1], "h[..., 1:]": h[..., 1:], "h[..., 2:-3]": h[..., 2:-3], "h[1:]": h[1:]}
    for name, v in views.items():
        assert (reused_input(v, 32, 3, 1, 1, None) is not None) == (name == "h[1:]"), name
        out = conv1d_bn_relu(v, w2, None, g, beta, None, None, stride=1, padding=1, training=True,
                             padded_input=True)  # fmt: skip
        ref = conv1d_bn_relu(v.contiguous(), w2, None, g, beta, None, None, stride=1, padding=1, training=True)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=name)


def test_the_fake_gives_the_chained_layout() -> None:
    """The ops' fakes (torch.compile, meta) return a chained output as the kernels do: a view at the pad row of a
    (N, LP, C) buffer, with the real op's strides and storage offset; a consumer of it makes no copy of its input.
    opcheck compares them with the real ops (the interpreter's kernels, or the reference without it)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from soundnet_fast.kernels.conv_bn_relu import _fwd_op, _stats_op
    from tests.helpers.kernels import opcheck_block

    (_, c1, k1, s1, p1, pool1), (_, c2, k2, s2, p2, pool2) = _CHAIN[1], _CHAIN[2]
    tp = ((300 + 2 * p1 - k1) // s1 + 1) // pool1
    chain = chain_rows(c1, tp, c2, k2, s2, p2, pool2, torch.bfloat16)
    with FakeTensorMode():
        x = torch.empty(2, 16, 300, dtype=torch.bfloat16)
        w = torch.empty(c1, 16, k1, dtype=torch.bfloat16)
        g = torch.empty(c1)
        stats, z, xp = _stats_op(x, w, None, None, None, None, s1, p1, 1e-5, 0.1, pool1, 0)
        out = _fwd_op(x, w, None, g, g, stats, z, xp, s1, p1, True, pool1, False, 0, *chain, True)[0]
        assert out.shape == (2, c1, tp) and out.stride() == (chain[1] * c1, 1, c1) and out.storage_offset() == p2 * c1
        w2 = torch.empty(c2, c1, k2, dtype=torch.bfloat16)
        _, _, xp2 = _stats_op(out, w2, None, None, None, None, s2, p2, 1e-5, 0.1, pool2, 0, True)
        assert xp2.numel() == 0
    # opcheck at a small reduction (16 channels x 3 taps: the reference's and the kernels' sums stay within its
    # tolerance): a rows block chained into a rows block without a pool
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 16, 40, generator=gen, requires_grad=True)
    w = (torch.randn(16, 16, 3, generator=gen) * 0.2).requires_grad_()
    g, beta = torch.rand(16, generator=gen) + 0.5, torch.randn(16, generator=gen)
    nxt = (16, 3, 1, 1, None)
    chain = chain_rows(16, 20, *nxt, torch.float32)
    assert chain is not None
    opcheck_block(x, w, None, g, beta, 1, 1, 2, out_pad=chain[0], out_rows=chain[1])
    h = conv1d_bn_relu(x.detach(), w.detach(), None, g, beta, None, None, stride=1, padding=1, training=True, pool=2,
                       feeds=nxt)  # fmt: skip
    assert reused_input(h, 16, 3, 1, 1, None) is not None
    w2 = (torch.randn(16, 16, 3, generator=gen) * 0.2).requires_grad_()
    opcheck_block(h.requires_grad_(), w2, None, g, beta, 1, 1, None, padded_input=True)
