"""Frames and videos of the synthetic world (sounds: ``synth``; teachers: ``synth_teachers``).

A video is a sequence of segments (``segment_seconds`` each, aligned with the clip grid that ``prepare``
cuts, so every training clip has one dominant, persistent object, as the demo's design rules in ``synth`` ask). Each
segment shows one object (shape = class; colour, size, texture and motion random) moving over the video's
scene (background = class; lighting random) and sounds that object's pattern. Written as MP4 (H.264 +
AAC) with PyAV, so the demo exercises the same decode path as real video (docs/design.md#data-path).
"""

from __future__ import annotations

import colorsys
import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from soundnet_fast.demo import world as synth

FRAME_SIZE = 64  # pixels; even, as H.264's yuv420p needs


# ------------------------------------------------------------------------------------------- frames
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = FRAME_SIZE) -> np.ndarray:
    """Boolean (size, size) mask of an object shape centred at (cx, cy) with radius ``r`` pixels."""
    yy, xx = _grid(size)
    dx, dy = xx - cx, yy - cy
    d = np.hypot(dx, dy)
    if shape == "disc":
        return d < r
    if shape == "square":
        return (np.abs(dx) < 0.8 * r) & (np.abs(dy) < 0.8 * r)
    if shape == "triangle":  # apex up
        return (dy > -r) & (dy < 0.8 * r) & (np.abs(dx) < (dy + r) * 0.6)
    if shape == "plus":
        return ((np.abs(dx) < r / 3) & (np.abs(dy) < r)) | ((np.abs(dy) < r / 3) & (np.abs(dx) < r))
    if shape == "ring":
        return (d < r) & (d > 0.55 * r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) < 1.1 * r
    if shape == "bar":
        return (np.abs(dx) < 1.1 * r) & (np.abs(dy) < 0.3 * r)
    if shape == "cross":  # a plus turned 45 degrees
        u, v = (dx + dy) / np.sqrt(2), (dx - dy) / np.sqrt(2)
        return ((np.abs(u) < r / 3.5) & (np.abs(v) < r)) | ((np.abs(v) < r / 3.5) & (np.abs(u) < r))
    raise ValueError(f"unknown shape {shape!r}; known: {[s for s, _ in synth.OBJECTS]}")


