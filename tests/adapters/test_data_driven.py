"""The inits beyond PiSSA: what each puts in A, B and the base, checked against an independent
computation; the calibration module's statistics and errors; rsLoRA and DoRA."""

from __future__ import annotations

import math

import pytest
import torch

from lowrank_lab.adapters import (
    AdapterOptionError,
    CalibrationError,
    activation_statistics,
    calibration_gradients,
    closed_form_trainable,
    initialize,
    inject,
    lowrank_modules,
    merge,
    resolve_targets,
    trainable_parameters,
    unmerge,
)
from lowrank_lab.linalg import truncated_svd
from lowrank_lab.linalg.quant import nf4_roundtrip


def _fns(tiny, ids):
    return [
        lambda m, i=i: tiny.run(m, ids[i : i + 1], grad=True).float().pow(2).mean() for i in range(len(ids))
    ]


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_gaussian_a_is_normal_with_sd_one_over_r():
    from scipy import stats

    r = 8
    fac = initialize("gaussian", torch.zeros(64, 2000), r, generator=0)
    assert torch.count_nonzero(fac.B) == 0
    assert stats.kstest(fac.A.flatten().numpy(), stats.norm(scale=1 / r).cdf).pvalue > 1e-3


def test_orthogonal_factors_are_nonzero_but_their_product_vanishes():
    W = torch.randn(40, 30)
    fac = initialize("orthogonal", W, 6, generator=1)
    assert float(fac.B.norm()) > 0.1 and float(fac.A.norm()) > 0.1
    assert float((fac.B @ fac.A).abs().max()) < 1e-6 * float(fac.B.norm() * fac.A.norm())
    with pytest.raises(AdapterOptionError, match="even rank"):
        initialize("orthogonal", W, 5)


def test_mica_freezes_the_minor_left_singular_vectors_and_trains_a(tiny, ids):
    model = tiny.llama()
    base = tiny.llama()
    inject(model, "mica", rank=3)
    tiny.run(model, ids, grad=True).float().pow(2).mean().backward()
    for name, layer in lowrank_modules(model).items():
        W = base.get_submodule(name).weight.detach().double()
        U = torch.linalg.svd(W, full_matrices=False).U[:, -3:]
        assert torch.allclose((U.T @ layer.B.double()).abs(), torch.eye(3, dtype=torch.float64), atol=1e-4)
        assert layer.B.grad is None and layer.A.grad is not None and float(layer.A.grad.abs().sum()) > 0
    assert torch.equal(tiny.run(model, ids), tiny.run(base, ids))


def _layer_inputs(model, name, ids, mask):
    rows = []
    handle = model.get_submodule(name).register_forward_hook(
        lambda mod, inp, out: rows.append(inp[0].detach()[mask.bool()])
    )
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    handle.remove()
    return torch.cat(rows).double()


def test_eva_is_the_pca_of_the_unmasked_centred_inputs(tiny):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[:, -4:] = 0
    fn = [lambda m: m(input_ids=ids, attention_mask=mask).logits.sum()]
    model, ref = tiny.llama(), tiny.llama()
    r = 3
    inject(model, "eva", rank=r, calibration=fn)
    layers = lowrank_modules(model)
    for name, layer in layers.items():
        X = _layer_inputs(ref, name, ids, mask)  # (32, n): pad tokens dropped
        Vh = torch.linalg.svd(X - X.mean(0), full_matrices=False).Vh[:r]
        assert torch.allclose(
            (layer.A.double() @ Vh.T).abs(), torch.eye(r, dtype=torch.float64), atol=1e-4
        ), name
        assert torch.count_nonzero(layer.B) == 0
    # q, k and v read the same tensor: computed once, identical components.
    q, k = layers["model.layers.0.self_attn.q_proj"], layers["model.layers.0.self_attn.k_proj"]
    assert torch.equal(q.A, k.A)


