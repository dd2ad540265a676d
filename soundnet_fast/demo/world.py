"""The synthetic audio-visual world of the demo: sounds (this file), frames and videos (``synth_video``),
demo teachers (``synth_teachers``). Everything is deterministic by seed.

Design rules (the demo's; measured in a throwaway trial before this was written): with timbre-rich classes,
random convolutional features already separate the classes and distillation adds little. So every sound
class here is a *modulation pattern* on the 0.1-1 s scale (gating, click rates, vibrato, gallops, trills,
warbles, swells) imposed on a carrier whose pitch, harmonic count, spectral tilt and noisiness are
drawn afresh for every instance from one distribution shared by all classes: timbre never gives the class
away, only the temporal pattern does. In the world each visual object has one pattern; distractor patterns
sound with no visual object (the paper's "sneezing" case), scene ambiences and noise are mixed in, and a
few objects are silent, so sound predicts vision only partly, as in real video.
"""

from __future__ import annotations

import csv
import io
import os
import wave
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from soundnet_fast.constants import SAMPLE_RATE

# Object class -> (shape drawn in the frame, modulation pattern of its sound).
OBJECTS: tuple[tuple[str, str], ...] = (
    ("disc", "gate"),
    ("square", "decay"),
    ("triangle", "warble"),
    ("plus", "vibrato"),
    ("ring", "gallop"),
    ("diamond", "trill"),
    ("bar", "swell"),
    ("cross", "yodel"),
)
# Patterns heard in the world with no visual object. None of them moves at an object pattern's rate: a distractor
# that does (a slow pitch sweep beside warble, 5.5-8.5 Hz amplitude pulsing beside vibrato) makes that rate a cue
# heard with every object, and measured on world seed 0 at 900 steps it cost the student 6.4 points (README.md,
# "The demo").
DISTRACTORS: tuple[str, ...] = ("stutter", "tremolo", "clicks")
# Scene class -> ambience (a stationary sound bed; scenes are told apart by background and lighting).
SCENES: tuple[tuple[str, str], ...] = (
    ("sky", "wind"),
    ("meadow", "hum"),
    ("night", "crackle"),
    ("desert", "rumble"),
)
# The labeled set: object patterns plus distractor patterns that never appear with a visual object.
LABELED_CLASSES: tuple[str, ...] = tuple(p for _, p in OBJECTS) + ("stutter", "tremolo")


# ----------------------------------------------------------------------------------------- carriers
PITCH_RANGE = (130.0, 1300.0)  # Hz, carrier fundamental, log-uniform, the same for every class


def _band_noise(rng: np.random.Generator, n: int, lo: float, hi: float, sr: int) -> np.ndarray:
    """White noise band-limited to [lo, hi] Hz (FFT mask), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    spec[(f < lo) | (f > hi)] = 0.0
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-9)


def carrier(rng: np.random.Generator, freq_mult: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A random tonal carrier following ``freq_mult`` (pitch multiplier per sample), unit RMS.

    Pitch (130-1300 Hz, log-uniform), number of harmonics (1-8), spectral tilt, a little inharmonicity and
    a breath of band noise are drawn per instance from the same distribution for every class, so that
    timbre says nothing about the class (the design rules above).
    """
    n = len(freq_mult)
    f0 = float(np.exp(rng.uniform(np.log(PITCH_RANGE[0]), np.log(PITCH_RANGE[1]))))
    n_harm = int(rng.integers(1, 9))
    tilt = rng.uniform(0.5, 2.0)
    stretch = rng.uniform(0.0, 0.01)  # mild inharmonicity
    phase = 2.0 * np.pi * np.cumsum(f0 * freq_mult) / sr
    x = np.zeros(n)
    for h in range(1, n_harm + 1):
        fh = f0 * h * (1.0 + stretch * (h - 1))
        if fh * float(freq_mult.max()) >= 0.45 * sr:
            break
        x += h**-tilt * np.sin(fh / f0 * phase + rng.uniform(0, 2 * np.pi))
    x /= np.sqrt(np.mean(x**2)) + 1e-9
    noise_mix = rng.uniform(0.0, 0.35)
    if noise_mix > 0:
        x = (1 - noise_mix) * x + noise_mix * _band_noise(rng, n, 0.5 * f0, min(8.0 * f0, 0.45 * sr), sr)
    return x / (np.sqrt(np.mean(x**2)) + 1e-9)


