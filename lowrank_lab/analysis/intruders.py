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
:class:`SVDCache` stores it on disk keyed by the tensor's content. The tuned side needs only its top
k vectors and may use a randomized SVD (``tuned_svd="randomized"``, Halko, Martinsson & Tropp 2011);
tests/analysis/test_intruders.py shows it gives the same counts as the full SVD on planted and real
matrices.

All SVDs come from :mod:`lowrank_lab.linalg` (float32 for half-precision inputs, float64 on request).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from lowrank_lab.linalg import randomized_svd, truncated_svd, validate_matrix
from lowrank_lab.linalg.policy import compute_dtype

Side = Literal["left", "right"]
SIDES: tuple[str, ...] = ("left", "right")
#: k = 10: the paper's and PEFT's ``top_k`` default.
DEFAULT_TOP_K = 10
#: ε = 0.5: the paper's and PEFT's ``threshold_epsilon`` default.
DEFAULT_EPSILON = 0.5
#: The ε grid of the paper's count-vs-ε figures.
EPSILON_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))
TUNED_SVD_METHODS = ("full", "randomized")

# Bump when the cache layout or the numbers stored change, so stale entries are never read.
CACHE_FORMAT = 1


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


# --------------------------------------------------------------------------------------------------
# Disk cache of base SVDs
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where base SVDs live by default.

    ``$LOWRANK_LAB_CACHE/svd``, else ``$XDG_CACHE_HOME/lowrank_lab/svd``, else ``~/.cache/lowrank_lab/svd``.
    """
    if os.environ.get("LOWRANK_LAB_CACHE"):
        return Path(os.environ["LOWRANK_LAB_CACHE"]) / "svd"
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "lowrank_lab" / "svd"


def tensor_digest(W: torch.Tensor) -> str:
    """BLAKE2b digest of the raw bytes of ``W`` (any dtype, any device), 40 hex digits."""
    raw = W.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    return hashlib.blake2b(memoryview(raw), digest_size=20).hexdigest()


class SVDCache:
    """Base-model singular vectors on disk, keyed by tensor content.

    The key hashes the bytes of the tensor together with its shape, dtype, the side, the compute
    precision and :data:`CACHE_FORMAT`, so a renamed file or another model with the same weights
    hits, and any change in a single bit misses. Entries are safetensors files
    ``<dir>/<key[:2]>/<key>.safetensors`` holding ``vectors`` (d, p) and ``singular_values`` (p,),
    written to a temporary file in the same directory and moved into place with ``os.replace``, so a
    crash or a concurrent writer never leaves a torn entry. An unreadable entry counts as a miss and
    is rewritten.

    Disk use: one side of an (m, n) float32 matrix takes ``4·(d + 1)·min(m, n)`` bytes — about the
    size of the matrix itself (MiniLM: ~22 MB per side).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def key(self, W: torch.Tensor, side: str, *, reference: bool = False, digest: str | None = None) -> str:
        cdt = compute_dtype(W.dtype, reference=reference)
        header = f"lowrank_lab-svd-v{CACHE_FORMAT}|{tuple(W.shape)}|{W.dtype}|{side}|{cdt}"
        h = hashlib.blake2b(header.encode(), digest_size=20)
        h.update((digest or tensor_digest(W)).encode())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def load(self, key: str, expected: tuple[int, int]) -> SingularBasis | None:
        """The cached basis, or None on a miss (a missing, unreadable or mis-shaped entry)."""
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.exists():
            return None
        try:
            data = load_file(str(path))
            vecs, sv = data["vectors"], data["singular_values"]
        except Exception:  # a torn or foreign file: recompute and overwrite
            return None
        if tuple(vecs.shape) != tuple(expected) or tuple(sv.shape) != (expected[1],):
            return None
        return SingularBasis(vecs, sv, "")

    def store(self, key: str, basis: SingularBasis, *, tensor: str = "") -> Path:
        """Write one entry atomically (temporary file + ``os.replace``)."""
        from safetensors.torch import save_file

        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}-", suffix=".tmp")
        os.close(fd)
        try:
            save_file(
                {
                    "vectors": basis.vectors.detach().cpu().contiguous(),
                    "singular_values": basis.singular_values.detach().cpu().contiguous(),
                },
                tmp,
                metadata={"side": basis.side, "tensor": tensor, "format": str(CACHE_FORMAT)},
            )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path


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
                out[side] = SingularBasis(hit.vectors.to(W0.device), hit.singular_values.to(W0.device), side)
    missing = [s for s in sides if s not in out]
    if missing:
        computed = full_bases(W0, missing, reference=reference)
        out.update(computed)
        if cache is not None:
            cache.misses += len(missing)
            for side in missing:
                cache.store(keys[side], computed[side], tensor=name)
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


