"""Nyström approximations: NLoRA as released, CUR-Nyström, and the sketched generalised Nyström.

All three write ``W ≈ C · M · R`` with a column block C, a small core M and a row block R. They
differ in where C and R come from and in what M is — the difference NLoRA's paper (Guo et al. 2025,
arXiv 2502.14482) blurs and lowrank_lab measures (see REFERENCE.md, "NLoRA, as released").
"""

from __future__ import annotations

import math

import torch

from .policy import gaussian, make_generator, prepare, to_output, validate_rank
from .result import Factorization
from .rsvd import _normalize, _t_times, _times


def nystrom_released(
    W: torch.Tensor,
    rank: int,
    *,
    generator: torch.Generator | int | None = None,
    reference: bool = False,
    out_dtype: torch.dtype | None = None,
) -> Factorization:
    """NLoRA's initialisation exactly as its code releases it (TracyGuo2001/NLoRA, ``nlora_init``).

    ``left = W[:, :r]`` (first r columns), ``core = W[:r, :r]`` (the raw core block, *no*
    pseudo-inverse), ``right = W[:r, :]`` (first r rows). ``left @ core @ right`` is not an
    approximation of W — its scale is that of ‖W‖³ — which is why NLoRA's adapter changes the model's
    output at step 0. It is here to be measured beside :func:`nystrom_pinv`, the textbook form the
    paper's figure draws. ``generator`` is ignored (the selection is deterministic).
    """
    del generator
    Wc, prec = prepare(W, reference=reference, out_dtype=out_dtype)
    r = validate_rank(rank, Wc.shape)
    return Factorization(
        left=Wc[:, :r].clone().to(prec.output),
        core=Wc[:r, :r].clone().to(prec.output),
        right=Wc[:r, :].clone().to(prec.output),
        method="nystrom-released",
        info={"rows": list(range(r)), "cols": list(range(r))},
    )


def nystrom_pinv(
    W: torch.Tensor,
    rank: int,
    *,
    generator: torch.Generator | int | None = None,
    rtol: float | None = None,
    reference: bool = False,
    out_dtype: torch.dtype | None = None,
) -> Factorization:
    """Textbook CUR–Nyström on the first r rows and columns: ``W ≈ W[:, :r] · W[:r, :r]⁺ · W[:r, :]``.

    The form NLoRA's paper draws (Guo et al. 2025) and the classical column/row Nyström (Williams &
    Seeger 2001; Drineas & Mahoney 2005 for CUR). When the core block is invertible, the
    approximation reproduces the chosen r rows and r columns of W exactly.

    Parameters
    ----------
    rtol : float, optional
        Relative cut-off of the pseudo-inverse; singular values of the core below
        ``rtol · σ_max`` are treated as zero. Default ``r · eps`` of the compute dtype
        (``torch.linalg.pinv``'s and NumPy's default), so a singular core never yields inf or NaN;
        never below the output dtype's eps (for bf16/fp16 factors), because a direction whose 1/σ
        exceeds 1/(eps·σ_max) is drowned by the output rounding and overflows float16.
    generator : ignored (deterministic selection).
    """
    del generator
    Wc, prec = prepare(W, reference=reference, out_dtype=out_dtype)
    r = validate_rank(rank, Wc.shape)
    if rtol is None:
        rtol = max(r * torch.finfo(Wc.dtype).eps, torch.finfo(prec.output).eps)
    core = torch.linalg.pinv(Wc[:r, :r], rtol=rtol)
    return Factorization(
        left=Wc[:, :r].clone().to(prec.output),
        core=to_output(core, prec, method="nystrom-pinv", factor="core (pseudo-inverse)"),
        right=Wc[:r, :].clone().to(prec.output),
        method="nystrom-pinv",
        info={"rows": list(range(r)), "cols": list(range(r)), "rtol": rtol},
    )


