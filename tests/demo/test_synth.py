"""The synthetic world: determinism, the design rules that make the demo mean something, file layouts."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from soundnet_fast.demo import world as synth
from soundnet_fast.demo.video import ObjectTrack, background, shape_mask, video_content, write_videos

SR = synth.SAMPLE_RATE


def _envelope(x: np.ndarray, sr: int = SR, hop: float = 0.005) -> np.ndarray:
    h = int(sr * hop)
    return np.sqrt(np.mean(x[: len(x) // h * h].reshape(-1, h) ** 2, axis=1))


def _mod_spectrum_peak(x: np.ndarray) -> float:
    """Frequency (Hz) of the strongest amplitude modulation between 1 and 60 Hz."""
    env = _envelope(x)
    spec = np.abs(np.fft.rfft(env - env.mean()))
    f = np.fft.rfftfreq(len(env), 0.005)
    band = (f > 1.0) & (f < 60.0)
    return float(f[band][np.argmax(spec[band])])


def test_same_seed_same_sound_and_different_seed_different_sound() -> None:
    a = synth.segment_audio(synth.seeded(3, 1, 7), SR, "gate", "wind")
    b = synth.segment_audio(synth.seeded(3, 1, 7), SR, "gate", "wind")
    c = synth.segment_audio(synth.seeded(4, 1, 7), SR, "gate", "wind")
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("name", synth.PATTERNS)
def test_every_pattern_is_finite_bounded_and_audible(name: str) -> None:
    x = synth.segment_audio(synth.seeded(0, 2), 2 * SR, name, "hum")
    assert x.dtype == np.float32 and x.shape == (2 * SR,)
    assert np.isfinite(x).all() and np.abs(x).max() <= 1.0
    assert np.sqrt(np.mean(x**2)) > 0.02


def test_carrier_timbre_is_random_per_instance_not_per_class() -> None:
    """Design rule: pitch is drawn per instance from one distribution for every class, so the spectral
    centroid varies as much within a class as between classes."""

    def centroid(x: np.ndarray) -> float:
        p = np.abs(np.fft.rfft(x)) ** 2
        return float((np.fft.rfftfreq(len(x), 1 / SR) * p).sum() / p.sum())

    per_class = {
        name: [centroid(synth.pattern_sound(name, synth.seeded(1, i, k), SR)) for k in range(12)]
        for i, name in enumerate(("gate", "vibrato", "clicks"))
    }
    within = np.mean([np.std(np.log(v)) for v in per_class.values()])
    between = np.std([np.mean(np.log(v)) for v in per_class.values()])
    assert within > between


def test_patterns_differ_in_modulation_rate() -> None:
    """Gate (2-3.5 Hz) and tremolo (15-24 Hz) put their envelope energy where designed."""
    for name, lo, hi in (("gate", 2.0, 3.6), ("tremolo", 14.8, 24.2)):
        peak = _mod_spectrum_peak(synth.pattern_sound(name, synth.seeded(5, len(name)), 4 * SR))
        assert lo <= peak <= hi, (name, peak)


def test_pitch_patterns_differ_in_rate_and_keep_a_steady_level() -> None:
    """The four pitch-modulation classes (warble, yodel, vibrato, trill) are told apart only by the rate
    and shape of their pitch movement: each puts its pitch-modulation peak in its own band, and none
    modulates the level (so level-envelope features cannot separate them)."""
    n = 4 * SR
    for name, lo, hi in (("warble", 0.9, 1.7), ("yodel", 2.9, 4.6), ("vibrato", 4.9, 7.1), ("trill", 8.9, 13.1)):
        env, fm = synth.pattern(name, synth.seeded(6, len(name)), n)
        assert np.all(env == 1.0), name
        spec = np.abs(np.fft.rfft(fm - fm.mean()))
        peak = float(np.fft.rfftfreq(n, 1 / SR)[int(np.argmax(spec))])
        assert lo <= peak <= hi, (name, peak)


def test_unknown_names_raise() -> None:
    with pytest.raises(ValueError, match="unknown sound pattern"):
        synth.pattern("bagpipe", synth.seeded(0), 100)
    with pytest.raises(ValueError, match="unknown ambience"):
        synth.ambience("ocean", synth.seeded(0), 100)
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("hexagon", 10, 10, 5)
    with pytest.raises(ValueError, match="unknown scene"):
        background("moon", synth.seeded(0))


def test_shapes_are_distinct_and_scenes_distinct() -> None:
    masks = [shape_mask(s, 32, 32, 12) for s, _ in synth.OBJECTS]
    assert all(m.sum() > 30 for m in masks)
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] != masks[j]).sum() > 20, (synth.OBJECTS[i][0], synth.OBJECTS[j][0])
    means = [background(s, synth.seeded(0)).mean(axis=(0, 1)) for s, _ in synth.SCENES]
    for i in range(len(means)):
        for j in range(i + 1, len(means)):
            assert np.abs(means[i] - means[j]).max() > 0.1


def test_object_moves_and_stays_in_frame() -> None:
    track = ObjectTrack.random("disc", synth.seeded(2))
    pos = np.array([track.position(t) for t in np.linspace(0, 30, 61)])
    assert (pos >= track.radius - 1e-6).all() and (pos <= 64 - track.radius + 1e-6).all()
    assert np.ptp(pos, axis=0).max() > 5


def test_video_content_segments_and_silent_objects() -> None:
    from soundnet_fast.demo.video import plan_video

    plan = plan_video(0, 0, segments=2, segment_seconds=1.0, silent_prob=0.0, fps=4)
    frames, audio = video_content(plan, 0)
    assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
    assert audio.shape == (2 * SR,)
    silent = plan_video(0, 0, segments=2, segment_seconds=1.0, silent_prob=1.0, fps=4)
    assert silent.silent == [True, True]


def test_write_videos_mp4_decodes_with_the_project_reader(tmp_path) -> None:
    from soundnet_fast.audio import load

    recs = write_videos(str(tmp_path), 2, seed=1, segments=1, segment_seconds=2.0, fps=4)
    assert [r["video"] for r in recs] == ["video-00000.mp4", "video-00001.mp4"]
    lines = (tmp_path / "world.jsonl").read_text().splitlines()
    assert [json.loads(x)["objects"] for x in lines] == [r["objects"] for r in recs]
    wave = load(tmp_path / "video-00000.mp4")
    # The track ends ~93 ms early so AAC's padding never makes it outlast the video (one clip per segment).
    assert 2 * SR - 2048 - 1024 <= len(wave) <= 2 * SR
    _, expected = video_content(
        __import__("soundnet_fast.demo.video", fromlist=["plan_video"]).plan_video(1, 0, 1, 2.0, 0.08, 4), 0
    )
    n = min(len(wave), len(expected))
    # AAC is lossy; the decoded track follows the synthesised one closely and in time.
    assert np.corrcoef(wave[1000 : n - 1000], expected[1000 : n - 1000])[0, 1] > 0.9
    import av

    with av.open(str(tmp_path / "video-00000.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        assert sum(1 for _ in c.decode(video=0)) == 8


def test_labeled_set_has_the_esc50_layout(tmp_path) -> None:
    out = synth.write_labeled_set(str(tmp_path), seed=0, per_fold=1, folds=5, seconds=1.0)
    with open(os.path.join(out, "meta", "esc50.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    assert len(rows) == 5 * len(synth.LABELED_CLASSES)
    assert {r["category"] for r in rows} == set(synth.LABELED_CLASSES)
    # Some labeled classes never sound with a visual object in the world (the paper's sneezing case).
    assert set(synth.LABELED_CLASSES) - {p for _, p in synth.OBJECTS}
    for r in rows[:3]:
        fold, clip, take, target = r["filename"][:-4].split("-")
        assert (fold, take, target) == (r["fold"], r["take"], r["target"])
        import wave

        with wave.open(os.path.join(out, "audio", r["filename"])) as w:
            assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (44100, 1, 44100)


def test_teacher_preprocessing_matches_the_registry_transform() -> None:
    """The teachers train on a direct resize that must stand in for the registry's 256/224 transform + 7x pool."""
    import torch
    import torch.nn.functional as F

    from soundnet_fast.demo.teachers import POOL, _preprocess, labeled_frames
    from soundnet_fast.prepare.teachers import Teacher

    frames, _, _ = labeled_frames(0, 6)
    ours = _preprocess(frames)
    registry = Teacher(torch.nn.Identity(), num_classes=3)
    theirs = torch.stack([F.avg_pool2d(registry.transform(f)[None], POOL)[0] for f in frames])
    assert ours.shape == theirs.shape == (6, 3, 32, 32)
    assert float((ours - theirs).abs().mean()) < 0.03  # normalised units (ImageNet std ~0.22)


def test_demo_teachers_load_through_the_registry(tmp_path) -> None:
    from soundnet_fast.demo.teachers import labeled_frames, make_teachers
    from soundnet_fast.prepare.teachers import build_teacher

    info = make_teachers(str(tmp_path), seed=0, num_frames=300, epochs=4, log=lambda s: None)
    assert info["scenes"]["accuracy"] >= 0.8  # backgrounds are learned in a few steps
    frames, _, scenes = labeled_frames(99, 16)
    for key in ("objects", "scenes"):
        teacher = build_teacher(info[key]["spec"], class_names=info[key]["class_names"], device="cpu")
        assert teacher.num_classes == len(info[key]["class_names"])
        probs = teacher(frames)
        assert probs.shape == (16, teacher.num_classes)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # Files that exist are reused, not retrained (the demo resumes).
    again = make_teachers(str(tmp_path), seed=0, num_frames=300, epochs=4, log=lambda s: None)
    assert "accuracy" not in again["objects"] and again["objects"]["path"] == info["objects"]["path"]
    assert (teacher(frames).argmax(1) == scenes).mean() >= 0.75
