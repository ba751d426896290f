"""Same code on CUDA: every method on CUDA tensors (float32, bf16) agrees with the CPU result.

Run with ``pytest -m gpu tests/linalg``; skipped (deselected by default) without a CUDA device.
"""

from __future__ import annotations

import pytest
import torch

from lowrank_lab.linalg import FACTORIZATIONS, relative_errors, truncated_svd

from ._matrices import known_spectrum, power_law

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

METHODS = sorted(FACTORIZATIONS)
# Relative Frobenius distance allowed between the CPU and the CUDA approximation: float32
# roundoff (LAPACK vs cuSOLVER, different blocking), amplified by the conditioning of the core for
# the Nyström forms; bf16: both sides round their factors to 2^-8.
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
SKETCH_TOL = {torch.float32: 2e-3, torch.bfloat16: 5e-2}


def _matrix(dtype: torch.dtype) -> torch.Tensor:
    # σ_k ∝ k^-0.5 with distinct values: the rank-8 subspace is well defined (σ_8/σ_9 = 1.06).
    return known_spectrum(96, 64, power_law(64, -0.5), seed=0, dtype=torch.float32).to(dtype)


def _tensors(f):
    return [t for t in (f.left, f.right, f.core) if t is not None]


def compare_devices(method: str, dtype: torch.dtype, device: torch.device) -> None:
    """Factor on the CPU and on ``device`` with the same (CPU) generator seed, and compare."""
    W = _matrix(dtype)
    cpu = FACTORIZATIONS[method](W, 8, generator=1)
    dev = FACTORIZATIONS[method](W.to(device), 8, generator=1)
    for t in _tensors(dev):
        assert t.device.type == device.type and t.dtype == dtype
        assert bool(torch.isfinite(t).all())
    a = cpu.reconstruct().double()
    b = dev.reconstruct().double().cpu()
    tol = (SKETCH_TOL if method in {"nystrom", "nystrom-pinv", "rlu"} else TOL)[dtype]
    assert float(torch.linalg.matrix_norm(a - b)) <= tol * float(torch.linalg.matrix_norm(a))
    e_cpu, _ = relative_errors(W, cpu, spectral=False)
    e_dev, _ = relative_errors(W.to(device), dev, spectral=False)
    assert e_dev == pytest.approx(e_cpu, rel=tol, abs=tol)
    if method in {"svd", "rsvd"}:
        # svd_flip pins the signs, so the factors themselves agree, not only their product.
        torch.testing.assert_close(dev.core.cpu().float(), cpu.core.float(), rtol=tol, atol=0)
        torch.testing.assert_close(dev.left.cpu().float(), cpu.left.float(), rtol=0, atol=10 * tol)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_agrees_with_cpu(method, dtype, cuda):
    compare_devices(method, dtype, cuda)


def test_cuda_generator_and_reference_mode(cuda):
    W = _matrix(torch.float32).to(cuda)
    g = torch.Generator(device=cuda).manual_seed(0)
    f = FACTORIZATIONS["rsvd"](W, 8, generator=g)
    assert f.left.device.type == "cuda"
    ref = FACTORIZATIONS["rsvd"](W, 8, reference=True, out_dtype=torch.float64)
    assert ref.left.dtype == torch.float64 and ref.left.device.type == "cuda"
    # The exact SVD with the most accurate cuSOLVER driver gives the Eckart–Young optimum.
    s = truncated_svd(W, 8, driver="gesvd", reference=True)
    sigma = power_law(64, -0.5)
    expected = float(torch.sqrt((sigma[8:] ** 2).sum() / (sigma**2).sum()))
    assert relative_errors(W, s, spectral=False)[0] == pytest.approx(expected, rel=1e-5)
