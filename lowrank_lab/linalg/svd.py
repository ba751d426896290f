"""Exact singular value decompositions and the Eckart–Young optimum they define.

The truncated SVD is the yardstick of every other method here: by the Eckart–Young–Mirsky theorem
(Eckart & Young 1936; Mirsky 1960) no rank-r matrix is closer to W in the Frobenius or spectral
norm, so ``rel_err / opt_rel_err`` is how far a method is from the best it could do.
"""

from __future__ import annotations

from typing import Literal

import torch

from .policy import prepare, validate_matrix, validate_rank
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


def singular_values(W: torch.Tensor, *, reference: bool = False) -> torch.Tensor:
    """All ``min(m, n)`` singular values of ``W``, descending.

    Returned in the compute dtype (float32, or float64 with ``reference=True``), never in bf16/fp16:
    singular values rounded to 8 bits would make the Eckart–Young optimum meaningless.
    """
    Wc, _ = prepare(W, reference=reference)
    return torch.linalg.svdvals(Wc)


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
    U, S, Vh = torch.linalg.svd(Wc, full_matrices=False, **kwargs)
    sl = slice(0, r) if which == "largest" else slice(S.shape[0] - r, S.shape[0])
    Ur, Vr = svd_flip(U[:, sl], Vh[sl, :])
    return Factorization(
        left=Ur.to(prec.output),
        core=S[sl].to(prec.output),
        right=Vr.to(prec.output),
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


def spectral_norm_estimate(A: torch.Tensor, *, n_iter: int = 30, generator: torch.Generator | None = None) -> float:
    """Largest singular value of ``A`` by power iteration on ``AᵀA`` (Golub & Van Loan, §8.2).

    Costs ``4·m·n·n_iter`` flops instead of an SVD. It converges from below: the result is a lower
    bound whose relative gap shrinks like (σ₂/σ₁)^(2·n_iter).
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x = torch.randn(A.shape[1], 1, generator=g, device=g.device).to(device=A.device, dtype=A.dtype)
    x = x / torch.linalg.vector_norm(x)
    for _ in range(n_iter):
        x = A.T @ (A @ x)
        nx = float(torch.linalg.vector_norm(x))
        if nx == 0.0:
            return 0.0
        x = x / nx
    return float(torch.linalg.vector_norm(A @ x))


def relative_errors(
    W: torch.Tensor, fact: Factorization, *, spectral: bool = True, n_iter: int = 30
) -> tuple[float, float]:
    """``(‖W − Ŵ‖_F / ‖W‖_F, ‖W − Ŵ‖₂ / ‖W‖₂)`` for the approximation ``Ŵ`` held by ``fact``.

    Computed in float32 at least (float64 when ``W`` is float64). The spectral norms come from
    :func:`spectral_norm_estimate` (power iteration), so no SVD of the ``(m, n)`` residual
    is taken; pass ``spectral=False`` to skip it (NaN is returned).
    """
    validate_matrix(W)
    cdt = torch.float64 if W.dtype == torch.float64 else torch.float32
    Wc = W.to(cdt)
    left = fact.left.to(device=Wc.device, dtype=cdt)
    right = fact.right.to(device=Wc.device, dtype=cdt)
    core = None if fact.core is None else fact.core.to(device=Wc.device, dtype=cdt)
    if core is not None:
        left = left * core if core.ndim == 1 else left @ core
    w_fro = float(torch.linalg.matrix_norm(Wc))
    if w_fro == 0.0:
        return 0.0, 0.0
    R = Wc - left @ right
    rel_fro = float(torch.linalg.matrix_norm(R)) / w_fro
    if not spectral:
        return rel_fro, float("nan")
    w_spec = spectral_norm_estimate(Wc, n_iter=n_iter)
    r_spec = spectral_norm_estimate(R, n_iter=n_iter)
    return rel_fro, r_spec / w_spec
