"""Evaluation metrics of the fine-tuning tasks, written on plain tensors (no scikit-learn/scipy).

* ``accuracy``: fraction of exact label matches (GLUE SST-2, RTE).
* ``matthews``: Matthews correlation coefficient (CoLA's GLUE metric; Matthews 1975), in the
  multi-class form of Gorodkin (2004) that scikit-learn's ``matthews_corrcoef`` also uses; 0 when
  a marginal is constant (scikit-learn's convention), so a model predicting one class scores 0.
* ``spearman``: Spearman rank correlation (STS-B's GLUE metric) = Pearson correlation of the
  ranks, ties given their average rank (as ``scipy.stats.spearmanr``); NaN when either side is
  constant (as scipy), since no correlation is defined.
* ``answer_loss``: token-weighted mean cross-entropy (nats/token) over the answer tokens of
  held-out GSM8K examples, computed in :mod:`lowrank_lab.training.loop` from summed losses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def _as_1d(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t


def _check_pair(pred, target) -> tuple[torch.Tensor, torch.Tensor]:
    p, t = _as_1d(pred, "predictions"), _as_1d(target, "targets")
    if p.numel() != t.numel():
        raise ValueError(f"predictions ({p.numel()}) and targets ({t.numel()}) differ in length")
    if p.numel() == 0:
        raise ValueError("no examples to score")
    return p, t


def accuracy(pred, target) -> float:
    """Fraction of ``pred == target`` (class ids)."""
    p, t = _check_pair(pred, target)
    return float((p.long() == t.long()).double().mean())


def matthews_corrcoef(pred, target) -> float:
    """Matthews correlation of class ids, multi-class form (Gorodkin 2004).

    ``(c·s − Σ_k p_k·t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²))`` with ``c`` correct predictions,
    ``s`` examples, ``p_k``/``t_k`` predicted/true counts of class ``k``; 0 when the denominator is 0.
    """
    p, t = _check_pair(pred, target)
    p, t = p.long(), t.long()
    k = int(max(p.max(), t.max())) + 1
    pc = torch.bincount(p, minlength=k).double()
    tc = torch.bincount(t, minlength=k).double()
    s = float(p.numel())
    c = float((p == t).sum())
    cov_pt = c * s - float(pc @ tc)
    cov_pp = s * s - float(pc @ pc)
    cov_tt = s * s - float(tc @ tc)
    if cov_pp == 0.0 or cov_tt == 0.0:
        return 0.0
    return cov_pt / math.sqrt(cov_pp * cov_tt)


def average_ranks(x) -> torch.Tensor:
    """1-based ranks of ``x`` with ties sharing their average rank (``scipy.stats.rankdata``)."""
    v = _as_1d(x, "values").double()
    order = torch.argsort(v, stable=True)
    sorted_v = v[order]
    n = v.numel()
    ranks_sorted = torch.empty(n, dtype=torch.float64)
    # Group equal values: starts of runs in the sorted order.
    new_run = torch.ones(n, dtype=torch.bool)
    new_run[1:] = sorted_v[1:] != sorted_v[:-1]
    run_id = torch.cumsum(new_run.long(), 0) - 1
    starts = torch.nonzero(new_run).flatten()
    ends = torch.cat([starts[1:], torch.tensor([n])])
    avg = (starts + ends - 1).double() / 2.0 + 1.0  # mean of positions start..end-1, 1-based
    ranks_sorted = avg[run_id]
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = ranks_sorted
    return ranks


def pearson(x, y) -> float:
    """Pearson correlation; NaN when either input is constant."""
    a, b = _check_pair(x, y)
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    if den == 0.0:
        return float("nan")
    return float(a @ b) / den


def spearman(pred, target) -> float:
    """Spearman rank correlation with average ranks for ties; NaN when a side is constant."""
    p, t = _check_pair(pred, target)
    return pearson(average_ranks(p), average_ranks(t))


#: Metric name -> function(predictions, targets) for the classification/regression tasks.
METRICS: dict[str, Callable[..., float]] = {
    "accuracy": accuracy,
    "matthews": matthews_corrcoef,
    "spearman": spearman,
}

#: Label printed in tables and figures.
METRIC_LABELS = {
    "accuracy": "accuracy",
    "matthews": "Matthews corr.",
    "spearman": "Spearman corr.",
    "answer_loss": "answer loss (nats/token)",
    "exact_match": "exact match of the final number (greedy generation)",
}
