"""Shared by the DALI audio plugin's tests: getting the plugin (built once, cached), and the parity checks
against :func:`soundnet_fast.audio.load` (docs/design.md#the-native-dali-audio-operator).

Under CI (``CI=true``) a plugin that cannot be built or loaded FAILS the test; elsewhere the test skips with
the reason (a machine without FFmpeg's development files or cmake still runs the rest of the suite).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from soundnet_fast.constants import SAMPLE_RATE


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_plugin(asan: bool = False) -> Path:
    """The plugin's library, built if needed (cached by source hash) and, unless ``asan``, loaded into DALI.
    Fails the test under CI when that is impossible, else skips it with the reason."""
    from soundnet_fast.prepare.dali_plugin import PluginUnavailable, build_plugin, load_plugin

    try:
        path = build_plugin(asan=asan, log=False)
        if not asan:
            load_plugin(path)
    except PluginUnavailable as e:
        message = f"the DALI audio plugin is unavailable: {e}"
        if on_ci():
            pytest.fail(message + " (CI=true: the plugin's tests never skip there)")
        pytest.skip(message)
    return path


# ------------------------------------------------------------------------------------------ test signals
CLICK_AT = 0.3  # seconds: where the click is placed in every parity file
TONE_HZ = 1000.0  # the tone under the click (spectral-peak check)
OTHER_HZ = 3000.0  # the second channel's tone in stereo files (so first != mean)


def parity_signal(seconds: float, rate: int, channels: int) -> np.ndarray:
    """(channels, n) float32: channel 0 a 1 kHz tone at 0.25 with a click at CLICK_AT s (or at a third of a
    shorter file): a jump of +0.6 decaying over ~1 ms, so its onset is the one steep edge; channel 1 a 3 kHz tone
    at 0.2."""
    t = np.arange(int(round(seconds * rate))) / rate
    left = 0.25 * np.sin(2 * np.pi * TONE_HZ * t)
    at = int(round(click_time(seconds) * rate))
    tail = np.arange(min(rate // 200, len(t) - at))
    left[at : at + len(tail)] += 0.6 * np.exp(-tail / (0.0003 * rate))
    chans = [left, 0.2 * np.sin(2 * np.pi * OTHER_HZ * t)][:channels]
    return np.stack(chans).astype(np.float32)


def click_time(seconds: float) -> float:
    return CLICK_AT if seconds > 2 * CLICK_AT else seconds / 3


def click_sample(wave: np.ndarray) -> int:
    """Where the click is: the largest first difference (the 1 kHz tone's is at most 0.07 at 22,050 Hz)."""
    return int(np.argmax(np.abs(np.diff(wave.astype(np.float64))))) + 1


def peak_bin(wave: np.ndarray, n: int) -> int:
    """The strongest bin of the first ``n`` samples' spectrum (Hann window)."""
    x = wave[:n].astype(np.float64) * np.hanning(n)
    return int(np.argmax(np.abs(np.fft.rfft(x))))


def assert_parity(got: np.ndarray, ref: np.ndarray, seconds: float, what: str, sample_rate: int = SAMPLE_RATE) -> None:
    """DALI's waveform ``got`` against PyAV's ``ref`` (both mono at ``sample_rate``): lengths within one sample,
    the click on the same sample within one and near its known time, the same spectral peak, correlation >= 0.999."""
    assert got.dtype == np.float32 and got.ndim == 1, what
    assert abs(len(got) - len(ref)) <= 1, f"{what}: {len(got)} samples, PyAV {len(ref)}"
    n = min(len(got), len(ref))
    cg, cr = click_sample(got[:n]), click_sample(ref[:n])
    assert abs(cg - cr) <= 1, f"{what}: click at sample {cg}, PyAV {cr}"
    known = click_time(seconds) * sample_rate
    assert abs(cr - known) <= 0.002 * sample_rate, f"{what}: click at {cr}, placed at {known:.0f}"
    assert peak_bin(got, n) == peak_bin(ref, n), what
    corr = float(np.corrcoef(got[:n], ref[:n])[0, 1])
    assert corr >= 0.999, f"{what}: correlation {corr:.5f}"
