"""The native DALI audio operator (fn.soundnet_fast.decode_audio + fn.audio_resample) against
:func:`soundnet_fast.audio.load` (PyAV), broken inputs, batching, loading errors, and the three FFmpeg builds that
share a process (docs/design.md#the-native-dali-audio-operator).

Parity, per file: the same length within one sample at 22,050 Hz, a click placed at a known time on the same
sample within one, a tone's spectral peak in the same bin, correlation >= 0.999; at the file's own rate (no
resampling on either side) the very same length, and for PCM/FLAC the very same samples.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from soundnet_fast import audio
from soundnet_fast.constants import SAMPLE_RATE
from tests.helpers.sounds import write_audio, write_video_only
from tests.prepare.dali_audio_support import assert_parity, on_ci, parity_signal, require_plugin

ROOT = Path(__file__).resolve().parents[2]

# (name, container: an audio extension or "video.<ext>" for a video with that audio, seconds, rate, channels)
CASES = [
    ("wav-mono-44k", ".wav", 2.0, 44100, 1),
    ("wav-stereo-48k", ".wav", 2.0, 48000, 2),
    ("flac-stereo-44k", ".flac", 2.0, 44100, 2),
    ("flac-mono-48k", ".flac", 2.0, 48000, 1),
    ("mp3-mono-44k", ".mp3", 2.0, 44100, 1),
    ("mp3-stereo-48k", ".mp3", 2.0, 48000, 2),
    ("aac-m4a-stereo-44k", ".m4a", 2.0, 44100, 2),
    ("aac-m4a-mono-48k", ".m4a", 2.0, 48000, 1),
    ("vorbis-ogg-stereo-44k", ".ogg", 2.0, 44100, 2),  # FFmpeg's Vorbis encoder is stereo only
    ("vorbis-ogg-stereo-48k", ".ogg", 2.0, 48000, 2),
    ("opus-ogg-mono-48k", ".opus", 2.0, 48000, 1),
    ("aac-mp4-video-stereo-44k", "video.mp4", 2.0, 44100, 2),
    ("aac-mp4-video-mono-48k", "video.mp4", 2.0, 48000, 1),
    ("opus-webm-video-stereo-48k", "video.webm", 2.0, 48000, 2),
    ("flac-mkv-video-mono-44k", "video.mkv", 2.0, 44100, 1),
    ("short-wav-0.5s", ".wav", 0.5, 44100, 1),
    ("short-aac-m4a-0.6s", ".m4a", 0.6, 48000, 2),
    ("short-mp3-0.4s", ".mp3", 0.4, 44100, 1),
    ("short-opus-webm-0.7s", "video.webm", 0.7, 48000, 1),
]
LOSSLESS = (".wav", ".flac", "video.mkv")


def write_case(folder: Path, name: str, container: str, seconds: float, rate: int, channels: int) -> Path:
    from tests.helpers.media import write_video

    if container.startswith("video."):

        def fn(t: np.ndarray) -> np.ndarray:
            return parity_signal(seconds, rate, channels)[
                :, np.minimum(np.round(t * rate).astype(int), int(seconds * rate) - 1)
            ]

        return write_video(folder / f"{name}{container[5:]}", seconds, sample_rate=rate, channels=channels, audio_fn=fn)
    return Path(write_audio(str(folder / f"{name}{container}"), parity_signal(seconds, rate, channels), rate))


@pytest.fixture(scope="module")
def plugin() -> Path:
    return require_plugin()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dali_audio_parity")
    return {c[0]: write_case(d, *c) for c in CASES}


@pytest.fixture(scope="module")
def decoded(plugin: Path, files: dict[str, Path]) -> dict[tuple[str, object], object]:
    """Every file through one pipeline per setting: (mono, sample_rate) -> name -> DecodedAudio."""
    from soundnet_fast.prepare.audio_dali import DaliAudio

    out: dict[tuple[str, object], object] = {}
    for mono, rate in (("first", SAMPLE_RATE), ("mean", SAMPLE_RATE), ("first", None)):
        dec = DaliAudio(rate, mono, batch_size=8, num_threads=2)
        out[mono, rate] = dict(zip(files, dec.decode_files(list(files.values())), strict=True))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_audio_load(case: tuple, files: dict[str, Path], decoded: dict) -> None:
    name, container, seconds, rate, channels = case
    # FFmpeg's experimental Vorbis encoder (the only one PyAV bundles) writes a second channel that FFmpeg 5.1 and
    # 8 decode differently (correlation ~0.1 between them, ~0.5 each with the signal; the first channel is exact):
    # the mean of the channels is compared on the other stereo formats, and on Vorbis written by libvorbis below.
    for mono in ("first", "mean") if channels == 2 and container != ".ogg" else ("first",):
        got = decoded[mono, SAMPLE_RATE][name]
        assert got.ok and got.message == "", (name, got.status, got.message)
        assert got.rate == rate
        assert_parity(got.wave, audio.load(files[name], mono=mono), seconds, f"{name} mono={mono}")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_native_rate_same_trimming_as_audio_load(case: tuple, files: dict[str, Path], decoded: dict) -> None:
    # No resampler on either side: priming and end padding are cut to the very same sample count.
    name, container, seconds, rate, channels = case
    got = decoded["first", None][name]
    ref = audio.load(files[name], sample_rate=rate)  # resample() is a no-op at the native rate
    assert got.ok and got.rate == rate
    assert len(got.wave) == len(ref), (name, len(got.wave), len(ref))
    if container in LOSSLESS:
        np.testing.assert_array_equal(got.wave, ref)  # PCM and FLAC decode exactly
    else:
        assert float(np.corrcoef(got.wave, ref)[0, 1]) >= 0.999, name
    assert got.first_time >= 0  # priming trimmed: nothing is presented before time 0


def test_mean_differs_from_first_on_stereo(decoded: dict) -> None:
    # The stereo files' second channel is a 3 kHz tone: "mean" must mix it in, "first" must not.
    a, b = decoded["first", SAMPLE_RATE]["flac-stereo-44k"].wave, decoded["mean", SAMPLE_RATE]["flac-stereo-44k"].wave
    assert np.abs(a - b).max() > 0.05


@pytest.mark.parametrize("rate", [44100, 48000])
def test_vorbis_mean_of_channels_from_libvorbis(plugin: Path, tmp_path: Path, rate: int) -> None:
    """mono="mean" on stereo Vorbis, written by libvorbis (through libsndfile) instead of FFmpeg's experimental
    encoder: the plugin's mean equals audio.load's, and it differs from the first channel (3 kHz tone mixed in)."""
    try:
        import soundfile as sf  # comes with librosa (the eval extra), which make setup installs
    except ImportError:
        if on_ci():
            pytest.fail("soundfile (libsndfile's libvorbis encoder) is missing: make setup installs it")
        pytest.skip("soundfile is not installed (pip install 'soundnet-fast[eval]')")
    from soundnet_fast.prepare.audio_dali import DaliAudio

    path = tmp_path / f"libvorbis-stereo-{rate}.ogg"
    sf.write(path, parity_signal(2.0, rate, 2).T, rate, format="OGG", subtype="VORBIS")
    first, mean = (DaliAudio(SAMPLE_RATE, m).decode_files([path]) for m in ("first", "mean"))
    (a,), (b,) = list(first), list(mean)
    assert a.ok and b.ok and a.rate == b.rate == rate
    assert_parity(a.wave, audio.load(path, mono="first"), 2.0, f"libvorbis {rate} first")
    assert_parity(b.wave, audio.load(path, mono="mean"), 2.0, f"libvorbis {rate} mean")
    assert np.abs(a.wave - b.wave).max() > 0.05


def test_files_over_the_byte_cap_decode_from_their_path(
    plugin: Path, files: dict[str, Path], decoded: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With max_batch_bytes=1 every file is over the cap: it goes alone, FFmpeg reads it from disk (never
    np.fromfile'd whole) and the result is the one the in-memory path gives; bad files still get a status."""
    from soundnet_fast.prepare import audio_dali as A

    names = ["aac-m4a-stereo-44k", "mp3-mono-44k", "opus-webm-video-stereo-48k", "flac-mkv-video-mono-44k"]
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.m4a"
    truncated.write_bytes(files["aac-m4a-stereo-44k"].read_bytes()[:300])
    paths = [files[n] for n in names] + [tmp_path / "missing.mp3", junk, truncated]

    def no_whole_reads(*a: object, **k: object) -> None:
        raise AssertionError("a file over max_batch_bytes was read whole")

    monkeypatch.setattr(A.np, "fromfile", no_whole_reads)
    got = list(A.DaliAudio(SAMPLE_RATE, "first", max_batch_bytes=1).decode_files(paths))
    for name, g in zip(names, got, strict=False):
        ref = decoded["first", SAMPLE_RATE][name]
        assert g.ok and g.rate == ref.rate and g.first_time == ref.first_time, name
        np.testing.assert_array_equal(g.wave, ref.wave, err_msg=name)
    missing, bad, cut = got[len(names) :]
    assert missing.status == A.MISSING and "cannot read" in missing.message
    assert bad.status == A.UNDECODABLE and bad.message
    assert cut.status in (A.UNDECODABLE, A.EMPTY) and cut.message


