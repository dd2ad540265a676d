"""The machinery under the trainer: the device-side step, sync-BN on CPU, the process group, signals, progress.

:class:`Stepper` runs forward, loss, backward and Adam with no host synchronisation, so the same code runs eagerly
(CPU or GPU) or captured whole in one CUDA graph (PyTorch's "whole-network capture" recipe, torch.cuda.graphs).
A non-finite loss or gradient skips the step by predication rather than by a host-side ``if``:

- fused Adam reads a device ``found_inf`` flag (the mechanism ``torch.amp.GradScaler`` uses) and then leaves
  parameters, moments and its step count untouched;
- BatchNorm running statistics, which the forward updates before anyone knows the loss, are restored from a copy;
- device counters record the skip, the current and the longest run of non-finite steps, and the sums the trainer
  logs; the trainer reads them only at log points.

:class:`CpuSyncBatchNorm` is ``--sync-bn`` for gloo on CPU, where ``nn.SyncBatchNorm`` does not run.
:func:`init_distributed` joins torchrun's process group (nccl on GPUs, gloo on CPU); :class:`StopSignals` turns
SIGTERM / SIGINT into "checkpoint after this step"; :class:`ProgressBar` is rich's, with clips/s and the loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from soundnet_fast.model import SoundNet
from soundnet_fast.train.losses import HEADS, LAMBDA, LossKind, distill_loss


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradient over ranks (each rank's loss depends on every rank's input).

    torch.distributed.nn.functional.all_reduce does this but is deprecated in favour of functional collectives,
    which have no autograd formula."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        g = grad.contiguous().clone()
        dist.all_reduce(g)
        return g


class CpuSyncBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch over all ranks, on CPU (gloo).

    ``nn.SyncBatchNorm`` runs on GPUs only. This computes the same thing with autograd-aware all_reduces
    (their backward all_reduces the gradient): the global mean first, then the global sum of squared deviations -
    two passes, so no sum-of-squares cancellation (docs/design.md#batchnorm-statistics). Running statistics follow
    ``nn.BatchNorm1d``: momentum 0.1, unbiased variance, ``num_batches_tracked`` incremented.
    """

    # As in nn.SyncBatchNorm (None = the default group); the fused blocks read it to reduce their
    # statistics across ranks inside the kernel op (soundnet_fast.model.Block).
    process_group = None

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        # Statistics in fp32 whatever autocast made the conv output (a bf16 count or sum would be inexact).
        xf = x.float()
        count = torch.full((1,), float(x.shape[0] * x.shape[2]), dtype=torch.float32, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([xf.sum(dim=(0, 2)), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        d = xf - mean[None, :, None]
        var = _AllReduceSum.apply(d.square().sum(dim=(0, 2))) / n
        y = d * torch.rsqrt(var + self.eps)[None, :, None] * self.weight[None, :, None] + self.bias[None, :, None]
        with torch.no_grad():
            m = float(self.momentum if self.momentum is not None else 0.1)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
            self.num_batches_tracked.add_(1)
        return y.to(x.dtype)


def convert_sync_bn(model: SoundNet, device: torch.device) -> SoundNet:
    """Swap every trunk BatchNorm1d for a synchronised one with the same parameters and buffers."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[return-value]
    for block in model.blocks:
        old = block[1]
        new = CpuSyncBatchNorm(old.num_features, eps=old.eps, momentum=old.momentum).to(device)
        new.load_state_dict(old.state_dict())
        block[1] = new
    return model


class Stepper:
    """One training step on the device, skipping a non-finite step by predication (no host sync).

    ``net`` is what the forward calls (the model, or its DDP / compiled wrapper); ``core`` the plain model.
    Device counters (``counters``) hold the skips, the current and longest run of non-finite steps, and the
    sums the trainer logs; the trainer reads them only at log points.
    """

    SUMS = ("seen", "ok", "loss", "objects", "scenes", "grad_norm")

    def __init__(
        self,
        net: nn.Module,
        core: SoundNet,
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device,
        loss: LossKind = "kl",
        lam: float = LAMBDA,
        backend: str = "reference",
        precision: str = "fp32",
        cuda_graphs: bool = False,
        world: int = 1,
    ) -> None:
        if not getattr(optimizer, "_step_supports_amp_scaling", False):
            raise ValueError("Stepper needs torch.optim.Adam(..., fused=True): it skips steps through found_inf")
        self.net, self.core, self.optimizer = net, core, optimizer
        self.device, self.world = device, world
        self.loss, self.lam, self.backend = loss, lam, backend
        self.bf16, self.cuda_graphs = precision == "bf16", cuda_graphs
        self.params = [p for p in core.parameters() if p.requires_grad]
        # BatchNorm running statistics change in the forward, before anyone knows the loss is finite.
        self.buffers = list(core.buffers())
        self._backup = [b.detach().clone() for b in self.buffers]
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
        # Fused Adam reads `found_inf` (as GradScaler sets it) and skips params, moments and step count.
        optimizer.found_inf = self.found_inf  # type: ignore[attr-defined]
        self.force_skip = torch.zeros((), dtype=torch.bool, device=device)  # CUDA-graph warm-up
        zero_f = lambda: torch.zeros((), dtype=torch.float64, device=device)
        zero_i = lambda: torch.zeros((), dtype=torch.int64, device=device)
        self.counters: dict[str, Tensor] = {"skipped": zero_i(), "bad_run": zero_i(), "max_bad_run": zero_i()}
        self.counters.update({k: zero_f() for k in self.SUMS})
        # Made here, not in the step: a host-to-device copy is not allowed while a CUDA graph is captured.
        self._divisor = torch.tensor([world] * 3 + [1], dtype=torch.float32, device=device)
        self.graph: Any = None
        self._static: tuple[Tensor, dict[str, Tensor]] | None = None

    # ---------------------------------------------------------------------------------- the body
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        # The autocast cache must be off while capturing (CUDA graphs notes): cached casts would be freed.
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False if self.cuda_graphs else None
        )

    def _body(self, audio: Tensor, targets: Mapping[str, Tensor]) -> None:
        for b, k in zip(self._backup, self.buffers, strict=True):
            b.copy_(k)
        with self._autocast():
            objects, scenes = self.net(audio)
        outputs = {"objects": objects, "scenes": scenes}
        loss, shares = distill_loss(outputs, targets, kind=self.loss, lam=self.lam, backend=self.backend)
        loss.backward()
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        zero = torch.zeros((), device=self.device)
        bad_local = (~torch.isfinite(loss.detach()) | ~torch.isfinite(grad_norm)).float()
        stats = torch.stack([loss.detach(), *[shares.get(h, zero).detach() for h in HEADS], bad_local])
        if self.world > 1:
            # One small all_reduce: the logged loss is the global mean, and a step is skipped on every rank
            # when any rank saw a non-finite value (DDP made the gradients identical; the flags must agree too).
            dist.all_reduce(stats)
            stats = stats / self._divisor
        bad = (stats[3] > 0) | self.force_skip
        self.found_inf.copy_(bad.float())
        self.optimizer.step()
        for b, k in zip(self._backup, self.buffers, strict=True):
            k.copy_(torch.where(bad, b, k))
        c, ok = self.counters, ~bad
        c["skipped"].add_(bad.long())
        c["bad_run"].copy_(torch.where(bad, c["bad_run"] + 1, torch.zeros_like(c["bad_run"])))
        torch.maximum(c["max_bad_run"], c["bad_run"], out=c["max_bad_run"])
        c["seen"].add_(1)
        c["ok"].add_(ok.double())
        for key, value in zip(("loss", "objects", "scenes"), stats[:3], strict=True):
            c[key].add_(torch.where(ok, value.double(), 0.0))
        c["grad_norm"].add_(torch.where(ok, grad_norm.detach().double(), 0.0))

    # ----------------------------------------------------------------------------------- running
    def step(self, audio: Tensor, targets: Mapping[str, Tensor]) -> None:
        if self.graph is not None:
            assert self._static is not None
            s_audio, s_targets = self._static
            s_audio.copy_(audio, non_blocking=True)
            for k, v in targets.items():
                s_targets[k].copy_(v, non_blocking=True)
            self.graph.replay()
            return
        self.optimizer.zero_grad(set_to_none=True)
        self._body(audio, targets)

    def capture(self, audio: Tensor, targets: Mapping[str, Tensor], warmup: int = 3) -> None:
        """Capture the whole step in one CUDA graph (torch.cuda.graphs, "whole-network capture").

        Warm-up runs on a side stream as the recipe asks, with ``force_skip`` set, so it initialises Adam's
        state and cuDNN's choices without changing any weight, moment, step count or BN statistic.
        ``warmup`` is 11 under DDP (the notes' requirement for DDP-enabled eager iterations).
        """
        if self.device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA device, not {self.device}")
        self._static = (audio.clone(), {k: v.clone() for k, v in targets.items()})
        s_audio, s_targets = self._static
        saved = {k: v.clone() for k, v in self.counters.items()}
        self.force_skip.fill_(True)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.optimizer.zero_grad(set_to_none=True)
                self._body(s_audio, s_targets)
        torch.cuda.current_stream(self.device).wait_stream(side)
        # Grads set to None so that backward allocates them from the graph's private pool; each replay
        # then writes (not accumulates) them.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the loader's read-ahead thread may copy the next batch to the GPU meanwhile.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._body(s_audio, s_targets)
        self.force_skip.fill_(False)
        for k, v in saved.items():
            self.counters[k].copy_(v)
        self.graph = graph

    def read(self, reset: bool = True) -> dict[str, float]:
        """Host copy of the counters (one sync); with ``reset`` the per-interval sums start again from zero."""
        names = list(self.counters)
        values = dict(zip(names, torch.stack([self.counters[k].double() for k in names]).cpu().tolist(), strict=True))
        if reset:
            for k in self.SUMS:
                self.counters[k].zero_()
        return values

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.counters)

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        for k, v in state.items():
            if k in self.counters:
                self.counters[k].copy_(v)


# -------------------------------------------------------------------------------------- distributed
@dataclasses.dataclass
class DistEnv:
    """This process's place in the run: rank, world size and device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def tag(self) -> str:
        return f" [rank {self.rank}]" if self.world > 1 else ""

    def close(self, wait_for_peers: bool = True) -> None:
        """Leave the process group. After a clean finish every rank meets first, so none tears down its
        connections while a peer still talks to it; after an error it leaves at once (a barrier could hang)."""
        if self.world > 1 and dist.is_initialized():
            if wait_for_peers:
                dist.barrier()
            gc.collect()  # DDP and pending work objects hold the group: free them before it is destroyed
            dist.destroy_process_group()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` is CUDA when there is one; a rank takes the GPU of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda but no CUDA device is available (this torch build or machine)")
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device_name: str = "auto", cuda_graphs: bool = False) -> DistEnv:
    """torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; without them this is one process."""
    device = pick_device(device_name, int(os.environ.get("LOCAL_RANK", "0")))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistEnv(0, 1, device)
    if cuda_graphs and device.type == "cuda":
        # Collectives inside a captured graph need NCCL's async error handling off (CUDA semantics notes,
        # "Usage with DistributedDataParallel"); it must be set before the process group starts.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), device)


class StopSignals:
    """SIGTERM / SIGINT ask the loop to checkpoint and stop after the current step; a second one stops now."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.signum = signum

    def __enter__(self) -> StopSignals:
        with contextlib.suppress(ValueError):  # signal.signal only works in the main thread
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


class ProgressBar:
    """A rich progress bar with clips/s and the loss; ``mode`` auto shows it only on a terminal."""

    def __init__(self, mode: str, start: int, total: int, enabled: bool = True) -> None:
        self.enabled = enabled and (mode == "on" or (mode == "auto" and sys.stderr.isatty()))
        self._progress: Any = None
        self._task: Any = None
        self._start, self._total = start, total

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} clips/s  loss {task.fields[loss]}"),
                TimeRemainingColumn(),
            )
            self._task = self._progress.add_task("train", total=self._total, completed=self._start, rate="-", loss="-")
            self._progress.start()
        return self

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def update(self, rate: float, loss: float | None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, rate=f"{rate:.1f}", loss="nan" if loss is None else f"{loss:.4f}")

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()


__all__ = [
    "CpuSyncBatchNorm",
    "DistEnv",
    "ProgressBar",
    "Stepper",
    "StopSignals",
    "convert_sync_bn",
    "init_distributed",
    "pick_device",
]
