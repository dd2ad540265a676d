"""Train-step throughput (clips/s): one optimizer step of SoundNet-8 with the recipe's KL loss and 1000/401 heads.

Variants, all from the same initialisation on the same batch, in one run so the ratios are fair:
``eager`` is plain PyTorch (model, the loss written out, ``torch.optim.Adam`` with its default foreach path) - the
figure every ratio divides by; ``eager-bf16`` the same under bf16 autocast; ``reference`` the trainer's own step
(``train.step.Stepper``: fused Adam, grad norm, device-side skip of non-finite steps) with the reference ops.
On a GPU also ``compile`` (the trainer's step around ``torch.compile(model)``, bf16), ``fused`` (the Triton kernels,
bf16), ``auto`` (the Triton kernels where ``soundnet_fast.model.fused_pays``, cuDNN elsewhere) and ``fused+graphs``
/ ``auto+graphs`` (the same captured whole in one CUDA graph). Parity: the first step's loss against
``eager``'s. Sizes: the recipe's batch 64 of 20 s clips on a GPU, batch 2 on a CPU (bench/conftest.py); clips are
never shorter than SoundNet-8's minimum (9.5 s).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.conftest import DEVICE, ON_GPU, Sizes
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.model import SoundNet8
from soundnet_fast.train.losses import LAMBDA
from soundnet_fast.train.step import Stepper

TRAIN_FLOP_PER_20S_CLIP = 3.3e9  # docs/design.md#performance-ceiling
VARIANTS = ["eager", "eager-bf16", "reference", "compile", "fused", "fused+graphs", "auto", "auto+graphs"]
GPU_ONLY = {"compile", "fused", "fused+graphs", "auto", "auto+graphs"}


def _batch(sizes: Sizes) -> tuple[Tensor, dict[str, Tensor], int]:
    length = max(sizes.samples, SoundNet8.min_length())
    t = SoundNet8.output_lengths(length)["heads"]
    g = torch.Generator().manual_seed(0)
    b = sizes.batch
    audio = (torch.rand(b, 1, length, generator=g) * 2 - 1) * 256  # x256, docs/design.md#input
    targets = {
        h: F.softmax(torch.randn(b, c, t, generator=g) * 3, dim=1) for h, c in (("objects", 1000), ("scenes", 401))
    }
    return audio.to(DEVICE), {k: v.to(DEVICE) for k, v in targets.items()}, length


def _model() -> SoundNet8:
    torch.manual_seed(0)
    model = SoundNet8().to(DEVICE)
    model.check_inputs = False
    return model


def _plain_step(bf16: bool, audio: Tensor, targets: dict[str, Tensor]) -> tuple[Callable[[], Tensor], SoundNet8]:
    """What a user would write: forward, the loss of docs/design.md#loss spelled out, backward, Adam."""
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
            objects, scenes = model(audio)
        loss = torch.zeros((), device=DEVICE)
        for logits, p in ((objects, targets["objects"]), (scenes, targets["scenes"])):
            kl = F.kl_div(F.log_softmax(logits.float(), dim=1), p, reduction="sum")  # explicit sum / count
            loss = loss + kl / (p.shape[0] * p.shape[1])
        loss = LAMBDA / (2 * objects.shape[2]) * loss
        loss.backward()
        opt.step()
        return loss.detach()

    return step, model


def _trainer_step(variant: str, audio: Tensor, targets: dict[str, Tensor]) -> Callable[[], Tensor]:
    model = _model()
    graphs = variant.endswith("+graphs")
    backend = variant.split("+")[0] if variant.startswith(("fused", "auto")) else "reference"
    model.set_backend(backend)
    net = torch.compile(model) if variant == "compile" else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), fused=True, capturable=graphs)
    precision = "fp32" if variant == "reference" else "bf16"
    try:
        from soundnet_fast import kernels

        loss_backend = "fused" if backend != "reference" and hasattr(kernels, "kl_div") else "reference"
    except ImportError:
        loss_backend = "reference"
    st = Stepper(net, model, opt, device=DEVICE, backend=loss_backend, precision=precision, cuda_graphs=graphs)
    if graphs:
        st.capture(audio, targets)

    def step() -> Tensor:
        st.step(audio, targets)
        return st.counters["loss"]

    return step


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_step(timed, sizes: Sizes, variant: str) -> None:
    if variant in GPU_ONLY and not ON_GPU:
        pytest.skip(f"{variant}: GPU only (on a CPU it would time the reference again, or fail to compile)")
    audio, targets, length = _batch(sizes)
    ref_step, _ = _plain_step(False, audio, targets)
    ref_loss = float(ref_step())
    if variant in ("eager", "eager-bf16"):
        step, _ = _plain_step(variant == "eager-bf16", audio, targets)
        first = float(step())
    else:
        step = _trainer_step(variant, audio, targets)
        first = float(step())  # the counters sum the losses: after one call, the first step's loss
    err = abs(first - ref_loss) / abs(ref_loss)
    tol = 1e-4 if variant in ("eager", "reference") else 3e-2
    flops = TRAIN_FLOP_PER_20S_CLIP * length / (20 * SAMPLE_RATE) * sizes.batch
    timed(step, group=f"train step {length / SAMPLE_RATE:.1f}s", variant=variant, items=sizes.batch, parity_err=err,
          tol=tol, flops=flops, dtype="fp32" if variant in ("eager", "reference") else "bf16")  # fmt: skip
    assert err <= tol, (first, ref_loss)
