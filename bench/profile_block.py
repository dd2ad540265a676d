"""Where one SoundNet-8 block's time goes on a GPU: the top CUDA kernels of its bf16 training forward + backward.

    python -m bench.profile_block [--block conv1] [--batch 64] [--seconds 20] [--top 8]

Runs the block (conv -> BN -> ReLU -> pool, at the input length it sees in a clip) three ways - eager PyTorch
(cuDNN, ``cudnn.benchmark``), ``torch.compile`` of the same module, and the fused Triton op - and prints, for each,
the median step time (CUDA events, 10 steps after 3 warm-up steps) and the ``torch.profiler`` table of its CUDA
kernels over 3 steps. A developer tool: it asserts nothing; needs CUDA.
"""

from __future__ import annotations

import argparse
import sys

import torch

from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.model import SOUNDNET8_TRUNK, Block, conv_out_len


def block_input(name: str, batch: int, samples: int) -> tuple[Block, torch.Tensor]:
    """A fresh block ``name`` of SoundNet-8 and a random bf16-ready input of the length it sees in the clip."""
    c_in, length = 1, samples
    for spec in SOUNDNET8_TRUNK:
        if spec.name == name:
            x = torch.randn(batch, c_in, length, device="cuda") * (64.0 if c_in == 1 else 1.0)
            return Block(c_in, spec).cuda().train(), x.requires_grad_(c_in > 1)
        length = conv_out_len(length, spec.kernel, spec.stride, spec.padding)
        length = length // spec.pool if spec.pool else length
        c_in = spec.out_channels
    raise SystemExit(f"--block {name}: not a SoundNet-8 block ({', '.join(s.name for s in SOUNDNET8_TRUNK)})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile_block", description=__doc__.splitlines()[0])
    ap.add_argument("--block", default="conv1")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_block needs CUDA", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    block, x = block_input(args.block, args.batch, int(args.seconds * SAMPLE_RATE))
    variants = {"eager": block, "compile": torch.compile(block)}
    fused = Block(block[0].in_channels, block.spec, backend="fused").cuda().train()
    fused.load_state_dict(block.state_dict())
    variants["fused"] = fused
    for name, module in variants.items():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            grad = torch.randn_like(module(x))

        def step(module=module, grad=grad) -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = module(x)
            y.backward(grad)

        for _ in range(3):
            step()
        times = []
        for _ in range(10):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        times.sort()
        print(f"\n## {args.block} {name}: median {times[5]:.3f} ms per forward + backward (batch {args.batch})")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.top, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
