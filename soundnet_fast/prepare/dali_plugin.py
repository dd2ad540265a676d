"""The native DALI plugin (``fn.soundnet_fast.decode_audio``): where it lives, how it is built, loading it once.

The C++ sources and their CMake file ship inside the package (``soundnet_fast/native/``), so an installed
package builds the plugin too: ``soundnet-fast build-dali-plugin`` (``make setup`` runs it). The result is
cached as ``$SOUNDNET_FAST_HOME/dali_plugin/<key>/libsoundnet_fast_dali.so``, ``<key>`` a hash of the sources,
the DALI version and the build options, so it is rebuilt only when one of them changes. ``$SOUNDNET_FAST_DALI_PLUGIN``
names a library built elsewhere instead. docs/design.md#the-native-dali-audio-operator.

A build needs cmake, a C++17 compiler, FFmpeg's development files found by pkg-config (Debian:
``apt-get install libavformat-dev libavcodec-dev libavutil-dev pkg-config``) and the CUDA headers that DALI's
headers include (nothing CUDA is linked): a CUDA toolkit's, else the registry's nvidia-cuda-runtime/-crt/-cccl
header wheels (:data:`CUDA_HEADER_WHEELS`), fetched once with ``pip download --no-deps`` into the cache.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from soundnet_fast.releases import home

LIBRARY = "libsoundnet_fast_dali.so"
PLUGIN_ENV = "SOUNDNET_FAST_DALI_PLUGIN"
NATIVE_DIR = Path(__file__).resolve().parents[1] / "native"
# The CUDA 13 headers DALI 2.4's headers include (cuda_runtime_api.h, crt/host_config.h, nv/target); the
# versions the plugin was checked with. Only their include/ folders are unpacked.
CUDA_HEADER_WHEELS = ("nvidia-cuda-runtime==13.5.37", "nvidia-cuda-crt==13.5.37", "nvidia-cuda-cccl==13.3.5.0.6")
FFMPEG_PACKAGES = ("libavformat-dev", "libavcodec-dev", "libavutil-dev", "pkg-config")
FFMPEG_MODULES = ("libavformat", "libavcodec", "libavutil")


class PluginUnavailable(RuntimeError):
    """The plugin cannot be built or loaded here; the message says why and what to install or run."""


# ------------------------------------------------------------------------------------------ where
def _sources() -> list[Path]:
    return sorted(p for p in NATIVE_DIR.iterdir() if p.suffix in (".cc", ".h") or p.name == "CMakeLists.txt")


def build_key(asan: bool = False) -> str:
    """16 hex digits naming a build: the sources' bytes, the DALI version, the Python and the options."""
    import nvidia.dali

    h = hashlib.sha256()
    for p in _sources():
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(f"dali {nvidia.dali.__version__} py {sys.version_info[:2]} {sys.executable} asan {asan}".encode())
    return h.hexdigest()[:16]


def cached_plugin(asan: bool = False) -> Path:
    """Where the build of the current sources lives (it may not exist yet)."""
    return home() / "dali_plugin" / build_key(asan) / LIBRARY


