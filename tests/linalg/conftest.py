"""Fixtures of the linalg tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _single_thread():
    # The test matrices are tiny (≤ 200 × 150). On a shared 2-core machine, OpenMP's second
    # thread mostly spins waiting for a core: a 60×40 SVD took 21 ms with 2 threads against
    # 0.9 ms with 1. The benchmarks, not the tests, measure multi-threaded speed.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cuda():
    """The CUDA device, or a skip saying why there is none."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
    return torch.device("cuda")
