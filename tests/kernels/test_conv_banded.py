"""The banded single-channel kernels (kernels/_conv_banded.py): the shape rule, that blocks it accepts run
them (and nothing else), and parity with the eager composite on SoundNet's conv1, M5-style and odd shapes.

Runs under TRITON_INTERPRET=1 (Makefile): PROGRAMS is 2 there, so every program walks several row tiles.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import soundnet_fast.kernels._conv_banded as band
import soundnet_fast.kernels._conv_bwd as conv_bwd
import soundnet_fast.kernels._conv_fwd as conv_fwd
from tests.helpers.kernels import SOUNDNET_LAYERS, make_case, norm_rel, opcheck_block, run_fused, run_reference
from tests.kernels.test_conv_bn_relu import _check_fp32

BANDED_FWD = ["_band_stats_kernel", "_merge_stats_kernel", "_band_bn_relu_pool_kernel"]
BANDED_BWD = ["_band_bwd_reduce_kernel", "_band_gz_dw_kernel"]  # 16-bit: no reduce (the forward's zmax)


def test_the_shape_rule() -> None:
    """conv1 (k 64, s 2, pool 8): W = 2 x 7 + 64 = 78 in chunks 64 + 16, 8 slots x 16 channels."""
    assert band.band_plan(1, 16, 64, 2, 8) == dict(POOL=8, PP=8, BLOCK_C=16, J1=64, J2=16)
    # M5-style first block (k 80, s 4, pool 4, 128 channels): W = 92 -> 64 + 32; 4 slots x 32 channels
    assert band.band_plan(1, 128, 80, 4, 4) == dict(POOL=4, PP=4, BLOCK_C=32, J1=64, J2=32)
    # a pool of 3 takes 4 slots; 5 channels a block of 8: 32 columns
    assert band.band_plan(1, 5, 7, 3, 3) == dict(POOL=3, PP=4, BLOCK_C=8, J1=16, J2=0)
    assert band.band_plan(2, 16, 64, 2, 8) is None  # more than one input channel: the generic GEMM
    assert band.band_plan(1, 16, 64, 2, None) is None  # no pool: generic (the statistics still band)
    assert band.band_plan(1, 16, 200, 8, 8)["J1"] == 256  # W = 8 x 7 + 200 = 256: the longest window
    assert band.band_plan(1, 16, 201, 8, 8) is None  # W = 257: the band would waste too much
    assert band.stats_group(16) == 8 and band.stats_group(128) == 2


def test_the_backward_slot_groups() -> None:
    """The backward's programs own slot groups whose windows start 16 bytes apart in bf16 (SP * stride % 8 == 0),
    and read the pooled inputs of two sub-tiles at once while one sub-tile's int8 codes are under 2 KB."""
    # conv1: 4 slots (8 samples) x 16 channels; a 64-row sub-tile's codes are 1 KB: two sub-tiles
    assert band.grad_plan(1, 16, 64, 2, 8) == dict(POOL=8, PP=8, SP=4, BLOCK_C=16, J1=64, J2=16, SUB=2)
    # 32 channels (SoundNet-5's conv1): still 4 slots (2 would start 8 bytes apart), so two channel blocks
    assert band.grad_plan(1, 32, 64, 2, 8)["SP"] == 4 and band.grad_plan(1, 32, 64, 2, 8)["BLOCK_C"] == 16
    # M5 (stride 4): groups of 2 slots x 32 channels, 2 KB of codes per sub-tile: one sub-tile
    assert band.grad_plan(1, 128, 80, 4, 4) == dict(POOL=4, PP=4, SP=2, BLOCK_C=32, J1=64, J2=32, SUB=1)
    # stride 3 never aligns: all slots in one group
    assert band.grad_plan(1, 5, 7, 3, 3)["SP"] == 4
    assert band.grad_plan(1, 4, 3, 1, 100) is None  # no banded epilogue: no banded backward
    assert band.grad_plan(1, 16, 64, 2, 8, elem_size=4)["SUB"] == 1  # fp32: one sub-tile (two spilled)


