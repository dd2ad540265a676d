"""Audio through DALI: ``fn.soundnet_fast.decode_audio`` (the native plugin) then ``fn.audio_resample``, in one
pipeline (docs/design.md#the-native-dali-audio-operator).

DALI's own ``fn.decoders.audio`` reads WAV, FLAC and OGG only; the plugin decodes whatever the system's
FFmpeg reads (the AAC, MP3 and Opus soundtracks of MP4/MKV/WebM videos) on the CPU, the samples of a batch
in parallel on DALI's threads. Resampling to 22,050 Hz is DALI's ``fn.audio_resample`` (on the GPU with
``device="gpu"``) after the plugin's anti-aliasing low-pass (``fn.soundnet_fast.antialias_taps`` +
``fn.filter``), then samples are clamped to [-1, 1] as :func:`soundnet_fast.audio.load` clamps them.

Every file gets a result, never an exception: its ``status`` (:data:`OK`, :data:`NO_AUDIO`,
:data:`UNDECODABLE`, :data:`EMPTY`, and :data:`MISSING` for a file that cannot be read) and ``message``.

Memory: a batch holds its files' bytes (at most ``max_batch_bytes`` together, :data:`MAX_BATCH_BYTES`) and
their decoded waveforms. A file larger than ``max_batch_bytes`` goes alone and is never read whole: the plugin
gets its path and FFmpeg reads it from disk in small blocks (``from_path``). :meth:`DaliAudio.decode_files`
holds at most two batches (the one the caller handles and the next). The decoded audio itself is held whole per
file, as :func:`soundnet_fast.audio.load` holds it: about 4 bytes x (2 x the native rate + 2 x the output rate)
per second of audio (decoded, low-passed, resampled, and the caller's copy), ~2.3 GB for an hour at 48 kHz.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.prepare.dali_plugin import PluginUnavailable, load_plugin

OK, NO_AUDIO, UNDECODABLE, EMPTY = 0, 1, 2, 3  # the operator's statuses (soundnet_fast/native/decode_audio.h)
MISSING = -1  # set here: the file could not be read, so it never reached the pipeline
STATUS_NAMES = {OK: "ok", NO_AUDIO: "no audio", UNDECODABLE: "undecodable", EMPTY: "empty", MISSING: "missing"}
MAX_BATCH_BYTES = 256 << 20  # encoded bytes fed to one pipeline run (a larger file goes alone)
# fn.audio_resample's quality (0-100; 50 = 16 sinc lobes, DALI's default; 20 = ~7). After the anti-aliasing
# low-pass the signal holds nothing above 0.907 x the output's Nyquist, and 20 already matches soxr HQ to a
# correlation of 0.99998 on white noise at 44.1 and 48 kHz (50: the same, at 1.5x the time).
RESAMPLE_QUALITY = 20.0


@dataclass
class DecodedAudio:
    """One file's result. ``wave``: float32 (n,) mono at the pipeline's sample rate (native when it has none),
    empty unless ``status == OK``; ``rate``: the stream's own rate (Hz; 0 when nothing decoded);
    ``first_time``: the presentation time (s) of ``wave[0]``; ``stream_start``: the audio stream's start time
    (s; NaN when the container gives none); ``message``: why, when not OK."""

    wave: np.ndarray
    rate: float
    status: int
    first_time: float
    stream_start: float
    message: str

    @property
    def ok(self) -> bool:
        return self.status == OK


class DaliAudio:
    """A reusable pipeline: encoded files in, mono waveforms at ``sample_rate`` out.

    ``sample_rate``: the output rate (None: each file's own rate, no resampling). ``mono``: ``first`` | ``mean``.
    ``trim``: drop codec priming and the encoder's end padding as :func:`soundnet_fast.audio.load` does
    (False: keep every decoded sample; ``first_time`` says where the first is). ``device``: ``cpu`` or ``gpu``
    (resampling on GPU ``device_id``; decoding stays on the CPU: no GPU decodes AAC/MP3/Opus).
    ``batch_size`` files decode in parallel on ``num_threads`` threads. Raises
    :class:`~soundnet_fast.prepare.dali_plugin.PluginUnavailable` when the plugin cannot be loaded.
    """

    def __init__(
        self,
        sample_rate: int | None = SAMPLE_RATE,
        mono: str = "first",
        *,
        trim: bool = True,
        batch_size: int = 8,
        num_threads: int = 2,
        device: str = "cpu",
        device_id: int = 0,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        if mono not in ("first", "mean"):
            raise ValueError(f"mono must be 'first' or 'mean', got {mono!r}")
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        if batch_size < 1 or num_threads < 1 or max_batch_bytes < 1:
            raise ValueError("batch_size, num_threads and max_batch_bytes must be >= 1")
        load_plugin()
        self.sample_rate, self.mono, self.trim, self.device = sample_rate, mono, trim, device
        self.batch_size, self.num_threads, self.device_id = batch_size, num_threads, device_id
        self.max_batch_bytes = max_batch_bytes
        self._pipe = self._build()
        self._path_pipe: Any = None  # built on the first file over max_batch_bytes

    def _build(self, from_path: bool = False) -> Any:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali import math as dmath

        gpu = self.device == "gpu"

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads,
                      device_id=self.device_id if gpu else None, prefetch_queue_depth=1, exec_async=False,
                      exec_pipelined=False)  # fmt: skip
        def pipeline():  # type: ignore[no-untyped-def]
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1, no_copy=False)
            # A failed file's empty waveform gets one zero sample when resampling: fn.filter refuses empty input.
            audio, rate, status, times, message = fn.soundnet_fast.decode_audio(
                encoded, mono=self.mono, trim=self.trim, min_samples=0 if self.sample_rate is None else 1,
                from_path=from_path,
            )  # fmt: skip
            if self.sample_rate is not None:
                audio = self._resample(fn, dmath, audio.gpu() if gpu else audio, rate)
            return audio, rate, status, times, message

        pipe = pipeline()
        pipe.build()
        return pipe

    def _resample(self, fn: Any, dmath: Any, audio: Any, rate: Any) -> Any:
        """To ``sample_rate``: DALI's ``fn.audio_resample``, after the plugin's anti-aliasing low-pass (DALI's
        resampler interpolates at the input rate and so folds everything above the output's Nyquist back, e.g. a
        15 kHz tone of a 48 kHz file; soundnet_fast/native/antialias_op.cc). :meth:`decode` clamps to [-1, 1]
        as audio.load does (in place, on its copy)."""
        taps = fn.soundnet_fast.antialias_taps(rate, out_rate=float(self.sample_rate))
        image = fn.reshape(audio, shape=[1, -1, 1], layout="HWC")
        low = fn.reshape(fn.filter(image, taps.gpu() if self.device == "gpu" else taps, border="constant"), shape=[-1])
        return fn.audio_resample(low, in_rate=dmath.max(rate, 1.0), out_rate=float(self.sample_rate),
                                 quality=RESAMPLE_QUALITY)  # fmt: skip

    # -------------------------------------------------------------------------------- running
    def decode(self, encoded: Sequence[np.ndarray]) -> list[DecodedAudio]:
        """Decode up to ``batch_size`` files given as uint8 byte arrays (one pipeline run)."""
        if not encoded:
            return []
        if len(encoded) > self.batch_size:
            raise ValueError(f"{len(encoded)} files in one call, batch_size is {self.batch_size}")
        return self._run(self._pipe, [np.ascontiguousarray(e, dtype=np.uint8).reshape(-1) for e in encoded])

    def decode_path(self, path: str | os.PathLike[str]) -> DecodedAudio:
        """Decode one file that FFmpeg reads from disk itself (never held whole in memory): what
        :meth:`decode_files` does for a file larger than ``max_batch_bytes``. A file that cannot be opened for
        reading (missing, a folder, no permission) comes back as :data:`MISSING`, as in :meth:`decode_files`."""
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            return _missing(f"cannot read ({e.strerror or e})")
        if self._path_pipe is None:
            self._path_pipe = self._build(from_path=True)
        (out,) = self._run(self._path_pipe, [np.frombuffer(os.fsencode(path), dtype=np.uint8).copy()])
        return out

    def _run(self, pipe: Any, inputs: list[np.ndarray]) -> list[DecodedAudio]:
        pipe.feed_input("encoded", inputs)
        audio, rate, status, times, message = pipe.run()
        if self.device == "gpu" and self.sample_rate is not None:
            audio = audio.as_cpu()
        out = []
        for i in range(len(status)):
            t, ok = np.array(times[i], dtype=np.float64), int(np.array(status[i])) == OK
            out.append(
                DecodedAudio(
                    wave=self._wave(audio[i]) if ok else np.zeros(0, np.float32),
                    rate=float(np.array(rate[i])),
                    status=int(np.array(status[i])),
                    first_time=float(t[0]),
                    stream_start=float(t[1]),
                    message=bytes(np.array(message[i])).decode("utf-8", "replace"),
                )
            )
        return out

    def _wave(self, tensor: Any) -> np.ndarray:
        """A copy of one output waveform (DALI reuses its buffers), clamped to [-1, 1] after resampling."""
        wave = np.array(tensor, dtype=np.float32)
        return np.clip(wave, -1.0, 1.0, out=wave) if self.sample_rate is not None else wave

    def decode_files(self, paths: Iterable[str | os.PathLike[str]], ahead: int = 1) -> Iterator[DecodedAudio]:
        """Decode files in order, in batches of at most ``batch_size`` files and ``max_batch_bytes`` bytes; a
        background thread reads and decodes up to ``ahead`` batches beyond the one the caller is handling (the
        pipeline runs C++ without the GIL). A file that cannot be read comes back as :data:`MISSING`."""
        from soundnet_fast.data.loader import _prefetched

        def batches() -> Iterator[list[DecodedAudio]]:
            for batch in self._batches(paths):
                if len(batch) == 1 and isinstance(batch[0], _Large):
                    yield [self.decode_path(batch[0].path)]
                    continue
                decoded = iter(self.decode([e for e in batch if isinstance(e, np.ndarray)]))
                yield [next(decoded) if isinstance(e, np.ndarray) else e for e in batch]  # type: ignore[misc]

        source = _prefetched(batches(), ahead) if ahead > 0 else batches()
        for batch in source:
            yield from batch

    def _batches(self, paths: Iterable[str | os.PathLike[str]]) -> Iterator[list[np.ndarray | DecodedAudio | _Large]]:
        batch: list[np.ndarray | DecodedAudio | _Large] = []
        size = 0
        for p in paths:
            item: np.ndarray | DecodedAudio | None = None
            try:
                with open(p, "rb") as f:  # a folder, a missing or an unreadable file fails here, whatever its size
                    if os.fstat(f.fileno()).st_size <= self.max_batch_bytes:
                        item = np.fromfile(f, dtype=np.uint8)
            except OSError as e:
                item = _missing(f"cannot read ({e.strerror or e})")
            if item is None:  # over the cap: alone, by path, never read whole
                if batch:
                    yield batch
                    batch, size = [], 0
                yield [_Large(os.fspath(p))]
                continue
            n = item.size if isinstance(item, np.ndarray) else 0
            if batch and (len(batch) == self.batch_size or size + n > self.max_batch_bytes):
                yield batch
                batch, size = [], 0
            batch.append(item)
            size += n
        if batch:
            yield batch


@dataclass(frozen=True)
class _Large:
    """A file over ``max_batch_bytes``: decoded alone, from its path."""

    path: str


def _missing(message: str) -> DecodedAudio:
    return DecodedAudio(np.zeros(0, np.float32), 0.0, MISSING, float("nan"), float("nan"), message)


def load_many(
    paths: Sequence[str | os.PathLike[str]], sample_rate: int = SAMPLE_RATE, mono: str = "first", **kwargs: Any
) -> list[np.ndarray | Exception]:
    """:func:`soundnet_fast.audio.load` for many files through DALI: per file, the waveform, or an
    :class:`~soundnet_fast.audio.AudioDecodeError` naming it. ``kwargs`` go to :class:`DaliAudio`."""
    from soundnet_fast.audio import AudioDecodeError

    dec = DaliAudio(sample_rate, mono, **kwargs)
    out: list[np.ndarray | Exception] = []
    for path, r in zip(paths, dec.decode_files(paths), strict=True):
        out.append(r.wave if r.ok else AudioDecodeError(f"{os.fspath(path)}: {r.message}"))
    return out


__all__ = [
    "EMPTY",
    "MAX_BATCH_BYTES",
    "MISSING",
    "NO_AUDIO",
    "OK",
    "UNDECODABLE",
    "DaliAudio",
    "DecodedAudio",
    "PluginUnavailable",
    "load_many",
]
