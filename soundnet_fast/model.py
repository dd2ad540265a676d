"""SoundNet-8 and SoundNet-5 as layer tables (docs/design.md#model).

Each table row is one block: conv1d -> BatchNorm -> ReLU, optionally followed by a max-pool whose
kernel equals its stride. Blocks keep the state-dict keys of ``nn.Sequential(Conv1d, BatchNorm1d, ReLU)``
(``conv1.0.weight``, ``conv1.1.running_mean``, ...), the layout of the common PyTorch port's
``sound8.pth``. Which implementation runs a block (PyTorch reference ops, the fused Triton kernels, or the
inference form with BN folded into the conv) is decided in exactly one place: :meth:`Block.forward`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from soundnet_fast.constants import BACKENDS, HEAD_CLASSES, SAMPLE_RATE

Backend = Literal["reference", "fused", "auto"]


def fused_pays(conv: nn.Conv1d, x: Tensor, training: bool) -> bool:
    """``backend="auto"``: whether the fused Triton block beats cuDNN's conv + BatchNorm + ReLU (+ pool) for ``conv``
    on ``x``. A shape rule, measured (bench/results/gpu_check-h200-2026-11-30, H200, bf16, batch 64, 20 s clips,
    training forward + backward per block): the fused waveform conv (C_in 1, conv1) ran 3.0x eager; the fused
    conv2-conv7 (C_in 16-512) 0.37-0.66x. So in training on CUDA the fused kernels run where C_in is 1, cuDNN
    everywhere else; eval and inference (not measured) keep the reference ops and the folded form."""
    return training and x.is_cuda and conv.in_channels == 1


def cpu_fusion_pays(z: Tensor, bn: nn.Module) -> bool:
    """``backend="auto"`` on a CPU: whether BN + ReLU (+ pool) after the conv run fused by numba in training
    (:mod:`soundnet_fast.train.cpu_bn_relu_pool`; the conv stays oneDNN's). Measured on the project's 2-core CPU,
    SoundNet-5 conv1 at batch 16 x 3 s, forward + backward of those ops: 160 ms fused, 485 ms eager. Not with a
    synchronised BN (distributed training) or where the fused op does not apply (its ``supports``)."""
    if not bn.training or z.device.type != "cpu" or _sync_group(bn) is not None:
        return False
    from soundnet_fast.train.cpu_bn_relu_pool import supports  # numba; imported on first use

    return supports(z, bn)


@dataclass(frozen=True)
class ConvSpec:
    """One row of the layer table: conv (k, s, p) then BN + ReLU, then an optional max-pool (k = s)."""

    name: str
    out_channels: int
    kernel: int
    stride: int
    padding: int
    pool: int | None = None  # max-pool kernel == stride, floor mode
    pool_name: str | None = None


@dataclass(frozen=True)
class HeadSpec:
    """A classifier head: a plain conv1d (no BN), softmax over classes per time step."""

    name: str
    kernel: int
    stride: int
    padding: int


@dataclass(frozen=True)
class Geometry:
    """Where a layer's frames sit in the input: frame j covers samples
    ``[offset + j * hop, offset + j * hop + receptive_field)`` (offset may be negative: padding)."""

    hop: int
    offset: int
    receptive_field: int

    def then(self, kernel: int, stride: int, padding: int) -> Geometry:
        return Geometry(
            hop=self.hop * stride,
            offset=self.offset - padding * self.hop,
            receptive_field=self.receptive_field + (kernel - 1) * self.hop,
        )

    def frame_times(self, num_frames: int, sample_rate: int = SAMPLE_RATE) -> Tensor:
        """Centre of each frame's receptive field, in seconds from the start of the input."""
        j = torch.arange(num_frames, dtype=torch.float64)
        return (self.offset + j * self.hop + self.receptive_field / 2) / sample_rate


# docs/design.md#soundnet-8: the SoundNet-8 table (T at 441,000 samples in the comments).
SOUNDNET8_TRUNK: tuple[ConvSpec, ...] = (
    ConvSpec("conv1", 16, 64, 2, 32, pool=8, pool_name="pool1"),  # 220,501 -> pool1 27,562
    ConvSpec("conv2", 32, 32, 2, 16, pool=8, pool_name="pool2"),  # 13,782 -> pool2 1,722
    ConvSpec("conv3", 64, 16, 2, 8),  # 862
    ConvSpec("conv4", 128, 8, 2, 4),  # 432
    ConvSpec("conv5", 256, 4, 2, 2, pool=4, pool_name="pool5"),  # 217 -> pool5 54
    ConvSpec("conv6", 512, 4, 2, 2),  # 28
    ConvSpec("conv7", 1024, 4, 2, 2),  # 15
)
# conv8 (objects) and conv8_2 (scenes): k8 s2 p0, T = 4.
SOUNDNET8_HEADS: tuple[HeadSpec, HeadSpec] = (HeadSpec("conv8", 8, 2, 0), HeadSpec("conv8_2", 8, 2, 0))

# docs/design.md#soundnet-5: SoundNet-5 (the original main_train_small.lua).
SOUNDNET5_TRUNK: tuple[ConvSpec, ...] = (
    ConvSpec("conv1", 32, 64, 2, 32, pool=8, pool_name="pool1"),
    ConvSpec("conv2", 64, 32, 2, 16, pool=8, pool_name="pool2"),
    ConvSpec("conv3", 128, 16, 2, 8, pool=8, pool_name="pool3"),
    ConvSpec("conv4", 256, 8, 2, 4),
)
SOUNDNET5_HEADS: tuple[HeadSpec, HeadSpec] = (HeadSpec("conv5", 16, 12, 4), HeadSpec("conv5_2", 16, 12, 4))


def conv_out_len(length: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a conv or floor-mode pool (may be <= 0 when the input is too short)."""
    return (length + 2 * padding - kernel) // stride + 1


class Block(nn.Sequential):
    """conv1d -> BatchNorm1d -> ReLU (-> MaxPool1d with kernel == stride), one module.

    Children are indexed like ``nn.Sequential(Conv1d, BatchNorm1d, ReLU[, MaxPool1d])`` so state dicts
    match the reference layout exactly. ``backend`` picks the implementation.

    Inference form (:meth:`fold_bn_for_inference`): eval-mode BN folded into the conv's weight and bias, and
    max-pool before ReLU (ReLU is monotonic: ``max(relu(a), relu(b)) == relu(max(a, b))``). The folded tensors
    are non-persistent buffers, so state dicts are unchanged; ``load_state_dict`` refolds; ``train()`` unfolds.
    """

    def __init__(self, in_channels: int, spec: ConvSpec, backend: Backend = "reference", eps: float = 1e-5) -> None:
        layers: list[nn.Module] = [
            nn.Conv1d(in_channels, spec.out_channels, spec.kernel, spec.stride, spec.padding),
            # eps 1e-5, momentum 0.1: docs/design.md#batchnorm-and-init (torch nn.BatchNormalization defaults).
            nn.BatchNorm1d(spec.out_channels, eps=eps, momentum=0.1),
            nn.ReLU(),
        ]
        if spec.pool is not None:
            layers.append(nn.MaxPool1d(spec.pool, spec.pool))  # floor mode, as the original
        super().__init__(*layers)
        self.spec = spec
        self.backend: Backend = backend
        self.folded = False  # the inference form runs (fold_bn_for_inference)
        self.register_buffer("folded_weight", None, persistent=False)
        self.register_buffer("folded_bias", None, persistent=False)
        self.register_load_state_dict_post_hook(_refold_after_load)

    def runs_fused(self, x: Tensor) -> bool:
        """Whether :meth:`forward` on ``x`` (or an activation on its device) runs the fused Triton op."""
        return self.backend == "fused" or (self.backend == "auto" and fused_pays(self[0], x, self.training))

    def chain_spec(self, pool: bool = True) -> tuple[int, int, int, int, int | None]:
        """(C_out, kernel, stride, padding, pool): what the block before it passes as ``feeds`` to chain into it."""
        s = self.spec
        return s.out_channels, s.kernel, s.stride, s.padding, s.pool if pool else None

    def forward(  # type: ignore[override]
        self, x: Tensor, pool: bool = True, feeds: tuple | None = None, padded_input: bool = False
    ) -> Tensor:
        """``feeds``: the next fused block's :meth:`chain_spec` (this output is then written into the padded buffer
        it reads: no copy between them); ``padded_input``: x came from a block called with this one's ``feeds``
        (both: ``soundnet_fast.kernels.conv1d_bn_relu``). Unfused blocks ignore them."""
        conv, bn = self[0], self[1]
        pool_k = self.spec.pool if pool else None
        if self.runs_fused(x):  # Triton: BN too
            from soundnet_fast.kernels import conv_bn_relu_modules  # torch + triton only; imported on use

            return conv_bn_relu_modules(
                x, conv, bn, pool=pool_k, process_group=_sync_group(bn), feeds=feeds, padded_input=padded_input
            )
        if self.folded and not _wants_param_grads(conv, bn):  # BN inside the conv; max-pool, then ReLU (they
            if not torch.compiler.is_compiling():  # commute); conv layer features: relu(y). Weight gradients: plain
                self._refold_if_stale()  # ops. Under torch.compile the fold is taken as it stands (no version checks)
            return _folded_conv(x, self.folded_weight, self.folded_bias, conv.stride[0], conv.padding[0], pool_k)
        z = conv(x)
        if self.backend == "auto" and cpu_fusion_pays(z, bn):
            from soundnet_fast.train.cpu_bn_relu_pool import bn_relu_pool

            return bn_relu_pool(z, bn, pool_k)
        y = F.relu(bn(z))
        return F.max_pool1d(y, pool_k, pool_k) if pool_k is not None else y

    @torch.no_grad()
    def fold_bn_for_inference(self) -> bool:
        """Switch to the inference form (the protocol ``soundnet_fast.kernels.fold`` calls). Returns True when
        it folded now, False when the block was already folded or its BN keeps no running statistics (then the
        plain ops keep running). Raises ValueError in training mode: batch statistics cannot be folded."""
        conv, bn = self[0], self[1]
        if self.training or bn.training:
            raise ValueError("fold is for inference: the block is in training mode (call model.eval() first)")
        if self.folded or bn.running_mean is None or bn.running_var is None:
            return False
        d = lambda t: None if t is None else t.double()  # fold in fp64, round once to the conv's dtype
        with torch.inference_mode(False):  # folded inside inference_mode: still plain tensors, usable by autograd
            w, b = fuse_conv_bn_weights(d(conv.weight), d(conv.bias), d(bn.running_mean), d(bn.running_var),
                                        bn.eps, d(bn.weight), d(bn.bias))  # fmt: skip
            self.folded_weight = w.detach().to(conv.weight.dtype)
            self.folded_bias = b.detach().to(conv.weight.dtype)
        self._folded_from = _sources(conv, bn)
        self.folded = True
        return True

    @torch.no_grad()
    def _refold_if_stale(self) -> None:
        """Fold again when a conv / BN tensor changed since the fold: replaced (``load_state_dict(assign=True)``,
        ``torch.func.functional_call``) or edited in place (an optimizer step, ``reset_parameters``, ``copy_``)."""
        if self._folded_from != _sources(self[0], self[1]):
            self.folded = False
            self.fold_bn_for_inference()

    def unfold(self) -> bool:
        """Back to the plain conv -> BN -> ReLU ops (the modules were never changed); True when it was folded."""
        was = self.folded
        self.folded, self.folded_weight, self.folded_bias = False, None, None
        return was

    def train(self, mode: bool = True) -> Block:
        """``nn.Module.train``; going back to training first drops the inference form (:meth:`unfold`)."""
        if mode:
            self.unfold()
        return super().train(mode)


def _sources(conv: nn.Module, bn: nn.Module) -> tuple:
    """What a fold was computed from: each conv / BN tensor's identity and in-place version counter (an inference
    tensor has none: -1, so only its replacement is seen)."""
    ts = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    return tuple((id(t), -1 if t.is_inference() else t._version) if t is not None else None for t in ts)


def _wants_param_grads(conv: nn.Module, bn: nn.Module) -> bool:
    """True when autograd would reach the conv / BN weights: the folded copies are detached, so such a forward
    (eval-mode fine-tuning with frozen BN statistics) runs the plain ops instead."""
    if not torch.is_grad_enabled():
        return False
    return any(p is not None and p.requires_grad for p in (conv.weight, conv.bias, bn.weight, bn.bias))


def _fast_cpu_path(x: Tensor, weight: Tensor) -> bool:
    """CPU float32, no autocast, no gradient for ``x``, not being traced / scripted / exported / compiled: the
    polyphase GEMM (its Python loop over chunks would be unrolled by tracing, and it keeps float32 under autocast)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if torch.is_autocast_enabled("cpu") or (torch.is_grad_enabled() and x.requires_grad):
        return False
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
    compiling = torch.compiler.is_compiling()  # dynamo cannot trace the weight caches' weakref bookkeeping
    return not (torch.jit.is_tracing() or torch.jit.is_scripting() or exporting or compiling)