def test_activation_statistics_name_the_layer_with_nan_inputs(tiny, ids):
    model = tiny.llama()
    with torch.no_grad():
        model.model.layers[1].input_layernorm.weight[0] = float("nan")
    names = resolve_targets(model)
    with pytest.raises(
        CalibrationError,
        match=r"eva calibration: NaN or Inf activations at the input of "
        r"'model.layers.1.self_attn.q_proj'",
    ):
        activation_statistics(model, names, _fns(tiny, ids), method="eva")


@pytest.mark.parametrize("mode", ["ipm", "kpm"])
def test_corda_factors_reconstruct_w_through_the_covariance(tiny, ids, mode):
    base, model = tiny.llama(), tiny.llama()
    r = 3
    report = inject(model, f"corda-{mode}", rank=r, alpha=6, calibration=_fns(tiny, ids))
    stats = activation_statistics(base, resolve_targets(base), _fns(tiny, ids), kind="corda")
    for name, layer in lowrank_modules(model).items():
        W = base.get_submodule(name).weight.detach().double()
        C = stats[name].covariance().double()
        Cd = C + 0.01 * torch.diagonal(C).mean() * torch.eye(C.shape[0])  # δ = 0.01 suffices here
        U, S, Vh = torch.linalg.svd(W @ Cd, full_matrices=False)
        sl = slice(0, r) if mode == "ipm" else slice(S.shape[0] - r, None)
        # s·B·A = U_r S_r (Vh_r C_d⁻¹): the rank-r part of W = U S Vᵀ with V = (Vh C_d⁻¹)ᵀ
        expected = U[:, sl] @ torch.diag(S[sl]) @ Vh[sl] @ torch.linalg.inv(Cd)
        assert _rel(layer.delta_weight(torch.float64), expected) < 1e-3, name
        assert torch.allclose(layer.base.weight.double() + layer.delta_weight(torch.float64), W, atol=1e-4)
    assert report.scaling == 2.0


def test_corda_ipm_and_kpm_keep_the_output(tiny, ids):
    ref = tiny.run(tiny.llama(), ids)
    for mode in ("ipm", "kpm"):
        model = tiny.llama()
        inject(model, f"corda-{mode}", rank=3, calibration=_fns(tiny, ids))
        assert _rel(tiny.run(model, ids), ref) < 1e-5


def test_lora_ga_spans_the_top_gradient_directions_and_keeps_the_output(tiny, ids):
    base, model = tiny.llama(), tiny.llama()
    r = 3
    G = calibration_gradients(base, resolve_targets(base), _fns(tiny, ids), reduce="mean")
    inject(model, "lora-ga", rank=r, calibration=_fns(tiny, ids))
    for name, layer in lowrank_modules(model).items():
        U, S, Vh = torch.linalg.svd(G[name].double(), full_matrices=False)
        m = layer.out_features
        # ArB2r: A = Vh[:r]; B = U[:, r:2r]·S[r:2r]·m^¼/√16 (randomized SVD with q = 4r, niter 4).
        assert torch.allclose(
            (layer.A.double() @ Vh[:r].T).abs(), torch.eye(r, dtype=torch.float64), atol=1e-3
        )
        expected_B = U[:, r : 2 * r] * S[r : 2 * r] * m**0.25 / 4.0
        signs = torch.sign((layer.B.double() * expected_B).sum(0))
        assert _rel(layer.B.double() * signs, expected_B) < 1e-3, name
    assert _rel(tiny.run(model, ids), tiny.run(base, ids)) < 1e-5
    with pytest.raises(AdapterOptionError, match="2\\*rank <= min"):
        initialize("lora-ga", torch.randn(10, 8), 5, grad=torch.randn(10, 8))


def test_lora_one_starts_one_gradient_step_downhill(tiny, ids):
    base, model = tiny.llama(), tiny.llama()
    r, gamma = 3, 128.0
    G = calibration_gradients(base, resolve_targets(base), _fns(tiny, ids), reduce="mean")
    inject(model, "lora-one", rank=r, calibration=_fns(tiny, ids))
    for name, layer in lowrank_modules(model).items():
        F = truncated_svd(-G[name].double(), r)
        expected = F.reconstruct() / (gamma * float(F.core[0]))
        assert _rel(layer.delta_weight(torch.float64), expected) < 1e-4, name
        assert torch.equal(layer.base.weight, base.get_submodule(name).weight)  # base not modified
    loss = lambda m: sum(float(f(m).detach()) for f in _fns(tiny, ids))  # noqa: E731
    assert loss(model) < loss(base)


