"""LDU from LU with partial pivoting (LoLDU), randomized LU (Shabat et al.), thin QR (OLoRA)."""

from __future__ import annotations

import pytest
import torch

from lowrank_lab.linalg import ldu, optimal_error, randomized_ldu, relative_errors, thin_qr

from ._matrices import fro_error, known_spectrum, power_law

SHAPES = [(12, 8), (8, 12), (10, 10), (1, 6), (6, 1)]


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _finite(f) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in (f.left, f.right, f.dense_core()))


def _assert_ldu_structure(f, W: torch.Tensor, clamped: int = 0) -> None:
    """left[perm] unit lower-trapezoidal with |entries| <= 1, right unit upper-trapezoidal."""
    r = f.rank
    L = f.left[f.info["perm"]]
    assert torch.equal(L[:r].triu(1), torch.zeros(r, r, dtype=L.dtype))
    assert torch.equal(torch.diagonal(L[:r]), torch.ones(r, dtype=L.dtype))
    assert float(L.abs().max()) <= 1.0  # partial pivoting: multipliers are at most 1
    U = f.right
    assert torch.equal(U[:, :r].tril(-1), torch.zeros(r, r, dtype=U.dtype))
    diag = torch.diagonal(U[:, :r])
    ones = diag == 1
    assert int((~ones).sum()) <= clamped  # only rows of clamped pivots differ from 1
    assert bool((diag[~ones].abs() <= 1).all())


# --- LDU ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_full_rank_PLDU_is_W(shape):
    W = _randn(*shape, seed=1)
    f = ldu(W, min(shape))
    assert f.method == "ldu" and f.info["tiny_pivots"] == 0
    assert fro_error(W, f.reconstruct()) <= 1e-13 * float(W.norm())
    _assert_ldu_structure(f, W)


@pytest.mark.parametrize("shape", [(12, 8), (8, 12)])
@pytest.mark.parametrize("rank", [1, 3, 8])
def test_truncation_equals_the_first_columns_of_a_full_lu(shape, rank):
    # LoLDU takes the first r columns of L and rows of U of torch.linalg.lu(W); the panel LU here
    # must give the very same factors.
    W = _randn(*shape, seed=2)
    P, L, U = torch.linalg.lu(W)
    f = ldu(W, rank)
    d = torch.diagonal(U)[:rank]
    torch.testing.assert_close(f.left, (P @ L)[:, :rank], rtol=0, atol=1e-13)
    torch.testing.assert_close(f.core, d, rtol=1e-13, atol=0)
    torch.testing.assert_close(f.right, U[:rank] / d[:, None], rtol=1e-12, atol=1e-13)
    _assert_ldu_structure(f, W)


