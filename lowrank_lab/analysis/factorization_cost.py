"""What a factorization sweep costs: flops of each method, a probe of this machine, the ``--plan`` text.

``analyze`` (:mod:`lowrank_lab.analysis.analyze_run`) uses these to balance a distributed run's
ranks (:func:`matrix_cost`), to say before a long run how long it will take, and to print
``--plan``: :class:`CostModel` times every method once on a small synthetic matrix and scales the
rates to each matrix of the run by :func:`method_work`, good to about a factor of two.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from lowrank_lab.analysis.factorization import NESTED_METHODS, timing_plan
from lowrank_lab.linalg import factorize, relative_errors, singular_values
from lowrank_lab.utils.sweep import format_duration
from lowrank_lab.weights.synthetic import power_law_spectrum, synthetic_matrix


def matrix_cost(shape: tuple[int, int], ranks: Sequence[int], n_methods: int, *, needs_svd: bool) -> float:
    """Relative work of one matrix, for balancing ranks of a distributed run (issue 9).

    Every method at rank r touches the matrix O(m·n·r) times; the spectra need a full SVD,
    O(m·n·min(m, n)), unless the singular values are known (synthetic weights).
    """
    m, n = shape
    return float(m * n * (n_methods * sum(ranks) + (min(m, n) if needs_svd else 0)))


#: Shape of the probe matrix and its rank: big enough that BLAS runs as on real weights, small enough
#: that timing every method on it takes well under a second on 2 cores.
PROBE_SHAPE = (1536, 384)
PROBE_RANK = 32


def method_work(method: str, shape: tuple[int, int], rank: int) -> float:
    """Work of one factorization, proportional to its flops (the probe supplies seconds per unit).

    With ``M, K = max(m, n), min(m, n)``: the full SVD and thin QR (:data:`NESTED_METHODS`, one per
    matrix whatever the rank) cost ``O(M K²)``; the randomized sketches (rsvd, nystrom, rlu) a few
    passes over ``W`` with ``r + p`` columns, ``O(M K (r + 10))``; LDU from a panel and the CUR-style
    Nyström variants touch ``W`` about once plus ``O((M + K) r²)``.
    """
    M, K = max(shape), min(shape)
    if method in NESTED_METHODS:
        return float(M * K * K)
    if method in ("ldu", "nystrom-pinv", "nystrom-released"):
        return float(M * K + (M + K) * rank * rank)
    return float(M * K * (rank + 10))


def error_work(shape: tuple[int, int], rank: int) -> float:
    """Work of one row's error measurement: the residual ``W − L R`` (``m n r``) and 20 Lanczos steps
    of two matrix-vector products each on it (``relative_errors``)."""
    return float(shape[0] * shape[1] * (rank + 40))


def rough_seconds(
    infos: Sequence[Any], methods: Sequence[str], ranks: Sequence[int], *, needs_svd: bool
) -> float:
    """An upper-end guess with no probe (1 GFLOP/s, 4 calls per row), to decide whether to probe."""
    total = 0.0
    for info in infos:
        shape = tuple(int(d) for d in info.shape)
        total += method_work("svd", shape, 1) if needs_svd else 0.0
        for m in methods:
            total += sum(4 * method_work(m, shape, r) + error_work(shape, r) for r in ranks)
    return total * 1e-9


class CostModel:
    """Seconds per unit of :func:`method_work` for each method (and of the error measurement, the
    spectrum's singular values and synthetic generation), measured by a probe on this machine.

    The probe times every method once (after one warm-up) on a ``PROBE_SHAPE`` synthetic matrix at
    ``PROBE_RANK``, on the run's device and dtype, with the run's threads. Scaling a small matrix's
    rate to a 7B one by flops is rough: BLAS runs faster on big blocks, LAPACK's SVD slower, and a
    shared machine varies, so the estimate is good to a factor of about two (the README's examples
    and reports/benchmarks/analyze_scale.md compare it with measured runs).
    """

    def __init__(self, rates: dict[str, float], probe_seconds: float) -> None:
        self.rates = rates
        self.probe_seconds = probe_seconds

    @classmethod
    def probe(cls, methods: Sequence[str], device: torch.device, dtype: torch.dtype | None, *,
              synthetic: bool) -> CostModel:
        from lowrank_lab.utils.timing import time_call

        def fastest(fn) -> float:  # the less disturbed of 2 calls after a warm-up (a shared machine)
            return min(time_call(fn, device=device, repeats=2, warmup=1).times)

        t0 = time.perf_counter()
        shape, r = PROBE_SHAPE, PROBE_RANK
        sigma = power_law_spectrum(min(shape), shape=shape)
        gen = fastest(lambda: synthetic_matrix(shape, sigma, torch.Generator().manual_seed(0)))
        P = synthetic_matrix(shape, sigma, torch.Generator().manual_seed(0))
        P = P.to(device=device, dtype=dtype or P.dtype)
        norms = (float(torch.linalg.vector_norm(sigma)), float(sigma[0]))
        rates: dict[str, float] = {"load": gen / _gen_work(shape) if synthetic else 0.0}
        for method in methods:
            rates[method] = fastest(lambda method=method: factorize(P, r, method, generator=0)) / method_work(
                method, shape, r)
        f = factorize(P, r, methods[0], generator=0)
        rates["error"] = fastest(lambda: relative_errors(P, f, norms=norms)) / error_work(shape, r)
        if not synthetic:  # synthetic matrices carry their singular values: no SVD for the spectrum
            rates["svdvals"] = fastest(lambda: singular_values(P)) / method_work("svd", shape, r)
        return cls(rates, time.perf_counter() - t0)

    def matrix_seconds(
        self, shape: Sequence[int], methods: Sequence[str], ranks: Sequence[int], *, needs_svd: bool,
        device: torch.device, repeats: int | None = None, warmup: int | None = None,
    ) -> float:
        """Estimated seconds of one matrix: generation, its spectrum, every (method, rank) row."""
        shape = (int(shape[0]), int(shape[1]))
        calls = sum(timing_plan(shape, device, repeats=repeats, warmup=warmup))
        valid = [r for r in ranks if r <= min(shape)]
        t = self.rates.get("load", 0.0) * _gen_work(shape)
        if needs_svd:
            t += self.rates["svdvals"] * method_work("svd", shape, 1)
        if not valid:
            return t
        for m in methods:
            if m in NESTED_METHODS:
                t += calls * self.rates[m] * method_work(m, shape, max(valid))
            else:
                t += sum(calls * self.rates[m] * method_work(m, shape, r) for r in valid)
            t += sum(self.rates["error"] * error_work(shape, r) for r in valid)
        return t


def _gen_work(shape: tuple[int, int]) -> float:
    # synthetic_matrix: Kronecker factors of sizes about sqrt(m) and sqrt(n) applied to an (m, n) matrix
    return float(shape[0] * shape[1] * (math.sqrt(shape[0]) + math.sqrt(shape[1])))


def plan_text(
    model: str, infos: Sequence[Any], methods: Sequence[str], ranks: Sequence[int], cost: CostModel, *,
    synthetic: bool, device: torch.device, repeats: int | None, warmup: int | None, prog: str,
) -> str:
    """What ``--plan`` prints (its first line begins with ``prog``): matrices grouped by module and
    shape, methods, ranks, rows, time."""
    groups: dict[tuple[str, tuple[int, int]], list[Any]] = {}
    for info in infos:
        groups.setdefault((info.module, (int(info.shape[0]), int(info.shape[1]))), []).append(info)
    needs_svd = not synthetic
    lines = [f"{prog}: plan for {model}{' (synthetic)' if synthetic else ''} on {device}, "
             f"{torch.get_num_threads()} threads"]
    rows = skipped = 0
    total = 0.0
    lines.append(f"  {'module':<24} {'shape':>13} {'matrices':>8} {'estimate':>10}")
    for (module, shape), members in groups.items():
        each = cost.matrix_seconds(shape, methods, ranks, needs_svd=needs_svd, device=device,
                                   repeats=repeats, warmup=warmup)
        total += each * len(members)
        valid = sum(r <= min(shape) for r in ranks)
        rows += len(members) * len(methods) * valid
        skipped += len(members) * len(methods) * (len(ranks) - valid)
        lines.append(f"  {module:<24} {shape[0]:>6}x{shape[1]:<6} {len(members):>8} "
                     f"{format_duration(each * len(members)):>10}")
    lines += [
        f"  methods: {', '.join(methods)}",
        f"  ranks: {', '.join(str(r) for r in ranks)}",
        f"  {len(infos)} matrices, {rows} factorization rows"
        + (f" ({skipped} (method, rank) pairs above min(m, n), skipped)" if skipped else ""),
        f"  estimated time: {format_duration(total)} (from a {cost.probe_seconds:.1f} s probe of every "
        f"method on a {PROBE_SHAPE[0]}x{PROBE_SHAPE[1]} matrix, scaled by flops; good to about 2x"
        + ("; reading the weights is not counted" if not synthetic else "") + ")",
        "  nothing was computed or written (--plan)",
    ]
    return "\n".join(lines)