def background(scene: str, rng: np.random.Generator, size: int = FRAME_SIZE) -> np.ndarray:
    """(size, size, 3) float32 RGB in [0, 1] for a scene class, with random lighting and tint."""
    yy, xx = _grid(size)
    u = yy / (size - 1)
    if scene == "sky":  # blue gradient, lighter towards the horizon
        img = np.stack([0.35 + 0.45 * u, 0.55 + 0.35 * u, 0.9 + 0.1 * u], -1)
    elif scene == "meadow":  # green with a blotchy texture
        tex = rng.random((size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
        img = np.stack([0.2 + 0.1 * tex, 0.5 + 0.2 * tex, 0.15 + 0.05 * tex], -1)
    elif scene == "night":  # dark blue with stars
        img = np.zeros((size, size, 3), np.float32) + np.array([0.05, 0.07, 0.18], np.float32)
        stars = rng.random((size, size)) < 0.02
        img[stars] = 0.9
    elif scene == "desert":  # sand with dune stripes
        s = 0.5 + 0.5 * np.sin(2 * np.pi * (yy / rng.uniform(10, 16) + 0.2 * np.sin(xx / 9.0)))
        img = np.stack([0.8 + 0.1 * s, 0.65 + 0.1 * s, 0.4 + 0.05 * s], -1)
    else:
        raise ValueError(f"unknown scene {scene!r}; known: {[s for s, _ in synth.SCENES]}")
    light = rng.uniform(0.75, 1.15)
    tint = 1.0 + rng.uniform(-0.06, 0.06, 3)
    return np.clip(img * light * tint, 0.0, 1.0).astype(np.float32)


@dataclass
class ObjectTrack:
    """One object's appearance and straight-line motion (bouncing off the frame edges)."""

    shape: str
    colour: tuple[float, float, float]
    radius: float
    start: tuple[float, float]
    velocity: tuple[float, float]  # pixels per second
    stripes: bool  # textured (striped) or flat

    @classmethod
    def random(cls, shape: str, rng: np.random.Generator, size: int = FRAME_SIZE) -> ObjectTrack:
        # Each object class has a characteristic hue (as real objects have a typical appearance), jittered,
        # with random saturation and brightness: a small teacher learns it reliably in seconds.
        k = [s for s, _ in synth.OBJECTS].index(shape) if shape in [s for s, _ in synth.OBJECTS] else 0
        hue = (k / len(synth.OBJECTS) + rng.normal(0.0, 0.015)) % 1.0
        colour = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))
        r = float(rng.uniform(0.15, 0.22) * size)
        start = tuple(float(c) for c in rng.uniform(r, size - r, 2))
        speed, angle = rng.uniform(2.0, 8.0), rng.uniform(0, 2 * np.pi)
        return cls(shape, colour, r, start, (speed * np.cos(angle), speed * np.sin(angle)), bool(rng.random() < 0.3))

    def position(self, t: float, size: int = FRAME_SIZE) -> tuple[float, float]:
        lo, hi = self.radius, size - self.radius
        out = []
        for p0, v in zip(self.start, self.velocity, strict=True):
            span = hi - lo
            q = (p0 - lo + v * t) % (2 * span)  # reflect at the edges
            out.append(lo + (q if q <= span else 2 * span - q))
        return out[0], out[1]

    def draw(self, img: np.ndarray, t: float) -> np.ndarray:
        cx, cy = self.position(t, img.shape[0])
        mask = shape_mask(self.shape, cx, cy, self.radius, img.shape[0])
        colour = np.array(self.colour, np.float32)
        paint = np.broadcast_to(colour, img.shape).copy()
        if self.stripes:
            yy, _ = _grid(img.shape[0])
            paint[(yy.astype(int) // 3) % 2 == 0] *= 0.55
        out = img.copy()
        out[mask] = paint[mask]
        return out


def render_frame(scene_bg: np.ndarray, track: ObjectTrack, t: float, rng: np.random.Generator) -> np.ndarray:
    """One uint8 RGB frame: the scene, the object at time ``t``, a little sensor noise."""
    img = track.draw(scene_bg, t) + rng.normal(0.0, 0.015, scene_bg.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------------------------- videos
@dataclass
class VideoPlan:
    """What one world video holds: its scene and one object per segment (with its sound or silent)."""

    name: str
    scene: int
    objects: list[int]
    silent: list[bool]
    segment_seconds: float
    fps: int
    seed: int
    extra: dict = field(default_factory=dict)


def plan_video(seed: int, index: int, segments: int, segment_seconds: float, silent_prob: float, fps: int) -> VideoPlan:
    rng = synth.seeded(seed, 10, index)
    return VideoPlan(
        name=f"video-{index:05d}",
        scene=int(rng.integers(len(synth.SCENES))),
        objects=[int(o) for o in rng.integers(len(synth.OBJECTS), size=segments)],
        silent=[bool(s) for s in rng.random(segments) < silent_prob],
        segment_seconds=segment_seconds,
        fps=fps,
        seed=seed,
    )


def video_content(plan: VideoPlan, index: int, sr: int = synth.SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 (N, H, W, 3), audio float32 (samples,)) of a planned video."""
    rng = synth.seeded(plan.seed, 11, index)
    scene_name, amb = synth.SCENES[plan.scene]
    bg = background(scene_name, rng)
    seg_n = int(round(plan.segment_seconds * sr))
    frames_per_seg = int(round(plan.segment_seconds * plan.fps))
    audio, frames = [], []
    for obj, silent in zip(plan.objects, plan.silent, strict=True):
        shape, pat = synth.OBJECTS[obj]
        audio.append(synth.segment_audio(rng, seg_n, None if silent else pat, amb, sr=sr))
        track = ObjectTrack.random(shape, rng)
        frames += [render_frame(bg, track, (k + 0.5) / plan.fps, rng) for k in range(frames_per_seg)]
    return np.stack(frames), np.concatenate(audio)


def write_mp4(path: str, frames: np.ndarray, audio: np.ndarray, fps: int, sr: int = synth.SAMPLE_RATE) -> None:
    """Write H.264 video + AAC audio with PyAV; atomic (temporary name, then rename)."""
    import av  # heavy; imported on use

    tmp = f"{path}.tmp-{os.getpid()}.mp4"
    try:
        with av.open(tmp, "w") as c:
            vs = c.add_stream("libx264", rate=fps)
            vs.width, vs.height = frames.shape[2], frames.shape[1]
            vs.pix_fmt = "yuv420p"
            # mbtree off: with it, libx264 wrote different bytes for the same frames from run to run (here, 4-8
            # variants in 10-20 encodes of one 64 x 64 video, even on one thread), so two demos got different
            # teacher labels; without it, one (tests/demo/test_video.py).
            vs.options = {"crf": "18", "preset": "veryfast", "x264-params": "mbtree=0"}
            # AAC at the model's rate: prepare then decodes with no resampling (docs/design.md#performance-ceiling).
            # FFmpeg's "fast" AAC coder: half the encode time of its default two-loop search (measured: 0.36 s of
            # a 24 s video's 0.76 s went to the default coder), at a quality the demo's patterns do not need more of.
            a_s = c.add_stream("aac", rate=sr, layout="mono", options={"aac_coder": "fast"})
            for img in frames:
                for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in vs.encode():
                c.mux(p)
            # AAC pads its last frame (up to 1,024 samples): a track that long would outlast the video, and
            # prepare would cut one more, nearly silent, clip. Ending the track 2,048 samples (93 ms) early keeps
            # the decoded audio within the video; prepare zero-pads the gap (prepare.video.make_clips).
            audio = audio[: max(len(audio) - 2048, 1)]
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None], np.float32), format="fltp", layout="mono")
            af.sample_rate, af.pts = sr, 0
            for p in a_s.encode(af):
                c.mux(p)
            for p in a_s.encode(None):
                c.mux(p)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_one(job: tuple[str, VideoPlan, int]) -> dict:
    out_dir, plan, index = job
    path = os.path.join(out_dir, plan.name + ".mp4")
    if not os.path.exists(path):  # resumable: a finished video is never rewritten
        frames, audio = video_content(plan, index)
        write_mp4(path, frames, audio, plan.fps)
    return {"video": plan.name + ".mp4", **asdict(plan)}


def write_videos(
    out_dir: str,
    num_videos: int,
    *,
    seed: int = 0,
    segments: int = 2,
    segment_seconds: float = 5.0,
    silent_prob: float = 0.08,
    fps: int = 4,
    workers: int = 1,
    progress=None,
) -> list[dict]:
    """Write ``num_videos`` world videos into ``out_dir`` plus ``world.jsonl`` (their ground truth).

    ``silent_prob`` (<= 0.1, a demo design rule) is the chance that a segment's object makes no sound.
    ``progress(done, total)`` is called as videos finish. Returns the ground-truth records.
    """
    os.makedirs(out_dir, exist_ok=True)
    plans = [plan_video(seed, i, segments, segment_seconds, silent_prob, fps) for i in range(num_videos)]
    jobs = [(out_dir, p, i) for i, p in enumerate(plans)]
    records: list[dict] = []
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for rec in pool.imap(_write_one, jobs, chunksize=4):
                records.append(rec)
                if progress:
                    progress(len(records), num_videos)
    else:
        for job in jobs:
            records.append(_write_one(job))
            if progress:
                progress(len(records), num_videos)
    from soundnet_fast.fsutil import atomic_write_text

    atomic_write_text(os.path.join(out_dir, "world.jsonl"), "".join(json.dumps(r) + "\n" for r in records))
    return records
