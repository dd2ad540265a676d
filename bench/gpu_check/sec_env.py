"""Section 0: the machine and the software, and whether the checkout imports cleanly."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from typing import Any

from .common import FORBIDDEN, ROOT, git_commit, gpu_query, load_checkout, nvidia_smi
from .records import FAIL, PASS


def run(ctx: Any) -> None:
    w = ctx.w
    import torch
    import triton

    cuda = torch.cuda.is_available()
    w.kv("cuda_available", cuda)
    if cuda:
        props = torch.cuda.get_device_properties(0)
        name = torch.cuda.get_device_name(0)
        w.kv("device", name + ("" if any(k in name for k in ("H100", "H200")) else " (not an H100 / H200!)"))
        w.kv("SM count", props.multi_processor_count)
        w.kv("compute capability", f"{props.major}.{props.minor}")
        w.kv("memory GiB", round(props.total_memory / 2**30, 1))
        l2 = getattr(props, "L2_cache_size", None)
        w.kv("L2 MiB", round(l2 / 2**20, 1) if l2 else "unknown")
        free, total = torch.cuda.mem_get_info()
        w.kv("free memory now GiB", round(free / 2**30, 1))
    else:
        w.kv("device", "CPU (Triton interpreter, --smoke)" if ctx.sizes.smoke else "no CUDA device")
    with w.part("nvidia-smi"):
        q = gpu_query(
            [
                "name",
                "driver_version",
                "clocks.sm",
                "clocks.max.sm",
                "clocks.mem",
                "clocks.max.mem",
                "clocks.applications.graphics",
                "power.limit",
                "power.max_limit",
                "power.draw",
                "temperature.gpu",
                "pstate",
                "persistence_mode",
                "compute_mode",
                "mig.mode.current",
                "utilization.gpu",
            ]
        )
        for k, v in q.items():
            w.kv(f"nvidia-smi {k}", v)
        if not q:
            w.kv("nvidia-smi", "not available")
        try:
            w.kv("SM clock (torch.cuda.clock_rate, MHz)", torch.cuda.clock_rate() if cuda else "no CUDA")
        except Exception as e:  # pynvml missing
            w.kv("SM clock (torch.cuda.clock_rate)", f"unavailable ({type(e).__name__})")
        apps = nvidia_smi(["--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"])
        others = [ln for ln in (apps or "").splitlines() if ln.strip() and str(os.getpid()) not in ln.split(",")[0]]
        w.kv("other GPU processes", "; ".join(others) if others else ("none" if apps is not None else "unknown"))
    w.kv("torch", torch.__version__)
    tv = triton.__version__
    w.kv("triton", tv + ("" if tuple(int(x) for x in tv.split(".")[:2]) >= (3, 6) else " (older than 3.6!)"))
    w.kv("CUDA (torch build)", torch.version.cuda)
    w.kv("cuDNN", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "unavailable")
    w.kv("python", sys.version.split()[0] + " " + platform.machine())
    try:
        import numpy

        w.kv("numpy", numpy.__version__)
    except ImportError:
        w.kv("numpy", "not installed")
    w.kv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "unset"))
    cache = os.environ.get("TRITON_CACHE_DIR", "unset")
    n_cached = sum(len(f) for _, _, f in os.walk(cache)) if os.path.isdir(cache) else 0
    w.kv("TRITON_CACHE_DIR (whole run)", f"{cache} ({n_cached} files at start)")
    w.kv("git commit", git_commit())
    w.kv("date (UTC)", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))
    w.kv("sizes", ctx.sizes.describe())
    with w.part("import chain"):
        how = ctx.import_how or load_checkout()
        import soundnet_fast.kernels
        import soundnet_fast.model
        import soundnet_fast.train.step  # noqa: F401

        pulled = [m for m in FORBIDDEN if m in sys.modules]
        kfile = os.path.relpath(soundnet_fast.kernels.__file__, ROOT)
        w.row(
            "import chain",
            {
                "check": "soundnet_fast (+ .kernels -> kernels/) from the checkout, no av / DALI / librosa / sklearn",
                "how": f"{how}; kernels from {kfile}",
                "pulled in": ", ".join(pulled) or "none",
            },
            PASS if not pulled and kfile == os.path.join("kernels", "__init__.py") else FAIL,
        )
