"""Exact SVD: reconstruction, the Eckart–Young optimum, sign convention, error measures."""

from __future__ import annotations

import pytest
import torch

from lowrank_lab.linalg import (
    Factorization,
    exact_svd,
    optimal_error,
    relative_errors,
    singular_values,
    spectral_norm_estimate,
    svd_flip,
    tall_svd,
    truncated_svd,
)

from ._matrices import fro_error, known_spectrum, power_law, tail_norm

SHAPES = [(30, 20), (20, 30), (25, 25), (1, 9), (9, 1)]


def _eye(k: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.eye(k, dtype=dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_full_rank_reconstructs_W(shape, dtype, tol):
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    f = truncated_svd(W, min(shape))
    assert fro_error(W, f.reconstruct()) <= tol * float(torch.linalg.matrix_norm(W.double()))


@pytest.mark.parametrize("shape", [(40, 30), (30, 40)])
@pytest.mark.parametrize("rank", [1, 7, 29])
def test_truncation_error_is_the_eckart_young_optimum(shape, rank):
    sigma = power_law(min(shape))
    W = known_spectrum(*shape, sigma, seed=3)
    f = truncated_svd(W, rank)
    # Frobenius: exactly sqrt(Σ_{i>r} σ_i²), known from the construction, not from the SVD under test.
    assert fro_error(W, f.reconstruct()) == pytest.approx(tail_norm(sigma, rank), rel=1e-10)
    rel_fro, _ = relative_errors(W, f, spectral=False)
    assert rel_fro == pytest.approx(optimal_error(sigma, rank)[0], rel=1e-10)
    # Spectral: exactly σ_{r+1}.
    spec = float(torch.linalg.matrix_norm(W - f.reconstruct(), ord=2))
    assert spec == pytest.approx(float(sigma[rank]), rel=1e-10)


def test_factors_are_orthonormal_and_singular_values_descend():
    W = torch.randn(50, 35, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f = truncated_svd(W, 12)
    assert f.left.shape == (50, 12) and f.right.shape == (12, 35) and f.core.shape == (12,)
    torch.testing.assert_close(f.left.T @ f.left, _eye(12, W.dtype), atol=1e-12, rtol=0)
    torch.testing.assert_close(f.right @ f.right.T, _eye(12, W.dtype), atol=1e-12, rtol=0)
    s = f.core
    assert bool((s[:-1] >= s[1:]).all()) and bool((s >= 0).all())
    torch.testing.assert_close(s, torch.linalg.svdvals(W)[:12])
    assert f.method == "svd"
    assert f.info["singular_values"].shape == (35,)


def test_singular_values_match_the_construction():
    sigma = power_law(20, slope=-0.7)
    W = known_spectrum(32, 20, sigma, seed=5)
    torch.testing.assert_close(singular_values(W), sigma, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_singular_values_never_come_back_in_half_precision(dtype):
    W = torch.randn(12, 8).to(dtype)
    S = singular_values(W)
    assert S.dtype == torch.float32
    # Computed from the rounded matrix, not rounded afterwards.
    torch.testing.assert_close(S, torch.linalg.svdvals(W.float()))
    assert singular_values(W, reference=True).dtype == torch.float64


# --- svd_flip -------------------------------------------------------------------------------------


def test_svd_flip_makes_the_largest_entry_of_each_left_vector_positive():
    W = torch.randn(20, 15, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    Uf, Vhf = svd_flip(U, Vh)
    idx = Uf.abs().argmax(dim=0)
    assert bool((Uf[idx, torch.arange(15)] > 0).all())
    # The product is unchanged: each pair (u_i, v_i) flips together.
    torch.testing.assert_close((Uf * S) @ Vhf, W)
    # Whatever signs the solver chose, the flipped factors are the same.
    flips = torch.tensor([1.0 if i % 3 else -1.0 for i in range(15)], dtype=W.dtype)
    Uf2, Vhf2 = svd_flip(U * flips, Vh * flips[:, None])
    torch.testing.assert_close(Uf2, Uf, rtol=0, atol=0)
    torch.testing.assert_close(Vhf2, Vhf, rtol=0, atol=0)


def test_svd_flip_keeps_a_zero_vector_unchanged():
    U = torch.zeros(4, 2)
    Vh = torch.ones(2, 3)
    Uf, Vhf = svd_flip(U, Vh)
    assert torch.equal(Uf, U) and torch.equal(Vhf, Vh)


def test_truncated_svd_factors_follow_the_sign_convention():
    W = torch.randn(25, 18, generator=torch.Generator().manual_seed(4))
    f = truncated_svd(W, 6)
    idx = f.left.abs().argmax(dim=0)
    assert bool((f.left[idx, torch.arange(6)] > 0).all())


# --- tall_svd: QR first (Chan's R-SVD) ----------------------------------------------------------


@pytest.mark.parametrize("shape", [(200, 18), (40, 20), (39, 20), (25, 25), (7, 1), (1, 1)])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_tall_svd_is_a_thin_svd_on_both_sides_of_the_qr_crossover(shape, dtype, tol):
    # (40, 20) takes the QR path, (39, 20) and the square ones go straight to torch.linalg.svd
    sigma = power_law(min(shape), slope=-0.7)
    M = known_spectrum(*shape, sigma, seed=3).to(dtype)
    U, S, Vh = tall_svd(M)
    k = min(shape)
    assert U.shape == (shape[0], k) and S.shape == (k,) and Vh.shape == (k, shape[1])
    assert U.dtype == S.dtype == Vh.dtype == dtype
    assert torch.allclose(S, sigma.to(dtype), rtol=0, atol=tol * float(sigma[0]) * 10)
    assert bool((S[:-1] >= S[1:]).all())
    eye = torch.eye(k, dtype=dtype)
    assert torch.allclose(U.T @ U, eye, atol=tol * 10) and torch.allclose(Vh @ Vh.T, eye, atol=tol * 10)
    assert float(torch.linalg.norm(U * S @ Vh - M) / torch.linalg.norm(M)) < tol * 10


def test_tall_svd_of_a_rank_deficient_panel_is_finite_with_zero_trailing_values():
    M = torch.zeros(50, 6, dtype=torch.float64)
    M[:, :2] = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    U, S, Vh = tall_svd(M)
    assert bool(torch.isfinite(U).all() and torch.isfinite(Vh).all())
    assert float(S[2:].abs().max()) < 1e-12 * float(S[0])
    assert torch.allclose(U * S @ Vh, M, atol=1e-12)


# --- MiLoRA: the smallest triplets ----------------------------------------------------------------


def test_which_smallest_keeps_the_bottom_triplets():
    sigma = power_law(20, slope=-1.0)
    W = known_spectrum(30, 20, sigma, seed=6)
    r = 4
    f = truncated_svd(W, r, which="smallest")
    assert f.method == "svd-smallest"
    torch.testing.assert_close(f.core, sigma[-r:], rtol=1e-10, atol=0)  # bottom r, still descending
    torch.testing.assert_close(f.left.T @ f.left, _eye(r, W.dtype), atol=1e-12, rtol=0)
    torch.testing.assert_close(f.right @ f.right.T, _eye(r, W.dtype), atol=1e-12, rtol=0)
    # What is left after removing the bottom r is the top 20 - r part: error = ‖σ_{1..20-r}‖.
    assert fro_error(W, f.reconstruct()) == pytest.approx(float(sigma[:-r].norm()), rel=1e-10)
    # The bottom directions are orthogonal to the top ones.
    top = truncated_svd(W, 20 - r)
    assert float((top.left.T @ f.left).abs().max()) < 1e-10


def test_which_must_be_largest_or_smallest():
    with pytest.raises(ValueError, match="which must be 'largest' or 'smallest'"):
        truncated_svd(torch.randn(5, 4), 2, which="middle")


# --- optimal_error --------------------------------------------------------------------------------


def test_optimal_error_values():
    S = torch.tensor([3.0, 2.0, 1.0])
    fro, spec = optimal_error(S, 1)
    assert fro == pytest.approx((5 / 14) ** 0.5)
    assert spec == pytest.approx(2 / 3)
    assert optimal_error(S, 0) == pytest.approx((1.0, 1.0))
    assert optimal_error(S, 3) == (0.0, 0.0)
    assert optimal_error(S, 10) == (0.0, 0.0)
    assert optimal_error(torch.zeros(4), 2) == (0.0, 0.0)
    with pytest.raises(ValueError, match="rank must be >= 0, got -1"):
        optimal_error(S, -1)


# --- spectral_norm_estimate / relative_errors -----------------------------------------------------


def test_spectral_norm_estimate_matches_matrix_norm_ord2():
    sigma = power_law(30, slope=-1.0)  # σ₂/σ₁ = 0.5: converges to roundoff in 30 steps
    W = known_spectrum(40, 30, sigma, seed=7)
    assert spectral_norm_estimate(W) == pytest.approx(float(torch.linalg.matrix_norm(W, ord=2)), rel=1e-12)


def test_spectral_norm_estimate_is_a_lower_bound_on_a_hard_spectrum():
    # Gaussian matrix: σ₂/σ₁ close to 1, the slow case of power iteration.
    W = torch.randn(200, 100, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    true = float(torch.linalg.matrix_norm(W, ord=2))
    est = spectral_norm_estimate(W)
    assert est <= true * (1 + 1e-12)
    assert est >= 0.98 * true
    assert spectral_norm_estimate(torch.zeros(5, 3)) == 0.0


@pytest.mark.parametrize("method_kw", [{}, {"which": "smallest"}])
def test_relative_errors_match_matrix_norms(method_kw):
    sigma = power_law(24, slope=-1.0)
    W = known_spectrum(30, 24, sigma, seed=9)
    f = truncated_svd(W, 5, **method_kw)
    R = W - f.reconstruct()
    fro, spec = relative_errors(W, f, n_iter=200)
    assert fro == pytest.approx(float(torch.linalg.matrix_norm(R) / torch.linalg.matrix_norm(W)), rel=1e-10)
    expected = float(torch.linalg.matrix_norm(R, ord=2) / torch.linalg.matrix_norm(W, ord=2))
    assert spec == pytest.approx(expected, rel=1e-6)


def test_relative_errors_of_zero_matrix_and_without_spectral():
    Z = torch.zeros(6, 4)
    assert relative_errors(Z, truncated_svd(Z, 2)) == (0.0, 0.0)
    W = torch.randn(6, 4)
    fro, spec = relative_errors(W, truncated_svd(W, 2), spectral=False)
    assert fro > 0 and spec != spec  # NaN


def test_relative_errors_of_half_precision_factors_are_computed_in_float32():
    W = torch.randn(40, 30, generator=torch.Generator().manual_seed(10))
    f = truncated_svd(W.bfloat16(), 30)
    fro, _ = relative_errors(W.bfloat16(), f, spectral=False)
    # Full-rank bf16 factors: only their own rounding (2^-8) remains, not a bf16 residual.
    assert 0 < fro < 2e-2


def test_relative_errors_of_a_large_float32_matrix_are_accurate():
    # torch.linalg.matrix_norm accumulates 4M float32 squares: ~1e-4 off at 2048² (3e-3 at
    # 11008×4096), and the errors of numerator and denominator need not cancel — here a rank-1
    # matrix plus 1% noise, whose residual is the noise, read 1.0e-4 off. relative_errors must
    # match float64 to ~1e-7.
    g = torch.Generator().manual_seed(11)
    u, v = torch.randn(2048, 1, generator=g), torch.randn(1, 2048, generator=g)
    W = u @ v + 1e-2 * torch.randn(2048, 2048, generator=g)
    f = Factorization(left=u, right=v)
    expected = float(
        torch.linalg.matrix_norm(W.double() - (u @ v).double()) / torch.linalg.matrix_norm(W.double())
    )
    assert relative_errors(W, f, spectral=False)[0] == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("shape", [(24, 61), (61, 24), (33, 33)])
def test_exact_svd_of_W_and_its_transpose_agree(shape, dtype, tol):
    # A wide matrix is factored through its transpose (issue 31): U, Vh orthonormal, W rebuilt, and
    # W and Wᵀ give the same singular values and mirrored factors whichever orientation is wide.
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(4), dtype=dtype)
    k = min(shape)
    U, S, Vh = exact_svd(W)
    Ut, St, Vht = exact_svd(W.T.contiguous())
    assert U.shape == (shape[0], k) and Vh.shape == (k, shape[1]) and S.shape == (k,)
    scale = float(S[0])
    torch.testing.assert_close(S, St, atol=tol * scale, rtol=0)
    torch.testing.assert_close(S, torch.linalg.svdvals(W.double()).to(dtype), atol=tol * scale, rtol=0)
    torch.testing.assert_close(U.T @ U, _eye(k, dtype), atol=tol * 10, rtol=0)
    torch.testing.assert_close(Vh @ Vh.T, _eye(k, dtype), atol=tol * 10, rtol=0)
    torch.testing.assert_close((U * S) @ Vh, W, atol=tol * 10 * scale, rtol=0)
    torch.testing.assert_close((Ut * St) @ Vht, W.T, atol=tol * 10 * scale, rtol=0)
    sv, sv_t = singular_values(W), singular_values(W.T.contiguous())
    torch.testing.assert_close(sv, sv_t, atol=tol * scale, rtol=0)


@pytest.mark.parametrize("shape", [(20, 70), (70, 20)])
@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_truncated_svd_of_W_and_its_transpose_mirror_each_other(shape, which):
    # Truncations of W and Wᵀ are each other's transposes (reconstructions agree), factors are
    # row-major and orthonormal, whichever side the SVD ran on.
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    f, ft = truncated_svd(W, 9, which=which), truncated_svd(W.T.contiguous(), 9, which=which)
    torch.testing.assert_close(f.core, ft.core, atol=1e-12, rtol=0)
    torch.testing.assert_close(f.reconstruct(), ft.reconstruct().T, atol=1e-12, rtol=0)
    assert f.left.is_contiguous() and f.right.is_contiguous()
    torch.testing.assert_close(f.left.T @ f.left, _eye(9, W.dtype), atol=1e-12, rtol=0)
    torch.testing.assert_close(f.right @ f.right.T, _eye(9, W.dtype), atol=1e-12, rtol=0)
