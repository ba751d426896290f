"""Seed-paired statistics of the claims table, checked against scipy.stats."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from lowrank_lab.training.stats import holm, paired, tost_p, verdict


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


def test_one_seed_decides_nothing_and_zero_spread_is_exact():
    one = paired([0.9], [0.8])
    assert one.n == 1 and one.ci_low == -math.inf and one.p_two_sided == 1.0
    assert verdict(one, 0.01, one.p_two_sided) == "inconclusive"
    same = paired([0.9, 0.8, 0.7], [0.85, 0.75, 0.65])
    assert same.sd == pytest.approx(0.0, abs=1e-12) or same.ci_low == pytest.approx(same.ci_high)
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


def _p(mean, half, n=5, p=0.001):
    from lowrank_lab.training.stats import Paired

    return Paired(n, mean, 0.01, mean - half, mean + half, p)


@pytest.mark.parametrize(
    ("mean", "half", "p_holm", "p_tost", "want"),
    [
        (0.03, 0.01, 0.001, 1.0, "confirmed"),  # interval above 0, effect >= delta
        (0.005, 0.004, 0.001, 0.5, "inconclusive"),  # above 0 but smaller than delta, TOST not shown
        (0.005, 0.004, 0.001, 0.001, "equivalent"),  # inside ±delta: does not matter
        (-0.03, 0.01, 0.001, 1.0, "contradicted"),  # below 0
        (-0.004, 0.003, 0.001, 0.001, "equivalent"),  # below 0 but inside ±delta
        (0.0, 0.05, 0.9, 0.9, "inconclusive"),  # wide interval
        (0.03, 0.01, 0.2, 1.0, "inconclusive"),  # Holm takes the confirmation away
        (-0.03, 0.01, 0.2, 1.0, "inconclusive"),  # ... and the contradiction
    ],
)
def test_every_verdict_is_reachable_and_holm_gates_it(mean, half, p_holm, p_tost, want):
    assert verdict(_p(mean, half), 0.01, p_holm, p_tost) == want