def _folded_conv(x: Tensor, weight: Tensor, bias: Tensor, stride: int, padding: int, pool: int | None) -> Tensor:
    """``relu(max_pool1d(conv1d(x, weight, bias, stride, padding), pool, pool))`` of a folded block (pool None: no
    pool): CPU float32 through :func:`soundnet_fast.inference.cpu_conv.conv_pool_relu`, else ``F.conv1d`` (cuDNN)."""
    if _fast_cpu_path(x, weight):
        from soundnet_fast.inference.cpu_conv import conv_pool_relu  # torch only; imported on first use

        return conv_pool_relu(x, weight, bias, stride, padding, pool)
    y = F.conv1d(x, weight, bias, stride, padding)
    return F.relu(F.max_pool1d(y, pool, pool) if pool is not None else y)


def _refold_after_load(block: nn.Module, incompatible_keys: object) -> None:
    """``load_state_dict`` post-hook: a folded block folds again from the weights just loaded."""
    if getattr(block, "folded", False):
        block.unfold()
        block.fold_bn_for_inference()


def _sync_group(bn: nn.Module):  # -> torch.distributed.ProcessGroup | None
    """The group whose batch statistics a synchronised BN (``nn.SyncBatchNorm``, or any BN that carries a
    ``process_group`` attribute) spans in training; None for a plain per-rank BatchNorm."""
    if not bn.training or not hasattr(bn, "process_group"):
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    return bn.process_group or dist.group.WORLD  # None means the default group, as in nn.SyncBatchNorm


