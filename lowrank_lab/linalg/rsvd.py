"""Randomized SVD (Halko, Martinsson & Tropp 2011, "Finding structure with randomness", SIAM Review 53(2)).

Algorithm 4.4 of that paper (randomized subspace iteration) followed by Algorithm 5.1 (direct SVD of
the projected matrix). Defaults and the choice of normaliser are discussed in :func:`randomized_svd`.
"""

from __future__ import annotations

from typing import Literal

import torch

from .policy import gaussian, make_generator, prepare, validate_matrix, validate_rank
from .result import Factorization
from .svd import svd_flip, tall_svd

Normalizer = Literal["qr", "lu", "none"]


def _lu_basis(Y: torch.Tensor) -> torch.Tensor:
    """``P·L`` of ``Y = P·L·U`` (partial pivoting): the unit lower factor with its rows back in Y's order.

    Same span as ``Y`` (for full-rank Y), entries bounded by 1, and none of the cost of a dense P:
    ``torch.linalg.lu`` returns P as an (m, m) matrix, and ``P @ L`` costs O(m²·l) flops and m²
    floats (485 MB at m = 11008). Here L is formed in place in the LU output, and only the rows
    that LAPACK's swaps moved (at most 2·l) are put back — about the cost of ``getrf`` alone,
    1.4–3x cheaper than a Householder QR of the same panel (thread time, 4096–11008 × 18–138).
    """
    LU, pivots, _ = torch.linalg.lu_factor_ex(Y)  # a zero pivot (rank-deficient Y) is harmless here
    k = min(LU.shape)
    L = LU[:, :k].tril_(-1)
    L.diagonal().fill_(1.0)
    # LAPACK applies swaps (i, pivots[i] - 1) in order; track only the positions they touch.
    moved: dict[int, int] = {}
    for i, p in enumerate(pivots.tolist()):
        p -= 1
        if p != i:
            moved[i], moved[p] = moved.get(p, p), moved.get(i, i)
    if moved:
        # row i of L is row moved[i] of Y; write it back there (L[src] is read before the write)
        src = torch.tensor(list(moved.keys()), device=Y.device)
        dst = torch.tensor(list(moved.values()), device=Y.device)
        L[dst] = L[src]
    return L


# Products of W with a thin (l-column) panel are nearly all of a randomized SVD's cost. The same
# product can be handed to BLAS in two operand orders — W @ X or (Xᵀ Wᵀ)ᵀ, Wᵀ @ Y or (Yᵀ W)ᵀ — and
# with MKL on the CPU the faster one depends on the thread count, l and the shape (float32, medians
# of 21 interleaved runs, 2 threads unless said; 4096², 11008×4096 and 4096×11008):
#   1 thread: the thin-panel-on-the-left order is 20–30% faster at every l in 18…138 (thread time);
#   l >= 96:  it is 2–13% faster for W·X and Wᵀ·Y alike, on every shape;
#   smaller l: it wins when it runs along W's long side — (Yᵀ W)ᵀ for a tall W (11008×4096: 15% at
#   l = 18, 12% at 74) and (Xᵀ Wᵀ)ᵀ for a wide one (4096×11008: 5–6%) — and loses otherwise (up to
#   20%). On square W, W·X takes the same time either way (±5%), but Wᵀ·Y is 10–20% faster as
#   (Yᵀ W)ᵀ (4096², l = 18: 9.0–10.3 ms against 11.2–12.5 ms, OMP_WAIT_POLICY=PASSIVE or not):
#   Wᵀ is a transposed operand for BLAS, Yᵀ W is not. In whole rank-8 randomized SVDs (paired,
#   alternating rounds) that made rsvd 0.92x its previous time on 4096² and 0.88x on 1024².
# So: thin panel on the left when single-threaded, when l >= 96, or along the long side (for Wᵀ·Y
# that includes square W); torch's plain order otherwise and on GPUs (not measured there). Both
# orders compute the same product; results differ only by the order of rounding.
_THIN_LEFT_MIN_L = 96


def _thin_left(W: torch.Tensor, l: int, *, long_side: bool) -> bool:
    if W.device.type != "cpu":
        return False
    return torch.get_num_threads() == 1 or l >= _THIN_LEFT_MIN_L or long_side


