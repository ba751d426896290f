"""Metrics against hand-computed values and scipy's reference implementations."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank_lab.training.metrics import accuracy, average_ranks, matthews_corrcoef, pearson, spearman


def test_accuracy():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5


def test_matthews_binary_by_hand():
    # tp=2, tn=1, fp=1, fn=1: (2·1 − 1·1) / sqrt(3·3·2·2) = 1/6
    pred, true = [1, 1, 1, 0, 0], [1, 1, 0, 1, 0]
    assert matthews_corrcoef(pred, true) == pytest.approx(1 / 6)


def test_matthews_constant_prediction_is_zero():
    assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0
    assert matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 0, 1], [0, 1, 1, 0]) == pytest.approx(-1.0)


def test_average_ranks_ties():
    assert average_ranks([10.0, 20.0, 10.0, 30.0]).tolist() == [1.5, 3.0, 1.5, 4.0]


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=3, max_size=40))
def test_spearman_matches_scipy_with_ties(pairs):
    scipy_stats = pytest.importorskip("scipy.stats")
    x = [float(a) for a, _ in pairs]
    y = [float(b) for _, b in pairs]
    ref = scipy_stats.spearmanr(x, y).statistic
    ours = spearman(x, y)
    if math.isnan(ref):
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx(ref, abs=1e-12)


def test_spearman_constant_is_nan_and_monotone_is_one():
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert spearman(torch.tensor([0.1, 0.5, 0.7]), torch.tensor([1.0, 8.0, 27.0])) == pytest.approx(1.0)
    assert pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0)


def test_matthews_matches_sklearn_multiclass():
    skm = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    p, t = torch.randint(0, 3, (50,), generator=g), torch.randint(0, 3, (50,), generator=g)
    assert matthews_corrcoef(p, t) == pytest.approx(skm.matthews_corrcoef(t.numpy(), p.numpy()))


def test_length_mismatch_and_empty():
    with pytest.raises(ValueError, match=r"predictions \(2\) and targets \(3\) differ"):
        accuracy([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="no examples"):
        spearman([], [])
