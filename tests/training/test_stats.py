"""Seed-paired statistics of the claims table, checked against scipy.stats."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from lowrank_lab.training.stats import (
    DECISION_RULE,
    KINDS,
    MEASURES,
    VERDICTS,
    convergence_measure,
    decide,
    holds,
    holm,
    holm_families,
    noninferiority_p,
    paired,
    tost_p,
)


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_paired_interval_and_p_match_scipy_ttest_rel(n):
    rng = np.random.default_rng(n)
    a = rng.normal(0.85, 0.01, n)
    b = a - rng.normal(0.004, 0.006, n)
    p = paired(a.tolist(), b.tolist())
    ref = sps.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert p.n == n
    assert p.mean == pytest.approx(float(np.mean(a - b)), abs=1e-15)
    assert p.p_two_sided == pytest.approx(ref.pvalue, rel=1e-10)
    assert (p.ci_low, p.ci_high) == (pytest.approx(ci.low, rel=1e-10), pytest.approx(ci.high, rel=1e-10))


def test_t_quantiles_are_the_ones_reference_md_quotes():
    # d ± t_{0.975, n-1} s_d / sqrt(n): t_{0.975,2} = 4.30, t_{0.975,4} = 2.78 (REFERENCE.md)
    for n, t in ((3, 4.30), (5, 2.78), (10, 2.26)):
        d = [0.0] * (n - 1) + [1.0]
        p = paired(d, [0.0] * n)
        half = (p.ci_high - p.ci_low) / 2
        assert half / (p.sd / math.sqrt(n)) == pytest.approx(t, abs=0.005)


def test_one_seed_decides_nothing_and_zero_spread_has_no_statistic():
    one = paired([0.9], [0.8])
    assert one.n == 1 and one.ci_low == -math.inf and one.p_two_sided == 1.0
    assert decide("superiority", one.mean, one.ci_low, one.ci_high, 0.01, one.p_two_sided) == "inconclusive"
    # 0.05 on every seed, up to the rounding of the subtraction: no spread, no t statistic
    same = paired([0.9, 0.8, 0.7], [0.85, 0.75, 0.65])
    assert same.zero_variance and same.sd == 0.0 and same.ci_low == same.ci_high == same.mean
    assert math.isnan(same.p_two_sided) and math.isnan(tost_p(same, 0.01))
    assert all(math.isnan(p) for p in noninferiority_p(same, 0.01))
    with pytest.raises(ValueError, match="equal lengths"):
        paired([1.0, 2.0], [1.0])


def test_tost_is_the_larger_of_two_one_sided_tests():
    rng = np.random.default_rng(7)
    d = rng.normal(0.002, 0.004, 5)
    p = paired(d.tolist(), [0.0] * 5)
    delta = 0.01
    lo = sps.ttest_1samp(d, -delta, alternative="greater").pvalue
    hi = sps.ttest_1samp(d, delta, alternative="less").pvalue
    assert tost_p(p, delta) == pytest.approx(max(lo, hi), rel=1e-10)


def test_holm_adjusts_step_down_and_keeps_order():
    pv = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> max 0.06)
    assert holm(pv) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([0.01, math.nan, 0.02])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_holm_rejections_equal_the_step_down_procedure():
    rng = np.random.default_rng(3)
    for _ in range(50):
        pv = rng.uniform(0, 0.1, 6).tolist()
        adj = holm(pv)
        order = np.argsort(pv)
        rejected = set()
        for k, i in enumerate(order):  # compare the k-th smallest with alpha / (m - k)
            if pv[i] < 0.05 / (len(pv) - k):
                rejected.add(int(i))
            else:
                break
        assert {i for i, p in enumerate(adj) if p < 0.05} == rejected


def test_noninferiority_p_values_are_one_sided_t_tests_against_minus_delta():
    rng = np.random.default_rng(11)
    d = rng.normal(-0.004, 0.005, 5)
    p = paired(d.tolist(), [0.0] * 5)
    delta = 0.01
    no_worse, worse = noninferiority_p(p, delta)
    assert no_worse == pytest.approx(sps.ttest_1samp(d, -delta, alternative="greater").pvalue, rel=1e-10)
    assert worse == pytest.approx(sps.ttest_1samp(d, -delta, alternative="less").pvalue, rel=1e-10)
    assert no_worse + worse == pytest.approx(1.0)


SUP, NI, COR = "superiority", "non-inferiority", "correlation"


@pytest.mark.parametrize(
    ("kind", "mean", "half", "p1", "p2", "want"),
    [
        (SUP, 0.03, 0.01, 0.001, 1.0, "confirmed"),  # interval above 0, effect >= delta
        (SUP, 0.005, 0.004, 0.001, 0.5, "inconclusive"),  # above 0 but under delta, TOST not shown
        (SUP, 0.005, 0.004, 0.001, 0.001, "equivalent"),  # a real but small gain: does not matter
        (SUP, -0.03, 0.01, 0.001, 1.0, "contradicted"),  # below 0
        (SUP, -0.004, 0.003, 0.001, 0.001, "contradicted"),  # significantly worse, however small
        (SUP, -0.004, 0.003, 0.2, 0.001, "equivalent"),  # not significant after Holm, inside ±delta
        (SUP, 0.0, 0.005, 0.9, 0.2, "inconclusive"),  # interval inside ±delta but TOST not significant
        (SUP, 0.0, 0.05, 0.9, 0.9, "inconclusive"),  # wide interval
        (SUP, 0.03, 0.01, 0.2, 1.0, "inconclusive"),  # Holm takes the confirmation away
        (SUP, -0.03, 0.01, 0.2, 1.0, "inconclusive"),  # ... and the contradiction
        (NI, -0.004, 0.005, 0.001, 0.99, "confirmed"),  # lower bound -0.009 > -delta
        (NI, 0.03, 0.01, 0.001, 0.99, "confirmed"),  # better also matches
        (NI, -0.03, 0.01, 0.99, 0.001, "contradicted"),  # upper bound -0.02 < -delta
        (NI, -0.009, 0.004, 0.5, 0.5, "inconclusive"),  # interval below 0, but not below -delta
        (NI, -0.0173, 0.0134, 0.5, 0.5, "inconclusive"),  # LoRA-XS on STS-B: upper -0.0039 > -delta
        (NI, -0.004, 0.005, 0.2, 0.99, "inconclusive"),  # Holm takes non-inferiority away
        (COR, 0.4, 0.2, 0.001, math.nan, "confirmed"),  # judged by the interval, no delta
        (COR, -0.4, 0.2, 0.001, math.nan, "contradicted"),
        (COR, -0.37, 0.45, 0.1, math.nan, "inconclusive"),
    ],
)
def test_every_verdict_is_reachable_and_holm_gates_it(kind, mean, half, p1, p2, want):
    delta = None if kind == COR else 0.01
    assert decide(kind, mean, mean - half, mean + half, delta, p1, p2) == want


def test_the_noninferiority_boundary_is_minus_delta_not_zero():
    delta = 0.02
    # LoRA-XS on STS-B in the old table: upper bound -0.0173, contradicted against 0; not against -delta
    assert decide(NI, -0.0307, -0.0442, -0.0173, delta, 1.0, 0.001) == "inconclusive"
    assert decide(NI, -0.0307, -0.0442, -0.0201, delta, 1.0, 0.001) == "contradicted"
    assert decide(NI, -0.0100, -0.0199, -0.0001, delta, 0.001, 1.0) == "confirmed"
    assert decide(NI, -0.0100, -0.0200, -0.0001, delta, 0.001, 1.0) == "inconclusive"  # on the boundary


def test_zero_variance_reads_exact_and_claim_holds_by_the_values():
    assert decide(SUP, 0.0, 0.0, 0.0, 1.0, math.nan, math.nan, zero_variance=True) == "exact"
    assert holds(SUP, "exact", effect=0.0, delta=1.0) == "no"
    assert holds(SUP, "exact", effect=2.0, delta=1.0) == "yes"
    assert holds(SUP, "exact", effect=0.0, delta=1.0, expects="none") == "yes"  # the paper's contrast
    assert holds(NI, "exact", effect=-0.005, delta=0.01) == "yes"
    assert holds(NI, "confirmed") == "yes" and holds(SUP, "equivalent").startswith("no")


def test_holm_families_adjust_both_hypotheses_of_every_row_of_a_paper_together():
    rows = [
        {"family": "PiSSA", "p1": 0.01, "p2": 0.5},
        {"family": "PiSSA", "p1": 0.02, "p2": math.nan},
        {"family": "MiLoRA", "p1": 0.01, "p2": 0.04},
        {"family": "", "p1": 0.001, "p2": 0.001},  # gated out: in no family
    ]
    p1, p2, sizes = holm_families(rows)
    assert sizes == {"PiSSA": 3, "MiLoRA": 2}
    assert p1[0] == pytest.approx(0.03) and p1[1] == pytest.approx(0.04) and p2[0] == pytest.approx(0.5)
    assert math.isnan(p2[1]) and p1[2] == pytest.approx(0.02) and p2[2] == pytest.approx(0.04)
    assert math.isnan(p1[3]) and math.isnan(p2[3])


def test_every_measure_declares_its_minimum_effect_with_a_reason_and_loss_auc_is_in_nats():
    for m in MEASURES.values():
        assert m.direction in (1, -1) and m.reason and m.unit and m.scale
        assert (m.min_effect is None) == (m.name == "correlation")
    assert MEASURES["loss_auc"].scale == "nats" and MEASURES["answer_loss"].scale == "nats"
    assert convergence_measure("classification").name == "loss_auc"
    assert convergence_measure("causal-lm").name == "loss_auc"
    assert convergence_measure("regression").name == "steps_to_90"  # squared error: no AUC
    assert MEASURES["answer_loss"].signed(2.0) == -2.0


def test_the_rule_text_names_every_verdict_it_can_give():
    for v in VERDICTS:
        if v != "not testable":
            assert v in DECISION_RULE
    for kind in KINDS:
        assert kind in DECISION_RULE