# ----------------------------------------------------------------------------------------- patterns
def _ramp_gate(t: np.ndarray, onsets: np.ndarray, length: float, ramp: float = 0.005) -> np.ndarray:
    """Sum of trapezoid bursts of ``length`` s starting at ``onsets`` (5 ms ramps avoid clicks)."""
    env = np.zeros_like(t)
    dt = t[1] - t[0] if len(t) > 1 else 1.0
    for o in onsets:
        a, b = int(max(o, 0) / dt), int(min(o + length, t[-1]) / dt) + 1
        if b <= a:
            continue
        u = t[a:b] - o
        env[a:b] = np.maximum(env[a:b], np.clip(np.minimum(u, length - u) / ramp, 0.0, 1.0))
    return env


def _periodic_onsets(rng: np.random.Generator, dur: float, period: float, jitter: float = 0.0) -> np.ndarray:
    start = -rng.uniform(0, period)
    onsets = np.arange(start, dur, period)
    return onsets + rng.normal(0, jitter * period, len(onsets)) if jitter else onsets


def _two_pitches(
    rng: np.random.Generator, t: np.ndarray, rate: tuple[float, float], step: tuple[float, float]
) -> np.ndarray:
    """Pitch multiplier alternating between 1 and a step up (both drawn from their ranges) at ``rate`` Hz."""
    f = rng.uniform(*rate)
    sq = np.sign(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)))
    fm = np.where(sq > 0, rng.uniform(*step), 1.0)
    return np.convolve(fm, np.ones(64) / 64, mode="same")  # ~3 ms glide, no phase jumps


