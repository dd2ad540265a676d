"""Sections 3 and 6e: clips/s of the trunk forward + backward and of the product's own train step.

The step is ``soundnet_fast.train.step.Stepper`` - what ``soundnet-fast train`` runs - around
``soundnet_fast.model.SoundNet8`` (both heads, 1000 objects / 401 scenes), the KL loss, backward and
``torch.optim.Adam(fused=True)``, bf16 autocast, on a batch of random clips x256 with softmax targets. Variants,
built from the same seed: ``eager`` (backend "reference", ``torch.backends.cudnn.benchmark = True``), ``fused``
(backend "fused": the Triton kernels for the blocks and the KL loss), ``auto`` (backend "auto": the Triton kernels
where ``soundnet_fast.model.fused_pays``, cuDNN elsewhere, the fused KL loss) and ``fused+graphs`` / ``auto+graphs``
(the same step captured whole in one CUDA graph by ``Stepper.capture`` and replayed). Each is warmed up, then
timed in A/B/C/C/B/A blocks (:func:`~bench.gpu_check.common.time_abab`) of at least 15 steps, so each variant gets
30 timed steps and a drift shows as a difference between its two block medians; the SM clock is read before and
after. The first step's loss of the fused variants is checked against eager's (relative difference <= 3e-2, bf16).
Trunk forward + backward (conv1..conv7, no heads, no optimizer) is timed the same way for eager, fused and auto.
torch.compile runs in its own process (section 3b, :mod:`~bench.gpu_check.sec_compile_model`).

Smoke run (CPU, interpreter): a toy model (SoundNet-8's, or SoundNet-5's, conv1-conv2 with small heads, at its
2,014-sample minimum) - SoundNet-8's 209,374-sample minimum makes even one interpreted step take minutes - and one
step per block; CUDA graphs: "skipped: no CUDA". Also recorded: what the trunk's forward keeps for the backward
(saved activation bytes per clip, and on a GPU the memory the forward leaves allocated), eager vs fused.
"""

from __future__ import annotations

from typing import Any

from .common import HEAD_CLASSES, clock_snapshot, time_abab
from .predictions import NO_PREDICTION, Predictions, device_key
from .records import FAIL, INFO, PASS, SKIP

LOSS_TOL = 3e-2


def toy_arch(base: str = "soundnet8") -> tuple[type, int, int]:
    """(model class, objects, scenes) of the smoke run's toy model: the first two blocks of SoundNet-8 (or -5) with
    small heads, fed its minimum length (2,014 samples; one head frame)."""
    from soundnet_fast.model import SOUNDNET5_TRUNK, SOUNDNET8_HEADS, SOUNDNET8_TRUNK, SoundNet

    class ToyNet(SoundNet):
        trunk_specs = (SOUNDNET8_TRUNK if base == "soundnet8" else SOUNDNET5_TRUNK)[:2]
        head_specs = SOUNDNET8_HEADS
        arch = "toy"

    ToyNet.__name__ = f"Toy{'SoundNet8' if base == 'soundnet8' else 'SoundNet5'}(conv1-conv2)"
    return ToyNet, 16, 8


def batch_for(torch: Any, arch: type, n_obj: int, n_scn: int, batch: int, samples: int, device: str):
    """A batch of random clips (x256) and softmax targets; ``samples`` 0 means the model's minimum length."""
    length = max(samples, arch.min_length())
    frames = arch.output_lengths(length)["heads"]
    g = torch.Generator().manual_seed(0)
    audio = (torch.rand(batch, 1, length, generator=g) * 2 - 1) * 256  # x256, docs/design.md#input
    targets = {
        h: torch.softmax(torch.randn(batch, c, frames, generator=g) * 3, 1)
        for h, c in (("objects", n_obj), ("scenes", n_scn))
    }
    return audio.to(device), {k: v.to(device) for k, v in targets.items()}, length


def parse_variant(variant: str) -> tuple[str, bool, bool]:
    """(model backend, torch.compile?, CUDA graphs?) of a variant name: ``eager`` (the reference ops), ``fused``,
    ``auto`` (soundnet_fast.model.fused_pays), each optionally ``+graphs``; ``compile`` or ``compile+<backend>``."""
    parts = variant.split("+")
    compiled = parts[0] == "compile"
    backend = (parts[1] if len(parts) > 1 else "reference") if compiled else parts[0]
    return ("reference" if backend == "eager" else backend), compiled, "graphs" in parts[1:]


