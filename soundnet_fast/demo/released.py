"""The demo's last lines: the released SoundNet-8 on a few real recordings, when both are on this machine.

Evidence that the real model runs here, beside the synthetic world's student: each recording's top object and
scene classes (``soundnet-fast predict``'s summary, :mod:`soundnet_fast.inference.predict`), and the warning rule
shown on the first recording turned into a near-silent half second (below -60 dBFS and shorter than 1 s: two
reasons not to trust a prediction); the first recording that decodes is the one used. Nothing is fetched:
``make setup`` caches the weights (``soundnet-fast weights fetch soundnet8``) and the recordings
(``.cache/recordings``, the tests' real clips).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

RELEASE = "soundnet8"
RECORDINGS = os.path.join(".cache", "recordings")  # `make setup` fetches street.wav, song.wav, speech.wav there
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".mp4")
QUIET = 10 ** (-70 / 20)  # peak of the warning example: -70 dBFS, under the rule's -60 dBFS RMS


def recordings(folder: str) -> list[str]:
    """Audio files directly in ``folder`` (by extension; folders named like one are not), sorted by name ([] when the
    folder is missing)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    paths = [os.path.join(folder, n) for n in names if n.lower().endswith(AUDIO_EXTENSIONS)]
    return [p for p in paths if os.path.isfile(p)]


def released_lines(folder: str = RECORDINGS, top_k: int = 2) -> list[str]:
    """The lines to print: one per recording (top ``top_k`` objects and scenes, mean over the head's steps), one
    for the warning example, or one line saying what is missing (weights not cached, no recordings). A recording
    that fails to decode gets a line naming it and why; the others are still shown."""
    from soundnet_fast import releases
    from soundnet_fast.audio import AudioDecodeError, check_wave, load
    from soundnet_fast.constants import SAMPLE_RATE
    from soundnet_fast.inference.predict import class_names, predict
    from soundnet_fast.weights import load_pretrained

    if releases.cached_path(RELEASE) is None:
        return [f"the released {RELEASE} is not cached: `soundnet-fast weights fetch {RELEASE}` (make demo does it)"]
    files = recordings(folder)
    if not files:
        return [f"no recordings in {folder}/ to run the released {RELEASE} on (make setup fetches three)"]
    model = load_pretrained(RELEASE)
    objects, scenes = class_names(model, None, None)

    def fmt(pred: Any, head: str, names: list[str]) -> str:
        return ", ".join(f"{names[i]} {p:.2f}" for i, p in pred.summary(head, top_k))

    lines, first, first_name = [], None, ""
    for path in files:
        name = os.path.basename(path)
        try:
            wave = load(path)
            check_wave(path, wave)
            pred = predict(model, wave)
        except (AudioDecodeError, OSError, ValueError, RuntimeError) as e:
            lines.append(f"{name}: skipped ({e})")
            continue
        if first is None:
            first, first_name = wave, name
        lines.append(f"{name} ({pred.seconds:.1f} s): {fmt(pred, 'objects', objects)} | {fmt(pred, 'scenes', scenes)}")
    if first is not None:
        quiet = first[: SAMPLE_RATE // 2] * (QUIET / max(float(np.abs(first[: SAMPLE_RATE // 2]).max()), 1e-12))
        pred = predict(model, quiet.astype(np.float32))
        why = "; ".join(pred.warnings)
        said = f"warning: {why}: do not trust this prediction" if why else "no warning (the rule did not fire)"
        lines.append(f"{first_name}'s first 0.5 s at -70 dBFS peak: {said}")
    return lines
