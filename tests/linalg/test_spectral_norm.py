"""Golub–Kahan–Lanczos estimate of ‖A‖₂: a lower bound, exact on easy cases, accurate on slow spectra."""

from __future__ import annotations

import pytest
import torch

from lowrank_lab.linalg import randomized_svd, relative_errors, spectral_norm_estimate


@pytest.mark.parametrize("shape", [(1, 7), (7, 1), (1, 1), (3, 3), (5, 40), (40, 5)])
def test_exact_when_the_krylov_space_is_exhausted(shape):
    A = torch.randn(*shape, dtype=torch.float64)
    assert spectral_norm_estimate(A) == pytest.approx(float(torch.linalg.matrix_norm(A, ord=2)), rel=1e-12)


def test_invariant_start_breaks_down_cleanly():
    # For A = 2I every start vector is a singular vector: the recurrence must stop, not amplify roundoff.
    assert spectral_norm_estimate(2 * torch.eye(300)) == pytest.approx(2.0, rel=1e-6)
    assert spectral_norm_estimate(torch.zeros(4, 6)) == 0.0


def test_accurate_on_rsvd_residuals_of_a_slowly_decaying_spectrum():
    # Residuals of weights have σ_{r+1} ≈ σ_{r+2} ≈ ...; 30 power steps read these ~2% low.
    g = torch.Generator().manual_seed(0)
    n = 400
    U = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    W = (U * torch.arange(1, n + 1, dtype=torch.float64) ** -0.4) @ V.T
    for r in (8, 64):
        R = W - randomized_svd(W, r).reconstruct()
        exact = float(torch.linalg.matrix_norm(R, ord=2))
        est = spectral_norm_estimate(R)
        assert est <= exact * (1 + 1e-12)
        assert est >= 0.999 * exact


def test_known_norms_give_the_same_errors():
    W = torch.randn(60, 50, dtype=torch.float64)
    f = randomized_svd(W, 5)
    S = torch.linalg.svdvals(W)
    given = relative_errors(W, f, norms=(float(S.norm()), float(S[0])))
    assert given == pytest.approx(relative_errors(W, f), rel=1e-9)
