"""Fixtures of the linalg tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """The test matrices are tiny (≤ 200 × 150): one torch thread (tests/conftest.py). The
    benchmarks, not the tests, measure multi-threaded speed."""


@pytest.fixture
def cuda():
    """The CUDA device, or a skip saying why there is none."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
    return torch.device("cuda")
