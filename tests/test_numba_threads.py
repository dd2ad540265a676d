"""soundnet_fast/numba_threads.py: numba's parallel kernels leave torch's thread count as torch was given it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# One launch of each numba user, in a fresh process (numba starts its OpenMP pool on the first parallel launch).
USERS = {
    "train.cpu_bn_relu_pool": (
        "from soundnet_fast.train import cpu_bn_relu_pool as f\n"
        "z = torch.randn(2, 4, 64, requires_grad=True)\n"
        "f.bn_relu_pool(z, torch.nn.BatchNorm1d(4), 8).sum().backward()\n"
    ),
    "inference.cpu_conv_numba": (
        "from soundnet_fast.inference import cpu_conv_numba as f\n"
        "f.conv_pool_relu(torch.randn(1, 1, 4000), torch.randn(16, 1, 64), None, 2, 32, 8)\n"
    ),
}


@pytest.mark.parametrize("user", list(USERS))
def test_torch_keeps_its_thread_count_in_a_fresh_process(user: str) -> None:
    """numba's OpenMP pool, started by the first kernel, must not change the thread count torch was given
    (OMP_NUM_THREADS=1 became 2 threads after one launch, in both users, before this was handled)."""
    code = "import torch\n" + USERS[user] + "print(torch.get_num_threads())\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1"
