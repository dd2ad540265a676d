"""One source for each fact: the sample rate and the layer tables are written once (docs/design.md#layout).

The sample rate (docs/design.md#input) lives in ``soundnet_fast/constants.py``; the SoundNet-8 / SoundNet-5 layer
tables (docs/design.md#soundnet-8, #soundnet-5) in ``soundnet_fast/model.py``. Every ``.py`` file under
soundnet_fast/, kernels/, bench/ and tests/ is parsed with :mod:`ast`, so only code counts: comments and prose in
strings do not, while numbers inside f-string expressions do (a ``tokenize`` scan sees an f-string as one STRING
token before Python 3.12). Reported, with file and line:

- a number equal to the sample rate or to a whole number of seconds at it (1..120 s: 22050, 110250, 220500,
  441000, ...), however written (``22_050``, ``22050.0``), and a string that is only such a number (``"22050"``,
  e.g. an ffmpeg ``-ar`` argument);
- a tuple, list or call whose integer items hold a layer-table row's (out_channels, kernel, stride, padding) in
  order, e.g. ``(16, 64, 2, 32, 8)`` or a ``"conv1": (1, 16, 64, 2, 32, 8)`` dict row, and a ``ConvSpec(...)`` or
  ``HeadSpec(...)`` call that names a layer of the tables (``ConvSpec("conv1", ...)``; a toy spec of another name
  is not a copy).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from soundnet_fast.constants import HEAD_CLASSES, HEADS, INPUT_SCALE, SAMPLE_RATE
from soundnet_fast.model import SOUNDNET5_HEADS, SOUNDNET5_TRUNK, SOUNDNET8_HEADS, SOUNDNET8_TRUNK

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("soundnet_fast", "kernels", "bench", "tests")
RATE_HOME = "soundnet_fast/constants.py"
TABLE_HOME = "soundnet_fast/model.py"

# 1..120 s at the rate. Two seconds (44,100) is left out: 44.1 kHz is its own fact, the rate of ESC-50's clips and
# of CD audio that tests decode and resample from (docs/design.md#esc-50-and-esc-10), not a clip length here.
RATE_MULTIPLES = frozenset(SAMPLE_RATE * n for n in range(1, 121)) - {2 * SAMPLE_RATE}
ROWS = {(s.out_channels, s.kernel, s.stride, s.padding): s.name for s in (*SOUNDNET8_TRUNK, *SOUNDNET5_TRUNK)}
TABLE_TYPES = ("ConvSpec", "HeadSpec")
TABLE_NAMES = {s.name for s in (*SOUNDNET8_TRUNK, *SOUNDNET8_HEADS, *SOUNDNET5_TRUNK, *SOUNDNET5_HEADS)}
_DIGITS = re.compile(r"\d[\d_]*")

# Files allowed to hold a copy, with the reason. Kept tiny: the homes only.
ALLOWED: dict[str, tuple[str, str]] = {
    RATE_HOME: ("rate", "the home of SAMPLE_RATE (docs/design.md#input)"),
    TABLE_HOME: ("table", "the home of the layer tables (docs/design.md#model)"),
}


def _number(node: ast.AST) -> float | None:
    """The value of a numeric literal (int or float, not bool), or of a string that is only digits."""
    if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
        return None
    if isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node.value, str) and _DIGITS.fullmatch(node.value.strip()):
        return int(node.value.strip())
    return None


def _int_items(node: ast.AST) -> list[int | None]:
    """The items of a tuple / list, or a call's positional then keyword arguments: ints, None for anything else."""
    if isinstance(node, (ast.Tuple, ast.List)):
        items = node.elts
    elif isinstance(node, ast.Call):
        items = [*node.args, *(k.value for k in node.keywords)]
    else:
        return []
    return [
        n.value if isinstance(n, ast.Constant) and type(n.value) is int else None  # not bool, which is an int
        for n in items
    ]


def _table_call(node: ast.AST) -> str:
    """``ConvSpec`` / ``HeadSpec`` when ``node`` calls one with the name of a table layer (first argument or
    ``name=``), else ""."""
    if not isinstance(node, ast.Call):
        return ""
    f = node.func
    func = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
    names = [*node.args[:1], *(k.value for k in node.keywords if k.arg == "name")]
    named = any(isinstance(n, ast.Constant) and n.value in TABLE_NAMES for n in names)
    return func if func in TABLE_TYPES and named else ""


