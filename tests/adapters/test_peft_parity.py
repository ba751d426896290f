"""PEFT 0.21 parity: both libraries get the same weights, calibration batches and seed; the initial
adapters must agree.

What is compared, per method:

* deterministic in both (mica, corda-ipm/kpm): the factors themselves, column by column up to sign,
  and the residual base — float32 tolerances;
* PEFT draws from an unseeded randomized SVD (lora-ga: ``torch.svd_lowrank``) or runs an iterative
  incremental PCA until a cosine threshold (eva): the *subspaces* (principal angles) and what the
  adapter adds, within a tolerance stated at the assertion;
* random inits drawn from PEFT's global RNG in an order tied to its layer construction (gaussian,
  orthogonal): what is deterministic — B = 0 or B·A = 0, the shapes, the output at init — and the
  distribution of A;
* rsLoRA and DoRA: the same factors put into both, the same output.

LoftQ is not compared here: PEFT 0.21 quantises through bitsandbytes on CUDA only.
"""

from __future__ import annotations

import math

import pytest
import torch

from lowrank_lab.adapters import inject, lowrank_modules

peft = pytest.importorskip("peft")
from peft import EvaConfig, LoraConfig, LoraGAConfig, get_peft_model, initialize_lora_eva_weights  # noqa: E402
from peft.tuners.lora.config import CordaConfig  # noqa: E402
from peft.tuners.lora.corda import preprocess_corda  # noqa: E402
from peft.tuners.lora.loraga import preprocess_loraga  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R = 4


