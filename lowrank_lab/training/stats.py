"""Seed-paired statistics, the typed measures and THE decision rule of the claims table (issues 15, 30).

Every comparison is between two methods trained on the same seeds, where a seed fixes the data
order, the head's initialisation and the dropout stream for every method (:mod:`.batching`,
:mod:`.loop`). The unit of analysis is therefore the per-seed difference d_i = a_i - b_i (signed
so that a positive d is the claim's direction), not two independent samples:

* interval: d̄ ± t_{0.975, n-1} · s_d / √n, the paired t interval (Student 1908; what
  ``scipy.stats.ttest_rel(...).confidence_interval()`` gives);
* p-values: the paired t test (two-sided against 0, or one-sided against −δ), and for "no difference
  that matters" the two one-sided tests against ±δ (TOST, Schuirmann 1987), whose p is the larger;
* Holm-Bonferroni (Holm 1979) within a family declared before the runs: one family per paper, holding
  both p-values of each of its claims on each task tested (:func:`holm`);
* a minimum effect δ per measure (:data:`MEASURES`), declared with its reason.

The rule that turns those numbers into a verdict is :data:`DECISION_RULE`, written once here,
printed verbatim at the top of reports/claims.md and applied by :func:`decide`, which reads only
columns of claims.csv (kind, effect, ci_low, ci_high, min_effect, test, p1_holm, p2_holm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ALPHA = 0.05


@dataclass(frozen=True)
class Measure:
    """What a claim compares, typed once (issue 29, point 5; issue 30, point 5).

    Attributes
    ----------
    name : str
        The key claims.csv's ``metric`` column holds.
    direction : {+1, -1}
        +1 when a larger value is better (or is the claim's direction: more intruders), -1 when a
        smaller one is (losses, steps to converge).
    unit : str
        What one unit of the value is, as a table prints it.
    min_effect : float or None
        δ: the smallest difference that matters, in ``unit``. None: the measure is judged by its
        interval alone (a correlation has no meaningful δ).
    reason : str
        Why δ is what it is (declared before the runs).
    scale : str
        The scale values live on; two measures are comparable only on the same scale, and a loss
        AUC only where the task's loss is in nats (:func:`convergence_measure`).
    """

    name: str
    direction: int
    unit: str
    min_effect: float | None
    reason: str
    scale: str

    def signed(self, value: float) -> float:
        """``value`` oriented so that larger is better (the claim's direction)."""
        return self.direction * float(value)


#: Every measure a claim may read, with its minimum effect and the reason for it
#: (../shared/REFERENCE.md, "Evaluation noise on the committed data").
MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        Measure("accuracy", +1, "accuracy (fraction of dev examples)", 0.01,
                "1 point: a binomial accuracy near 0.86 has a standard error of ~1.2 points on SST-2's "
                "872 dev sentences; paired seeds are less noisy, so 1 point is at the edge of what 5 "
                "seeds decide",
                "proportion"),
        Measure("matthews", +1, "Matthews correlation", 0.02,
                "0.02: CoLA's Matthews correlation moves by a few hundredths between seeds at 0.2-0.4 "
                "(1,043 dev sentences)", "correlation"),
        Measure("spearman", +1, "Spearman correlation", 0.02,
                "0.02: two points on GLUE's 0-100 STS-B scale; seed sd 0.002-0.013 in the committed study",
                "correlation"),
        Measure("pearson", +1, "Pearson correlation", 0.02, "as Spearman's", "correlation"),
        Measure("answer_loss", -1, "nats per answer token", 0.02,
                "0.02 nats: 2% of perplexity, under the seed spread of the committed GSM8K runs (sd ~0.03)",
                "nats"),
        Measure("exact_match", +1, "exact match (fraction of problems)", 0.01,
                "1 point of GSM8K accuracy, as for accuracy", "proportion"),
        Measure("loss_auc", -1, "nats (mean training loss)", 0.02,
                "0.02 nats, as answer_loss: only for cross-entropy losses (a squared error has no nats)",
                "nats"),
        Measure("steps_to_90", -1, "fraction of the run's steps", 0.1,
                "a tenth of the run: evaluations every 20% of the run give the curve, and a crossing "
                "interpolated between them is not resolved more finely", "run fraction"),
        Measure("intruders", +1, "intruder dimensions (left side, summed over matrices)", 1.0,
                "one intruder dimension: counts are integers", "count"),
        Measure("forgetting", -1, "STS-B Spearman drop (untuned minus tuned encoder)", 0.02,
                "0.02, as for Spearman: the drop is a difference of two STS-B Spearman correlations",
                "correlation"),
        Measure("correlation", +1, "Spearman correlation across runs", None,
                "a correlation claim is judged by its interval (is it above 0?), not by a δ", "correlation"),
    )
}  # fmt: skip