def _times(W: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``W @ X`` for a thin ``X`` (n, l); as ``(Xᵀ Wᵀ)ᵀ`` where that is faster (see above)."""
    wide = W.shape[1] > W.shape[0]
    return (X.T @ W.T).T if _thin_left(W, X.shape[1], long_side=wide) else W @ X


def _t_times(W: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """``Wᵀ @ Y`` for a thin ``Y`` (m, l); as ``(Yᵀ W)ᵀ`` where that is faster (see above)."""
    not_wide = W.shape[0] >= W.shape[1]
    return (Y.T @ W).T if _thin_left(W, Y.shape[1], long_side=not_wide) else W.T @ Y


def _normalize(Y: torch.Tensor, how: Normalizer) -> torch.Tensor:
    # Re-normalisation only has to keep the columns from collapsing onto the top singular vector in
    # floating point; it need not be orthonormal. LU (scikit-learn's choice) is cheaper than QR on
    # an (m, l) panel (see _lu_basis) and keeps the same span.
    if how == "qr":
        return torch.linalg.qr(Y).Q
    if how == "lu":
        return _lu_basis(Y)
    if how == "none":
        return Y
    raise ValueError(f"normalizer must be 'qr', 'lu' or 'none', got {how!r}")


def randomized_range_finder(
    W: torch.Tensor,
    size: int,
    *,
    n_iter: int,
    normalizer: Normalizer = "lu",
    generator: torch.Generator | int | None = None,
) -> torch.Tensor:
    """Orthonormal ``(m, size)`` basis ``Q`` whose span approximates the range of ``W``.

    Halko et al. 2011, Algorithm 4.4: ``Y = W Ω`` with Gaussian ``Ω`` (n × size), then ``n_iter``
    rounds of ``Y ← W (Wᵀ Y)`` with a re-normalisation after each product (the paper's
    re-orthonormalisation; LU re-normalisation as in scikit-learn's ``randomized_range_finder``),
    and a QR on the last. ``W`` must already be in its compute dtype.
    """
    g = make_generator(generator)
    omega = gaussian((W.shape[1], size), generator=g, dtype=W.dtype, device=W.device)  # (n, l)
    Y = _times(W, omega)  # (m, l)
    for _ in range(n_iter):
        Z = _t_times(W, _normalize(Y, normalizer))  # (n, l)
        Y = _times(W, _normalize(Z, normalizer))  # (m, l)
    return torch.linalg.qr(Y).Q


def randomized_svd(
    W: torch.Tensor,
    rank: int,
    *,
    generator: torch.Generator | int | None = None,
    oversample: int = 10,
    n_iter: int = 2,
    normalizer: Normalizer = "lu",
    reference: bool = False,
    out_dtype: torch.dtype | None = None,
) -> Factorization:
    """Rank-``r`` randomized SVD ``W ≈ U_r diag(S_r) Vh_r`` (Halko, Martinsson & Tropp 2011).

    Parameters
    ----------
    W : Tensor, shape (m, n)
    rank : int
        ``1 <= rank <= min(m, n)``.
    generator : torch.Generator or int, optional
        Source of the Gaussian test matrix; None means seed 0 (reproducible by default).
    oversample : int, default 10
        Extra sketch columns p, so the sketch has ``l = min(rank + p, min(m, n))`` columns. 10 is
        scikit-learn's ``n_oversamples`` and the top of Halko et al.'s p = 5–10; with ``n_iter=0`` the
        expected Frobenius error is at most ``(1 + r/(p−1))^½ · ‖W − W_r‖_F`` (their Theorem 10.5).
        ``oversample=0`` reproduces PEFT's ``pissa_niter_N`` (``torch.svd_lowrank(W, q=r)``).
    n_iter : int, default 2
        Power (subspace) iterations q. 2 is ``torch.svd_lowrank``'s ``niter`` default; each one
        raises the singular values to the next odd power, pushing the spectral error toward
        σ_{r+1}. scikit-learn uses 7 (r < 0.1·min(m, n)) or 4; on spectra like real LLM weights
        (σ_k ∝ k^-0.4) two are already within 1% of the Frobenius optimum (benchmarks/factorizations.py).
    normalizer : {"lu", "qr", "none"}, default "lu"
        Re-normalisation between power-iteration products: LU as scikit-learn, QR as
        ``torch.svd_lowrank``, or none (unstable beyond a couple of iterations in float32).
    reference : bool
        Compute in float64.
    out_dtype : torch.dtype, optional
        Dtype of the factors; default the input's.

    Returns
    -------
    Factorization
        ``left`` (m, r) with orthonormal columns, ``core`` = S_r (r,), ``right`` (r, n) with
        orthonormal rows; signs fixed by :func:`~lowrank_lab.linalg.svd.svd_flip`.
        ``info`` records ``sketch`` (l), ``n_iter`` and ``normalizer``.

    Notes
    -----
    Cost ≈ (2q + 2) · 2·m·n·l flops for the products with ``W``, plus O((m + n)·l²).
    """
    # No separate pass over W to prove it finite: a NaN or Inf entry reaches every later product
    # through W Ω (Ω has no zero entries), so checking the (m, l) basis is enough, and W is only
    # scanned, for the error message, when that check fails. The pass cost 1-2% of a rank-8 call.
    Wc, prec = prepare(W, reference=reference, out_dtype=out_dtype, check_finite=False)
    r = validate_rank(rank, Wc.shape)
    if oversample < 0 or n_iter < 0:
        raise ValueError(f"oversample and n_iter must be >= 0, got {oversample} and {n_iter}")
    size = min(r + oversample, min(Wc.shape))
    Q = randomized_range_finder(Wc, size, n_iter=n_iter, normalizer=normalizer, generator=generator)
    if not bool(torch.isfinite(Q).all()):
        validate_matrix(W)  # raises, counting the NaN/Inf entries
        raise ValueError(
            f"randomized_svd: W is finite (|W| <= {float(W.abs().max()):.3g}) but its sketch overflowed "
            f"{Wc.dtype}; scale W down or pass reference=True"
        )
    # B = Qᵀ W (l, n), held as its transpose Bᵀ = Wᵀ Q (n, l): the third kind of thin product, in
    # the faster operand order. Bᵀ = Um diag(S) Vmh (QR first, see tall_svd) gives B = Ub diag(S) Vh
    # with Ub = Vmhᵀ and Vh = Umᵀ.
    Um, S, Vmh = tall_svd(_t_times(Wc, Q))
    # Q @ Ub, then slice (a sliced Ub is a strided GEMM operand); Vh made row-major as before
    U, Vh = svd_flip((Q @ Vmh.T)[:, :r], Um.T[:r].contiguous())
    return Factorization(
        left=U.to(prec.output),
        core=S[:r].to(prec.output),
        right=Vh.to(prec.output),
        method="rsvd",
        info={"sketch": size, "n_iter": n_iter, "normalizer": normalizer, "singular_values": S[:r]},
    )
