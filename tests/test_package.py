"""The package installs as promised: light imports, the console script, the kernels under one name."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ["av", "sklearn", "nvidia.dali", "numba", "matplotlib", "tensorboard", "librosa", "soxr"]


def test_imports_stay_light() -> None:
    code = (
        "import sys, soundnet_fast, soundnet_fast.kernels, soundnet_fast.cli\n"
        "soundnet_fast.cli.build_parser()\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_kernels_import_only_torch_and_triton() -> None:
    code = (
        "import sys, soundnet_fast.kernels\n"
        "mods = [m for m in sys.modules if m.startswith('soundnet_fast.')\n"
        "        and not m.startswith('soundnet_fast.kernels')]\n"
        "print(sorted(set(mods) - {'soundnet_fast.model', 'soundnet_fast.weights', 'soundnet_fast.tf_npy',\n"
        "                          'soundnet_fast.pickle_scan', 'soundnet_fast.fsutil'}))"
    )
    # Importing the parent package runs soundnet_fast/__init__ (model + weights); the kernels themselves
    # must pull in nothing else from the project.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_console_script_help() -> None:
    import shutil

    exe = shutil.which("soundnet-fast") or f"{sys.prefix}/bin/soundnet-fast"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "extract" in out and "predict" in out and "convert" in out