def test_loftq_base_is_nf4_and_the_adapter_fits_the_quantisation_error():
    torch.manual_seed(0)
    W = torch.randn(96, 64) * 0.05 + torch.randn(96, 4) @ torch.randn(4, 64) * 0.1
    q_err = float((W - nf4_roundtrip(W)).norm())
    errs = []
    for iters in (1, 5):
        fac = initialize("loftq", W, 8, iters=iters)
        errs.append(float((W - fac.base - fac.B @ fac.A).norm()))
        if iters == 1:
            assert torch.equal(fac.base, nf4_roundtrip(W))  # first Q quantises W itself (L = R = 0)
    assert errs[0] < 0.9 * q_err and errs[1] <= errs[0] * 1.001
    # PEFT's LoftQ does not divide by s: at s = 2 its adapter doubles the correction. With one
    # iteration BA is the rank-r truncated SVD P_r(R) of R = W − Q, and ‖R − 2·P_r(R)‖_F = ‖R‖_F
    # exactly (P_r(R) is orthogonal to R − P_r(R)): the doubled adapter undoes all it gained, so the
    # error equals the plain quantisation error, up to rounding, while at s = 1 it is well below it.
    fac = initialize("loftq", W, 8, scaling=2.0)
    assert math.isclose(float((W - fac.base - 2.0 * fac.B @ fac.A).norm()), q_err, rel_tol=1e-4)
    fac = initialize("loftq", W, 8, scaling=1.0)
    assert float((W - fac.base - fac.B @ fac.A).norm()) < 0.9 * q_err
    fac = initialize("loftq", W, 8, scaling=2.0, divide_by_scaling=True)
    assert math.isclose(float((W - fac.base - 2.0 * fac.B @ fac.A).norm()), errs[0], rel_tol=1e-4)


def test_loftq_model_replaces_the_base_and_refuses_save(tiny, ids, tmp_path):
    from lowrank_lab.adapters import AdapterFileError, save_adapter

    model = tiny.llama()
    inject(model, "loftq", rank=4)
    layer = next(iter(lowrank_modules(model).values()))
    assert layer.replaced_base
    with pytest.raises(AdapterFileError, match="replaced"):
        save_adapter(model, tmp_path / "a")


def test_calibration_without_a_gradient_names_the_method(tiny, ids):
    def no_grad_loss(m):
        with torch.no_grad():
            return tiny.run(m, ids).float().pow(2).mean()

    with pytest.raises(CalibrationError, match="lora-ga calibration: loss #0 yields no gradient"):
        inject(tiny.llama(), "lora-ga", rank=2, calibration=no_grad_loss)
    with pytest.raises(
        CalibrationError,
        match="lora-one calibration: the calibration loss does not depend on the target "
        "'model.layers.0.self_attn.k_proj'",
    ):
        inject(
            tiny.llama(),
            "lora-one",
            rank=2,
            calibration=lambda m: m.model.layers[0].self_attn.q_proj.weight.sum(),
        )
    with pytest.raises(CalibrationError, match="eva needs calibration=loss_fn"):
        inject(tiny.llama(), "eva", rank=2)


@pytest.mark.parametrize("method", ["eva", "mica", "corda-ipm", "lora-one"])
def test_rank_above_the_matrix_is_refused(tiny, ids, method):
    model = tiny.llama()
    with pytest.raises(AdapterOptionError, match=r"rank=20 is out of range"):
        inject(model, method, rank=20, calibration=_fns(tiny, ids) if method != "mica" else None)
    assert all(p.requires_grad for p in model.parameters())


def test_rslora_scaling_is_alpha_over_sqrt_r(tiny):
    report = inject(tiny.llama(), "pissa", rank=4, alpha=8, scaling_rule="rslora")
    assert report.scaling == 4.0 and report.scaling_rule == "rslora"
    with pytest.raises(AdapterOptionError, match="scaling must be one of lora, rslora"):
        inject(tiny.llama(), "pissa", rank=4, scaling_rule="sqrt")


