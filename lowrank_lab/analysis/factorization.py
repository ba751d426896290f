"""The factorization study of one weight matrix: error against the Eckart–Young optimum, and time.

:func:`analyze_matrix` is the unit of work of ``python -m lowrank_lab.analyze``: given one
:class:`~lowrank_lab.weights.WeightMatrix` it yields every output row that matrix contributes
(its spectra.csv row, its factorization.csv rows, its skipped (method, rank) notes and its singular
values), depending on nothing but the matrix and an :class:`AnalysisConfig`. A single process runs it
in a loop and writes each row as it comes; a distributed run can hand different matrices to
different processes and gather the rows (issue 9).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from lowrank_lab.linalg import (
    Factorization,
    compute_dtype,
    factorize,
    get_factorization,
    optimal_error,
    relative_errors,
    singular_values,
)
from lowrank_lab.utils.timing import time_call

from .spectra import spectral_stats

#: Columns of factorization.csv, in order (the output contract of issue 5).
FACTORIZATION_COLUMNS = [
    "model", "tensor", "layer", "module", "role", "fused", "expert", "m", "n", "method", "rank",
    "rel_err_fro", "opt_rel_err_fro", "err_ratio", "rel_err_spec", "init_seconds",
    "device", "dtype", "seed", "synthetic",
]
FACTORIZATION_KEY = ["tensor", "method", "rank"]

#: Columns of skipped.csv: (matrix, method, rank) combinations that produced no factorization row.
SKIPPED_COLUMNS = [
    "tensor", "layer", "module", "role", "fused", "expert", "m", "n", "method", "rank", "reason",
]
SKIPPED_KEY = ["tensor", "method", "rank"]

#: Methods whose rank-r factors are the first r columns (rows) of one rank-independent factorization
#: of the whole matrix — the full SVD (:func:`~lowrank_lab.linalg.truncated_svd`) and the full thin QR
#: (:func:`~lowrank_lab.linalg.thin_qr`): every rank costs that same factorization, so
#: :func:`factorization_rows` computes and times it once per matrix and slices it for each rank
#: (issue 31: recomputing it per rank was most of a 7B layer's time).
NESTED_METHODS = frozenset({"svd", "qr"})

#: Matrices with more entries than this are timed once with no warm-up on the CPU (see :func:`timing_plan`).
LARGE_MATRIX_ELEMENTS = 1 << 22  # 4.2M entries, e.g. 2048 × 2048


def timing_plan(
    shape: tuple[int, int],
    device: torch.device | str,
    *,
    repeats: int | None = None,
    warmup: int | None = None,
) -> tuple[int, int]:
    """``(repeats, warmup)`` for timing one factorization of a matrix of ``shape``.

    Defaults: 3 timed repeats after 1 warm-up (the median is reported; ``torch.utils.benchmark``
    practice), except on the CPU for matrices above :data:`LARGE_MATRIX_ELEMENTS` entries, which get
    1 repeat and no warm-up: there a single call takes seconds, first-call overheads are negligible
    beside it, and four calls would quadruple a 7B-model run. CUDA keeps the warm-up always, since
    the first cuSOLVER call pays for handle creation. Explicit values override both.
    """
    large = shape[0] * shape[1] > LARGE_MATRIX_ELEMENTS and torch.device(device).type == "cpu"
    default_repeats, default_warmup = (1, 0) if large else (3, 1)
    return (
        default_repeats if repeats is None else int(repeats),
        default_warmup if warmup is None else int(warmup),
    )


def error_ratio(rel_err: float, opt_rel_err: float) -> float:
    """``rel_err / opt_rel_err``: how many times the Eckart–Young optimum a method's error is.

    Undefined (NaN) when the optimum is 0, i.e. the rank reaches the numerical rank of W: the best
    rank-r approximation is then exact, every method's error is roundoff, and a ratio of two
    roundoffs says nothing. The ``rel_err_fro`` column still shows how close to exact the method was.
    """
    if opt_rel_err == 0.0 or not math.isfinite(opt_rel_err):
        return float("nan")
    return rel_err / opt_rel_err


@dataclass(frozen=True)
class AnalysisConfig:
    """What one analysis run does to each matrix (everything but the matrix itself).

    Attributes
    ----------
    model : str
        Name written in the ``model`` column.
    methods : sequence of str
        Registry names from :data:`lowrank_lab.linalg.FACTORIZATIONS`.
    ranks : sequence of int
    device : torch.device
    dtype : torch.dtype or None
        Cast every weight to this dtype before factorizing; None keeps the stored dtype.
    seed : int
        Seed of every randomized method; each call gets a fresh generator with this seed, so each
        row is reproducible on its own (and independent of the order matrices are processed in).
    repeats, warmup : int or None
        Timing; None means :func:`timing_plan`'s size-dependent default.
    """

    model: str
    methods: Sequence[str]
    ranks: Sequence[int]
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype | None = None
    seed: int = 0
    repeats: int | None = None
    warmup: int | None = None

    def __post_init__(self) -> None:
        for method in self.methods:
            get_factorization(method)  # raises ValueError listing the valid names


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _cast_is_exact(src: torch.dtype, dst: torch.dtype) -> bool:
    # Widening casts keep every value, so the stored matrix's exact spectrum still applies.
    if src == dst:
        return True
    order = {torch.float16: 1, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}
    return order.get(dst, 0) > order.get(src, 0) and order.get(src, 0) > 0


def matrix_singular_values(weight: Any, W: torch.Tensor) -> tuple[torch.Tensor, float]:
    """All singular values of the matrix ``W`` being analysed, and the epsilon of its compute dtype.

    ``weight`` is the :class:`~lowrank_lab.weights.WeightMatrix` ``W`` came from: when it carries
    exact singular values (synthetic weights) and ``W`` is the stored matrix or a widening cast of it,
    those are used and no SVD is run; otherwise they come from :func:`lowrank_lab.linalg.singular_values`
    (float32, or float64 for float64 input).
    """
    eps = torch.finfo(compute_dtype(W.dtype)).eps
    given = getattr(weight, "singular_values", None)
    if given is not None and _cast_is_exact(weight.weight.dtype, W.dtype):
        return torch.as_tensor(given).detach().to("cpu"), eps
    return singular_values(W).detach().to("cpu"), eps


def factorization_rows(
    W: torch.Tensor,
    S: torch.Tensor,
    *,
    ident: dict[str, Any],
    config: AnalysisConfig,
    synthetic: bool,
    done: Callable[[tuple[Any, ...]], bool] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Factor ``W`` with every method at every rank; yield ``("factorization", row)`` or ``("skipped", row)``.

    Parameters
    ----------
    W : Tensor, shape (m, n)
        The matrix as analysed (already on ``config.device`` in the analysed dtype).
    S : Tensor
        All its singular values, for the Eckart–Young optimum (:func:`lowrank_lab.linalg.optimal_error`).
    ident : dict
        ``tensor``, ``layer``, ``module``, ``role``, ``fused`` and ``expert`` of the matrix
        (:func:`matrix_ident`).
    done : callable, optional
        ``done((tensor, method, rank)) -> bool``; rows already written (``--resume``) are not redone.

    Notes
    -----
    A rank above ``min(m, n)`` is not an error of the run: the pair is yielded as a skipped row with
    the reason, as is a factorization that raises (its message is recorded, the run goes on).
    ``rel_err_spec`` comes from :func:`lowrank_lab.linalg.relative_errors` (20 Golub–Kahan–Lanczos
    steps on the residual, a lower bound within ~1e-4 on weight spectra); both denominators,
    ‖W‖_F and ‖W‖₂, are taken from ``S`` rather than recomputed for every method.
    ``init_seconds`` is the median of :func:`lowrank_lab.utils.timing.time_call`.
    """
    m, n = int(W.shape[0]), int(W.shape[1])
    S64 = S.detach().to(torch.float64)
    norms = (float(torch.linalg.vector_norm(S64)), float(S64[0]) if S64.numel() else 0.0)
    repeats, warmup = timing_plan((m, n), config.device, repeats=config.repeats, warmup=config.warmup)
    base = {**ident, "m": m, "n": n}
    for method in config.methods:
        todo = [r for r in config.ranks
                if r <= min(m, n) and not (done is not None and done((ident["tensor"], method, r)))]
        nested = None  # NESTED_METHODS: one timed factorization at the largest rank, sliced per rank
        for rank in config.ranks:
            key = (ident["tensor"], method, rank)
            if done is not None and done(key):
                continue
            if rank > min(m, n):
                yield "skipped", {
                    **base, "method": method, "rank": rank,
                    "reason": f"rank {rank} > min(m, n) = {min(m, n)}",
                }
                continue
            try:
                if method in NESTED_METHODS:
                    if nested is None:
                        top = max(todo)
                        nested = time_call(
                            lambda method=method, top=top: factorize(W, top, method, generator=config.seed),
                            device=config.device, repeats=repeats, warmup=warmup,
                        )
                    timing = replace(nested, result=leading(nested.result, rank))
                else:
                    timing = time_call(
                        lambda method=method, rank=rank: factorize(W, rank, method, generator=config.seed),
                        device=config.device, repeats=repeats, warmup=warmup,
                    )
                rel_fro, rel_spec = relative_errors(W, timing.result, norms=norms)
            except (ValueError, RuntimeError) as exc:  # torch.linalg errors are RuntimeErrors
                yield "skipped", {**base, "method": method, "rank": rank, "reason": f"failed: {exc}".strip()}
                continue
            opt_fro, _ = optimal_error(S, rank)
            yield "factorization", {
                "model": config.model, **base, "method": method, "rank": rank,
                "rel_err_fro": rel_fro,
                "opt_rel_err_fro": opt_fro,
                "err_ratio": error_ratio(rel_fro, opt_fro),
                "rel_err_spec": rel_spec,
                "init_seconds": timing.median,
                "device": str(config.device),
                "dtype": _dtype_name(W.dtype),
                "seed": config.seed,
                "synthetic": bool(synthetic),
            }
            del timing  # free the factors before the next method
        del nested


