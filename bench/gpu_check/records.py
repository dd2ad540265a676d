"""JSON-lines records of a GPU check run, and the Markdown report rendered from them (no torch import here).

Every section process appends records to its own file ``NN-<section>.jsonl`` in the output folder, one JSON
object per line, flushed and fsync'd after each record, so a kill (of the section or of the parent) keeps every
record written before it; at worst the last line is cut short, and the reader skips (and counts) such lines.
The parent keeps its own ``run.jsonl`` (the plan, each section's outcome, the budget).

Record types (every record has ``section``, ``type`` and ``t``, the UNIX time):

- ``kv``: ``key``, ``value`` - an item of a two-column table (the environment).
- ``row``: ``table``, ``row`` (an ordered dict of cells), optional ``status`` (PASS / FAIL / SKIP / INFO) -
  consecutive rows of one table render as one Markdown table.
- ``note``: ``text`` - a paragraph.
- ``skip``: ``reason`` - the section (or a part of it) did not run, e.g. "skipped: no CUDA"; not a failure.
- ``error``: ``where``, ``error``, ``traceback`` - an exception inside a section; a failure.
- ``data``: ``name``, ``payload`` - machine-readable only (not rendered), e.g. the list of kernel launches.
- ``section`` (parent, in run.jsonl): ``name``, ``status`` (done / failed (exit N) / timed out after N s /
  skipped: budget / skipped: no CUDA), ``elapsed``, ``estimate``, ``timeout``, ``optional``.
- ``plan`` (parent): the budget and every section's estimate and timeout.

A failure is a row with status FAIL, an error record, or a section that failed, timed out, or (a mandatory one)
did not run.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PASS, FAIL, SKIP, INFO = "PASS", "FAIL", "SKIP", "INFO"


def _default(obj: Any) -> Any:
    """JSON for what sections hand over: tensors / numpy scalars as numbers, paths and the rest as text."""
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


class Writer:
    """Appends one JSON object per line to ``path``; each record is flushed and fsync'd before returning."""

    def __init__(self, path: Path, section: str) -> None:
        self.path, self.section = Path(path), section
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the section's life

    def write(self, type_: str, **fields: Any) -> dict[str, Any]:
        rec = {"section": self.section, "type": type_, "t": round(time.time(), 3), **fields}
        self._f.write(json.dumps(rec, default=_default) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        return rec

    def kv(self, key: str, value: Any) -> None:
        self.write("kv", key=key, value=value)

    def note(self, text: str) -> None:
        self.write("note", text=text)

    def row(self, table: str, row: dict[str, Any], status: str | None = None) -> None:
        self.write("row", table=table, row=row, **({"status": status} if status else {}))

    def skip(self, reason: str) -> None:
        self.write("skip", reason=reason)

    def data(self, name: str, payload: Any) -> None:
        self.write("data", name=name, payload=payload)

    def error(self, where: str, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.write("error", where=where, error=f"{type(exc).__name__}: {exc}"[:2000], traceback=tb[-6000:])

    @contextmanager
    def part(self, where: str) -> Iterator[None]:
        """Run a part of a section; an exception becomes an error record and the section goes on."""
        t0 = time.time()
        try:
            yield
        except Exception as e:  # one broken part must not hide the others
            self.error(where, e)
            print(f"[{self.section}] {where}: {type(e).__name__}: {e}", flush=True)
        finally:
            self.write("timing", where=where, seconds=round(time.time() - t0, 2))

    def close(self) -> None:
        self._f.close()


def read_records(folder: Path) -> tuple[list[dict[str, Any]], int]:
    """All records of the folder's *.jsonl files (run.jsonl first, then sections in file order), and the number of
    lines that did not parse (a record cut short by a kill)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.jsonl"), key=lambda p: (p.name != "run.jsonl", p.name))
    out, bad = [], 0
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                out.append(rec)
            else:
                bad += 1
    return out, bad


def fmt(v: Any) -> str:
    """A cell: floats to a few significant digits (scientific when small), everything else as text."""
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1e4:
            return f"{v:,.0f}"
        if a >= 0.01:
            return f"{v:.4g}"
        return f"{v:.2e}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 1e4 else str(v)
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(fmt(x) for x in v) + ")"
    if isinstance(v, dict):
        return " ".join(f"{k}={fmt(x)}" for k, x in v.items())
    return str(v).replace("|", "\\|").replace("\n", " ")


def _status_cell(status: str | None) -> str:
    return {PASS: "PASS", FAIL: "**FAIL**", SKIP: "skip", INFO: "info"}.get(status or "", status or "")


def failures(records: list[dict[str, Any]]) -> list[str]:
    """Human-readable failures: FAIL rows, errors, and sections that failed, timed out or (mandatory) did not run."""
    out = []
    for r in records:
        if r.get("type") == "row" and r.get("status") == FAIL:
            items = list(r.get("row", {}).items())
            marked = [(k, v) for k, v in items if isinstance(v, str) and v.endswith(" X")]  # the failing cells
            shown = items[:2] + marked if marked else items[:3]
            cells = ", ".join(f"{k} {fmt(v)}" for k, v in shown)
            out.append(f"{r['section']}: {r.get('table', '')}: {cells}")
        elif r.get("type") == "error":
            out.append(f"{r['section']}: {r.get('where', '')}: {r.get('error', '')}")
        elif r.get("type") == "section":
            st = str(r.get("status", ""))
            if st.startswith(("failed", "timed out")) or (st.startswith("skipped: budget") and not r.get("optional")):
                out.append(f"{r.get('name')}: {st}")
    return out


def render(folder: Path, title: str = "soundnet_fast kernels: GPU check") -> str:
    """The Markdown report of everything recorded in ``folder`` so far."""
    records, bad = read_records(folder)
    run = [r for r in records if r.get("section") == "run"]
    plan = next((r for r in run if r.get("type") == "plan"), {})
    outcomes = {r["name"]: r for r in run if r.get("type") == "section"}
    finish = next((r for r in run if r.get("type") == "finish"), None)
    finished = finish is not None
    fails = failures(records)
    lines = [f"# {title}", ""]
    if finished and finish.get("exit") == 2:
        lines.append("**Result: no CUDA device, nothing was checked (exit 2)**")
    elif finished:
        lines.append(
            "**Result: ALL PASS**" if not fails else f"**Result: {len(fails)} FAILURE(S)** (listed at the end)"
        )
    else:
        lines.append("_Run in progress or interrupted: this report shows what was recorded so far._")
    lines.append("")
    if plan:
        lines += _budget_table(plan, outcomes, run)
    order = [s["name"] for s in plan.get("sections", [])]
    by_section: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("section") != "run" and r.get("type") not in ("timing", "data"):  # not rendered
            by_section.setdefault(r["section"], []).append(r)
    for name in order + [s for s in by_section if s not in order]:
        heading = next((s.get("title", name) for s in plan.get("sections", []) if s["name"] == name), name)
        lines += [f"## {heading}", ""]
        oc = outcomes.get(name)
        if oc:
            lines += [f"_{oc['status']}; {oc.get('elapsed', 0):.1f} s (estimate {oc.get('estimate', 0):.0f} s)_", ""]
        lines += _section_body(by_section.get(name, []))
    if bad:
        lines += [f"_{bad} record line(s) could not be parsed (cut short by a kill) and were skipped._", ""]
    if finished and finish.get("exit") != 2:
        lines += ["## Result", ""]
        lines += ["ALL PASS"] if not fails else ["FAILURES:", ""] + [f"- {f}" for f in fails]
        lines.append("")
    return "\n".join(lines)


def _budget_table(plan: dict[str, Any], outcomes: dict[str, Any], run: list[dict[str, Any]]) -> list[str]:
    total_est = sum(s["estimate"] for s in plan.get("sections", []))
    mand_est = sum(s["estimate"] for s in plan.get("sections", []) if not s.get("optional"))
    lines = [
        f"Budget {plan.get('budget', 0):.0f} s (the parent's hard limit). Estimates are for the full size (batch 64 of "
        f"20 s clips, one H100 / H200): mandatory sections {mand_est:.0f} s, all sections {total_est:.0f} s; optional "
        "sections run only while their estimate fits what is left. Every section runs in its own process with its "
        f"own timeout. This run: {plan.get('sizes', '')}.",
        "",
        "| section | optional | full-size estimate s | timeout s (this run) | elapsed s | status |",
        "|---|---|---|---|---|---|",
    ]
    for s in plan.get("sections", []):
        oc = outcomes.get(s["name"], {})
        el = f"{oc['elapsed']:.1f}" if "elapsed" in oc else ""
        lines.append(
            f"| {s['name']} | {'yes' if s.get('optional') else ''} | {s['estimate']:.0f} | {s['timeout']:.0f} | "
            f"{el} | {oc.get('status', 'not reached')} |"
        )
    fin = next((r for r in run if r.get("type") == "finish"), None)
    if fin:
        lines.append(f"| **total** | | {total_est:.0f} | | {fin.get('elapsed', 0):.1f} | |")
    return lines + [""]


def _section_body(recs: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    i = 0
    while i < len(recs):
        r = recs[i]
        t = r.get("type")
        if t == "kv":
            j = i
            lines += ["| item | value |", "|---|---|"]
            while j < len(recs) and recs[j].get("type") == "kv":
                lines.append(f"| {recs[j]['key']} | {fmt(recs[j].get('value'))} |")
                j += 1
            lines.append("")
            i = j
            continue
        if t == "row":
            j = i
            table = r.get("table", "")
            group = []
            while j < len(recs) and recs[j].get("type") == "row" and recs[j].get("table") == table:
                group.append(recs[j])
                j += 1
            lines += _table(table, group)
            i = j
            continue
        if t == "note":
            lines += [r.get("text", ""), ""]
        elif t == "skip":
            lines += [f"_{r.get('reason', 'skipped')}_", ""]
        elif t == "error":
            lines += [f"**ERROR** in {r.get('where', '')}: `{r.get('error', '')}`", "", "```"]
            lines += [str(r.get("traceback", ""))[-2500:].rstrip(), "```", ""]
        i += 1
    return lines


def _table(title: str, group: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in group:
        for k in r.get("row", {}):
            if k not in cols:
                cols.append(k)
    has_status = any(r.get("status") for r in group)
    head = cols + (["result"] if has_status else [])
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in group:
        cells = [fmt(r.get("row", {}).get(c, "")) if c in r.get("row", {}) else "" for c in cols]
        if has_status:
            cells.append(_status_cell(r.get("status")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def write_report(folder: Path) -> Path:
    """Render and write ``report.md`` atomically (a reader never sees half a report)."""
    folder = Path(folder)
    path = folder / "report.md"
    tmp = folder / ".report.md.tmp"
    tmp.write_text(render(folder) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