def test_by_path_names_are_files_only(
    plugin: Path, files: dict[str, Path], decoded: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative name with a ':' ("12:30 clip.m4a") is a file, not an FFmpeg protocol; a folder or a missing
    file is MISSING by path as by bytes; a URL-like name is looked up as a file, never fetched."""
    from soundnet_fast.prepare import audio_dali as A

    monkeypatch.chdir(tmp_path)
    Path("12:30 clip.m4a").write_bytes(files["aac-m4a-stereo-44k"].read_bytes())
    Path("a folder.wav").mkdir()
    dec = A.DaliAudio(SAMPLE_RATE, "first", max_batch_bytes=1)
    clip, folder, missing = dec.decode_files(["12:30 clip.m4a", "a folder.wav", "nope.wav"])
    assert clip.ok, clip.message
    np.testing.assert_array_equal(clip.wave, decoded["first", SAMPLE_RATE]["aac-m4a-stereo-44k"].wave)
    assert folder.status == A.MISSING and "cannot read" in folder.message
    assert missing.status == A.MISSING and "cannot read" in missing.message
    assert dec.decode_path("a folder.wav").status == A.MISSING
    assert dec.decode_path("http://127.0.0.1:9/x.wav").status == A.MISSING


def test_no_alias_from_above_the_output_nyquist(plugin: Path, tmp_path: Path) -> None:
    # DALI's fn.audio_resample alone folds a 15 kHz tone of a 48 kHz file to 7,050 Hz at full amplitude; the
    # plugin's low-pass before it (antialias_taps + fn.filter) must remove it, as soxr does for audio.load.
    from soundnet_fast.prepare.audio_dali import DaliAudio

    t = np.arange(48000 * 2) / 48000
    path = write_audio(str(tmp_path / "hf.wav"), (0.5 * np.sin(2 * np.pi * 15000 * t)).astype(np.float32), 48000)
    (got,) = DaliAudio().decode_files([path])
    assert got.ok and np.sqrt(np.mean(got.wave[2000:-2000] ** 2)) < 1e-3  # -60 dB of the tone's 0.35 RMS
    assert np.sqrt(np.mean(audio.load(path)[2000:-2000] ** 2)) < 1e-3


def test_antialias_taps(plugin: Path) -> None:
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=4, num_threads=1, device_id=None, prefetch_queue_depth=1, exec_async=False,
                  exec_pipelined=False)  # fmt: skip
    def taps():  # type: ignore[no-untyped-def]
        rate = fn.external_source(name="rate", dtype=types.FLOAT, ndim=0)
        return fn.soundnet_fast.antialias_taps(rate, out_rate=float(SAMPLE_RATE))

    pipe = taps()
    pipe.build()
    rates = [16000.0, float(SAMPLE_RATE), 44100.0, 48000.0]
    pipe.feed_input("rate", [np.float32(r) for r in rates])
    (out,) = pipe.run()
    got = [np.array(out[i]) for i in range(len(rates))]
    assert got[0].tolist() == [[1.0]] and got[1].tolist() == [[1.0]]  # no downsampling: nothing to remove
    for rate, h in zip(rates[2:], got[2:], strict=True):
        h = h[0].astype(np.float64)
        assert h.ndim == 1 and len(h) % 2 == 1 and np.allclose(h, h[::-1], atol=1e-7)  # linear phase, no delay
        response = np.abs(np.fft.rfft(h, 1 << 16))
        f = np.fft.rfftfreq(1 << 16, 1 / rate)
        assert np.abs(20 * np.log10(response[f <= 10000])).max() < 0.01, rate  # flat to 10 kHz
        assert 20 * np.log10(response[f >= 11025].max()) < -79, rate  # 80 dB down past 11,025 Hz


# ------------------------------------------------------------------------------------------ broken inputs
def test_broken_inputs_get_a_status_and_never_stop_the_batch(plugin: Path, tmp_path: Path, files: dict) -> None:
    from soundnet_fast.prepare.audio_dali import EMPTY, MISSING, NO_AUDIO, OK, UNDECODABLE, DaliAudio, load_many
    from tests.helpers.media import write_garbage, write_truncated

    good = files["aac-mp4-video-mono-48k"]
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video at all\n" * 20)
    broken = {
        "empty": (tmp_path / "empty.mp4", {EMPTY}),
        "random": (write_garbage(tmp_path / "random.mp4", 4096, seed=1), {UNDECODABLE}),
        "random-tiny": (write_garbage(tmp_path / "tiny.webm", 7, seed=2), {UNDECODABLE}),
        "text": (tmp_path / "text.mp4", {UNDECODABLE}),
        "video-only": (Path(write_video_only(str(tmp_path / "silent.mp4"))), {NO_AUDIO}),
        "missing": (tmp_path / "no-such-file.mp4", {MISSING}),
    }
    for src in ("aac-mp4-video-stereo-44k", "mp3-mono-44k", "flac-mono-48k", "opus-webm-video-stereo-48k"):
        for keep in (0.05, 0.5, 0.97):
            path = write_truncated(files[src], tmp_path / f"cut{keep}-{files[src].name}", keep)
            broken[f"{src} cut to {keep}"] = (path, {OK, NO_AUDIO, UNDECODABLE, EMPTY})  # any, never a crash
    paths = [good] + [p for p, _ in broken.values()] + [good]
    got = list(DaliAudio(batch_size=8).decode_files(paths))
    full = len(got[0].wave)
    assert got[0].ok and got[-1].ok and np.array_equal(got[0].wave, got[-1].wave)
    for (name, (_, allowed)), r in zip(broken.items(), got[1:-1], strict=True):
        assert r.status in allowed, (name, r.status, r.message)
        if r.ok:  # a cut file keeps what decoded before the cut
            assert 0 < len(r.wave) <= full + 1 and np.isfinite(r.wave).all(), name
        else:
            assert r.wave.size == 0 and r.message, name
    for name in ("empty", "random", "text", "video-only"):  # the same verdict as PyAV's
        with pytest.raises(audio.AudioDecodeError):
            audio.load(broken[name][0])
    assert "holds no audio stream" in got[1 + list(broken).index("video-only")].message
    errors = load_many([broken["text"][0], good])
    assert isinstance(errors[0], audio.AudioDecodeError) and str(broken["text"][0]) in str(errors[0])
    assert isinstance(errors[1], np.ndarray) and errors[1].size > 0


def test_batches_split_by_bytes_and_keep_order(plugin: Path, files: dict[str, Path]) -> None:
    from soundnet_fast.prepare.audio_dali import DaliAudio

    paths = list(files.values())[:6]
    whole = list(DaliAudio(batch_size=8).decode_files(paths))
    alone = list(DaliAudio(batch_size=8, max_batch_bytes=1).decode_files(paths, ahead=0))  # one file a run
    assert [len(a.wave) for a in whole] == [len(b.wave) for b in alone]
    for a, b in zip(whole, alone, strict=True):
        np.testing.assert_array_equal(a.wave, b.wave)
    with pytest.raises(ValueError, match="batch_size"):
        DaliAudio(batch_size=2).decode([np.zeros(1, np.uint8)] * 3)


def test_bad_arguments_are_rejected_before_loading() -> None:
    from soundnet_fast.prepare.audio_dali import DaliAudio

    with pytest.raises(ValueError, match="mono"):
        DaliAudio(mono="left")
    with pytest.raises(ValueError, match="device"):
        DaliAudio(device="tpu")


# ------------------------------------------------------------------------------------------ loading
def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)  # fmt: skip


def test_load_errors_say_why(plugin: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "libgarbage.so"
    garbage.write_bytes(b"not an ELF file")
    code = """
    from soundnet_fast.prepare.dali_plugin import PluginUnavailable, load_plugin
    for attempt in (1, 2):
        try:
            load_plugin()
        except PluginUnavailable as e:
            print(attempt, e)
    """
    missing = _python(code, SOUNDNET_FAST_DALI_PLUGIN=str(tmp_path / "nope.so"))
    assert "SOUNDNET_FAST_DALI_PLUGIN names" in missing.stdout and "does not exist" in missing.stdout, missing
    bad = _python(code, SOUNDNET_FAST_DALI_PLUGIN=str(garbage))
    lines = bad.stdout.splitlines()
    assert len(lines) == 2 and all(f"cannot load the DALI audio plugin {garbage}" in ln for ln in lines), bad


def test_require_plugin_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    import soundnet_fast.prepare.dali_plugin as dali_plugin

    def broken(**_: object) -> Path:
        raise dali_plugin.PluginUnavailable("missing FFmpeg's development files")

    monkeypatch.setattr(dali_plugin, "build_plugin", broken)
    monkeypatch.setenv("CI", "true")
    assert on_ci()
    with pytest.raises(pytest.fail.Exception, match="never skip"):
        require_plugin()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="development files"):
        require_plugin()


def test_sources_ship_in_the_package() -> None:
    # pip users build from the installed package: every source file must match pyproject.toml's package data.
    import fnmatch

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    from soundnet_fast.prepare.dali_plugin import NATIVE_DIR

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = config["package-data"]["soundnet_fast.native"]
    assert "soundnet_fast.native" in config["packages"]
    names = sorted(p.name for p in NATIVE_DIR.iterdir() if p.is_file())
    assert {"CMakeLists.txt", "decode_audio.cc", "decode_audio.h", "decode_audio_op.cc"} <= set(names)
    assert all(any(fnmatch.fnmatch(n, g) for g in globs) for n in names), (names, globs)
    top = (ROOT / "CMakeLists.txt").read_text()
    assert "add_subdirectory(soundnet_fast/native)" in top


# ------------------------------------------------------------------------------------------ three FFmpegs
def test_pyav_dali_video_and_plugin_share_one_process(plugin: Path, tmp_path: Path) -> None:
    """PyAV's bundled FFmpeg, DALI's bundled one (its video decoder) and the system's (the plugin) in one process,
    used in turns: each still decodes correctly, and /proc/self/maps shows three libavformat builds."""
    from tests.helpers.media import write_video

    video = write_video(
        tmp_path / "v.webm", 3, sample_rate=48000, fps=5, frame_fn=lambda t: np.full((48, 64, 3), 90, np.uint8)
    )
    code = f"""
    import numpy as np
    from soundnet_fast import audio
    from soundnet_fast.prepare.audio_dali import DaliAudio
    from soundnet_fast.prepare.frames_dali import DaliFrames
    from soundnet_fast.prepare.dali_plugin import load_plugin
    load_plugin({str(plugin)!r})
    dec, frames, path = DaliAudio(), DaliFrames("cpu"), {str(video)!r}
    for turn in range(2):
        (a,) = dec.decode_files([path])
        f = frames(path, [0, 7, 14])
        p = audio.load(path)
        assert a.ok and abs(len(a.wave) - len(p)) <= 1, (a.status, a.message, len(a.wave), len(p))
        assert np.corrcoef(a.wave[: len(p)], p[: len(a.wave)])[0, 1] > 0.999
        assert len(f) == 3 and all(abs(float(x.mean()) - 90) < 3 for x in f), [x.mean() for x in f]
    maps = {{ln.split()[-1] for ln in open("/proc/self/maps") if "libavformat" in ln}}
    print(len(maps))
    print("\\n".join(sorted(maps)))
    """
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, *libs = proc.stdout.split("\n")
    assert int(count) >= 3, proc.stdout  # PyAV's, DALI's and the system's libavformat
    assert any("site-packages/av" in ln for ln in libs) and any("nvidia" in ln for ln in libs), libs