class _Launches:
    """Names of the Triton kernels launched through the launcher modules (and ``extra`` ones)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *extra) -> None:
        self.names: list[str] = []
        for mod in (conv_fwd, conv_bwd, band, *extra):
            monkeypatch.setattr(mod, "wrap_triton", self._wrap(mod.wrap_triton))

    def _wrap(self, real):
        def wrap(kernel):
            self.names.append(kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__)
            return real(kernel)

        return wrap


@pytest.mark.parametrize("x_grad", [False, True], ids=["waveform", "input_grad"])
def test_conv1_runs_the_banded_kernels(monkeypatch: pytest.MonkeyPatch, x_grad: bool) -> None:
    """Forward always banded; the backward too unless the input needs a gradient (the banded backward
    computes no dx): then the generic backward runs, from the same saved codes."""
    c_in, c_out, k, s, p, pool = SOUNDNET_LAYERS["conv1"]
    case = make_case(2, c_in, c_out, k, 900, seed=1)
    ref = run_reference(case, None, stride=s, padding=p, training=True, pool=pool, x_grad=x_grad)
    seen = _Launches(monkeypatch)
    fused = run_fused(case, ref[5], stride=s, padding=p, training=True, pool=pool, x_grad=x_grad)
    bwd = ["_bwd_reduce_kernel", "_bwd_gz_kernel", "_dw_kernel", "_dx_kernel"] if x_grad else BANDED_BWD
    assert seen.names == BANDED_FWD + bwd
    _check_fp32(case, ref, fused, True)


_CONV1 = SOUNDNET_LAYERS["conv1"][1:]  # (C_out, k, s, p, pool) from the model's table
# (N, C_out, k, s, p, pool, L, bias): rows cross clip boundaries and end in a partial window (T % pool != 0)
SHAPES = {
    "conv1_three_clips": (3, *_CONV1, 2003, True),
    "m5_two_channel_blocks": (2, 40, 80, 4, 38, 4, 1203, True),
    "pool3_odd_channels_nobias": (3, 5, 7, 3, 0, 3, 301, False),
    "stride1_pool2_pad_beyond_k": (2, 24, 3, 1, 5, 2, 77, True),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_parity_fp32(name: str, training: bool) -> None:
    n, c_out, k, s, p, pool, length, bias = SHAPES[name]
    assert band.band_plan(1, c_out, k, s, pool) is not None
    case = make_case(n, 1, c_out, k, length, seed=len(name), bias=bias)
    ref = run_reference(case, None, stride=s, padding=p, training=training, pool=pool, x_grad=False)
    fused = run_fused(case, ref[5], stride=s, padding=p, training=training, pool=pool, x_grad=False)
    _check_fp32(case, ref, fused, training)


@pytest.mark.parametrize("name", list(SHAPES))
def test_two_sub_tiles_in_fp32(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The backward's tiles of two sub-tiles (16-bit's, ``_gz_dw_tiles``), forced in fp32 so they meet the
    exact parity checks: the pooled inputs split between sub-tiles, a last tile whose second sub-tile lies wholly
    past the clip (pool3: 33 rows in tiles of 32), slot groups (conv1, M5)."""
    real = band.grad_plan
    monkeypatch.setattr(band, "grad_plan", lambda *a, **kw: {**real(*a, **kw), "SUB": 2})
    n, c_out, k, s, p, pool, length, bias = SHAPES[name]
    case = make_case(n, 1, c_out, k, length, seed=len(name), bias=bias)
    ref = run_reference(case, None, stride=s, padding=p, training=True, pool=pool, x_grad=False)
    fused = run_fused(case, ref[5], stride=s, padding=p, training=True, pool=pool, x_grad=False)
    _check_fp32(case, ref, fused, True)


@pytest.mark.parametrize("x_grad", [False, True], ids=["waveform", "input_grad"])
def test_a_pool_too_wide_for_the_banded_epilogues(monkeypatch: pytest.MonkeyPatch, x_grad: bool) -> None:
    """pool 100 takes 128 slots: the pool and backward kernels (64 columns) fall back to the generic ones (which
    need only the saved codes and zmax); the statistics, which need no pool, still band."""
    assert band.band_plan(1, 4, 3, 1, 100) is not None and band.epilogue_plan(1, 4, 3, 1, 100) is None
    case = make_case(2, 1, 4, 3, 230, seed=5)
    ref = run_reference(case, None, stride=1, padding=1, training=True, pool=100, x_grad=x_grad)
    seen = _Launches(monkeypatch)
    fused = run_fused(case, ref[5], stride=1, padding=1, training=True, pool=100, x_grad=x_grad)
    assert seen.names[:3] == ["_band_stats_kernel", "_merge_stats_kernel", "_conv_bn_relu_pool_kernel"]
    assert not any(n.startswith("_band") for n in seen.names[3:])
    _check_fp32(case, ref, fused, True)


def test_deterministic_is_bitwise_and_atomics_agree() -> None:
    n, c_out, k, s, p, pool, length, bias = SHAPES["m5_two_channel_blocks"]
    case = make_case(n, 1, c_out, k, length, seed=4, bias=bias)
    ref = run_reference(case, None, stride=s, padding=p, training=True, pool=pool, x_grad=False)
    kw = dict(stride=s, padding=p, training=True, pool=pool, x_grad=False)
    runs = [run_fused(case, ref[5], deterministic=d, **kw) for d in (True, True, False)]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    _check_fp32(case, ref, runs[2], True)


