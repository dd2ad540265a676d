"""The feature methods a transfer evaluation compares: the weights under test and, with ``baselines``, MFCC
statistics and the same network with random weights, as initialised and with BN statistics re-estimated
(the paper's Table 4 rows, docs/design.md#paper-figures).

Each :class:`Method` names its feature function; every function reads features from the cache
(``features.FeatureStore``) or extracts them, and adds the files it could not read to ``ctx.failed``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from soundnet_fast.console import Progress
from soundnet_fast.evaluation import features as ef
from soundnet_fast.evaluation.config import EvalConfig, Setup
from soundnet_fast.evaluation.datasets import Dataset


@dataclass
class FeatureContext:
    """What every feature function reads; ``failed`` grows as the functions run, in the order of the methods."""

    cfg: EvalConfig
    setup: Setup
    ds: Dataset
    paths: list[str]  # every clip file, development then test, each once
    hashes: dict[str, str]  # path -> SHA-256 of the file's bytes (the cache key of its features)
    failed: dict[str, str]  # path -> why it has no features
    console: Any  # rich Console on stderr

    @property
    def variant(self) -> str:
        """The cache sub-folder of one network's features: layer, scale, mono mode and tiling length."""
        c, s = self.cfg, self.setup
        return f"{s.layer}-x{s.input_scale:g}-{c.mono}-{c.min_seconds:g}s"


@dataclass
class MethodFeatures:
    maps: dict[str, np.ndarray]  # clip path -> (C, T) feature map of the layer, or (D,) MFCC statistics
    stats: ef.ExtractStats  # how many were extracted and read from the cache, and the failures
    info: dict[str, Any]  # what the method's results entry records about it (weights and hash, seed, ...)


@dataclass(frozen=True)
class Method:
    key: str  # its key under results.json "methods" and in the plots' file names
    label: str  # its row in the table and its plots' titles
    features: Callable[[FeatureContext], MethodFeatures]  # every clip's features, from the cache or extracted
    pooled_only: bool = False  # already one vector per clip (MFCC statistics): always the pooled classifier

    def protocol(self, asked: str) -> str:
        """The protocol this method is scored with when ``asked`` is the run's."""
        return "pooled" if self.pooled_only else asked


def methods_for(cfg: EvalConfig, setup: Setup) -> list[Method]:
    """The weights under test, then (``cfg.baselines``) MFCC, random init and random init with BN re-estimated."""
    title = setup.arch_title
    methods = [Method("soundnet", f"{title} {setup.layer} ({os.path.basename(setup.weights)})", weights_features)]
    if cfg.baselines:
        methods += [
            Method("mfcc", "SVM on MFCC statistics (librosa)", mfcc_features, pooled_only=True),
            Method("random_init", f"{title}, random init", random_init_features),
            Method("random_bn", f"{title}, random init, BN re-estimated", random_bn_features),
        ]
    return methods


def weights_features(ctx: FeatureContext) -> MethodFeatures:
    """The weights under test; cached under the weight file's SHA-256."""
    key = ef.file_sha256(ctx.setup.weights)
    maps, stats = _network_maps(ctx, ctx.setup.model, key, os.path.basename(ctx.setup.weights))
    return MethodFeatures(maps, stats, {"weights": ctx.setup.weights, "sha256": key})


def mfcc_features(ctx: FeatureContext) -> MethodFeatures:
    """MFCC statistics (``features.mfcc_stats``, librosa): the paper's "SVM on MFCC" row."""
    variant = f"{ef.MFCC_VERSION.replace('/', '_')}-{ctx.cfg.mono}"
    store = ef.FeatureStore(ctx.setup.cache_root, "mfcc", variant, {"model": ef.MFCC_VERSION})
    with Progress("MFCC statistics (librosa)", len(ctx.hashes), transient=True, console=ctx.console) as bar:
        mono: Any = ctx.cfg.mono  # checked by EvalConfig.check: one of MONO_MODES
        maps, stats = ef.extract_mfcc(store, ctx.paths, ctx.hashes, mono=mono, progress=bar.advance)
    ctx.failed.update(stats.failed)
    return MethodFeatures(maps, stats, {"features": ef.MFCC_VERSION})


