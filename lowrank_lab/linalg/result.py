"""The one result type of every factorization: ``W ≈ left · [core] · right``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch


@dataclass(frozen=True)
class Factorization:
    """A rank-``r`` factorization ``W ≈ left @ core @ right`` of an ``(m, n)`` matrix.

    Attributes
    ----------
    left : Tensor, shape (m, r)
    right : Tensor, shape (r, n)
    core : Tensor or None
        ``(r, r)`` matrix, or ``(r,)`` vector meaning a diagonal core (Σ of an SVD, D of an LDU),
        or None when ``left @ right`` is the whole approximation.
    method : str
        Registry name of the algorithm that made it (``"svd"``, ``"rsvd"``, ...).
    info : dict
        Algorithm-specific extras, e.g. the permutation of an LDU or the sketch sizes of a
        randomized method; never needed by :meth:`reconstruct`.
    """

    left: torch.Tensor
    right: torch.Tensor
    core: torch.Tensor | None = None
    method: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        r = self.left.shape[1]
        if self.right.shape[0] != r:
            raise ValueError(f"left is {tuple(self.left.shape)} but right is {tuple(self.right.shape)}")
        if self.core is not None and tuple(self.core.shape) not in {(r,), (r, r)}:
            raise ValueError(f"core must be ({r},) or ({r}, {r}), got {tuple(self.core.shape)}")

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.left.shape[0]), int(self.right.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.left.dtype

    def reconstruct(self) -> torch.Tensor:
        """The ``(m, n)`` approximation, in the factors' dtype."""
        left = self.left
        if self.core is not None:
            left = left * self.core if self.core.ndim == 1 else left @ self.core
        return left @ self.right

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Factorization:
        """The same factorization with every tensor moved/cast (``info`` is kept as is)."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return replace(self, left=move(self.left), right=move(self.right), core=move(self.core))

    def dense_core(self) -> torch.Tensor:
        """The core as an ``(r, r)`` matrix (identity when there is none)."""
        if self.core is None:
            return torch.eye(self.rank, dtype=self.left.dtype, device=self.left.device)
        return torch.diag(self.core) if self.core.ndim == 1 else self.core
