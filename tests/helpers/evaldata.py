"""Tiny transfer-evaluation datasets in the published layouts, generated from synthetic audio (no downloads).

Each class is a tone with its own pitch plus noise, with a random level and phase per clip, so a working
pipeline separates the classes and a broken label or fold mapping shows up as chance accuracy.
"""

from __future__ import annotations

import csv
import os
import wave

import numpy as np
import torch

from soundnet_fast.constants import INPUT_SCALE

ESC_CATEGORIES = ("dog", "rain", "clock_tick", "crow")


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, rate: int) -> str:
    """16-bit PCM WAV; ``samples`` is (n,) or (n, channels) in [-1, 1]."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim == 1:
        samples = samples[:, None]
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return os.fspath(path)


def class_sound(label: int, seconds: float, rate: int, rng: np.random.Generator, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    f0 = 220.0 * 1.6**label
    level = rng.uniform(0.2, 0.5)
    sig = level * (np.sin(2 * np.pi * f0 * t + rng.uniform(0, 6.3)) + 0.5 * np.sin(4 * np.pi * f0 * t))
    sig = sig + 0.05 * rng.standard_normal(len(t))
    if channels == 1:
        return sig
    return np.stack([sig] + [sig * 0.5 + 0.05 * rng.standard_normal(len(t)) for _ in range(channels - 1)], axis=1)


def make_esc50(
    root: str | os.PathLike[str],
    *,
    num_classes: int = 3,
    clips_per_fold: int = 2,
    folds: int = 5,
    seconds: float = 5.0,
    rate: int = 44100,
    esc10: tuple[bool, ...] = (True, False, True, True),
    seed: int = 0,
) -> str:
    """ESC-50 layout (docs/design.md#datasets): audio/{fold}-{clip}-{take}-{target}.wav and meta/esc50.csv.

    Each source recording gives two takes (A, B) that sit in the same fold, as in the official data.
    """
    root = os.fspath(root)
    rng = np.random.default_rng(seed)
    rows = []
    for fold in range(1, folds + 1):
        for target in range(num_classes):
            for k in range(clips_per_fold):
                src = 1000 * fold + 10 * target + k // 2
                take = "AB"[k % 2]
                name = f"{fold}-{src}-{take}-{target}.wav"
                write_wav(os.path.join(root, "audio", name), class_sound(target, seconds, rate, rng), rate)
                rows.append([name, fold, target, ESC_CATEGORIES[target], esc10[target], src, take])
    os.makedirs(os.path.join(root, "meta"), exist_ok=True)
    with open(os.path.join(root, "meta", "esc50.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    return root


def make_dcase(
    root: str | os.PathLike[str],
    *,
    classes: tuple[str, ...] = ("bus", "office", "park"),
    recordings: int = 5,
    seconds: float = 12.0,
    rate: int = 44100,
    seed: int = 1,
) -> str:
    """DCASE 2013 scenes layout: <class><NN>.wav, stereo 44.1 kHz (shorter than 30 s: the loader ignores length)."""
    root = os.fspath(root)
    rng = np.random.default_rng(seed)
    for label, c in enumerate(classes):
        for n in range(1, recordings + 1):
            write_wav(os.path.join(root, f"{c}{n:02d}.wav"), class_sound(label, seconds, rate, rng, channels=2), rate)
    return root


def make_weights(
    path: str | os.PathLike[str], arch: str = "soundnet8", seed: int = 0, input_scale: float = INPUT_SCALE
) -> str:
    """A random-weight native checkpoint with small heads (the trunk is what the evaluation uses)."""
    from soundnet_fast.model import build
    from soundnet_fast.weights import save_native

    model = build(arch, num_objects=10, num_scenes=6)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    # Non-trivial BN statistics, as trained weights have: without them the random trunk's activations shrink
    # layer by layer and every feature is tiny.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_var.fill_(1e-3)
    save_native(path, model, input_scale=input_scale)
    return os.fspath(path)