def random_init_features(ctx: FeatureContext) -> MethodFeatures:
    """The same architecture with the original's initialisation (``features.random_model``, seeded)."""
    seed = ctx.cfg.seed
    net = ef.random_model(ctx.setup.model, seed)
    key = ef.state_sha256(net)
    maps, stats = _network_maps(ctx, net, key, f"random init (seed {seed})")
    return MethodFeatures(maps, stats, {"seed": seed, "sha256": key})


def random_bn_features(ctx: FeatureContext) -> MethodFeatures:
    """Random init with its BN statistics re-estimated on up to ``cfg.bn_clips`` development clips."""
    cfg, setup = ctx.cfg, ctx.setup
    net = ef.random_model(setup.model, cfg.seed)
    random_key = ef.state_sha256(net)
    # BN statistics from the development audio only (labels are never used); the set is a seeded sample
    # chosen by content hash, so it does not depend on file order and the cache key can name it.
    usable = sorted(ctx.hashes[c.path] for c in ctx.ds.clips if c.path in ctx.hashes and c.path not in ctx.failed)
    chosen = sorted(random.Random(cfg.seed).sample(usable, min(cfg.bn_clips, len(usable))))
    key = ef.model_bytes_key(
        "bn-reestimated", random_key, setup.layer, setup.input_scale, cfg.mono, cfg.min_seconds, *chosen
    )
    store = ef.FeatureStore(setup.cache_root, key, ctx.variant)
    readable = [p for p in ctx.paths if p in ctx.hashes and p not in ctx.failed]
    if any(not os.path.isfile(store.path(ctx.hashes[p])) for p in readable):
        by_hash = {ctx.hashes[c.path]: c.path for c in ctx.ds.clips if c.path in ctx.hashes}
        ctx.console.log(f"re-estimating BN statistics on {len(chosen)} development clips")
        ef.reestimate_bn(
            net,
            _waves([by_hash[h] for h in chosen], cfg.mono, cfg.min_seconds),
            layer=setup.layer,
            input_scale=setup.input_scale,
            device=cfg.device,
        )
    maps, stats = _network_maps(ctx, net, key, "random init, BN re-estimated")
    return MethodFeatures(maps, stats, {"seed": cfg.seed, "bn_clips": len(chosen), "labels_used": False})


def _network_maps(ctx: FeatureContext, net: Any, key: str, what: str) -> tuple[dict[str, np.ndarray], ef.ExtractStats]:
    """``net``'s feature maps of every hashed clip, cached under ``key``; ``what`` names the network."""
    cfg, setup = ctx.cfg, ctx.setup
    if cfg.fold:  # same features within rounding, so the cache key leaves it out (EvalConfig.fold)
        net.inference()
    store = ef.FeatureStore(
        setup.cache_root, key, ctx.variant, {"model": what, "layer": setup.layer, "scale": setup.input_scale}
    )
    with Progress(f"{what}: {setup.layer} features", len(ctx.hashes), transient=True, console=ctx.console) as bar:
        maps, stats = ef.extract_maps(
            net,
            store,
            ctx.paths,
            ctx.hashes,
            layer=setup.layer,
            input_scale=setup.input_scale,
            mono=cfg.mono,  # type: ignore[arg-type]
            min_seconds=cfg.min_seconds,
            batch_size=cfg.batch_size,
            device=cfg.device,
            progress=bar.advance,
        )
    ctx.failed.update(stats.failed)
    return maps, stats


def _waves(paths: Sequence[str], mono: str, min_seconds: float) -> Iterator[np.ndarray]:
    """Decoded clips of ``paths``; one that cannot be decoded is skipped (the feature pass reported it)."""
    from soundnet_fast.audio import AudioDecodeError

    for p in paths:
        try:
            yield ef.load_clip(p, mono=mono, min_seconds=min_seconds)  # type: ignore[arg-type]
        except AudioDecodeError:
            continue


__all__ = [
    "FeatureContext",
    "Method",
    "MethodFeatures",
    "methods_for",
    "mfcc_features",
    "random_bn_features",
    "random_init_features",
    "weights_features",
]