def pattern(name: str, rng: np.random.Generator, n: int, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """(amplitude envelope, pitch multiplier) of a modulation pattern, each shaped (n,).

    Rates and depths are drawn per instance within each class's range; the ranges are chosen so the
    classes differ in temporal structure at 0.1-1 s, not in spectrum.
    """
    t = np.arange(n) / sr
    dur = n / sr
    env = np.ones(n)
    fm = np.ones(n)
    if name == "gate":  # slow square on/off
        period = 1.0 / rng.uniform(2.0, 3.5)
        env = _ramp_gate(t, _periodic_onsets(rng, dur, period), period * rng.uniform(0.4, 0.6))
    elif name == "decay":  # struck: sharp onset, slow decay; "swell" played backwards
        period = rng.uniform(0.7, 1.1)
        ph = ((t / period) + rng.uniform(0, 1)) % 1.0
        env = (1.0 - ph) ** rng.uniform(1.5, 3.0) * np.clip(ph / 0.02, 0, 1)
    elif name == "clicks":  # click trains: very short bursts at 18-35 per second
        env = _ramp_gate(t, _periodic_onsets(rng, dur, 1.0 / rng.uniform(18, 35), 0.05), 0.004, ramp=0.001)
    elif name == "vibrato":  # steady level, periodic pitch wobble
        # Depths of vibrato (6-10 %) and warble (18-30 %, 1-1.6 Hz) were raised from 3-6 % and 8-15 % at 1.5-2.5 Hz:
        # shallower wobbles sat below what the student's first layers resolve on low carriers, and it took warble
        # for vibrato (world seed 0, training seed 1: warble 45 %, vibrato 57 % -> 78 %, 85 %; README.md, "The demo").
        fm = 1.0 + rng.uniform(0.06, 0.10) * np.sin(2 * np.pi * rng.uniform(5.0, 7.0) * t + rng.uniform(0, 6.3))
    elif name == "gallop":  # groups of three short bursts
        period = rng.uniform(0.5, 0.7)
        base = _periodic_onsets(rng, dur, period)
        step = rng.uniform(0.08, 0.11)
        env = _ramp_gate(t, np.concatenate([base, base + step, base + 2 * step]), 0.05)
    elif name == "trill":  # rapid alternation between two pitches
        fm = _two_pitches(rng, t, (9.0, 13.0), (1.15, 1.35))
    elif name == "swell":  # slow crescendo then cut, repeating
        period = rng.uniform(0.7, 1.1)
        ph = ((t / period) + rng.uniform(0, 1)) % 1.0
        env = ph ** rng.uniform(1.5, 3.0) * np.clip((1.0 - ph) / 0.02, 0, 1)
    elif name == "warble":  # slow, deep sinusoidal pitch wobble (vibrato's slow, wide cousin)
        fm = 1.0 + rng.uniform(0.18, 0.30) * np.sin(2 * np.pi * rng.uniform(1.0, 1.6) * t + rng.uniform(0, 6.3))
    elif name == "yodel":  # slow alternation between two pitches a wide step apart (trill's slow cousin)
        fm = _two_pitches(rng, t, (3.0, 4.5), (1.25, 1.5))
    elif name == "stutter":  # irregular (Poisson) bursts
        onsets = np.cumsum(rng.exponential(1.0 / rng.uniform(5.0, 8.0), int(dur * 12) + 4)) - 0.3
        env = _ramp_gate(t, onsets, rng.uniform(0.03, 0.06))
    elif name == "tremolo":  # fast sinusoidal amplitude modulation (roughness)
        env = 0.5 - 0.45 * np.cos(2 * np.pi * rng.uniform(15.0, 24.0) * t + rng.uniform(0, 6.3))
    else:
        raise ValueError(f"unknown sound pattern {name!r}; known: {sorted(PATTERNS)}")
    return env, fm


PATTERNS: tuple[str, ...] = tuple(p for _, p in OBJECTS) + DISTRACTORS


def pattern_sound(name: str, rng: np.random.Generator, n: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One instance of a pattern on a fresh random carrier, RMS ~ 1 while it sounds."""
    env, fm = pattern(name, rng, n, sr)
    return env * carrier(rng, fm, sr)


def ambience(name: str, rng: np.random.Generator, n: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A scene's stationary sound bed, unit RMS."""
    t = np.arange(n) / sr
    if name == "wind":  # low-passed noise with a slow random swell
        x = _band_noise(rng, n, 60.0, rng.uniform(500, 900), sr)
        x *= 1.0 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 0.25) * t + rng.uniform(0, 6.3))
    elif name == "hum":  # mains-like low harmonic hum
        f0 = rng.uniform(55.0, 120.0)
        x = sum(h**-1.0 * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) for h in range(1, 6))
    elif name == "crackle":  # dense random tiny clicks, high-passed
        x = (rng.random(n) < rng.uniform(0.002, 0.006)) * rng.standard_normal(n)
        x = np.diff(x, prepend=0.0)
    elif name == "rumble":  # very low band noise
        x = _band_noise(rng, n, 30.0, rng.uniform(150, 250), sr)
    else:
        raise ValueError(f"unknown ambience {name!r}")
    x = np.asarray(x, dtype=np.float64)
    return x / (np.sqrt(np.mean(x**2)) + 1e-9)


# ----------------------------------------------------------------------------------------- mixtures
@dataclass(frozen=True)
class MixConfig:
    """Levels of a world segment's mixture (RMS relative to the object sound at 1)."""

    distractor_prob: float = 0.5  # chance a segment also holds a distractor pattern
    distractor_level: tuple[float, float] = (0.3, 0.7)
    ambience_level: tuple[float, float] = (0.1, 0.35)
    noise_level: tuple[float, float] = (0.02, 0.12)
    peak: float = 0.5  # final peak amplitude; leaves AAC headroom


def _normalise(x: np.ndarray, peak: float) -> np.ndarray:
    return (x * (peak / (np.abs(x).max() + 1e-9))).astype(np.float32)


def segment_audio(
    rng: np.random.Generator,
    n: int,
    obj_pattern: str | None,
    scene_ambience: str,
    mix: MixConfig = MixConfig(),
    sr: int = SAMPLE_RATE,
) -> np.ndarray:
    """Audio of one world segment: the object's pattern (None: a silent object), maybe a distractor
    for part of the segment, the scene's ambience and noise. float32 in [-1, 1]."""
    x = np.zeros(n)
    if obj_pattern is not None:
        x += pattern_sound(obj_pattern, rng, n, sr)
    if rng.random() < mix.distractor_prob:
        d = pattern_sound(DISTRACTORS[int(rng.integers(len(DISTRACTORS)))], rng, n, sr)
        # The distractor covers a random stretch (40-100 %) of the segment.
        span = int(n * rng.uniform(0.4, 1.0))
        a = int(rng.integers(0, n - span + 1))
        w = np.zeros(n)
        w[a : a + span] = 1.0
        x += rng.uniform(*mix.distractor_level) * d * w
    x += rng.uniform(*mix.ambience_level) * ambience(scene_ambience, rng, n, sr)
    x += rng.uniform(*mix.noise_level) * rng.standard_normal(n)
    return _normalise(x, mix.peak)


