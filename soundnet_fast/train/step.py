"""One training step - forward, loss, backward, optimizer - on the device, with no host synchronisation.

:class:`Stepper` runs the same code eagerly (CPU or GPU) or captured whole in one CUDA graph (PyTorch's
"whole-network capture" recipe, torch.cuda.graphs). A non-finite loss or gradient skips the step by predication
rather than by a host-side ``if``:

- fused Adam reads a device ``found_inf`` flag (the mechanism ``torch.amp.GradScaler`` uses) and then leaves
  parameters, moments and its step count untouched;
- BatchNorm running statistics, which the forward updates before anyone knows the loss, are restored from a copy;
- device counters record the skip, the current and the longest run of non-finite steps, and the sums the trainer
  logs; the trainer reads them only at log points (:meth:`Stepper.read`, one host sync).

What a captured step relies on (each is true of the code below; break one and a replay silently computes
something else):

1. Static inputs. :meth:`Stepper.capture` copies the first batch into static audio / target tensors (the audio
   in the model's ``input_buffer``, bf16 under bf16 autocast); each replay copies the next batch into them
   (``copy_``), so every batch must have the same shapes, device and teacher keys (the training loader drops the
   last partial batch: ``drop_last=True``).
2. No host sync and no host-side branching inside the body: no ``.item()``, no ``if`` on a tensor; the skip is
   ``found_inf`` plus ``torch.where``; every tensor the body reads that is made on the host (``_divisor``,
   ``force_skip``, ``found_inf``, the counters, the BN backups) is made once in ``__init__``, since a
   host-to-device copy is not allowed while capturing.
3. The optimizer is ``torch.optim.Adam(fused=True, capturable=True)`` (the trainer sets ``capturable`` with
   ``--cuda-graphs``): its step count lives on the device. The learning rate is a Python float, constant for
   the run (the recipe has no schedule), so it is baked into the graph; a changed lr needs a new capture.
4. Gradients are set to ``None`` just before capture, so backward allocates them from the graph's private pool
   and each replay writes (not accumulates) them; a replay therefore never calls ``zero_grad``.
5. Warm-up runs on a side stream before capture (3 iterations; 11 under DDP, as the notes ask for DDP), with
   ``force_skip`` set: it initialises Adam's state and cuDNN's choices without changing any weight, moment,
   step count or BN statistic, and the counters are restored after it.
6. The autocast cache is off while capturing (``cache_enabled=False``): cached casts would be freed memory.
7. Under DDP: the wrapper is built on a side stream (``distributed.wrap_ddp``), NCCL's async error handling is
   off before the group starts (``distributed.init_distributed``), and the one ``all_reduce`` of the loss
   statistics is captured with the rest.
8. ``capture_error_mode="thread_local"``: the loader's read-ahead thread may copy the next batch to the GPU
   while the main thread captures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from soundnet_fast.model import SoundNet
from soundnet_fast.train.losses import HEADS, LAMBDA, LossKind, distill_loss


class Stepper:
    """One training step on the device, skipping a non-finite step by predication (no host sync).

    ``net`` is what the forward calls (the model, or its DDP / compiled wrapper); ``core`` the plain model.
    ``optimizer`` must be ``torch.optim.Adam(..., fused=True)`` (``ValueError`` otherwise): it skips through
    ``found_inf``. Device counters (``counters``) hold the skips, the current and longest run of non-finite steps,
    and the per-interval sums the trainer logs (:attr:`SUMS`).
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
        self.force_skip = torch.zeros((), dtype=torch.bool, device=device)  # CUDA-graph warm-up (invariant 5)
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
        # The autocast cache must be off while capturing (invariant 6): cached casts would be freed.
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False if self.cuda_graphs else None
        )

    def _body(self, audio: Tensor, targets: Mapping[str, Tensor]) -> None:
        """The step itself, top to bottom; gradients must be ``None`` or zero on entry."""
        # 1. Keep the BN running statistics the forward is about to move, in case the step is skipped.
        for b, k in zip(self._backup, self.buffers, strict=True):
            b.copy_(k)
        # 2. Forward and loss (docs/design.md#loss).
        with self._autocast():
            objects, scenes = self.net(audio)
        outputs = {"objects": objects, "scenes": scenes}
        loss, shares = distill_loss(outputs, targets, kind=self.loss, lam=self.lam, backend=self.backend)
        # 3. Backward, and whether this step is finite (loss and gradient norm).
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
        # 4. Optimizer: fused Adam skips everything when found_inf is set.
        self.found_inf.copy_(bad.float())
        self.optimizer.step()
        # 5. A skipped step leaves the BN statistics as they were.
        for b, k in zip(self._backup, self.buffers, strict=True):
            k.copy_(torch.where(bad, b, k))
        # 6. Counters: skips, the run of non-finite steps, and the sums of the good steps.
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
        """One step on ``audio`` (B, 1, samples) and ``targets`` {teacher: (B, C, T)}: a replay when captured."""
        if self.graph is not None:
            assert self._static is not None
            s_audio, s_targets = self._static
            s_audio.copy_(audio, non_blocking=True)  # invariant 1
            for k, v in targets.items():
                s_targets[k].copy_(v, non_blocking=True)
            self.graph.replay()
            return
        self.optimizer.zero_grad(set_to_none=True)
        self._body(audio, targets)

    def capture(self, audio: Tensor, targets: Mapping[str, Tensor], warmup: int = 3) -> None:
        """Capture the whole step in one CUDA graph (torch.cuda.graphs, "whole-network capture").

        ``audio`` / ``targets`` give the static buffers' shapes (invariant 1). Warm-up (invariant 5) runs
        ``warmup`` skipped steps on a side stream; ``warmup`` is 11 under DDP. Raises ``RuntimeError`` off CUDA.
        """
        if self.device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA device, not {self.device}")
        self._static = (self._static_audio(audio), {k: v.clone() for k, v in targets.items()})
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
        self.optimizer.zero_grad(set_to_none=True)  # invariant 4
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # invariant 8
            self._body(s_audio, s_targets)
        self.force_skip.fill_(False)
        for k, v in saved.items():
            self.counters[k].copy_(v)
        self.graph = graph

    def _static_audio(self, audio: Tensor) -> Tensor:
        """The static audio (invariant 1) holding ``audio``: the model's :meth:`SoundNet.input_buffer` (for a fused
        conv1 laid out inside the zero-padded waveform its kernels read, so no replay pads it), in bf16 under bf16
        autocast (the cast autocast makes on entry, done by each replay's ``copy_`` instead)."""
        dtype = torch.bfloat16 if self.bf16 and audio.is_floating_point() else audio.dtype
        static = self.core.input_buffer(audio.shape[0], audio.shape[-1], dtype, audio.device)
        return static.copy_(audio)

    def read(self, reset: bool = True) -> dict[str, float]:
        """Host copy of the counters (one sync); with ``reset`` the per-interval sums start again from zero."""
        names = list(self.counters)
        values = dict(zip(names, torch.stack([self.counters[k].double() for k in names]).cpu().tolist(), strict=True))
        if reset:
            for k in self.SUMS:
                self.counters[k].zero_()
        return values

    def state_dict(self) -> dict[str, Tensor]:
        """The device counters (a checkpoint holds them, so a resumed run logs and stops as an unbroken one)."""
        return dict(self.counters)

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        for k, v in state.items():
            if k in self.counters:
                self.counters[k].copy_(v)


__all__ = ["Stepper"]
