"""The invariants every adapter init must keep, on tiny random BERT and Llama models.

Residual inits leave the output unchanged; LoRA/SLoRA (and LoRA-XS to 1e-5) add nothing at init;
NLoRA as released does add something; trainable counts equal the closed form; core-only methods
get gradients only in their core; merge then unmerge gives back the base weights.
"""

from __future__ import annotations

import pytest
import torch

from lowrank_lab.adapters import ADAPTERS, inject, lowrank_modules, merge, trainable_parameters, unmerge

RESIDUAL = ["pissa", "pissa-fast", "milora", "olora", "loldu", "corda-ipm", "corda-kpm", "lora-ga"]
# Relative tolerance on the output change at init, per dtype. float32: the residual base is W − s·BA
# rounded once (≈ 6e-8 relative per entry), amplified by two layers; bf16: rounding of W_res and of
# the bf16 activations themselves (2^-8 ≈ 4e-3 per op; the un-adapted bf16 model is no closer).
TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-2}


def _calibration(tiny, ids):
    return lambda model: tiny.run(model, ids, grad=True).float().pow(2).mean()


def _inject(tiny, model, method, ids, **kw):
    if ADAPTERS[method].needs_calibration:
        kw["calibration"] = _calibration(tiny, ids)
    return inject(model, method, rank=4, **kw)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("method", RESIDUAL)
def test_residual_inits_leave_the_output_unchanged(tiny, ids, family, method, dtype):
    base = tiny.make(family, dtype)
    ref = tiny.run(base, ids)
    model = tiny.make(family, dtype)
    _inject(tiny, model, method, ids)
    for layer in lowrank_modules(model).values():
        assert layer.residual and layer.A.dtype == dtype and layer.base.weight.dtype == dtype
        assert float(layer.delta_weight().detach().norm()) > 0  # something really moved into the adapter
    assert _rel(tiny.run(model, ids), ref) < TOL[dtype]


@pytest.mark.parametrize("method", ["lora", "slora", "gaussian", "eva"])
def test_zero_init_methods_add_exactly_nothing(tiny, ids, family, method):
    model = tiny.make(family)
    ref = tiny.run(tiny.make(family), ids)
    _inject(tiny, model, method, ids)
    for layer in lowrank_modules(model).values():
        assert torch.count_nonzero(layer.delta_weight()) == 0
        assert torch.count_nonzero(layer.A) > 0  # ... while A (and M) are random, not zero
    assert torch.equal(tiny.run(model, ids), ref)


def test_lora_xs_adds_only_its_1e5_core_and_nothing_with_core_std_0(tiny, ids):
    model = tiny.make("llama")
    _inject(tiny, model, "lora-xs", ids)
    for layer in lowrank_modules(model).values():
        W = layer.base.weight.float()
        # ‖U M S Vh‖ <= ‖M‖₂ ‖W‖₂ with M ~ N(0, 1e-5²): tiny but not zero (LoRA-XS's own init).
        assert 0 < float(layer.delta_weight().detach().norm()) < 1e-3 * float(torch.linalg.matrix_norm(W, 2))
    exact = tiny.make("llama")
    _inject(tiny, exact, "lora-xs", ids, core_std=0.0)
    for layer in lowrank_modules(exact).values():
        assert torch.count_nonzero(layer.delta_weight()) == 0
    assert torch.equal(tiny.run(exact, ids), tiny.run(tiny.make("llama"), ids))


@pytest.mark.parametrize("method", ["nlora", "inttune"])
def test_nlora_as_released_changes_the_output_at_init(tiny, ids, family, method):
    base = tiny.make(family)
    model = tiny.make(family)
    _inject(tiny, model, method, ids)
    r = 4
    for name, layer in lowrank_modules(model).items():
        W = base.get_submodule(name).weight.detach().float()
        expected = W[:, :r] @ W[:r, :r] @ W[:r, :]  # s = 1: the raw core block, no pseudo-inverse
        assert torch.allclose(
            layer.delta_weight(), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max())
        )
        assert float(expected.norm()) > 0
        assert torch.equal(layer.base.weight, base.get_submodule(name).weight)  # base unchanged
    assert _rel(tiny.run(model, ids), tiny.run(base, ids)) > 1e-3


