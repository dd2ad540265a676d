"""Compile every Triton kernel launch of the SoundNet-8 trunk for a GPU target, without a GPU.

    python -m bench.aot_check [--arch 90] [--batch 64] [--seconds 20]

The launchers run on meta tensors with ``wrap_triton`` replaced by a recorder, so the exact
specialisations a training step uses (block sizes, constexprs, dtypes, grids) are captured; each one is
then compiled with Triton's bundled ``ptxas`` for ``sm_<arch>``. Catches what the interpreter cannot:
code that does not lower, grid axes over CUDA's limits (65,535 on axes 1 and 2), and shared memory over
the device's limit. Must run WITHOUT ``TRITON_INTERPRET=1`` (kernels are then interpreter objects).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import triton
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import soundnet_fast.kernels  # noqa: F401  (registers the ops; its ``kl_div`` attribute is the function)
from soundnet_fast.constants import HEAD_CLASSES, SAMPLE_RATE
from soundnet_fast.kernels import _bn_sums, _conv_banded, _conv_bwd, _conv_fwd, _conv_paths, _conv_rows, bn_running
from soundnet_fast.kernels.inputs import padded_input_buffer
from soundnet_fast.model import SOUNDNET8_TRUNK

_KL = sys.modules["soundnet_fast.kernels.kl_div"]
_TYPES = {
    torch.float64: "*fp64",
    torch.float32: "*fp32",
    torch.bfloat16: "*bf16",
    torch.float16: "*fp16",
    torch.int8: "*i8",
    torch.int16: "*i16",
    torch.int32: "*i32",
    torch.int64: "*i64",
}
# Every kernels module that launches through ``wrap_triton`` (the recorder replaces it in each).
LAUNCHER_MODULES = (_conv_fwd, _conv_bwd, _conv_banded, _conv_rows, _bn_sums, bn_running, _KL)
# docs/design.md#soundnet-8: SoundNet-8 trunk (C_out, k, s, p, pool), from the one layer table in soundnet_fast.model
_TRUNK = [(s.out_channels, s.kernel, s.stride, s.padding, s.pool) for s in SOUNDNET8_TRUNK]


@contextlib.contextmanager
def record_launches(precision: str) -> Iterator[list[tuple]]:
    """Replace ``wrap_triton`` in the launcher modules by a recorder of (kernel, grid, args, kwargs)."""
    launches: list[tuple] = []

    class Recorder:
        def __init__(self, kernel) -> None:
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.kernel, grid, args, kwargs))

    mods = LAUNCHER_MODULES
    saved = [(m, m.wrap_triton, getattr(m, "dot_precision", None)) for m in mods]
    for m in mods:
        m.wrap_triton = Recorder
        if hasattr(m, "dot_precision"):
            m.dot_precision = lambda x: precision if x.dtype == torch.float32 else "ieee"
    try:
        yield launches
    finally:
        for m, wrap, prec in saved:
            m.wrap_triton = wrap
            if prec is not None:
                m.dot_precision = prec


def next_chain(
    c_out: int, t: int, pool: int | None, following: tuple | None, dtype: torch.dtype
) -> tuple[int, int] | None:
    """The ``chain`` a block's forward gets where the model chains it to the block ``following`` it,
    (C_out, k, s, p, pool) (``soundnet_fast.model``: every pair of fused blocks), or None."""
    if following is None:
        return None
    nc, nk, ns, npad, npool = following
    return _conv_paths.chain_rows(c_out, t // pool if pool else t, nc, nk, ns, npad, npool, dtype)


def grad_like(out: torch.Tensor, following: tuple | None) -> torch.Tensor:
    """The gradient a block's backward receives for ``out`` (meta): the dx of the block that reads it,
    ``following`` = (C_out, k, s, p, pool), in the layout that block's backward stores it
    (``_conv_paths.dx_channels_last``); contiguous after the last block (the heads' convs)."""
    go = torch.empty(out.shape, dtype=out.dtype, device="meta")
    if following is None:
        return go
    c_out, k, s, _, pool = following
    return _conv_paths.as_layout(go, _conv_paths.dx_channels_last(out.shape[1], c_out, k, s, pool, out.dtype))


def soundnet8_launches(batch: int, samples: int, precision: str = "tf32", blocks: int = len(_TRUNK)) -> list[tuple]:
    """Launches of a training step (forward, deterministic and atomics backward, eval backward) of the
    first ``blocks`` trunk blocks in fp32 and bf16, plus the KL loss of both heads."""
    with record_launches(precision) as launches:
        for dtype in (torch.float32, torch.bfloat16):
            c_in, length = 1, samples
            x = torch.empty(batch, c_in, length, dtype=dtype, device="meta")
            for i, (c_out, k, s, p, pool) in enumerate(_TRUNK[:blocks]):
                t = (length + 2 * p - k) // s + 1
                w2d = torch.empty(c_out, c_in * k, dtype=dtype, device="meta")
                b = torch.empty(c_out, dtype=dtype, device="meta")
                g = torch.empty(c_out, device="meta")
                stats = torch.empty(4, c_out, device="meta")
                _conv_paths.conv_moments(x, w2d, b, k, s, p, t)  # a process group's per-rank moments
                _conv_paths.conv_moments(x, w2d, b, k, s, p, t, 1e-5)  # finalised stats
                nbt = torch.empty((), dtype=torch.int64, device="meta")
                for momentum in (0.1, None):
                    bn_running.update_running_stats(g, g, nbt, stats, momentum)
                _conv_paths.conv_bn_relu_pool(x, w2d, b, g, g, stats, k, s, p, t, pool)  # unchained (fuse())
                chain = next_chain(c_out, t, pool, _TRUNK[i + 1] if i + 1 < blocks else None, dtype)
                out, code, zmax, _, z, xk = _conv_paths.block_forward(
                    x, w2d, b, g, g, k, s, p, t, pool, True, 1e-5, chain=chain, padded=i > 0, running=(g, g, nbt, 0.1)
                )  # chained, as the model runs it, the running statistics updated by the merge
                go = grad_like(out, _TRUNK[i + 1] if i + 1 < blocks else None)
                saved_out = out if pool is None else zmax
                for training, det in ((True, False), (True, True), (False, False)):
                    _conv_paths.conv_bn_relu_backward(
                        go,
                        x,
                        w2d,
                        b,
                        g,
                        stats,
                        code,
                        saved_out,
                        k,
                        s,
                        p,
                        t,
                        pool,
                        training,
                        det,
                        i > 0,
                        None,
                        z if training else None,
                        xk,
                        i > 0,
                    )
                length, c_in, x = (t // pool if pool else t), c_out, out  # the next block reads this one's output
        n_obj, n_scn = HEAD_CLASSES["objects"], HEAD_CLASSES["scenes"]
        for shape in [(batch, n_obj, 4), (batch, n_scn, 4), (batch, n_obj)]:
            z = torch.empty(shape, device="meta")
            for red in ("batchmean", "none"):
                _KL.triton_kl(z, z, 1, red, True)
    return launches


@dataclasses.dataclass
class Launch:
    """One recorded kernel launch of a training step, labelled with its layer and phase."""

    layer: str  # "conv1".. or the head name for the loss
    phase: str  # "forward" | "backward" (the KL loss computes its gradient in the forward: "forward")
    kernel: Any  # the JITFunction
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict


class _OpCounter(TorchDispatchMode):
    """(name, bytes) of each aten op that launches a device kernel (views, allocations and metadata ops
    excluded); bytes: its tensor inputs and outputs (meta shapes x itemsize), what it streams at least once."""

    _FREE = {
        "empty",
        "empty_strided",
        "empty_like",
        "new_empty",
        "new_empty_strided",
        "detach",
        "lift_fresh",
        "promote_types",
        "sym_size",
        "sym_stride",
        "sym_numel",
        "sym_storage_offset",
        "_unsafe_view",  # a reshape that skips the view check: no kernel
    }

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        schema = func._schema
        is_view = any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
        name = schema.name.split("::")[-1]
        result = func(*args, **(kwargs or {}))
        if not is_view and name not in self._FREE:
            leaves = tree_flatten((args, kwargs or {}, result))[0]
            nbytes = sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))
            self.ops.append((name, int(nbytes)))
        return result


