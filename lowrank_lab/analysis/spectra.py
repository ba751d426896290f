"""Spectral statistics of one weight matrix, computed from its singular values alone.

Everything here is a pure function of the singular values ``σ₁ ≥ … ≥ σ_k`` (k = min(m, n)) and the
shape, so a synthetic matrix that carries its exact spectrum needs no SVD, and one matrix's row can be
computed anywhere (a worker process, another GPU) without the others.

The power-law fit reproduces WeightWatcher's (Martin & Mahoney 2021, "Implicit self-regularization in
deep neural networks", JMLR 22(165); PyPI ``weightwatcher`` 0.7.x, ``WW_powerlaw.WWFit``), so the
``alpha`` column means what WeightWatcher users expect; see :func:`fit_power_law` for the convention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: WeightWatcher's ``EVALS_THRESH``: eigenvalues of WᵀW at or below it are dropped before the fit.
EVALS_THRESH = 1e-5
#: Below this many eigenvalues WeightWatcher switches to a different small-sample estimator
#: (``WW_powerlaw.SMALL_N_CUTOFF``); we do not reproduce that one and report NaN instead.
MIN_EVALS = 20
#: Eigenvalue count above which the KS scan runs in blocks of xmin candidates, bounding memory.
_KS_BLOCK = 256


@dataclass(frozen=True)
class PowerLawFit:
    """A continuous power-law fit ``p(λ) ∝ λ^(-alpha)`` for ``λ ≥ xmin`` of an eigenvalue sample.

    Attributes
    ----------
    alpha : float
        Maximum-likelihood exponent on the tail ``λ ≥ xmin`` (NaN when no fit was possible).
    sigma : float
        Its standard error ``(alpha − 1) / sqrt(n_tail)`` (Clauset, Shalizi & Newman 2009, eq. 3.2).
    D : float
        Kolmogorov–Smirnov distance between the empirical and fitted tail CDFs at the chosen xmin.
    xmin : float
        Lower end of the fitted tail, chosen to minimise D.
    n_tail : int
        Eigenvalues in the tail (``λ ≥ xmin``).
    n_evals : int
        Eigenvalues offered to the fit (after dropping those ``≤ EVALS_THRESH``).
    """

    alpha: float
    sigma: float
    D: float
    xmin: float
    n_tail: int
    n_evals: int

    @classmethod
    def failed(cls, n_evals: int) -> PowerLawFit:
        nan = float("nan")
        return cls(alpha=nan, sigma=nan, D=nan, xmin=nan, n_tail=0, n_evals=n_evals)


def fit_power_law(
    evals: np.ndarray | torch.Tensor | Sequence[float],
    *,
    thresh: float = EVALS_THRESH,
    min_evals: int = MIN_EVALS,
    small_n: bool = False,
) -> PowerLawFit:
    """Fit a power law to the tail of an eigenvalue sample, choosing xmin by KS minimisation.

    The method of Clauset, Shalizi & Newman (2009, "Power-law distributions in empirical data",
    SIAM Review 51(4), §3.3), exactly as WeightWatcher 0.7.x implements it (``WWFit.fit_power_law``):

    1. drop eigenvalues ``≤ thresh`` (WeightWatcher's ``EVALS_THRESH = 1e-5``) and sort ascending;
    2. for every candidate ``xmin = λ_i`` except the largest, the continuous MLE on the
       ``n = N − i`` values ``≥ λ_i``: ``alpha_i = 1 + n / Σ_j log(λ_j / λ_i)``;
    3. its KS distance ``D_i = max_j |1 − (λ_j / λ_i)^(1 − alpha_i) − (j − i) / n|`` (the empirical
       CDF taken at the left of each step, as WeightWatcher does; ``D_i = 1`` when ``alpha_i ≤ 1``);
    4. keep the first i with the smallest D; ``sigma = (alpha − 1) / sqrt(n)``.

    The fit is scale-invariant, so it does not matter whether the eigenvalues are those of ``WᵀW`` or
    of ``WᵀW / N`` (only ``thresh`` is in absolute units, as in WeightWatcher).

    Parameters
    ----------
    evals : array-like
        Eigenvalues (any order); for a weight W, the squared singular values.
    thresh : float, default 1e-5
        WeightWatcher's cut-off for (numerically) zero eigenvalues.
    min_evals : int, default 20
        With fewer eigenvalues left, return a failed fit (NaN) rather than switch estimators:
        WeightWatcher uses a different bias-corrected estimator below 20 (``SMALL_N_CUTOFF``), and
        the WeightWatcher authors recommend at least 50 eigenvalues for a meaningful alpha.
    small_n : bool, default False
        Below ``min_evals`` eigenvalues (at least 2), use WeightWatcher 0.7.7's small-sample
        estimator instead of failing (:func:`fit_power_law_small_n`): what its PEFT mode reports for
        a LoRA update of rank r < 20, whose spectrum has only r eigenvalues.

    Returns
    -------
    PowerLawFit
    """
    x = torch.as_tensor(evals).detach().to("cpu", torch.float64).numpy().ravel()
    x = np.sort(x[x > thresh])
    N = x.size
    if small_n and 2 <= N < max(int(min_evals), 2):
        return fit_power_law_small_n(x)
    if N < max(int(min_evals), 2):
        return PowerLawFit.failed(N)
    logx = np.log(x)
    # Σ_{j ≥ i} log λ_j for every i, from a reversed cumulative sum.
    suffix = np.cumsum(logx[::-1])[::-1]
    idx = np.arange(N - 1)
    n = (N - idx).astype(np.float64)
    denom = suffix[:-1] - n * logx[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + n / denom
    alphas = np.where(denom > 0, alphas, np.nan)  # ties at the top: no tail to fit
    Ds = np.ones(N - 1)
    for start in range(0, N - 1, _KS_BLOCK):
        stop = min(start + _KS_BLOCK, N - 1)
        # Candidates start..stop-1 only look at λ_j with j ≥ start: slice those columns once.
        jj = np.arange(start, N)[None, :]  # (1, N - start)
        ii = idx[start:stop, None]  # (b, 1) candidate xmin positions
        a = alphas[start:stop, None]
        with np.errstate(over="ignore", invalid="ignore"):
            fitted = 1.0 - np.exp((1.0 - a) * (logx[None, start:] - logx[ii]))
        dev = np.abs(fitted - (jj - ii) / n[start:stop, None])
        dev[jj < ii] = -np.inf  # below the candidate xmin: not in its tail
        block = dev.max(axis=1)
        Ds[start:stop] = np.where(alphas[start:stop] > 1, block, 1.0)
    i = int(np.argmin(Ds))
    alpha = float(alphas[i])
    if not math.isfinite(alpha):
        return PowerLawFit.failed(N)
    n_tail = int(N - i)
    return PowerLawFit(
        alpha=alpha,
        sigma=(alpha - 1.0) / math.sqrt(n_tail),
        D=float(Ds[i]),
        xmin=float(x[i]),
        n_tail=n_tail,
        n_evals=N,
    )


#: Smallest tail WeightWatcher's small-sample estimator considers (``fit_powerlaw_smallN(k_min=8)``).
SMALL_N_MIN_TAIL = 8


def fit_power_law_small_n(x: np.ndarray | Sequence[float]) -> PowerLawFit:
    """WeightWatcher 0.7.7's power-law fit of fewer than 20 eigenvalues, as its code computes it.

    ``WWFit.fit_powerlaw_smallN`` (``WW_powerlaw.py``): for every candidate ``xmin = λ_i`` (ascending,
    all but the largest) whose tail holds ``n ≥ 8`` values, the bias-corrected MLE
    ``alpha_i = 1 + (n − 1) / Σ_{j ≥ i} log(λ_j / λ_i)`` (candidates with that sum ≤ 1e-12 are
    skipped) and, when ``alpha_i > 1``, its KS distance ``D_i = max_j |j/n − (1 − (λ_j/λ_i)^(1−alpha_i))|``
    (``D_i = 1`` otherwise). With no candidate (fewer than 8 values) the whole sample is the tail.
    WWFit's constructor then keeps the candidate of smallest D, whatever objective the small-sample
    routine itself ranked them by, so that is what WeightWatcher reports; ``sigma = (alpha − 1)/√n``
    (with fewer than 8 values WeightWatcher's own sigma is computed before alpha and reads −1/√N).
    The WeightWatcher authors caution that alpha from so few eigenvalues is not meaningful: this is
    for comparing with its PEFT mode, not for reading the exponent.

    Parameters
    ----------
    x : array-like
        Eigenvalues, already above the zero threshold, at least 2 of them.
    """
    x = np.sort(np.asarray(x, dtype=np.float64).ravel())
    N = x.size
    if N < 2:
        return PowerLawFit.failed(N)
    logx = np.log(x)
    alphas = np.zeros(N - 1)
    Ds = np.ones(N - 1)
    found = False
    for i in range(N - 1):
        n = N - i
        if n < SMALL_N_MIN_TAIL:
            continue
        s = float(logx[i:].sum() - n * logx[i])
        if s <= 1e-12:
            continue
        alphas[i] = 1.0 + (n - 1.0) / s
        if alphas[i] <= 1.0:
            continue
        fitted = 1.0 - (x[i:] / x[i]) ** (1.0 - alphas[i])
        Ds[i] = float(np.max(np.abs(np.arange(n) / n - fitted)))
        found = True
    if not found:  # the whole sample as the tail
        s = float(logx.sum() - N * logx[0])
        if s <= 1e-12:
            return PowerLawFit.failed(N)
        alphas[0] = 1.0 + (N - 1.0) / s
        fitted = 1.0 - (x / x[0]) ** (1.0 - alphas[0])
        Ds[0] = float(np.max(np.abs(np.arange(N) / N - fitted)))
    i = int(np.argmin(Ds))
    alpha = float(alphas[i])
    if not (math.isfinite(alpha) and alpha > 0):
        return PowerLawFit.failed(N)
    n_tail = N - i
    return PowerLawFit(
        alpha=alpha, sigma=(alpha - 1.0) / math.sqrt(n_tail), D=float(Ds[i]), xmin=float(x[i]),
        n_tail=n_tail, n_evals=N,
    )


def effective_rank(S: torch.Tensor) -> float:
    """Entropy-based effective rank (Roy & Vetterli 2007, "The effective rank: a measure of
    effective dimensionality", EUSIPCO): ``exp(−Σ p_k log p_k)`` with ``p_k = σ_k / Σ σ``.

    It lies in ``[1, rank(W)]`` and equals k for k equal non-zero singular values. Note the
    distribution is over σ, not σ² (Roy & Vetterli's definition). 0 for the zero matrix.
    """
    S = S.detach().to(torch.float64)
    total = float(S.sum())
    if total <= 0.0:
        return 0.0
    p = S[S > 0] / total
    return float(torch.exp(-(p * torch.log(p)).sum()))


def numerical_rank(S: torch.Tensor, shape: tuple[int, int], eps: float) -> int:
    """Number of singular values above ``max(m, n) · eps · σ₁`` — ``numpy.linalg.matrix_rank``'s
    default tolerance (and LAPACK's, per Press et al., Numerical Recipes §2.6), with ``eps`` the
    machine epsilon of the dtype the singular values were computed in."""
    S = S.detach().to(torch.float64)
    if S.numel() == 0 or float(S[0]) == 0.0:
        return 0
    tol = max(shape) * eps * float(S.max())
    return int((S > tol).sum())


def energy_captured(S: torch.Tensor, rank: int) -> float:
    """``Σ_{i ≤ r} σ_i² / Σ σ_i²``: the fraction of ‖W‖_F² kept by the best rank-r approximation
    (1 − the squared Eckart–Young relative error; 1.0 once r ≥ rank(W), NaN for W = 0)."""
    S2 = S.detach().to(torch.float64) ** 2
    total = float(S2.sum())
    if total == 0.0:
        return float("nan")
    return float(S2[: max(int(rank), 0)].sum()) / total


def energy_column(rank: int) -> str:
    """Column name of the energy captured at ``rank`` in spectra.csv."""
    return f"energy_r{int(rank)}"


#: Columns of spectra.csv before the per-rank energy columns (see :func:`spectra_columns`).
SPECTRA_BASE_COLUMNS = [
    "tensor", "layer", "module", "role", "fused", "expert", "m", "n",
    "fro_norm", "spec_norm", "stable_rank", "effective_rank", "numerical_rank",
    "alpha", "alpha_sigma", "alpha_ks_d", "alpha_xmin", "alpha_n_tail",
]


def spectra_columns(ranks: Sequence[int]) -> list[str]:
    """All columns of spectra.csv for the requested ranks, in order."""
    return SPECTRA_BASE_COLUMNS + [energy_column(r) for r in ranks]


def spectral_stats(
    S: torch.Tensor,
    shape: tuple[int, int],
    *,
    ranks: Sequence[int] = (),
    eps: float | None = None,
    small_n: bool = False,
) -> dict[str, float | int]:
    """The spectral statistics of an ``(m, n)`` matrix from its singular values ``S``.

    Parameters
    ----------
    S : Tensor, shape (min(m, n),)
        All singular values (any order; sorted here).
    shape : (m, n)
    ranks : sequence of int
        Ranks at which the captured energy is reported (``energy_r{rank}``).
    eps : float, optional
        Machine epsilon for :func:`numerical_rank`; default that of ``S.dtype``, as NumPy does.
        Pass the epsilon of the matrix's compute dtype when ``S`` came from elsewhere (exact
        synthetic spectra are float64, but the matrix they describe is stored in float32).
    small_n : bool, default False
        Fit alpha to fewer than 20 eigenvalues with WeightWatcher's small-sample estimator
        (:func:`fit_power_law_small_n`) instead of reporting NaN.

    Returns
    -------
    dict
        ``fro_norm`` ‖W‖_F, ``spec_norm`` ‖W‖₂ = σ₁, ``stable_rank`` ‖W‖_F² / ‖W‖₂² (NaN for W = 0),
        ``effective_rank`` (:func:`effective_rank`), ``numerical_rank``, ``alpha`` with
        ``alpha_sigma``, ``alpha_ks_d``, ``alpha_xmin``, ``alpha_n_tail`` (:func:`fit_power_law` on
        the eigenvalues σ² of WᵀW, WeightWatcher's convention), and ``energy_r{rank}`` per rank.
    """
    if eps is None:
        eps = torch.finfo(S.dtype).eps if S.dtype.is_floating_point else torch.finfo(torch.float64).eps
    S64 = torch.sort(S.detach().to("cpu", torch.float64), descending=True).values
    fro2 = float((S64**2).sum())
    spec = float(S64[0]) if S64.numel() else 0.0
    fit = fit_power_law(S64**2, small_n=small_n)
    stats: dict[str, float | int] = {
        "fro_norm": math.sqrt(fro2),
        "spec_norm": spec,
        "stable_rank": fro2 / spec**2 if spec > 0 else float("nan"),
        "effective_rank": effective_rank(S64),
        "numerical_rank": numerical_rank(S64, shape, eps),
        "alpha": fit.alpha,
        "alpha_sigma": fit.sigma,
        "alpha_ks_d": fit.D,
        "alpha_xmin": fit.xmin,
        "alpha_n_tail": fit.n_tail,
    }
    for r in ranks:
        stats[energy_column(r)] = energy_captured(S64, r)
    return stats
