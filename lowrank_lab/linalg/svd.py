"""Exact singular value decompositions and the Eckart–Young optimum they define.

The truncated SVD is the yardstick of every other method here: by the Eckart–Young–Mirsky theorem
(Eckart & Young 1936; Mirsky 1960) no rank-r matrix is closer to W in the Frobenius or spectral
norm, so ``rel_err / opt_rel_err`` is how far a method is from the best it could do.
"""

from __future__ import annotations

from typing import Literal

import torch

from .policy import prepare, tall_view, validate_matrix, validate_rank
from .result import Factorization


def svd_flip(U: torch.Tensor, Vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fix the sign of each singular pair so that the largest-magnitude entry of each left vector is positive.

    SVD signs are arbitrary; pinning them (scikit-learn's ``svd_flip`` with ``u_based_decision``)
    makes exact and randomized SVDs, CPU and CUDA runs, comparable factor by factor.
    """
    idx = U.abs().argmax(dim=0)
    signs = torch.sign(U[idx, torch.arange(U.shape[1], device=U.device)])
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return U * signs, Vh * signs[:, None]


# Below this aspect ratio (rows / columns) the QR step costs more than it saves (LAPACK's own
# crossover for gesdd's QR-first path is 11/6; 2 keeps clear of it).
_QR_FIRST_MIN_ASPECT = 2


def tall_svd(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``M = U · diag(S) · Vh`` of a tall, skinny ``(k, l)`` matrix, QR first.

    Chan's R-SVD (T. F. Chan 1982, "An improved algorithm for computing the singular value
    decomposition", ACM TOMS 8(1); Golub & Van Loan, *Matrix Computations* §8.6.3): ``M = Q_M R``
    (Householder QR, O(k·l²)), then the SVD of the small ``R = U_R S Vh``, so ``U = Q_M U_R``.
    Randomized SVD ends on exactly such a matrix, the (n, l) panel ``Wᵀ Q``. Handed to
    ``torch.linalg.svd`` whole it costs 2–4x more (float32, one thread, k = 4096: 1.47 vs 0.39 ms at
    l = 18, 14.1 vs 6.1 ms at l = 74, 31 vs 15 ms at l = 138), because LAPACK's bidiagonalisation
    then runs on the long side. Matrices with ``k < 2·l`` go straight to ``torch.linalg.svd``.

    Singular values agree with ``torch.linalg.svd`` to float rounding (both are backward stable);
    signs are whatever LAPACK returns, as with ``torch.linalg.svd``.
    """
    k, l = M.shape
    if k < _QR_FIRST_MIN_ASPECT * l:
        return torch.linalg.svd(M, full_matrices=False)
    Q, R = torch.linalg.qr(M)  # (k, l), (l, l)
    Ur, S, Vh = torch.linalg.svd(R)
    return Q @ Ur, S, Vh


def singular_values(W: torch.Tensor, *, reference: bool = False) -> torch.Tensor:
    """All ``min(m, n)`` singular values of ``W``, descending.

    Returned in the compute dtype (float32, or float64 with ``reference=True``), never in bf16/fp16:
    singular values rounded to 8 bits would make the Eckart–Young optimum meaningless.
    """
    Wc, _ = prepare(W, reference=reference)
    return torch.linalg.svdvals(tall_view(Wc)[0])  # same values, faster on the tall side


def exact_svd(W: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``W = U · diag(S) · Vh`` (``torch.linalg.svd(W, full_matrices=False)``), always taken
    in the tall orientation.

    A wide ``W`` (m < n) is factored as ``Wᵀ = U' S Vh'`` and the factors are swapped back,
    ``U = Vh'ᵀ``, ``Vh = U'ᵀ`` (see :func:`~lowrank_lab.linalg.policy.tall_view` for why and the
    measured cost). ``kwargs`` go to ``torch.linalg.svd`` (``driver`` on CUDA). Signs are whatever
    LAPACK returns; fix them with :func:`svd_flip`.
    """
    M, transposed = tall_view(W)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False, **kwargs)
    return (Vh.mT, S, U.mT) if transposed else (U, S, Vh)


def truncated_svd(
    W: torch.Tensor,
    rank: int,
    *,
    generator: torch.Generator | int | None = None,
    which: Literal["largest", "smallest"] = "largest",
    reference: bool = False,
    out_dtype: torch.dtype | None = None,
    driver: str | None = None,
) -> Factorization:
    """Rank-``r`` truncation of the full SVD: ``W ≈ U_r · diag(S_r) · Vh_r``.

    Parameters
    ----------
    W : Tensor, shape (m, n)
    rank : int
        ``1 <= rank <= min(m, n)``.
    generator : ignored
        Accepted so every factorization shares one calling convention; the SVD is deterministic.
    which : {"largest", "smallest"}
        ``"largest"`` keeps the top r triplets (the Eckart–Young optimum; PiSSA, Meng et al. 2024,
        arXiv 2404.02948). ``"smallest"`` keeps the bottom r (MiLoRA, Wang et al. 2024,
        arXiv 2406.09044), still ordered with descending singular values.
    reference : bool
        Compute in float64.
    out_dtype : torch.dtype, optional
        Dtype of the factors; default the input's.
    driver : str, optional
        CUDA only: ``"gesvd"`` (most accurate), ``"gesvdj"``, ``"gesvda"``; None lets torch choose
        (gesvdj, which can lose accuracy above 2048², per the cuSOLVER notes in REFERENCE.md).

    Returns
    -------
    Factorization
        ``left`` = U_r (m, r), ``core`` = S_r (r,) as a diagonal, ``right`` = Vh_r (r, n); signs
        fixed by :func:`svd_flip`. ``info["singular_values"]`` holds all of them (compute dtype).
    """
    del generator
    Wc, prec = prepare(W, reference=reference, out_dtype=out_dtype)
    r = validate_rank(rank, Wc.shape)
    if which not in ("largest", "smallest"):
        raise ValueError(f"which must be 'largest' or 'smallest', got {which!r}")
    kwargs = {"driver": driver} if (driver is not None and Wc.is_cuda) else {}
    U, S, Vh = exact_svd(Wc, **kwargs)  # wide matrices through their transpose
    sl = slice(0, r) if which == "largest" else slice(S.shape[0] - r, S.shape[0])
    Ur, Vr = svd_flip(U[:, sl], Vh[sl, :])
    return Factorization(
        left=Ur.contiguous().to(prec.output),  # row-major whichever orientation the SVD ran in
        core=S[sl].to(prec.output),
        right=Vr.contiguous().to(prec.output),
        method="svd" if which == "largest" else "svd-smallest",
        info={"singular_values": S},
    )


def optimal_error(S: torch.Tensor, rank: int) -> tuple[float, float]:
    """Eckart–Young optimum of a rank-``r`` approximation, relative to ``‖W‖``.

    Given all singular values ``S`` (descending), returns
    ``(‖W − W_r‖_F / ‖W‖_F, ‖W − W_r‖_2 / ‖W‖_2) = (sqrt(Σ_{i>r} σ_i²) / sqrt(Σ σ_i²), σ_{r+1} / σ_1)``,
    both 0 when ``r >= len(S)`` or ``W = 0``. Sums run in float64.
    """
    S = S.detach().to(torch.float64)
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    total = float(torch.sum(S * S))
    if total == 0.0 or rank >= S.numel():
        return 0.0, 0.0
    tail = float(torch.sum(S[rank:] ** 2))
    return (tail / total) ** 0.5, float(S[rank] / S[0])


def spectral_norm_estimate(
    A: torch.Tensor, *, n_iter: int = 20, generator: torch.Generator | None = None
) -> float:
    """Largest singular value of ``A`` by Golub–Kahan–Lanczos bidiagonalization.

    ``n_iter`` steps of Golub & Kahan's (1965) bidiagonalization from a Gaussian start, with full
    re-orthogonalisation (Golub & Van Loan, §10.4), then the top singular value of the small
    bidiagonal matrix. It is a lower bound on ‖A‖₂ that converges like a Krylov method — far faster
    than power iteration on the slowly decaying spectra of weights and their residuals, where 30
    power steps still read ‖·‖₂ about 2% low and 20 Lanczos steps agree with the SVD to ~1e-4.
    Every step is two matrix–vector products: on the CPU a product with an (n, b) block costs 5–40×
    a matrix–vector product for small b (MKL, 11008×4096 float32), so block methods lose here.
    """
    m, n = A.shape
    k = max(1, min(n_iter, m, n))  # the Krylov space cannot grow past min(m, n)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    v = torch.randn(n, generator=g, device=g.device).to(device=A.device, dtype=A.dtype)
    v = v / torch.linalg.vector_norm(v)
    U = torch.zeros(k, m, dtype=A.dtype, device=A.device)
    V = torch.zeros(k + 1, n, dtype=A.dtype, device=A.device)
    V[0] = v
    alphas: list[float] = []
    betas: list[float] = []
    # Breakdown: a new direction shorter than sqrt(eps) of the largest entry means the Krylov space
    # is (numerically) invariant. Stopping there changes the estimate by at most that relative
    # amount; going on would normalise roundoff into a direction the recurrence does not describe.
    tol = torch.finfo(A.dtype).eps ** 0.5
    for j in range(k):
        u = A @ V[j]
        u = u - U[:j].T @ (U[:j] @ u)  # full re-orthogonalisation keeps the bidiagonal honest
        alpha = float(torch.linalg.vector_norm(u))
        if alpha <= tol * max(alphas + betas, default=0.0) or alpha == 0.0:
            break
        alphas.append(alpha)
        U[j] = u / alpha
        w = A.T @ U[j]
        w = w - V[: j + 1].T @ (V[: j + 1] @ w)
        beta = float(torch.linalg.vector_norm(w))
        betas.append(beta)
        if beta <= tol * max(alphas + betas):
            break
        V[j + 1] = w / beta
    if not alphas:
        return 0.0
    # U_kᵀ A V_{k+1} is k × (k+1) upper bidiagonal (α on the diagonal, β above it): a compression
    # of A, so its top singular value is a lower bound on ‖A‖₂.
    k = len(alphas)
    B = torch.zeros(k, k + 1, dtype=torch.float64)
    B[range(k), range(k)] = torch.tensor(alphas, dtype=torch.float64)
    B[range(k), range(1, k + 1)] = torch.tensor(betas, dtype=torch.float64)
    return float(torch.linalg.svdvals(B)[0])


def _frobenius(A: torch.Tensor) -> float:
    """``‖A‖_F`` of a 2-D tensor, accurate whatever its size.

    ``torch.linalg.matrix_norm`` of a float32 matrix accumulates all m·n squares in float32: its
    relative error is 1e-5 at 1024², 1e-4 at 2048² and 3e-3 at 11008×4096 (measured against
    float64) — larger than the differences ``err / optimum`` is meant to show. Row norms (n terms
    each) stay at roundoff and are combined in float64: error ~1e-9 for ~2x the plain norm's time.
    """
    return float(torch.linalg.vector_norm(A, dim=1).double().square().sum().sqrt())


def relative_errors(
    W: torch.Tensor,
    fact: Factorization,
    *,
    spectral: bool = True,
    n_iter: int = 20,
    norms: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """``(‖W − Ŵ‖_F / ‖W‖_F, ‖W − Ŵ‖₂ / ‖W‖₂)`` for the approximation ``Ŵ`` held by ``fact``.

    Computed in float32 at least (float64 when ``W`` is float64); Frobenius norms are accumulated
    in float64 (a float32 ``matrix_norm`` of an 11008×4096 residual is 3e-3 off). The spectral norm
    of the residual comes from :func:`spectral_norm_estimate` (``n_iter`` Lanczos steps), so no SVD
    of the ``(m, n)`` residual is taken; pass ``spectral=False`` to skip it (NaN is returned).

    ``norms=(‖W‖_F, ‖W‖₂)`` supplies the denominators when the caller already knows them (from the
    singular values, say); otherwise they are computed here. Comparing many factorizations of one
    matrix, passing them saves one Lanczos run per call.
    """
    validate_matrix(W)
    cdt = torch.float64 if W.dtype == torch.float64 else torch.float32
    Wc = W.to(cdt)
    left = fact.left.to(device=Wc.device, dtype=cdt)
    right = fact.right.to(device=Wc.device, dtype=cdt)
    core = None if fact.core is None else fact.core.to(device=Wc.device, dtype=cdt)
    if core is not None:
        left = left * core if core.ndim == 1 else left @ core
    w_fro = _frobenius(Wc) if norms is None else float(norms[0])
    if w_fro == 0.0:
        return 0.0, 0.0
    R = Wc - left @ right
    rel_fro = _frobenius(R) / w_fro
    if not spectral:
        return rel_fro, float("nan")
    w_spec = spectral_norm_estimate(Wc, n_iter=n_iter) if norms is None else float(norms[1])
    return rel_fro, spectral_norm_estimate(R, n_iter=n_iter) / w_spec