class SoundNet(nn.Module):
    """Fully convolutional 1-D CNN on the raw waveform with an object head and a scene head.

    ``model(x)`` takes ``x`` shaped (B, 1, L), the waveform already scaled x256, and returns
    ``(objects, scenes)`` logits shaped (B, C_obj, T) and (B, C_scene, T).
    """

    trunk_specs: tuple[ConvSpec, ...] = ()
    head_specs: tuple[HeadSpec, HeadSpec] = SOUNDNET8_HEADS
    arch: str = ""

    def __init__(
        self,
        num_objects: int = HEAD_CLASSES["objects"],
        num_scenes: int = HEAD_CLASSES["scenes"],
        backend: Backend = "reference",
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.num_objects, self.num_scenes = int(num_objects), int(num_scenes)
        self.check_inputs = True  # the trainer turns this off: the finiteness check syncs the host
        in_ch = 1
        for spec in self.trunk_specs:
            self.add_module(spec.name, Block(in_ch, spec, backend))
            in_ch = spec.out_channels
        obj, scn = self.head_specs
        # Heads are Sequential(Conv1d) so their keys read conv8.0.weight, as in sound8.pth.
        self.add_module(obj.name, nn.Sequential(nn.Conv1d(in_ch, num_objects, obj.kernel, obj.stride, obj.padding)))
        self.add_module(scn.name, nn.Sequential(nn.Conv1d(in_ch, num_scenes, scn.kernel, scn.stride, scn.padding)))
        self.reset_parameters()

    # ----------------------------------------------------------------------------------- structure
    @property
    def backend(self) -> Backend:
        return self.blocks[0].backend

    def set_backend(self, backend: Backend) -> SoundNet:
        """Switch every block between the reference ops, the fused kernels, and ``"auto"`` (the fused kernels where
        :func:`fused_pays`, the reference ops elsewhere); same weights."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        for block in self.blocks:
            block.backend = backend
        return self

    def inference(self) -> SoundNet:
        """The inference form, in place (eval mode, :meth:`Block.fold_bn_for_inference` on every block); returns
        the model. Outputs equal the eval-mode model's within rounding (max|a - b| <= 1e-5 max|b| per layer, tested);
        the state dict is unchanged; ``train()`` restores the original. ``load_state_dict`` refolds; after an
        in-place weight edit or a swap of tensors refolds on the next forward. Under ``torch.no_grad`` /
        ``inference_mode`` it runs the folded form; where autograd would reach the weights, the plain ops."""
        self.eval()
        for block in self.blocks:
            block.fold_bn_for_inference()
        return self

    def unfold(self) -> SoundNet:
        """Back to the plain conv -> BN -> ReLU ops on every block (in place; the mode is kept); returns the model."""
        for block in self.blocks:
            block.unfold()
        return self

    @property
    def folded(self) -> bool:
        """True when every block runs its inference form (:meth:`inference`)."""
        return all(b.folded for b in self.blocks)

    @property
    def blocks(self) -> list[Block]:
        return [getattr(self, s.name) for s in self.trunk_specs]

    @property
    def objects_head(self) -> nn.Conv1d:
        return getattr(self, self.head_specs[0].name)[0]

    @property
    def scenes_head(self) -> nn.Conv1d:
        return getattr(self, self.head_specs[1].name)[0]

    @classmethod
    def layer_names(cls) -> list[str]:
        """Feature layers in forward order: conv1, pool1, conv2, ..."""
        names: list[str] = []
        for s in cls.trunk_specs:
            names.append(s.name)
            if s.pool_name:
                names.append(s.pool_name)
        return names

    @classmethod
    def geometry(cls, layer: str) -> Geometry:
        """Hop, offset and receptive field in samples of ``layer`` (a trunk layer or a head name)."""
        g = Geometry(hop=1, offset=0, receptive_field=1)
        for s in cls.trunk_specs:
            g = g.then(s.kernel, s.stride, s.padding)
            if layer == s.name:
                return g
            if s.pool:
                g = g.then(s.pool, s.pool, 0)
                if layer == s.pool_name:
                    return g
        for h in cls.head_specs:
            if layer == h.name:
                return g.then(h.kernel, h.stride, h.padding)
        raise ValueError(f"unknown layer {layer!r} for {cls.__name__}; choose one of {cls.layer_names()}")

    @classmethod
    def output_lengths(cls, length: int) -> dict[str, int]:
        """Length of every layer's output for an input of ``length`` samples."""
        out: dict[str, int] = {}
        n = length
        for s in cls.trunk_specs:
            n = conv_out_len(n, s.kernel, s.stride, s.padding)
            out[s.name] = n
            if s.pool:
                n = conv_out_len(n, s.pool, s.pool, 0)
                out[s.pool_name or ""] = n
        h = cls.head_specs[0]
        out["heads"] = conv_out_len(n, h.kernel, h.stride, h.padding)
        return out

    @classmethod
    def min_length(cls, layer: str = "heads") -> int:
        """Fewest input samples that give ``layer`` (default: the heads) at least one frame."""
        return _min_length(cls, layer)

    @classmethod
    def _min_length_search(cls, layer: str) -> int:
        lo, hi = 1, 1 << 24
        while lo < hi:  # output length is monotone in the input length
            mid = (lo + hi) // 2
            if min(v for k, v in cls.output_lengths(mid).items() if _upto(cls, k, layer)) >= 1:
                hi = mid
            else:
                lo = mid + 1
        return lo

    # ------------------------------------------------------------------------------------- weights
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The original initialisation (docs/design.md#batchnorm-and-init): conv weights N(0, 0.01), biases 0,
        BN gamma N(1, 0.02), beta 0, fresh running statistics."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv1d):
                    m.weight.normal_(0.0, 0.01, generator=generator)
                    m.bias.zero_()
                elif isinstance(m, nn.BatchNorm1d):
                    m.weight.normal_(1.0, 0.02, generator=generator)
                    m.bias.zero_()
                    m.reset_running_stats()

    # ------------------------------------------------------------------------------------- forward
    def _check(self, x: Tensor, layer: str) -> None:
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(
                f"{type(self).__name__} expects a waveform shaped (batch, 1, samples), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a float waveform (scaled x256), got {x.dtype}")
        need = self.min_length(layer)
        if x.shape[-1] < need:
            raise ValueError(
                f"input has {x.shape[-1]} samples ({x.shape[-1] / SAMPLE_RATE:.2f} s); {type(self).__name__} "
                f"needs at least {need} samples ({need / SAMPLE_RATE:.2f} s at {SAMPLE_RATE} Hz) for {layer!r}. "
                "Tile shorter clips circularly: soundnet_fast.audio.to_input(wave, min_seconds=10.0)."
            )
        if self.check_inputs and bool(torch.isnan((x * 0).sum())):  # 0 * (NaN or +-Inf) is NaN: one pass
            raise ValueError("input waveform holds non-finite samples (NaN or Inf)")

    def input_buffer(
        self, batch: int, samples: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> Tensor:
        """A zeroed input (batch, 1, samples) to copy batches into (``x.copy_(audio)``), such as a CUDA graph's
        static input. Where conv1 runs fused it lies inside the zero-padded waveform conv1's kernels read
        (``soundnet_fast.kernels.padded_input_buffer``), and the forward reads it there: no padded copy per step
        (SoundNet-8, bf16, batch 64 of 20 s clips: a 113 MB pass). Otherwise a plain tensor. ``dtype``: the one
        conv1 runs in, under autocast the autocast dtype (the op's cast would make a new tensor, padded as usual;
        the trainer passes bf16 under bf16 autocast). ``device`` defaults to the parameters'."""
        device = next(self.parameters()).device if device is None else device
        x = torch.zeros((batch, 1, samples), dtype=dtype, device=device)
        first = self.blocks[0]
        if not first.runs_fused(x):
            return x
        from soundnet_fast.kernels import padded_input_buffer  # torch + triton only; imported on use

        return padded_input_buffer(batch, 1, samples, first.chain_spec(), dtype, device)

    def _padded_input(self, x: Tensor) -> bool:
        """Whether x is an :meth:`input_buffer` conv1 reads in place (never under torch.compile, where the fused
        op does not chain)."""
        if torch.compiler.is_compiling() or not self.blocks[0].runs_fused(x):
            return False
        from soundnet_fast.kernels import is_padded_input

        return is_padded_input(x)

    def _trunk(self, x: Tensor, stop: str | None = None) -> Tensor:
        # x lies in the zero-padded buffer the block reads: an input_buffer, then chained outputs (feeds)
        padded = self._padded_input(x)
        blocks = list(self.blocks)
        for i, block in enumerate(blocks):
            s = block.spec
            if stop == s.name:
                return block(x, pool=False, padded_input=padded)
            last = i + 1 == len(blocks) or (stop is not None and stop == s.pool_name)
            nxt = None if last else blocks[i + 1]
            feeds = None
            if nxt is not None and block.runs_fused(x) and nxt.runs_fused(x):  # two fused blocks: chained
                feeds = nxt.chain_spec(pool=stop != nxt.spec.name)
            x = block(x, feeds=feeds, padded_input=padded)
            padded = feeds is not None
            if last and stop is not None:
                return x
        return x

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x, "heads")
        h = self._trunk(x)
        return (getattr(self, self.head_specs[0].name)(h).contiguous(),
                getattr(self, self.head_specs[1].name)(h).contiguous())  # fmt: skip

    def features(self, x: Tensor, layer: str = "pool5") -> Tensor:
        """Activations of ``layer`` shaped (B, C, T), running only the layers it needs.

        ``type(model).geometry(layer)`` gives each frame's hop and offset in samples.
        """
        if layer not in self.layer_names() and layer not in (h.name for h in self.head_specs):
            raise ValueError(
                f"unknown layer {layer!r} for {type(self).__name__}; choose one of "
                f"{self.layer_names() + [h.name for h in self.head_specs]}"
            )
        self._check(x, layer)
        if layer in (h.name for h in self.head_specs):
            return getattr(self, layer)(self._trunk(x)).contiguous()
        return self._trunk(x, stop=layer).contiguous()  # the folded CPU form runs channels-last: the usual layout

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@functools.cache
def _min_length(cls: type[SoundNet], layer: str) -> int:
    return cls._min_length_search(layer)


def _upto(cls: type[SoundNet], key: str, layer: str) -> bool:
    """True when ``key`` (an output_lengths key) is computed on the way to ``layer``."""
    order = cls.layer_names() + ["heads"]
    target = "heads" if layer in (h.name for h in cls.head_specs) else layer
    return order.index(key) <= order.index(target)


class SoundNet8(SoundNet):
    """SoundNet-8: conv1..conv7 with pool1, pool2, pool5; object head conv8, scene head conv8_2."""

    trunk_specs = SOUNDNET8_TRUNK
    head_specs = SOUNDNET8_HEADS
    arch = "soundnet8"


class SoundNet5(SoundNet):
    """SoundNet-5: conv1..conv4 with pool1..pool3; object head conv5, scene head conv5_2."""

    trunk_specs = SOUNDNET5_TRUNK
    head_specs = SOUNDNET5_HEADS
    arch = "soundnet5"


ARCHITECTURES: dict[str, type[SoundNet]] = {"soundnet8": SoundNet8, "soundnet5": SoundNet5}


def build(
    arch: str,
    num_objects: int = HEAD_CLASSES["objects"],
    num_scenes: int = HEAD_CLASSES["scenes"],
    backend: Backend = "reference",
) -> SoundNet:
    """Build a model by architecture name ('soundnet8' or 'soundnet5')."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](num_objects, num_scenes, backend)


__all__ = [
    "ARCHITECTURES",
    "Block",
    "ConvSpec",
    "Geometry",
    "HeadSpec",
    "SoundNet",
    "SoundNet5",
    "SoundNet8",
    "build",
    "conv_out_len",
]