def test_truncation_error_is_the_schur_complement():
    # W − P L_r D_r U_r has zero pivot rows and columns and the Schur complement elsewhere:
    # partial pivoting is not rank-revealing, so this can be far above σ_{r+1}.
    W = _randn(9, 7, seed=3)
    r = 3
    f = ldu(W, r)
    perm = f.info["perm"]
    R = (W - f.reconstruct())[perm]
    A11, A12, A21, A22 = W[perm][:r, :r], W[perm][:r, r:], W[perm][r:, :r], W[perm][r:, r:]
    torch.testing.assert_close(R[:r], torch.zeros_like(R[:r]), rtol=0, atol=1e-13)
    torch.testing.assert_close(R[:, :r], torch.zeros_like(R[:, :r]), rtol=0, atol=1e-13)
    torch.testing.assert_close(R[r:, r:], A22 - A21 @ torch.linalg.solve(A11, A12), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_all_zero_matrix_gives_finite_factors(dtype):
    W = torch.zeros(7, 5, dtype=dtype)
    f = ldu(W, 5)
    assert _finite(f)
    assert f.info["tiny_pivots"] == 5
    assert torch.equal(f.reconstruct(), W)
    assert bool((f.core != 0).all())  # clamped to ±tau, never a zero to divide by


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", [ldu, randomized_ldu])
def test_an_exact_zero_pivot_is_clamped_and_reconstruction_stays_exact(dtype, method):
    # First column zero: the first pivot is exactly 0 whatever the row order. tau = eps · max|W|
    # with the eps of the coarser of compute and output dtype: float32's eps made the clamped row
    # of U ~7/(1.2e-7·7) = 8e6, inf in float16.
    W = torch.tensor([[0.0, 1.0, 2.0], [0.0, 3.0, 4.0], [0.0, 5.0, 7.0]], dtype=dtype)
    f = method(W, 3)
    assert _finite(f)
    assert f.info["tiny_pivots"] == 1
    eps = torch.finfo(dtype).eps if dtype == torch.float64 else max(torch.finfo(dtype).eps, 2.0**-23)
    assert float(f.core.abs().min()) == pytest.approx(eps * 7.0, rel=1e-2)
    atol = {torch.float64: 1e-14, torch.float32: 1e-5}.get(dtype, 0.1)
    torch.testing.assert_close(f.reconstruct().double(), W.double(), rtol=0, atol=atol)
    if method is ldu:
        _assert_ldu_structure(f, W, clamped=1)


def test_rank_deficient_matrix_gives_finite_factors():
    # Row 1 = 2 · row 0 (exact in floating point), so elimination produces an exactly-zero pivot.
    W = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    f = ldu(W, 3)
    assert _finite(f)
    assert f.info["tiny_pivots"] == 1
    torch.testing.assert_close(f.reconstruct(), W, rtol=0, atol=1e-14)
    _assert_ldu_structure(f, W, clamped=1)


def test_low_rank_matrix_at_full_rank_has_tiny_pivots_and_stays_finite():
    sigma = torch.cat([power_law(3), torch.zeros(7)])
    W = known_spectrum(12, 10, sigma, seed=4, dtype=torch.float32)
    f = ldu(W, 10)
    assert _finite(f)
    assert f.info["tiny_pivots"] >= 1  # roundoff-sized pivots beyond the rank are clamped
    assert fro_error(W, f.reconstruct()) <= 1e-5 * float(W.double().norm())


# --- randomized LU --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_randomized_lu_at_full_rank_reconstructs_W(shape):
    W = _randn(*shape, seed=5)
    f = randomized_ldu(W, min(shape))
    assert f.method == "rlu"
    assert fro_error(W, f.reconstruct()) <= 1e-11 * float(W.norm())


def test_randomized_lu_is_exact_on_a_rank_r_matrix_and_finite_on_zero():
    sigma = torch.cat([power_law(4), torch.zeros(16)])
    W = known_spectrum(30, 20, sigma, seed=6)
    f = randomized_ldu(W, 4)
    assert fro_error(W, f.reconstruct()) <= 1e-11
    # Right factor: a column permutation of a unit upper-trapezoidal matrix; each row has a 1.
    assert bool(((f.right - 1).abs() < 1e-12).any(dim=1).all())
    z = randomized_ldu(torch.zeros(8, 6), 3)
    assert _finite(z) and z.info["tiny_pivots"] == 3 and torch.equal(z.reconstruct(), torch.zeros(8, 6))


def test_randomized_lu_tracks_the_optimum_on_slow_spectra():
    # Rank-revealing where LDU is not: on a σ_k ∝ k^-0.4 spectrum (real weights), within 1.5× of
    # Eckart–Young, while partial-pivoting LDU is well above it.
    sigma = power_law(80)
    W = known_spectrum(120, 80, sigma, seed=7)
    opt = optimal_error(sigma, 10)[0]
    for s in range(3):
        assert relative_errors(W, randomized_ldu(W, 10, generator=s), spectral=False)[0] <= 1.5 * opt
    assert relative_errors(W, ldu(W, 10), spectral=False)[0] > 1.5 * opt


def test_randomized_lu_is_reproducible_per_seed():
    W = _randn(20, 16, seed=8, dtype=torch.float32)
    a, b, c = (randomized_ldu(W, 5, generator=s) for s in (1, 1, 2))
    assert torch.equal(a.left, b.left) and torch.equal(a.right, b.right)
    assert not torch.equal(a.left, c.left)


# --- thin QR --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_qr_full_rank_reconstructs_W(shape):
    W = _randn(*shape, seed=9)
    f = thin_qr(W, min(shape))
    assert f.core is None and f.method == "qr"
    assert fro_error(W, f.reconstruct()) <= 1e-13 * float(W.norm())


def test_qr_truncation_is_the_projection_onto_the_first_columns():
    W = _randn(15, 10, seed=10)
    r = 4
    f = thin_qr(W, r)
    torch.testing.assert_close(f.left.T @ f.left, torch.eye(r, dtype=W.dtype), atol=1e-13, rtol=0)
    assert torch.equal(f.right[:, :r].tril(-1), torch.zeros(r, r, dtype=W.dtype))
    # Q_r Q_rᵀ W: the part of W in the span of its first r columns (OLoRA's B·A).
    torch.testing.assert_close(f.reconstruct(), f.left @ (f.left.T @ W), rtol=0, atol=1e-13)
    torch.testing.assert_close(f.reconstruct()[:, :r], W[:, :r], rtol=0, atol=1e-13)
