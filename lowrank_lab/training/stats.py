"""Seed-paired statistics and the verdict rules of the claims table (issue 15).

Every comparison is between two methods trained on the same seeds, where a seed fixes the data
order, the head's initialisation and the dropout stream for every method (:mod:`.batching`,
:mod:`.loop`). The unit of analysis is therefore the per-seed difference d_i = a_i - b_i (signed
so that a positive d means "a is better"), not two independent samples:

* interval: d̄ ± t_{0.975, n-1} · s_d / √n, the paired t interval (Student 1908; what
  ``scipy.stats.ttest_rel(...).confidence_interval()`` gives);
* p-value: the two-sided paired t test for a superiority claim; for an equivalence claim the two
  one-sided tests (TOST, Schuirmann 1987) against ±δ, whose p is the larger of the two;
* Holm-Bonferroni (Holm 1979) across the claims of one study: the k-th smallest of m p-values is
  compared with α/(m − k + 1), step-down; the adjusted p-values reported are the monotone
  max_{j≤k} min(1, (m − j + 1) p_(j));
* a minimum effect δ per metric (:data:`MIN_EFFECT`), below which a difference does not matter.

Verdicts (:func:`verdict`), for a difference d with interval [lo, hi] and Holm-adjusted p:

========================  =========================================================================
confirmed                 lo > 0 and d̄ ≥ δ (and p_holm < α)
equivalent                −δ < lo and hi < δ (and the TOST p_holm < α); checked before
                          "contradicted", so a significant difference smaller than δ is equivalent
contradicted              hi < 0 (and p_holm < α)
inconclusive              anything else, or a rule above whose Holm-adjusted p is not below α
========================  =========================================================================

"not testable" is decided before any statistics, by the gates of :mod:`.claims`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Minimum effect that matters, per metric (issue 15): 1 accuracy point; 0.02 for correlations;
#: 0.02 nats for losses.
MIN_EFFECT = {
    "accuracy": 0.01,
    "matthews": 0.02,
    "spearman": 0.02,
    "pearson": 0.02,
    "answer_loss": 0.02,
    "exact_match": 0.01,  # one point of GSM8K accuracy, as for accuracy
    "loss_auc": 0.02,
    "intruders": 1.0,  # one intruder dimension, summed over the model's matrices
}

VERDICTS = ("confirmed", "contradicted", "equivalent", "inconclusive", "not testable")

ALPHA = 0.05


@dataclass(frozen=True)
class Paired:
    """The paired comparison of two methods over ``n`` shared seeds (see the module docstring)."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    p_two_sided: float

    def tost_p(self, delta: float) -> float:
        """The TOST p-value for |true difference| < ``delta`` (the larger one-sided p)."""
        return tost_p(self, delta)


def paired(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> Paired:
    """Paired t statistics of ``a − b`` (same length, same seed order).

    With n < 2 the interval is infinite and p = 1 (nothing can be decided from one seed); with
    identical differences (s_d = 0) the interval collapses to the point and p is 0 unless d̄ = 0.
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(d)
    if n == 0:
        return Paired(0, math.nan, math.nan, -math.inf, math.inf, 1.0)
    mean = sum(d) / n
    if n < 2:
        return Paired(1, mean, math.nan, -math.inf, math.inf, 1.0)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
        return Paired(n, mean, sd, mean, mean, p)
    t_crit = float(stats.t.ppf(0.5 + level / 2, n - 1))
    t = mean / se
    p = float(2 * stats.t.sf(abs(t), n - 1))
    return Paired(n, mean, sd, mean - t_crit * se, mean + t_crit * se, p)


def tost_p(p: Paired, delta: float) -> float:
    """Two one-sided paired t tests of H0: d ≤ −δ and H0: d ≥ δ; the larger p (Schuirmann 1987)."""
    from scipy import stats

    if p.n < 2 or not math.isfinite(p.sd):
        return 1.0
    se = p.sd / math.sqrt(p.n)
    if se == 0.0:
        return 0.0 if -delta < p.mean < delta else 1.0
    p_low = float(stats.t.sf((p.mean + delta) / se, p.n - 1))  # H0: d <= -delta
    p_high = float(stats.t.cdf((p.mean - delta) / se, p.n - 1))  # H0: d >= +delta
    return max(p_low, p_high)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (Holm 1979).

    The k-th smallest (k = 1..m) becomes max_{j≤k} min(1, (m − j + 1) p_(j)); rejecting where the
    adjusted p is below α is Holm's step-down procedure at family-wise level α. NaN stays NaN and
    does not count in m.
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for k, i in enumerate(sorted(idx, key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - k) * float(pvalues[i])))
        out[i] = running
    return out


def verdict(
    p: Paired, delta: float, p_holm: float, p_holm_tost: float = math.nan, *, alpha: float = ALPHA
) -> str:
    """The verdict of a difference (see the module docstring's table).

    ``p_holm`` is the Holm-adjusted two-sided p (it gates confirmed and contradicted), and
    ``p_holm_tost`` the Holm-adjusted TOST p (it gates equivalent); each family of p-values is
    adjusted across the claims of a study.
    """
    if p.n < 2 or not math.isfinite(p.mean):
        return "inconclusive"
    if p.ci_low > 0 and p.mean >= delta and _below(p_holm, alpha):
        return "confirmed"
    if -delta < p.ci_low and p.ci_high < delta and _below(p_holm_tost, alpha):
        return "equivalent"  # before "contradicted": a difference inside ±δ does not matter
    if p.ci_high < 0 and _below(p_holm, alpha):
        return "contradicted"
    return "inconclusive"


def _below(p: float, alpha: float) -> bool:
    return p is not None and math.isfinite(p) and p < alpha
