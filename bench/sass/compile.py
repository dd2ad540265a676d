"""Run-time specialisation and ahead-of-time compilation of recorded launches for sm_90a, without a GPU.

The specialisation is Triton's own: the binder ``JITFunction.run`` builds
(``triton.runtime.jit.create_function_from_signature`` over the kernel's signature, calling the native
``specialize_impl``: integers divisible by 16 get the "D" attribute, integers equal to 1 become constexprs,
pointers aligned to 16 bytes get "D"), then ``JITFunction._pack_args`` for the signature, constexprs and
attributes, exactly as a launch on an H100 would. Meta tensors stand in for device tensors (their
``data_ptr()`` is the storage offset in bytes, so a view off a 16-byte boundary loses "D" as it would on a
GPU, where the caching allocator's blocks are 512-byte aligned).

Compiles run in a pool of worker processes sharing ``TRITON_CACHE_DIR``; each worker also runs the
wheel's ``cuobjdump -res-usage`` and ``nvdisasm -c -gi -hex`` (SASS with inlined line info and the
encodings, whose control bits give each instruction's stall count) on the cubin.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message=".*FP_FUSION.*")  # Triton 3.9's notice; fusion stays on (default)
ARCH = 90  # sm_90a: Triton's CUDA backend compiles capability 90 as sm_90a (wgmma, setmaxnreg)
ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"


@dataclasses.dataclass(frozen=True)
class Spec:
    """A distinct compilation: what ``JITFunction.run`` would hand to ``triton.compile``."""

    module: str
    name: str
    signature: tuple  # ((arg name, type string), ...)
    constexprs: tuple  # ((path, value), ...)
    attrs: tuple  # ((path, attrs), ...)
    options: tuple  # ((option, value), ...)

    @property
    def constexpr_values(self) -> dict[str, Any]:
        names = [n for n, _ in self.signature]
        return {names[path[0]]: v for path, v in self.constexprs}

    @property
    def num_warps(self) -> int:
        return int(dict(self.options)["num_warps"])

    @property
    def num_stages(self) -> int:
        return int(dict(self.options)["num_stages"])


def _freeze(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


def _thaw_attrs(attrs: tuple) -> dict:
    return {path: [list(a) for a in value] for path, value in attrs}


def backend():
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    return make_backend(GPUTarget("cuda", ARCH, 32))


def specialise(kernel, args: tuple, kwargs: dict, be=None) -> tuple[Spec, dict[str, Any]]:
    """(Spec, bound arguments by name) of one launch, through Triton's run-time binder."""
    from triton import knobs
    from triton.runtime import jit

    be = be or backend()
    binder = getattr(kernel, "_sass_binder", None)
    if binder is None:
        if not hasattr(jit, "create_function_from_signature"):
            raise RuntimeError("this Triton has no create_function_from_signature (3.6+ expected)")
        binder = jit.create_function_from_signature(kernel.signature, kernel.params, be)
        kernel._sass_binder = binder
    kw = dict(kwargs)
    # JITFunction.run adds these before binding (3.6: debug, instrumentation_mode; 3.9 also fpsan_*)
    kw["debug"] = kw.get("debug", kernel.debug) or knobs.runtime.debug
    if hasattr(knobs.compilation, "instrumentation_mode"):
        kw["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    if hasattr(knobs.compilation, "fpsan_homomorphic_casts"):
        kw["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    bound, specialization, options = binder(*args, **kw)
    options, signature, constexprs, attrs = kernel._pack_args(be, kw, bound, specialization, options)
    opts = {k: v for k, v in options.__dict__.items() if k != "extern_libs"}
    spec = Spec(
        module=kernel.fn.__module__,
        name=kernel.fn.__name__,
        signature=tuple(signature.items()),
        constexprs=tuple(sorted((k, _freeze(v)) for k, v in constexprs.items())),
        attrs=tuple(sorted((k, _freeze(v)) for k, v in attrs.items())),
        options=tuple(sorted((k, _freeze(v)) for k, v in opts.items())),
    )
    return spec, dict(bound)


def rerun_with_triton(version: str, module: str, argv: list[str]) -> int | None:
    """Run ``python -m module argv`` again under ``triton==version`` (installed once, without dependencies,
    into ``.cache/triton-<version>`` and put first on PYTHONPATH) when the importable Triton is another one;
    returns its exit status, or None when this process already has that version (go on here)."""
    have = importlib.metadata.version("triton")
    if have == version:
        return None
    marker = f"{module}:{version}"
    if os.environ.get("SASS_SIDE_TRITON") == marker:
        raise SystemExit(f"asked for Triton {version} but {have} is imported even with .cache/triton-{version} "
                         "first on PYTHONPATH")  # fmt: skip
    target = CACHE / f"triton-{version}"
    if not (target / "triton" / "__init__.py").exists():
        print(f"installing triton=={version} into {target} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        f"triton=={version}"], check=True)  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["SASS_SIDE_TRITON"] = marker
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-m", module, *argv], env=env, cwd=ROOT).returncode


def tool(name: str) -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _init_worker(cache_dir: str) -> None:
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ.pop("TRITON_INTERPRET", None)
    warnings.filterwarnings("ignore", message=".*FP_FUSION.*")


def compile_spec(spec: Spec, kernel=None, sass: bool = True) -> dict[str, Any]:
    """Compile one Spec for sm_90a; registers, stack, shared memory, PTX parameter use and SASS text.
    ``kernel`` (the JITFunction) defaults to ``spec.module.spec.name``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    warnings.filterwarnings("ignore", message=".*FP_FUSION.*")
    kernel = kernel if kernel is not None else getattr(importlib.import_module(spec.module), spec.name)
    src = ASTSource(kernel, dict(spec.signature), dict(spec.constexprs), _thaw_attrs(spec.attrs))
    opts = dict(spec.options)
    compiled = triton.compile(src, target=GPUTarget("cuda", ARCH, 32), options=opts)
    md = compiled.metadata
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        res = subprocess.run([str(tool("cuobjdump")), "-res-usage", str(cubin)], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        text = ""
        if sass:
            text = subprocess.run([str(tool("nvdisasm")), "-c", "-gi", "-hex", str(cubin)], capture_output=True,
                                  text=True, check=True).stdout  # fmt: skip
    m = _RES.search(res)
    if m is None:
        raise RuntimeError(f"cuobjdump -res-usage: no usage line for {spec.name}:\n{res}")
    ptx = compiled.asm["ptx"]
    used = sorted({int(i) for i in re.findall(rf"\[{re.escape(md.name)}_param_(\d+)\]", ptx)})
    return {
        "name": md.name,
        "hash": md.hash,
        "regs": int(m.group(1)),
        "stack": int(m.group(2)),
        "static_shared": int(m.group(3)),
        "local": int(m.group(4)),
        "shared": int(md.shared),  # dynamic shared memory Triton allocates (pipeline buffers, layouts)
        "num_warps": int(md.num_warps),
        "num_stages": int(md.num_stages),
        "ptx_target": (re.search(r"\.target\s+(\S+)", ptx) or [None, "?"])[1],
        "params_used": used,  # indices of PTX kernel parameters the code reads
        "sass": text,
    }


def _compile_no_sass(spec: Spec) -> dict[str, Any]:
    return compile_spec(spec, sass=False)


def compile_all(specs: Iterable[Spec], workers: int = 2, progress: bool = True,
                sass: bool = True) -> dict[Spec, dict[str, Any]]:  # fmt: skip
    """Compile distinct specs in a process pool sharing one Triton cache (.cache/triton); ``sass=False``
    skips the disassembly (registers / stack / shared memory only)."""
    fn = compile_spec if sass else _compile_no_sass
    import triton

    specs = list(dict.fromkeys(specs))
    cache_dir = str(CACHE / "triton" / triton.__version__)
    os.makedirs(cache_dir, exist_ok=True)
    out: dict[Spec, dict[str, Any]] = {}
    if workers <= 1:
        _init_worker(cache_dir)
        for i, s in enumerate(specs):
            out[s] = fn(s)
            if progress:
                print(f"  compiled {i + 1}/{len(specs)} {s.name}", flush=True)
        return out
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(cache_dir,)) as pool:
        for i, (s, r) in enumerate(zip(specs, pool.map(fn, specs), strict=True)):
            out[s] = r
            if progress and ((i + 1) % 10 == 0 or i + 1 == len(specs)):
                print(f"  compiled {i + 1}/{len(specs)}", flush=True)
    return out