def make_stepper(torch: Any, arch: type, classes: tuple[int, int], variant: str, device: str, audio, targets):
    """A Stepper for one variant (:func:`parse_variant`), as the trainer builds it (soundnet_fast/train/trainer.py)."""
    from soundnet_fast.train.step import Stepper

    torch.manual_seed(0)
    model = arch(*classes).to(device)
    model.check_inputs = False  # the trainer's setting: the finiteness check syncs the host
    backend, compiled, graphs = parse_variant(variant)
    fused = backend != "reference"  # the fused KL loss goes with either fused backend, as in the trainer
    model.set_backend(backend)
    net = torch.compile(model) if compiled else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), fused=True, capturable=graphs)
    st = Stepper(
        net,
        model,
        opt,
        device=torch.device(device),
        backend="fused" if fused else "reference",
        precision="bf16",
        cuda_graphs=graphs,
    )
    if graphs:
        st.capture(audio, targets)
    return st, model


def first_loss(st: Any, audio, targets) -> float:
    st.step(audio, targets)
    return float(st.read()["loss"])


def timing_row(name: str, t: dict[str, Any], batch: int, base: dict[str, Any] | None) -> dict[str, Any]:
    med = t["median"]
    return {
        "variant": name,
        "median ms": round(med, 3),
        "p10-p90 ms": f"{t['p10']:.3f}-{t['p90']:.3f}",
        "spread %": round(100 * (t["p90"] - t["p10"]) / med, 1),
        "block medians ms (A, A')": ", ".join(f"{b:.3f}" for b in t["block_medians"]),
        "n": t["n"],
        "clips/s": round(batch * 1e3 / med, 1),
        "vs eager": f"{base['median'] / med:.2f}x" if base else "1.00x",
    }


def run(ctx: Any) -> None:
    """Section 3: SoundNet-8 (the smoke run: the toy model)."""
    import torch

    if ctx.sizes.smoke:
        arch, n_obj, n_scn = toy_arch()
    else:
        from soundnet_fast.model import SoundNet8 as arch

        n_obj, n_scn = HEAD_CLASSES["objects"], HEAD_CLASSES["scenes"]
    throughput(ctx, torch, arch, (n_obj, n_scn), trunk=True)
    from . import sec_graphs

    sec_graphs.run(ctx)


def run_soundnet5(ctx: Any) -> None:
    """Section 6e: SoundNet-5 (its own kernel shapes: 32-256 channels, pool3); the toy model on the smoke run."""
    import torch

    if ctx.sizes.smoke:
        arch, n_obj, n_scn = toy_arch("soundnet5")
    else:
        from soundnet_fast.model import SoundNet5 as arch

        n_obj, n_scn = HEAD_CLASSES["objects"], HEAD_CLASSES["scenes"]
    throughput(ctx, torch, arch, (n_obj, n_scn), trunk=False)


