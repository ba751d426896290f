"""Shared fixtures: where the real data lives, and the GPU gate."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import lowrank_lab  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)

REPO = Path(__file__).resolve().parents[1]
# CI and sessions have ../shared beside the clone; LOWRANK_LAB_SHARED_DATA overrides it.
SHARED_DATA = Path(os.environ.get("LOWRANK_LAB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (GLUE, GSM8K, stories260K); the test is skipped, saying why, when it is absent."""
    if not (SHARED_DATA / "MANIFEST.md").exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (set LOWRANK_LAB_SHARED_DATA to its folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def stories260k(shared_data: Path) -> Path:
    path = shared_data / "models" / "stories260K" / "stories260K.bin"
    if not path.exists():
        pytest.skip(f"llama2.c checkpoint not found at {path}")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `gpu` tests run only where CUDA exists, even when selected with -m gpu.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_global_rng() -> None:
    # Some tests draw from torch's global RNG; seed it so each test is reproducible run on its own.
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one intra-op thread for a module: the one thread pin of the suite.

    A module asks with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``; a whole test
    folder with an autouse fixture in its conftest.py that requests this one. Tests that run tiny
    models, small matrices or in-process CLIs make many small ops; with two OpenMP threads the idle
    one spins between them, and on the shared 2-core machine the training tests took ~6x longer
    (164 s vs 26 s measured), a 384x384 SVD 100x, a 60x40 SVD 21 ms against 0.9 ms and the MiniLM
    intruder case 157 s against 6.8 s. The previous count comes back after. (A subprocess gets
    ``OMP_NUM_THREADS=1`` in its environment instead.)
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def benchmark_script():
    """``benchmark_script("adapter_init")`` → the module ``benchmarks/adapter_init.py``, imported.

    The benchmarks are scripts, not a package; a test that checks one of their pure functions loads
    it here (registered in ``sys.modules`` while loaded, as its dataclasses need).
    """
    import importlib.util
    import sys

    loaded = {}

    def load(name: str):
        if name not in loaded:
            path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
            spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    yield load
    for name in loaded:
        sys.modules.pop(f"_benchmark_{name}", None)