def plugin_path() -> Path | None:
    """The library to load: ``$SOUNDNET_FAST_DALI_PLUGIN``, else the cached build of these sources; None when
    neither exists (or DALI is not importable, which the key needs)."""
    env = os.environ.get(PLUGIN_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    try:
        path = cached_plugin()
    except ImportError:
        return None
    return path if path.is_file() else None


# ------------------------------------------------------------------------------------------ building
def missing_tools() -> list[str]:
    """What a build lacks here, each as the thing to install (empty when everything is there)."""
    missing = [f"{t} (apt-get install {t})" for t in ("cmake", "pkg-config") if shutil.which(t) is None]
    if shutil.which("c++") is None and shutil.which("g++") is None:
        missing.append("a C++17 compiler (apt-get install g++)")
    if shutil.which("pkg-config") is not None:
        probe = subprocess.run(["pkg-config", "--exists", *FFMPEG_MODULES], capture_output=True)
        if probe.returncode != 0:
            missing.append(f"FFmpeg's development files (apt-get install {' '.join(FFMPEG_PACKAGES[:3])})")
    return missing


def cuda_include() -> Path | None:
    """A folder holding ``cuda_runtime_api.h``: $CUDA_HOME's or /usr/local/cuda's toolkit, the header wheels
    installed in this Python, or those fetched into the cache; None when there is none yet."""
    import site

    candidates = [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates.append(Path("/usr/local/cuda/include"))
    candidates += [Path(p) / "nvidia" / "cu13" / "include" for p in site.getsitepackages()]
    candidates.append(home() / "cuda-headers" / "nvidia" / "cu13" / "include")
    return next((c for c in candidates if (c / "cuda_runtime_api.h").is_file()), None)


def fetch_cuda_headers(log: bool = True) -> Path:
    """Download :data:`CUDA_HEADER_WHEELS` with pip (``--no-deps``; whatever index pip is configured for) and
    unpack their ``nvidia/cu13/include`` into ``$SOUNDNET_FAST_HOME/cuda-headers``; returns that include
    folder. Nothing from the wheels is installed or run."""
    dest = home() / "cuda-headers"
    include = dest / "nvidia" / "cu13" / "include"
    if (include / "cuda_runtime_api.h").is_file():
        return include
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if log:
        print(f"fetching the CUDA headers ({', '.join(CUDA_HEADER_WHEELS)}) into {dest}", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
    proc = subprocess.run([*cmd, *CUDA_HEADER_WHEELS], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PluginUnavailable(f"cannot download the CUDA header wheels: {proc.stderr.strip()[-400:]}")
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("nvidia/cu13/include/") and not name.endswith("/") and ".." not in name:
                    target = dest / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(name) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
    if not (include / "cuda_runtime_api.h").is_file():
        raise PluginUnavailable(f"the CUDA header wheels in {wheels} hold no cuda_runtime_api.h")
    return include


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One build at a time per output folder (two test processes, or make and a test)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_plugin(
    out: str | os.PathLike[str] | None = None, *, asan: bool = False, jobs: int = 2, log: bool = True
) -> Path:
    """Build the plugin (CMake, ``soundnet_fast/native/CMakeLists.txt``) and return the library's path.

    ``out``: a folder for the library (default: the cache, :func:`cached_plugin`, where an existing build of
    the same sources is returned at once). ``asan``: with AddressSanitizer (load it only with libasan
    preloaded). Raises :class:`PluginUnavailable` saying what is missing, or with the compiler's last lines.
    """
    try:
        import nvidia.dali  # noqa: F401  (the build reads its headers and flags)
    except ImportError as e:
        raise PluginUnavailable(f"NVIDIA DALI is not importable ({e}): pip install 'soundnet-fast[dali]'") from e
    target = Path(out) / LIBRARY if out is not None else cached_plugin(asan)
    if out is None and target.is_file():
        return target
    missing = missing_tools()
    if missing:
        raise PluginUnavailable("cannot build the DALI audio plugin: missing " + "; ".join(missing))
    include = cuda_include() or fetch_cuda_headers(log)
    with _locked(target.parent / ".lock"):
        if out is None and target.is_file():  # built meanwhile by another process
            return target
        with tempfile.TemporaryDirectory(prefix="soundnet_fast_dali_build-") as build:
            configure = ["cmake", "-S", str(NATIVE_DIR), "-B", build, "-DCMAKE_BUILD_TYPE=Release"]
            configure += [f"-DPython3_EXECUTABLE={sys.executable}", f"-DSOUNDNET_FAST_CUDA_INCLUDE={include}"]
            configure += [f"-DSOUNDNET_FAST_ASAN={'ON' if asan else 'OFF'}"]
            for cmd in (configure, ["cmake", "--build", build, "-j", str(max(1, jobs))]):
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
                    raise PluginUnavailable(f"building the DALI audio plugin failed ({' '.join(cmd[:2])}):\n{tail}")
            tmp = target.with_name(f".tmp-{os.getpid()}-{LIBRARY}")
            shutil.copy2(Path(build) / LIBRARY, tmp)
            os.replace(tmp, target)
    if out is None:
        _prune(target.parent, asan)
    if log:
        print(f"built {target}", file=sys.stderr)
    return target


def _prune(keep: Path, asan: bool) -> None:
    """Remove the cache's builds of older sources of the same kind (plain or ``asan``); a marker file tells the
    kinds apart, so the plain and the sanitized build never evict each other."""
    (keep / ("asan" if asan else "plain")).touch()
    for other in keep.parent.iterdir():
        if other != keep and other.is_dir() and (other / ("asan" if asan else "plain")).exists():
            shutil.rmtree(other, ignore_errors=True)


# ------------------------------------------------------------------------------------------ loading
_loaded: Path | None = None
_load_error: str | None = None


def load_plugin(path: str | os.PathLike[str] | None = None) -> Path:
    """Load the plugin into DALI once per process (later calls return at once); returns the library's path.

    ``path``: a library to load (default :func:`plugin_path`). Raises :class:`PluginUnavailable` with the
    reason: DALI missing, the plugin not built (run ``soundnet-fast build-dali-plugin``), or the loader's error
    (the same reason again on every later call: a failed load is not retried).
    """
    global _loaded, _load_error
    try:  # first, even when loaded: a process that lost DALI (tests block it) cannot use the plugin either
        import nvidia.dali  # noqa: F401  (the package itself: a loaded submodule alone would not notice)
        import nvidia.dali.plugin_manager as plugin_manager
    except ImportError as e:
        raise PluginUnavailable(f"NVIDIA DALI is not importable ({e}): pip install 'soundnet-fast[dali]'") from e
    if _loaded is not None:
        return _loaded
    if _load_error is not None:
        raise PluginUnavailable(_load_error)
    lib = Path(path) if path is not None else plugin_path()
    if lib is None:
        where = os.environ.get(PLUGIN_ENV)
        raise PluginUnavailable(
            f"${PLUGIN_ENV} names {where}, which does not exist"
            if where
            else "the DALI audio plugin is not built: run `soundnet-fast build-dali-plugin` (or `make setup`)"
        )
    try:
        plugin_manager.load_library(str(lib))
    except Exception as e:  # DALI raises RuntimeError with the dlopen message
        _load_error = f"cannot load the DALI audio plugin {lib}: {e}"
        raise PluginUnavailable(_load_error) from e
    _loaded = lib
    return lib


def plugin_available() -> bool:
    """True when the plugin is built (or already loaded) and loads; never builds it."""
    try:
        load_plugin()
    except PluginUnavailable:
        return False
    return True


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="a folder for the library (default: the cache, where prepare finds it)")
    p.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (default %(default)s)")
    p.add_argument("--asan", action="store_true", help="build with AddressSanitizer (for tests)")


def run(args: argparse.Namespace) -> int:
    from soundnet_fast.errors import UsageError

    try:
        path = build_plugin(args.out, asan=args.asan, jobs=args.jobs)
    except PluginUnavailable as e:
        raise UsageError(str(e)) from e
    print(path)
    return 0
