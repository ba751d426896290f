"""Thin QR, the factorization behind OLoRA.

Büyükakyüz 2024, arXiv 2406.01775; PEFT ``init_lora_weights="olora"``.
"""

from __future__ import annotations

import torch

from .policy import prepare, validate_rank
from .result import Factorization


def thin_qr(
    W: torch.Tensor,
    rank: int,
    *,
    generator: torch.Generator | int | None = None,
    reference: bool = False,
    out_dtype: torch.dtype | None = None,
) -> Factorization:
    """``W ≈ Q[:, :r] · R[:r, :]`` from the reduced QR ``W = Q R`` (Householder, LAPACK geqrf).

    OLoRA takes exactly these blocks as B and A. The truncation keeps the part of W in the span of
    its first r columns: it is not rank-revealing (no column pivoting), so the error is not tied to
    σ_{r+1}. At ``r = min(m, n)`` the product is W to roundoff. ``generator`` is ignored.
    """
    del generator
    Wc, prec = prepare(W, reference=reference, out_dtype=out_dtype)
    r = validate_rank(rank, Wc.shape)
    Q, R = torch.linalg.qr(Wc)  # (m, k), (k, n), k = min(m, n)
    return Factorization(
        left=Q[:, :r].contiguous().to(prec.output),
        right=R[:r, :].contiguous().to(prec.output),
        method="qr",
    )
