"""LoRA-SB: the calibration API, the init it computes, and what that does to the model at step 0."""

from __future__ import annotations

import pytest
import torch

from lowrank_lab.adapters import (
    CalibrationError,
    calibration_gradients,
    inject,
    lowrank_modules,
    resolve_targets,
)
from lowrank_lab.linalg import truncated_svd


def _loss_fns(tiny, ids):
    # One callable per "sample", as LoRA-SB accumulates per-sample gradients.
    return [
        lambda m, i=i: tiny.run(m, ids[i : i + 1], grad=True).float().pow(2).mean() for i in range(len(ids))
    ]


def test_lora_sb_init_is_the_rank_r_svd_of_the_sign_step(tiny, ids):
    r, lr = 3, 1e-3
    base = tiny.make("llama")
    names = resolve_targets(base)
    grads = calibration_gradients(base, names, _loss_fns(tiny, ids))
    model = tiny.make("llama")
    report = inject(model, "lora-sb", rank=r, calibration=_loss_fns(tiny, ids), lr=lr)
    assert report.calibration_seconds > 0
    for name, layer in lowrank_modules(model).items():
        expected = truncated_svd(-lr * torch.sign(grads[name]).double(), r).reconstruct()
        assert torch.allclose(layer.delta_weight(torch.float64), expected, atol=1e-6 * lr * 100)
        assert torch.allclose(layer.B.T @ layer.B, torch.eye(r), atol=1e-5)  # frozen orthonormal factors
        assert torch.allclose(layer.A @ layer.A.T, torch.eye(r), atol=1e-5)
        assert torch.equal(layer.base.weight, base.get_submodule(name).weight)  # base stays W
        assert layer.M.shape == (r, r) and torch.count_nonzero(layer.M) == r  # diag(S_r)/s, non-zero


def test_lora_sb_starts_one_sign_step_downhill(tiny, ids):
    # W + [−η·sign(G)]_r moves against the gradient: the calibration loss goes down at step 0.
    fns = _loss_fns(tiny, ids)
    base = tiny.make("llama")
    before = sum(float(f(base).detach()) for f in fns)
    model = tiny.make("llama")
    inject(model, "lora-sb", rank=4, calibration=fns, lr=1e-3)
    after = sum(float(f(model).detach()) for f in fns)
    assert after < before


def test_single_callable_and_list_give_the_same_sign(tiny, ids):
    model = tiny.make("llama")
    names = resolve_targets(model, "q_proj")
    one = calibration_gradients(model, names, lambda m: tiny.run(m, ids, grad=True).float().pow(2).sum())
    many = calibration_gradients(
        model,
        names,
        [lambda m, i=i: tiny.run(m, ids[i : i + 1], grad=True).float().pow(2).sum() for i in range(2)],
    )
    for n in names:
        assert torch.allclose(one[n], many[n], rtol=1e-4, atol=1e-5 * float(one[n].abs().max()))
    # Nothing else was touched: no .grad left behind, requires_grad restored.
    assert all(p.grad is None for p in model.parameters())


def test_calibration_errors_are_clear(tiny, ids):
    model = tiny.make("llama")
    names = resolve_targets(model, "q_proj")
    with pytest.raises(CalibrationError, match="scalar tensor"):
        calibration_gradients(model, names, lambda m: tiny.run(m, ids, grad=True))
    with pytest.raises(CalibrationError, match="callable"):
        calibration_gradients(model, names, [1, 2])
    with pytest.raises(CalibrationError, match="does not depend on the target"):
        calibration_gradients(model, names, lambda m: m.lm_head.weight.sum())
