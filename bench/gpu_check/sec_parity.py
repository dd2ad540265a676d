"""Sections 2, 6a, 6d: parity of each SoundNet-8 block, fused vs eager vs a float64 reference.

Each block (conv -> BN -> ReLU -> pool) runs forward and backward on the same inputs three ways: the fused op,
eager PyTorch in the same precision, and float64 on the same (rounded) inputs. Errors are relative Frobenius norms
against float64, for the output, dx, dW, db (its denominator floored at |dW|: it cancels to ~0 under batch
statistics), dgamma, dbeta and the running mean. Rule (as in tests/kernels): PASS when the fused error is at most
twice eager's (or <= 1e-6).

- 2 (bf16, the timed configuration): x and the conv parameters in bf16, BN parameters and statistics fp32 - what
  ``torch.autocast`` makes of the model's blocks - at the full batch and clip length, in training mode.
- 6a (fp32): with ``torch.backends.cudnn.allow_tf32 = True`` the fused op multiplies in TF32, but cuDNN may or may
  not pick a TF32 algorithm for the eager conv, so "fused <= 2 x eager" would fail whenever cuDNN chose IEEE.
  The rule is made robust: PASS when fused <= 2 x max(eager with TF32 allowed, eager IEEE, an emulated TF32
  eager) - the emulation rounds x, W and the conv-output gradient to TF32 (10 mantissa bits) and computes in
  IEEE fp32, which is what a TF32 tensor-core conv computes, so the bound holds whatever cuDNN chose. A second
  pass with TF32 off everywhere keeps the strict rule (fused IEEE <= 2 x eager IEEE). Batch <= 16 (full clips).
- 6d (eval mode): running statistics instead of batch statistics, bf16 and IEEE fp32, batch <= 8.
"""

from __future__ import annotations

from typing import Any

from .common import dtype_name, nrel, tf32_round
from .records import FAIL, PASS

NAMES = ["out", "dx", "dW", "db", "dgamma", "dbeta"]
SMOKE_BF16 = ("conv1", "conv2", "conv3", "conv5")  # waveform input, both pools, and a block without pool


def block_shapes(samples: int) -> list[tuple[str, int, int, int, int, int, int, int | None]]:
    """(name, C_in, L_in, C_out, k, s, p, pool) of each SoundNet-8 block for an input of ``samples`` samples."""
    from soundnet_fast.model import SOUNDNET8_TRUNK, conv_out_len

    out, c_in, length = [], 1, samples
    for sp in SOUNDNET8_TRUNK:
        out.append((sp.name, c_in, length, sp.out_channels, sp.kernel, sp.stride, sp.padding, sp.pool))
        length = conv_out_len(length, sp.kernel, sp.stride, sp.padding)
        length = length // sp.pool if sp.pool else length
        c_in = sp.out_channels
    return out


def make_inputs(torch: Any, c_in: int, length: int, c_out: int, k: int, batch: int, device: str, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float32) * scale).to(device)

    x = rnd(batch, c_in, length, scale=64.0 if c_in == 1 else 1.0)  # waveform x256 levels for conv1
    w = rnd(c_out, c_in, k, scale=(c_in * k) ** -0.5 * (1 / 64.0 if c_in == 1 else 1.0))
    return [x, w, rnd(c_out, scale=0.1), 1 + rnd(c_out, scale=0.1), rnd(c_out, scale=0.1)]


