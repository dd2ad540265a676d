"""The parent (budget, one process per section, timeouts, the report) and the section entry point.

Parent: runs ``python -m bench.gpu_check --section NAME ...`` for each section in plan order, each in its own
session (process group) with its own timeout; an overrun kills the whole group (pool workers and profiler children
included) and is recorded as "timed out after N s". Before each section it compares what is left of the budget with
the section's estimate: optional sections that do not fit (keeping the estimates of the mandatory sections still to
come) are recorded as "skipped: budget", and a section's timeout never reaches past the budget. After every section
(and at the end) it renders report.md from the JSON lines. SIGTERM / SIGINT end the run the same way: the running
section is killed, its outcome recorded, the report written.

Section: records go to ``NN-<name>.jsonl`` in the output folder as they are measured. A section process asks the
kernel to SIGKILL it when the parent dies (prctl PR_SET_PDEATHSIG), so killing the parent leaves no orphan running.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import plan
from .common import ROOT, SAMPLE_RATE, Sizes, load_checkout, smoke_sizes
from .records import Writer, failures, read_records, write_report

RESERVE_S = 3.0  # kept back for the final report
MIN_SECTION_S = 5.0  # a section given less than this is not started


def set_parent_death_signal() -> None:
    """Linux: SIGKILL this process when its parent dies; exit at once if the parent is already gone."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os._exit(3)


@dataclass
class Ctx:
    """What a section function gets."""

    out: Path
    sizes: Sizes
    w: Writer
    device: str
    args: Any
    deadline: float = 0.0  # UNIX time at which the parent kills this section
    import_how: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def launch_sizes(self) -> tuple[int, int]:
        """(batch, samples) of the recorded kernel launches: the run's sizes, or on the smoke run the recipe's
        (meta tensors cost nothing; nothing is launched there)."""
        return (64, 20 * SAMPLE_RATE) if self.sizes.smoke else (self.sizes.batch, self.sizes.samples)


def sizes_from(args: Any) -> Sizes:
    return smoke_sizes() if args.smoke else Sizes(smoke=False, batch=args.batch, seconds=args.seconds)


def section_main(args: Any) -> int:
    """Run one section in this process (the parent started it)."""
    set_parent_death_signal()
    if args.smoke:
        # before Triton decorates any kernel (docs/design.md#interpreter-and-process-rules)
        os.environ["TRITON_INTERPRET"] = "1"
    sec = plan.by_name(args.section)
    out = Path(args.out)
    w = Writer(out / f"{plan.index(sec.name):02d}-{sec.name}.jsonl", sec.name)
    deadline = args.deadline or time.time() + (sec.smoke_timeout if args.smoke else sec.timeout)
    ctx = Ctx(
        out=out, sizes=sizes_from(args), w=w, device="cpu" if args.smoke else "cuda", args=args, deadline=deadline
    )
    try:
        ctx.import_how = load_checkout() if sec.checkout else ""
        fn = getattr(importlib.import_module(f"bench.gpu_check.{sec.module}"), sec.func)
        fn(ctx)
    except Exception as e:
        w.error(sec.name, e)
        return 1
    finally:
        w.close()
    return 0


def _prepare_out(out: Path | None, smoke: bool) -> Path:
    if out is None:
        if smoke:  # a CPU script check: nothing to keep in the repository
            return Path(tempfile.mkdtemp(prefix="gpu_check-smoke-"))
        out = ROOT / "bench" / "results" / f"gpu_check-{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}"
    out.mkdir(parents=True, exist_ok=True)
    old = list(out.glob("*.jsonl")) + [p for p in (out / "report.md", out / "logs", out / "ncu") if p.exists()]
    if old:  # never mix two runs' records: move the earlier one aside
        keep = out / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
        keep.mkdir()
        for p in old:
            shutil.move(str(p), keep / p.name)
    return out


def _cuda_in_child() -> bool:
    """torch.cuda.is_available() in a child process (the parent imports no torch: its sections do)."""
    code = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"
    try:
        return subprocess.run([sys.executable, "-c", code], timeout=180).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _cuda_available(out: Path) -> bool | None:
    recs, _ = read_records(out)
    for r in recs:
        if r.get("section") == "environment" and r.get("type") == "kv" and r.get("key") == "cuda_available":
            return bool(r.get("value"))
    return None


class _Stop(Exception):
    pass


def _on_signal(signum: int, frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def _run_section(sec: plan.Section, args: Any, out: Path, env: dict[str, str], timeout: float) -> str:
    idx = plan.index(sec.name)
    (out / "logs").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "bench.gpu_check", "--section", sec.name, "--out", str(out)]
    cmd += ["--batch", str(args.batch), "--seconds", str(args.seconds), "--deadline", f"{time.time() + timeout:.1f}"]
    cmd += ["--smoke"] if args.smoke else []
    cmd += ["--predictions", str(Path(args.predictions).resolve())] if args.predictions else []
    with open(out / "logs" / f"{idx:02d}-{sec.name}.log", "w") as log:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(p)
            return f"timed out after {timeout:.0f} s"
        except BaseException:
            _kill(p)
            raise
    return "done" if rc == 0 else f"failed (exit {rc})"


def _kill(p: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=30)


