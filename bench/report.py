"""`python -m bench.report RESULTS.json`: pytest-benchmark JSON -> bench/results/<machine>-<date>.md + PNG.

Each figure is shown as throughput and as a ratio to the eager reference measured in the same run (same
group); on a GPU also as a fraction of the roofline of docs/design.md#performance-ceiling (790 TFLOP/s
bf16 measured on an H100; ~3.3 TB/s, the bandwidth implied by its 165 MB/clip at ~20 K clips/s). The
machine (CPU model and cores, or the GPU's name), versions, git commit and date head the report; the raw
JSON is copied beside it, and README.md's performance table (between its perf markers) is regenerated from the report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any

PEAK_BF16_FLOPS = 790e12  # docs/design.md#performance-ceiling, measured on an H100
README_BEGIN, README_END = "<!-- perf:begin -->", "<!-- perf:end -->"


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_line(data: dict[str, Any]) -> tuple[str, str]:
    """(human description, short slug for the file name)."""
    gpus = {b["extra_info"].get("gpu") for b in data["benchmarks"] if b["extra_info"].get("gpu")}
    if gpus:
        gpu = sorted(gpus)[0]
        return f"GPU: {gpu}", re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    cpu = data.get("machine_info", {}).get("cpu", {})
    brand = cpu.get("brand_raw") or platform.processor() or "CPU"
    cores = cpu.get("count") or os.cpu_count()
    return f"CPU: {brand}, {cores} cores (no GPU)", f"cpu{cores}"


def cpu_line(data: dict[str, Any]) -> str:
    """The CPU model and its vector extensions, from the benchmarks' ``extra_info`` (bench.conftest.cpu_info),
    else from pytest-benchmark's ``machine_info`` (py-cpuinfo's flags)."""
    info = next((b["extra_info"] for b in data["benchmarks"] if "cpu_vector_extensions" in b["extra_info"]), None)
    if info is not None:
        model, cores, ext = info.get("cpu_model"), info.get("cpu_cores"), info["cpu_vector_extensions"]
    else:
        cpu = data.get("machine_info", {}).get("cpu", {})
        model, cores = cpu.get("brand_raw") or platform.processor(), cpu.get("count")
        flags = set(cpu.get("flags") or [])
        ext = [f for f in ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                           "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]  # fmt: skip
    return f"{model or 'unknown'}, {cores or '?'} logical cores; vector extensions: {' '.join(ext) or 'none recorded'}"


def _pct(sorted_samples: list[float], q: float) -> float:
    return sorted_samples[min(len(sorted_samples) - 1, int(q * len(sorted_samples)))]


def rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for b in data["benchmarks"]:
        info, st = b["extra_info"], b["stats"]
        if "variant" not in info:
            continue
        samples = sorted(st.get("data") or [])
        out.append({
            "group": info["group"], "variant": info["variant"], "median": st["median"],
            "p20": _pct(samples, 0.2) if samples else st.get("q1"),
            "p80": _pct(samples, 0.8) if samples else st.get("q3"),
            "items": info.get("items", 1), "parity": info.get("parity_max_rel_err"),
            "parity_ok": info.get("parity_ok"), "flops": info.get("flops"), "dtype": info.get("dtype"),
            "unit": info.get("unit", "clips/s"),
            "baseline": bool(info.get("baseline", info["variant"] == "eager")),
            "saved_mb": info.get("saved_mb_per_clip"),
            "peak_mb": info.get("peak_mb_per_clip"),
            "peak_rss_mb": info.get("peak_rss_mb"),
        })  # fmt: skip
    for r in out:
        eager = next((e for e in out if e["group"] == r["group"] and e["baseline"]), None)
        r["ratio"] = eager["median"] / r["median"] if eager else None
        r["throughput"] = r["items"] / r["median"]
        on_gpu = any(b["extra_info"].get("gpu") for b in data["benchmarks"])
        bf16 = on_gpu and r["flops"] and r["dtype"] == "bf16"
        r["roofline"] = (r["flops"] / PEAK_BF16_FLOPS) / r["median"] if bf16 else None
    return out


def markdown(data: dict[str, Any], table: list[dict[str, Any]], machine: str) -> str:
    import torch

    versions = f"python {platform.python_version()}, torch {torch.__version__}"
    try:
        import triton

        versions += f", triton {triton.__version__}"
    except ImportError:
        pass
    smoke = any(b["extra_info"].get("smoke") for b in data["benchmarks"])
    lines = [
        f"# soundnet_fast benchmarks: {machine}",
        "",
        f"- machine: {machine}",
        f"- CPU: {cpu_line(data)}",
        f"- versions: {versions}",
        f"- git commit: {data.get('commit_info', {}).get('id', '')[:10] or _git_commit()}",
        f"- date: {data.get('datetime', dt.datetime.now(dt.timezone.utc).isoformat())}",
        "- timing: median of timed rounds after warm-up (p20 / p80 beside it); parity checked once first"
        + (" — SMOKE RUN (one call at small sizes: not a measurement)" if smoke else ""),
        "",
        "| group | variant | median ms | p20-p80 ms | throughput | x baseline | roofline | parity (max rel err) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(table, key=lambda r: (r["group"], not r["baseline"], r["variant"])):
        spread = f"{r['p20'] * 1e3:.2f}-{r['p80'] * 1e3:.2f}" if r["p20"] is not None else ""
        parity = "" if r["parity"] is None else f"{r['parity']:.2e} {'ok' if r['parity_ok'] else 'FAIL'}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        roof = "" if r["roofline"] is None else f"{100 * r['roofline']:.1f} %"
        lines.append(
            f"| {r['group']} | {r['variant']} | {r['median'] * 1e3:.2f} | {spread} "
            f"| {r['throughput']:,.1f} {r['unit']} | {ratio} | {roof} | {parity} |"
        )
    mem = [r for r in table if r["saved_mb"] is not None]
    if mem:
        lines += ["", "Memory per 20 s clip (SoundNet-8 trunk, fp32): storages the autograd graph keeps for the",
                  "backward (counted on the meta device, both backends), and on a GPU the peak allocated during",
                  "forward + backward of the variant that ran.", "",
                  "| backend | saved for backward MB/clip | peak MB/clip |", "|---|---|---|"]  # fmt: skip
        counted = mem[0]["saved_mb"]
        for backend, mb in sorted(counted.items()):
            peak = next((r["peak_mb"] for r in mem if r["variant"] == backend and r["peak_mb"] is not None), None)
            lines.append(f"| {backend} | {mb:.2f} | {'' if peak is None else f'{peak:.1f}'} |")
    rss = [r for r in table if r["peak_rss_mb"] is not None]
    if rss:
        lines += ["", "Peak memory per call on the CPU: resident-set growth during one call",
                  "(bench.conftest.peak_rss_growth).",
                  "", "| group | variant | peak MB per call | per clip |", "|---|---|---|---|"]  # fmt: skip
        for r in sorted(rss, key=lambda r: (r["group"], not r["baseline"], r["variant"])):
            lines.append(
                f"| {r['group']} | {r['variant']} | {r['peak_rss_mb']:.1f} | {r['peak_rss_mb'] / r['items']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def plot(table: list[dict[str, Any]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in table if r["ratio"] is not None]
    labels = [f"{r['group']} [{r['variant']}]" for r in shown]
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.28 * len(shown) + 1)))
    colors = ["#888888" if r["baseline"] else "#1f77b4" for r in shown]
    ax.barh(range(len(shown)), [r["ratio"] for r in shown], color=colors)
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("speed vs the group's baseline in the same run (higher is faster)")
    ax.set_title(title, fontsize=9)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def readme_table(table: list[dict[str, Any]]) -> str:
    """One line per group: its baseline and its fastest other variant (the full table is in the report)."""
    lines = ["| group | baseline | fastest other variant | x baseline |", "|---|---|---|---|"]
    for group in sorted({r["group"] for r in table}):
        rows_ = [r for r in table if r["group"] == group]
        base = next((r for r in rows_ if r["baseline"]), None)
        others = [r for r in rows_ if not r["baseline"]]
        best = max(others, key=lambda r: r["throughput"]) if others else None
        fmt = lambda r: f"{r['variant']}: {r['throughput']:,.1f} {r['unit']}" if r else ""  # noqa: E731
        ratio = f"{best['ratio']:.2f}x" if best and best["ratio"] else ""
        lines.append(f"| {group} | {fmt(base)} | {fmt(best)} | {ratio} |")
    return "\n".join(lines)


def update_readme(table: list[dict[str, Any]], machine: str, report_path: str, readme: str = "README.md") -> bool:
    if not os.path.exists(readme):
        return False
    text = open(readme, encoding="utf-8").read()
    if README_BEGIN not in text or README_END not in text:
        return False
    block = (
        f"{README_BEGIN}\nMeasured on {machine}; generated from `{report_path}` (full table, spread, parity and "
        f"plot there).\n\n{readme_table(table)}\n{README_END}"
    )
    text = text[: text.index(README_BEGIN)] + block + text[text.index(README_END) + len(README_END) :]
    with open(readme, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="pytest-benchmark JSON (--benchmark-json)")
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--no-readme", action="store_true", help="do not regenerate README.md's performance table")
    args = ap.parse_args(argv)
    with open(args.json, encoding="utf-8") as f:
        data = json.load(f)
    table = rows(data)
    if not table:
        print(f"error: {args.json} holds no soundnet_fast benchmarks", file=sys.stderr)
        return 1
    machine, slug = machine_line(data)
    stem = os.path.join(args.out_dir, f"{slug}-{dt.date.today().isoformat()}")
    os.makedirs(args.out_dir, exist_ok=True)
    md = markdown(data, table, machine)
    name = os.path.basename(stem)
    md += f"\n![speed relative to eager]({name}.png)\n\nRaw data: `{name}.json`\n"
    with open(stem + ".md", "w", encoding="utf-8") as f:
        f.write(md)
    if os.path.abspath(args.json) != os.path.abspath(stem + ".json"):
        shutil.copyfile(args.json, stem + ".json")
    plot(table, stem + ".png", machine)
    smoke = any(b["extra_info"].get("smoke") for b in data["benchmarks"])
    if not args.no_readme and not smoke:
        update_readme(table, machine, stem + ".md")
    print(f"wrote {stem}.md, {stem}.png, {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
