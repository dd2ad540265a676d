"""The Triton launches of one bf16 SoundNet-8 training step, recorded without running anything.

``bench/aot_check.py``'s ``record_launches`` replaces ``wrap_triton`` in the launcher modules by a recorder, and
the launchers run on meta tensors: the exact specialisations a step uses (block sizes, constexprs, dtypes, grids)
come out at full size in well under a second, on any machine. The step is the one the static model predicts
(``bench.sass.launches.record``): per block the statistics and pool passes as the ops run them in training (blocks
chained as the model chains its fused ones), the backward with atomics (the default) and no input gradient for
conv1, and the KL loss of both heads (``reduction="sum"``), labelled with the head's layer name (conv8, conv8_2).

A launch is described as JSON (tensors as shape / stride / dtype) so sections can hand it to a process pool or a
profiler child; :func:`materialize` makes real tensors of those shapes to launch it, :func:`work` counts its
FLOPs and the bytes of its tensor arguments.
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any

from bench.sass.analytic import BANDED, useful_flops

from .common import HEAD_CLASSES, SAMPLE_RATE

KL_HEADS_CLASSES = tuple(HEAD_CLASSES.values())  # objects head (conv8), scenes head (conv8_2)


def constexpr_names(kernel: Any) -> list[str]:
    """Constexpr parameters of a JITFunction, or of an interpreter kernel (which has no ``params``)."""
    params = getattr(kernel, "params", None)
    if params is not None:
        return [p.name for p in params if p.is_constexpr]
    sig = inspect.signature(kernel.fn)
    return [n for n, p in sig.parameters.items() if "constexpr" in str(p.annotation)]


def kernel_fn(kernel: Any) -> Any:
    return getattr(kernel, "fn", kernel)


def _describe(v: Any) -> Any:
    import torch

    if isinstance(v, torch.Tensor):
        return {"tensor": list(v.shape), "stride": list(v.stride()), "dtype": str(v.dtype).replace("torch.", "")}
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    raise TypeError(f"cannot describe launch argument {v!r}")


def describe(kernel: Any, grid: Any, args: tuple, kwargs: dict, layer: str, phase: str) -> dict[str, Any]:
    fn = kernel_fn(kernel)
    names = list(kernel.arg_names)
    cnames = set(constexpr_names(kernel))
    bound = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items() if k in names}
    constexprs = {k: bound[k] for k in names if k in cnames and k in bound}
    return {
        "layer": layer,
        "phase": phase,
        "kernel": fn.__name__,
        "module": fn.__module__,
        "grid": [int(g) for g in grid],
        "args": [_describe(a) for a in args],
        "kwargs": {k: _describe(v) for k, v in kwargs.items()},
        "arg_names": names,
        "constexprs": constexprs,
        "num_warps": int(kwargs.get("num_warps", 4)),
    }


def bf16_training_launches(batch: int, samples: int) -> list[dict[str, Any]]:
    """Every Triton launch of one bf16 training step of SoundNet-8 (trunk + KL of both heads), in order: the step
    ``bench.sass.launches.record`` models (``aot_check.train_step_launches``: blocks chained as the model runs them,
    running statistics updated by the merge launches), so each launch meets its prediction."""
    from bench.sass.launches import Config, record

    out = [describe(lc.kernel, lc.grid, lc.args, lc.kwargs, lc.layer, lc.phase)
           for lc in record(Config("soundnet8", batch, "bf16", samples / SAMPLE_RATE))[0]]  # fmt: skip
    for i, launch in enumerate(out):
        launch["index"] = i
    return out


def spec_key(launch: dict[str, Any]) -> str:
    """What Triton specialises a compiled kernel on: dtypes, integers equal to 1 or divisible by 16, constexprs and
    num_warps (tensors from the caching allocator are always 16-byte aligned)."""
    parts = [launch["kernel"]]
    cnames = set(launch["constexprs"])
    for name, v in zip(launch["arg_names"], launch["args"], strict=False):
        if name in cnames:
            continue
        if isinstance(v, dict):
            parts.append(v["dtype"])
        elif isinstance(v, bool) or v is None:
            parts.append(str(v))
        elif isinstance(v, int):
            parts.append("1" if v == 1 else ("d16" if v % 16 == 0 else ("i64" if abs(v) >= 2**31 else "i32")))
        else:
            parts.append(type(v).__name__)
    parts += [f"{k}={v}" for k, v in sorted(launch["constexprs"].items())] + [f"warps={launch['num_warps']}"]
    return "|".join(parts)


def resolve(launch: dict[str, Any]) -> Any:
    """The kernel object of a described launch (imports its module from the checkout)."""
    return getattr(importlib.import_module(launch["module"]), launch["kernel"])


def warmup_args(launch: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Arguments for ``kernel.warmup``: tensors become their torch dtype (Triton wraps them as MockTensor)."""
    import torch

    conv = lambda v: getattr(torch, v["dtype"]) if isinstance(v, dict) else v
    return [conv(a) for a in launch["args"]], {k: conv(v) for k, v in launch["kwargs"].items()}


