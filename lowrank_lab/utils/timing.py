"""Wall-clock timing that is honest on CUDA: synchronise, warm up, report the median of repeats;
and the distribution-free interval for a median that paired benchmark ratios are reported with."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued CUDA work on ``device`` (a no-op on the CPU), so a timer sees finished work."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class TimingResult(Generic[T]):
    """Median and all repeat times in seconds, with the result of the last call."""

    median: float
    times: tuple[float, ...]
    result: T


def time_call(
    fn: Callable[[], T], *, device: torch.device | str | None = None, repeats: int = 3, warmup: int = 1
) -> TimingResult[T]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed, synchronising ``device``.

    The median rather than the mean, because shared machines produce one-sided outliers
    (``torch.utils.benchmark`` makes the same choice).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(max(warmup, 0)):
        fn()
    times = []
    result: Any = None
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return TimingResult(median=statistics.median(times), times=tuple(times), result=result)


class Stopwatch:
    """``with Stopwatch(device) as sw: ...`` then ``sw.seconds`` (CUDA-synchronised at both ends)."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device
        self.seconds = float("nan")

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Median of ``values`` and a distribution-free ``level`` confidence interval for it.

    The interval is ``[x_(k), x_(n+1-k)]`` of the sorted values with the largest k such that
    ``P(Binomial(n, 1/2) < k) <= (1 - level) / 2`` (the sign-test interval; e.g. Conover,
    *Practical Nonparametric Statistics*, §3.2). With fewer than 6 values no such k exists and the
    interval is the whole range.
    """
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    alpha = (1.0 - level) / 2
    k, cdf = 0, 0.0  # cdf = P(B < k + 1) as k grows
    while k < n // 2:
        cdf += math.comb(n, k) / 2.0**n
        if cdf > alpha:
            break
        k += 1
    lo, hi = (xs[k - 1], xs[n - k]) if k >= 1 else (xs[0], xs[-1])
    return statistics.median(xs), lo, hi


# Pairs below this give no 95% sign-test interval worth the name: with n = 6 the interval is already the
# whole range (k = 1); 7 is the least n at which the range is a >= 95% interval with one pair to spare.
MIN_PAIRS = 7


@dataclass(frozen=True)
class RatioVerdict:
    """A paired benchmark's ratios judged against a target: ``status`` is ``"met"`` (upper bound at
    most the target), ``"missed"`` (lower bound above it), or ``"not established"`` (the interval
    straddles the target, or fewer than ``min_pairs`` pairs, in which case no interval is given)."""

    n: int
    median: float
    low: float
    high: float
    target: float
    status: str

    @property
    def met(self) -> bool:
        return self.status == "met"


def ratio_verdict(
    ratios: list[float], target: float = 1.0, *, level: float = 0.95, min_pairs: int = MIN_PAIRS
) -> RatioVerdict:
    """Judge per-pair ratios (ours / peer) against ``target`` by the :func:`median_ci` interval.

    The target is met only when the interval's **upper** bound is at most ``target``; there is no
    fallback to the median. With fewer than ``min_pairs`` ratios (default :data:`MIN_PAIRS`) the
    verdict is "not established" and the bounds are NaN.
    """
    n = len(ratios)
    if n < max(min_pairs, 6):  # below 6 the sign test has no 95% interval at all
        med = statistics.median(ratios) if n else float("nan")
        return RatioVerdict(n, med, float("nan"), float("nan"), target, "not established")
    med, lo, hi = median_ci(ratios, level)
    status = "met" if hi <= target else "missed" if lo > target else "not established"
    return RatioVerdict(n, med, lo, hi, target, status)
