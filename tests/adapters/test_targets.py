"""Target selection by canonical names, raw HF suffixes and "all-linear"; the registry's front door."""

from __future__ import annotations

import pytest
import torch

from lowrank_lab.adapters import (
    ADAPTERS,
    AdapterOptionError,
    CalibrationError,
    TargetError,
    UnknownAdapterError,
    closed_form_trainable,
    family_suffixes,
    get_adapter,
    inject,
    resolve_targets,
)


def test_default_targets_are_the_canonical_modules_of_the_family(tiny):
    llama = resolve_targets(tiny.llama())
    assert len(llama) == 14 and llama[0] == "model.layers.0.self_attn.q_proj"
    assert llama[-1] == "model.layers.1.mlp.down_proj"
    bert = resolve_targets(tiny.bert())
    assert len(bert) == 12
    assert set(family_suffixes("bert")) == {
        "query",
        "key",
        "value",
        "attention-output",
        "intermediate",
        "output",
    }


def test_output_and_attention_output_are_told_apart(tiny):
    model = tiny.bert()
    assert resolve_targets(model, "output") == [
        "encoder.layer.0.output.dense",
        "encoder.layer.1.output.dense",
    ]
    assert resolve_targets(model, ["attention-output"]) == [
        "encoder.layer.0.attention.output.dense",
        "encoder.layer.1.attention.output.dense",
    ]
    # A raw suffix means what it says: "output.dense" matches both.
    assert len(resolve_targets(model, "output.dense")) == 4


def test_canonical_and_raw_names_mix(tiny):
    names = resolve_targets(tiny.llama(), "q_proj, v_proj,mlp.down_proj")
    assert [n.rsplit(".", 1)[-1] for n in names] == ["q_proj", "v_proj", "down_proj"] * 2
    assert resolve_targets(tiny.llama(), "model.layers.1.self_attn.k_proj") == [
        "model.layers.1.self_attn.k_proj"
    ]


def test_all_linear_covers_the_blocks_but_not_the_heads(tiny):
    llama = tiny.llama()
    names = resolve_targets(llama, "all-linear")
    assert len(names) == 14 and "lm_head" not in names
    gpt2 = resolve_targets(tiny.gpt2())  # gpt2 canonical names are its four Conv1D suffixes
    assert len(gpt2) == 8 and gpt2[0] == "h.0.attn.c_attn"


def test_unknown_target_lists_what_would_work(tiny):
    with pytest.raises(
        TargetError, match=r"'qproj' matches no .*q_proj, k_proj.*model.layers.0.self_attn.q_proj"
    ):
        resolve_targets(tiny.llama(), "qproj")
    with pytest.raises(TargetError, match="empty"):
        resolve_targets(tiny.llama(), " , ")


def test_injecting_twice_is_refused(tiny):
    model = tiny.llama()
    inject(model, "lora", rank=2, targets="q_proj")
    with pytest.raises(TargetError, match="already carries adapters"):
        inject(model, "pissa", rank=2)


def test_inject_freezes_everything_else_and_reports_per_module(tiny):
    model = tiny.llama()
    report = inject(model, "pissa", rank=2, targets="q_proj,v_proj")
    assert not model.lm_head.weight.requires_grad and not model.model.embed_tokens.weight.requires_grad
    frame = report.to_frame()
    assert list(frame.columns) == ["method", "rank", "module", "out", "in", "init_seconds", "trainable"]
    assert len(frame) == 4 and (frame.init_seconds > 0).all()
    assert (
        frame.trainable.sum() == report.trainable == 2 * 2 * ((32 + 32) + (16 + 32))
    )  # layers · r · (q + v)
    assert "pissa r=2" in str(report)


def test_unknown_method_and_option_errors_help():
    with pytest.raises(UnknownAdapterError, match="Did you mean pissa"):
        get_adapter("pisa")
    with pytest.raises(AdapterOptionError, match=r"does not take option\(s\) niter.*n_iter=4"):
        get_adapter("pissa-fast").check_options({"niter": 2})