def find_copies(source: str, path: str) -> list[str]:
    """``path:line: what`` for every copy of the sample rate or of a layer-table row in ``source`` (the text of
    the file at ``path``, relative to the repository root); the homes in :data:`ALLOWED` skip their own fact."""
    allowed = ALLOWED.get(path, ("", ""))[0]
    found = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if allowed != "rate" and (value := _number(node)) is not None and value in RATE_MULTIPLES:
            seconds = int(value) // SAMPLE_RATE
            found.append(f"{path}:{node.lineno}: {value!r} is {seconds} s at the sample rate; use {RATE_HOME}")
        if allowed == "table":
            continue
        if call := _table_call(node):
            found.append(f"{path}:{node.lineno}: {call}(...) row outside {TABLE_HOME}")
            continue
        items = _int_items(node)
        for i in range(len(items) - 3):
            if (row := tuple(items[i : i + 4])) in ROWS:
                found.append(f"{path}:{node.lineno}: {row} is layer {ROWS[row]}'s row; read it from {TABLE_HOME}")
    return sorted(found, key=lambda f: int(f.split(":")[1]))


def python_files() -> Iterator[Path]:
    for top in SCANNED:
        yield from (p for p in sorted((ROOT / top).rglob("*.py")) if "__pycache__" not in p.parts)


def test_no_copies_of_the_sample_rate_or_the_layer_tables() -> None:
    files = list(python_files())
    rel = {p.relative_to(ROOT).as_posix() for p in files}
    assert {RATE_HOME, TABLE_HOME, "soundnet_fast/audio.py", "kernels/memory.py", "bench/aot_check.py"} <= rel
    assert Path(__file__).resolve() in files
    found = [c for p in files for c in find_copies(p.read_text(encoding="utf-8"), p.relative_to(ROOT).as_posix())]
    assert not found, "written outside their one home:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "path", "reported"),
    [
        ("SAMPLE_RATE = 22050\n", "soundnet_fast/audio.py", 1),
        ("SAMPLE_RATE = 22050\n", RATE_HOME, 0),
        ("x = [0] * 22_050\ny = 22050.0\n", "tests/test_x.py", 2),
        ("n = 441_000\nm = 5 * 110250\nk = 220500\n", "bench/b.py", 3),
        ('cmd = ["-ar", "22050"]\nmsg = f"{n / 22050:.1f} s"\n', "bench/b.py", 2),
        ("rate = 44100\nbatch = 64\n# 22050 Hz\nDOC = '22,050 Hz, 220500 samples'\n", "tests/test_x.py", 0),
        ("ROW = (16, 64, 2, 32, 8)\n", "bench/aot_check.py", 1),
        ('LAYERS = {"conv1": (1, 16, 64, 2, 32, 8), "x": [128, 16, 2, 8]}\n', "tests/helpers/kernels.py", 2),
        ('S = ConvSpec("conv1", 16, 64, 2, 32, pool=8)\nH = m.HeadSpec(name="conv8", kernel=8, stride=2)\n', "x.py", 2),
        ('S = ConvSpec("toy", 3, 5, 1, 2)\nH = HeadSpec("toy_head", 8, 2, 0)\n', "bench/gpu_check/x.py", 0),
        ('S = ConvSpec("conv1", 16, 64, 2, 32, pool=8)\n', TABLE_HOME, 0),
        ("f(16, 64, 2)\nshape = (64, 16, 1, 8)\nblock = (2, 16, 64, 2)\n", "tests/test_x.py", 0),
    ],
)
def test_the_scan_reports_literal_copies(source: str, path: str, reported: int) -> None:
    """The scan itself: forbidden literals in synthetic sources are reported with their file and line."""
    found = find_copies(source, path)
    assert len(found) == reported, found
    assert all(f.startswith(f"{path}:") for f in found)


def test_the_scan_finds_every_row_of_the_real_tables() -> None:
    """model.py read as if it were any other file: each ConvSpec / HeadSpec row of both tables is reported."""
    source = (ROOT / TABLE_HOME).read_text(encoding="utf-8")
    found = find_copies(source, "soundnet_fast/elsewhere.py")
    calls = [f for f in found if "ConvSpec(...)" in f or "HeadSpec(...)" in f]
    assert len(calls) == len(ROWS) + 4 and len(ROWS) == len(SOUNDNET8_TRUNK) + len(SOUNDNET5_TRUNK)  # + 4 heads


def test_the_published_values() -> None:
    """The one home against the design notes, which quote main_train.lua and donkey_audio.lua
    (docs/design.md#input, #teachers-and-targets)."""
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    assert f"`sample_rate = {SAMPLE_RATE}`" in design
    assert f"`fineSize = {SAMPLE_RATE}*20`" in design
    assert f"gives [-{INPUT_SCALE:g}, {INPUT_SCALE:g}]" in design and isinstance(INPUT_SCALE, float)
    objects, scenes = HEAD_CLASSES.values()
    assert f"`label_dim = {objects}`, `label2_dim = {scenes}`" in design
    assert HEADS == tuple(HEAD_CLASSES) and len(HEADS) == 2 and HEADS[0] == "objects"