def nystrom_sketch(
    W: torch.Tensor,
    rank: int,
    *,
    generator: torch.Generator | int | None = None,
    oversample: int | None = None,
    n_iter: int = 2,
    eps: float | None = None,
    reference: bool = False,
    out_dtype: torch.dtype | None = None,
) -> Factorization:
    """Generalised Nyström with Gaussian sketches, stabilised (Nakatsukasa 2020, arXiv 2009.11392).

    ``W ≈ (W X) (Yᵀ W X)⁺_ε (Yᵀ W)`` with X (n × r) and Y (m × (r + ℓ)) Gaussian. The pseudo-inverse
    is computed as the paper's stable variant prescribes: QR of the ``((r+ℓ) × r)`` core
    ``Yᵀ W X = Q R``, then an SVD of the small triangle R truncated at ``ε · σ_max(R)``, applied to
    the two outer blocks separately so no ill-conditioned product is ever formed.

    Parameters
    ----------
    oversample : int, optional
        ℓ, the extra columns of the left sketch. Default ``ceil(r / 2)``, Nakatsukasa's
        recommendation (ℓ ≈ r/2): with ℓ = 0 the core is square and the error can be unbounded.
    n_iter : int, default 2
        Power iterations on both sketches (``X ← Wᵀ W X`` and ``Y ← W Wᵀ Y``, LU-renormalised as in
        :func:`~lowrank_lab.linalg.rsvd.randomized_range_finder`). 0 is the plain method of the
        paper, but real weights decay slowly (log-log slope −0.3…−0.5; REFERENCE.md), and there the
        plain oblique projection is worse than the zero matrix (error ratio ≈ 2 at σ_k ∝ k^-0.4);
        two iterations, as in :func:`~lowrank_lab.linalg.rsvd.randomized_svd`, bring it to
        1.03–1.2 × the optimum (benchmarks/factorizations.py).
    eps : float, optional
        Relative truncation of the core's singular values. Default the unit roundoff of the compute
        dtype (Nakatsukasa's ε ≈ u·‖W‖, relative to the core's scale). Never computed in bf16.
    generator : torch.Generator or int, optional
        Source of both sketches; None means seed 0.

    Returns
    -------
    Factorization
        ``left = W X V_k`` (m, r), ``core = 1/s_k`` (r,), ``right = U_kᵀ Qᵀ Yᵀ W`` (r, n), where
        ``R = U S Vᵀ``; directions cut by the ε-truncation are zero columns/rows, so the rank
        stays r. ``info["kept"]`` counts the directions kept.

    Raises
    ------
    ValueError
        Float16 factors whose ``1/s_k`` (or blocks) exceed 65504 — likely for weights with entries
        ~0.02 — rather than returning inf; pass ``out_dtype=torch.float32``.
    """
    Wc, prec = prepare(W, reference=reference, out_dtype=out_dtype)
    r = validate_rank(rank, Wc.shape)
    m, n = Wc.shape
    ell = math.ceil(r / 2) if oversample is None else int(oversample)
    if ell < 0 or n_iter < 0:
        raise ValueError(f"oversample and n_iter must be >= 0, got {ell} and {n_iter}")
    size_y = min(r + ell, m)
    g = make_generator(generator)
    X = gaussian((n, r), generator=g, dtype=Wc.dtype, device=Wc.device)  # (n, r)
    Y = gaussian((m, size_y), generator=g, dtype=Wc.dtype, device=Wc.device)  # (m, r+ℓ)
    for _ in range(n_iter):
        X = _t_times(Wc, _normalize(_times(Wc, _normalize(X, "lu")), "lu"))
        Y = _times(Wc, _normalize(_t_times(Wc, _normalize(Y, "lu")), "lu"))
    WX = _times(Wc, X)  # (m, r)
    YW = Y.T @ Wc  # (r+ℓ, n)
    Q, R = torch.linalg.qr(YW @ X)  # (r+ℓ, r), (r, r)
    Ur, s, Vrh = torch.linalg.svd(R)
    tol = (torch.finfo(Wc.dtype).eps if eps is None else eps) * (s[0] if s.numel() else 0.0)
    keep = s > tol
    kept = int(keep.sum())
    inv_s = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
    left = (WX @ Vrh.T) * keep  # (m, r), dropped directions zeroed
    right = (Ur.T @ (Q.T @ YW)) * keep[:, None]  # (r, n)
    return Factorization(
        left=to_output(left, prec, method="nystrom", factor="left"),
        core=to_output(inv_s, prec, method="nystrom", factor="core (1/s_k)"),
        right=to_output(right, prec, method="nystrom", factor="right"),
        method="nystrom",
        info={"oversample": ell, "n_iter": n_iter, "kept": kept},
    )
