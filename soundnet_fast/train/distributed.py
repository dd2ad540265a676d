"""Scale-out and process plumbing under the trainer: sync-BN on CPU, the process group, the device, stop signals.

:class:`CpuSyncBatchNorm` is ``--sync-bn`` for gloo on CPU, where ``nn.SyncBatchNorm`` does not run;
:func:`convert_sync_bn` swaps it (or ``nn.SyncBatchNorm`` on GPUs) into the trunk. :func:`wrap_ddp` builds the
DistributedDataParallel wrapper the step calls. :func:`init_distributed` joins torchrun's process group (nccl on
GPUs, gloo on CPU) and returns the :class:`DistEnv`; :class:`StopSignals` turns SIGTERM / SIGINT into "checkpoint
after this step".
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import signal
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from soundnet_fast.model import SoundNet


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


def wrap_ddp(core: nn.Module, device: torch.device, cuda_graphs: bool = False) -> nn.Module:
    """``core`` in DistributedDataParallel, as the step calls it (one process group must be up).

    Per-rank batch statistics by default; running statistics follow rank 0 before every forward (buffer sync),
    so every rank evaluates and resumes with the same ones. With ``cuda_graphs`` the wrapper is built on a side
    stream, as PyTorch's CUDA-graph notes ask for DDP before capture (see :mod:`soundnet_fast.train.step`).
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    # Newer torch names the buffer option forward_sync_buffers and deprecates broadcast_buffers (PyTorch 2.11 on
    # the GPU machine knows only it).
    option = "forward_sync_buffers"
    sync_buffers = {option if option in inspect.signature(DDP).parameters else "broadcast_buffers": True}
    ids = [device.index] if device.type == "cuda" else None
    if not cuda_graphs:
        return DDP(core, device_ids=ids, **sync_buffers)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        net = DDP(core, device_ids=ids, **sync_buffers)
    torch.cuda.current_stream(device).wait_stream(side)
    return net


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


__all__ = [
    "CpuSyncBatchNorm",
    "DistEnv",
    "StopSignals",
    "convert_sync_bn",
    "init_distributed",
    "pick_device",
    "wrap_ddp",
]