@pytest.mark.parametrize("method", ["lora", "pissa", "corda-ipm"])
def test_dora_keeps_the_output_counts_its_magnitude_and_merges(tiny, ids, method):
    ref = tiny.run(tiny.llama(), ids)
    model = tiny.llama()
    cal = _fns(tiny, ids) if method == "corda-ipm" else None
    report = inject(model, method, rank=3, dora=True, calibration=cal)
    assert _rel(tiny.run(model, ids), ref) < 1e-5
    shapes = [(m.shape[0], m.shape[1]) for m in report.modules]
    assert (
        report.trainable == trainable_parameters(model) == closed_form_trainable(method, shapes, 3, dora=True)
    )
    assert report.closed_form - closed_form_trainable(method, shapes, 3) == sum(m for m, _ in shapes)
    with torch.no_grad():
        for layer in lowrank_modules(model).values():
            layer.B.add_(0.1)
            layer.magnitude.mul_(1.1)
    adapted = tiny.run(model, ids)
    before = {n: layer.base.weight.clone() for n, layer in lowrank_modules(model).items()}
    merge(model, unload=False)
    torch.testing.assert_close(
        tiny.run(model, ids), adapted, rtol=1e-4, atol=1e-4 * float(adapted.abs().max())
    )
    unmerge(model)
    for n, layer in lowrank_modules(model).items():
        assert torch.equal(layer.base.weight, before[n])


@pytest.mark.parametrize("method", ["lora-ga", "eva", "corda-ipm"])
def test_calibrating_one_layer_at_a_time_gives_the_same_adapters(tiny, ids, method):
    # One gradient (or covariance) held at a time: each group is calibrated on the model with the
    # earlier groups injected, which computes the same function for these output-preserving inits.
    whole, grouped = tiny.llama(), tiny.llama()
    a = inject(whole, method, rank=3, calibration=_fns(tiny, ids))
    b = inject(grouped, method, rank=3, calibration=_fns(tiny, ids), calibration_group=1)
    assert a.trainable == b.trainable and b.calibration_seconds > 0
    for (name, x), y in zip(lowrank_modules(whole).items(), lowrank_modules(grouped).values(), strict=True):
        scale = float(x.delta_weight(torch.float64).norm()) + float(x.A.norm())
        assert float((x.A - y.A).abs().max()) <= 1e-4 * scale, name
        assert float((x.B - y.B).abs().max()) <= 1e-4 * (float(x.B.norm()) + 1e-12), name


def test_calibration_group_is_refused_where_the_output_changes(tiny, ids):
    with pytest.raises(AdapterOptionError, match="lora-one changes the model's output at init"):
        inject(tiny.llama(), "lora-one", rank=2, calibration=_fns(tiny, ids), calibration_group=1)
    with pytest.raises(AdapterOptionError, match="applies to data-driven inits"):
        inject(tiny.llama(), "pissa", rank=2, calibration_group=1)


@pytest.mark.parametrize("method", ["corda-ipm", "lora-one", "eva"])
def test_data_driven_adapters_export_to_peft_with_rslora_scaling(tiny, ids, tmp_path, method):
    peft = pytest.importorskip("peft")
    from lowrank_lab.adapters import export_peft

    tiny.llama().save_pretrained(tmp_path / "base")
    model = tiny.llama()
    inject(model, method, rank=4, alpha=8, scaling_rule="rslora", calibration=_fns(tiny, ids))
    with torch.no_grad():  # a "trained" adapter
        for layer in lowrank_modules(model).values():
            layer.B.add_(0.05)
    ours = tiny.run(model, ids)
    export_peft(model, tmp_path / "peft", base_model_name_or_path=str(tmp_path / "base"))
    theirs = tiny.run(peft.PeftModel.from_pretrained(tiny.llama(), str(tmp_path / "peft")).eval(), ids)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4 * float(ours.abs().max()))