#: The measures that code reads by what they are rather than through a task's metric: each run's value
#: on them is read from somewhere of its own (the training loss, the evaluation curve, the intruder
#: and forgetting tables), and the correlation claim is judged on the last.
LOSS_AUC, STEPS_TO_90, INTRUDER_COUNT, FORGETTING, EXACT_MATCH, CORRELATION = (
    MEASURES[name]
    for name in ("loss_auc", "steps_to_90", "intruders", "forgetting", "exact_match", "correlation")
)

#: δ by measure name, for readers that only need the number (summary.still_rising).
MIN_EFFECT: dict[str, float] = {k: m.min_effect for k, m in MEASURES.items() if m.min_effect is not None}

#: Losses whose values are in nats (cross-entropy): a loss AUC means the same thing on each.
NATS_LOSS_KINDS = frozenset({"classification", "causal-lm"})


def convergence_measure(task_kind: str) -> Measure:
    """How "converges faster" is measured on a task: the mean training loss (loss AUC) where the
    loss is a cross-entropy in nats, else the scale-free steps to 90% of the run's validation gain
    (a squared-error loss, STS-B, has no common scale across methods' heads)."""
    return LOSS_AUC if task_kind in NATS_LOSS_KINDS else STEPS_TO_90


#: The verdicts a row can read. "exact": every per-seed difference is the same number, so no test
#: statistic exists; the row states the values (claim_holds).
VERDICTS = ("confirmed", "contradicted", "equivalent", "inconclusive", "exact", "not testable")

#: The kinds of claim, each its own test.
KINDS = ("superiority", "non-inferiority", "correlation")

#: The decision rule, verbatim. claims.md prints it; :func:`decide` applies it.
DECISION_RULE = """\
Decision rule (lowrank_lab/training/stats.py, DECISION_RULE; alpha = 0.05). A row compares a with b
over the seeds both ran: d_i = a_i - b_i, signed so that d > 0 is the claim's direction; effect = mean
d; [ci_low, ci_high] = effect +/- t(0.975, n-1) sd/sqrt(n). Each row has two hypotheses (p1, p2), and
every hypothesis of one paper, over all its claims and tasks tested, is one Holm-Bonferroni family
(p1_holm, p2_holm; family, family_size). delta = min_effect. Rules are checked in the order written.
- Gate first: a row whose gate fails, whose task the base model was trained on, or with fewer than 2
  paired seeds is "not testable" (gate_reason says why); it joins no family.
- Zero variance (every d_i equal): no test statistic (test "none", p empty); verdict "exact", and
  claim_holds states the exact values.
- superiority ("a beats b"): p1 = two-sided paired t of d = 0; p2 = TOST of |d| >= delta.
  confirmed     ci_low > 0 and effect >= delta and p1_holm < alpha
  contradicted  ci_high < 0 and p1_holm < alpha (b is better)
  equivalent    -delta < ci_low and ci_high < delta and p2_holm < alpha (no difference that matters)
  inconclusive  otherwise
- non-inferiority ("a matches b"): p1 = one-sided t of H0 d <= -delta; p2 = one-sided t of H0 d >= -delta.
  confirmed     ci_low > -delta and p1_holm < alpha (a is no worse than b by delta)
  contradicted  ci_high < -delta and p2_holm < alpha (a is worse by more than delta)
  inconclusive  otherwise
- correlation (no delta): p1 = the correlation's test of rho = 0; no p2.
  confirmed     ci_low > 0 and p1_holm < alpha
  contradicted  ci_high < 0 and p1_holm < alpha
  inconclusive  otherwise
claim_holds reads the verdict: yes (confirmed), no (contradicted; for superiority also equivalent),
undecided (inconclusive); a claim that expects no difference (expects = none) holds when equivalent."""


