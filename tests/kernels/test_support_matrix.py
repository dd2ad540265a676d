"""README.md's kernel support matrix is ``soundnet_fast.kernels.SUPPORT_MATRIX`` line for line (docs/design.md#kernels):
the README shows the package's own text, so the two cannot drift apart."""

from __future__ import annotations

from pathlib import Path

from soundnet_fast.kernels import SUPPORT_MATRIX

README = Path(__file__).resolve().parents[2] / "README.md"
INTRO = "Support matrix (`soundnet_fast.kernels.SUPPORT_MATRIX`):"


def _lines(text: str) -> list[str]:
    """``text`` as lines with trailing whitespace removed (Markdown ignores it)."""
    return [line.rstrip() for line in text.splitlines()]


def readme_matrix(readme: str) -> tuple[list[str], str]:
    """The README's copy of the matrix (as many lines as SUPPORT_MATRIX has, after the INTRO line and one blank
    line) and the line after it ("" at the end of the file): a blank line there, else the copy goes on.
    Raises ``AssertionError`` when the INTRO line or the blank line after it is missing."""
    lines = _lines(readme)
    assert INTRO in lines, f"README.md has no line {INTRO!r}"
    start = lines.index(INTRO) + 2
    assert lines[start - 1] == "", "README.md: a blank line must follow the support matrix's intro"
    end = start + len(_lines(SUPPORT_MATRIX))
    return lines[start:end], (lines[end] if end < len(lines) else "")


def test_readme_support_matrix_equals_the_package_text() -> None:
    copy, after = readme_matrix(README.read_text(encoding="utf-8"))
    assert copy == _lines(SUPPORT_MATRIX)
    assert after == "", f"README.md: the support matrix goes on past the package's text: {after!r}"


def test_a_changed_or_added_line_in_the_readme_copy_is_caught() -> None:
    text = README.read_text(encoding="utf-8")
    word = "fp16"  # one word of one line of the matrix
    assert word in SUPPORT_MATRIX
    at = text.index(INTRO)
    changed = text[:at] + text[at:].replace(word, "fp8", 1)
    assert readme_matrix(changed)[0] != _lines(SUPPORT_MATRIX)
    last = _lines(SUPPORT_MATRIX)[-1]
    added = text[:at] + text[at:].replace(last, last + "\n- Also: something the package does not say.", 1)
    assert readme_matrix(added)[1] == "- Also: something the package does not say."