def leading(fact: Factorization, rank: int) -> Factorization:
    """The first ``rank`` columns of ``left``, entries of a diagonal ``core`` and rows of ``right``:
    for :data:`NESTED_METHODS` exactly what the method returns when asked for ``rank`` directly
    (the SVD's sign fix is per column, QR's blocks are leading blocks), so the numbers are the same."""
    if rank == fact.rank:
        return fact
    core = fact.core
    if core is not None:
        core = core[:rank] if core.ndim == 1 else core[:rank, :rank]
    return replace(fact, left=fact.left[:, :rank].contiguous(), right=fact.right[:rank].contiguous(),
                   core=None if core is None else core.contiguous())


def matrix_ident(info: Any) -> dict[str, Any]:
    """The columns that name a matrix in every table: tensor, layer, module, role, fused, expert.

    ``role``, ``fused`` and ``expert`` come from :class:`lowrank_lab.weights.TargetInfo` (the family
    tables of :mod:`lowrank_lab.weights.families`); ``expert`` is empty for a dense matrix.
    """
    return {
        "tensor": info.tensor,
        "layer": info.layer,
        "module": info.module,
        "role": getattr(info, "role", ""),
        "fused": bool(getattr(info, "fused", False)),
        "expert": getattr(info, "expert", None),
    }


