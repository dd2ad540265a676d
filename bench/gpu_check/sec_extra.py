"""Optional sections 6b, 6c, 6f: deterministic backward, torch.library.opcheck, VGG16 teacher frames/s.

- determinism: the kernels take ``deterministic`` from ``torch.are_deterministic_algorithms_enabled()`` (model
  blocks pass None): with ``torch.use_deterministic_algorithms(True)`` the backward's reductions use no atomics.
  Two fused training forward + KL + backward passes of SoundNet-8 from the same weights and batch must give
  bitwise-equal block gradients and running statistics (PASS / FAIL); the heads (cuDNN) and the default atomics
  mode are reported for information.
- opcheck: ``torch.library.opcheck`` (schema, fake tensor, autograd registration, AOT dispatch) of every
  ``soundnet_fast::`` op on CUDA tensors, in the variants the model uses.
- vgg16: the teacher's cost (docs/design.md#performance-ceiling: online teachers cost ~75x the student): VGG16
  config D in bf16, eval, channels-last, random weights, synthetic 224 x 224 frames; torchvision's when installed,
  else built from torch.nn layers (the same layer table).
"""

from __future__ import annotations

import os
from typing import Any

from .common import HEAD_CLASSES, clock_snapshot, time_abab
from .records import FAIL, INFO, PASS

VGG16_GFLOP = 30.95  # per 224 x 224 frame (15.47 G multiply-adds)


def determinism(ctx: Any) -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS handle
    import torch

    from soundnet_fast.train.losses import distill_loss

    from .sec_throughput import batch_for, toy_arch

    w, sz, dev = ctx.w, ctx.sizes, ctx.device
    if sz.smoke:
        arch, n_obj, n_scn = toy_arch()
    else:
        from soundnet_fast.model import SoundNet8 as arch

        n_obj, n_scn = HEAD_CLASSES["objects"], HEAD_CLASSES["scenes"]
    audio, targets, length = batch_for(torch, arch, n_obj, n_scn, sz.batch, 0 if sz.smoke else sz.samples, dev)
    blocks = {s.name for s in arch.trunk_specs}

    def once(det: bool) -> dict[str, Any]:
        torch.use_deterministic_algorithms(det, warn_only=True)
        try:
            torch.manual_seed(0)
            model = arch(n_obj, n_scn).to(dev)
            model.check_inputs = False
            model.set_backend("fused")
            with torch.autocast(dev, dtype=torch.bfloat16):
                objects, scenes = model(audio)
            loss, _ = distill_loss({"objects": objects, "scenes": scenes}, targets, backend="fused")
            loss.backward()
            out = {f"grad {n}": p.grad.detach().clone() for n, p in model.named_parameters()}
            out |= {f"buffer {n}": b.detach().clone() for n, b in model.named_buffers()}
            return out
        finally:
            torch.use_deterministic_algorithms(False)

    table = f"bitwise run to run, {arch.__name__} fused, batch {sz.batch} x {length:,} samples, bf16"
    for det in (True, False):
        with w.part(f"deterministic={det}"):
            a, b = once(det), once(det)
            trunk = [k for k in a if k.split()[1].split(".")[0] in blocks]
            heads = [k for k in a if k not in trunk]
            d_trunk = [k for k in trunk if not torch.equal(a[k], b[k])]
            d_heads = [k for k in heads if not torch.equal(a[k], b[k])]
            worst = max((float((a[k].double() - b[k].double()).abs().max()) for k in d_trunk), default=0.0)
            row = {
                "mode": "deterministic (use_deterministic_algorithms)" if det else "default (atomics)",
                "trunk tensors equal": f"{len(trunk) - len(d_trunk)} / {len(trunk)}",
                "heads tensors equal": f"{len(heads) - len(d_heads)} / {len(heads)}",
                "largest trunk difference": worst,
                "first differing": (d_trunk or d_heads or ["-"])[0],
            }
            w.row(table, row, (PASS if not d_trunk else FAIL) if det else INFO)