# --------------------------------------------------------------------------------------------------
# Tuned weights: a checkpoint, a run directory, or the base plus an adapter (PEFT or lowrank_lab)
# --------------------------------------------------------------------------------------------------

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# lowrank_lab's own adapter format (lowrank_lab.adapters.io.CONFIG_NAME / WEIGHTS_NAME).
TOOLKIT_CONFIG = "lowrank_adapter.json"
TOOLKIT_WEIGHTS = "lowrank_adapter.safetensors"


class AdapterFilesError(FileNotFoundError):
    """An adapter directory lacks the files its format needs; the message names them."""


class AdapterFormatError(ValueError):
    """An adapter that cannot be merged: a non-LoRA PEFT type, DoRA, unmatched modules, bad shapes."""


class ArchitectureMismatchError(ValueError):
    """Base and tuned weights do not have the same target matrices; the message names the first one."""


def adapter_kind(path: str | Path) -> str | None:
    """``"peft"``, ``"lowrank_lab"`` or None, from the files in the directory ``path``."""
    p = Path(path)
    if not p.is_dir():
        return None
    if (p / PEFT_CONFIG).is_file() or any((p / w).is_file() for w in PEFT_WEIGHTS):
        return "peft"
    if (p / TOOLKIT_CONFIG).is_file() or (p / TOOLKIT_WEIGHTS).is_file():
        return "lowrank_lab"
    return None


