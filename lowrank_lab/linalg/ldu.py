"""LDU factorizations: truncated LDU from LU with partial pivoting (LoLDU) and randomized LU.

``P · L · D · U = W`` with P a permutation, L unit lower-trapezoidal, D diagonal and U unit
upper-trapezoidal. LoLDU (Shi et al. 2024, arXiv 2410.13618; code SKDDJ/LoLDU) trains only D.
"""

from __future__ import annotations

import torch

from .policy import Precision, gaussian, make_generator, prepare, to_output, validate_rank
from .result import Factorization


def _safe_pivots(d: torch.Tensor, scale: float, prec: Precision) -> tuple[torch.Tensor, int]:
    # A zero (or roundoff-sized) pivot cannot be divided out of its row of U. Such pivots are
    # replaced by ±tau with tau = eps · max|W| (tiny when W = 0), and the row of U is divided by
    # that instead: the product D·U, hence P·L·D·U = W, is unchanged, every factor stays finite,
    # and only that row's diagonal entry of U differs from 1 (it becomes d_k / tau, about 0).
    # eps and tiny are those of the coarser of the compute and output dtypes (Precision.eps): with
    # float32's eps, a zero pivot of a float16 matrix made that row of U ~1/eps = 8e6 > 65504, inf
    # in float16, and tau itself underflowed to 0 when W = 0.
    tau = max(prec.eps * scale, prec.tiny)
    tiny = d.abs() <= tau
    sign = torch.where(d < 0, -torch.ones_like(d), torch.ones_like(d))
    return torch.where(tiny, sign * tau, d), int(tiny.sum())