def run_block(torch: Any, shape: tuple, batch: int, device: str, dtype: Any, mode: str, training: bool = True):
    """(out, [grads of x, W, b, gamma, beta], running_mean) of one block in ``mode``: 'f64' reference, 'eager'
    or 'fused' in ``dtype`` (BN parameters fp32), or 'emul_tf32' (eager IEEE on TF32-rounded operands)."""
    import torch.nn.functional as F

    from soundnet_fast.kernels import conv1d_bn_relu

    name, c_in, length, c_out, k, s, p, pool = shape
    ps = make_inputs(torch, c_in, length, c_out, k, batch, device)
    ps = [t.to(dtype) if i < 3 else t for i, t in enumerate(ps)]  # conv operands in dtype, BN parameters fp32
    if mode == "f64":
        ps = [t.double() for t in ps]
    if mode == "emul_tf32":
        ps = [tf32_round(torch, t) if i < 2 else t for i, t in enumerate(ps)]
    ps = [t.clone().requires_grad_(i > 0 or c_in > 1) for i, t in enumerate(ps)]
    stat_dtype = torch.float64 if mode == "f64" else torch.float32
    rm = torch.zeros(c_out, device=device, dtype=stat_dtype)
    rv = torch.ones(c_out, device=device, dtype=stat_dtype)
    x, w, b, g, beta = ps
    if mode == "fused":
        out = conv1d_bn_relu(x, w, b, g, beta, rm, rv, stride=s, padding=p, training=training, pool=pool)
    else:
        z = F.conv1d(x, w, b, s, p)
        if mode == "emul_tf32" and z.requires_grad:
            z.register_hook(lambda gr: tf32_round(torch, gr))
        y = F.relu(F.batch_norm(z, rm, rv, g, beta, training, 0.1, 1e-5))
        out = F.max_pool1d(y, pool, pool) if pool else y
    gen = torch.Generator(device="cpu").manual_seed(1)
    grad = torch.randn(out.shape, generator=gen).to(device).to(dtype)
    out.backward(grad.to(out.dtype))
    return out.detach(), [t.grad for t in ps], rm


def errors(ref: tuple, other: tuple) -> list[float | None]:
    """Errors of out, dx, dW, db, dgamma, dbeta and the running mean against the reference."""
    errs: list[float | None] = []
    for i, n in enumerate(NAMES):
        r = ref[0] if i == 0 else ref[1][i - 1]
        o = other[0] if i == 0 else other[1][i - 1]
        if r is None or o is None:
            errs.append(None)
            continue
        floor = ref[1][1].norm().item() if n == "db" else 0.0  # |dW|: db cancels to ~0 under batch statistics
        errs.append(nrel(o, r, floor))
    errs.append(nrel(other[2], ref[2]))
    return errs


def _pass_row(w: Any, table: str, label: str, block: str, ef: list, bound: list, shown: list) -> bool:
    """One table row: fused error / bound per quantity; PASS when every fused error <= 2 x bound (or <= 1e-6)."""
    row: dict[str, Any] = {"pass": label, "block": block}
    ok = True
    for n, f, b, e in zip(NAMES + ["running_mean"], ef, bound, shown, strict=True):
        if f is None:
            row[n] = "-"
            continue
        good = f <= max(2 * b, 1e-6 if n != "running_mean" else 1e-5)
        ok &= good
        row[n] = f"{f:.1e} / {e:.1e}" + ("" if good else " X")
    w.row(table, row, PASS if ok else FAIL)
    return ok


def shapes_for(sz: Any, full: tuple[str, ...] | None = None, smoke: tuple[str, ...] = ("conv2", "conv5")) -> list:
    """The blocks a pass checks: ``full`` (None: all) at full size; on the smoke run a few cheap ones (the
    interpreter needs seconds per fused block, conv7's 1,024 channels most of all)."""
    names = smoke if sz.smoke else full
    return [s for s in block_shapes(sz.block_samples) if names is None or s[0] in names]


