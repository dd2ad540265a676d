"""What the autograd graph keeps alive after the forward (docs/design.md#memory-accounting), counted by storages
reachable from grad_fn: saved tensors of built-in nodes, custom-Function saved_tensors and ctx attributes.

A 20 s clip is too slow for the Triton interpreter, so the full-size figure runs the model on the meta
device: the fused op's autograd registration (what it saves) is the same code on every device, and a
short real run checks that meta and interpreter counts agree."""

from __future__ import annotations

import torch

from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.kernels import conv1d_bn_relu, saved_activation_bytes
from soundnet_fast.kernels.memory import saved_tensors
from soundnet_fast.model import SoundNet8
from tests.helpers.kernels import SOUNDNET_LAYERS

EAGER_MB_PER_CLIP = 41.2  # docs/design.md#memory-accounting: fp32 eager nn.Sequential, SoundNet-8 trunk, 20 s clip


def _trunk_bytes(
    backend: str, length: int, batch: int, device: str, seed: int = 0, dtype: torch.dtype = torch.float32
) -> int:
    torch.manual_seed(seed)
    with torch.device(device):
        model = SoundNet8(backend=backend).to(dtype)
        x = torch.randn(batch, 1, length, dtype=dtype)
    model.check_inputs = False  # the finiteness check reads data (none on meta)
    out = model.features(x, "conv7")
    return saved_activation_bytes(out, exclude=[*model.parameters(), *model.buffers()])


def test_soundnet8_trunk_20s_fused_at_most_quarter_of_eager() -> None:
    eager = _trunk_bytes("reference", 20 * SAMPLE_RATE, 1, "meta")
    fused = _trunk_bytes("fused", 20 * SAMPLE_RATE, 1, "meta")
    assert abs(eager / 1e6 - EAGER_MB_PER_CLIP) < 0.05, eager  # the counter reproduces the design figure
    assert fused * 4 <= eager, (fused, eager)
    print(f"saved for backward per 20 s clip (fp32): eager {eager / 1e6:.2f} MB, fused {fused / 1e6:.2f} MB")


def test_soundnet8_trunk_20s_bf16_within_the_budget() -> None:
    """16-bit blocks keep more to recompute less (zmax; the row kernels' unpooled conv output z): the trunk must
    still stay within 6.5 MB per 20 s clip, and keep more values than fp32 (which keeps neither; both keep the
    blocks' padded inputs, ``_conv_paths.kept_input``)."""
    fused16 = _trunk_bytes("fused", 20 * SAMPLE_RATE, 1, "meta", dtype=torch.bfloat16)
    fused32 = _trunk_bytes("fused", 20 * SAMPLE_RATE, 1, "meta")
    assert fused32 / 2 < fused16 <= 6.5e6, (fused16, fused32)
    print(f"saved for backward per 20 s clip (bf16): fused {fused16 / 1e6:.2f} MB")


def test_meta_count_matches_real_interpreter_run() -> None:
    length = SoundNet8.min_length("conv7") + 1000
    real = _trunk_bytes("fused", length, 2, "cpu")
    meta = _trunk_bytes("fused", length, 2, "meta")
    assert real == meta
    assert _trunk_bytes("reference", length, 2, "cpu") == _trunk_bytes("reference", length, 2, "meta")


def test_nothing_unpooled_is_saved() -> None:
    c_in, c_out, k, s, p, pool = SOUNDNET_LAYERS["conv1"]
    x = torch.randn(2, c_in, 600)
    w = torch.randn(c_out, c_in, k, requires_grad=True)
    g = torch.ones(c_out, requires_grad=True)
    out = conv1d_bn_relu(
        x, w, None, g, torch.zeros(c_out, requires_grad=True), None, None, stride=s, padding=p, training=True, pool=pool
    )
    unpooled = out.shape[0] * c_out * ((600 + 2 * p - k) // s + 1)
    saved = saved_tensors(out)
    assert saved and max(t.numel() for t in saved) < unpooled
    codes = [t for t in saved if t.dtype == torch.int8]
    assert len(codes) == 1 and codes[0].shape == out.shape  # the pool's argmax, one byte per output


class _Keep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x[:2])  # a view: same storage as x
        ctx.extra = torch.zeros(10)  # a ctx attribute, invisible to saved_tensors_hooks
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


def test_counter_sees_ctx_attributes_and_dedupes_views() -> None:
    x = torch.randn(100, requires_grad=True)
    y = _Keep.apply(x) * x  # mul saves both operands: x again (deduped) and the Function's output
    expect = 100 * 4 + 10 * 4 + 100 * 4
    assert saved_activation_bytes(y) == expect
    assert saved_activation_bytes(y, exclude=[x]) == expect - 400
