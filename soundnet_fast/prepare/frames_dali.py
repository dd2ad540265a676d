"""Teacher frames through NVIDIA DALI's video decoder (``prepare --frames dali``; docs/design.md#data-path).

PyAV still demuxes: ``videodecode.decode(..., decode_frames=False)`` reads the video's packets (never
decoding them) and applies the same rule as the PyAV path (:func:`~soundnet_fast.prepare.video.pick_frames`:
the frame shown at the middle of each window, by timestamp, so variable frame rates are handled) to turn
windows into frame indices (``Decoded.frame_indices``). :class:`DaliFrames` then decodes just those frames
with ``fn.decoders.video`` from the file's bytes and shrinks them like the PyAV path (short side
FRAME_SHORT_SIDE, antialiased, never enlarged).

Why indices and not timestamps: DALI's decoder takes frame indices; it numbers the frames as its own index
does, one per packet of the first video stream, sorted by pts (dts where a packet has no pts), which is
exactly the order ``decode(..., decode_frames=False)`` builds.

Codecs: DALI's CPU backend decodes VP8, VP9 and MJPEG only; H.264, HEVC, AV1 and MPEG-4 need the GPU
("mixed") backend (NVDEC). A file DALI cannot decode raises :class:`DaliError` naming the file, and the
decoder stays usable (``prepare`` then takes that video's frames from PyAV).

DALI is imported lazily: ``soundnet_fast`` imports (and ``prepare`` runs with PyAV) without it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from soundnet_fast.prepare.video import VideoError, open_media, scaled_size


class DaliUnavailable(ImportError):
    """NVIDIA DALI is not installed (or not importable) here."""


class DaliError(RuntimeError):
    """DALI could not decode the frames of one file; ``reason`` is short, for the summary."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _short_reason(exc: BaseException) -> str:
    """The line of a DALI error that says what went wrong (its messages carry the pipeline's traceback)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "failed:" in ln:  # 'Assert on "..." failed: Failed to create video decoder for "memory file"'
            return ln.split("failed:", 1)[1].strip()
    for ln in reversed(lines):
        if not ln.startswith(("C++ context", "Current pipeline", "File ", "return ", "Critical error")):
            return ln
    return type(exc).__name__


class DaliFrames:
    """Decodes chosen frames of video files with one reusable DALI pipeline.

    ``device="cpu"`` runs DALI's CPU backend (VP8/VP9/MJPEG); ``"gpu"`` decodes on the GPU (``device_id``)
    with NVDEC and resizes there. Calling it returns uint8 RGB (H, W, 3) host arrays, one per index.

    Batch size 1: ``prepare`` hands over one video at a time, in order, as the decoding workers finish
    them; a fixed DALI batch of several videos would have to wait for, or pad with, videos not yet demuxed.
    The pipeline runs synchronously (no prefetching) because every run is fed exactly one input first.
    """

    def __init__(self, device: str = "cpu", device_id: int = 0, num_threads: int = 2) -> None:
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        try:
            from nvidia.dali import fn, pipeline_def, types
        except ImportError as e:
            raise DaliUnavailable(
                f"NVIDIA DALI is not importable ({e}); install it (e.g. pip install nvidia-dali-cuda120) or "
                "take the frames from PyAV (--frames pyav)"
            ) from e
        self.device = device
        self.device_id = device_id
        self.num_threads = num_threads
        self._dali = (fn, pipeline_def, types)
        self._pipe = self._build()

    def _build(self) -> Any:
        fn, pipeline_def, types = self._dali
        gpu = self.device == "gpu"

        @pipeline_def(batch_size=1, num_threads=self.num_threads, device_id=self.device_id if gpu else None,
                      prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)  # fmt: skip
        def pipeline():  # type: ignore[no-untyped-def]
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            indices = fn.external_source(name="indices", dtype=types.INT32, ndim=1)
            size = fn.external_source(name="size", dtype=types.FLOAT, ndim=1)  # [H, W] of the output
            frames = fn.decoders.video(encoded, device="mixed" if gpu else "cpu", frames=indices)  # (F, H, W, 3)
            # Linear with antialiasing when shrinking, like FFmpeg's area filter on the PyAV path; at the
            # source size (short side already <= FRAME_SHORT_SIDE) it is an exact copy (checked with DALI 2.4).
            return fn.resize(frames, size=size, antialias=True)

        pipe = pipeline()
        pipe.build()
        return pipe

    def __call__(
        self, path: str | os.PathLike[str], indices: list[int], size: tuple[int, int] | None = None
    ) -> list[np.ndarray]:
        """The frames ``indices`` (presentation order, as ``Decoded.frame_indices``) of the file ``path``.

        ``size`` is the source frame size (width, height); read from the file with PyAV when not given.
        Raises :class:`DaliError` (naming the file) when DALI cannot decode it.
        """
        path = os.fspath(path)
        if not indices:
            return []
        try:
            encoded = np.fromfile(path, dtype=np.uint8)
        except OSError as e:
            raise DaliError(path, f"cannot read ({e})") from e
        if size is None:
            size = _source_size(path)
        if min(size) <= 0:
            raise DaliError(path, f"unknown frame size {size}")
        w, h = scaled_size(*size)
        try:
            self._pipe.feed_input("encoded", [encoded])
            self._pipe.feed_input("indices", [np.asarray(indices, dtype=np.int32)])
            self._pipe.feed_input("size", [np.array([h, w], dtype=np.float32)])
            (out,) = self._pipe.run()
            batch = out.as_cpu() if self.device == "gpu" else out
            frames = np.array(batch[0])  # (F, H, W, 3) uint8, a copy DALI no longer owns
        except Exception as e:
            # A failed run leaves a DALI pipeline unusable ("no longer valid"): start a fresh one (~10 ms).
            self._pipe = self._build()
            raise DaliError(path, f"DALI ({self.device}) cannot decode it: {_short_reason(e)}") from e
        if frames.shape[0] != len(indices) or frames.shape[-1] != 3:
            raise DaliError(path, f"DALI returned frames shaped {frames.shape} for {len(indices)} indices")
        return list(frames)


def _source_size(path: str) -> tuple[int, int]:
    try:
        with open_media(path) as c:
            cc = c.streams.video[0].codec_context
            return int(cc.width), int(cc.height)
    except (VideoError, IndexError) as e:
        raise DaliError(path, f"cannot read the video's frame size ({e})") from e


def dali_device(device: str | None) -> tuple[bool, int]:
    """Whether DALI should run on a GPU, and which, for the teachers' torch ``device``: a GPU when CUDA is
    available unless ``device`` is the CPU; ``cuda:N`` picks GPU N (default 0)."""
    import torch

    cuda = torch.cuda.is_available() and not (device or "").startswith("cpu")
    return cuda, int(device.split(":", 1)[1]) if cuda and device and ":" in device else 0


def open_frame_decoder(frames: str, device: str | None = None) -> DaliFrames | None:
    """The DALI decoder ``prepare(frames=...)`` asks for, or None for PyAV.

    ``pyav``: None. ``dali``: DALI on the GPU when CUDA is available, else its CPU backend (raises
    :class:`DaliUnavailable` without DALI). ``auto``: DALI on the GPU when CUDA is available and DALI imports
    and starts, else None. ``device`` is the teachers' device: ``cpu`` keeps DALI off the GPU too, ``cuda:N``
    puts it on GPU N.
    """
    if frames == "pyav":
        return None
    cuda, device_id = dali_device(device)
    if frames == "auto":
        if not cuda:
            # DALI's CPU backend decodes only VP8/VP9/MJPEG, one video at a time in the main process: the
            # parallel PyAV workers are the better CPU path.
            return None
        try:
            return DaliFrames("gpu", device_id=device_id)
        except (DaliUnavailable, RuntimeError):  # not installed, or no usable GPU decoder: PyAV
            return None
    return DaliFrames("gpu" if cuda else "cpu", device_id=device_id)