def test_bad_rank_alpha_and_calibration_are_refused(tiny):
    with pytest.raises(AdapterOptionError, match="rank must be a positive integer"):
        inject(tiny.llama(), "lora", rank=0)
    with pytest.raises(AdapterOptionError, match="alpha must be non-zero"):
        inject(tiny.llama(), "lora", rank=2, alpha=0)
    with pytest.raises(CalibrationError, match="only used by"):
        inject(tiny.llama(), "pissa", rank=2, calibration=lambda m: torch.zeros(()))
    with pytest.raises(CalibrationError, match="calibration=loss_fn"):
        inject(tiny.llama(), "lora-sb", rank=2)
    model = tiny.llama()
    with pytest.raises(
        AdapterOptionError, match=r"model.layers.0.self_attn.k_proj' \(16x32\): rank=20 is out"
    ):
        inject(model, "pissa", rank=20)
    # Refused before anything changed: nothing wrapped, nothing frozen.
    assert all(p.requires_grad for p in model.parameters())


def test_registry_rows_are_complete():
    assert list(ADAPTERS) == [
        "lora", "pissa", "pissa-fast", "milora", "olora", "lora-xs", "lora-sb", "slora",
        "nlora", "nlora-pinv", "nlora-sketch", "nlora-pinv-additive", "nlora-sketch-additive", "inttune",
        "loldu", "full",
        "gaussian", "orthogonal", "mica", "eva", "corda-ipm", "corda-kpm", "lora-ga", "lora-one", "loftq",
        "astra", "nora", "kasa", "lora-null", "init-ab",
    ]  # fmt: skip
    from lowrank_lab.linalg import FACTORIZATIONS

    for m in ADAPTERS.values():
        assert m.paper and m.summary and m.output_at_init and m.closed_form
        assert m.factorization is None or m.factorization in FACTORIZATIONS
    residual = {m.name for m in ADAPTERS.values() if m.residual}
    # issue 15: the textbook Nyström inits are residual like PiSSA; their additive forms keep base W
    assert residual == {
        "nlora-pinv",
        "nlora-sketch",
        "pissa",
        "pissa-fast",
        "milora",
        "olora",
        "loldu",
        "corda-ipm",
        "corda-kpm",
        "lora-ga",
        "astra",
        "lora-null",
        "init-ab",
    }
    data_driven = {m.name: m.calibration for m in ADAPTERS.values() if m.needs_calibration}
    assert data_driven == {
        "lora-sb": "gradient", "lora-ga": "gradient", "lora-one": "gradient",
        "eva": "activations", "corda-ipm": "corda", "corda-kpm": "corda",
        "astra": "outputs", "lora-null": "activations",
    }  # fmt: skip


LLAMA_7B_LAYER = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]


def test_published_llama_7b_counts_at_rank_128():
    # REFERENCE.md: LoRA r = 128 on all seven projections of Llama-2-7B's 32 layers = 319,815,680;
    # SLoRA/NLoRA add 7·32·r² = 3,670,016; IntTune trains 7·32·r² only.
    lora = closed_form_trainable("lora", LLAMA_7B_LAYER, 128, repeat=32)
    assert lora == 319_815_680
    for name in ("slora", "nlora", "nlora-pinv", "nlora-sketch"):
        assert closed_form_trainable(name, LLAMA_7B_LAYER, 128, repeat=32) - lora == 3_670_016
    for name in ("inttune", "lora-xs", "lora-sb"):
        assert closed_form_trainable(name, LLAMA_7B_LAYER, 128, repeat=32) == 3_670_016
    assert closed_form_trainable("loldu", LLAMA_7B_LAYER, 128, repeat=32) == 7 * 32 * 128
    assert closed_form_trainable("full", {"q": (4096, 4096)}, 128) == 4096**2
