"""conv1d_bn_relu against the eager composite (float64 reference; eager in the same dtype for halves).

Runs under TRITON_INTERPRET=1 (Makefile), so CPU tensors take the Triton kernels; the CPU reference
path is tested by switching dispatch off for one test.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import soundnet_fast.kernels.conv_bn_relu as cbr
from soundnet_fast.kernels import conv1d_bn_relu
from soundnet_fast.kernels._conv_paths import block_paths, x_of_kept
from tests.helpers.kernels import (
    SOUNDNET_LAYERS,
    eager_block,
    fused_outputs,
    make_case,
    max_rel,
    norm_rel,
    opcheck_samples,
    run_fused,
    run_reference,
)

NAMES = ["x", "weight", "bias", "bn_weight", "bn_bias"]
# Short lengths per SoundNet layer: a few pool windows plus a remainder (docs/design.md#model shapes).
LENGTHS = {"conv1": 700, "conv2": 300, "conv3": 60, "conv4": 30, "conv5": 42, "conv6": 10, "conv7": 8, "sn5_conv3": 150}


def _check_fp32(case, ref, fused, training: bool, tol: float = 1e-5, dtype: torch.dtype = torch.float32) -> None:
    out_r, grads_r, rm_r, rv_r, gz_abs, _ = ref
    out_f, grads_f, rm_f, rv_f = fused
    assert out_f.dtype == dtype
    assert max_rel(out_f, out_r) <= tol
    for name, gf, gr in zip(NAMES, grads_f, grads_r, strict=True):
        if gr is None:
            assert gf is None
            continue
        # In training the conv-bias gradient cancels to ~0: measure it against the magnitude it cancels
        # from (sum of |dL/dconv|), the scale of fp32 rounding in that sum.
        floor = gz_abs.max().item() if (name == "bias" and training) else 0.0
        assert max_rel(gf, gr, floor) <= tol, (name, max_rel(gf, gr, floor))
    assert max_rel(rm_f, rm_r) <= tol and max_rel(rv_f, rv_r) <= tol


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layer", [*SOUNDNET_LAYERS, "conv1_dx"])
def test_soundnet_layers_fp32(layer: str, training: bool) -> None:
    """Every SoundNet block; conv1 as in the model (the waveform needs no gradient: one-pass gz + dW)
    and once more with an input gradient."""
    name = "conv1" if layer == "conv1_dx" else layer
    c_in, c_out, k, s, p, pool = SOUNDNET_LAYERS[name]
    case = make_case(2, c_in, c_out, k, LENGTHS[name], seed=sum(map(ord, layer)))
    x_grad = layer != "conv1"
    ref = run_reference(case, None, stride=s, padding=p, training=training, pool=pool, x_grad=x_grad)
    fused = run_fused(case, ref[5], stride=s, padding=p, training=training, pool=pool, x_grad=x_grad)
    _check_fp32(case, ref, fused, training)


ODD = {
    # (N, C_in, C_out, k, s, p, pool, L, bias)
    "cin1_batch1_pool3": (1, 1, 5, 7, 3, 0, 3, 50, True),
    "cin3_pool5_stride1": (2, 3, 16, 5, 1, 2, 5, 37, True),
    "cin3_nobias_nopool": (3, 3, 33, 3, 4, 1, None, 29, False),  # stride > kernel: empty dx phases
    "k1_stride1": (2, 2, 4, 1, 1, 0, 2, 9, True),
    "one_window": (2, 2, 8, 4, 2, 1, 5, 12, True),  # T = 6: one window of 5 and a remainder
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(ODD))
def test_odd_shapes(name: str, training: bool) -> None:
    n, c_in, c_out, k, s, p, pool, length, bias = ODD[name]
    case = make_case(n, c_in, c_out, k, length, seed=7, bias=bias)
    ref = run_reference(case, None, stride=s, padding=p, training=training, pool=pool)
    fused = run_fused(case, ref[5], stride=s, padding=p, training=training, pool=pool)
    _check_fp32(case, ref, fused, training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_pool_ties_go_to_first_index(training: bool) -> None:
    """Quantised inputs give exact ties and zero plateaus; the gradient must land where PyTorch's does."""
    case = make_case(2, 3, 8, 4, 120, seed=3, quantized=True)
    ref = run_reference(case, None, stride=1, padding=2, training=training, pool=4)
    fused = run_fused(case, ref[5], stride=1, padding=2, training=training, pool=4)
    _check_fp32(case, ref, fused, training)
    # A constant input makes every window one tie: the gradient goes to each window's first slot.
    x = torch.ones(1, 1, 40, requires_grad=True)
    w = torch.ones(2, 1, 1)
    out = conv1d_bn_relu(
        x,
        w,
        None,
        torch.ones(2),
        torch.ones(2),
        torch.zeros(2),
        torch.ones(2),
        stride=1,
        padding=0,
        training=False,
        pool=4,
    )
    out.sum().backward()
    expect = torch.zeros(40)
    expect[::4] = 2 / (1 + 1e-5) ** 0.5
    torch.testing.assert_close(x.grad[0, 0], expect)


