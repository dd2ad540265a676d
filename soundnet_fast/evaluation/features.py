"""Features for the transfer evaluation, cached on disk (docs/design.md#transfer-evaluation).

SoundNet features come from ``model.features(x, layer)`` on clips tiled to 10 s (the original scripts tile
circularly past 10 s and cut at exactly 10 s; longer clips, e.g. DCASE's 30 s, are used whole). The cache key
is (model key, layer, input scale, channel mix, minimum length, audio file content hash): the model key is the
weight file's SHA-256 (or a hash of the state dict for the random baselines), so a second run with the same
weights extracts nothing.

One bad clip never takes good ones down: each file is decoded and checked on its own
(:func:`soundnet_fast.audio.check_wave`: empty or non-finite audio fails the file, digital silence is a warning)
before it joins a batch, and a batch the network fails on runs again one clip at a time
(``errors.each_alone_on_failure``). A file that fails is reported by name and reason (``ExtractStats.failed``)
and left out of every method (``steps.common_clips``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from soundnet_fast.audio import AudioDecodeError, Mono, check_wave, load, tile, to_input
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.errors import each_alone_on_failure, reason
from soundnet_fast.fsutil import atomic_np_save, atomic_write_text
from soundnet_fast.model import SoundNet, build

MFCC_VERSION = "mfcc13-c1..12-meanstd+zcr-meanstd/1"  # bump when the MFCC recipe changes


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "soundnet_fast", "features")


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_sha256(model: torch.nn.Module) -> str:
    """A key for weights that have no file (the random baselines): SHA-256 of the state dict's bytes."""
    h = hashlib.sha256(type(model).__name__.encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def audio_hashes(paths: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Content hash of each readable file, and a reason for each file that cannot be read."""
    hashes: dict[str, str] = {}
    failed: dict[str, str] = {}
    for p in paths:
        try:
            if os.path.getsize(p) == 0:
                failed[p] = "file is empty (0 bytes)"
                continue
            hashes[p] = file_sha256(p)
        except OSError as e:
            failed[p] = "no such file" if isinstance(e, FileNotFoundError) else f"cannot read ({e.strerror})"
    return hashes, failed


@dataclass
class FeatureStore:
    """One cache folder: ``root/<model key>/<variant>/<audio hash>.npy``."""

    root: str
    model_key: str
    variant: str
    description: dict = field(default_factory=dict)

    @property
    def folder(self) -> str:
        return os.path.join(self.root, self.model_key[:24], self.variant)

    def path(self, audio_hash: str) -> str:
        return os.path.join(self.folder, f"{audio_hash[:40]}.npy")

    def get(self, audio_hash: str) -> np.ndarray | None:
        p = self.path(audio_hash)
        if not os.path.isfile(p):
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError):  # a damaged entry is recomputed, never trusted
            return None

    def put(self, audio_hash: str, feature: np.ndarray) -> None:
        if not os.path.isfile(os.path.join(self.folder, "key.json")):
            atomic_write_text(os.path.join(self.folder, "key.json"), json.dumps(self.description, indent=1))
        atomic_np_save(self.path(audio_hash), np.ascontiguousarray(feature))


@dataclass
class ExtractStats:
    extracted: int = 0
    cached: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason (no features: left out)
    warnings: dict[str, list[str]] = field(default_factory=dict)  # path -> notes on a clip that was used


def decode_clip(path: str, *, mono: Mono = "first", min_seconds: float = 10.0) -> tuple[np.ndarray, list[str]]:
    """Decode at 22,050 Hz and check (:func:`soundnet_fast.audio.check_wave`); a clip shorter than
    ``min_seconds`` is tiled circularly and cut at exactly ``min_seconds`` (eval_esc50.lua: repeat to 11 s, keep
    the first 10 s). Returns the (n,) waveform and the check's warnings; raises ``AudioDecodeError`` naming the
    file for one that cannot be decoded, is empty or holds NaN / Inf."""
    wave = load(path, SAMPLE_RATE, mono=mono)
    warnings = check_wave(path, wave)
    need = int(round(min_seconds * SAMPLE_RATE))
    if len(wave) < need:
        wave = tile(wave, need)[:need]
    return wave, warnings


def load_clip(path: str, *, mono: Mono = "first", min_seconds: float = 10.0) -> np.ndarray:
    """:func:`decode_clip`'s waveform (the warnings dropped)."""
    return decode_clip(path, mono=mono, min_seconds=min_seconds)[0]


def extract_maps(
    model: SoundNet,
    store: FeatureStore,
    paths: Sequence[str],
    hashes: dict[str, str],
    *,
    layer: str,
    input_scale: float,
    mono: Mono = "first",
    min_seconds: float = 10.0,
    batch_size: int = 8,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], ExtractStats]:
    """Feature maps (C, T) of ``layer`` for every path with a hash; cached ones are read, not computed.

    A file that cannot be decoded, is empty or holds NaN / Inf (:func:`decode_clip`), or that the network fails
    on when it runs alone (a failed batch runs again one clip at a time), is left out: ``stats.failed`` gives
    its reason; the other clips' maps are those they have without it."""
    stats = ExtractStats()
    out: dict[str, np.ndarray] = {}
    todo: list[tuple[str, np.ndarray]] = []
    model = model.to(device).eval()

    def run(batch: list[tuple[str, np.ndarray]]) -> np.ndarray:
        x = torch.cat([to_input(w, min_seconds=0.0, scale=input_scale) for _, w in batch]).to(device)
        with torch.inference_mode():
            return model.features(x, layer).float().cpu().numpy()

    def flush() -> None:
        if not todo:
            return
        for (p, _), f in zip(todo, each_alone_on_failure(run, todo), strict=True):
            if isinstance(f, Exception):
                stats.failed[p] = reason(p, f)
                continue
            out[p] = f
            store.put(hashes[p], f)
            stats.extracted += 1
        if progress:
            progress(len(todo))
        todo.clear()

    for p in paths:
        if p not in hashes:
            continue
        cached = store.get(hashes[p])
        if cached is not None:
            out[p] = cached
            stats.cached += 1
            if progress:
                progress(1)
            continue
        try:
            wave, warnings = decode_clip(p, mono=mono, min_seconds=min_seconds)
        except (AudioDecodeError, ValueError) as e:
            stats.failed[p] = reason(p, e)
            if progress:
                progress(1)
            continue
        if warnings:
            stats.warnings[p] = warnings
        if todo and len(todo[0][1]) != len(wave):  # a batch holds clips of one length only
            flush()
        todo.append((p, wave))
        if len(todo) >= batch_size:
            flush()
    flush()
    return out, stats


def mfcc_stats(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Piczak's ESC baseline features (the paper's 39.6 % row): MFCC 1..12 (c0 dropped) and the zero-crossing
    rate, each summarised by its mean and standard deviation over frames; computed by librosa."""
    import librosa

    mfcc = librosa.feature.mfcc(y=wave, sr=sample_rate, n_mfcc=13)[1:]
    zcr = librosa.feature.zero_crossing_rate(wave)
    return np.concatenate([mfcc.mean(1), mfcc.std(1), zcr.mean(1), zcr.std(1)]).astype(np.float32)


def extract_mfcc(
    store: FeatureStore,
    paths: Sequence[str],
    hashes: dict[str, str],
    *,
    mono: Mono = "first",
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], ExtractStats]:
    """MFCC statistics of each clip as decoded (no tiling), cached like the network features."""
    stats = ExtractStats()
    out: dict[str, np.ndarray] = {}
    for p in paths:
        if p not in hashes:
            continue
        cached = store.get(hashes[p])
        if cached is None:
            try:
                wave = load(p, SAMPLE_RATE, mono=mono)
                warnings = check_wave(p, wave)
            except AudioDecodeError as e:
                stats.failed[p] = reason(p, e)
                if progress:
                    progress(1)
                continue
            if warnings:
                stats.warnings[p] = warnings
            cached = mfcc_stats(wave)
            store.put(hashes[p], cached)
            stats.extracted += 1
        else:
            stats.cached += 1
        out[p] = cached
        if progress:
            progress(1)
    return out, stats


def random_model(like: SoundNet, seed: int = 0) -> SoundNet:
    """The same architecture and backend with the original's initialisation, seeded
    (docs/design.md#batchnorm-and-init)."""
    model = build(like.arch, like.num_objects, like.num_scenes, backend=like.backend)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model.eval()


class _UpTo(torch.nn.Module):
    """Runs only the layers ``layer`` needs, so update_bn touches exactly the BNs the features use."""

    def __init__(self, net: SoundNet, layer: str) -> None:
        super().__init__()
        self.net, self.layer = net, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x, self.layer)


def reestimate_bn(
    model: SoundNet,
    waves: Iterable[np.ndarray],
    *,
    layer: str,
    input_scale: float,
    device: str = "cpu",
) -> SoundNet:
    """Replace BN running statistics with those of ``waves`` (a cumulative average over clips, one clip per
    batch), via ``torch.optim.swa_utils.update_bn``. The reference backend runs: momentum is None here."""
    from torch.optim.swa_utils import update_bn

    backend = model.backend
    model = model.to(device).set_backend("reference")
    inputs = (to_input(w, min_seconds=0.0, scale=input_scale) for w in waves)
    update_bn(inputs, _UpTo(model, layer), device=torch.device(device))
    return model.set_backend(backend).eval()


def model_bytes_key(*parts: object) -> str:
    """A stable key from strings and numbers (for derived models such as BN re-estimation)."""
    buf = io.StringIO()
    json.dump([str(p) for p in parts], buf)
    return hashlib.sha256(buf.getvalue().encode()).hexdigest()


__all__ = [
    "ExtractStats",
    "FeatureStore",
    "audio_hashes",
    "decode_clip",
    "default_cache_dir",
    "extract_maps",
    "extract_mfcc",
    "file_sha256",
    "load_clip",
    "mfcc_stats",
    "model_bytes_key",
    "random_model",
    "reestimate_bn",
    "state_sha256",
]
