"""The sections of a GPU check run, in order, with their cost estimates and timeouts (no torch import here).

Estimates are seconds at full size (batch 64, 20 s clips) on one H100 / H200, each including its process start
(Python + torch import + CUDA context, ~6 s); ``timeout`` is the kill limit of the section's process. Mandatory
sections (0-5) add up to ~340 s; the optional ones (6) run in the listed order while their estimate fits what is
left of the parent's budget (450 s by default) and are otherwise recorded as "skipped: budget".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    module: str  # bench.gpu_check.<module>.<func>(ctx) runs it
    func: str
    estimate: float  # s at full size
    timeout: float  # s, hard kill
    optional: bool = False
    cuda_only: bool = False  # on the smoke run (no CUDA) recorded as "skipped: no CUDA" without a process
    smoke_timeout: float = 120.0
    smoke_estimate: float = 15.0  # s on the 2-core CPU smoke run (Triton interpreter, toy sizes)
    checkout: bool = True  # import the checkout before the section runs (ncu does it only when it has work)


# fmt: off
S, OPT, GPU = Section, {"optional": True}, {"cuda_only": True}
SECTIONS: tuple[Section, ...] = (
    #  name            title                                                module / function           est  timeout
    S("environment",   "0. Environment",                                    "sec_env", "run",            10, 45,
      smoke_timeout=60),
    S("precompile",    "1. Precompile the bf16 training kernels",          "sec_compile", "run",        45, 150,
      smoke_timeout=60),
    S("parity",        "2. Parity of the timed configuration (bf16)",       "sec_parity", "run_bf16",    30, 100),
    S("throughput",    "3. Clips/s: trunk and train step",                  "sec_throughput", "run",     45, 120),
    S("compile",       "3b. torch.compile: ops and train step",             "sec_compile_model", "run", 110, 170,
      **GPU),
    S("kernels",       "4. Per-kernel time vs the static prediction",       "sec_kernels", "run",        40, 100),
    S("ncu",           "5. Nsight Compute on the costliest kernels",        "sec_ncu", "run",            60, 100,
      checkout=False),
    S("fp32_parity",   "6a. fp32 parity (TF32-robust rule), IEEE fp32",     "sec_parity", "run_fp32",    45, 90, **OPT),
    S("determinism",   "6b. Deterministic backward, bitwise run to run",    "sec_extra", "determinism",  15, 45, **OPT),
    S("opcheck",       "6c. torch.library.opcheck on CUDA",                 "sec_extra", "opcheck",      25, 70,
      **OPT, **GPU),
    S("eval_parity",   "6d. Eval-mode parity",                              "sec_parity", "run_eval",    15, 45, **OPT),
    S("soundnet5",     "6e. SoundNet-5 clips/s",                            "sec_throughput", "run_soundnet5",
      30, 70, **OPT),
    S("vgg16",         "6f. VGG16 teacher frames/s (bf16)",                 "sec_extra", "vgg16",        20, 50, **OPT),
    S("compile_batch", "6g. torch.compile at a second batch size",          "sec_compile_model", "run_second_batch",
      90, 130, **OPT, **GPU),
)
# fmt: on


def by_name(name: str) -> Section:
    for s in SECTIONS:
        if s.name == name:
            return s
    raise KeyError(f"unknown section {name!r}; sections: {', '.join(s.name for s in SECTIONS)}")


def index(name: str) -> int:
    names = [s.name for s in SECTIONS]
    return names.index(name)
