"""Epochs of batches from shards (docs/design.md#data-path, #data-at-scale): :func:`epoch_order`, the one sampling
order every backend follows, and :class:`ShardLoader`, which reads it from mapped shards (numba or numpy gather)
or with DALI.

A folder's format (manifest, index, one ``.npy`` per shard and array) is :mod:`soundnet_fast.data.shards`'; a
dataset of several folders or parts is :mod:`soundnet_fast.data.dataset`'s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from soundnet_fast.constants import INPUT_SCALE
from soundnet_fast.data.dataset import Dataset, Paths
from soundnet_fast.data.gather import BufferPool, Impl, gather, prefetched, resolve, uses_numba
from soundnet_fast.data.mapped import NpyMismatch, map_npy, npy_offset
from soundnet_fast.data.shards import ShardFormatError

_prefetched = prefetched  # its old name here

Backend = Literal["numpy", "dali", "auto"]


def epoch_order(
    num_clips: int,
    epoch: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    shard_id: int = 0,
    num_shards: int = 1,
    drop_last: bool = True,
) -> np.ndarray:
    """Global clip ids this rank reads in ``epoch``, in order: the one sampling order every backend follows.

    A seeded permutation per epoch (``numpy.random.default_rng([seed, epoch])``), split round-robin across
    ``num_shards`` ranks as ``torch.utils.data.DistributedSampler`` does: with ``drop_last`` the tail that
    does not divide evenly is dropped (shares are disjoint); without it the order wraps around to pad the
    last rank's share (a few clips are then read twice per epoch).
    """
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
    order = np.random.default_rng([seed, epoch]).permutation(num_clips) if shuffle else np.arange(num_clips)
    if drop_last:
        order = order[: (num_clips // num_shards) * num_shards]
    elif num_clips % num_shards:
        total = math.ceil(num_clips / num_shards) * num_shards
        order = np.resize(order, total)  # np.resize repeats the array cyclically
    return order[shard_id::num_shards]


class ShardLoader:
    """Batches ``(audio, targets)`` from a dataset of shards, in an order the project owns.

    ``path`` is a shard folder, a folder of parts (``prepare --part``) or a list of either, read as one
    :class:`~soundnet_fast.data.dataset.Dataset` (missing or unfinished parts are refused unless ``allow_partial``).
    ``audio`` is float32 (B, 1, clip_samples), the int16 PCM scaled to [-1, 1] times ``scale`` (x256,
    docs/design.md#input), on ``device``; ``targets`` maps each teacher name to float32 (B, C, steps), the model's
    (B, C, T) layout. Backends: ``"numpy"`` maps the shards into memory and gathers rows on ``num_threads`` threads
    (``gather``: ``auto``, numba where it pays, else numpy; or either alone: :mod:`soundnet_fast.data.gather`; the CPU
    default, the faster one there); ``"dali"`` reads them with DALI's numpy reader (``num_threads`` threads) and
    converts int16 on the device (the GPU default; a CPU-only pipeline when ``device`` is the CPU);
    ``"auto"`` picks DALI for a CUDA device when it imports. Every backend, gather, thread count, part layout and
    rank count yields the same clips for the same seed (:meth:`order`, docs/design.md#data-at-scale).

    ``prefetch`` batches are read ahead in a thread by the numpy backend (default: 2 on a GPU, 0 on a CPU).

    Epochs: ``len(loader)`` is batches per epoch; iterating resumes at the current position and, at the end
    of an epoch, moves on to the next. ``set_epoch(e)`` switches to epoch ``e`` at its start (a no-op when
    ``e`` is the current epoch, so calling it after ``load_state_dict`` keeps the restored position).
    ``state_dict()`` / ``load_state_dict()`` hold the epoch, the number of batches already yielded and the
    dataset's fingerprint: a restart over the same clips split into other parts resumes exactly; other clips are
    refused.
    """

    def __init__(
        self,
        path: Paths,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        shard_id: int = 0,
        num_shards: int = 1,
        drop_last: bool = True,
        backend: Backend = "auto",
        device: Any = "cpu",
        teachers: Sequence[str] | None = None,
        scale: float = INPUT_SCALE,
        num_threads: int = 2,
        prefetch: int | None = None,
        allow_partial: bool = False,
        gather: Impl = "auto",
    ) -> None:
        import torch

        self.dataset = Dataset(path, allow_partial=allow_partial)
        self.folder = self.dataset.root
        self.manifest = self.dataset.manifest
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
        all_teachers = list(self.manifest["teachers"])
        self.teachers = all_teachers if teachers is None else list(teachers)
        unknown = [t for t in self.teachers if t not in all_teachers]
        if unknown:
            raise ValueError(f"{self.folder}: no teacher {unknown}; the shards hold {all_teachers}")
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.shard_id, self.num_shards, self.drop_last = int(shard_id), int(num_shards), bool(drop_last)
        self.device = torch.device(device)
        self.scale = float(scale)
        self.num_threads = int(num_threads)
        self.clip_samples, self.steps = int(self.manifest["clip_samples"]), int(self.manifest["steps"])
        self.shard_names = self.dataset.shard_names
        self.offsets = self.dataset.offsets
        self.num_clips = self.dataset.num_clips
        self._shapes = {"audio": ((self.clip_samples,), "<i2")}
        for t in self.teachers:
            self._shapes[t] = ((self.steps, int(self.manifest["teachers"][t]["num_classes"])), "<f4")
        counts = np.diff(self.offsets).tolist()
        folders = [os.path.join(p.folder, "") for p in self.dataset.parts]
        for s, (part, name) in enumerate(zip(self.dataset.shard_part.tolist(), self.shard_names, strict=True)):
            for key, (shape, dtype) in self._shapes.items():  # every header now: a wrong file fails here, not mid-epoch
                self._check(f"{folders[part]}{name}.{key}.npy", (counts[s], *shape), dtype)
        self._maps: dict[int, dict[str, np.ndarray]] = {}  # shard -> mapped arrays, on first use
        self._base = np.zeros(len(self.shard_names), np.int64)  # their audio data's addresses (numba reads by address)
        self.backend = self._pick_backend(backend)
        self._gather = gather if self.backend == "numpy" else "numpy"
        self._resolved: str | None = None
        if self._gather not in ("numba", "numpy", "auto"):
            raise ValueError(f"gather must be 'numba', 'numpy' or 'auto', got {gather!r}")
        # A reading thread pays on a GPU (it overlaps the device's step); on a CPU the step needs the same cores,
        # and on 2 cores the thread measured slower (bench/test_data_bench.py), so it is off there by default.
        self.prefetch = int(prefetch) if prefetch is not None else (2 if self.device.type == "cuda" else 0)
        self._pool = BufferPool(keep=self.prefetch + 3)  # queued, being read, the caller's and the one before
        self.epoch = 0
        self.position = 0
        if len(self) == 0:
            raise ValueError(
                f"{self.folder}: {self.num_clips} clips give no batch of {batch_size} for rank "
                f"{shard_id} of {num_shards} (drop_last={drop_last})"
            )

    @property
    def gather(self) -> str:
        """The gather that runs: ``numba``, ``numpy`` or ``auto`` (numba for float32 batches, numpy for int16 ones:
        :mod:`soundnet_fast.data.gather`); numba's kernels are loaded on first use (about a second from its cache)."""
        if self._resolved is None:
            self._resolved = resolve(self._gather)  # type: ignore[arg-type]
        return self._resolved

    @staticmethod
    def _check(fpath: str, shape: tuple[int, ...], dtype: str) -> None:
        try:
            npy_offset(fpath, shape, dtype)
        except NpyMismatch as e:
            raise ShardFormatError(f"{fpath}: holds {e.found}, the manifest promises {np.dtype(dtype)} {shape}") from e
        except OSError as e:
            raise ShardFormatError(f"{fpath}: cannot read ({e})") from e

    def _mapped(self, shard: int) -> dict[str, np.ndarray]:
        arrays = self._maps.get(shard)
        if arrays is None:
            n = int(self.offsets[shard + 1] - self.offsets[shard])
            arrays = {}
            for key, fpath in self.dataset.files(shard, self.teachers).items():
                shape, dtype = self._shapes[key]
                try:
                    arrays[key] = map_npy(fpath, (n, *shape), dtype)
                except (OSError, NpyMismatch) as e:
                    raise ShardFormatError(f"{fpath}: cannot map ({e})") from e
            self._base[shard] = arrays["audio"].ctypes.data
            self._maps[shard] = arrays
        return arrays

    def _pick_backend(self, backend: str) -> str:
        if backend not in ("numpy", "dali", "auto"):
            raise ValueError(f"backend must be 'numpy', 'dali' or 'auto', got {backend!r}")
        if backend == "auto":
            if self.device.type != "cuda":
                return "numpy"
            try:
                import nvidia.dali  # noqa: F401
            except ImportError:
                return "numpy"
            return "dali"
        if backend == "dali":
            try:
                import nvidia.dali  # noqa: F401
            except ImportError as e:
                raise ImportError("backend='dali' needs NVIDIA DALI: pip install 'soundnet-fast[dali]'") from e
        return backend

    # --------------------------------------------------------------------------------- sampling
    def order(self, epoch: int | None = None) -> np.ndarray:
        """Clip ids of this rank for ``epoch`` (default: the current one), in reading order: :func:`epoch_order`.

        Shuffled, the permutation runs over the clips' canonical order (``Dataset.canonical``), so it picks the same
        clips whatever the parts; unshuffled (a sequential pass, e.g. validation), clips are read as stored.
        """
        ids = epoch_order(
            self.num_clips,
            self.epoch if epoch is None else epoch,
            seed=self.seed,
            shuffle=self.shuffle,
            shard_id=self.shard_id,
            num_shards=self.num_shards,
            drop_last=self.drop_last,
        )
        return self.dataset.canonical[ids].astype(np.int64) if self.shuffle else ids

    def _fingerprint(self) -> str:
        return self.dataset.fingerprint if self.shuffle else self.dataset.layout_fingerprint

    def locate(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, row) of clip ids."""
        return self.dataset.locate(clips)

    def __len__(self) -> int:
        per_rank = self.num_clips // self.num_shards if self.drop_last else math.ceil(self.num_clips / self.num_shards)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_clips": self.num_clips,
            "batch_size": self.batch_size,
            "shard_id": self.shard_id,
            "num_shards": self.num_shards,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "dataset": self._fingerprint(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the epoch and position; the settings that define the order must match.

        The dataset must hold the same clips (equal fingerprints), however they are split into parts: the shuffled
        order is then provably the same (an unshuffled one also needs the same storage order). A state without a
        fingerprint (saved before clips were ordered by key) resumes only
        at an epoch's start, where no order is half-way through.
        """
        for key in ("seed", "num_clips", "batch_size", "shard_id", "num_shards", "shuffle", "drop_last"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state has {key} = {state[key]!r} but this loader has "
                    f"{getattr(self, key)!r}: the batch order would differ"
                )
        if "dataset" in state and state["dataset"] != self._fingerprint():
            raise ValueError(
                f"loader state was saved over other clips (dataset fingerprint {state['dataset']}, now "
                f"{self._fingerprint()}): the same number of clips, but not the same ones"
                f"{'' if self.shuffle else ' or not stored in the same order'}, so the batch order would differ; "
                "resume with the data the run started on"
            )
        if "dataset" not in state and int(state["position"]) > 0:
            raise ValueError(
                "loader state from before clips were ordered by key, saved mid-epoch: the rest of that epoch cannot "
                "be reproduced; resume from a checkpoint at an epoch's start or start a new run"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    # -------------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        if self.position >= len(self):  # a state saved right after an epoch's last batch
            self.epoch, self.position = self.epoch + 1, 0
        order = self.order()
        batches = [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.position, len(self))]
        if self.backend == "numpy":
            source = prefetched(self._numpy_batches(batches), self.prefetch)
        else:
            source = self._dali_batches(batches)
        for batch in source:
            self.position += 1  # counted when handed over: state_dict() now says "this batch is consumed"
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def read_into(self, clips: np.ndarray, audio: np.ndarray, targets: Mapping[str, np.ndarray], scaled: bool) -> None:
        """Gather clip ids ``clips`` (B,) into ``audio`` (B, L): int16 as stored, or float32 scaled (``scaled``), and
        each ``targets[t]`` float32 (B, C, steps), with this loader's gather and thread count."""
        shard, row = self.locate(np.asarray(clips, dtype=np.int64))
        rows: dict[str, list[np.ndarray]] = {k: [] for k in ("audio", *self.teachers)}
        for s, r in zip(shard.tolist(), row.tolist(), strict=True):
            arrays = self._maps.get(s) or self._mapped(s)
            for k, v in rows.items():
                v.append(arrays[k][r])
        impl = self.gather
        addrs = None
        if uses_numba(impl, scaled):
            addrs = self._base[shard] + row * (self.clip_samples * 2)  # int16 rows
        factor = np.float32(self.scale / 32768.0) if scaled else None  # int16 -> [-1, 1) -> x scale
        audio_rows = rows.pop("audio")
        gather(impl, audio_rows, addrs, audio, factor, rows, targets, self.num_threads)

    def _numpy_batches(self, batches: list[np.ndarray]) -> Iterator[tuple[Any, dict[str, Any]]]:
        import torch

        cuda = self.device.type == "cuda"
        for clips in batches:
            b = len(clips)
            classes = {t: int(self.manifest["teachers"][t]["num_classes"]) for t in self.teachers}
            # On a GPU the int16 rows travel (half the bytes of float32) from pinned memory (torch's caching host
            # allocator reuses it) and are converted on the device, as the DALI backend does; on the CPU they are
            # converted straight into a reused batch array (gather.BufferPool).
            if cuda:
                audio = torch.empty((b, 1, self.clip_samples), dtype=torch.int16, pin_memory=True)
                targets = {t: torch.empty((b, c, self.steps), pin_memory=True) for t, c in classes.items()}
            else:
                audio = torch.from_numpy(self._pool.get((b, 1, self.clip_samples), np.float32))
                targets = {
                    t: torch.from_numpy(self._pool.get((b, c, self.steps), np.float32)) for t, c in classes.items()
                }
            self.read_into(clips, audio.numpy()[:, 0], {t: v.numpy() for t, v in targets.items()}, scaled=not cuda)
            if cuda:
                x = audio.to(self.device, non_blocking=True).float().mul_(self.scale / 32768.0)
                yield x, {t: v.to(self.device, non_blocking=True) for t, v in targets.items()}
            else:
                yield audio, targets

    def _dali_batches(self, batches: list[np.ndarray]) -> Iterator[tuple[Any, dict[str, Any]]]:
        """The same batches through DALI: ``fn.readers.numpy`` reads row crops (``roi_start``/``roi_end`` on axis
        0) of the shard files in the order :meth:`order` gives; on a GPU the int16 rows go to the device and are
        converted there (half the bytes of float32 over PCIe); CPU-only pipelines run with ``device_id=None``."""
        from nvidia.dali import fn, pipeline_def, types

        if not batches:
            return
        bsz, n = self.batch_size, len(batches)
        sizes = [len(b) for b in batches]
        # DALI batches are fixed-size: a short last batch (drop_last=False) is padded by wrapping, then trimmed.
        flat = np.concatenate([np.resize(b, bsz) for b in batches])
        shard, row = self.locate(flat)
        paths = [self.dataset.files(i, self.teachers) for i in range(len(self.shard_names))]
        rois = [[np.array([r], np.int32) for r in row[i * bsz : (i + 1) * bsz]] for i in range(n)]
        gpu = self.device.type == "cuda"
        factor = self.scale / 32768.0  # int16 -> [-1, 1) -> x scale, as the numpy backend

        @pipeline_def(batch_size=bsz, num_threads=self.num_threads, device_id=(self.device.index or 0) if gpu else None,
                      prefetch_queue_depth=2)  # fmt: skip
        def pipeline():  # type: ignore[no-untyped-def]
            start = fn.external_source(source=iter(rois), dtype=types.INT32, no_copy=False)
            end = start + 1
            outs = []
            for key in ["audio", *self.teachers]:
                x = fn.readers.numpy(files=[paths[s][key] for s in shard], roi_start=start, roi_end=end, roi_axes=[0],
                                     random_shuffle=False, name=f"read_{key}")  # fmt: skip
                if gpu:
                    x = x.gpu()
                if key == "audio":  # (1, L) int16 -> (1, L) float32, converted on the pipeline's device
                    x = fn.cast(x, dtype=types.FLOAT) * factor
                else:  # (1, steps, C) -> (C, steps), the model's layout
                    x = fn.transpose(fn.reshape(x, shape=[self.steps, -1]), perm=[1, 0])
                outs.append(x)
            return tuple(outs)

        pipe = pipeline()
        pipe.build()
        for i in range(n):
            outs = pipe.run()
            tensors = [self._from_dali(o, gpu)[: sizes[i]] for o in outs]
            yield tensors[0], dict(zip(self.teachers, tensors[1:], strict=True))

    def _from_dali(self, tensor_list: Any, gpu: bool) -> Any:
        import torch

        if not gpu:
            return torch.from_numpy(np.asarray(tensor_list.as_array()))
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = tensor_list.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch.float32, device=self.device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(self.device))
        return out