def throughput(ctx: Any, torch: Any, arch: type, classes: tuple[int, int], trunk: bool) -> None:
    w, sz, dev = ctx.w, ctx.sizes, ctx.device
    torch.backends.cudnn.benchmark = True
    reps, warm = (1, 0) if sz.smoke else (15, 3)  # smoke: the first-step loss check is the warm-up
    audio, targets, length = batch_for(torch, arch, *classes, sz.batch, 0 if sz.smoke else sz.samples, dev)
    w.note(
        f"{arch.__name__}, batch {sz.batch} x {length:,} samples, bf16 autocast, training; steps per block: {reps}, in "
        f"A/B/.../B/A order ({2 * reps} timed steps per variant) after {warm} warm-up steps; CUDA events, no host sync "
        "between steps. 'vs eager' divides eager's median by the variant's."
    )
    variants = ["eager", "fused", "auto"] + (["fused+graphs", "auto+graphs"] if dev == "cuda" else [])
    steppers, losses = {}, {}
    for v in variants:
        with w.part(f"build {v}"):
            steppers[v] = make_stepper(torch, arch, classes, v, dev, audio, targets)
            losses[v] = first_loss(steppers[v][0], audio, targets)
    for v in variants[1:]:
        if v in losses and "eager" in losses:
            d = abs(losses[v] - losses["eager"]) / max(abs(losses["eager"]), 1e-30)
            row = {"variant": v, "loss": losses[v], "eager loss": losses["eager"], "rel diff": d, "tol": LOSS_TOL}
            w.row("first-step loss vs eager", row, PASS if d <= LOSS_TOL else FAIL)
    if dev != "cuda":
        for v in ("fused+graphs", "auto+graphs"):
            w.row("first-step loss vs eager", {"variant": v, "loss": "skipped: no CUDA"}, SKIP)
    pred = Predictions(_triton_version(), sz.batch, sz.seconds, ctx.args.predictions)
    dev_name = torch.cuda.get_device_name(0) if dev == "cuda" else "CPU"
    pclips = pred.clips_per_s(device_key(dev_name)) if arch.__name__ == "SoundNet8" else None
    if trunk:
        with w.part("trunk fwd+bwd"):
            fns = {}
            for v in ("eager", "fused", "auto"):
                if v in steppers:
                    fns[v] = _trunk_fn(torch, steppers[v][1], audio, dev)
            before = clock_snapshot() if dev == "cuda" else {}
            res = time_abab(torch, fns, dev, reps, warmup=warm)
            after = clock_snapshot() if dev == "cuda" else {}
            for v, t in res.items():
                row = timing_row(v, t, sz.batch, res.get("eager"))
                w.row("trunk forward + backward (all blocks; no heads, no optimizer)", row, INFO)
            _clocks(w, "trunk", before, after)
        with w.part("trunk memory"):
            for v in ("eager", "fused", "auto"):
                if v in steppers:
                    w.row(
                        "what the trunk's forward keeps for the backward, per clip",
                        _memory(torch, steppers[v][1], audio, dev, v),
                        INFO,
                    )
    with w.part("train step"):
        fns = {v: (lambda st=st: st.step(audio, targets)) for v, (st, _) in steppers.items()}
        before = clock_snapshot() if dev == "cuda" else {}
        res = time_abab(torch, fns, dev, reps, warmup=warm)
        after = clock_snapshot() if dev == "cuda" else {}
        for v, t in res.items():
            row = timing_row(v, t, sz.batch, res.get("eager"))
            if v.startswith("fused") and arch.__name__ == "SoundNet8":  # the static model covers all-fused only
                row["predicted clips/s"] = round(pclips, 1) if pclips else NO_PREDICTION
            w.row("train step (Stepper: forward, KL loss, backward, fused Adam)", row, INFO)
        if dev != "cuda":
            for v in ("fused+graphs", "auto+graphs"):
                w.row(
                    "train step (Stepper: forward, KL loss, backward, fused Adam)",
                    {"variant": v, "median ms": "skipped: no CUDA"},
                    SKIP,
                )
        _clocks(w, "train step", before, after)
        if arch.__name__ == "SoundNet8":
            w.note(f"Predictions: {pred.source}.")


def _triton_version() -> str:
    import triton

    return triton.__version__


def _trunk_fn(torch: Any, model: Any, audio: Any, dev: str):
    with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16):
        shape = model._trunk(audio).shape
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(dev, torch.bfloat16)
    params = list(model.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        with torch.autocast(dev, dtype=torch.bfloat16):
            h = model._trunk(audio)
        h.backward(grad)

    return step


def _memory(torch: Any, model: Any, audio: Any, dev: str, variant: str) -> dict[str, Any]:
    """Saved activations of the trunk's forward (storages the autograd graph holds, parameters and buffers
    excluded: ``kernels.saved_activation_bytes``) and, on a GPU, the memory the forward left allocated."""
    from soundnet_fast.kernels import saved_activation_bytes

    batch = audio.shape[0]
    exclude = list(model.parameters()) + list(model.buffers())
    if dev == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
    with torch.autocast(dev, dtype=torch.bfloat16):
        h = model._trunk(audio)
    saved = saved_activation_bytes(h, exclude=exclude) / batch
    alloc = (torch.cuda.memory_allocated() - before) / batch if dev == "cuda" else None
    del h
    return {
        "variant": variant,
        "saved MB/clip": round(saved / 1e6, 3),
        "allocated after forward MB/clip": round(alloc / 1e6, 3) if alloc is not None else "- (CPU)",
    }


def _clocks(w: Any, what: str, before: dict[str, Any], after: dict[str, Any]) -> None:
    if before or after:
        w.row(
            "clocks before / after",
            {
                "measurement": what,
                **{k: f"{before.get(k, '?')} / {after.get(k, '?')}" for k in sorted(set(before) | set(after))},
            },
        )