def _batches(n: int = 6, length: int = 12, pad: int = 0, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 64, (1, length), generator=g)
        mask = torch.ones_like(ids)
        if pad:
            mask[:, -pad:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _loss_fns(batches):
    # One callable per batch: the causal LM loss of the batch (labels = inputs).
    def loss(model, b):
        return model(**b, labels=b["input_ids"]).loss

    return [lambda m, b=b: loss(m, b) for b in batches]


def _peft_layers(pm):
    out = {}
    for name, module in pm.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            out[name.removeprefix("base_model.model.")] = module
    return out


def _cos_angles(A1: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the row spaces of two (r, n) matrices."""
    Q1 = torch.linalg.qr(A1.double().T).Q
    Q2 = torch.linalg.qr(A2.double().T).Q
    return torch.linalg.svdvals(Q1.T @ Q2)


def _same_columns_up_to_sign(X: torch.Tensor, Y: torch.Tensor, rtol: float) -> None:
    X, Y = X.double(), Y.double()
    signs = torch.sign((X * Y).sum(0))
    torch.testing.assert_close(X * signs, Y, rtol=rtol, atol=rtol * float(Y.abs().max()))


def test_mica_factors_match_peft_exactly_up_to_sign(tiny):
    ours, theirs = (
        tiny.llama(),
        get_peft_model(
            tiny.llama(), LoraConfig(r=R, lora_alpha=R, target_modules=TARGETS, init_lora_weights="mica")
        ),
    )
    inject(ours, "mica", rank=R, targets=TARGETS)
    peft_layers = _peft_layers(theirs)
    for name, layer in lowrank_modules(ours).items():
        p = peft_layers[name]
        assert torch.count_nonzero(layer.A) == 0 and torch.count_nonzero(p.lora_A["default"].weight) == 0
        _same_columns_up_to_sign(layer.B, p.lora_B["default"].weight, rtol=1e-5)
        # PEFT freezes B and trains A, as we do.
        assert not p.lora_B["default"].weight.requires_grad and p.lora_A["default"].weight.requires_grad
        assert not layer.B.requires_grad and layer.A.requires_grad


@pytest.mark.parametrize("mode", ["ipm", "kpm"])
def test_corda_factors_and_residual_match_peft(tiny, mode):
    # PEFT's CorDA hook assumes batch size 1 and keeps pad tokens: unpadded single sequences here.
    batches = _batches()
    theirs_base = tiny.llama()
    cfg = LoraConfig(
        r=R,
        lora_alpha=2 * R,  # s = 2, so the division by s is checked too
        target_modules=TARGETS,
        init_lora_weights="corda",
        corda_config=CordaConfig(corda_method=mode),
    )

    @torch.no_grad()
    def run_model():
        for b in batches:
            theirs_base(**b)

    preprocess_corda(theirs_base, cfg, run_model=run_model)
    theirs = get_peft_model(theirs_base, cfg)
    ours = tiny.llama()
    inject(ours, f"corda-{mode}", rank=R, alpha=2 * R, targets=TARGETS, calibration=_loss_fns(batches))
    peft_layers = _peft_layers(theirs)
    for name, layer in lowrank_modules(ours).items():
        p = peft_layers[name]
        # Same float32 arithmetic (damping, inverse, SVD); the covariance sums differ in order only.
        _same_columns_up_to_sign(layer.B, p.lora_B["default"].weight, rtol=2e-3)
        _same_columns_up_to_sign(layer.A.T, p.lora_A["default"].weight.T, rtol=2e-3)
        W = p.get_base_layer().weight
        torch.testing.assert_close(layer.base.weight, W, rtol=0, atol=1e-4 * float(W.abs().max()))


def test_eva_components_match_peft_pca_on_one_batch(tiny):
    # PEFT's EVA runs an incremental PCA that keeps only k = round(rho·r) components after each
    # batch (randomized, svd_lowrank q = 2k, niter 4): streamed over many small batches it drifts
    # from the PCA of all tokens (measured here: first-component cosine 0.94 over eight 16-token
    # batches of this tiny model). On one batch holding every token it is one randomized PCA of that
    # batch, which our exact PCA of the same tokens (pad tokens masked in both) must reproduce.
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 64, (8, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[:, -3:] = 0
    batches = [{"input_ids": ids, "attention_mask": mask}]
    peft_model = get_peft_model(
        tiny.llama(),
        LoraConfig(
            r=R, lora_alpha=R, target_modules=TARGETS, init_lora_weights="eva", eva_config=EvaConfig(rho=1.0)
        ),
        low_cpu_mem_usage=True,
    )
    initialize_lora_eva_weights(peft_model, batches, show_progress_bar=False)
    ours = tiny.llama()
    inject(ours, "eva", rank=R, targets=TARGETS, calibration=_loss_fns(batches))
    peft_layers = _peft_layers(peft_model)
    for name, layer in lowrank_modules(ours).items():
        pa = peft_layers[name].lora_A["default"].weight.detach().double()
        assert torch.count_nonzero(layer.B) == 0
        assert torch.count_nonzero(peft_layers[name].lora_B["default"].weight) == 0
        a = layer.A.detach().double()
        cos = (a * pa).sum(1).abs()  # component by component, both unit rows
        # The two leading components to 1e-2 (EVA's own convergence threshold τ = 0.99); the
        # trailing ones to 0.05, where the randomized sketch of 2k columns meets close eigenvalues.
        assert float(cos[:2].min()) > 0.99 and float(cos.min()) > 0.95, (name, cos)


def test_lora_ga_matches_peft_subspaces_and_keeps_the_output(tiny, ids):
    batches = _batches()
    cfg = LoraConfig(
        r=R, lora_alpha=R, target_modules=TARGETS, init_lora_weights="lora_ga", lora_ga_config=LoraGAConfig()
    )
    theirs_base = tiny.llama()

    def train_step():
        for b in batches:
            theirs_base(**b, labels=b["input_ids"]).loss.backward()

    preprocess_loraga(theirs_base, cfg, train_step)
    theirs = get_peft_model(theirs_base, cfg)
    ours = tiny.llama()
    inject(ours, "lora-ga", rank=R, targets=TARGETS, calibration=_loss_fns(batches))
    peft_layers = _peft_layers(theirs)
    for name, layer in lowrank_modules(ours).items():
        p = peft_layers[name]
        pa, pb = p.lora_A["default"].weight, p.lora_B["default"].weight
        # Both are randomized SVDs (PEFT's unseeded) of the same mean gradient with q = 4r, niter 4:
        # the subspaces agree to 1e-3 in cosine, the norms of B (singular values × stable scale) to 1%.
        assert float(_cos_angles(layer.A, pa).min()) > 0.999, name
        assert float(_cos_angles(layer.B.T, pb.T).min()) > 0.999, name
        assert math.isclose(float(layer.B.norm()), float(pb.norm()), rel_tol=1e-2)
    ref = tiny.run(tiny.llama(), ids)
    torch.testing.assert_close(tiny.run(ours, ids), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    torch.testing.assert_close(tiny.run(theirs, ids), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("method", ["gaussian", "orthogonal"])
def test_random_inits_agree_with_peft_on_what_is_deterministic(tiny, ids, method):
    torch.manual_seed(0)
    theirs = get_peft_model(
        tiny.llama(), LoraConfig(r=8, lora_alpha=8, target_modules=TARGETS, init_lora_weights=method)
    )
    ours = tiny.llama()
    inject(ours, method, rank=8, targets=TARGETS, generator=0)
    ref = tiny.run(tiny.llama(), ids)
    for model in (ours, theirs):
        torch.testing.assert_close(tiny.run(model, ids), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    peft_layers = _peft_layers(theirs)
    ours_A = torch.cat([layer.A.flatten() for layer in lowrank_modules(ours).values()])
    theirs_A = torch.cat([p.lora_A["default"].weight.flatten() for p in peft_layers.values()])
    if method == "gaussian":
        for layer in lowrank_modules(ours).values():
            assert torch.count_nonzero(layer.B) == 0
        # Both A ~ N(0, 1/r²): two-sample Kolmogorov–Smirnov test of the pooled entries.
        from scipy import stats

        assert stats.ks_2samp(ours_A.detach().numpy(), theirs_A.detach().numpy()).pvalue > 1e-3
        assert math.isclose(float(ours_A.std()), 1 / 8, rel_tol=0.05)
    else:
        for name, layer in lowrank_modules(ours).items():
            p = peft_layers[name]
            for A, B in ((layer.A, layer.B), (p.lora_A["default"].weight, p.lora_B["default"].weight)):
                assert float((B @ A).abs().max()) < 1e-6 * float(B.norm() * A.norm())
                assert float(B.norm()) > 0 and float(A.norm()) > 0
        # Same distribution of A's entries (Gaussian times an orthogonal matrix, / 10).
        assert math.isclose(float(ours_A.std()), float(theirs_A.std()), rel_tol=0.1)


def test_rslora_and_dora_outputs_match_peft_with_the_same_factors(tiny, ids):
    theirs = get_peft_model(
        tiny.llama(),
        LoraConfig(r=R, lora_alpha=16, target_modules=TARGETS, use_rslora=True, use_dora=True),
    )
    ours = tiny.llama()
    report = inject(ours, "lora", rank=R, alpha=16, targets=TARGETS, scaling_rule="rslora", dora=True)
    assert report.scaling == 16 / math.sqrt(R)
    peft_layers = _peft_layers(theirs)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, layer in lowrank_modules(ours).items():
            p = peft_layers[name]
            assert p.scaling["default"] == layer.scaling
            # DoRA's magnitude at init: the row norms of W (+ s·B·A = 0 here), in both.
            mag = p.lora_magnitude_vector["default"].weight
            torch.testing.assert_close(layer.magnitude, mag, rtol=1e-6, atol=1e-6)
            # A "trained" state, identical in both.
            layer.B.copy_(0.1 * torch.randn(layer.B.shape, generator=g))
            layer.magnitude.mul_(1 + 0.1 * torch.rand(layer.magnitude.shape, generator=g))
            p.lora_A["default"].weight.copy_(layer.A)
            p.lora_B["default"].weight.copy_(layer.B)
            mag.copy_(layer.magnitude)
    out, ref = tiny.run(ours, ids), tiny.run(theirs, ids)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
