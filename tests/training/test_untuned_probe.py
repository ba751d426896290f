"""The converged linear probe of the untuned encoder (training/untuned.linear_probe, issue 30): the
classification gate's strongest untuned reference."""

from __future__ import annotations

import torch
from torch import nn

from lowrank_lab.training.untuned import PROBE_C, linear_probe, needs_untuned


class _Enc:
    """An Encoder stand-in: examples are (vector, label); collate stacks the vectors."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def length(self, i: int) -> int:
        return int(i) % 7  # any order: the probe must put vectors back where they belong

    def collate(self, idx):
        return {"input_ids": self.x[list(idx)], "target": self.y[list(idx)]}

    def feature(self, i: int):
        return type("F", (), {"target": int(self.y[int(i)])})()


class _Pooled(nn.Module):
    def pool(self, input_ids, **_):
        return input_ids


class _Data:
    def __init__(self, train, val, dev) -> None:
        self.train, self.val, self.dev = train, val, dev


def _task(n: int, seed: int, noise: float):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + noise * torch.randn(n, generator=g) > 0).long()
    return _Enc(x, y)


def test_probe_on_separable_features_scores_near_one_and_records_its_choice():
    data = _Data(_task(400, 0, 0.05), _task(200, 1, 0.05), _task(300, 2, 0.05))
    out = linear_probe(_Pooled(), data, "accuracy", list(range(300)))
    assert out["metric"] >= 0.95 and out["probe_val_metric"] >= 0.95
    assert out["probe_C"] in PROBE_C and out["probe_class_weight"] in ("none", "balanced")
    assert out["probe_C_at_edge"] == (out["probe_C"] in (min(PROBE_C), max(PROBE_C)))
    assert (out["train_n"], out["val_n"]) == (400, 200)


def test_probe_on_label_noise_is_near_chance():
    g = torch.Generator().manual_seed(3)
    sizes = (400, 200, 600)
    enc = [_Enc(torch.randn(n, 6, generator=g), torch.randint(0, 2, (n,), generator=g)) for n in sizes]
    out = linear_probe(_Pooled(), _Data(*enc), "matthews", list(range(600)))
    assert abs(out["metric"]) < 0.15


def test_every_task_kind_has_an_untuned_reference():
    assert all(needs_untuned(k) for k in ("classification", "regression", "causal-lm"))