def analyze_matrix(
    weight: Any,
    config: AnalysisConfig,
    *,
    spectra_done: bool = False,
    done: Callable[[tuple[Any, ...]], bool] | None = None,
    singular_values_cache: np.ndarray | None = None,
) -> Iterator[tuple[str, Any]]:
    """Every output of one matrix, as ``(table, row)`` pairs, in the order they are computed.

    Tables: ``"singular_values"`` (row: ``{"tensor", "values"}`` with a float64 array), ``"spectra"``
    (one spectra.csv row, unless ``spectra_done``), then ``"factorization"`` and ``"skipped"`` rows
    (see :func:`factorization_rows`). Yielding row by row lets the caller append each to its file as
    soon as it exists, so an interrupted run keeps all finished work.

    Parameters
    ----------
    weight : WeightMatrix
        From :meth:`lowrank_lab.weights.WeightSource.load`.
    config : AnalysisConfig
    spectra_done : bool
        The spectra row is already written (``--resume``).
    done : callable, optional
        Factorization keys already written.
    singular_values_cache : ndarray, optional
        Singular values saved by an earlier run of this matrix, used instead of an SVD.
    """
    W = weight.weight.to(device=config.device, dtype=config.dtype or weight.weight.dtype)
    ident = matrix_ident(weight.info)
    shape = (int(W.shape[0]), int(W.shape[1]))
    if singular_values_cache is not None:
        S = torch.as_tensor(np.asarray(singular_values_cache, dtype=np.float64))
        eps = torch.finfo(compute_dtype(W.dtype)).eps
    else:
        S, eps = matrix_singular_values(weight, W)
        yield "singular_values", {"tensor": ident["tensor"], "values": S.to(torch.float64).numpy()}
    if not spectra_done:
        stats = spectral_stats(S, shape, ranks=config.ranks, eps=eps)
        yield "spectra", {**ident, "m": shape[0], "n": shape[1], **stats}
    yield from factorization_rows(
        W, S, ident=ident, config=config, synthetic=bool(getattr(weight, "synthetic", False)), done=done
    )
