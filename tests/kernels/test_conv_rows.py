"""The row-GEMM kernels over channels-last input (kernels/_conv_rows.py): the shape rule, that blocks it accepts
run them, and parity with the eager composite on SoundNet's conv2, SampleCNN- and M5-style and odd shapes.

Runs under TRITON_INTERPRET=1 (Makefile): PROGRAMS is 2 there, so every program walks several row tiles.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import soundnet_fast.kernels._conv_rows as rows
from tests.helpers.kernels import (
    SOUNDNET_LAYERS,
    fused_outputs,
    make_case,
    norm_rel,
    opcheck_block,
    run_fused,
    run_reference,
)
from tests.kernels.test_conv_banded import _Launches
from tests.kernels.test_conv_bn_relu import _check_fp32

ROWS_FWD = ["_rows_stats_kernel", "_merge_stats_kernel", "_rows_bn_relu_pool_kernel"]
ROWS_BWD = ["_rows_bwd_reduce_kernel", "_rows_gz_kernel", "_rows_dw_kernel"]  # 16-bit: no reduce (zmax)


def test_the_shape_rule() -> None:
    c_in, c_out, k, s, _, _ = SOUNDNET_LAYERS["conv2"]  # 16 -> 32, k 32, s 2: R = 512, a row step of 32
    assert rows.rows_plan(c_in, c_out, k, s, torch.float32) is not None
    assert rows.rows_plan(1, 16, 64, 2, torch.float32) is None  # one channel: the banded or generic kernels
    assert rows.rows_plan(3, 16, 5, 1, torch.float32) is None  # R = 15: not a multiple of 16
    assert rows.rows_plan(4, 16, 4, 1, torch.float32) is None  # a row step of 4 elements: rows not 16-byte aligned
    assert rows.rows_plan(16, 32, 3, 1, torch.bfloat16) is not None  # SampleCNN-style: R = 48, step 16
    # the weight stays in shared memory up to 64 KB: conv2 (512 x 32) in bf16 and fp32, conv3 (512 x 64) in
    # bf16; conv3 in fp32 and conv5 (1024 x 64) are re-read per tile (the fp32 parity tests run both paths)
    assert rows.resident_weight(k * c_in, c_out, 2) and rows.resident_weight(k * c_in, c_out, 4)
    assert rows.resident_weight(512, 64, 2) and not rows.resident_weight(512, 64, 4)
    assert not rows.resident_weight(1024, 64, 2)


@pytest.mark.parametrize(
    ("c_out", "k", "x_grad", "dx"),
    [(32, 32, True, "_rows_dx_kernel"), (32, 32, False, None), (20, 3, True, "_dx_kernel")],
    ids=["conv2_input_grad", "conv2_no_input_grad", "c_out20_k3_generic_dx"],
)
def test_blocks_run_the_row_kernels(monkeypatch: pytest.MonkeyPatch, c_out: int, k: int, x_grad: bool, dx) -> None:
    """conv2's shape runs every row kernel; dx runs as a row GEMM when its rows are aligned (C_out % 8,
    cdiv(k, s) * C_out % 16: 16 x 32 for conv2) and as the generic transposed conv otherwise (20 channels)."""
    c_in, _, _, s, p, pool = SOUNDNET_LAYERS["conv2"]
    assert not x_grad or rows.dx_rows_ok(c_out, k, s) == (dx == "_rows_dx_kernel")
    case = make_case(2, c_in, c_out, k, 300, seed=2)
    ref = run_reference(case, None, stride=s, padding=p, training=True, pool=pool, x_grad=x_grad)
    seen = _Launches(monkeypatch, rows)
    fused = run_fused(case, ref[5], stride=s, padding=p, training=True, pool=pool, x_grad=x_grad)
    assert seen.names == ROWS_FWD + ROWS_BWD + ([dx] if dx else [])
    _check_fp32(case, ref, fused, True)


@pytest.mark.parametrize("layer", ["conv2", "conv3"])  # pools 8; no pool
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_16_bit_keeps_z_and_zmax_and_recomputes_nothing(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, layer: str
) -> None:
    """bf16 / fp16: the statistics pass stores the conv output z (``kept_z_shape``) and the pool kernel keeps zhat at
    each window's maximum; pass 2 and the backward read them (the pooling block's BN sums from zmax, no
    _rows_bwd_reduce_kernel; without a pool that kernel reads z) and no kernel recomputes the conv. fp32 keeps
    neither and recomputes (saved memory, docs/design.md)."""
    c_in, c_out, k, s, p, pool = SOUNDNET_LAYERS[layer]
    case = make_case(2, c_in, c_out, k, 300, seed=3)
    x = case.x.to(dtype)
    w = case.w.to(dtype)
    out, code, zmax, stats, z, _ = fused_outputs(x, w, case.b.to(dtype), case.g.float(), case.beta.float(), None,
                                                 None, s, p, True, 1e-5, pool, True)  # fmt: skip
    bf16 = dtype == torch.bfloat16
    t = (300 + 2 * p - k) // s + 1
    assert zmax.shape == (out.shape if bf16 and pool else (0,))
    assert z.shape == (rows.kept_z_shape(2, t, c_out) if bf16 else (0,))
    if bf16:  # the conv output without its bias, channel-minor
        ref = torch.nn.functional.conv1d(x.float(), w.float(), None, s, p)
        torch.testing.assert_close(z.float(), rows.kept_z(ref), rtol=1e-2, atol=1e-2)
    seen = _Launches(monkeypatch, rows)
    recomputed = set()  # the kernels that ran a conv tile (the interpreter resolves the helpers at call time)
    for helper in ("_row_tile", "_row_tile_resident"):
        real = getattr(rows, helper)
        monkeypatch.setattr(rows, helper, lambda *a, real=real, **kw: recomputed.add(seen.names[-1]) or real(*a, **kw))
    run_fused(case, run_reference(case, None, stride=s, padding=p, training=True, pool=pool)[5], stride=s,
              padding=p, training=True, pool=pool, dtype=dtype)  # fmt: skip
    assert ("_rows_bwd_reduce_kernel" in seen.names) == (dtype == torch.float32 or pool is None)
    passes = {"_rows_stats_kernel", "_rows_bn_relu_pool_kernel", "_rows_gz_kernel"}
    passes |= {"_rows_bwd_reduce_kernel"} if "_rows_bwd_reduce_kernel" in seen.names else set()
    recomputed.discard("_rows_dx_kernel")  # its transposed conv shares the resident-weight tile: not a recompute
    assert recomputed == ({"_rows_stats_kernel"} if bf16 else passes)


# (N, C_in, C_out, k, s, p, pool, L, bias): rows cross clip boundaries; T % pool != 0 leaves a tail
SHAPES = {
    "conv2_three_clips": (3, *SOUNDNET_LAYERS["conv2"][:5], SOUNDNET_LAYERS["conv2"][5], 333, True),
    "samplecnn_k3_s1_pool3": (2, 16, 24, 3, 1, 1, 3, 50, True),
    "m5_k3_pool4_nobias": (2, 32, 40, 3, 1, 1, 4, 45, False),
    "pool5_stride2_pad_beyond_k": (2, 8, 16, 4, 2, 6, 5, 61, True),
    # nothing to pad (p 0, the rows end at L = 64, a multiple of 16): F.pad returned a clone that kept the
    # transposed strides, and the kernels read it as channels-last (found by review; wrong by ~100 %)
    "pad0_length_multiple_of_16": (2, 8, 8, 2, 1, 0, 3, 64, True),
    # no pool: windows of one position, the output as ReLU's mask (SoundNet's conv3, SampleCNN-, M5-style)
    "conv3_no_pool": (2, *SOUNDNET_LAYERS["conv3"][:5], None, 130, True),
    "samplecnn_k3_s1_no_pool": (2, 16, 24, 3, 1, 1, None, 50, True),
    "m5_k3_no_pool_nobias": (3, 32, 40, 3, 1, 1, None, 45, False),
    # dx's phases side by side: stride 3 (a fourth, masked phase column block) and stride 4
    "stride3_k6_no_pool": (2, 8, 16, 6, 3, 2, None, 70, True),
    "stride4_k8_pool2": (2, 8, 16, 8, 4, 3, 2, 90, True),
    # k not a multiple of the stride: dx's phase weight has taps past k (zeros), J = 3
    "k5_stride2_taps_past_k": (2, 16, 16, 5, 2, 2, 2, 70, True),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_parity_fp32(name: str, training: bool) -> None:
    n, c_in, c_out, k, s, p, pool, length, bias = SHAPES[name]
    assert rows.rows_plan(c_in, c_out, k, s, torch.float32) is not None
    case = make_case(n, c_in, c_out, k, length, seed=len(name), bias=bias)
    ref = run_reference(case, None, stride=s, padding=p, training=training, pool=pool)
    fused = run_fused(case, ref[5], stride=s, padding=p, training=training, pool=pool)
    _check_fp32(case, ref, fused, training)


def test_a_block_without_pool_runs_the_row_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """conv3 (no pool): every phase on the row kernels, the BN sums by a recompute (no zmax without a pool)."""
    n, c_in, c_out, k, s, p, pool, length, bias = SHAPES["conv3_no_pool"]
    case = make_case(n, c_in, c_out, k, length, seed=3, bias=bias)
    ref = run_reference(case, None, stride=s, padding=p, training=True, pool=pool)
    seen = _Launches(monkeypatch, rows)
    fused = run_fused(case, ref[5], stride=s, padding=p, training=True, pool=pool)
    assert seen.names == ROWS_FWD + ROWS_BWD + ["_rows_dx_kernel"]
    _check_fp32(case, ref, fused, True)


@pytest.mark.parametrize("name", ["m5_k3_pool4_nobias", "m5_k3_no_pool_nobias"])
def test_deterministic_is_bitwise_and_atomics_agree(name: str) -> None:
    n, c_in, c_out, k, s, p, pool, length, bias = SHAPES[name]
    case = make_case(n, c_in, c_out, k, length, seed=4, bias=bias)
    ref = run_reference(case, None, stride=s, padding=p, training=True, pool=pool)
    kw = dict(stride=s, padding=p, training=True, pool=pool)
    runs = [run_fused(case, ref[5], deterministic=d, **kw) for d in (True, True, False)]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    _check_fp32(case, ref, runs[2], True)


@pytest.mark.parametrize("name", ["samplecnn_k3_s1_pool3", "samplecnn_k3_s1_no_pool"])
def test_non_contiguous_input_and_grad(name: str) -> None:
    n, c_in, c_out, k, s, p, pool, length, bias = SHAPES[name]
    case = make_case(n, c_in, c_out, k, length, seed=6, bias=bias)
    ref = run_reference(case, None, stride=s, padding=p, training=True, pool=pool)
    grad = ref[5].transpose(0, 2).contiguous().transpose(0, 2)
    fused = run_fused(case, grad, stride=s, padding=p, training=True, pool=pool,
                      x_transform=lambda x: x.transpose(1, 2).contiguous().transpose(1, 2))  # fmt: skip
    _check_fp32(case, ref, fused, True)


def _within_twice_eager_bf16(case, kw: dict, grads=(0, 1, 3, 4), **fused_kw) -> tuple:
    """The case rounded to bf16, run fused in bf16, and eager bf16 and the float64 reference on the same inputs and
    gradient: the output and the gradients ``grads`` (0 x, 1 conv weight, 2 conv bias, 3 BN weight, 4 BN bias;
    the conv bias cancels in training, so by default only fp32 tests judge it) within twice eager's error.
    Returns the fused run."""
    for f in ("x", "w", "b", "g", "beta"):
        setattr(case, f, getattr(case, f).to(torch.bfloat16).double())
    grad = run_reference(case, None, **kw)[5].to(torch.bfloat16).double()
    ref = run_reference(case, grad, **kw)
    eager = run_reference(case, grad, dtype=torch.bfloat16, **kw)
    fused = run_fused(case, grad, dtype=torch.bfloat16, **kw, **fused_kw)
    assert norm_rel(fused[0], ref[0]) <= 2 * norm_rel(eager[0], ref[0])
    for i in grads:
        assert norm_rel(fused[1][i], ref[1][i]) <= 2 * norm_rel(eager[1][i], ref[1][i]), i
    return fused


@pytest.mark.parametrize("layer", ["conv2", "conv3"])  # pools 8; no pool
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bf16_within_twice_eager(training: bool, layer: str) -> None:
    c_in, c_out, k, s, p, pool = SOUNDNET_LAYERS[layer]
    case = make_case(2, c_in, c_out, k, 260, seed=9)
    _within_twice_eager_bf16(case, dict(stride=s, padding=p, training=training, pool=pool))


@pytest.mark.parametrize("pool", [3, 4, 5])
def test_bf16_pools_read_the_stored_z_slot_by_slot(pool: int) -> None:
    """16-bit training keeps z channel-minor (``kept_z_shape``), and the pool and gz kernels walk each window's slots
    one tile at a time (``slot_z``): pools 3, 4 and 5 (no power of two: no padded slot is read), with a tail of
    positions past the last whole window, a third of the channels with a negative BN scale (the pool chooses on z
    times its sign; with padded slots, one masked before that sign turned +inf and won, found by review): finite, and
    within twice eager bf16's error."""
    case = make_case(2, 16, 32, 3, 97, seed=17)
    case.g[::3] = -case.g[::3].abs()
    fused = _within_twice_eager_bf16(case, dict(stride=1, padding=1, training=True, pool=pool))
    assert torch.isfinite(fused[0]).all() and all(torch.isfinite(g).all() for g in fused[1] if g is not None)