def _bf16_runs(c_out: int, k: int, s: int, p: int, pool: int, length: int, seed: int, training: bool) -> tuple:
    """(float64 reference, eager bf16, fused bf16) runs of one banded block on bf16-rounded inputs and gradient."""
    case = make_case(2, 1, c_out, k, length, seed=seed)
    for f in ("x", "w", "b", "g", "beta"):
        setattr(case, f, getattr(case, f).to(torch.bfloat16).double())
    kw = dict(stride=s, padding=p, training=training, pool=pool, x_grad=False)
    grad = run_reference(case, None, **kw)[5].to(torch.bfloat16).double()
    return (run_reference(case, grad, **kw), run_reference(case, grad, dtype=torch.bfloat16, **kw),
            run_fused(case, grad, dtype=torch.bfloat16, **kw))  # fmt: skip


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bf16_conv1_within_twice_eager(training: bool) -> None:
    """bf16 operands, fp32 accumulation: error against float64 at most twice eager bf16's."""
    ref, eager, fused = _bf16_runs(*_CONV1, 1500, 9, training)
    assert norm_rel(fused[0], ref[0]) <= 2 * norm_rel(eager[0], ref[0])
    # conv weight, BN weight and bias, and in eval the conv bias (it cancels in training: covered in fp32), which the
    # 16-bit backward sums by its dW dot (DB_DOT)
    for i in (1, 3, 4) if training else (1, 2, 3, 4):
        assert norm_rel(fused[1][i], ref[1][i]) <= 2 * norm_rel(eager[1][i], ref[1][i]), i


def test_bf16_window_in_one_chunk() -> None:
    """A slot group's window under 16 samples fits A's first chunk (J2 = 0): no spare column for db's ones, so the
    16-bit backward sums db per thread (it built an empty second chunk and failed; found by review)."""
    c_out, k, s, p, pool = 8, 8, 1, 4, 16
    assert band.grad_plan(1, c_out, k, s, pool)["J2"] == 0
    ref, eager, fused = _bf16_runs(c_out, k, s, p, pool, 300, 11, False)
    for i in (1, 2, 3, 4):  # conv weight and bias (db), BN weight and bias
        assert norm_rel(fused[1][i], ref[1][i]) <= 2 * norm_rel(eager[1][i], ref[1][i]), i


def test_statistics_shift_from_a_whole_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The statistics' shifted sums take their shift from a whole tile: with 3 programs, program 1 starts on clip
    0's partial last tile (one row), which holds an outlier; shifted by that row's mean, M2 lost ~1e-4 of its
    value (found by review); shifted by the clip's first tile it stays at fp32's ~1e-6."""
    monkeypatch.setattr(conv_fwd, "PROGRAMS", 3)
    c_out, k, s = 16, 16, 2
    group = band.stats_group(c_out)
    T = 32 * group + 1  # 33 rows of `group` positions: a tile of 32 rows (interpreter) and one of 1
    L = (T - 1) * s + k
    gen = torch.Generator().manual_seed(0)
    x = 1e-3 * torch.randn(16, 1, L, generator=gen, dtype=torch.float64)
    x[0, 0, -k:] = 1.0  # clip 0's last position: an outlier in its partial tile
    w = torch.randn(c_out, 1, k, generator=gen, dtype=torch.float64) / 4
    moments = band.band_moments(x.float(), w.float().reshape(c_out, k), None, k, s, 0, T)
    z = torch.nn.functional.conv1d(x.float().double(), w.float().double(), None, s)
    m2 = ((z - z.mean((0, 2))[:, None]) ** 2).sum((0, 2))
    assert ((moments[2].double() - m2).abs() / m2).max() < 1e-5


def test_opcheck_banded() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 200, generator=gen, requires_grad=True)
    w = (torch.randn(16, 1, 64, generator=gen) * 0.1).requires_grad_()
    g, beta = torch.rand(16, generator=gen) + 0.5, torch.randn(16, generator=gen)
    opcheck_block(x, w, None, g, beta, 2, 32, 8)


def test_no_row_reads_past_the_padded_waveform(monkeypatch: pytest.MonkeyPatch) -> None:
    """As tests/kernels/test_conv_rows.py's guard: the padded copy sits in front of a clip of infinities, and a
    read past its end would make inf - inf or inf x 0 (a RuntimeWarning, an error here)."""
    real = band.padded_waveform

    def guarded(x, pad, lp):
        xp = real(x, pad, lp)
        big = torch.full((xp.shape[0] + 1, lp), torch.inf, dtype=xp.dtype)
        big[:-1] = xp
        return big[:-1]

    monkeypatch.setattr(band, "padded_waveform", guarded)
    n, c_out, k, s, p, pool, length, bias = SHAPES["pool3_odd_channels_nobias"]
    case = make_case(n, 1, c_out, k, length, seed=8, bias=bias)
    ref = run_reference(case, None, stride=s, padding=p, training=True, pool=pool, x_grad=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fused = run_fused(case, ref[5], stride=s, padding=p, training=True, pool=pool, x_grad=False)
    _check_fp32(case, ref, fused, True)


def test_the_register_cap_is_left_out_under_torch_compile() -> None:
    """torch.compile's Triton wrapper does not pass maxnreg through: the launch options must be empty there."""
    from soundnet_fast.kernels._conv_fwd import reg_cap

    assert reg_cap(168) == {"maxnreg": 168}
    compiled = torch.compile(lambda x: x + len(reg_cap(168)), backend="eager", fullgraph=True)
    assert compiled(torch.zeros(1)).item() == 0.0
