"""SyncBatchNorm semantics: two gloo processes on the CPU, each with half of the batch, must match batch
norm over the concatenated batch (outputs, input gradients, summed parameter gradients, running stats)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from soundnet_fast.kernels import conv1d_bn_relu
from soundnet_fast.kernels._common import use_triton
from tests.helpers.kernels import make_case, max_rel, run_reference

WORLD = 2
CONF = dict(stride=2, padding=3, pool=3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str, deterministic: bool) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        case = make_case(4, 3, 8, 7, 50, seed=21)
        grad = torch.load(os.path.join(out_dir, "grad.pt"), weights_only=True)
        half = slice(2 * rank, 2 * rank + 2)  # rank r holds batch items 2r, 2r + 1
        ps = [t.float().clone() for t in case.params()]
        ps[0] = ps[0][half].contiguous()
        ps = [p.requires_grad_() for p in ps]
        rm, rv, nbt = case.rm.float().clone(), case.rv.float().clone(), torch.tensor(0)
        out = conv1d_bn_relu(
            *ps,
            rm,
            rv,
            training=True,
            process_group=dist.group.WORLD,
            num_batches_tracked=nbt,
            deterministic=deterministic,
            **CONF,
        )
        out.backward(grad[half].float())
        torch.save(
            {
                "out": out.detach(),
                "grads": [p.grad for p in ps],
                "rm": rm,
                "rv": rv,
                "nbt": nbt,
                "triton": use_triton(ps[0]),
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_full_batch(tmp_path) -> None:
    case = make_case(4, 3, 8, 7, 50, seed=21)
    out_r, grads_r, rm_r, rv_r, gz_abs, grad = run_reference(case, None, training=True, **CONF)
    torch.save(grad, tmp_path / "grad.pt")
    # the default (atomics) backward; the all-reduce sits between its two passes either way
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), False), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    # the ranks ran the same kernels as this process (Triton's interpreter under TRITON_INTERPRET=1)
    assert all(r["triton"] == use_triton(case.x) for r in ranks)
    assert max_rel(torch.cat([r["out"] for r in ranks]), out_r) <= 1e-5
    assert max_rel(torch.cat([r["grads"][0] for r in ranks]), grads_r[0]) <= 1e-5  # dx per rank
    # parameter gradients stay local (as SyncBatchNorm's): their sum over ranks (what DDP all-reduces)
    # equals the full-batch gradient
    for i, name in enumerate(["x", "weight", "bias", "bn_weight", "bn_bias"]):
        if i == 0:
            continue
        total = sum(r["grads"][i] for r in ranks)
        floor = gz_abs.max().item() if name == "bias" else 0.0
        assert max_rel(total, grads_r[i], floor) <= 1e-5, name
    for r in ranks:
        assert max_rel(r["rm"], rm_r) <= 1e-5 and max_rel(r["rv"], rv_r) <= 1e-5 and int(r["nbt"]) == 1