def labeled_clip(rng: np.random.Generator, label: str, seconds: float = 5.0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One labeled-set clip: the class's pattern over a random scene's ambience and noise (no distractor:
    the label must be unambiguous). float32 in [-1, 1]."""
    n = int(round(seconds * sr))
    amb = SCENES[int(rng.integers(len(SCENES)))][1]
    return segment_audio(rng, n, label, amb, MixConfig(distractor_prob=0.0), sr)


def seeded(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator per (seed, keys): any item can be regenerated alone, in any order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


# ------------------------------------------------------------------------------------- labeled set
ESC50_RATE = 44100  # ESC-50 clips are 44.1 kHz mono, 5 s (docs/design.md#datasets)


def _wav_bytes(x: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def _write_labeled_clip(job: tuple[str, int, int, int, int, str, float]) -> None:
    from soundnet_fast.fsutil import atomic_write

    path, seed, target, fold, k, name, seconds = job
    if not os.path.exists(path):  # resumable: a finished clip is never rewritten
        x = labeled_clip(seeded(seed, 30, target, fold, k), name, seconds, ESC50_RATE)
        atomic_write(path, lambda f: f.write(_wav_bytes(x, ESC50_RATE)))


def write_labeled_set(
    out_dir: str,
    *,
    seed: int = 0,
    per_fold: int = 8,
    folds: int = 5,
    seconds: float = 5.0,
    classes: tuple[str, ...] = LABELED_CLASSES,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Write the labeled sound set in the ESC-50 layout (docs/design.md#datasets) and return ``out_dir``.

    ``audio/{fold}-{clip}-{take}-{target}.wav`` (44.1 kHz mono 16-bit, ``seconds`` long) and
    ``meta/esc50.csv`` (filename, fold, target, category, esc10, src_file, take); ``per_fold`` clips per
    class per fold (ESC-50 has 8). Classes include distractor patterns never seen with a visual object.
    Each clip draws its own generator from (seed, class, fold, index), so the set is the same however it
    is produced; existing files are kept (resumable).
    """
    from soundnet_fast.fsutil import atomic_write_text

    os.makedirs(os.path.join(out_dir, "audio"), exist_ok=True)
    rows, jobs = [], []
    for target, name in enumerate(classes):
        for fold in range(1, folds + 1):
            for k in range(per_fold):
                clip = 1000 * target + 100 * fold + k  # the ESC-50 "src_file" id, unique per clip
                fname = f"{fold}-{clip}-A-{target}.wav"
                # esc10: ESC-50 marks a 10-class subset; here the first 10 classes are that subset.
                rows.append([fname, fold, target, name, target < 10, clip, "A"])
                jobs.append((os.path.join(out_dir, "audio", fname), seed, target, fold, k, name, seconds))
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for done, _ in enumerate(pool.imap_unordered(_write_labeled_clip, jobs, chunksize=8), 1):
                if progress:
                    progress(done, len(jobs))
    else:
        for done, job in enumerate(jobs, 1):
            _write_labeled_clip(job)
            if progress:
                progress(done, len(jobs))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
    writer.writerows(rows)
    atomic_write_text(os.path.join(out_dir, "meta", "esc50.csv"), buf.getvalue())
    return out_dir


__all__ = [
    "DISTRACTORS",
    "LABELED_CLASSES",
    "OBJECTS",
    "PATTERNS",
    "SAMPLE_RATE",
    "SCENES",
    "MixConfig",
    "ambience",
    "carrier",
    "labeled_clip",
    "pattern",
    "pattern_sound",
    "seeded",
    "segment_audio",
    "write_labeled_set",
]