def _panel_lu(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A[perm] = L @ U`` by LU with partial pivoting, returning ``perm`` instead of an (m, m) P.

    A dense permutation matrix of an 11008-row weight would be 480 MB and an O(m² r) product.
    """
    LU, pivots, _ = torch.linalg.lu_factor_ex(A)  # info > 0 (a zero pivot) is handled by the caller
    L, U = torch.lu_unpack(LU, pivots, unpack_pivots=False)[1:]
    perm = list(range(A.shape[0]))
    for i, p in enumerate(pivots.tolist()):  # LAPACK's row swaps, 1-based, applied in order
        perm[i], perm[p - 1] = perm[p - 1], perm[i]
    return torch.tensor(perm, device=A.device), L, U


def _unpermute_rows(A: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(A)
    out[perm] = A
    return out


def ldu(
    W: torch.Tensor,
    rank: int,
    *,
    generator: torch.Generator | int | None = None,
    reference: bool = False,
    out_dtype: torch.dtype | None = None,
) -> Factorization:
    """Rank-``r`` truncation of ``W = P L D U`` from LU with partial pivoting (LoLDU's initialisation).

    The first r steps of right-looking LU with partial pivoting depend only on the first r columns,
    so the truncated factors are computed from the ``(m, r)`` panel alone: ``P, L, U₁₁ = lu(W[:, :r])``,
    then ``U₁₂ = L₁₁⁻¹ (Pᵀ W)[:r, r:]``. They equal the first r columns of L and rows of U of a
    full ``torch.linalg.lu(W)`` (as LoLDU's code takes them) at O(m r² + r² n) instead of O(m n²)
    cost; at ``r = min(m, n)`` it is the full factorization and ``P L D U == W`` to roundoff.

    Partial pivoting is not rank-revealing: the truncation error is the Schur complement of the
    leading block, not tied to σ_{r+1} (see :func:`randomized_ldu` for a rank-revealing variant).

    Zero and tiny pivots
        LoLDU's code divides U by its diagonal with no guard, so a zero pivot (an all-zero or
        rank-deficient W) gives inf. Here a pivot with ``|d_k| <= eps · max|W|`` is replaced by
        ``±eps · max|W|`` in D and its row of U is divided by that value, so D·U is unchanged,
        reconstruction stays exact and no factor holds inf or NaN; ``info["tiny_pivots"]`` counts them.
        eps is that of the coarser of the compute and output dtypes, so float16 factors stay finite too.

    Returns
    -------
    Factorization
        ``left = P · L[:, :r]`` (m, r), ``core = d`` (r,), ``right = U[:r] / d`` (r, n).
        ``info`` holds ``perm`` (``left[perm]`` is unit lower-trapezoidal) and ``tiny_pivots``.
        ``generator`` is ignored (LU is deterministic).
    """
    del generator
    Wc, prec = prepare(W, reference=reference, out_dtype=out_dtype)
    r = validate_rank(rank, Wc.shape)
    perm, L, U11 = _panel_lu(Wc[:, :r])  # W[perm, :r] = L (m, r) @ U11 (r, r)
    rows = Wc[perm[:r], r:]  # (r, n-r): pivot rows of the trailing block
    U12 = torch.linalg.solve_triangular(L[:r], rows, upper=False, unitriangular=True)
    U = torch.cat([U11, U12], dim=1)  # (r, n)
    d, n_tiny = _safe_pivots(torch.diagonal(U11).clone(), float(Wc.abs().max()), prec)
    left = _unpermute_rows(L, perm)  # (m, r) = P L, rows back in W's order
    return Factorization(
        left=to_output(left, prec, method="ldu", factor="left"),
        core=to_output(d, prec, method="ldu", factor="core"),
        right=to_output(U / d[:, None], prec, method="ldu", factor="right"),
        method="ldu",
        info={"perm": perm, "tiny_pivots": n_tiny},
    )


def randomized_ldu(
    W: torch.Tensor,
    rank: int,
    *,
    generator: torch.Generator | int | None = None,
    oversample: int = 5,
    reference: bool = False,
    out_dtype: torch.dtype | None = None,
) -> Factorization:
    """Rank-revealing randomized LU (Shabat, Shmueli, Aizenbud & Averbuch 2018, Algorithm 4.1).

    1. ``Y = W Ω`` with Gaussian Ω (n × (r + p)); ``Pᵀ Y = L_y U_y`` (partial pivoting); keep ``L_y[:, :r]``.
    2. ``B = L_y⁺ Pᵀ W`` (r × n), by least squares.
    3. ``Bᵀ`` = ``Q L_b U_b`` (partial pivoting on Bᵀ, i.e. column pivoting of B).
    4. ``W ≈ (P L_y U_bᵀ) · (L_bᵀ Qᵀ)``, written as ``left · diag(d) · right`` with d the diagonal of
       ``U_bᵀ`` (safe-guarded as in :func:`ldu`) so right is unit upper-trapezoidal in pivot order.

    Unlike :func:`ldu`, its error is tied to σ_{r+1}: Shabat et al. bound it by a modest multiple of
    it, like the randomized SVD. ``oversample`` p = 5 follows their experiments.
    """
    Wc, prec = prepare(W, reference=reference, out_dtype=out_dtype)
    r = validate_rank(rank, Wc.shape)
    m, n = Wc.shape
    size = min(r + oversample, m, n)
    g = make_generator(generator)
    Y = Wc @ gaussian((n, size), generator=g, dtype=Wc.dtype, device=Wc.device)  # (m, l)
    perm, Ly, _ = _panel_lu(Y)  # Y[perm] = Ly Uy
    Ly = Ly[:, :r]  # (m, r)
    # Ly has full column rank unless W does not; pinv's cut-off then keeps B finite.
    B = torch.linalg.pinv(Ly) @ Wc[perm]  # (r, n)
    perm_b, Lb, Ub = _panel_lu(B.T)  # B.T[perm_b] = Lb (n, r) @ Ub (r, r)
    d, n_tiny = _safe_pivots(torch.diagonal(Ub).clone(), float(Wc.abs().max()), prec)
    left = _unpermute_rows(Ly @ (Ub.T / d), perm)  # (m, r)
    right = _unpermute_rows(Lb, perm_b).T  # (r, n)
    return Factorization(
        left=to_output(left, prec, method="rlu", factor="left"),
        core=to_output(d, prec, method="rlu", factor="core"),
        right=to_output(right, prec, method="rlu", factor="right"),
        method="rlu",
        info={"sketch": size, "tiny_pivots": n_tiny},
    )