def _empty_cache(torch: Any, device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def run_bf16(ctx: Any) -> None:
    """Section 2: the timed configuration, every block, bf16, training."""
    import torch

    w, sz = ctx.w, ctx.sizes
    table = f"bf16 training, batch {sz.batch}: fused / eager error vs float64"
    subset = ", a subset of the blocks on the smoke run" if sz.smoke else ""
    w.note(
        f"{sz.describe()}; each block at its input length in the clip (per-block checks at {sz.block_samples:,} "
        f"samples{subset}). Cells: fused / eager relative error; PASS when fused <= 2 x eager (or <= 1e-6)."
    )
    torch.backends.cudnn.allow_tf32 = True
    for shape in shapes_for(sz, None, SMOKE_BF16):
        with w.part(f"bf16 {shape[0]}"):
            ref = run_block(torch, shape, sz.batch, ctx.device, torch.bfloat16, "f64")
            eager = run_block(torch, shape, sz.batch, ctx.device, torch.bfloat16, "eager")
            fused = run_block(torch, shape, sz.batch, ctx.device, torch.bfloat16, "fused")
            ee, ef = errors(ref, eager), errors(ref, fused)
            _pass_row(w, table, "bf16", shape[0], ef, ee, ee)
            del ref, eager, fused
            _empty_cache(torch, ctx.device)


def run_fp32(ctx: Any) -> None:
    """Section 6a: fp32 under the TF32-robust rule, then IEEE fp32 under the strict rule."""
    import torch

    w, sz = ctx.w, ctx.sizes
    batch = min(sz.batch, 16)  # relative errors do not need batch 64; float64 conv1 at 64 x 20 s ran past 70 s
    table = f"fp32 training, batch {batch}: fused error / bound vs float64"
    w.note(
        "TF32 pass: bound = max(eager with allow_tf32, eager IEEE, emulated TF32 eager); IEEE pass: bound = eager "
        "IEEE. PASS when fused <= 2 x bound (or <= 1e-6). See the module docstring of bench/gpu_check/sec_parity.py."
    )
    f32 = torch.float32
    for shape in shapes_for(sz):
        with w.part(f"fp32 {shape[0]}"):
            ref = run_block(torch, shape, batch, ctx.device, f32, "f64")
            torch.backends.cudnn.allow_tf32 = False
            e_ieee = errors(ref, run_block(torch, shape, batch, ctx.device, f32, "eager"))
            e_emul = errors(ref, run_block(torch, shape, batch, ctx.device, f32, "emul_tf32"))
            f_ieee = errors(ref, run_block(torch, shape, batch, ctx.device, f32, "fused"))
            torch.backends.cudnn.allow_tf32 = True
            e_tf32 = errors(ref, run_block(torch, shape, batch, ctx.device, f32, "eager"))
            f_tf32 = errors(ref, run_block(torch, shape, batch, ctx.device, f32, "fused"))
            bound = [None if a is None else max(a, b, c) for a, b, c in zip(e_tf32, e_ieee, e_emul, strict=True)]
            _pass_row(w, table, "TF32 allowed", shape[0], f_tf32, bound, bound)
            _pass_row(w, table, "IEEE", shape[0], f_ieee, e_ieee, e_ieee)
            w.row(
                "eager errors behind the TF32 bound (out, dx, dW)",
                {
                    "block": shape[0],
                    **{
                        k: f"{e[0]:.1e} {e[1] or 0:.1e} {e[2]:.1e}"
                        for k, e in (("eager allow_tf32", e_tf32), ("eager IEEE", e_ieee), ("emulated TF32", e_emul))
                    },
                },
            )
            _empty_cache(torch, ctx.device)
    torch.backends.cudnn.allow_tf32 = True


def run_eval(ctx: Any) -> None:
    """Section 6d: eval mode (running statistics), bf16 and IEEE fp32, batch <= 8."""
    import torch

    w, sz = ctx.w, ctx.sizes
    batch = min(sz.batch, 8)
    table = f"eval mode, batch {batch}: fused / eager error vs float64"
    torch.backends.cudnn.allow_tf32 = False
    for dtype in (torch.bfloat16, torch.float32):
        for shape in shapes_for(sz, ("conv1", "conv2", "conv5", "conv6")):
            with w.part(f"eval {dtype_name(dtype)} {shape[0]}"):
                res = [
                    run_block(torch, shape, batch, ctx.device, dtype, m, training=False)
                    for m in ("f64", "eager", "fused")
                ]
                ee, ef = errors(res[0], res[1]), errors(res[0], res[2])
                ee[-1] = ef[-1] = 0.0  # eval mode leaves the running statistics alone
                _pass_row(w, table, dtype_name(dtype), shape[0], ef, ee, ee)
    torch.backends.cudnn.allow_tf32 = True
