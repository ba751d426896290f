"""Spectral statistics against closed forms on matrices with known spectra, and the power-law fit
against planted power laws and WeightWatcher's own estimator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lowrank_lab.analysis.spectra import (
    SPECTRA_BASE_COLUMNS,
    effective_rank,
    energy_captured,
    fit_power_law,
    numerical_rank,
    spectra_columns,
    spectral_stats,
)
from lowrank_lab.linalg import singular_values


def matrix_with_spectrum(s: torch.Tensor, m: int, n: int, seed: int = 0) -> torch.Tensor:
    """``U diag(s) Vᵀ`` (float64) with Haar-like orthonormal U (m × k), V (n × k), k = len(s)."""
    g = torch.Generator().manual_seed(seed)
    k = s.numel()
    U = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64)).Q
    return (U * s.to(torch.float64)) @ V.T


def pareto_sample(alpha: float, size: int, xmin: float, seed: int) -> np.ndarray:
    """Continuous power law p(x) ∝ x^-alpha on [xmin, ∞), by inverting its CDF."""
    u = np.random.default_rng(seed).random(size)
    return xmin * u ** (-1.0 / (alpha - 1.0))


def test_flat_spectrum_closed_forms():
    # k equal singular values c in a 40x30 matrix of rank k: every statistic has a closed form.
    k, c = 12, 3.0
    W = matrix_with_spectrum(torch.full((k,), c), 40, 30)
    S = singular_values(W)  # all 30, 18 of them roundoff-zero
    st = spectral_stats(S, (40, 30), ranks=[4, 12, 20])
    assert st["fro_norm"] == pytest.approx(c * math.sqrt(k), rel=1e-12)
    assert st["spec_norm"] == pytest.approx(c, rel=1e-12)
    assert st["stable_rank"] == pytest.approx(k, rel=1e-12)
    assert st["effective_rank"] == pytest.approx(k, rel=1e-9)
    assert st["numerical_rank"] == k
    assert st["energy_r4"] == pytest.approx(4 / k, rel=1e-12)
    assert st["energy_r12"] == pytest.approx(1.0, rel=1e-12)
    assert st["energy_r20"] == pytest.approx(1.0, rel=1e-12)


def test_decaying_spectrum_closed_forms():
    s = torch.tensor([4.0, 2.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    W = matrix_with_spectrum(s, 9, 7)
    st = spectral_stats(singular_values(W), (9, 7), ranks=[1, 3])
    fro2 = 16 + 4 + 4 + 1 + 1
    assert st["fro_norm"] == pytest.approx(math.sqrt(fro2), rel=1e-12)
    assert st["stable_rank"] == pytest.approx(fro2 / 16, rel=1e-12)
    p = s / s.sum()  # Roy & Vetterli: the distribution of σ (not σ²)
    assert st["effective_rank"] == pytest.approx(math.exp(-float((p * p.log()).sum())), rel=1e-9)
    assert st["energy_r1"] == pytest.approx(16 / fro2, rel=1e-12)
    assert st["energy_r3"] == pytest.approx(24 / fro2, rel=1e-12)
    assert st["numerical_rank"] == 5


def test_stats_from_exact_spectrum_equal_stats_from_svd():
    # Synthetic matrices hand over their exact singular values; the row must not depend on that.
    s = torch.logspace(0, -2, 20, dtype=torch.float64)
    W = matrix_with_spectrum(s, 50, 20)
    exact = spectral_stats(s, (50, 20), ranks=[5], eps=torch.finfo(torch.float64).eps)
    computed = spectral_stats(singular_values(W), (50, 20), ranks=[5])
    for key, value in exact.items():
        assert computed[key] == pytest.approx(value, rel=1e-9), key


def test_rank_one_and_zero_matrix():
    W = torch.outer(torch.arange(1.0, 6.0), torch.arange(1.0, 4.0))
    st = spectral_stats(singular_values(W), (5, 3))
    assert st["stable_rank"] == pytest.approx(1.0, rel=1e-5)
    assert st["effective_rank"] == pytest.approx(1.0, rel=1e-5)
    assert st["numerical_rank"] == 1
    zero = spectral_stats(torch.zeros(3), (5, 3), ranks=[2])
    assert zero["fro_norm"] == 0.0 and zero["spec_norm"] == 0.0 and zero["numerical_rank"] == 0
    assert zero["effective_rank"] == 0.0
    assert math.isnan(zero["stable_rank"]) and math.isnan(zero["alpha"]) and math.isnan(zero["energy_r2"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numerical_rank_matches_numpy_matrix_rank(dtype):
    g = torch.Generator().manual_seed(1)
    W = (torch.randn(60, 7, generator=g, dtype=dtype) @ torch.randn(7, 45, generator=g, dtype=dtype))
    S = singular_values(W)
    expected = int(np.linalg.matrix_rank(W.numpy()))
    assert numerical_rank(S, (60, 45), torch.finfo(dtype).eps) == expected == 7


def test_effective_rank_bounds():
    s = torch.tensor([5.0, 1.0, 0.1, 0.0])
    assert 1.0 <= effective_rank(s) <= 3.0
    assert energy_captured(s, 0) == 0.0
    assert energy_captured(s, 10) == pytest.approx(1.0)


def test_columns_follow_ranks():
    assert spectra_columns([8, 64]) == SPECTRA_BASE_COLUMNS + ["energy_r8", "energy_r64"]


@pytest.mark.parametrize("alpha", [2.0, 3.5])
def test_alpha_recovers_planted_power_law_within_sigma(alpha):
    # One sample, fixed seed: the estimate is within two of its own stated standard errors.
    x = pareto_sample(alpha, 2000, xmin=0.5, seed=0)
    fit = fit_power_law(x)
    assert abs(fit.alpha - alpha) <= 2 * fit.sigma, (fit.alpha, fit.sigma)
    assert fit.sigma == pytest.approx((fit.alpha - 1) / math.sqrt(fit.n_tail))
    assert 0 < fit.D < 0.1 and fit.n_tail <= fit.n_evals == 2000


def test_alpha_sigma_is_calibrated_over_many_samples():
    # The stated sigma is the MLE's standard error at a fixed xmin; choosing xmin by KS adds
    # variance it does not count (Clauset et al. 2009, §3.4), so ask for 2-sigma coverage of most
    # samples and an unbiased centre, not 68% within 1 sigma.
    z = []
    for seed in range(20):
        fit = fit_power_law(pareto_sample(2.5, 2000, xmin=0.5, seed=seed))
        z.append((fit.alpha - 2.5) / fit.sigma)
    z = np.array(z)
    assert np.mean(np.abs(z) <= 2) >= 0.75
    assert abs(np.mean(z)) < 0.6


def test_alpha_of_a_matrix_with_planted_power_law_esd():
    # Eigenvalues of WᵀW drawn from a power law; the matrix carries them as σ² and its computed
    # spectrum gives back the exponent.
    lam = np.sort(pareto_sample(3.0, 256, xmin=1.0, seed=3))[::-1]
    W = matrix_with_spectrum(torch.tensor(np.sqrt(lam.copy())), 300, 256, seed=3)
    st = spectral_stats(singular_values(W), (300, 256))
    assert abs(st["alpha"] - 3.0) <= 2 * st["alpha_sigma"]
    assert st["alpha_n_tail"] >= 50


def test_alpha_is_scale_invariant_and_needs_enough_eigenvalues():
    x = pareto_sample(2.5, 500, xmin=1.0, seed=4)
    a, b = fit_power_law(x), fit_power_law(x / 384.0)  # WᵀW vs WᵀW / N
    assert a.alpha == pytest.approx(b.alpha, rel=1e-12) and a.n_tail == b.n_tail
    few = fit_power_law(x[:10])
    assert math.isnan(few.alpha) and few.n_evals == 10


def test_fit_matches_weightwatcher_estimator():
    ww = pytest.importorskip("weightwatcher.WW_powerlaw")
    rng = np.random.default_rng(5)
    x = (rng.pareto(1.5, 700) + 1.0) * 0.3 + rng.random(700) * 0.05
    ref = ww.WWFit(x)
    ours = fit_power_law(x)
    assert ours.alpha == pytest.approx(ref.alpha, rel=1e-12)
    assert ours.D == pytest.approx(ref.D, rel=1e-9)
    assert ours.sigma == pytest.approx(ref.sigma, rel=1e-12)
    assert ours.xmin == ref.xmin
