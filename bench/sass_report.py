"""Static performance model of the fused kernels on H100 / H200, computed on a CPU (no GPU, no driver).

    python -m bench.sass_report                    # the venv's Triton
    python -m bench.sass_report --triton 3.6.0     # Triton 3.6.0 (the GPU machine's), side-installed once
    python -m bench.sass_report --spills-only --dtypes bf16 --batches 64 --no-deterministic

Every launch of a SoundNet-8 (20 s) and SoundNet-5 (3 s) training step at batch 64 and 256, bf16 and fp32
(plus the deterministic backward), is specialised with Triton's run-time binder, compiled for sm_90a with
the wheel's ptxas, disassembled, and modelled: dynamic warp-instructions per pipe from the SASS CFG and
the source loops' trip counts, MMA FLOPs, bytes, occupancy, and the binding time bound. Writes
``bench/results/sass_report-triton<version>-<date>.md`` and ``.json``. Everything it reports is a static
prediction, not a measurement. The pieces live in ``bench/sass/``.

A run over part of the configurations (``--archs``, ``--batches``, ``--dtypes``, ``--no-deterministic``)
writes to ``.cache/sass_report/`` unless ``--out-dir`` says otherwise, so it never replaces the committed
full report that ``bench.gpu_check`` reads its predictions from. ``--spills-only`` exits 1 while any launch
spills (today it does).

``--triton X`` installs ``triton==X`` with pip into ``.cache/triton-X`` (once) and re-runs this command
with that directory first on PYTHONPATH, so it shadows the venv's Triton (torch's CPU wheel does not pin
Triton).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"


def _side_env(version: str, argv: list[str]) -> int | None:
    """Re-run under ``triton==version`` when the importable Triton is another one; None to go on here."""
    from bench.sass.compile import rerun_with_triton

    return rerun_with_triton(version, "bench.sass_report", argv)


def _calibration(cfg: dict) -> dict:
    """The earlier static review's figures beside this model's (soundnet8, batch 64, 20 s, bf16)."""
    rows = []
    by = cfg["per_clip"]["warp_instructions_by_layer"]
    c1 = sum(by["conv1"].values())
    c2 = sum(by["conv2"].values())
    rows.append(("conv1+conv2 fwd+bwd warp-inst / clip", "~141 M", f"{(c1 + c2) / 1e6:.1f} M"))
    rows.append(("conv1 / conv2", "~100.6 M / ~40.7 M", f"{c1 / 1e6:.1f} M / {c2 / 1e6:.1f} M"))
    L = {(r["layer"], r["kernel"]): r for r in cfg["launches"]}

    def conv2(*names: str) -> dict:  # the generic kernel, or its row-GEMM twin (kernels/_conv_rows.py)
        return next(L[("conv2", k)] for k in names if ("conv2", k) in L)

    steps = [
        conv2(*k)["detail"]["loops"][-1]
        for k in (
            ("_conv_stats_kernel", "_rows_stats_kernel"),
            ("_conv_bn_relu_pool_kernel", "_rows_bn_relu_pool_kernel"),
        )
    ]
    rows.append(
        (
            "conv2 inner reduction step (stats; pool): instructions / thread vs tensor-core instructions / warp",
            "~1,150 vs 32",
            "; ".join(f"{s['body_instructions']:,} vs {s['body_mma']}" for s in steps),
        )
    )
    tile = []
    for k, ref in (("_conv_stats_kernel", "~3,300"), ("_conv_bn_relu_pool_kernel", "~1,900"),
                   ("_bwd_reduce_kernel", "~4,200"), ("_bwd_gz_dw_kernel", "~5,200")):  # fmt: skip
        r = L.get(("conv1", k))
        if r is not None:  # since the banded kernels (kernels/_conv_banded.py), conv1 runs none of these
            tiles = r["constexprs"].get("TILES", 1)
            tile.append((k, ref, f"{r['detail']['per_thread_per_program'] / tiles:,.0f}"))
    rows.append(("conv1 per 16x128 tile, instructions / thread (stats, pool, bwd reduce, gz+dW)",
                 "~3,300, ~1,900, ~4,200, ~5,200",
                 ", ".join(t[2] for t in tile) if tile else "- (conv1 runs the banded kernels)"))  # fmt: skip
    conv12 = [r for r in cfg["launches"] if r["layer"] in ("conv1", "conv2") and r["kernel"] != "_merge_stats_kernel"]
    full = [r for r in conv12 if r["regs"] >= 255 and r["spill_bytes"] > 0]
    rows.append(
        (
            f"bf16 conv1/conv2 kernels at 255 registers and spilling (of {len(conv12)})",
            "7, 216-504 B",
            f"{len(full)}, "
            + (f"{min(r['spill_bytes'] for r in full)}-{max(r['spill_bytes'] for r in full)} B" if full else "-"),
        )
    )
    pools = [L[(x, "_conv_bn_relu_pool_kernel")]["regs"] if (x, "_conv_bn_relu_pool_kernel") in L else "-"
             for x in ("conv1", "conv2")]  # fmt: skip
    rows.append(("pool kernels' registers (conv1 / conv2); conv2 dW", "218 / 243; 168",
                 f"{pools[0]} / {pools[1]}; {conv2('_dw_kernel', '_rows_dw_kernel')['regs']}"))  # fmt: skip
    notes = [
        "The review's figures match this model under Triton 3.6.0 (the GPU machine's) to within 1 % "
        "(sass_report-triton3.6.0-<date>.md), so they were presumably counted with it. The same model code "
        "runs under each Triton; the differences between the two reports come from the compiler (register "
        "allocation, spills, instruction selection): see 'Triton versions'."
    ]
    return {"rows": rows, "notes": notes}


def _cross_version(ref: dict, out_dir: Path, date: str, version: str) -> dict | None:
    """Per launch of soundnet8 b64 bf16: this Triton beside another version's report of the same date (the
    same model code on a different compiler: register allocation, spills, unrolling differ)."""
    for f in sorted(out_dir.glob(f"sass_report-triton*-{date}.json")):
        other = json.loads(f.read_text())
        if other["meta"]["triton"] == version:
            continue
        o = next((c for c in other["configs"] if (c["arch"], c["batch"], c["dtype"]) == ("soundnet8", 64, "bf16")),
                 None)  # fmt: skip
        if o is None or len(o["launches"]) != len(ref["launches"]):
            continue
        rows = []
        for a, b in zip(ref["launches"], o["launches"], strict=True):
            step = [lp["body_instructions"] for lp in a["detail"]["loops"]][-1:] or [0]
            ostep = [lp["body_instructions"] for lp in b["detail"]["loops"]][-1:] or [0]
            rows.append({"layer": a["layer"], "phase": a["phase"], "kernel": a["kernel"],
                         "warp_instructions_per_clip": [a["warp_instructions"] / 64, b["warp_instructions"] / 64],
                         "regs": [a["regs"], b["regs"]], "spill_bytes": [a["spill_bytes"], b["spill_bytes"]],
                         "inner_step_instructions": [step[0], ostep[0]]})  # fmt: skip
        return {"versions": [version, other["meta"]["triton"]], "rows": rows}
    return None


def _rounded(o):
    """Floats to 6 significant digits (the model is not more precise than that)."""
    if isinstance(o, float):
        return float(f"{o:.6g}")
    if isinstance(o, dict):
        return {k: _rounded(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_rounded(v) for v in o]
    return o


def dumps(o, depth: int = 0, inline_at: int = 4) -> str:
    """JSON with the outer levels indented and everything from ``inline_at`` levels down (one launch) on
    one line: readable diffs at a third of the size of fully indented JSON."""
    if depth >= inline_at or not isinstance(o, (dict, list)) or not o:
        return json.dumps(o, default=str)
    pad, inner = " " * depth, " " * (depth + 1)
    if isinstance(o, dict):
        items = [f"{inner}{json.dumps(k)}: {dumps(v, depth + 1, inline_at)}" for k, v in o.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    items = [f"{inner}{dumps(v, depth + 1, inline_at)}" for v in o]
    return "[\n" + ",\n".join(items) + "\n" + pad + "]"


ARCHS, DTYPES, BATCHES = "soundnet8,soundnet5", "bf16,fp32", "64,256"  # the full report's selection
RESULTS = ROOT / "bench" / "results"


def _csv(choices: tuple[str, ...] | None = None, positive_int: bool = False):
    """An argparse type: a comma-separated list of ``choices`` (or of positive integers)."""

    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        if positive_int:
            if not all(t.isdigit() and int(t) > 0 for t in items):
                raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers, e.g. 64,256")
            return [int(t) for t in items]
        bad = [t for t in items if t not in (choices or ())]
        if bad:
            raise argparse.ArgumentTypeError(f"{', '.join(bad)}: choose from {', '.join(choices or ())}")
        return items

    return parse


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m bench.sass_report", description=__doc__.splitlines()[0])
    ap.add_argument("--triton", help="model under this Triton version (side-installed into .cache/)")
    ap.add_argument("--archs", type=_csv(("soundnet8", "soundnet5")), default=ARCHS,
                    help=f"comma-separated (default {ARCHS})")  # fmt: skip
    ap.add_argument("--batches", type=_csv(positive_int=True), default=BATCHES,
                    help=f"comma-separated batch sizes (default {BATCHES})")  # fmt: skip
    ap.add_argument("--dtypes", type=_csv(("bf16", "fp32")), default=DTYPES, help=f"comma-separated (default {DTYPES})")
    ap.add_argument("--no-deterministic", action="store_true", help="skip the deterministic backward")
    ap.add_argument("--workers", type=int, default=2, help="compile processes")
    ap.add_argument("--out-dir", default=None,
                    help="where the report goes (default bench/results/ for the full selection, .cache/sass_report/ "
                         "for a partial one, so a partial run never replaces the committed report)")  # fmt: skip
    ap.add_argument("--date", default=dt.datetime.now(dt.timezone.utc).date().isoformat(), help="in the file name")
    ap.add_argument("--no-write", action="store_true", help="print the summary only")
    ap.add_argument("--dump-sass", action="store_true",
                    help="write every kernel's SASS to .cache/sass/triton-<version>/<kernel>-<hash>.sass")  # fmt: skip
    ap.add_argument("--spills-only", action="store_true",
                    help="compile and list register / stack use; exit 1 if any launch spills")  # fmt: skip
    args = ap.parse_args(argv)
    full = [args.archs, args.batches, args.dtypes] == [ARCHS.split(","), [64, 256], DTYPES.split(",")]
    full = full and not args.no_deterministic  # argparse ran the string defaults through their types too
    if args.out_dir is None:
        args.out_dir = str(RESULTS if full else CACHE / "sass_report")
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        ap.error(f"--out-dir {args.out_dir}: exists and is not a folder")
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("note: TRITON_INTERPRET=1 ignored: the model compiles the real kernels", file=sys.stderr)
    if args.triton:
        rc = _side_env(args.triton, argv)
        if rc is not None:
            return rc
    os.environ.pop("TRITON_INTERPRET", None)  # read when kernels are decorated: before the imports below
    import torch
    import triton

    from bench.sass import launches as L
    from bench.sass import report
    from bench.sass.compile import compile_all
    from bench.sass.run import baselines, evaluate, prepare

    t0 = time.time()
    cfgs = L.configs(args.archs, args.batches, args.dtypes, deterministic=not args.no_deterministic)
    if args.spills_only:
        prepared = prepare(cfgs)
        specs = list(dict.fromkeys(s for _, ls, _ in prepared for _, s, _ in ls))
        comp = compile_all(specs, workers=args.workers, progress=False, sass=False)
        bad = 0
        for c, ls, _ in prepared:
            for lc, s, _ in ls:
                r = comp[s]
                bad += r["stack"] > 0
                print(
                    f"{c.key:28s} {lc.layer:8s} {lc.phase:8s} {s.name:26s} regs {r['regs']:3d} "
                    f"stack {r['stack']:4d} smem {r['shared']:6d}"
                )
        print(
            f"{len(specs)} specialisations (Triton {triton.__version__}), {bad} launches with stack (spill) bytes, "
            f"{time.time() - t0:.0f} s"
        )
        return 1 if bad else 0

    results, facts = evaluate(cfgs, workers=args.workers)
    if args.dump_sass:  # ~100 MB per Triton version
        sass_dir = CACHE / "sass" / f"triton-{triton.__version__}"
        sass_dir.mkdir(parents=True, exist_ok=True)
        for old in sass_dir.glob("*.sass"):
            old.unlink()
        for r in facts["compiled"].values():
            (sass_dir / f"{r['name']}-{r['hash'][:12]}.sass").write_text(r["sass"])
    main_cfgs = [s for c, s in results if not c.deterministic]
    det_cfgs = [s for c, s in results if c.deterministic]
    for s in det_cfgs:  # keep the JSON small: the backward launches (the forward is the same), core fields
        s["launches"] = [
            {k: v for k, v in r.items() if k != "detail"} for r in s["launches"] if r["phase"] == "backward"
        ]
    data = {
        "meta": {
            "triton": triton.__version__,
            "torch": torch.__version__,
            "arch": "sm_90a",
            "date": args.date,
            "source": "static prediction, not measured",
            "constants": report.constants(),
            "specialisations": facts["specialisations"],
            "runtime_s": time.time() - t0,
            "compile_s": facts["compile_s"],
            "host_cores": os.cpu_count(),
            "side_env": bool(args.triton),
        },
        "configs": main_cfgs,
        "baselines": {f"{a}-{L.SECONDS[a]:g}s": baselines(a, L.SECONDS[a]) for a in args.archs},
        "deterministic": det_cfgs,
    }
    ref = next((s for s in main_cfgs if s["arch"] == "soundnet8" and s["batch"] == 64 and s["dtype"] == "bf16"),
               None)  # fmt: skip
    if ref is not None:
        data["calibration"] = _calibration(ref)
        row = next(r for r in ref["launches"] if r["layer"] == "conv1" and r["kernel"] == "_band_stats_kernel")
        sass = next(c["sass"] for c in facts["compiled"].values() if c["hash"].startswith(row["detail"]["sass_hash"]))
        programs = row["grid"][0] * row["grid"][1]
        tiles = row["int_args"]["NUM_TILES"] * row["grid"][1]
        h = report.hand_count(sass, tiles, row["num_warps"], programs, ref["batch"])
        model = row["warp_instructions"] / ref["batch"]
        h.update(programs=programs, model_per_clip=model, agreement=model / h["per_clip"] - 1,
                 sass=f"_band_stats_kernel-{row['detail']['sass_hash'][:12]}.sass")  # fmt: skip
        data["hand_count"] = h
    if ref is not None:
        data["cross_version"] = _cross_version(ref, Path(args.out_dir), args.date, triton.__version__)
    data["meta"]["runtime_s"] = time.time() - t0
    failed = [f for s in main_cfgs + det_cfgs for f in s["invariants"]["failures"]]
    for s in main_cfgs:
        print(
            f"{s['arch']:10s} b{s['batch']:<4d} {s['dtype']}: {s['per_clip']['warp_instructions'] / 1e6:8.1f} M "
            f"warp-inst/clip, H100 {s['predicted_clips_per_s']['H100']:8,.0f} clips/s, H200 "
            f"{s['predicted_clips_per_s']['H200']:8,.0f} clips/s  (predicted, static)"
        )
    if not args.no_write:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"sass_report-triton{triton.__version__}-{args.date}"
        Path(f"{stem}.json").write_text(dumps(_rounded(data)) + "\n")
        Path(f"{stem}.md").write_text(report.markdown(data))
        print(f"wrote {stem}.md / .json in {time.time() - t0:.0f} s")
    if failed:
        print("INVARIANTS FAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
