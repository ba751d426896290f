"""Spectra of an adapter's update ΔW and of the tuned weight W + ΔW, one matrix at a time.

WeightWatcher 0.7.7 (Martin & Mahoney 2021) analyses a PEFT LoRA adapter in its PEFT mode
(``WeightWatcher(model=peft_model).analyze(peft=True)``): it replaces each ``lora_A`` layer by the
product ``B·A`` (its layer name ``lora_BA``) and fits the eigenvalues of that matrix — the top r
singular values squared, r the adapter's rank (``WWPeftLayerIterator.update_peft_layers``,
``num_components = lora_rank``). ``analyze(peft='with_base')`` also reports ``W + B·A`` through its
top r singular values only, which its source calls legacy; here the tuned weight ``W + ΔW`` gets its
whole spectrum, as :mod:`lowrank_lab.analyze` gives the base.

Each row carries the columns of ``spectra.csv`` (:func:`lowrank_lab.analysis.spectra.spectral_stats`)
and says which matrix it describes (``matrix``: ``delta`` or ``tuned``), with the adapter's rank and
scaling. ΔW is the update the model applies, ``s·B·A``; its stable rank and alpha do not depend on s
(both are scale-free), while WeightWatcher's norms are those of the unscaled ``B·A``.

ΔW's singular values come from the factors when they are known (a PEFT adapter): the r values of
``s·B·A`` are those of the r × r core ``R_B R_Aᵀ`` of the thin QRs ``B = Q_B R_B``, ``Aᵀ = Q_A R_A``
(float64), and the other ``min(m, n) − r`` are exactly zero, where an SVD of the m × n product in
float32 would leave rounding noise. Merged weights (a fine-tuning run's ``merged/``) give ΔW only as
``W_tuned − W``: its singular values are those of that difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lowrank_lab.analysis.factorization import matrix_ident
from lowrank_lab.analysis.spectra import spectra_columns, spectral_stats
from lowrank_lab.linalg import singular_values

__all__ = [
    "UPDATE_SPECTRA_COLUMNS", "UPDATE_SPECTRA_RANKS", "factor_singular_values", "update_spectra_rows",
]

#: Ranks of the ``energy_r*`` columns: analyze's default ``--ranks 8,32,64``.
UPDATE_SPECTRA_RANKS: tuple[int, ...] = (8, 32, 64)
#: Columns of update_spectra.csv: which matrix, the adapter's rank and scaling, then spectra.csv's.
UPDATE_SPECTRA_COLUMNS = ["matrix", "adapter_rank", "scaling", *spectra_columns(UPDATE_SPECTRA_RANKS)]


def factor_singular_values(B: torch.Tensor, A: torch.Tensor, scaling: float = 1.0) -> torch.Tensor:
    """All ``min(m, n)`` singular values of ``s·B·A`` (B: (m, r), A: (r, n)), descending, float64.

    The r that can be non-zero are those of ``R_B R_Aᵀ`` (thin QRs ``B = Q_B R_B``, ``Aᵀ = Q_A R_A``:
    ``B·A = Q_B (R_B R_Aᵀ) Q_Aᵀ`` with orthonormal columns on both sides); the rest are 0.
    """
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"factors B {tuple(B.shape)} and A {tuple(A.shape)} do not multiply as B·A")
    m, n = int(B.shape[0]), int(A.shape[1])
    _, RB = torch.linalg.qr(B.detach().to("cpu", torch.float64))  # (min(m, r), r)
    _, RA = torch.linalg.qr(A.detach().to("cpu", torch.float64).T)  # (min(n, r), r)
    core = torch.linalg.svdvals(RB @ RA.T) * abs(float(scaling))
    out = torch.zeros(min(m, n), dtype=torch.float64)
    k = min(core.numel(), out.numel())
    out[:k] = torch.sort(core, descending=True).values[:k]
    return out


def update_spectra_rows(
    info: Any,
    W0: torch.Tensor,
    delta: torch.Tensor,
    *,
    rank: int | None = None,
    scaling: float | None = None,
    factors: tuple[torch.Tensor, torch.Tensor] | None = None,
    ranks: Sequence[int] = UPDATE_SPECTRA_RANKS,
    small_n: bool = True,
) -> list[dict[str, Any]]:
    """The two rows of one matrix: ``matrix="delta"`` (ΔW) and ``matrix="tuned"`` (W + ΔW).

    Parameters
    ----------
    info : TargetInfo
        Names the matrix (tensor, layer, module, role, fused, expert).
    W0, delta : Tensor, shape (m, n)
        The base weight and the update the model applies (``s·B·A``, or ``W_tuned − W0``).
    rank, scaling : optional
        The adapter's rank r and scaling s, written beside the statistics (empty when unknown).
    factors : (B, A), optional
        The adapter's factors (``delta == scaling·B·A``): ΔW's spectrum is computed from them
        (:func:`factor_singular_values`, exact zeros beyond r).
    ranks : sequence of int
        Ranks of the ``energy_r*`` columns (analyze's default 8, 32, 64).
    small_n : bool, default True
        A ΔW of rank r < 20 has fewer than 20 eigenvalues: fit its alpha with WeightWatcher's
        small-sample estimator (:func:`lowrank_lab.analysis.spectra.fit_power_law_small_n`), as its
        PEFT mode does, rather than report NaN. Read such an alpha as WeightWatcher's number, not as
        a measured exponent.
    """
    if tuple(delta.shape) != tuple(W0.shape):
        raise ValueError(f"{info.tensor}: update {tuple(delta.shape)} but base weight {tuple(W0.shape)}")
    shape = (int(W0.shape[0]), int(W0.shape[1]))
    ident = {**matrix_ident(info), "m": shape[0], "n": shape[1]}
    cdt = torch.promote_types(torch.promote_types(W0.dtype, delta.dtype), torch.float32)
    eps = torch.finfo(cdt).eps
    if factors is not None:
        S_delta = factor_singular_values(*factors, 1.0 if scaling is None else scaling)
    else:
        S_delta = singular_values(delta.to(cdt))
    S_tuned = singular_values(W0.to(cdt) + delta.to(device=W0.device, dtype=cdt))
    extra = {"adapter_rank": "" if rank is None else int(rank), "scaling": "" if scaling is None else scaling}
    rows = []
    for which, S in (("delta", S_delta), ("tuned", S_tuned)):
        stats = spectral_stats(S, shape, ranks=ranks, eps=eps, small_n=small_n)
        rows.append({"matrix": which, **extra, **ident, **stats})
    return rows