@dataclass(frozen=True)
class Paired:
    """The paired comparison of two methods over ``n`` shared seeds (see the module docstring).

    ``p_two_sided`` is NaN when the differences have no spread (no test statistic exists)."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    p_two_sided: float

    @property
    def zero_variance(self) -> bool:
        """n ≥ 2 identical differences: the interval is a point and no t statistic exists."""
        return self.n >= 2 and self.sd == 0.0

    def tost_p(self, delta: float) -> float:
        """The TOST p-value for |true difference| < ``delta`` (the larger one-sided p)."""
        return tost_p(self, delta)


def paired(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> Paired:
    """Paired t statistics of ``a − b`` (same length, same seed order).

    With n < 2 the interval is infinite and p = 1 (nothing can be decided from one seed); with
    identical differences (s_d = 0) the interval collapses to the point and p is NaN: no test
    statistic exists, and :func:`decide` states the values instead (issue 30, point 3).
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
    if max(d) - min(d) <= 1e-12 * max(1.0, max(abs(x) for x in d)):
        # equal in exact arithmetic (a rounding residue of the subtraction is not a spread)
        return Paired(n, mean, 0.0, mean, mean, math.nan)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    t_crit = float(stats.t.ppf(0.5 + level / 2, n - 1))
    p = float(2 * stats.t.sf(abs(mean / se), n - 1))
    return Paired(n, mean, sd, mean - t_crit * se, mean + t_crit * se, p)


def _se(p: Paired) -> float | None:
    if p.n < 2 or not math.isfinite(p.sd) or p.sd == 0.0:
        return None
    return p.sd / math.sqrt(p.n)


def tost_p(p: Paired, delta: float) -> float:
    """Two one-sided paired t tests of H0: d ≤ −δ and H0: d ≥ δ; the larger p (Schuirmann 1987).
    NaN at zero variance (no statistic), 1 with fewer than 2 seeds."""
    from scipy import stats

    if p.zero_variance:
        return math.nan
    se = _se(p)
    if se is None:
        return 1.0
    p_low = float(stats.t.sf((p.mean + delta) / se, p.n - 1))  # H0: d <= -delta
    p_high = float(stats.t.cdf((p.mean - delta) / se, p.n - 1))  # H0: d >= +delta
    return max(p_low, p_high)


def noninferiority_p(p: Paired, delta: float) -> tuple[float, float]:
    """(p of H0: d ≤ −δ, p of H0: d ≥ −δ): the one-sided paired t tests a "matches" claim reads
    (the first shows a no worse than b by δ, the second a worse by more than δ)."""
    from scipy import stats

    if p.zero_variance:
        return math.nan, math.nan
    se = _se(p)
    if se is None:
        return 1.0, 1.0
    t = (p.mean + delta) / se
    return float(stats.t.sf(t, p.n - 1)), float(stats.t.cdf(t, p.n - 1))


def hypotheses(kind: str, p: Paired, delta: float | None) -> tuple[float, float]:
    """(p1, p2) of a claim of ``kind`` (see :data:`DECISION_RULE`); p2 is NaN for a correlation."""
    if kind == "superiority":
        return p.p_two_sided, tost_p(p, float(delta))  # type: ignore[arg-type]
    if kind == "non-inferiority":
        return noninferiority_p(p, float(delta))  # type: ignore[arg-type]
    if kind == "correlation":
        return p.p_two_sided, math.nan
    raise ValueError(f"unknown claim kind {kind!r}; one of {', '.join(KINDS)}")


