"""The design notes are inside the repository and every citation of them resolves: each
``docs/design.md#anchor`` in the code, tests, README and Makefile names a heading of docs/design.md, and no
file cites notes outside the repository or an issue number instead of a public source."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["soundnet_fast", "kernels", "bench", "tests", "README.md", "Makefile", "pyproject.toml"]
SUFFIXES = {".py", ".md", ".toml", ""}


def scanned_files(suffixes: set[str] | None = SUFFIXES) -> list[Path]:
    """Files under SCANNED (every file when ``suffixes`` is None), caches left out."""
    files: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [
            p
            for p in candidates
            if p.is_file()
            and (suffixes is None or p.suffix in suffixes)
            and "__pycache__" not in p.relative_to(ROOT).parts
        ]
    return files


def github_anchors(markdown: str) -> set[str]:
    """GitHub's heading slugs: lower case, punctuation dropped except '-' and '_', spaces to '-'."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def test_every_cited_anchor_exists() -> None:
    anchors = github_anchors((ROOT / "docs" / "design.md").read_text())
    assert {"model", "input", "loss", "kernels", "performance-ceiling", "weight-formats"} <= anchors
    missing = []
    for path in scanned_files():
        if path == Path(__file__):
            continue
        text = path.read_text(errors="replace")
        # "docs/design.md#a" and the short follow-ups of a list: "docs/design.md#a, #b and #c"
        for m in re.finditer(r"docs/design\.md((?:#[\w-]+(?:,? (?:and )?)?)+)", text):
            for anchor in re.findall(r"#([\w-]+)", m.group(1)):
                if anchor not in anchors:
                    missing.append(f"{path.relative_to(ROOT)}: #{anchor}")
    assert not missing, missing


def test_no_citation_points_outside_the_repository() -> None:
    # The same search as `grep -rnE` over SCANNED, this file and the committed reports included; the pattern is
    # spelled so that it does not match itself.
    bad = re.compile(r"DESIGN\.md|shared[/]|issue #?[0-9]|the[ ]issue")
    hits = []
    for path in scanned_files(None):
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if bad.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, hits