def materialize(launch: dict[str, Any], device: Any, seed: int = 0) -> tuple[list[Any], dict[str, Any]]:
    """Real tensors of the launch's shapes, filled with values the kernel can use: per-channel stats rows
    (mean 0, invstd 1, variance 1, a positive count), pool codes within the window, random data elsewhere."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)  # random data made where it is used
    pool = int(launch["constexprs"].get("POOL", 1) or 1)

    def make(name: str, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        shape, stride, dtype = v["tensor"], v["stride"], getattr(torch, v["dtype"])
        t = torch.empty_strided(shape, stride, dtype=dtype, device=device)
        n = math.prod(shape)
        if n == 0:  # e.g. the pool codes of a block without pool
            return t
        if name == "stats_ptr" and len(shape) == 2 and shape[0] == 4:
            vals = torch.tensor([0.0, 1.0, 1.0, 1000.0], dtype=dtype, device=device)
            t.copy_(vals.repeat_interleave(shape[1]).reshape(shape))
        elif not dtype.is_floating_point:
            t.copy_(torch.randint(-1, pool, (n,), generator=gen, device=device).reshape(shape).to(dtype))
        else:
            t.copy_((torch.randn(n, generator=gen, device=device) * 0.5).reshape(shape).to(dtype))
        return t

    names = launch["arg_names"]
    args = [make(names[i] if i < len(names) else "", a) for i, a in enumerate(launch["args"])]
    kwargs = {k: make(k, v) for k, v in launch["kwargs"].items()}
    return args, kwargs


def _bound(launch: dict[str, Any]) -> dict[str, Any]:
    return dict(zip(launch["arg_names"], launch["args"], strict=False)) | launch["kwargs"]


def work(launch: dict[str, Any]) -> tuple[float, float]:
    """(FLOPs, bytes) of a launch: multiply-adds x 2 of its implicit GEMMs (the recomputed conv included; masked
    slots of the transposed conv counted, K / stride per output), and the bytes of its tensor arguments, each
    counted once (a lower bound of its DRAM traffic)."""
    a = _bound(launch)
    get = lambda k: int(a.get(k, 0) or 0)
    name = launch["kernel"]
    conv = 2.0 * get("C_OUT") * get("R")
    if name in ("_conv_stats_kernel", "_bwd_reduce_kernel", "_bwd_gz_kernel"):
        flops = conv * get("M")
    elif name == "_conv_bn_relu_pool_kernel":
        flops = conv * get("Q") * get("POOL")
    elif name == "_bwd_gz_dw_kernel":
        flops = 2 * conv * get("M")
    elif name == "_dw_kernel":
        flops = conv * get("M")
    elif name == "_dx_kernel":
        n = get("M") // max(1, get("T"))
        flops = 2.0 * n * get("C_IN") * get("L") * get("C_OUT") * get("K") / max(1, get("stride"))
    elif name in BANDED or name.startswith("_rows_"):  # _conv_banded.py, _conv_rows.py: as the static model counts
        flops = useful_flops(name, a)
    else:  # statistics merge, KL: elementwise
        flops = 0.0
    itemsize = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8, "int8": 1, "int16": 2, "int32": 4, "int64": 8}
    nbytes = 0.0
    for v in list(launch["args"]) + list(launch["kwargs"].values()):
        if isinstance(v, dict):
            nbytes += math.prod(v["tensor"]) * itemsize.get(v["dtype"], 4)
    return flops, nbytes