def holm(pvalues: Sequence[float | None]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (Holm 1979).

    The k-th smallest (k = 1..m) becomes max_{j≤k} min(1, (m − j + 1) p_(j)); rejecting where the
    adjusted p is below α is Holm's step-down procedure at family-wise level α. NaN (or None) stays
    NaN and does not count in m.
    """
    idx = [i for i, p in enumerate(pvalues) if _finite(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for k, i in enumerate(sorted(idx, key=lambda j: float(pvalues[j]))):  # type: ignore[arg-type]
        running = max(running, min(1.0, (m - k) * float(pvalues[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


def holm_families(rows: Sequence[Mapping[str, object]]) -> tuple[list[float], list[float], dict[str, int]]:
    """Holm within each row's ``family``, over the p1 and p2 of every row together: (p1_holm,
    p2_holm, family sizes). Rows without a family, or with no finite p, take no part."""
    by_family: dict[str, list[tuple[int, int]]] = {}
    for i, row in enumerate(rows):
        fam = row.get("family")
        if not isinstance(fam, str) or not fam:
            continue
        for j, key in enumerate(("p1", "p2")):
            if _finite(row.get(key)):
                by_family.setdefault(fam, []).append((i, j))
    adj = [[math.nan, math.nan] for _ in rows]
    for members in by_family.values():
        values = holm([float(rows[i][("p1", "p2")[j]]) for i, j in members])  # type: ignore[arg-type]
        for (i, j), v in zip(members, values, strict=True):
            adj[i][j] = v
    return [a[0] for a in adj], [a[1] for a in adj], {f: len(m) for f, m in by_family.items()}


def decide(
    kind: str,
    effect: float,
    ci_low: float,
    ci_high: float,
    delta: float | None,
    p1_holm: float,
    p2_holm: float = math.nan,
    *,
    zero_variance: bool = False,
    alpha: float = ALPHA,
) -> str:
    """The verdict of :data:`DECISION_RULE` from a row's numbers (a tested row: its gate passed)."""
    if zero_variance:
        return "exact"
    if not (_finite(effect) and math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "inconclusive"
    sig1, sig2 = _below(p1_holm, alpha), _below(p2_holm, alpha)
    if kind == "superiority":
        d = float(delta)  # type: ignore[arg-type]
        if ci_low > 0 and effect >= d and sig1:
            return "confirmed"
        if ci_high < 0 and sig1:
            return "contradicted"
        if -d < ci_low and ci_high < d and sig2:
            return "equivalent"
        return "inconclusive"
    if kind == "non-inferiority":
        d = float(delta)  # type: ignore[arg-type]
        if ci_low > -d and sig1:
            return "confirmed"
        if ci_high < -d and sig2:
            return "contradicted"
        return "inconclusive"
    if kind == "correlation":
        if ci_low > 0 and sig1:
            return "confirmed"
        if ci_high < 0 and sig1:
            return "contradicted"
        return "inconclusive"
    raise ValueError(f"unknown claim kind {kind!r}; one of {', '.join(KINDS)}")


def holds(
    kind: str,
    verdict: str,
    *,
    effect: float = math.nan,
    delta: float | None = None,
    expects: str = "difference",
) -> str:
    """claim_holds of a decided verdict (the last line of :data:`DECISION_RULE`); for "exact" the
    caller adds the values. ``expects="none"``: a contrast the paper predicts shows no difference."""
    if verdict == "exact":
        d = float(delta) if delta is not None else 0.0
        if expects == "none":
            return "yes" if abs(effect) < d else "no"
        if kind == "non-inferiority":
            return "yes" if effect > -d else "no"
        return "yes" if effect >= d and effect > 0 else "no"
    if expects == "none":
        return {"equivalent": "yes", "confirmed": "no", "contradicted": "no"}.get(verdict, "undecided")
    if kind == "non-inferiority":
        return {"confirmed": "yes", "contradicted": "no"}.get(verdict, "undecided")
    return {"confirmed": "yes", "contradicted": "no", "equivalent": "no (no difference that matters)"}.get(
        verdict, "undecided"
    )


def _finite(p: object) -> bool:
    return isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(float(p))


def _below(p: float, alpha: float) -> bool:
    return _finite(p) and p < alpha
