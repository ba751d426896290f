"""Test matrices with a known spectrum, built the way scikit-learn's tests build theirs.

``W = U diag(σ) Vᵀ`` with Haar-random orthonormal ``U`` (m × k) and ``V`` (n × k), k = min(m, n):
the singular values are ``σ`` by construction, so the Eckart–Young optimum is known without
trusting the SVD under test.
"""

from __future__ import annotations

import torch


def haar_orthonormal(
    n: int, k: int, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """``(n, k)`` matrix with orthonormal columns, Haar-distributed (QR of a Gaussian, Mezzadri 2007)."""
    G = torch.randn(n, k, generator=generator, dtype=torch.float64)
    Q, R = torch.linalg.qr(G)
    signs = torch.sign(torch.diagonal(R))
    signs[signs == 0] = 1.0
    return (Q * signs).to(dtype)


def power_law(k: int, slope: float = -0.4) -> torch.Tensor:
    """``σ_i = i^slope``, i = 1..k (float64): the slowly decaying spectrum of real LLM weights."""
    return torch.arange(1, k + 1, dtype=torch.float64) ** slope


def known_spectrum(
    m: int, n: int, sigma: torch.Tensor, *, seed: int = 0, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """An ``(m, n)`` matrix whose singular values are exactly ``sigma`` (length min(m, n), descending)."""
    k = min(m, n)
    assert sigma.numel() == k, (sigma.numel(), k)
    g = torch.Generator().manual_seed(seed)
    U = haar_orthonormal(m, k, g)
    V = haar_orthonormal(n, k, g)
    return ((U * sigma.to(torch.float64)) @ V.T).to(dtype)


def fro_error(W: torch.Tensor, approx: torch.Tensor) -> float:
    """``‖W − approx‖_F`` in float64."""
    return float(torch.linalg.matrix_norm(W.double() - approx.double()))


def tail_norm(sigma: torch.Tensor, rank: int) -> float:
    """``‖W − W_r‖_F = sqrt(Σ_{i>r} σ_i²)``, the Eckart–Young optimum in absolute terms."""
    return float(torch.sqrt(torch.sum(sigma.double()[rank:] ** 2)))
