"""Epochs of batches from a shard folder (docs/design.md#data-path): :func:`epoch_order`, the one sampling
order every backend follows, and :class:`ShardLoader`, which reads it with numpy memory maps or DALI.

The folder's format (manifest, index, one ``.npy`` per shard and array) is :mod:`soundnet_fast.data.shards`'.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from soundnet_fast.constants import INPUT_SCALE
from soundnet_fast.data.shards import MANIFEST, ShardFormatError, manifest_path, read_manifest, shard_files

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
    """Batches ``(audio, targets)`` from a shard folder, in an order the project owns.

    ``audio`` is float32 (B, 1, clip_samples), the int16 PCM scaled to [-1, 1] times ``scale`` (x256,
    docs/design.md#input), on ``device``; ``targets`` maps each teacher name to float32 (B, C, steps), the model's
    (B, C, T) layout. Backends: ``"numpy"`` memory-maps the shards (the CPU default, the faster one there);
    ``"dali"`` reads them with DALI's numpy reader and converts int16 on the device (the GPU default;
    a CPU-only pipeline when ``device`` is the CPU); ``"auto"`` picks DALI for a CUDA device when it imports.
    Every backend yields the same clips in the same order for the same seed (:func:`epoch_order`).

    ``prefetch`` batches are read ahead in a thread by the numpy backend (default: 2 on a GPU, 0 on a CPU).

    Epochs: ``len(loader)`` is batches per epoch; iterating resumes at the current position and, at the end
    of an epoch, moves on to the next. ``set_epoch(e)`` switches to epoch ``e`` at its start (a no-op when
    ``e`` is the current epoch, so calling it after ``load_state_dict`` keeps the restored position).
    ``state_dict()`` / ``load_state_dict()`` hold the epoch and the number of batches already yielded.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
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
    ) -> None:
        import torch

        self.folder = os.path.dirname(os.path.abspath(manifest_path(path)))
        self.manifest = read_manifest(self.folder)
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
        self.shard_names = [s["name"] for s in self.manifest["shards"]]
        counts = np.array([int(s["num_clips"]) for s in self.manifest["shards"]], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])  # global clip id -> (shard, row)
        self.num_clips = int(self.offsets[-1])
        if self.num_clips != int(self.manifest["num_clips"]):
            raise ShardFormatError(
                f"{self.folder}/{MANIFEST}: num_clips {self.manifest['num_clips']} but its shards hold {self.num_clips}"
            )
        self._arrays = [self._open_shard(name, int(n)) for name, n in zip(self.shard_names, counts, strict=True)]
        self.backend = self._pick_backend(backend)
        # A reading thread pays on a GPU (it overlaps the device's step); on a CPU the step needs the same cores,
        # and on 2 cores the thread measured slower (bench/test_data_bench.py), so it is off there by default.
        self.prefetch = int(prefetch) if prefetch is not None else (2 if self.device.type == "cuda" else 0)
        self.epoch = 0
        self.position = 0
        if len(self) == 0:
            raise ValueError(
                f"{self.folder}: {self.num_clips} clips give no batch of {batch_size} for rank "
                f"{shard_id} of {num_shards} (drop_last={drop_last})"
            )

    def _open_shard(self, name: str, n: int) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for key, fpath in shard_files(self.folder, name, self.teachers).items():
            try:
                a = np.load(fpath, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ShardFormatError(f"{fpath}: cannot memory-map ({e})") from e
            if key == "audio":
                want, dtype = (n, self.clip_samples), np.dtype(np.int16)
            else:
                want, dtype = (n, self.steps, int(self.manifest["teachers"][key]["num_classes"])), np.dtype(np.float32)
            if a.shape != want or a.dtype != dtype:
                raise ShardFormatError(f"{fpath}: holds {a.dtype} {a.shape}, the manifest promises {dtype} {want}")
            arrays[key] = a
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
        """Global clip ids of this rank for ``epoch`` (default: the current one), in reading order."""
        return epoch_order(
            self.num_clips,
            self.epoch if epoch is None else epoch,
            seed=self.seed,
            shuffle=self.shuffle,
            shard_id=self.shard_id,
            num_shards=self.num_shards,
            drop_last=self.drop_last,
        )

    def locate(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, row) of global clip ids."""
        shard = np.searchsorted(self.offsets, clips, side="right") - 1
        return shard, clips - self.offsets[shard]

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
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the epoch and position; the settings that define the order must match."""
        for key in ("seed", "num_clips", "batch_size", "shard_id", "num_shards", "shuffle", "drop_last"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state has {key} = {state[key]!r} but this loader has "
                    f"{getattr(self, key)!r}: the batch order would differ"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    # -------------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        if self.position >= len(self):  # a state saved right after an epoch's last batch
            self.epoch, self.position = self.epoch + 1, 0
        order = self.order()
        batches = [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.position, len(self))]
        if self.backend == "numpy":
            source = _prefetched(self._numpy_batches(batches), self.prefetch)
        else:
            source = self._dali_batches(batches)
        for batch in source:
            self.position += 1  # counted when handed over: state_dict() now says "this batch is consumed"
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def _numpy_batches(self, batches: list[np.ndarray]) -> Iterator[tuple[Any, dict[str, Any]]]:
        import torch

        cuda = self.device.type == "cuda"
        factor = np.float32(self.scale / 32768.0)  # int16 -> [-1, 1) -> x scale
        for clips in batches:
            b = len(clips)
            # On a GPU the int16 rows travel (half the bytes of float32) from pinned memory and are converted on
            # the device, as the DALI backend does; on the CPU they are converted straight into the batch.
            audio = torch.empty(
                (b, 1, self.clip_samples), dtype=torch.int16 if cuda else torch.float32, pin_memory=cuda
            )
            targets = {
                t: torch.empty(
                    (b, int(self.manifest["teachers"][t]["num_classes"]), self.steps),
                    dtype=torch.float32,
                    pin_memory=cuda,
                )
                for t in self.teachers
            }
            a_np = audio.numpy()[:, 0]
            t_np = {t: v.numpy() for t, v in targets.items()}
            shard, row = self.locate(clips)
            for s in np.unique(shard):
                pos = np.nonzero(shard == s)[0]
                arrays = self._arrays[s]
                # Row by row from the memory map: each clip is one contiguous read straight into the batch
                # (fancy indexing would copy the same bytes twice).
                for p, r in zip(pos.tolist(), row[pos].tolist(), strict=True):
                    if cuda:
                        a_np[p] = arrays["audio"][r]
                    else:
                        np.multiply(arrays["audio"][r], factor, out=a_np[p], dtype=np.float32)
                    for t in self.teachers:
                        t_np[t][p] = arrays[t][r].T
            if cuda:
                x = audio.to(self.device, non_blocking=True).float().mul_(float(factor))
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
        paths = [shard_files(self.folder, name, self.teachers) for name in self.shard_names]
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


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _prefetched(source: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``source`` in a background thread, ``depth`` items ahead (numpy copies release the GIL, so reading
    the next batch overlaps the training step). Stopping early stops the thread."""
    if depth <= 0:
        yield from source
        return
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer, raised there
            put(_Raised(e))

    thread = threading.Thread(target=work, name="ShardLoader-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)