@pytest.mark.parametrize("method", list(ADAPTERS))
def test_trainable_count_equals_the_closed_form(tiny, ids, family, method):
    model = tiny.make(family)
    report = _inject(tiny, model, method, ids)
    assert report.trainable == trainable_parameters(model) == report.closed_form
    assert report.trainable == sum(m.trainable for m in report.modules)
    n_targets = 2 * (6 if family == "bert" else 7)
    assert len(report.modules) == n_targets
    only = {p for n, p in model.named_parameters() if p.requires_grad}
    adapter_params = {
        p for layer in lowrank_modules(model).values() for p in (layer.A, layer.B, layer.M) if p is not None
    }
    if method == "full":
        assert only == {model.get_submodule(m.module).weight for m in report.modules}
    else:
        assert only <= adapter_params  # nothing outside the adapters trains


@pytest.mark.parametrize("method", ["inttune", "lora-xs", "lora-sb", "loldu"])
def test_core_only_methods_get_gradients_only_in_their_core(tiny, ids, family, method):
    model = tiny.make(family)
    _inject(tiny, model, method, ids)
    tiny.run(model, ids, grad=True).float().pow(2).mean().backward()
    for name, p in model.named_parameters():
        if name.endswith(".M"):
            assert p.requires_grad and p.grad is not None and float(p.grad.abs().sum()) > 0, name
        else:
            assert p.grad is None, f"{name} received a gradient"
    core = {layer.M.ndim for layer in lowrank_modules(model).values()}
    assert core == ({1} if method == "loldu" else {2})


@pytest.mark.parametrize("method", ["lora", "pissa", "slora", "nlora", "loldu"])
def test_merge_then_unmerge_gives_back_the_base_weight(tiny, ids, family, method):
    model = tiny.make(family)
    _inject(tiny, model, method, ids)
    layers = lowrank_modules(model)
    with torch.no_grad():  # a "trained" adapter: every part non-zero, so the merge changes W
        for layer in layers.values():
            for p in (layer.A, layer.B, layer.M):
                if p is not None:
                    p.add_(0.1 * torch.randn_like(p))
    before = {n: layer.base.weight.clone() for n, layer in layers.items()}
    adapted = tiny.run(model, ids)
    merge(model, unload=False)
    assert torch.allclose(tiny.run(model, ids), adapted, rtol=1e-4, atol=1e-4 * float(adapted.abs().max()))
    for n, layer in layers.items():
        assert not torch.equal(layer.base.weight, before[n])
    unmerge(model)
    for n, layer in layers.items():
        W0 = before[n]
        # float32 roundoff of (W + ΔW) − ΔW: a couple of ulps of the larger of the two.
        tol = 4 * torch.finfo(W0.dtype).eps * (W0.abs().max() + layer.delta_weight().abs().max())
        assert float((layer.base.weight - W0).abs().max()) <= float(tol), n
    assert torch.allclose(tiny.run(model, ids), adapted, rtol=1e-4, atol=1e-4 * float(adapted.abs().max()))


def test_merge_unloads_to_plain_modules_with_the_same_output(tiny, ids):
    model = tiny.make("llama")
    inject(model, "pissa", rank=4)
    with torch.no_grad():
        for layer in lowrank_modules(model).values():
            layer.A.add_(0.05 * torch.randn_like(layer.A))
    adapted = tiny.run(model, ids)
    merge(model)
    assert not lowrank_modules(model)
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert torch.allclose(tiny.run(model, ids), adapted, rtol=1e-4, atol=1e-4 * float(adapted.abs().max()))
    with pytest.raises(ValueError, match="unload=False"):
        unmerge(model)


@pytest.mark.parametrize("method", ["pissa-fast", "loldu"])
def test_residual_init_replaces_the_weights_data_not_the_parameter(tiny, ids, method):
    # The residual W − s·BA is written as new data of the same Parameter (not in place: an in-place
    # write into a memory-mapped safetensors weight faults every page, layer.py): the Parameter
    # object, hence any module sharing it, sees the residual, while a tensor that aliased the old
    # storage keeps the original weight.
    model = tiny.make("llama")
    q = model.model.layers[0].self_attn.q_proj
    param, alias = q.weight, q.weight.detach()
    original = alias.clone()
    _inject(tiny, model, method, ids)
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.base.weight is param
    assert torch.equal(alias, original)
    assert not torch.equal(param, original)
    torch.testing.assert_close(param + layer.delta_weight().detach(), original, rtol=0, atol=1e-6)
