"""Demo teachers: small CNNs trained on labeled frames of the synthetic world.

They are saved with ``torch.jit.save`` and used through the project's teacher registry exactly as a real
teacher would be (``torchscript:PATH``): the registry resizes frames to 256, centre-crops 224 and applies
the ImageNet normalisation (``teachers.Teacher.transform``), so the network here is trained on frames put
through that same transform, then average-pooled 7x to 32x32 inside the saved module (cheap on a CPU).
Label smoothing 0.1 keeps the posteriors sharp, as the design rules ask (at most 0.1).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soundnet_fast.demo import world as synth
from soundnet_fast.demo.video import ObjectTrack, background, render_frame

LABEL_SMOOTHING = 0.1  # demo design rule: teacher outputs sharp, label smoothing at most 0.1
POOL = 7  # 224 -> 32 pixels inside the module


class FrameNet(nn.Module):
    """(B, 3, 224, 224) ImageNet-normalised frames -> (B, num_classes) logits."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(POOL)
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.pool(x))


def _preprocess(frames: np.ndarray) -> Tensor:
    """uint8 (N, H, W, 3) -> (N, 3, 32, 32) as the saved module sees them after the registry's transform.

    The registry (``teachers.Teacher.transform``) resizes the short side to 256, centre-crops 224 and
    normalises; the module then average-pools 7x. For square frames that is, up to the interpolation
    kernel, the central 224/256 of the frame resized to 32 pixels, which this computes directly (upsampling
    thousands of frames to 256 pixels first costs more than training the network).
    """
    from soundnet_fast.prepare.teachers import CROP, IMAGENET_MEAN, IMAGENET_STD, RESIZE

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    h = x.shape[-1]
    c = int(round(h * CROP / RESIZE))
    top = (h - c) // 2
    x = x[..., top : top + c, top : top + c]
    x = F.interpolate(x, size=(CROP // POOL, CROP // POOL), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def labeled_frames(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` random frames of the world with their object and scene labels (uint8 frames, int labels)."""
    frames, objs, scenes = [], [], []
    for i in range(n):
        rng = synth.seeded(seed, 20, i)
        o, s = int(rng.integers(len(synth.OBJECTS))), int(rng.integers(len(synth.SCENES)))
        bg = background(synth.SCENES[s][0], rng)
        track = ObjectTrack.random(synth.OBJECTS[o][0], rng)
        frames.append(render_frame(bg, track, float(rng.uniform(0, 10)), rng))
        objs.append(o)
        scenes.append(s)
    return np.stack(frames), np.array(objs), np.array(scenes)


def train_frame_classifier(
    x: Tensor, y: np.ndarray, num_classes: int, *, seed: int = 0, epochs: int = 8, batch: int = 64
) -> FrameNet:
    """Train a FrameNet's core on pooled inputs ``x`` (N, 3, 32, 32)."""
    torch.manual_seed(seed)
    model = FrameNet(num_classes)
    opt = torch.optim.Adam(model.net.parameters(), 3e-3)
    yt = torch.from_numpy(y).long()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(batch):
            loss = F.cross_entropy(model.net(x[idx]), yt[idx], label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(model: FrameNet, x: Tensor, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model.net(x).argmax(1).numpy() == y).mean())


def make_teachers(
    out_dir: str,
    *,
    seed: int = 0,
    num_frames: int = 2000,
    epochs: int = 8,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Train the objects and scenes teachers and save them as TorchScript files in ``out_dir``.

    Returns {"objects": {"path", "spec", "accuracy", "class_names"}, "scenes": {...}}; ``accuracy`` is
    measured on frames held out from training. Files that already exist are reused (resumable demo).
    """
    os.makedirs(out_dir, exist_ok=True)
    names = {"objects": [s for s, _ in synth.OBJECTS], "scenes": [s for s, _ in synth.SCENES]}
    paths = {k: os.path.join(out_dir, f"teacher-{k}.pt") for k in names}
    result: dict[str, dict] = {}
    threads = torch.get_num_threads()
    # One thread: ops this small gain little from a second one, and on a busy CPU OpenMP's waiting made
    # training 6x slower with two threads than with one (measured here).
    torch.set_num_threads(1)
    try:
        _train_missing(paths, names, seed, num_frames, epochs, result, log)
    finally:
        torch.set_num_threads(threads)
    for key, path in paths.items():
        result.setdefault(key, {})
        result[key].update({"path": path, "spec": f"torchscript:{path}", "class_names": names[key]})
    return result


def _train_missing(
    paths: dict[str, str],
    names: dict[str, list[str]],
    seed: int,
    num_frames: int,
    epochs: int,
    result: dict[str, dict],
    log: Callable[[str], None],
) -> None:
    if not all(os.path.exists(p) for p in paths.values()):
        t0 = time.time()
        frames, objs, scenes = labeled_frames(seed, num_frames)
        x = _preprocess(frames)
        n_test = max(num_frames // 6, 1)
        for key, y in (("objects", objs), ("scenes", scenes)):
            model = train_frame_classifier(x[n_test:], y[n_test:], len(names[key]), seed=seed, epochs=epochs)
            acc = accuracy(model, x[:n_test], y[:n_test])
            scripted = torch.jit.script(model)
            tmp = paths[key] + f".tmp-{os.getpid()}"
            torch.jit.save(scripted, tmp)
            os.replace(tmp, paths[key])
            result[key] = {"accuracy": acc}
            log(f"teacher {key}: {acc:.1%} on {n_test} held-out frames ({time.time() - t0:.0f} s)")