class _Flags:
    """The constexpr ``flag`` of each launch of ``kernel`` through ``rows.wrap_triton``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, kernel: str, flag: str) -> None:
        self.values: list = []
        real = rows.wrap_triton
        outer = self

        class Spy:
            def __init__(self, fn) -> None:
                self.fn, self.launch = fn, real(fn)

            def __getitem__(self, grid):
                def run(*args, **kwargs):
                    if self.fn.fn.__name__ == kernel:
                        outer.values.append(kwargs[flag])
                    return self.launch[grid](*args, **kwargs)

                return run

        monkeypatch.setattr(rows, "wrap_triton", Spy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("band", [4, 2, 1])
def test_statistics_dx_and_dw_in_bands_of_rows(monkeypatch: pytest.MonkeyPatch, band: int, dtype: torch.dtype) -> None:
    """The statistics, dx and dW kernels with BAND rows per GEMM row (the band weight built in the kernel, tiles
    inside a clip, the clip's last rows clamped and masked; dW adds each band column block into the weight row it
    belongs to) against the float64 reference, forward and backward (in bf16 the pool and backward read the z the
    statistics store). The rule is forced open: the interpreter's steps are larger than a GPU's."""
    c_in, c_out, k, s, p, pool = SOUNDNET_LAYERS["conv2"]
    monkeypatch.setattr(rows, "STATS_BAND", band)
    monkeypatch.setattr(rows, "DW_WASTE", 0)
    monkeypatch.setattr(rows, "BAND_BYTES", 1 << 40)
    monkeypatch.setattr(rows, "DW_SHIFT_COLS", 0)  # dW in bands, not as gz's shifted copies
    seen = _Flags(monkeypatch, "_rows_stats_kernel", "BAND")
    seen_dx = _Flags(monkeypatch, "_rows_dx_kernel", "BAND")
    seen_dw = _Flags(monkeypatch, "_rows_dw_kernel", "BAND")
    case = make_case(2, c_in, c_out, k, 301, seed=13)
    kw = dict(stride=s, padding=p, training=True, pool=pool)
    if dtype == torch.float32:
        ref = run_reference(case, None, **kw)
        _check_fp32(case, ref, run_fused(case, ref[5], **kw), True)
    else:
        _within_twice_eager_bf16(case, kw)
    assert seen.values == [band] and seen_dx.values == [band] and seen_dw.values == [band]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("c_out", [48, 80], ids=["one_partial_channel_block", "two_channel_blocks"])
def test_short_clips_read_the_contiguous_gradient_as_flat_runs(
    monkeypatch: pytest.MonkeyPatch, c_out: int, dtype: torch.dtype
) -> None:
    """A block without a pool whose clips fit one window tile (SoundNet-8's conv7: 15 positions) reads the contiguous
    gradient the heads' convs return, and its own output, as flat runs transposed by a gather (``clip_rows_flat``) in
    the sums' and gz passes: a partial channel block (48 of 64; the last clip's run stops at the tensor's end) and a
    second one (80: offset by 64 rows of 15), against the float64 reference (bf16: within twice eager's error). The
    interpreter's tiles are forced to whole clips (on a GPU they are)."""
    real = rows._window_block
    monkeypatch.setattr(rows, "_window_block", lambda pp, w: rows.next_pow2(w) if pp == 1 else real(pp, w))
    flat = {k: _Flags(monkeypatch, k, "FLAT") for k in ("_rows_bwd_reduce_kernel", "_rows_gz_kernel")}
    case = make_case(3, 16, c_out, 4, 30, seed=21)  # k 4, s 2, p 1: 15 positions
    kw = dict(stride=2, padding=1, training=True, pool=None)
    if dtype == torch.float32:
        ref = run_reference(case, None, **kw)
        _check_fp32(case, ref, run_fused(case, ref[5], **kw), True)
    else:
        _within_twice_eager_bf16(case, kw)
    assert [v for f in flat.values() for v in f.values] == [True, True]


def test_deterministic_dw_takes_no_band(monkeypatch: pytest.MonkeyPatch) -> None:
    """A band of dW adds into the weight by atomics; the deterministic backward keeps per-split partials of the
    plain rows (a band's partials would be the whole band per split): bitwise repeatable, equal to eager."""
    c_in, c_out, k, s, p, pool = SOUNDNET_LAYERS["conv2"]
    monkeypatch.setattr(rows, "DW_WASTE", 0)
    monkeypatch.setattr(rows, "BAND_BYTES", 1 << 40)
    monkeypatch.setattr(rows, "DW_SHIFT_COLS", 0)
    seen = _Flags(monkeypatch, "_rows_dw_kernel", "BAND")
    case = make_case(2, c_in, c_out, k, 301, seed=14)
    kw = dict(stride=s, padding=p, training=True, pool=pool)
    ref = run_reference(case, None, **kw)
    runs = [run_fused(case, ref[5], deterministic=True, **kw) for _ in range(2)]
    assert seen.values == [1, 1]
    assert torch.equal(runs[0][1][1], runs[1][1][1])
    _check_fp32(case, ref, runs[0], True)


def test_resident_and_band_weights_fit_the_devices_shared_memory() -> None:
    """A CTA's shared memory differs by GPU (A100 163 KB, Ada 99 KB, H100 227 KB): the weights a row kernel keeps
    resident or banded shrink to fit, or the launch would fail on the smaller GPUs (the H100's conv2 band of 4 takes
    196 KB). conv2 in bf16 (k C_in 512, step 32, 32 channels), 20 s at 16 kHz."""
    h100, a100, ada = 227 * 1024, 163 * 1024, 99 * 1024
    assert rows.band_of(512, 32, 64, 32, 13781, 2, h100)[0] == 4
    assert rows.band_of(512, 32, 64, 32, 13781, 2, a100)[0] == 2
    assert rows.band_of(512, 32, 64, 32, 13781, 2, ada)[0] == 1
    assert rows.band_of(512, 32, 32, 32, 13781, 4, a100)[0] == 1  # fp32: a band of 2 is 139 KB
    assert rows.resident_weight(512, 64, 2, h100) and not rows.resident_weight(512, 64, 2, ada)
    assert rows.resident_weight(512, 32, 2, ada)


def test_the_shift_rule() -> None:
    """dW takes gz's shifted copies where a power-of-two chunk of the rows is whole steps and the copies x channels
    fit 128 columns: conv2 (4 copies of 128 elements), a SampleCNN-style k 3 / 32 channels (chunks of one step);
    not conv3's 64 channels (4 x 64 columns), not 24 channels (no power of two), not a single chunk."""
    assert rows.dw_shifts(512, 32, 32) == (4, 128)
    assert rows.dw_shifts(48, 16, 32) == (4, 16)
    assert rows.dw_shifts(512, 64, 64) == (0, 0)
    assert rows.dw_shifts(48, 16, 24) == (0, 0)
    assert rows.dw_shifts(128, 32, 16) == (0, 0)
    assert rows.dw_shifts(48, 8, 2) == (0, 0)  # 8 columns: under tl.dot's least N on a GPU


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomics", "deterministic"])
@pytest.mark.parametrize(("name", "dtype"), [("conv2_three_clips", torch.float32),
                                            ("conv2_three_clips", torch.bfloat16),
                                            ("samplecnn32_k3_s1_pool3", torch.float32)])  # fmt: skip
def test_dw_from_gzs_shifted_copies(
    monkeypatch: pytest.MonkeyPatch, name: str, dtype: torch.dtype, deterministic: bool
) -> None:
    """dW as A0^T times gz's shifted copies side by side (``_rows_dw_shift``): the copies reach T + (NS - 1) SH
    positions into each clip (masked outside gz's [0, T), the A0 rows past them clamped), tiles inside a clip, db
    from the unshifted copy; bitwise repeatable when deterministic. fp32 against float64; bf16 within twice eager's
    error."""
    shapes = {**SHAPES, "samplecnn32_k3_s1_pool3": (2, 16, 32, 3, 1, 1, 3, 50, True)}
    n, c_in, c_out, k, s, p, pool, length, bias = shapes[name]
    seen = _Flags(monkeypatch, "_rows_dw_kernel", "SHIFTS")
    case = make_case(n, c_in, c_out, k, length, seed=21, bias=bias)
    kw = dict(stride=s, padding=p, training=True, pool=pool)
    if dtype == torch.float32:
        ref = run_reference(case, None, **kw)
        runs = [run_fused(case, ref[5], deterministic=deterministic, **kw) for _ in range(2 if deterministic else 1)]
        _check_fp32(case, ref, runs[0], True)
        if deterministic:
            assert torch.equal(runs[0][1][1], runs[1][1][1]) and torch.equal(runs[0][1][2], runs[1][1][2])
    else:
        _within_twice_eager_bf16(case, kw, (1, 2), deterministic=deterministic)
    assert set(seen.values) == {rows.dw_shifts(k * c_in, s * c_in, c_out)[0]} and seen.values[0] > 0


@pytest.mark.parametrize("waste", [0, 10**9], ids=["tiles_inside_a_clip", "tiles_over_the_flat_rows"])
def test_dw_tiles_inside_a_clip_or_over_the_flat_rows(monkeypatch: pytest.MonkeyPatch, waste: int) -> None:
    """dW's position tiles: inside one clip (no per-row division; the clip's last tile masked past T) where the
    partial tiles waste little, over the flat N * T rows otherwise. DW_WASTE forces each path; both match eager."""
    n, c_in, c_out, k, s, p, pool, length, bias = SHAPES["m5_k3_pool4_nobias"]
    monkeypatch.setattr(rows, "DW_WASTE", waste)
    seen = _Flags(monkeypatch, "_rows_dw_kernel", "CLIP_TILES")
    case = make_case(3, c_in, c_out, k, length, seed=12, bias=True)
    ref = run_reference(case, None, stride=s, padding=p, training=True, pool=pool)
    fused = run_fused(case, ref[5], stride=s, padding=p, training=True, pool=pool)
    assert seen.values == [waste == 0]
    _check_fp32(case, ref, fused, True)


def test_opcheck_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 40, generator=gen, requires_grad=True)
    w = (torch.randn(24, 16, 3, generator=gen) * 0.2).requires_grad_()
    b, g, beta = torch.randn(24, generator=gen), torch.rand(24, generator=gen) + 0.5, torch.randn(24, generator=gen)
    opcheck_block(x, w, b.requires_grad_(), g, beta, 1, 1, 3)


@pytest.mark.parametrize("band", [1, 4], ids=["rows", "bands_of_4"])
def test_no_row_reads_past_the_padded_input(monkeypatch: pytest.MonkeyPatch, band: int) -> None:
    """Rows are clamped, not masked, so every row a kernel reads must lie inside the padded copy. The copy is
    placed in front of a sentinel clip of infinities: a read past its end makes inf - inf or inf x 0, which the
    interpreter reports as a RuntimeWarning (an error here). T % pool != 0: the backward's last window runs past T.
    With bands (forced open, conv2's shape) the statistics' rows are longer and clamped to the clip's last."""
    real = rows.channels_last

    def guarded(x, pad, T, k, stride, xc=None):
        if xc is not None:  # forward_input's copy, made (and guarded) by the call below
            return real(x, pad, T, k, stride, xc)
        xc, lpc = real(x, pad, T, k, stride)
        big = torch.full((xc.shape[0] + 1, *xc.shape[1:]), torch.inf, dtype=xc.dtype)
        big[:-1] = xc
        return big[:-1], lpc

    monkeypatch.setattr(rows, "channels_last", guarded)
    monkeypatch.setattr(rows, "STATS_BAND", band)
    monkeypatch.setattr(rows, "DW_WASTE", 0)
    monkeypatch.setattr(rows, "BAND_BYTES", 1 << 40)
    seen = _Flags(monkeypatch, "_rows_stats_kernel", "BAND")
    n, c_in, c_out, k, s, p, pool, length, bias = SHAPES["conv2_three_clips" if band > 1 else "m5_k3_pool4_nobias"]
    case = make_case(n, c_in, c_out, k, length, seed=8, bias=bias)
    ref = run_reference(case, None, stride=s, padding=p, training=True, pool=pool)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fused = run_fused(case, ref[5], stride=s, padding=p, training=True, pool=pool)
    assert seen.values == [band]
    _check_fp32(case, ref, fused, True)


@pytest.mark.parametrize(("name", "band"), [("conv2_three_clips", 1), ("stride3_k6_no_pool", 1),
                                           ("k5_stride2_taps_past_k", 1), ("conv2_three_clips", 4)])  # fmt: skip
def test_no_uninitialised_buffer_is_read(monkeypatch: pytest.MonkeyPatch, name: str, band: int) -> None:
    """Every buffer the row path allocates with torch.empty comes back full of NaN: the zero rows around each
    clip of gz, which _rows_dx_kernel reads, must be written (the gz kernel writes them, no fill), and nothing
    else may be read before it is written. In bands (forced open) dx's last rows read further into those rows."""
    monkeypatch.setattr(rows, "STATS_BAND", band)
    monkeypatch.setattr(rows, "DW_WASTE", 0)
    monkeypatch.setattr(rows, "BAND_BYTES", 1 << 40)
    seen = _Flags(monkeypatch, "_rows_dx_kernel", "BAND")
    real = torch.empty

    def poisoned(*args, **kwargs):
        t = real(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(rows.torch, "empty", poisoned)
    n, c_in, c_out, k, s, p, pool, length, bias = SHAPES[name]
    assert rows.dx_rows_ok(c_out, k, s)
    case = make_case(n, c_in, c_out, k, length, seed=11, bias=bias)
    ref = run_reference(case, None, stride=s, padding=p, training=True, pool=pool)
    fused = run_fused(case, ref[5], stride=s, padding=p, training=True, pool=pool)
    assert torch.isfinite(fused[1][0]).all(), "dx read an unwritten row"
    assert seen.values == [band]
    _check_fp32(case, ref, fused, True)


@pytest.mark.parametrize("layer", ["conv2", "conv3"])  # pools 8 (zmax sums); no pool (recomputed sums)
def test_an_infinite_gradient_at_a_zero_output_stays_out_in_16_bit(layer: str) -> None:
    """A gradient like 1 / out is inf where the output is 0; ReLU passes nothing there, so eager's gradients stay
    finite, and so must the fused ones (inf x 0 in the zmax sums made NaN of the whole channel; found by review).
    Each takes 1 / its own output: a bf16 output 0 in one and tiny in the other would let a real inf through."""
    c_in, c_out, k, s, p, pool = SOUNDNET_LAYERS[layer]
    case = make_case(2, c_in, c_out, k, 300, seed=12)
    for f in ("x", "w", "b", "g", "beta"):
        setattr(case, f, getattr(case, f).to(torch.bfloat16).double())
    kw = dict(stride=s, padding=p, training=True, pool=pool, dtype=torch.bfloat16)
    out = run_reference(case, None, **kw)[0]
    assert (out == 0).any()
    eager = run_reference(case, 1.0 / out.double(), **kw)
    fused_out = run_fused(case, torch.ones_like(out), **kw)[0]
    fused = run_fused(case, 1.0 / fused_out.double(), **kw)
    for i in (0, 1, 3, 4):
        assert torch.isfinite(eager[1][i]).all() and torch.isfinite(fused[1][i]).all(), i


def test_bf16_pool_near_ties_flip_no_more_often_than_eager() -> None:
    """In 16 bits pass 2 chooses each window's slot on the stored z, rounded to 16 bits as eager bf16 rounds its own
    conv output: where two slots lie closer than that rounding, the choice can differ from float64's. Counted
    against float64's choice over ~14,000 windows of a conv2-like block, the fused pool flips no more often than
    eager bf16 (a single flip at a large gradient moved dx by 12 % on a 384-window case, eager's by 0.3 %)."""
    n, c_in, c_out, k, s, p, length, pool = 4, 16, 32, 8, 2, 4, 600, 8
    ours = eager = 0
    for seed in range(3):
        case = make_case(n, c_in, c_out, k, length, seed=seed)
        x, w, b = case.x.bfloat16(), case.w.bfloat16(), case.b.bfloat16()
        g, beta = case.g.bfloat16(), case.beta.bfloat16()
        code = fused_outputs(x, w, b, g.float(), beta.float(), None, None, s, p, True, 1e-5, pool, True)[1]
        z = torch.nn.functional.conv1d(x.double(), w.double(), b.double(), s, p)
        y = torch.relu(torch.nn.functional.batch_norm(z, None, None, g.double(), beta.double(), True, 0.0, 1e-5))
        ze = torch.nn.functional.conv1d(x, w, b, s, p)
        ye = torch.relu(torch.nn.functional.batch_norm(ze, None, None, g, beta, True, 0.0, 1e-5))
        want = _codes(y, pool)
        ours += int((code.long() != want).sum())
        eager += int((_codes(ye.float(), pool) != want).sum())
    assert ours <= eager, (ours, eager)


def _codes(y: torch.Tensor, pool: int) -> torch.Tensor:
    """Each window's first maximum (PyTorch's max-pool), -1 where it is 0 (ReLU passes nothing)."""
    out, idx = torch.nn.functional.max_pool1d(y, pool, pool, return_indices=True)
    return torch.where(out > 0, idx - torch.arange(out.shape[-1]) * pool, -1)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomics", "deterministic"])
def test_the_row_backward_runs_no_torch_op_between_its_launches(deterministic: bool) -> None:
    """A torch op beside the kernels is a launch of its own (3 us each in the static model): with atomics the row
    backward runs one, the fill of db's and the BN sums' accumulators; the fp32 copy of the BN sums, dW's zeroed
    accumulator and dx's phase weight (``_dx_weight``, a flip and a copy as torch ops) come from the gz launch
    (``backward_prep``). Deterministic: the fixed-order sums of the partials, no fill. Counted on the meta device,
    as ``bench.sass`` counts a training step."""
    from bench.aot_check import train_step_launches
    from bench.sass.launches import trunk_rows

    trunk = trunk_rows("soundnet8")[:4]  # conv3 and conv4: dx from a resident weight
    _, ops = train_step_launches(trunk, 4, 8000, torch.bfloat16, deterministic=deterministic)
    for layer in ("conv3", "conv4"):
        names = [name for name, _ in ops[(layer, "backward")]]
        assert names == (["sum", "sum", "sum"] if deterministic else ["zeros"]), (layer, names)


@pytest.mark.parametrize("name", ["k5_stride2_taps_past_k", "stride3_k6_no_pool", "conv3_no_pool"])
def test_the_gz_launch_makes_dxs_phase_weight(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """dx's phase weight, which the gz launch now writes (``backward_prep``), is ``_dx_weight``'s (the torch
    reference: a flip and a copy), taps past k included (zeros): read back from the dx launch's arguments."""
    seen: list = []
    real = rows.wrap_triton

    class Spy:
        def __init__(self, fn) -> None:
            self.fn, self.launch = fn, real(fn)

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                if self.fn.fn.__name__ == "_rows_dx_kernel":
                    seen.append(args[1].clone())
                return self.launch[grid](*args, **kwargs)

            return run

    monkeypatch.setattr(rows, "wrap_triton", Spy)
    monkeypatch.setattr(rows, "STATS_BAND", 1)  # dx from a prepared weight (a band gathers from the conv weight)
    n, c_in, c_out, k, s, p, pool, length, bias = SHAPES[name]
    case = make_case(n, c_in, c_out, k, length, seed=5, bias=bias)
    ref = run_reference(case, None, stride=s, padding=p, training=True, pool=pool)
    run_fused(case, ref[5], stride=s, padding=p, training=True, pool=pool)
    assert len(seen) == 1
    w2d = case.w.float().reshape(c_out, c_in * k)
    assert torch.equal(seen[0], rows._dx_weight(w2d, c_in, k, s))