def _opcheck_cases(torch: Any, device: str = "cuda") -> list[tuple[str, Any, tuple]]:
    from soundnet_fast import kernels  # noqa: F401  (registers the ops)
    from soundnet_fast.kernels._conv_paths import kept_input, x_of_kept

    ops = torch.ops.soundnet_fast
    gen = torch.Generator(device="cpu").manual_seed(7)

    def r(*shape: int, scale: float = 1.0, grad: bool = False, dtype: Any = torch.float32):
        t = (torch.randn(*shape, generator=gen) * scale).to(device, dtype)
        return t.requires_grad_(grad)

    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for training, pool in ((True, 8), (True, None), (False, 8)):
            x, w = r(4, 16, 300, grad=True, dtype=dtype), r(32, 16, 32, scale=0.05, grad=True, dtype=dtype)
            b = r(32, grad=True, dtype=dtype)
            g, beta = (1 + r(32, scale=0.1)).requires_grad_(), r(32, grad=True)
            rm, rv = torch.zeros(32, device=device), torch.ones(32, device=device)
            nbt = torch.zeros((), dtype=torch.long, device=device)
            name = f"{str(dtype)[6:]} training={training} pool={pool}"
            detached = (x.detach(), w.detach(), b.detach())
            if training:  # the statistics op (mutating BN's running statistics), then the pool op on its outputs
                sargs = (*detached, rm, rv, nbt, 2, 16, 1e-5, 0.1, pool, 0)
                cases.append((f"conv1d_bn_stats_ {name}", ops.conv1d_bn_stats_.default, sargs))
                stats, z, xp = ops.conv1d_bn_stats_.default(*detached, None, None, None, *sargs[6:])
            else:
                stats, z, xp = torch.stack([rm, rv.rsqrt(), rv, torch.zeros_like(rm)]), x.new_empty(0), x.new_empty(0)
            # deterministic: atomics would make eager and AOT gradients differ by their summation order
            args = (x, w, b, g, beta, stats, z, xp, 2, 16, training, pool, True, 0)
            cases.append((f"conv1d_bn_relu {name}", ops.conv1d_bn_relu.default, args))
            with torch.no_grad():
                out, code, zmax, xk = ops.conv1d_bn_relu.default(*args)
            if not xk.numel() and kept_input(16, 32, 32, 2, pool, dtype):
                xk = xp  # the padded copy the backward reuses (kept by one of the two ops)
            xv = x_of_kept(xk, x.shape[-1], 16) if xk.numel() else x.detach()
            bargs = (torch.randn_like(out), xv, *detached[1:], g.detach(), stats, code, zmax if pool else out, z, xk,
                     2, 16, training, pool, True, 0, True)  # fmt: skip
            cases.append((f"conv1d_bn_relu_backward {name}", ops.conv1d_bn_relu_backward.default, bargs))
    for red in ("batchmean", "sum", "none"):
        z = r(4, 1000, 4, scale=3.0, grad=True)
        p = torch.softmax(r(4, 1000, 4), 1)
        cases.append((f"kl_div {red}", ops.kl_div.default, (z, p, 1, red, True)))
    stats = torch.stack([r(32), r(32).abs() + 1, r(32).abs() + 1, torch.full((32,), 100.0, device=device)])
    nbt = torch.zeros((), dtype=torch.long, device=device)
    cases.append(
        (
            "bn_update_running_stats_",
            ops.bn_update_running_stats_.default,
            (torch.zeros(32, device=device), torch.ones(32, device=device), nbt, stats, 0.1),
        )
    )
    return cases


def opcheck(ctx: Any) -> None:
    import torch

    w = ctx.w
    with w.part("opcheck cases"):
        cases = _opcheck_cases(torch)
    for name, op, args in cases:
        with w.part(f"opcheck {name}"):
            res = torch.library.opcheck(op, args, raise_exception=False)
            bad = {k: f"{type(v).__name__}: {str(v)[:200]}" for k, v in res.items() if v != "SUCCESS"}
            row = {"op": name, "tests": ", ".join(res), "failed": "; ".join(f"{k}: {v}" for k, v in bad.items()) or "-"}
            w.row("torch.library.opcheck on CUDA tensors", row, PASS if not bad else FAIL)


def vgg16_model() -> tuple[Any, str]:
    """The teachers' VGG16 (config D, torchvision's layout): the product's own module, random weights."""
    from soundnet_fast.prepare.teachers import VGG16

    return VGG16(1000), "soundnet_fast.prepare.teachers.VGG16 (torchvision's config D layout), random weights"


def vgg16(ctx: Any) -> None:
    import torch

    w, sz, dev = ctx.w, ctx.sizes, ctx.device
    torch.backends.cudnn.benchmark = True
    batch, side = (2, 32) if sz.smoke else (64, 224)
    with w.part("vgg16"):
        model, how = vgg16_model()
        model = model.to(dev, torch.bfloat16).eval().to(memory_format=torch.channels_last)
        frames = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0))
        frames = frames.to(dev, torch.bfloat16).contiguous(memory_format=torch.channels_last)

        def fwd() -> None:
            with torch.inference_mode():
                model(frames)

        before = clock_snapshot() if dev == "cuda" else {}
        res = time_abab(torch, {"vgg16": fwd}, dev, 2 if sz.smoke else 15, warmup=1 if sz.smoke else 3)["vgg16"]
        after = clock_snapshot() if dev == "cuda" else {}
        fps = batch * 1e3 / res["median"]
        gflop = VGG16_GFLOP * (side / 224) ** 2
        w.row(
            f"VGG16 bf16 inference, batch {batch} x 3 x {side} x {side}",
            {
                "model": how,
                "median ms": round(res["median"], 3),
                "p10-p90 ms": f"{res['p10']:.3f}-{res['p90']:.3f}",
                "n": res["n"],
                "frames/s": round(fps, 1),
                "TFLOP/s": round(fps * gflop / 1e3, 1),
                "SM clock before / after": f"{before.get('clocks.sm', '-')} / {after.get('clocks.sm', '-')}",
            },
            INFO,
        )