def train_step_launches(
    trunk: Sequence[tuple],
    batch: int,
    samples: int,
    dtype: torch.dtype,
    *,
    precision: str = "tf32",
    deterministic: bool = False,
    heads: Sequence[tuple[str, int, int]] = (),
) -> tuple[list[Launch], dict[tuple, list]]:
    """Every Triton launch of one training step (forward with batch statistics, training backward) of a
    trunk given as rows (name, C_out, k, s, p, pool or None), plus the fused KL loss (reduction "sum",
    fp32 logits (batch, classes, T), gradient in the forward) of each head (name, classes, T).

    Returns (launches in issue order, {(layer, phase): (name, bytes) of the other device ops (torch) the
    fused path runs beside them}): the launchers' own torch ops (zero fills, partial sums, clones). BN's
    statistics finalisation and its running-statistics update (momentum 0.1) run in the merge kernel, as in the
    ops. Not included: autocast casts, gradient
    accumulation, the heads' convs, the optimizer."""
    out: list[Launch] = []
    torch_ops: dict[tuple, list] = {}
    with record_launches(precision) as rec:

        def section(layer: str, phase: str, fn) -> None:
            start = len(rec)
            counter = _OpCounter()
            with counter:
                fn()
            torch_ops.setdefault((layer, phase), []).extend(counter.ops)
            out.extend(Launch(layer, phase, k, tuple(int(g) for g in grid), a, kw) for k, grid, a, kw in rec[start:])

        c_in, length = 1, samples
        # conv1 reads its input in place, as the CUDA-graph trainer's static input (SoundNet.input_buffer)
        x = padded_input_buffer(batch, c_in, length, trunk[0][1:], dtype, "meta")
        for i, (name, c_out, k, s, p, pool) in enumerate(trunk):
            t = (length + 2 * p - k) // s + 1
            w2d = torch.empty(c_out, c_in * k, dtype=dtype, device="meta")
            b = torch.empty(c_out, dtype=dtype, device="meta")
            g = torch.empty(c_out, device="meta")
            running = (
                torch.empty(c_out, device="meta"),
                torch.empty(c_out, device="meta"),
                torch.empty((), dtype=torch.int64, device="meta"),
            )  # mean, var, num_batches_tracked
            res: dict[str, Any] = {}

            chain = next_chain(c_out, t, pool, trunk[i + 1][1:] if i + 1 < len(trunk) else None, dtype)

            def fwd(x=x, w2d=w2d, b=b, g=g, k=k, s=s, p=p, t=t, pool=pool, res=res, running=running, chain=chain, i=i):
                res["out"], res["code"], res["zmax"], res["stats"], res["z"], res["xk"] = _conv_paths.block_forward(
                    x, w2d, b, g, g, k, s, p, t, pool, True, 1e-5, chain=chain, padded=True, running=(*running, 0.1)
                )  # as the ops run it (the running statistics updated by the merge), chained as the model chains

            section(name, "forward", fwd)
            out_t, code, stats = res["out"], res["code"], res["stats"]
            go = grad_like(out_t, trunk[i + 1][1:] if i + 1 < len(trunk) else None)
            saved = out_t if pool is None else res["zmax"]
            z, xk = res["z"], res["xk"]  # empty unless keeps_z, kept_input

            def bwd(
                go=go,
                x=x,
                w2d=w2d,
                b=b,
                g=g,
                stats=stats,
                code=code,
                saved=saved,
                k=k,
                s=s,
                p=p,
                t=t,
                pool=pool,
                i=i,
                z=z,
                xk=xk,
            ):
                _conv_paths.conv_bn_relu_backward(
                    go,
                    x,
                    w2d,
                    b,
                    g,
                    stats,
                    code,
                    saved,
                    k,
                    s,
                    p,
                    t,
                    pool,
                    True,
                    deterministic,
                    i > 0,
                    None,
                    z,
                    xk,
                    True,
                )

            section(name, "backward", bwd)
            length, c_in, x = (t // pool if pool else t), c_out, out_t  # the next block reads this one's output
        for name, classes, steps in heads:
            z = torch.empty(batch, classes, steps, device="meta")
            section(name, "forward", lambda z=z: _KL.triton_kl(z, z, 1, "sum", True))
    return out, torch_ops


def _signature(kernel, args: tuple, kwargs: dict) -> tuple[dict, dict]:
    sig, const = {}, {}
    for i, name in enumerate(kernel.arg_names):
        v = args[i] if i < len(args) else kwargs[name]
        if kernel.params[i].is_constexpr:
            sig[name], const[name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[name] = _TYPES[v.dtype]
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, int):
            sig[name] = "i64" if abs(v) >= 2**31 else "i32"
        else:
            sig[name] = "fp32"
    return sig, const


def compile_launches(launches: list[tuple], arch: int = 90, smem_limit: int = 227 * 1024) -> list[tuple]:
    """Compile each distinct specialisation; returns (kernel name, constexprs, shared bytes). Raises on a
    compile error, a grid axis over CUDA's limits or shared memory over ``smem_limit``."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    done: dict[tuple, tuple] = {}
    for kernel, grid, args, kwargs in launches:
        grid = tuple(int(g) for g in grid)
        limits = (2**31 - 1, 65535, 65535)
        if any(g > lim for g, lim in zip(grid, limits, strict=False)):
            raise ValueError(f"{kernel.__name__}: grid {grid} exceeds CUDA's limits {limits}")
        sig, const = _signature(kernel, args, kwargs)
        key = (kernel.__name__, tuple(sorted(sig.items())), tuple(sorted((k, str(v)) for k, v in const.items())))
        if key in done:
            continue
        # the launch's own options (num_stages changes the shared memory the pipeliner allocates)
        opts = {k: kwargs[k] for k in ("num_warps", "num_stages", "maxnreg") if k in kwargs}
        compiled = triton.compile(ASTSource(kernel, sig, const), target=target, options={"num_warps": 4, **opts})
        shared = compiled.metadata.shared
        if shared > smem_limit:
            raise ValueError(f"{kernel.__name__} {const}: {shared} B of shared memory > {smem_limit}")
        done[key] = (kernel.__name__, {k: v for k, v in const.items() if k.isupper()}, shared)
    return list(done.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100 / H200)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args(argv)
    if _conv_fwd.INTERPRET:
        print("aot_check compiles real kernels: run it without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    t0 = time.time()
    results = []
    for precision in ("tf32", "ieee"):
        results += compile_launches(
            soundnet8_launches(args.batch, int(args.seconds * SAMPLE_RATE), precision), args.arch
        )
    for name, const, shared in results:
        print(f"{name:26s} {shared / 1024:6.1f} KB smem  {const}")
    print(
        f"{len(results)} specialisations compiled for sm_{args.arch} in {time.time() - t0:.0f} s; "
        f"max shared memory {max(r[2] for r in results) / 1024:.1f} KB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
