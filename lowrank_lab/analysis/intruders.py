"""Intruder dimensions between a base weight W0 and a fine-tuned weight W.

Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence" (arXiv 2410.21228;
code: reeceshuttle/intruder-dimensions, ``find_intruder_dimensions.py``). For each target matrix:

1. the singular vectors of W0 — *all* of them, i.e. the ``p = min(m, n)`` columns of the thin SVD
   ``W0 = U0 Σ0 V0ᵀ`` (``full_matrices=False``, as the paper's code and PEFT's
   ``reduce_intruder_dimension`` both do: for a tall matrix the extra columns of a complete U would
   be an arbitrary basis of the null space of W0ᵀ and would make the result basis-dependent);
2. the top-k singular vectors of W (descending singular values);
3. the ``k × p`` matrix of absolute cosine similarities ``|u_iᵀ u0_j|`` (all vectors have unit norm);
4. a tuned vector whose best match ``max_j |u_iᵀ u0_j|`` is below ε (strictly) is an *intruder dimension*.

Defaults k = 10 and ε = 0.5 are the paper's and PEFT's (``reduce_intruder_dimension(top_k=10,
threshold_epsilon=0.5)``); the ε sweep 0.1…0.9 follows the paper's count-vs-ε figures. The paper uses the
left singular vectors; ``side="right"`` applies the same definition to the rows of Vᵀ.

Speed: the base SVD is the expensive part and is shared by every fine-tune of one base, so
:class:`~lowrank_lab.analysis.svd_cache.SVDCache` stores it on disk keyed by the tensor's content.
The tuned side needs only its top k vectors and may use a randomized SVD
(``tuned_svd="randomized"``, Halko, Martinsson & Tropp 2011); tests/analysis/test_intruders.py
shows it gives the same counts as the full SVD on planted and real matrices.

All SVDs come from :mod:`lowrank_lab.linalg` (float32 for half-precision inputs, float64 on request).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from lowrank_lab.analysis.svd_cache import SVDCache, default_cache_dir, tensor_digest
from lowrank_lab.linalg import randomized_svd, truncated_svd, validate_matrix
from lowrank_lab.linalg.policy import compute_dtype

__all__ = [  # the cache is re-exported: callers of find_intruders pass one
    "DEFAULT_EPSILON", "DEFAULT_TOP_K", "EPSILON_GRID", "SIDES", "TUNED_SVD_METHODS", "IntruderInputError",
    "IntruderRecord", "SVDCache", "SingularBasis", "abs_cosine", "base_bases", "certified", "count_intruders",
    "default_cache_dir", "epsilon_sweep", "find_intruders", "full_bases", "parse_side",
    "record_from_bases", "top_bases", "vector_error_bounds",
]

Side = Literal["left", "right"]
SIDES: tuple[str, ...] = ("left", "right")
#: k = 10: the paper's and PEFT's ``top_k`` default.
DEFAULT_TOP_K = 10
#: ε = 0.5: the paper's and PEFT's ``threshold_epsilon`` default.
DEFAULT_EPSILON = 0.5
#: The ε grid of the paper's count-vs-ε figures.
EPSILON_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))
TUNED_SVD_METHODS = ("full", "randomized")



class IntruderInputError(ValueError):
    """Two weights that cannot be compared (shapes differ, a bad option, a non-finite entry)."""


def parse_side(side: str | Sequence[str]) -> tuple[str, ...]:
    """``"left"``, ``"right"`` or ``"both"`` (or a sequence of the first two) → a tuple of sides."""
    if isinstance(side, str):
        if side == "both":
            return SIDES
        sides: tuple[str, ...] = (side,)
    else:
        sides = tuple(side)
    bad = [s for s in sides if s not in SIDES]
    if bad or not sides:
        raise IntruderInputError(f"side must be 'left', 'right' or 'both', got {side!r}")
    return tuple(dict.fromkeys(sides))


# --------------------------------------------------------------------------------------------------
# Singular bases
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SingularBasis:
    """Unit singular vectors of one side of a matrix, as columns, with their singular values.

    Attributes
    ----------
    vectors : Tensor, shape (d, p)
        Left: the columns of U (d = m). Right: the rows of Vᵀ, transposed (d = n).
    singular_values : Tensor, shape (p,)
        Descending.
    side : {"left", "right"}
    """

    vectors: torch.Tensor
    singular_values: torch.Tensor
    side: str

    @property
    def size(self) -> int:
        return int(self.vectors.shape[1])


def _bases_from(fact, sides: Sequence[str]) -> dict[str, SingularBasis]:
    out = {}
    for side in sides:
        vecs = fact.left if side == "left" else fact.right.T
        out[side] = SingularBasis(vecs.contiguous(), fact.core, side)
    return out


def full_bases(
    W: torch.Tensor, sides: Sequence[str] = ("left",), *, reference: bool = False
) -> dict[str, SingularBasis]:
    """All ``min(m, n)`` singular vectors of ``W`` on each requested side, from one thin SVD.

    Uses :func:`lowrank_lab.linalg.truncated_svd` at full rank (compute dtype float32 for
    half-precision inputs, float64 with ``reference=True``; the factors stay in that dtype).
    """
    rank = min(W.shape)
    fact = truncated_svd(W, rank, reference=reference, out_dtype=compute_dtype(W.dtype, reference=reference))
    return _bases_from(fact, sides)


#: Randomized tuned SVD defaults (see :func:`top_bases`): sketch ``k + 1 + max(40, 2k)`` columns,
#: 12 power iterations. Chosen on MiniLM + rank-8 updates (36 matrices): with (10, 7) — scikit-learn's
#: defaults — 25 of 36 matrices could not be certified; with (40, 12) none failed.
RANDOMIZED_OVERSAMPLE = 40
RANDOMIZED_N_ITER = 12


def vector_error_bounds(W: torch.Tensor, fact, k: int) -> torch.Tensor:
    """Upper bounds on the error of every |cos| similarity of the first ``k`` computed singular vectors.

    For an approximate triplet (σ̃, ũ, ṽ) with residual ``r = max(‖W ṽ − σ̃ ũ‖, ‖Wᵀ ũ − σ̃ ṽ‖)`` and
    gap δ between σ̃ and every other singular value, the angle θ to the exact singular vectors obeys
    ``sin θ ≤ r / (δ − r)`` (Wedin 1972; the residual form of Davis–Kahan). The best-match |cos| is
    1-Lipschitz in the vector, and ``‖ũ − u‖ ≤ √2 · sin θ``, so a similarity moves by at most
    ``√2 · r / (δ − r)``. δ is estimated from the neighbouring computed singular values (the
    factorization must hold at least k + 1 of them); where ``δ ≤ r`` the bound is 1 (no guarantee).

    Returns
    -------
    Tensor, shape (k,)
        float64 bounds in [0, 1], on the CPU; where below 1 they also bound ``‖ũ − u‖`` (and
        ``‖ṽ − v‖``) for the sign-matched exact singular vectors.
    """
    cdt = fact.left.dtype
    Wc = W.to(cdt)
    U, S, Vh = fact.left[:, :k], fact.core, fact.right[:k]
    r1 = torch.linalg.vector_norm(Wc @ Vh.T - U * S[:k], dim=0)  # (k,)
    r2 = torch.linalg.vector_norm(Wc.T @ U - Vh.T * S[:k], dim=0)
    r = torch.maximum(r1, r2).double().cpu()
    Sd = S.double().cpu()
    left_gap = torch.cat([torch.tensor([float("inf")], dtype=torch.float64), Sd[: k - 1] - Sd[1:k]])
    right_gap = Sd[:k] - Sd[1 : k + 1]
    gap = torch.minimum(left_gap, right_gap)
    bound = torch.where(gap > r, 2**0.5 * r / (gap - r).clamp_min(1e-300), torch.ones_like(r))
    return bound.clamp(max=1.0)


def top_bases(
    W: torch.Tensor,
    k: int,
    sides: Sequence[str] = ("left",),
    *,
    method: str = "full",
    oversample: int | None = None,
    n_iter: int = RANDOMIZED_N_ITER,
    generator: torch.Generator | int | None = 0,
    reference: bool = False,
) -> tuple[dict[str, SingularBasis], torch.Tensor]:
    """The top-``k`` singular vectors of ``W`` on each requested side, with error bounds.

    Parameters
    ----------
    W : Tensor, shape (m, n)
    k : int
        Clipped to ``min(m, n)``.
    method : {"full", "randomized"}
        ``"full"``: the thin SVD truncated to k (what the paper and PEFT compute); the bounds are 0.
        ``"randomized"``: :func:`lowrank_lab.linalg.randomized_svd` (Halko, Martinsson & Tropp 2011,
        Alg. 4.4 + 5.1) for k + 1 triplets, with :func:`vector_error_bounds` on the first k. When
        ``k + 1 > min(m, n)`` the full SVD is used (nothing to save).
    oversample : int, optional
        Extra sketch columns; default ``max(40, 2k)``. Real weight spectra are flat near σ_10
        (MiniLM: σ_10/σ_20 ≈ 1.2), and singular *vectors* need the sketch to reach well past the
        gap after σ_k — scikit-learn's 10 resolves the low-rank approximation, not the vectors.
    n_iter : int, default 12
        Power iterations: each one multiplies the error of vector i by about (σ_{l+1}/σ_i)².
    generator : torch.Generator or int, default 0
        Seed of the randomized SVD's test matrix (ignored by ``"full"``).
    reference : bool
        Compute in float64.

    Returns
    -------
    bases : dict
        ``{side: SingularBasis}`` with k vectors.
    bounds : Tensor, shape (k,)
        Upper bounds on the error of each vector's similarities (zeros for the full SVD).
    """
    k = max(1, min(int(k), min(W.shape)))
    out_dtype = compute_dtype(W.dtype, reference=reference)
    if method not in TUNED_SVD_METHODS:
        raise IntruderInputError(f"tuned_svd must be one of {TUNED_SVD_METHODS}, got {method!r}")
    if method == "randomized" and k + 1 <= min(W.shape):
        p = max(RANDOMIZED_OVERSAMPLE, 2 * k) if oversample is None else oversample
        fact = randomized_svd(
            W,
            k + 1,
            oversample=p,
            n_iter=n_iter,
            generator=generator,
            reference=reference,
            out_dtype=out_dtype,
        )
        bounds = vector_error_bounds(W, fact, k)
    else:
        fact = truncated_svd(W, k, reference=reference, out_dtype=out_dtype)
        bounds = torch.zeros(k, dtype=torch.float64)
    bases = {
        side: SingularBasis(b.vectors[:, :k], b.singular_values[:k], side)
        for side, b in _bases_from(fact, sides).items()
    }
    return bases, bounds


def certified(record_similarities: torch.Tensor, bounds: torch.Tensor, epsilon: float) -> bool:
    """Whether no similarity is within its error bound of ε, so the count cannot change."""
    return bool(((record_similarities - epsilon).abs() > bounds).all())


def abs_cosine(tuned: SingularBasis, base: SingularBasis) -> torch.Tensor:
    """``|cos|`` between every tuned vector and every base vector: a ``(k, p)`` matrix.

    Both bases hold unit vectors (SVD factors), so the cosine is the plain inner product.
    """
    if tuned.vectors.shape[0] != base.vectors.shape[0]:
        raise IntruderInputError(
            f"{tuned.side} singular vectors have length {tuned.vectors.shape[0]} (tuned) and "
            f"{base.vectors.shape[0]} (base)"
        )
    dtype = torch.promote_types(tuned.vectors.dtype, base.vectors.dtype)
    B = base.vectors.to(device=tuned.vectors.device, dtype=dtype)
    return (tuned.vectors.to(dtype).T @ B).abs()  # (k, d) @ (d, p) -> (k, p)


def count_intruders(best_match: torch.Tensor, epsilon: float) -> int:
    """Number of tuned vectors whose best match is strictly below ``epsilon`` (paper, PEFT)."""
    return int((best_match < epsilon).sum())


def epsilon_sweep(best_match: torch.Tensor, epsilons: Sequence[float] = EPSILON_GRID) -> dict[float, int]:
    """``{ε: count}`` over ``epsilons`` from the same best-match similarities (no new SVD)."""
    return {float(e): count_intruders(best_match, e) for e in epsilons}


# --------------------------------------------------------------------------------------------------
# Per-matrix record
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntruderRecord:
    """Intruder dimensions of one matrix on one side.

    Attributes
    ----------
    side : {"left", "right"}
    epsilon : float
    count : int
        Tuned top-k vectors whose best match is ``< epsilon``.
    similarities : Tensor, shape (k,)
        Best-match ``|cos|`` of the tuned vectors ranked 1..k (float64, CPU).
    base_ranks : Tensor, shape (k,)
        1-based rank (in W0's spectrum) of the base vector that gives each best match.
    singular_values : Tensor, shape (k,)
        The tuned singular values σ_1..σ_k (float64, CPU).
    base_singular_values : Tensor, shape (k,)
        σ of the best-matching base vectors.
    sweep : dict
        ``{ε: count}`` over :data:`EPSILON_GRID` (or the grid asked for).
    tuned_svd : str
        ``"full"``, ``"randomized"`` (every similarity certified far enough from ε), or
        ``"randomized-fallback"`` (not certifiable, so recomputed with the full SVD).
    similarity_bounds : Tensor or None, shape (k,)
        Upper bound on the error of each similarity (0 for the full SVD); see
        :func:`vector_error_bounds`.
    cache_hit : bool
        The base vectors came from the disk cache (no base SVD was computed).
    base_seconds, tuned_seconds : float
        Wall time of the base side (SVD or cache read) and of the tuned SVD.
    similarity_matrix : Tensor or None, shape (k, p)
        The full ``|cos|`` matrix, kept only when asked for (it is p times larger).
    """

    side: str
    epsilon: float
    count: int
    similarities: torch.Tensor
    base_ranks: torch.Tensor
    singular_values: torch.Tensor
    base_singular_values: torch.Tensor
    sweep: dict[float, int]
    tuned_svd: str = "full"
    similarity_bounds: torch.Tensor | None = None
    cache_hit: bool = False
    base_seconds: float = 0.0
    tuned_seconds: float = 0.0
    similarity_matrix: torch.Tensor | None = field(default=None, repr=False)

    @property
    def top_k(self) -> int:
        return int(self.similarities.shape[0])

    @property
    def ranks(self) -> list[int]:
        """1-based ranks of the tuned vectors, 1..k."""
        return list(range(1, self.top_k + 1))

    @property
    def intruder_ranks(self) -> list[int]:
        """1-based ranks of the tuned vectors that are intruders at ``epsilon``."""
        return [i + 1 for i in torch.nonzero(self.similarities < self.epsilon).flatten().tolist()]


def record_from_bases(
    tuned: SingularBasis,
    base: SingularBasis,
    *,
    epsilon: float = DEFAULT_EPSILON,
    epsilons: Sequence[float] = EPSILON_GRID,
    keep_matrix: bool = False,
    **extra,
) -> IntruderRecord:
    """Build an :class:`IntruderRecord` from the two bases of one side."""
    sim = abs_cosine(tuned, base)  # (k, p)
    best, idx = sim.max(dim=1)
    best64 = best.detach().to("cpu", torch.float64)
    base_sv = base.singular_values.detach().to("cpu", torch.float64)
    idx_cpu = idx.detach().cpu()
    return IntruderRecord(
        side=tuned.side,
        epsilon=float(epsilon),
        count=count_intruders(best64, epsilon),
        similarities=best64,
        base_ranks=idx_cpu + 1,
        singular_values=tuned.singular_values.detach().to("cpu", torch.float64),
        base_singular_values=base_sv[idx_cpu],
        sweep=epsilon_sweep(best64, epsilons),
        similarity_matrix=sim.detach().cpu() if keep_matrix else None,
        **extra,
    )


def base_bases(
    W0: torch.Tensor,
    sides: Sequence[str] = ("left",),
    *,
    cache: SVDCache | None = None,
    reference: bool = False,
    name: str = "",
) -> tuple[dict[str, SingularBasis], bool]:
    """All singular vectors of the base ``W0`` on each side, from the cache when it has them.

    Returns the bases and whether every side was a cache hit. On a miss one thin SVD serves every
    side, and each missing side is written to the cache.
    """
    sides = parse_side(sides)
    p = min(W0.shape)
    out: dict[str, SingularBasis] = {}
    keys: dict[str, str] = {}
    if cache is not None:
        digest = tensor_digest(W0)
        for side in sides:
            keys[side] = cache.key(W0, side, reference=reference, digest=digest)
            d = W0.shape[0] if side == "left" else W0.shape[1]
            hit = cache.load(keys[side], (d, p))
            if hit is not None:
                out[side] = SingularBasis(hit[0].to(W0.device), hit[1].to(W0.device), side)
    missing = [s for s in sides if s not in out]
    if missing:
        computed = full_bases(W0, missing, reference=reference)
        out.update(computed)
        if cache is not None:
            cache.misses += len(missing)
            for side in missing:
                b = computed[side]
                cache.store(keys[side], b.vectors, b.singular_values, side=side, tensor=name)
    if cache is not None:
        cache.hits += len(sides) - len(missing)
    return {s: out[s] for s in sides}, not missing


# --------------------------------------------------------------------------------------------------
# One matrix
# --------------------------------------------------------------------------------------------------


def find_intruders(
    W0: torch.Tensor,
    W: torch.Tensor,
    *,
    top_k: int = DEFAULT_TOP_K,
    epsilon: float = DEFAULT_EPSILON,
    side: str | Sequence[str] = "left",
    cache: SVDCache | None = None,
    tuned_svd: str = "full",
    epsilons: Sequence[float] = EPSILON_GRID,
    generator: torch.Generator | int | None = 0,
    keep_matrix: bool = False,
    reference: bool = False,
    name: str = "W",
) -> dict[str, IntruderRecord]:
    """Intruder dimensions of the fine-tuned ``W`` relative to the base ``W0``, per side.

    Parameters
    ----------
    W0, W : Tensor, shape (m, n)
        Base and fine-tuned weight (``nn.Linear`` layout, though any 2-D matrix works).
    top_k : int, default 10
        Tuned vectors examined (paper/PEFT default); clipped to ``min(m, n)``.
    epsilon : float, default 0.5
        A best match strictly below ε makes an intruder (paper/PEFT default).
    side : {"left", "right", "both"} or sequence, default "left"
        Left singular vectors (the paper's definition) and/or right ones.
    cache : SVDCache, optional
        Where base SVDs are read from and written to.
    tuned_svd : {"full", "randomized"}, default "full"
        How the tuned top-k is computed (see :func:`top_bases`). With ``"randomized"`` every
        similarity carries an error bound (:func:`vector_error_bounds`); if one lies within its
        bound of ε the matrix is recomputed with the full SVD, so the count at ``epsilon`` is always
        the full SVD's (the sweep counts at other ε may differ by the bounds).
    epsilons : sequence of float
        Grid for :attr:`IntruderRecord.sweep`; default 0.1…0.9.
    generator : torch.Generator or int, default 0
        Seed of the randomized SVD.
    keep_matrix : bool
        Keep the (k, p) similarity matrix in the record (for the heatmap).
    reference : bool
        Compute both SVDs in float64.
    name : str
        Tensor name used in error messages and cache metadata.

    Returns
    -------
    dict
        ``{side: IntruderRecord}``.

    Raises
    ------
    IntruderInputError
        Shapes differ, an option is out of range, or a weight holds NaN/Inf.
    """
    sides = parse_side(side)
    if not 0.0 < float(epsilon) <= 1.0:
        raise IntruderInputError(f"epsilon must be in (0, 1] (|cos| lies in [0, 1]), got {epsilon}")
    if int(top_k) < 1:
        raise IntruderInputError(f"top_k must be >= 1, got {top_k}")
    if tuned_svd not in TUNED_SVD_METHODS:
        raise IntruderInputError(f"tuned_svd must be one of {TUNED_SVD_METHODS}, got {tuned_svd!r}")
    for label, M in (("base", W0), ("tuned", W)):
        try:
            validate_matrix(M, name=f"{label} {name}")
        except (TypeError, ValueError) as exc:
            raise IntruderInputError(str(exc)) from None
    if tuple(W0.shape) != tuple(W.shape):
        raise IntruderInputError(
            f"{name}: base is {tuple(W0.shape)} but tuned is {tuple(W.shape)}; "
            "compare a fine-tune against the base it was trained from"
        )
    t0 = time.perf_counter()
    bases, hit = base_bases(W0, sides, cache=cache, reference=reference, name=name)
    t1 = time.perf_counter()
    tuned, bounds = top_bases(W, top_k, sides, method=tuned_svd, generator=generator, reference=reference)
    method = tuned_svd
    if tuned_svd == "randomized" and bool(bounds.any()):
        sims = {s: abs_cosine(tuned[s], bases[s]).max(dim=1).values.double().cpu() for s in sides}
        if not all(certified(sims[s], bounds, epsilon) for s in sides):
            # A similarity within its error bound of ε: the randomized count could differ from the
            # definition's, so this matrix gets the full SVD.
            tuned, bounds = top_bases(W, top_k, sides, method="full", reference=reference)
            method = "randomized-fallback"
    t2 = time.perf_counter()
    return {
        s: record_from_bases(
            tuned[s],
            bases[s],
            epsilon=epsilon,
            epsilons=epsilons,
            keep_matrix=keep_matrix,
            tuned_svd=method,
            similarity_bounds=bounds,
            cache_hit=hit,
            base_seconds=(t1 - t0) / len(sides),
            tuned_seconds=(t2 - t1) / len(sides),
        )
        for s in sides
    }



# The rest of an intruder run lives beside this module: the tuned-weight readers in
# :mod:`lowrank_lab.analysis.tuned` (PEFT reader: :mod:`lowrank_lab.adapters.io`; llama2.c in HF layout:
# :mod:`lowrank_lab.weights.llama2c`), the tables in :mod:`lowrank_lab.analysis.intruder_tables` and
# the plots in :mod:`lowrank_lab.analysis.figures`.