def parent_main(args: Any) -> int:
    t0 = time.time()
    sizes = sizes_from(args)
    if not args.smoke and not _cuda_in_child():  # before any folder is made or an earlier run is moved aside
        print(
            "bench.gpu_check needs a CUDA GPU (torch.cuda.is_available() is False); nothing was run or written. "
            "Use --smoke to check the script on a CPU.",
            file=sys.stderr,
        )
        return 2
    out = _prepare_out(args.out, args.smoke)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    if args.smoke:
        env["TRITON_INTERPRET"] = "1"
    own_cache = not env.get("TRITON_CACHE_DIR")
    if own_cache:  # one fresh cache for the whole run: section 1 fills it, the rest read it; removed at the end
        env["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="gpu_check-triton-cache-")
    wanted = [s.strip() for s in args.sections.split(",")] if args.sections else None
    for name in wanted or []:
        plan.by_name(name)  # unknown names fail before anything runs
    sections = [s for s in plan.SECTIONS if wanted is None or s.name in wanted]
    overrides = dict(_parse_override(v) for v in args.section_timeout or [])
    est = {s.name: (0.0 if s.cuda_only else s.smoke_estimate) if args.smoke else s.estimate for s in sections}
    run = Writer(out / "run.jsonl", "run")
    run.write(
        "plan",
        budget=args.budget,
        sizes=sizes.describe(),
        argv=sys.argv[1:],
        sections=[
            {
                "name": s.name,
                "title": s.title,
                "estimate": s.estimate,
                "optional": s.optional,
                "cuda_only": s.cuda_only,
                "timeout": overrides.get(s.name, s.smoke_timeout if args.smoke else s.timeout),
            }
            for s in sections
        ],
    )
    print(f"bench.gpu_check: {len(sections)} sections, budget {args.budget:.0f} s, output {out}", flush=True)
    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    code, current = None, None
    try:
        for i, sec in enumerate(sections):
            current = (sec, time.time())
            left = args.budget - (time.time() - t0) - RESERVE_S
            later = sum(est[s.name] for s in sections[i + 1 :] if not s.optional)
            timeout = overrides.get(sec.name, sec.smoke_timeout if args.smoke else sec.timeout)
            start = time.time()
            if sec.cuda_only and (args.smoke or _cuda_available(out) is False):
                w = Writer(out / f"{plan.index(sec.name):02d}-{sec.name}.jsonl", sec.name)
                w.skip("skipped: no CUDA (this section needs a GPU)")
                w.close()
                status = "skipped: no CUDA"
            elif left < MIN_SECTION_S or (sec.optional and est[sec.name] > left - later):
                status = "skipped: budget"
            else:
                timeout = min(timeout, max(est[sec.name], left - later), left)
                print(f"[{time.time() - t0:6.1f} s] {sec.name}: running (timeout {timeout:.0f} s)", flush=True)
                status = _run_section(sec, args, out, env, timeout)
            elapsed = time.time() - start
            run.write(
                "section",
                name=sec.name,
                status=status,
                elapsed=round(elapsed, 2),
                estimate=sec.estimate,
                timeout=round(timeout, 1),
                optional=sec.optional,
            )
            print(f"[{time.time() - t0:6.1f} s] {sec.name}: {status} ({elapsed:.1f} s)", flush=True)
            if status.startswith(("failed", "timed out")):
                _print_log_tail(out, sec)
            current = None
            write_report(out)
            if sec.name == "environment" and not args.smoke and _cuda_available(out) is False:
                print("bench.gpu_check needs a CUDA GPU (torch.cuda.is_available() is False). Use --smoke on a CPU.")
                code = 2
                break
    except _Stop as e:  # the running section was killed by _run_section; the rest are "not reached"
        if current is not None:
            sec, start = current
            run.write(
                "section",
                name=sec.name,
                status=f"failed (interrupted by {e})",
                elapsed=round(time.time() - start, 2),
                estimate=sec.estimate,
                timeout=0,
                optional=sec.optional,
            )
        print(f"bench.gpu_check: interrupted by {e}", flush=True)
        code = 1
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        if own_cache:
            shutil.rmtree(env["TRITON_CACHE_DIR"], ignore_errors=True)
    records, _ = read_records(out)
    fails = failures(records)
    run.write("finish", elapsed=round(time.time() - t0, 2), failures=fails, exit=code or (1 if fails else 0))
    run.close()
    report = write_report(out)
    print(report.read_text())
    verdict = f"{len(fails)} FAILURE(S)" if fails else "ALL PASS"
    verdict = "NOTHING CHECKED (no CUDA device)" if code == 2 else verdict
    print(f"report: {report}\nrecords: {out}/*.jsonl\n{verdict}")
    return code if code is not None else (1 if fails else 0)


def _parse_override(text: str) -> tuple[str, float]:
    name, _, secs = text.partition("=")
    plan.by_name(name)
    return name, float(secs)


def _print_log_tail(out: Path, sec: plan.Section) -> None:
    log = out / "logs" / f"{plan.index(sec.name):02d}-{sec.name}.log"
    with contextlib.suppress(OSError):
        print("    | " + "\n    | ".join(log.read_text(errors="replace")[-3000:].splitlines()), flush=True)
