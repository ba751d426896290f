"""The one registry of factorization methods, used by the CLI, the adapters, the tests and the reports."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .ldu import ldu, randomized_ldu
from .nystrom import nystrom_pinv, nystrom_released, nystrom_sketch
from .qr import thin_qr
from .result import Factorization
from .rsvd import randomized_svd
from .svd import truncated_svd


@dataclass(frozen=True)
class FactorizationMethod:
    """A registered factorization: ``fn(W, rank, *, generator=None, **options) -> Factorization``."""

    name: str
    fn: Callable[..., Factorization]
    summary: str
    reference: str
    randomized: bool
    rank_revealing: bool
    options: dict[str, Any] = field(default_factory=dict)

    def __call__(self, W: torch.Tensor, rank: int, **kwargs: Any) -> Factorization:
        return self.fn(W, rank, **{**self.options, **kwargs})


FACTORIZATIONS: dict[str, FactorizationMethod] = {
    m.name: m
    for m in [
        FactorizationMethod(
            "svd", truncated_svd, "exact truncated SVD (the Eckart–Young optimum)",
            "Eckart & Young 1936", randomized=False, rank_revealing=True,
        ),
        FactorizationMethod(
            "rsvd", randomized_svd, "randomized SVD, p=10, q=2, LU re-normalisation",
            "Halko, Martinsson & Tropp 2011, Alg. 4.4 + 5.1", randomized=True, rank_revealing=True,
        ),
        FactorizationMethod(
            "nystrom", nystrom_sketch, "sketched generalised Nyström, ℓ=r/2, q=2, ε-truncated core",
            "Nakatsukasa 2020, arXiv 2009.11392", randomized=True, rank_revealing=True,
        ),
        FactorizationMethod(
            "nystrom-pinv", nystrom_pinv, "CUR-Nyström on the first r rows/columns, core W[:r,:r]⁺",
            "Williams & Seeger 2001; NLoRA paper figure", randomized=False, rank_revealing=False,
        ),
        FactorizationMethod(
            "nystrom-released", nystrom_released, "NLoRA as released: raw core W[:r,:r] (no pinv)",
            "Guo et al. 2025, TracyGuo2001/NLoRA nlora_init", randomized=False, rank_revealing=False,
        ),
        FactorizationMethod(
            "ldu", ldu, "truncated LDU from LU with partial pivoting",
            "Shi et al. 2024 (LoLDU), arXiv 2410.13618", randomized=False, rank_revealing=False,
        ),
        FactorizationMethod(
            "rlu", randomized_ldu, "randomized LU (rank-revealing), p=5",
            "Shabat et al. 2018, Alg. 4.1", randomized=True, rank_revealing=True,
        ),
        FactorizationMethod(
            "qr", thin_qr, "thin QR, first r columns of Q and rows of R (OLoRA)",
            "Büyükakyüz 2024 (OLoRA), arXiv 2406.01775", randomized=False, rank_revealing=False,
        ),
    ]
}


def get_factorization(name: str) -> FactorizationMethod:
    """Look a method up by name; an unknown name lists the valid ones and the closest matches."""
    try:
        return FACTORIZATIONS[name]
    except KeyError:
        close = difflib.get_close_matches(name, FACTORIZATIONS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown factorization method {name!r}.{hint} Valid methods: {', '.join(FACTORIZATIONS)}"
        ) from None


def factorize(W: torch.Tensor, rank: int, method: str = "svd", **kwargs: Any) -> Factorization:
    """``get_factorization(method)(W, rank, **kwargs)``."""
    return get_factorization(method)(W, rank, **kwargs)
