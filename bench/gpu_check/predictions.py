"""Static predictions from ``bench/sass_report.py`` put beside every measured figure.

``bench.sass_report`` writes ``bench/results/sass_report-triton<version>-<date>.json``::

    {"meta": {...},
     "configs": [{"arch": "soundnet8", "batch": 64, "seconds": 20.0, "dtype": "bf16",
                  "launches": [{"layer": "conv1", "phase": "forward" | "backward", "kernel": "<kernel __name__>",
                                "constexprs": {...}, "grid": [...], "num_warps": 4, "regs": int, "spill_bytes": int,
                                "smem_bytes": int, "warp_instructions": float (per launch), "flops": float,
                                "bytes_dram": float, "predicted_us": {"H100": float, "H200": float}}, ...],
                  "predicted_clips_per_s": {"H100": ..., "H200": ...}}]}

The newest file made with the running Triton's major.minor is used (else the newest of any version; the report
says which). A measured launch is matched by (layer, kernel, constexprs): constexprs agree on every key both sides
name (a prediction may leave out keys such as INTERP), the candidate sharing the most keys wins, and the phase
must agree where both give one. No file, or no match, reads "no matching prediction"; nothing here raises on a
malformed file (it is reported instead).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .common import ROOT

RESULTS = ROOT / "bench" / "results"
NO_PREDICTION = "no matching prediction"  # no file, or no launch in it with these constexprs
_NAME = re.compile(r"^sass_report-triton(?P<ver>[0-9][0-9A-Za-z.+_]*?)-(?P<date>\d{4}-\d{2}-\d{2})(?:[-_].*)?\.json$")


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\d+", version)[:2])


def find_file(triton_version: str, folder: Path = RESULTS) -> tuple[Path | None, str]:
    """(newest prediction file for this Triton major.minor, else the newest of any version; a note on the choice)."""
    found = []
    for p in Path(folder).glob("sass_report-triton*.json"):
        m = _NAME.match(p.name)
        if m:
            found.append((m.group("date"), p.stat().st_mtime, m.group("ver"), p))
    if not found:
        return None, NO_PREDICTION
    found.sort(reverse=True)
    want = _major_minor(triton_version)
    same = [f for f in found if _major_minor(f[2]) == want]
    if same:
        return same[0][3], f"{same[0][3].name} (Triton {same[0][2]}, matches the running {triton_version})"
    return found[0][3], f"{found[0][3].name} (Triton {found[0][2]}; none for the running {triton_version})"


def load(path: Path | None) -> tuple[dict[str, Any] | None, str | None]:
    """(parsed file, None) or (None, why it could not be used)."""
    if path is None:
        return None, NO_PREDICTION
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        return None, f"{Path(path).name} unreadable: {type(e).__name__}: {e}"
    if not isinstance(data, dict) or not isinstance(data.get("configs"), list):
        return None, f"{Path(path).name}: no 'configs' list"
    return data, None


def select_config(
    data: dict[str, Any] | None, arch: str = "soundnet8", batch: int = 64, seconds: float = 20.0, dtype: str = "bf16"
) -> dict[str, Any] | None:
    """The prediction config for this (arch, batch, clip length, dtype), else None."""
    for c in (data or {}).get("configs", []):
        if not isinstance(c, dict):
            continue
        try:
            if (
                c.get("arch") == arch
                and int(c.get("batch", -1)) == batch
                and abs(float(c.get("seconds", -1)) - seconds) < 1e-6
                and c.get("dtype") == dtype
            ):
                return c
        except (TypeError, ValueError):
            continue
    return None


def _norm(v: Any) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v


def match(config: dict[str, Any] | None, launch: dict[str, Any]) -> dict[str, Any] | None:
    """The predicted launch for a measured one (see the module docstring), else None."""
    if not config:
        return None
    ours = {k: _norm(v) for k, v in launch.get("constexprs", {}).items()}
    best, best_score = None, -1
    for p in config.get("launches", []):
        if not isinstance(p, dict) or p.get("kernel") != launch["kernel"] or p.get("layer") != launch["layer"]:
            continue
        if p.get("phase") and launch.get("phase") and p["phase"] != launch["phase"]:
            continue
        theirs = {k: _norm(v) for k, v in (p.get("constexprs") or {}).items()}
        common = set(ours) & set(theirs)
        if any(ours[k] != theirs[k] for k in common):
            continue
        if not common and (ours and theirs):
            continue
        if len(common) > best_score:
            best, best_score = p, len(common)
    return best


def device_key(device_name: str) -> str:
    """'H100' or 'H200' for the prediction tables (an unknown device reads as the H200 this project is lent)."""
    return "H100" if "H100" in device_name else "H200"


def predicted_us(pred: dict[str, Any] | None, device: str) -> float | None:
    try:
        return float(pred["predicted_us"][device]) if pred else None
    except (KeyError, TypeError, ValueError):
        return None


def predicted_clips(config: dict[str, Any] | None, device: str) -> float | None:
    try:
        return float(config["predicted_clips_per_s"][device]) if config else None
    except (KeyError, TypeError, ValueError):
        return None


class Predictions:
    """The prediction file for this run (or why there is none) and its config for the timed configuration.
    ``where`` is a prediction file or a folder to search (``--predictions``; default bench/results)."""

    def __init__(self, triton_version: str, batch: int, seconds: float, where: Path | str | None = None) -> None:
        where = Path(where) if where else RESULTS
        if where.is_file():
            path, self.source = where, where.name
        else:
            path, self.source = find_file(triton_version, where)
        self.data, problem = load(path)
        if problem and path is not None:
            self.source = problem
        self.config = select_config(self.data, "soundnet8", batch, seconds, "bf16")
        if self.data is not None and self.config is None:
            self.source += f"; no soundnet8 bf16 config for batch {batch}, {seconds:g} s"

    def launch(self, launch: dict[str, Any]) -> dict[str, Any] | None:
        return match(self.config, launch)

    def clips_per_s(self, device: str) -> float | None:
        return predicted_clips(self.config, device)
