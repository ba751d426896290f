"""Randomized SVD (Halko, Martinsson & Tropp 2011): exactness, the HMT bound, torch.svd_lowrank parity."""

from __future__ import annotations

import math

import pytest
import torch

from lowrank_lab.linalg import optimal_error, randomized_range_finder, randomized_svd, relative_errors

from ._matrices import fro_error, known_spectrum, power_law, tail_norm

SPECTRA = {
    # slope of real LLM weights (REFERENCE.md): the tail dominates, every method looks good
    "power-0.4": lambda k: power_law(k, -0.4),
    "power-1": lambda k: power_law(k, -1.0),
    # fast decay: the sketch has to find the few directions that matter
    "exp": lambda k: torch.exp(-torch.arange(k, dtype=torch.float64) / 4),
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- exact cases ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(30, 20), (20, 30), (16, 16), (1, 7), (7, 1)])
def test_full_rank_reconstructs_W(shape):
    W = torch.randn(*shape, generator=_gen(0), dtype=torch.float64)
    f = randomized_svd(W, min(shape))
    assert f.info["sketch"] == min(shape)
    assert fro_error(W, f.reconstruct()) <= 1e-12 * float(W.norm())


@pytest.mark.parametrize("n_iter", [0, 2])
def test_exact_on_a_matrix_of_rank_at_most_r(n_iter):
    sigma = torch.cat([power_law(6), torch.zeros(24)])
    W = known_spectrum(40, 30, sigma, seed=1)
    f = randomized_svd(W, 6, oversample=0, n_iter=n_iter)
    assert fro_error(W, f.reconstruct()) <= 1e-12 * float(W.norm())
    torch.testing.assert_close(f.core, sigma[:6], rtol=1e-12, atol=0)


