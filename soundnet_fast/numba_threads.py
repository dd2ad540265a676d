"""numba's parallel kernels on torch's thread count, leaving torch's count as it was.

Used around every ``parallel=True`` numba launch: the CPU inference conv (:mod:`soundnet_fast.inference.cpu_conv_numba`)
and the training BatchNorm/ReLU/pool (:mod:`soundnet_fast.train.cpu_bn_relu_pool`). numba's OpenMP layer sets the
calling thread's OpenMP thread count to every core when it starts its pool, and torch reads that same setting:
without this, ``torch.set_num_threads(1)`` (or ``OMP_NUM_THREADS=1``) silently became 2 threads after the first
launch (measured on the project's 2-core CPU, both users). Needs numba; import it only where numba is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numba
import torch


@contextlib.contextmanager
def torch_threads() -> Iterator[None]:
    """Run the numba launches inside on as many threads as torch uses (numba's own default is every core; capped
    at ``NUMBA_NUM_THREADS``), and restore torch's thread count afterwards if numba changed it. Calling thread only."""
    n = torch.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