# One pooling block per kernel family (C_in, C_out, k, stride, padding, pool): a waveform (banded), 16-byte
# channel rows (rows), C_in 3 (generic)
FAMILIES = {"banded": (1, 8, 16, 2, 8, 8), "rows": (16, 32, 8, 2, 4, 4), "generic": (3, 8, 5, 1, 2, 4)}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_pool_chooses_on_z_under_negative_and_zero_bn_scales(family: str, training: bool) -> None:
    """The pool picks each window's slot on the conv output z signed by its channel's BN scale (``pool_select``):
    with gamma < 0 the maximum of y sits at z's minimum; with gamma = 0 (y constant, beta > 0) the slot is z's
    maximum, the choice at a slightly positive gamma, so the reference runs that channel at gamma = 1e-9."""
    c_in, c_out, k, s, p, pool = FAMILIES[family]
    x_grad = family != "banded"  # the banded backward runs when the waveform needs no gradient
    assert block_paths(c_in, c_out, k, s, pool, torch.float32, input_grad=x_grad).pool == family
    case = make_case(2, c_in, c_out, k, 200, seed=11)
    case.g[: c_out // 2] *= -1  # negative BN scales on half the channels
    case.g[-1], case.beta[-1] = 0.0, 0.5  # a zero scale: y = 0.5 in every slot
    ref_case = dataclasses.replace(case, g=case.g.clone())
    ref_case.g[-1] = 1e-9
    ref = run_reference(ref_case, None, stride=s, padding=p, training=training, pool=pool, x_grad=x_grad)
    fused = run_fused(case, ref[5], stride=s, padding=p, training=training, pool=pool, x_grad=x_grad)
    _check_fp32(case, ref, fused, training)


def test_non_contiguous_inputs_and_grad() -> None:
    case = make_case(2, 4, 16, 8, 64, seed=5)
    ref = run_reference(case, None, stride=2, padding=4, training=True, pool=4)
    grad = ref[5].transpose(0, 2).contiguous().transpose(0, 2)  # same values, permuted strides
    assert not grad.is_contiguous()

    def strided(x):
        wide = torch.cat([x, x], dim=-1).transpose(1, 2).contiguous().transpose(1, 2)
        return wide[..., : x.shape[-1]]

    fused = run_fused(case, grad, stride=2, padding=4, training=True, pool=4, x_transform=strided)
    _check_fp32(case, ref, fused, True)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_stats_and_num_batches_tracked(momentum: float | None) -> None:
    case = make_case(2, 3, 8, 5, 40, seed=11)
    bn = torch.nn.BatchNorm1d(8, momentum=momentum).double()
    with torch.no_grad():
        bn.running_mean.copy_(case.rm)
        bn.running_var.copy_(case.rv)
        bn.num_batches_tracked.fill_(3)
    rm, rv = case.rm.float().clone(), case.rv.float().clone()
    nbt = torch.tensor(3)
    for step in range(2):
        x = case.x * (1 + step)
        z = torch.nn.functional.conv1d(x, case.w, case.b, 2, 1)
        bn.train()(z)
        conv1d_bn_relu(
            x.float(),
            case.w.float(),
            case.b.float(),
            case.g.float(),
            case.beta.float(),
            rm,
            rv,
            stride=2,
            padding=1,
            training=True,
            momentum=momentum,
            pool=2,
            num_batches_tracked=nbt,
        )
    assert int(nbt) == 5 == int(bn.num_batches_tracked)
    assert max_rel(rm, bn.running_mean) <= 1e-5 and max_rel(rv, bn.running_var) <= 1e-5
    # eval mode reads the running statistics and leaves them alone
    before = rm.clone()
    out = conv1d_bn_relu(
        case.x.float(),
        case.w.float(),
        None,
        case.g.float(),
        case.beta.float(),
        rm,
        rv,
        stride=2,
        padding=1,
        training=False,
        pool=2,
        num_batches_tracked=nbt,
    )
    ref = eager_block(
        case.x,
        case.w,
        None,
        case.g,
        case.beta,
        bn.running_mean,
        bn.running_var,
        stride=2,
        padding=1,
        training=False,
        pool=2,
    )
    assert max_rel(out, ref) <= 1e-5 and torch.equal(before, rm) and int(nbt) == 5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv4", "conv5"])
def test_half_precision_vs_eager(layer: str, training: bool, dtype: torch.dtype) -> None:
    """Error against float64 at most twice eager PyTorch's in the same dtype, on the same (rounded) inputs.
    Eager CPU runs conv1d / batch_norm / max_pool1d in bf16 and fp16 natively here; its BN parameters and
    running statistics are in the same dtype (nn.Module.to(dtype) semantics), ours stay fp32."""
    c_in, c_out, k, s, p, pool = SOUNDNET_LAYERS[layer]
    c_out = min(c_out, 32)
    case = make_case(2, c_in, c_out, k, LENGTHS[layer], seed=17)
    for f in ("x", "w", "b", "g", "beta"):
        setattr(case, f, getattr(case, f).to(dtype).double())
    kw = dict(stride=s, padding=p, training=training, pool=pool, x_grad=layer != "conv1")  # as in the model
    ref = run_reference(case, None, **kw)
    grad = ref[5].to(dtype).double()
    ref = run_reference(case, grad, **kw)
    eager = run_reference(case, grad, dtype=dtype, **kw)
    fused = run_fused(case, grad, dtype=dtype, **kw)
    assert fused[0].dtype == dtype
    assert norm_rel(fused[0], ref[0]) <= 2 * norm_rel(eager[0], ref[0])
    for name, gf, ge, gr in zip(NAMES, fused[1], eager[1], ref[1], strict=True):
        if gr is None:  # conv1's waveform needs no gradient
            assert gf is None
            continue
        if name == "bias" and training:
            floor = ref[4].norm().item()  # cancels to ~0: against the scale it cancels from
            assert norm_rel(gf, gr, floor) <= max(2 * norm_rel(ge, gr, floor), 1e-2), name
            continue
        assert norm_rel(gf, gr) <= 2 * norm_rel(ge, gr), (name, norm_rel(gf, gr), norm_rel(ge, gr))


def test_deterministic_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    case = make_case(2, 4, 16, 8, 80, seed=2)
    ref = run_reference(case, None, stride=2, padding=4, training=True, pool=4)
    runs = [
        run_fused(case, ref[5], stride=2, padding=4, training=True, pool=4, deterministic=d)
        for d in (True, True, False)
    ]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert torch.equal(a, b)  # bitwise reproducible
    _check_fp32(case, ref, runs[2], True)  # the atomics path is correct too
    # the same for the one-pass gz + dW backward (input without gradient)
    ref = run_reference(case, None, stride=2, padding=4, training=True, pool=4, x_grad=False)
    runs = [
        run_fused(case, ref[5], stride=2, padding=4, training=True, pool=4, deterministic=d, x_grad=False)
        for d in (True, True, False)
    ]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    _check_fp32(case, ref, runs[0], True)
    _check_fp32(case, ref, runs[2], True)
    seen = []
    real = cbr.conv_bn_relu_backward

    def spy(*args, **kwargs):
        seen.append(args[14])  # the `deterministic` argument
        return real(*args, **kwargs)

    monkeypatch.setattr(cbr, "conv_bn_relu_backward", spy)
    prev = torch.are_deterministic_algorithms_enabled()
    try:
        for flag in (True, False):
            torch.use_deterministic_algorithms(flag)
            run_fused(case, ref[5], stride=2, padding=4, training=True, pool=4)
    finally:
        torch.use_deterministic_algorithms(prev)
    assert seen == [True, False]


def test_autocast_casts_on_entry() -> None:
    case = make_case(2, 4, 16, 8, 64, seed=4)
    x, w, b = case.x.float(), case.w.float(), case.b.float()
    g, beta = case.g.float(), case.beta.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv1d_bn_relu(x, w, b, g, beta, None, None, stride=2, padding=4, training=True, pool=4)
        eager = eager_block(x, w, b, g, beta, None, None, stride=2, padding=4, training=True, pool=4)
    assert out.dtype == torch.bfloat16 == eager.dtype
    ref = eager_block(
        *[t.bfloat16().double() for t in (x, w, b)],
        case.g,
        case.beta,
        None,
        None,
        stride=2,
        padding=4,
        training=True,
        pool=4,
    )
    assert norm_rel(out, ref) <= 2 * norm_rel(eager, ref)


def test_reference_path_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain PyTorch path that CPU tensors take outside the interpreter."""
    monkeypatch.setattr(cbr, "use_triton", lambda t: False)
    for training in (True, False):
        case = make_case(2, 3, 8, 6, 45, seed=9)
        ref = run_reference(case, None, stride=2, padding=3, training=training, pool=3)
        fused = run_fused(case, ref[5], stride=2, padding=3, training=training, pool=3)
        _check_fp32(case, ref, fused, training)
        ref = run_reference(case, None, stride=1, padding=0, training=training, pool=None)
        _check_fp32(case, ref, run_fused(case, ref[5], stride=1, padding=0, training=training, pool=None), training)


def test_refusals() -> None:
    x = torch.randn(2, 4, 32)
    w = torch.randn(8, 4, 3)
    args = (torch.ones(8), torch.zeros(8), torch.zeros(8), torch.ones(8))
    with pytest.raises(ValueError, match="string"):
        conv1d_bn_relu(x, w, None, *args, stride=1, padding="same", training=True)
    with pytest.raises(ValueError, match="groups"):
        conv1d_bn_relu(x, torch.randn(8, 2, 3), None, *args, stride=1, padding=0, training=True)
    with pytest.raises(TypeError, match="dtype"):
        conv1d_bn_relu(x, w.double(), None, *args, stride=1, padding=0, training=True)
    with pytest.raises(ValueError, match="too short"):
        conv1d_bn_relu(x, w, None, *args, stride=1, padding=0, training=True, pool=64)
    with pytest.raises(ValueError, match="more than 1 value"):
        conv1d_bn_relu(x[:1, :, :3], w, None, *args, stride=1, padding=0, training=True)


def test_opcheck_interpreter() -> None:
    """opcheck with the Triton kernels (interpreter) as the eager implementation; its traced variant
    (test_aot_dispatch_dynamic) runs the reference on fake CPU tensors."""
    for op, args in opcheck_samples():
        torch.library.opcheck(op, args)
    x, w, b, g, beta = (a.detach() for a in opcheck_samples()[1][1][:5])
    rm, rv = torch.zeros(8), torch.ones(8)
    out, code, zmax, stats, z, xk = fused_outputs(x, w, b, g, beta, rm, rv, 2, 1, True, 1e-5, 4, True)
    torch.library.opcheck(
        cbr._bwd_op, (torch.randn_like(out), x, w, b, g, stats, code, zmax, z, xk, 2, 1, True, 4, True, 0, True)
    )
    torch.library.opcheck(cbr._update_running_stats, (rm.clone(), rv.clone(), torch.tensor(0), stats, 0.1))


@pytest.mark.parametrize("path", ["banded", "rows"])
def test_opcheck_non_deterministic_backward(path: str) -> None:
    """The default backward (atomics) of the banded and row paths: its accumulators share one zeroed buffer, and
    a returned view of it must still match the fake outputs (offset 0, no aliasing)."""
    gen = torch.Generator().manual_seed(3)
    c_in, c_out, k, pool = (1, 16, 16, 4) if path == "banded" else (16, 24, 3, 3)
    x = torch.randn(2, c_in, 120, generator=gen)
    w = torch.randn(c_out, c_in, k, generator=gen) * 0.3
    b, g, beta = torch.randn(c_out, generator=gen), torch.rand(c_out, generator=gen) + 0.5, torch.randn(c_out)
    out, code, zmax, stats, z, xk = fused_outputs(x, w, b, g, beta, torch.zeros(c_out), torch.ones(c_out), 2, 4,
                                                  True, 1e-5, pool, False)  # fmt: skip
    assert block_paths(c_in, c_out, k, 2, pool, x.dtype, False).backward == path
    # x as the backward gets it: a view of the kept padded copy
    xv = x_of_kept(xk, x.shape[-1], 4)
    torch.testing.assert_close(xv, x)
    torch.library.opcheck(cbr._bwd_op, (torch.randn_like(out), xv, w, b, g, stats, code, zmax, z, xk, 2, 4, True,
                                        pool, False, 0, False))  # fmt: skip


def test_opcheck_cpu_reference() -> None:
    """opcheck of every op as a CPU user runs it: a fresh process without TRITON_INTERPRET."""
    code = textwrap.dedent(
        """
        import torch, sys
        sys.path.insert(0, %r)
        from tests.helpers.kernels import fused_outputs, opcheck_samples
        import soundnet_fast.kernels.conv_bn_relu as cbr
        from soundnet_fast.kernels import kl_div  # noqa: F401
        from soundnet_fast.kernels.kl_div import _kl_op
        assert not cbr.INTERPRET
        for op, args in opcheck_samples():
            torch.library.opcheck(op, args)
        x, w, b, g, beta = (a.detach() for a in opcheck_samples()[1][1][:5])
        rm, rv = torch.zeros(8), torch.ones(8)
        out, code, zmax, stats, z, xk = fused_outputs(x, w, b, g, beta, rm, rv, 2, 1, True, 1e-5, 4, True)
        torch.library.opcheck(cbr._bwd_op, (torch.randn_like(out), x, w, b, g, stats, code, zmax, z, xk, 2, 1,
                                            True, 4, True, 0, True))
        torch.library.opcheck(cbr._update_running_stats, (rm, rv, torch.tensor(0), stats, None))
        z = torch.randn(3, 7, 5, requires_grad=True)
        p = torch.softmax(torch.randn(3, 7, 5), 1)
        for red in ("mean", "batchmean", "sum", "none"):
            torch.library.opcheck(_kl_op, (z, p, 1, red, True))
        print("OPCHECK-OK")
        """
    ) % str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "OPCHECK-OK" in res.stdout, res.stderr[-3000:]


def test_torch_compile_traces_both_ops() -> None:
    """torch.compile(fullgraph=True) through the public functions, autograd and the running-stats update.
    On CPU tensors the traced body is the reference branch (the interpreter needs real data pointers,
    docs/design.md#kernels); bench/gpu_check.py compiles the Triton branch on a GPU."""
    from soundnet_fast.kernels import kl_div

    def fn(x, w, b, g, beta, rm, rv, z, p):
        y = conv1d_bn_relu(x, w, b, g, beta, rm, rv, stride=2, padding=3, training=True, pool=4)
        return y, kl_div(z, p, reduction="batchmean")

    def inputs():
        gen = torch.Generator().manual_seed(0)
        t = [
            torch.randn(2, 3, 100, generator=gen),
            torch.randn(8, 3, 7, generator=gen) * 0.3,
            torch.randn(8, generator=gen),
            torch.rand(8, generator=gen) + 0.5,
            torch.randn(8, generator=gen),
        ]
        t = [a.requires_grad_() for a in t]
        z = (torch.randn(2, 10, 4, generator=gen) * 2).requires_grad_()
        return [*t, torch.zeros(8), torch.ones(8), z, torch.softmax(torch.randn(2, 10, 4, generator=gen), 1)]

    eager_in, comp_in = inputs(), inputs()
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    for f, args in ((fn, eager_in), (compiled, comp_in)):
        y, loss = f(*args)
        (y.square().sum() + loss).backward()
    for i, (a, b) in enumerate(zip(eager_in, comp_in, strict=True)):
        assert max_rel(b, a.detach().double()) <= 1e-5  # includes the updated running statistics
        if a.grad is not None:  # the conv bias gradient cancels to ~0: judged on dW's scale
            floor = eager_in[1].grad.abs().max().item() if i == 2 else 0.0
            assert max_rel(b.grad, a.grad.double(), floor) <= 1e-4, i


def test_float64_takes_the_reference_in_float64() -> None:
    case = make_case(2, 3, 8, 5, 40, seed=12)
    ref = run_reference(case, None, stride=2, padding=2, training=True, pool=2)
    fused = run_fused(case, ref[5], stride=2, padding=2, training=True, pool=2, dtype=torch.float64)
    assert fused[0].dtype == torch.float64
    _check_fp32(case, ref, fused, True, tol=1e-10, dtype=torch.float64)