@dataclass(frozen=True)
class LoraDelta:
    """One module's LoRA update ``ΔW = scale · B · A`` in ``nn.Linear`` (out, in) layout.

    ``fan_in_fan_out`` modules (GPT-2 ``Conv1D``) store their weight as (in, out); PEFT then returns
    ``(B·A)ᵀ`` from ``get_delta_weight``. The weight sources of lowrank_lab always hand out (out, in),
    so the update in that layout is ``B·A`` either way; the flag is kept for the record.
    """

    module: str
    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    scale: float
    fan_in_fan_out: bool = False

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.B.shape[0]), int(self.A.shape[1])

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``scale · B · A`` in ``dtype`` (float32 at least, as PEFT's CPU merge)."""
        return self.scale * (self.B.to(dtype) @ self.A.to(dtype))


def _peft_rank_alpha(config: dict, module: str, r_from_shape: int) -> tuple[int, float]:
    # PEFT's get_pattern_key: a pattern key matches the module name, or a dotted suffix of it.
    import re

    def lookup(pattern: dict, default):
        for key, value in (pattern or {}).items():
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        return default

    r = int(lookup(config.get("rank_pattern"), config.get("r", r_from_shape)))
    alpha = float(lookup(config.get("alpha_pattern"), config.get("lora_alpha", r)))
    return r, alpha


def read_peft_lora(path: str | Path) -> tuple[dict[str, LoraDelta], dict]:
    """The LoRA updates of a PEFT adapter directory, read with safetensors (PEFT is not needed).

    ``adapter_config.json`` gives ``r``, ``lora_alpha``, ``use_rslora``, ``rank_pattern``,
    ``alpha_pattern`` and ``fan_in_fan_out``; ``adapter_model.safetensors`` (or the older
    ``adapter_model.bin``) holds ``<prefix>.<module>.lora_A.weight`` (r, in) and ``...lora_B.weight``
    (out, r). The prefix ``base_model.model.`` and an adapter name before ``.weight`` are stripped.
    The scale is ``lora_alpha / r`` (``lora_alpha / √r`` with rsLoRA), exactly as
    ``peft.tuners.lora.layer.LoraLayer.update_layer``.

    Returns
    -------
    deltas : dict
        ``{module path: LoraDelta}``, module paths relative to the model PEFT wrapped.
    config : dict
        The adapter config.

    Raises
    ------
    AdapterFilesError
        ``adapter_config.json`` or the weights file is missing (both names are given).
    AdapterFormatError
        Not a LoRA adapter, DoRA, a lora_A without its lora_B, or inconsistent shapes.
    """
    import json
    import math
    import re

    path = Path(path)
    if not path.is_dir():
        raise AdapterFilesError(f"adapter directory {str(path)!r} does not exist")
    weights = next((path / w for w in PEFT_WEIGHTS if (path / w).is_file()), None)
    missing = [
        n for n, ok in ((PEFT_CONFIG, (path / PEFT_CONFIG).is_file()), (PEFT_WEIGHTS[0], weights)) if not ok
    ]
    if missing:
        raise AdapterFilesError(
            f"PEFT adapter {str(path)!r} is missing {' and '.join(missing)} "
            f"(a PEFT LoRA directory holds {PEFT_CONFIG} and {PEFT_WEIGHTS[0]}, "
            "as written by save_pretrained)"
        )
    try:
        config = json.loads((path / PEFT_CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise AdapterFormatError(f"{path / PEFT_CONFIG} is not valid JSON: {exc}") from None
    ptype = str(config.get("peft_type", "LORA")).upper()
    if ptype != "LORA":
        raise AdapterFormatError(
            f"{path / PEFT_CONFIG}: peft_type {ptype} is not LoRA; only LoRA adapters can be merged"
        )
    if config.get("use_dora"):
        raise AdapterFormatError(
            f"{path / PEFT_CONFIG}: DoRA adapters rescale the weight's columns and are not B·A updates; "
            "merge it with PEFT (merge_and_unload), save the model and pass it as --tuned"
        )
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)

    pat = re.compile(r"^(?P<module>.+?)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = pat.match(key)
        if m is None:
            continue  # biases (lora_bias), modules_to_save copies, embeddings' lora_embedding_A/B
        module = m["module"].removeprefix("base_model.model.")
        parts.setdefault(module, {})[m["part"]] = tensor
    if not parts:
        raise AdapterFormatError(f"{weights} holds no lora_A/lora_B weights (keys: {sorted(state)[:5]} ...)")
    deltas = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            have = "lora_A" if "A" in ab else "lora_B"
            raise AdapterFormatError(f"{weights}: module {module!r} has {have} but not its partner")
        A, B = ab["A"], ab["B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise AdapterFormatError(
                f"{weights}: module {module!r} has lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)}; "
                "expected (r, in) and (out, r) (convolutional LoRA is not supported)"
            )
        _, alpha = _peft_rank_alpha(config, module, int(A.shape[0]))
        r = int(A.shape[0])  # the stored factor is the truth; rank_pattern only set its size
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        deltas[module] = LoraDelta(module, A, B, scale, bool(config.get("fan_in_fan_out", False)))
    return deltas, config


def match_modules(modules: Sequence[str], tensors: Sequence[str], *, what: str = "adapter") -> dict[str, str]:
    """Map module paths (``bert.encoder.layer.0.attention.self.query``) to weight tensor names.

    A module matches the tensor ``<module>.weight`` when one name is a dotted suffix of the other,
    so adapters saved on a model with a head (``bert.``, ``model.`` prefixes) match the bare
    checkpoint and vice versa. Returns ``{module: tensor}`` for the modules that match one tensor.

    Raises
    ------
    AdapterFormatError
        A module matches more than one tensor (the candidates are listed).
    """
    stems = {t.removesuffix(".weight"): t for t in tensors}
    out = {}
    for mod in modules:
        hits = [t for s, t in stems.items() if s == mod or s.endswith("." + mod) or mod.endswith("." + s)]
        if len(hits) > 1:
            exact = [t for t in hits if t.removesuffix(".weight") == mod]
            if len(exact) != 1:
                raise AdapterFormatError(f"{what} module {mod!r} matches several base tensors: {hits}")
            hits = exact
        if hits:
            out[mod] = hits[0]
    return out


class Llama2cAsHF:
    """A llama2.c weight source seen as the ``LlamaForCausalLM`` it converts to.

    llama2.c rotates interleaved row pairs of wq/wk, Hugging Face's Llama rotates halves, so the
    conversion (:func:`lowrank_lab.weights.llama2c.permute_rotary`, as ``hf_state_dict`` and
    ``load_hf_model`` apply it) permutes the rows of wq and wk. A row permutation P permutes the
    left singular vectors (``PW = (PU) Σ Vᵀ``), so comparing a fine-tune of the converted model with
    the native checkpoint would pair rows that are not the same output: every q/k vector would look
    like an intruder. This view hands out the converted matrices under their HF tensor names
    (``model.layers.<i>.self_attn.q_proj.weight``), keeping the canonical module names (wq...).
    """

    def __init__(self, source) -> None:
        from lowrank_lab.weights import hf_module_suffixes

        self.source = source
        self.name = getattr(source, "name", "llama2c")
        self.family = source.family
        self.spec = source.spec
        suffixes = hf_module_suffixes(source.family)
        self._native = {}
        self._targets = []
        for info in source.targets():
            hf = type(info)(
                f"model.layers.{info.layer}.{suffixes[info.module]}.weight",
                info.layer,
                info.module,
                info.shape,
            )
            self._native[hf.tensor] = info
            self._targets.append(hf)

    def targets(self):
        return list(self._targets)

    def load(self, info):
        from lowrank_lab.weights import WeightMatrix
        from lowrank_lab.weights.llama2c import permute_rotary

        wm = self.source.load(self._native[info.tensor])
        W = wm.weight
        if info.module == "wq":
            W = permute_rotary(W, self.spec.num_heads)
        elif info.module == "wk":
            W = permute_rotary(W, self.spec.num_kv_heads)
        return WeightMatrix(info, W, wm.synthetic, wm.singular_values)


def hf_layout(source):
    """``source`` in Hugging Face layout: :class:`Llama2cAsHF` for llama2.c, else itself."""
    if getattr(source, "family", None) == "llama2c" and not isinstance(source, Llama2cAsHF):
        return Llama2cAsHF(source)
    return source


class TunedWeights:
    """The fine-tuned side: a weight source, optionally with per-tensor updates applied on load.

    ``targets()`` and ``weight(info)`` mirror :class:`lowrank_lab.weights.WeightSource` so the
    comparison loop reads one matrix at a time whatever the tuned weights are made of. ``base`` is
    the base source in the same layout (see :class:`Llama2cAsHF`): compare against it.
    """

    def __init__(
        self, source, *, overlay: dict | None = None, description: dict | None = None, base=None
    ) -> None:
        self.source = source
        self.overlay = overlay or {}  # tensor name -> callable(W) -> tuned W
        self.description = description or {}
        self.base = base

    @property
    def family(self):
        return getattr(self.source, "family", None)

    def targets(self):
        return self.source.targets()

    def weight(self, info) -> torch.Tensor:
        part = getattr(info, "part", "")
        parent = info.tensor[: -len(f"[{part}]")] if part else None
        if parent in self.overlay and info.tensor not in self.overlay:
            # A part of a fused matrix (--split-fused): the update is to the whole; apply it, then slice.
            whole = next(t for t in self.source.targets() if t.tensor == parent)
            rows = self.source.part_rows(info)
            W = self.overlay[parent](self.source.load(whole).weight)
            return W[rows] if isinstance(rows, slice) else W[torch.as_tensor(rows)]
        W = self.source.load(info).weight
        fn = self.overlay.get(info.tensor)
        return W if fn is None else fn(W)


def _peft_overlay(adapter: Path, *, tensors: Sequence[str]) -> tuple[dict, dict]:
    deltas, config = read_peft_lora(adapter)
    matched = match_modules(list(deltas), tensors, what="PEFT adapter")
    unmatched = [m for m in deltas if m not in matched]
    overlay = {}
    for mod, tensor in matched.items():
        d = deltas[mod]

        def apply(W, d=d, tensor=tensor):
            if tuple(W.shape) != d.shape:
                raise AdapterFormatError(
                    f"PEFT module {d.module!r} gives a {d.shape} update but base tensor {tensor!r} is "
                    f"{tuple(W.shape)}; was the adapter trained on this base?"
                )
            cdt = torch.promote_types(W.dtype, torch.float32)
            return W.to(cdt) + d.delta(cdt).to(W.device)

        overlay[tensor] = apply
    init = config.get("init_lora_weights")
    desc = {
        "adapter": str(adapter),
        "adapter_format": "peft",
        "r": config.get("r"),
        "lora_alpha": config.get("lora_alpha"),
        "use_rslora": bool(config.get("use_rslora", False)),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out", False)),
        "modules": len(deltas),
        "modules_matched": len(matched),
        "modules_not_analysed": unmatched,
        "init_lora_weights": init,
    }
    if isinstance(init, str) and init.split("_")[0].lower() in {"pissa", "olora", "corda", "eva", "loftq"}:
        desc["warning"] = (
            f"adapter was initialised with init_lora_weights={init!r}: unless it was saved with "
            "path_initial_model_for_weight_conversion it applies to the *residual* base, not the original"
        )
    return overlay, desc


def _toolkit_weights(adapter: Path, base: str | Path) -> tuple[dict, dict]:
    """Load the base HF model, put the lowrank_lab adapter on it, merge, and keep the merged targets."""
    import json

    from lowrank_lab.adapters import load_adapter, merge
    from lowrank_lab.weights import load_hf_model

    missing = [n for n in (TOOLKIT_CONFIG, TOOLKIT_WEIGHTS) if not (adapter / n).is_file()]
    if missing:
        raise AdapterFilesError(
            f"lowrank_lab adapter {str(adapter)!r} is missing {' and '.join(missing)} "
            "(save_adapter writes both)"
        )
    config = json.loads((adapter / TOOLKIT_CONFIG).read_text())
    errors = []
    for head in ("base", "sequence-classification", "causal-lm"):
        try:
            model = load_hf_model(base, head=head)
        except Exception as exc:  # this head does not exist for this family
            errors.append(f"{head}: {exc}")
            continue
        try:
            load_adapter(model, adapter)
        except ValueError as exc:  # module names of another head
            errors.append(f"{head}: {exc}")
            continue
        merge(model)
        weights = {}
        for name, info in config["modules"].items():
            W = model.get_submodule(name).weight.detach()
            if list(W.shape) != list(info["shape"]):
                W = W.T  # Conv1D stores (in, out)
            weights[name] = W.contiguous()
        desc = {
            "adapter": str(adapter),
            "adapter_format": "lowrank_lab",
            "method": config.get("method"),
            "rank": config.get("rank"),
            "alpha": config.get("alpha"),
            "head": head,
            "modules": len(weights),
        }
        return weights, desc
    raise AdapterFormatError(
        f"lowrank_lab adapter {str(adapter)!r} fits no head of base {str(base)!r}: " + "; ".join(errors)
    )


def resolve_tuned_path(tuned: str | Path) -> tuple[Path, str]:
    """What a ``--tuned`` path holds: an adapter, a fine-tuning run, or a checkpoint.

    Returns ``(path, kind)`` with kind ``"adapter"``, ``"run"`` (a fine-tuning run directory whose
    ``merged/`` holds the weights) or ``"checkpoint"`` (anything :func:`lowrank_lab.weights.open_source`
    reads: an HF directory, a ``.safetensors`` file, a llama2.c ``.bin``, a registry name).
    """
    p = Path(tuned)
    if p.is_dir():
        if adapter_kind(p):
            return p, "adapter"
        if (p / "merged").is_dir():
            return p / "merged", "run"
        if not any(p.glob("*.safetensors")) and not (p / "config.json").is_file():
            for sub in ("adapter", "adapters"):
                if adapter_kind(p / sub):
                    return p / sub, "adapter"
    return p, "checkpoint"


def open_tuned(
    tuned: str | Path | None,
    *,
    base: str | Path,
    base_source,
    adapter: str | Path | None = None,
    source_options: dict | None = None,
) -> TunedWeights:
    """The fine-tuned weights, however they were saved.

    ``source_options`` (``experts``, ``split_fused``) are passed to ``open_source`` for a tuned
    checkpoint, so that it lists the same matrices as the base.

    * ``tuned`` a checkpoint (HF directory, ``model.safetensors``, anything ``open_source`` reads);
    * ``tuned`` a fine-tuning run directory holding ``merged/`` (written by lowrank_lab.training);
    * ``tuned`` or ``adapter`` a PEFT LoRA directory (``adapter_config.json`` +
      ``adapter_model.safetensors``): merged on the fly as ``W0 + (lora_alpha/r)·B·A``;
    * ``tuned`` or ``adapter`` a lowrank_lab adapter (``lowrank_adapter.json`` + ``.safetensors``):
      loaded on the base HF model with :func:`lowrank_lab.adapters.load_adapter` and merged.

    With both a checkpoint ``tuned`` and an ``adapter``, the adapter is merged on top of ``tuned``.
    """
    from lowrank_lab.weights import open_source

    adapter_path = Path(adapter) if adapter is not None else None
    if tuned is None and adapter_path is None:
        raise ValueError("give the fine-tuned weights with --tuned PATH, or the base plus --adapter PATH")
    desc: dict = {}
    # Adapters are trained on the Hugging Face form of a model (load_hf_model, PEFT), so a llama2.c
    # base is compared in that layout unless the tuned weights are a llama2.c checkpoint too.
    hf_base = hf_layout(base_source)
    if tuned is not None:
        path, kind = resolve_tuned_path(tuned)
        if kind == "adapter":
            if adapter_path is not None:
                raise ValueError(
                    f"--tuned {str(tuned)!r} is an adapter directory and --adapter was given too; "
                    "pass one adapter (its base is --base)"
                )
            adapter_path = path
            inner = hf_base
            desc["tuned"] = "base + adapter"
        else:
            inner = open_source(str(path), **(source_options or {}))
            desc["tuned"] = str(path)
            desc["tuned_kind"] = kind
            if adapter_path is not None:
                inner = hf_layout(inner)
    else:
        inner = hf_base
        desc["tuned"] = "base + adapter"
    native = getattr(inner, "family", None) == "llama2c" and not isinstance(inner, Llama2cAsHF)
    base_view = base_source if native else hf_base
    if base_view is not base_source:
        desc["base_layout"] = "llama2.c converted to Hugging Face Llama (wq/wk rows permuted)"
    if adapter_path is None:
        return TunedWeights(inner, description=desc, base=base_view)

    kind = adapter_kind(adapter_path)
    if kind is None:
        if not adapter_path.exists():
            raise AdapterFilesError(f"--adapter {str(adapter_path)!r} does not exist")
        raise AdapterFilesError(
            f"--adapter {str(adapter_path)!r} has none of {PEFT_CONFIG}, {PEFT_WEIGHTS[0]} (PEFT) or "
            f"{TOOLKIT_CONFIG}, {TOOLKIT_WEIGHTS} (lowrank_lab save_adapter)"
        )
    tensors = [i.tensor for i in inner.targets()]
    if kind == "peft":
        overlay, adesc = _peft_overlay(adapter_path, tensors=tensors)
    else:
        if inner is not hf_base:
            raise ValueError(
                "a lowrank_lab adapter is merged onto --base; it cannot be combined with a --tuned checkpoint"
            )
        merged, adesc = _toolkit_weights(adapter_path, base)
        matched = match_modules(list(merged), tensors, what="lowrank_lab adapter")
        overlay = {t: (lambda W, M=merged[m]: M.to(W.device)) for m, t in matched.items()}
        adesc["modules_not_analysed"] = [m for m in merged if m not in matched]
    desc["tuned"] = f"{desc['tuned'] if 'tuned_kind' in desc else base} + {kind} adapter {adapter_path}"
    if not overlay:
        raise AdapterFormatError(
            f"no module of adapter {str(adapter_path)!r} matches a target matrix of {str(base)!r} "
            f"(targets look like {tensors[:2]}); was it trained on this base?"
        )
    desc.update(adesc)
    return TunedWeights(inner, overlay=overlay, description=desc, base=base_view)


@dataclass(frozen=True)
class MatrixPair:
    """One target matrix on both sides (tensor names may differ by a prefix such as ``bert.``)."""

    base: object  # TargetInfo
    tuned: object  # TargetInfo


def pair_targets(
    base_infos: Sequence,
    tuned_infos: Sequence,
    *,
    base_name: str = "base",
    tuned_name: str = "tuned",
    base_family: str | None = None,
    tuned_family: str | None = None,
):
    """Pair target matrices by (layer, module), checking shapes, in the base's order.

    Modules are compared through their Hugging Face suffix (:func:`lowrank_lab.weights.hf_module_suffixes`)
    when the families are given, so llama2.c's ``wq`` pairs with Llama's ``q_proj``.

    Raises
    ------
    ArchitectureMismatchError
        Naming the first base tensor that has no counterpart or another shape in the tuned weights,
        or the first tuned tensor that the base lacks.
    """

    def keyer(family):
        # Experts and fused parts share (layer, module): their index and part name tell them apart.
        def extra(info):
            return (getattr(info, "expert", None), getattr(info, "part", ""))

        if family is None:
            return lambda info: (info.layer, info.module, *extra(info))
        from lowrank_lab.weights import hf_module_suffixes

        suffixes = hf_module_suffixes(family)
        return lambda info: (info.layer, suffixes.get(info.module, info.module), *extra(info))

    base_key, tuned_key = keyer(base_family), keyer(tuned_family)
    by_key = {}
    for info in tuned_infos:
        by_key.setdefault(tuned_key(info), info)
    pairs = []
    for info in base_infos:
        other = by_key.pop(base_key(info), None)
        if other is None:
            raise ArchitectureMismatchError(
                f"base tensor {info.tensor!r} (layer {info.layer}, {info.module}, {tuple(info.shape)}) "
                f"has no counterpart in {tuned_name}; are base and tuned the same architecture?"
            )
        if tuple(other.shape) != tuple(info.shape):
            raise ArchitectureMismatchError(
                f"tensor {info.tensor!r} is {tuple(info.shape)} in {base_name} but {other.tensor!r} is "
                f"{tuple(other.shape)} in {tuned_name}; compare a fine-tune against the base it was "
                "trained from"
            )
        pairs.append(MatrixPair(info, other))
    if by_key:
        extra = next(iter(by_key.values()))
        raise ArchitectureMismatchError(
            f"{tuned_name} tensor {extra.tensor!r} (layer {extra.layer}, {extra.module}) has no "
            f"counterpart in {base_name}; are base and tuned the same architecture?"
        )
    return pairs


# --------------------------------------------------------------------------------------------------
# The comparison loop, tidy rows, summaries and figures
# --------------------------------------------------------------------------------------------------

#: Columns of intruders.csv: one row per (matrix, side, tuned rank) — long format for pandas.
ROW_COLUMNS = (
    "tensor",
    "layer",
    "module",
    "expert",
    "side",
    "rows",
    "cols",
    "rank",
    "singular_value",
    "similarity",
    "similarity_bound",
    "base_rank",
    "base_singular_value",
    "intruder",
    "count",
    "epsilon",
    "top_k",
    "tuned_svd",
)
ROW_KEY = ("tensor", "side", "rank")


def record_rows(info, record: IntruderRecord) -> list[dict]:
    """The long-format rows of one matrix and side: one per tuned vector ranked 1..k."""
    rows = []
    bounds = record.similarity_bounds
    for i in range(record.top_k):
        sim = float(record.similarities[i])
        rows.append(
            {
                "tensor": info.tensor,
                "layer": "" if info.layer is None else int(info.layer),
                "module": info.module,
                "expert": "" if getattr(info, "expert", None) is None else int(info.expert),
                "side": record.side,
                "rows": int(info.shape[0]),
                "cols": int(info.shape[1]),
                "rank": i + 1,
                "singular_value": f"{float(record.singular_values[i]):.8g}",
                "similarity": f"{sim:.8g}",
                "similarity_bound": 0.0 if bounds is None else f"{float(bounds[i]):.3g}",
                "base_rank": int(record.base_ranks[i]),
                "base_singular_value": f"{float(record.base_singular_values[i]):.8g}",
                "intruder": int(sim < record.epsilon),
                "count": record.count,
                "epsilon": record.epsilon,
                "top_k": record.top_k,
                "tuned_svd": record.tuned_svd,
            }
        )
    return rows


def iter_records(
    base_source,
    tuned: TunedWeights,
    pairs: Sequence[MatrixPair],
    *,
    skip=None,
    device: torch.device | str | None = None,
    **kw,
):
    """Yield ``(pair, {side: IntruderRecord})`` one matrix at a time (base and tuned read lazily).

    ``skip(pair) -> bool`` leaves out matrices already done (``--resume``); ``kw`` goes to
    :func:`find_intruders`.
    """
    for pair in pairs:
        if skip is not None and skip(pair):
            continue
        W0 = base_source.load(pair.base).weight
        W = tuned.weight(pair.tuned)
        if device is not None:
            W0, W = W0.to(device), W.to(device)
        yield pair, find_intruders(W0, W, name=pair.base.tensor, **kw)


def per_matrix(df):
    """One row per (tensor, side) from the long table, in the table's (model) order: layer, module,
    count, min and mean of the top-k best-match similarities."""
    out = (
        df.groupby(["tensor", "side"], sort=False)
        .agg(
            layer=("layer", "first"),
            module=("module", "first"),
            count=("intruder", "sum"),
            min_similarity=("similarity", "min"),
            mean_similarity=("similarity", "mean"),
            top_k=("rank", "size"),
        )
        .reset_index()
    )
    return out


def module_totals(df):
    """Totals per module type (and side): matrices, intruders, matrices with any, mean best match."""
    pm = per_matrix(df)
    stats = {
        "matrices": ("tensor", "size"),
        "intruders": ("count", "sum"),
        "with_intruders": ("count", lambda c: int((c > 0).sum())),
        "mean_similarity": ("mean_similarity", "mean"),
    }
    out = pm.groupby(["side", "module"], sort=False).agg(**stats).reset_index()
    total = pm.groupby("side", sort=False).agg(**stats).reset_index().assign(module="all")
    import pandas as pd

    return pd.concat([out, total[out.columns]], ignore_index=True)


def sweep_table(df, epsilons: Sequence[float] = EPSILON_GRID, *, totals: bool = True):
    """Long table ``(side, module, epsilon, count)`` recomputed from the stored similarities.

    A row's similarity is its best match, so the count at any ε is a filter on the CSV — no SVD.
    With ``totals`` the rows ``module == "all"`` hold the sums (leave them out before summing
    over modules yourself).
    """
    import pandas as pd

    rows = []
    for (side, module), grp in df.groupby(["side", "module"], sort=False):
        for e in epsilons:
            rows.append(
                {
                    "side": side,
                    "module": module,
                    "epsilon": float(e),
                    "count": int((grp.similarity < e).sum()),
                }
            )
    if totals:
        for side, grp in df.groupby("side", sort=False):
            for e in epsilons:
                rows.append(
                    {
                        "side": side,
                        "module": "all",
                        "epsilon": float(e),
                        "count": int((grp.similarity < e).sum()),
                    }
                )
    return pd.DataFrame(rows, columns=["side", "module", "epsilon", "count"])


def plot_count_vs_epsilon(sweep, path: str | Path, *, title: str = "") -> Path:
    """Intruder count against ε, one line per module type and the total (paper, Fig. 4 style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = list(dict.fromkeys(sweep.side))
    fig, axes = plt.subplots(1, len(sides), figsize=(5.5 * len(sides), 4), squeeze=False)
    for ax, side in zip(axes[0], sides, strict=True):
        part = sweep[sweep.side == side]
        for module, grp in part.groupby("module", sort=False):
            style = {"color": "black", "linewidth": 2.5} if module == "all" else {"linewidth": 1.2}
            ax.plot(grp.epsilon, grp["count"], marker="o", markersize=3, label=module, **style)
        ax.set_xlabel("ε (best-match |cos| threshold)")
        ax.set_ylabel("intruder dimensions")
        ax.set_title(f"{side} singular vectors")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_similarity_matrix(record: IntruderRecord, path: str | Path, *, tensor: str = "") -> Path:
    """Heatmap of the (k, p) |cos| matrix of one matrix; intruder rows are marked on the left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if record.similarity_matrix is None:
        raise ValueError("the record holds no similarity matrix: compute it with keep_matrix=True")
    S = record.similarity_matrix.float().numpy()
    fig, ax = plt.subplots(figsize=(9, 0.35 * S.shape[0] + 1.6))
    im = ax.imshow(S, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xlabel(f"base {record.side} singular vector (rank 1..{S.shape[1]})")
    ax.set_ylabel("tuned singular vector (rank)")
    ax.set_yticks(range(S.shape[0]), [str(r) for r in record.ranks])
    for r in record.intruder_ranks:
        ax.annotate(
            "< intruder",
            (S.shape[1] - 0.5, r - 1),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
            color="crimson",
            annotation_clip=False,
        )
    fig.colorbar(im, ax=ax, label="|cos|")
    ax.set_title(f"{tensor}: {record.count} intruder(s) at ε = {record.epsilon}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