def test_factors_orthonormal_sorted_and_sign_fixed():
    W = torch.randn(60, 45, generator=_gen(2), dtype=torch.float64)
    f = randomized_svd(W, 9)
    eye = torch.eye(9, dtype=W.dtype)
    torch.testing.assert_close(f.left.T @ f.left, eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(f.right @ f.right.T, eye, atol=1e-12, rtol=0)
    assert bool((f.core[:-1] >= f.core[1:]).all())
    idx = f.left.abs().argmax(dim=0)
    assert bool((f.left[idx, torch.arange(9)] > 0).all())
    assert f.method == "rsvd"
    assert f.info == {**f.info, "sketch": 19, "n_iter": 2, "normalizer": "lu"}


def test_sketch_is_capped_at_min_m_n():
    W = torch.randn(12, 9, generator=_gen(3))
    assert randomized_svd(W, 5, oversample=10).info["sketch"] == 9


# --- Halko–Martinsson–Tropp bound -----------------------------------------------------------------


@pytest.mark.parametrize("spectrum", sorted(SPECTRA))
@pytest.mark.parametrize("p", [2, 5, 10])
def test_plain_sketch_is_within_the_hmt_bound(spectrum, p):
    # HMT Theorem 10.5: E‖W − Ŵ‖_F ≤ (1 + r/(p−1))^½ ‖W − W_r‖_F with no power iteration. The proof
    # (their §9.2) bounds a rank-r matrix inside span(Y), so it holds for the truncated Ŵ too.
    m, n, r = 120, 80, 10
    sigma = SPECTRA[spectrum](n)
    W = known_spectrum(m, n, sigma, seed=11)
    errs = [
        fro_error(W, randomized_svd(W, r, oversample=p, n_iter=0, generator=s).reconstruct())
        for s in range(6)
    ]
    bound = math.sqrt(1 + r / (p - 1)) * tail_norm(sigma, r)
    assert sum(errs) / len(errs) <= bound
    assert min(errs) >= tail_norm(sigma, r) * (1 - 1e-12)  # and never below Eckart–Young


@pytest.mark.parametrize("p", [2, 3, 6])
def test_hmt_bound_on_its_nearly_tight_case(p):
    # r equal singular values then a flat tail 1000x smaller: the bound is close to tight here, so
    # a few seeds can exceed it by chance (10 seeds at p = 6 average 1.47 against 1.41); the theorem
    # bounds E‖·‖² and 100 seeds (a 60×40 matrix, ~0.1 s) measure that.
    m, n, r = 60, 40, 5
    sigma = torch.cat([torch.ones(r), 1e-3 * torch.ones(n - r)]).double()
    W = known_spectrum(m, n, sigma, seed=1)
    errs = torch.tensor(
        [
            fro_error(W, randomized_svd(W, r, oversample=p, n_iter=0, generator=s).reconstruct())
            for s in range(100)
        ]
    )
    rms = float(errs.pow(2).mean().sqrt())
    assert rms <= math.sqrt(1 + r / (p - 1)) * tail_norm(sigma, r)
    # Two power iterations erase the gap: σ_{r+1}/σ_r = 1e-3 raised to the 5th power.
    f = randomized_svd(W, r, oversample=p, n_iter=2)
    assert fro_error(W, f.reconstruct()) == pytest.approx(tail_norm(sigma, r), rel=1e-9)


def test_range_finder_projection_is_within_the_hmt_bound():
    # The theorem as stated: the projection onto the (r + p)-column basis, before any truncation.
    m, n, r, p = 60, 40, 5, 3
    sigma = torch.cat([torch.ones(r), 1e-3 * torch.ones(n - r)]).double()
    W = known_spectrum(m, n, sigma, seed=1)
    sq = []
    for s in range(100):
        Q = randomized_range_finder(W, r + p, n_iter=0, generator=s)
        torch.testing.assert_close(Q.T @ Q, torch.eye(r + p, dtype=W.dtype), atol=1e-12, rtol=0)
        sq.append(fro_error(W, Q @ (Q.T @ W)) ** 2)
    assert (sum(sq) / len(sq)) ** 0.5 <= math.sqrt(1 + r / (p - 1)) * tail_norm(sigma, r)


@pytest.mark.parametrize("spectrum", sorted(SPECTRA))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_defaults_are_near_optimal(spectrum, dtype):
    # Defaults p = 10, q = 2: within 1% of Eckart–Young, the benchmark's target, on every seed.
    m, n, r = 150, 100, 12
    sigma = SPECTRA[spectrum](n)
    W = known_spectrum(m, n, sigma, seed=12, dtype=dtype)
    opt = optimal_error(sigma, r)[0]
    for s in range(3):
        rel, _ = relative_errors(W, randomized_svd(W, r, generator=s), spectral=False)
        assert opt * (1 - 1e-5) <= rel <= 1.01 * opt


def test_power_iterations_stay_stable_in_float32():
    # 7 iterations (scikit-learn's default) in float32: without re-normalisation σ₁^15/σ_100^15 would
    # be ~1e30; LU keeps the panel well-conditioned and the result near-optimal.
    sigma = SPECTRA["power-1"](100)
    W = known_spectrum(150, 100, sigma, seed=13, dtype=torch.float32)
    for normalizer in ("lu", "qr"):
        f = randomized_svd(W, 10, n_iter=7, normalizer=normalizer)
        assert bool(torch.isfinite(f.left).all())
        rel, _ = relative_errors(W, f, spectral=False)
        assert rel <= 1.001 * optimal_error(sigma, 10)[0]


@pytest.mark.parametrize("normalizer", ["qr", "none"])
def test_normalizers_span_the_same_subspace(normalizer):
    W = known_spectrum(50, 40, power_law(40, -0.5), seed=14)
    a = randomized_svd(W, 8, n_iter=1, normalizer="lu").reconstruct()
    b = randomized_svd(W, 8, n_iter=1, normalizer=normalizer).reconstruct()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_finiteness_is_checked_on_the_sketch():
    # randomized_svd skips the pass over W that proves it finite and checks its (m, l) basis
    # instead: NaN/Inf entries still get the counted message, and an overflowing sketch of a
    # finite W says so rather than returning NaN factors.
    W = torch.randn(30, 20, generator=_gen(21))
    W[2, 3] = float("nan")
    with pytest.raises(ValueError, match="W has 1 NaN and 0 Inf entries out of 600"):
        randomized_svd(W, 4)
    with pytest.raises(ValueError, match=r"W is finite \(\|W\| <= 3e\+37\) but its sketch overflowed"):
        randomized_svd(torch.full((30, 20), 3e37), 4)
    # float64 holds it (σ₁ = 7.3e38 is beyond float32, hence out_dtype)
    f = randomized_svd(torch.full((30, 20), 3e37), 4, reference=True, out_dtype=torch.float64)
    assert float(f.core[0]) == pytest.approx(3e37 * 600**0.5)


def test_bad_options_are_rejected():
    W = torch.randn(10, 8)
    with pytest.raises(ValueError, match="normalizer must be 'qr', 'lu' or 'none', got 'svd'"):
        randomized_svd(W, 3, normalizer="svd")
    with pytest.raises(ValueError, match="oversample and n_iter must be >= 0, got -1 and 2"):
        randomized_svd(W, 3, oversample=-1)
    with pytest.raises(ValueError, match="got 10 and -2"):
        randomized_svd(W, 3, n_iter=-2)


# --- parity with torch.svd_lowrank (PEFT's pissa_niter_N) -----------------------------------------


@pytest.mark.parametrize("normalizer", ["qr", "lu"])
@pytest.mark.parametrize("seed", [0, 1])
def test_oversample_0_is_torch_svd_lowrank_with_q_r(normalizer, seed):
    # Same seed, same float32 Gaussian stream: torch.svd_lowrank draws randn(n, q) from the global
    # generator, ours from a CPU generator with the same seed. With QR re-normalisation the two
    # compute the same products in another operand order (rsvd._times), so they agree to float32
    # roundoff; LU spans the same subspaces, so it agrees to roundoff too.
    W = known_spectrum(80, 50, power_law(50, -1.0), seed=15, dtype=torch.float32)
    torch.manual_seed(seed)
    U, S, V = torch.svd_lowrank(W, q=8, niter=2)
    f = randomized_svd(W, 8, oversample=0, n_iter=2, generator=seed, normalizer=normalizer)
    tol = 2e-6 if normalizer == "qr" else 1e-5
    torch.testing.assert_close(f.core, S, rtol=tol, atol=tol)
    torch.testing.assert_close(f.reconstruct(), (U * S) @ V.T, rtol=0, atol=tol * float(S[0]) + 1e-7)


def test_oversample_0_errors_like_torch_svd_lowrank_on_wide_matrices():
    # torch.svd_lowrank sketches the transpose of a wide matrix, so only the error distributions
    # are comparable; averaged over seeds they agree within a few percent.
    W = known_spectrum(50, 80, power_law(50, -0.4), seed=16, dtype=torch.float32)
    ours, theirs = [], []
    for s in range(8):
        ours.append(fro_error(W, randomized_svd(W, 8, oversample=0, generator=s).reconstruct()))
        torch.manual_seed(s)
        U, S, V = torch.svd_lowrank(W, q=8, niter=2)
        theirs.append(fro_error(W, (U * S) @ V.T))
    assert sum(ours) / len(ours) == pytest.approx(sum(theirs) / len(theirs), rel=0.03)


# --- generators -----------------------------------------------------------------------------------


def test_same_seed_same_result_different_seed_different():
    W = torch.randn(40, 30, generator=_gen(17))
    a = randomized_svd(W, 5, generator=3)
    b = randomized_svd(W, 5, generator=_gen(3))
    c = randomized_svd(W, 5, generator=4)
    assert torch.equal(a.left, b.left) and torch.equal(a.core, b.core) and torch.equal(a.right, b.right)
    assert not torch.equal(a.left, c.left)
    # None means seed 0, so the default is reproducible.
    assert torch.equal(randomized_svd(W, 5).left, randomized_svd(W, 5, generator=0).left)


def test_a_generator_object_is_consumed_and_the_global_rng_untouched():
    W = torch.randn(40, 30, generator=_gen(18))
    state = torch.get_rng_state()
    g = _gen(5)
    first = randomized_svd(W, 5, generator=g, n_iter=0)
    second = randomized_svd(W, 5, generator=g, n_iter=0)
    assert not torch.equal(first.left, second.left)  # the generator advanced: a new sketch
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_sketch_does_not_depend_on_the_compute_dtype(dtype):
    # gaussian() draws in float32 whatever the dtype, so one seed means one test matrix everywhere.
    W = known_spectrum(40, 30, power_law(30, -1.0), seed=19)
    ref = randomized_svd(W, 4, n_iter=0, generator=7)
    f = randomized_svd(W.to(dtype), 4, n_iter=0, generator=7, out_dtype=torch.float64)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(f.core, ref.core, rtol=tol, atol=0)


# --- the LU re-normalisation ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(50, 7), (7, 7), (5, 9), (300, 40), (6, 1)])
@pytest.mark.parametrize("kind", ["gaussian", "zero", "rank-1"])
def test_lu_basis_is_P_times_L(shape, kind):
    # _lu_basis undoes LAPACK's row swaps by hand instead of forming the dense (m, m) P; it must
    # equal torch.linalg.lu's P @ L exactly (same getrf, only data movement differs).
    from lowrank_lab.linalg.rsvd import _lu_basis

    g = _gen(20)
    if kind == "gaussian":
        Y = torch.randn(*shape, generator=g, dtype=torch.float64)
    elif kind == "zero":
        Y = torch.zeros(*shape, dtype=torch.float64)
    else:
        Y = torch.outer(
            torch.randn(shape[0], generator=g, dtype=torch.float64), torch.ones(shape[1], dtype=torch.float64)
        )
    P, L, _ = torch.linalg.lu(Y)
    B = _lu_basis(Y.clone())
    assert torch.equal(B, P @ L)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("width", [5, 100])
def test_both_operand_orders_compute_the_same_products(threads, width):
    # rsvd picks the GEMM operand order by thread count and panel width (MKL timing); whichever
    # branch runs, the products are W @ X and Wᵀ @ Y up to rounding.
    from lowrank_lab.linalg.rsvd import _t_times, _times

    g = _gen(22)
    W = torch.randn(120, 110, generator=g, dtype=torch.float64)
    X = torch.randn(110, width, generator=g, dtype=torch.float64)
    Y = torch.randn(120, width, generator=g, dtype=torch.float64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        torch.testing.assert_close(_times(W, X), W @ X, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(_t_times(W, Y), W.T @ Y, rtol=1e-12, atol=1e-12)
    finally:
        torch.set_num_threads(before)
