"""Kernels: the conv block of each SoundNet-8 layer at 20 s, and the KL loss of the two heads.

Variants per group: ``eager`` (plain PyTorch ops, the reference every ratio divides by), ``compile``
(``torch.compile`` of the same function), ``fused`` (soundnet_fast.kernels; Triton on CUDA only: on a CPU
the op dispatches to the reference, so timing it there would only time eager again), and for the loss
``liger`` (Liger-Kernel's fused KL, when installed, CUDA only).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.conftest import DEVICE, ON_GPU, Sizes, max_rel_err
from soundnet_fast.constants import HEAD_CLASSES, SAMPLE_RATE
from soundnet_fast.model import SOUNDNET8_TRUNK, SoundNet8, conv_out_len

# Input channels and input length of each block for a 20 s clip (docs/design.md#model).
_LEN20 = SoundNet8.output_lengths(20 * SAMPLE_RATE)
_INPUTS = {"conv1": (1, 20 * SAMPLE_RATE)}
_prev = "conv1"
for _s in SOUNDNET8_TRUNK[1:]:
    _p = next(p for p in SOUNDNET8_TRUNK if p.name == _prev)
    _INPUTS[_s.name] = (_p.out_channels, _LEN20[_p.pool_name or _p.name])
    _prev = _s.name
LAYERS = [s.name for s in SOUNDNET8_TRUNK]
SPEC = {s.name: s for s in SOUNDNET8_TRUNK}
DTYPES = ["fp32", "bf16"] if ON_GPU else ["fp32"]
TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}


def eager_block(x: Tensor, w: Tensor, b: Tensor, g: Tensor, beta: Tensor, rm: Tensor, rv: Tensor, *,
                stride: int, padding: int, pool: int | None) -> Tensor:  # fmt: skip
    y = F.relu(F.batch_norm(F.conv1d(x, w, b, stride, padding), rm, rv, g, beta, True, 0.1, 1e-5))
    return F.max_pool1d(y, pool, pool) if pool else y


def fused_block(x: Tensor, w: Tensor, b: Tensor, g: Tensor, beta: Tensor, rm: Tensor, rv: Tensor, *,
                stride: int, padding: int, pool: int | None) -> Tensor:  # fmt: skip
    from soundnet_fast.kernels import conv1d_bn_relu

    return conv1d_bn_relu(x, w, b, g, beta, rm, rv, stride=stride, padding=padding, training=True, pool=pool)


_COMPILED: dict[str, Callable[..., Tensor]] = {}


def compiled_block(*args: Tensor, **kw: int | None) -> Tensor:
    fn = _COMPILED.setdefault("block", torch.compile(eager_block, dynamic=False))
    return fn(*args, **kw)


IMPLS = {"eager": eager_block, "compile": compiled_block, "fused": fused_block}


def block_inputs(layer: str, sizes: Sizes, dtype: torch.dtype, grad: bool) -> tuple[Tensor, ...]:
    s, (c_in, length) = SPEC[layer], _INPUTS[layer]
    length = max(int(length * sizes.seconds / 20.0), SoundNet8.min_length("conv1") + s.kernel)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sizes.batch, c_in, length, generator=g)
    w = torch.randn(s.out_channels, c_in, s.kernel, generator=g) / (c_in * s.kernel) ** 0.5
    params = [x, w, torch.randn(s.out_channels, generator=g) * 0.1, 1 + 0.1 * torch.randn(s.out_channels, generator=g),
              0.1 * torch.randn(s.out_channels, generator=g)]  # fmt: skip
    params = [p.to(DEVICE, dtype).requires_grad_(grad) for p in params]
    stats = [torch.zeros(s.out_channels, device=DEVICE), torch.ones(s.out_channels, device=DEVICE)]
    return (*params, *stats)


def skip_reason(variant: str, layer: str, sizes: Sizes) -> str | None:
    if variant == "fused" and not ON_GPU:
        return "fused kernels run on CUDA; on a CPU the op dispatches to the eager reference"
    if variant == "compile" and sizes.smoke and layer != "conv2":
        return "smoke mode compiles one layer (conv2) to bound CI time"
    return None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("variant", ["eager", "compile", "fused"])
@pytest.mark.parametrize("layer", LAYERS)
def test_conv_block(timed, sizes: Sizes, layer: str, variant: str, mode: str, dtype: str) -> None:
    reason = skip_reason(variant, layer, sizes)
    if reason:
        pytest.skip(reason)
    s, dt = SPEC[layer], TORCH_DTYPE[dtype]
    grad = mode == "fwd+bwd"
    args = block_inputs(layer, sizes, dt, grad)
    kw = {"stride": s.stride, "padding": s.padding, "pool": s.pool}
    impl = IMPLS[variant]

    # Parity once: against float64 eager on the same (dtype-rounded) inputs.
    ref_args = [a.detach().double().requires_grad_(grad) if a.is_floating_point() and i < 5 else a.double()
                for i, a in enumerate(args)]  # fmt: skip
    ref = eager_block(*ref_args, **kw)
    out = impl(*args, **kw)
    err = max_rel_err(out, ref)
    if grad:
        gy = torch.randn_like(ref)
        ref.backward(gy)
        out.backward(gy.to(out.dtype))
        errs = [max_rel_err(a.grad, r.grad) for a, r in zip(args[:5], ref_args[:5], strict=True)]
        # The conv bias cancels under batch statistics (docs/design.md#backward-by-recompute): its true
        # gradient is ~0, so measure its error against the scale of the BN bias gradient instead of its own.
        errs[2] = float((args[2].grad.double().cpu() - ref_args[2].grad.cpu()).abs().max()
                        / ref_args[4].grad.abs().max().cpu())  # fmt: skip
        err = max(err, *errs)
    eager_err = max_rel_err(eager_block(*args, **kw), ref) if variant != "eager" else err
    tol = 1e-4 if dtype == "fp32" else max(2 * eager_err, 2e-2)

    def step() -> None:
        y = impl(*args, **kw)
        if grad:
            y.backward(gy.to(y.dtype))

    t_out = conv_out_len(args[0].shape[-1], s.kernel, s.stride, s.padding)
    # Forward FLOPs of the conv (2 per multiply-add); the backward costs about twice the forward.
    flops = 2 * sizes.batch * s.out_channels * t_out * _INPUTS[layer][0] * s.kernel * (3 if grad else 1)
    timed(step, group=f"{layer} {mode} {dtype}", variant=variant, items=sizes.batch, parity_err=err, tol=tol,
          flops=flops, dtype=dtype)  # fmt: skip
    assert err <= tol, f"{variant} {layer} {mode} {dtype}: parity error {err:.3g} > {tol:.3g}"


def kl_eager(z: Tensor, p: Tensor) -> Tensor:
    return F.kl_div(F.log_softmax(z.float(), dim=1), p, reduction="sum") / z.numel()


def kl_fused(z: Tensor, p: Tensor) -> Tensor:
    from soundnet_fast.kernels import kl_div

    return kl_div(z, p, dim=1, reduction="mean")


def kl_liger(z: Tensor, p: Tensor) -> Tensor:
    from liger_kernel.transformers import LigerKLDIVLoss  # optional, CUDA only

    logq = F.log_softmax(z.float(), dim=1).transpose(1, 2).reshape(-1, z.shape[1])
    return LigerKLDIVLoss(reduction="sum")(logq, p.transpose(1, 2).reshape(-1, z.shape[1])) / z.numel()


@pytest.mark.parametrize("head", list(HEAD_CLASSES.items()))
@pytest.mark.parametrize("variant", ["eager", "fused", "liger"])
def test_kl_loss(timed, sizes: Sizes, head: tuple[str, int], variant: str) -> None:
    if variant in ("fused", "liger") and not ON_GPU:
        pytest.skip(f"{variant} KL runs on CUDA only")
    if variant == "liger":
        pytest.importorskip("liger_kernel", reason="Liger-Kernel is not installed")
    name, classes = head
    g = torch.Generator().manual_seed(0)
    z = torch.randn(max(sizes.batch, 2), classes, 4, generator=g).to(DEVICE).requires_grad_()
    p = torch.softmax(torch.randn(z.shape, generator=g) * 3, dim=1).to(DEVICE)
    fn = {"eager": kl_eager, "fused": kl_fused, "liger": kl_liger}[variant]
    ref_z = z.detach().double().requires_grad_()
    ref = kl_eager(ref_z, p.double())
    ref.backward()
    out = fn(z, p)
    out.backward()
    err = max(max_rel_err(out, ref), max_rel_err(z.grad, ref_z.grad))

    def step() -> None:
        fn(z, p).backward()

    timed(step, group=f"kl {name} fwd+bwd", variant=variant, items=z.shape[0], parity_err=err, tol=1e-5)
    assert err <= 1e-5
