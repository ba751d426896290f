"""The paired init benchmark's interval rule (issue 32), on constructed timings: a target is met only
when the sign-test interval's upper bound is at most the target; too few pairs is "not established",
never a fallback to the median; the benchmark refuses fewer than 7 pairs."""

from __future__ import annotations

import pytest

from lowrank_lab.utils.timing import MIN_PAIRS, median_ci, ratio_verdict


def test_seven_pairs_is_the_minimum_and_six_has_no_interval_narrower_than_the_range():
    assert MIN_PAIRS == 7
    xs = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
    assert median_ci(xs) == (0.8, 0.5, 0.99)  # n = 7: k = 1, P(B < 1) = 1/128 <= 0.025 < P(B < 2)


def test_met_only_when_the_upper_bound_is_at_most_the_target():
    v = ratio_verdict([0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0])
    assert (v.n, v.status, v.met) == (7, "met", True)
    assert v.high == pytest.approx(1.0) and v.low == pytest.approx(0.5) and v.median == pytest.approx(0.8)
    # the median well below 1 but one pair above: the upper bound decides, not the median
    v = ratio_verdict([0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.235])
    assert v.median == pytest.approx(0.8) and v.high == pytest.approx(1.235)
    assert (v.status, v.met) == ("not established", False)


def test_missed_when_the_lower_bound_is_above_the_target():
    v = ratio_verdict([1.01, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6])
    assert (v.status, v.met) == ("missed", False)
    assert v.low == pytest.approx(1.01)


@pytest.mark.parametrize("n", [0, 1, 5, 6])
def test_too_few_pairs_is_not_established_even_with_every_ratio_far_below_target(n):
    v = ratio_verdict([0.1] * n)
    assert (v.n, v.status, v.met) == (n, "not established", False)
    assert v.low != v.low and v.high != v.high  # NaN: no interval is claimed


def test_more_pairs_narrow_the_interval_to_inner_order_statistics():
    xs = [0.5 + 0.01 * i for i in range(21)] + [5.0]  # 22 pairs, one outlier above the target
    v = ratio_verdict(xs, target=1.0)
    # n = 22: P(B <= 5) = 0.0085, P(B <= 6) = 0.0262 > 0.025, so k = 6: [x_(6), x_(17)]
    assert v.low == pytest.approx(0.55) and v.high == pytest.approx(0.66)
    assert v.status == "met"


def test_benchmark_summary_judges_each_method_by_the_rule(benchmark_script):
    bench = benchmark_script("adapter_init")

    def row(method, i, ratio, ours_fw=0, peft_fw=0):
        return {
            "method": method,
            "pair": i,
            "ours_seconds": ratio,
            "peft_seconds": 1.0,
            "ratio": ratio,
            "ours_forwards": ours_fw,
            "peft_forwards": peft_fw,
            "ours_first": i % 2 == 0,
            "load": 1.0,
        }

    rows = [row("pissa", i, 0.5) for i in range(7)]
    rows += [row("olora", i, b) for i, b in enumerate([0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 1.2])]
    rows += [row("eva", i, 0.02, 32, 640) for i in range(3)]
    summary = bench.paired_summary(rows, n_batches=32, min_pairs=7).set_index("method")
    assert summary.loc["pissa", "verdict"] == "met"
    assert summary.loc["olora", "verdict"] == "not established"  # median 0.98, upper bound 1.2
    assert summary.loc["olora", "ci95_high"] == pytest.approx(1.2)
    assert summary.loc["eva", "verdict"] == "not established"  # 3 pairs: no interval, whatever the median
    assert summary.loc["eva", "peft_passes"] == pytest.approx(20.0)
    assert summary.loc["eva", "pairs"] == 3


def test_benchmark_refuses_fewer_than_seven_pairs(benchmark_script, capsys):
    bench = benchmark_script("adapter_init")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--paired", "--pairs", "6"])
    assert exc.value.code == 2
    assert "--pairs: must be >= 7" in capsys.readouterr().err
