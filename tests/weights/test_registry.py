"""Registry: published parameter counts, GQA shapes, names, selections."""

from __future__ import annotations

import pytest
import torch

from lowrank_lab.weights import (
    MODELS,
    ModelSpec,
    UnknownModelError,
    canonical_module,
    get_spec,
    hf_module_suffixes,
    parse_layers,
    select_modules,
)
from lowrank_lab.weights.registry import FAMILY_MODULES, spec_from_hf_config

REQUIRED = [
    "llama-7b",
    "llama-13b",
    "llama-70b",
    "llama-3-8b",
    "mistral-7b",
    "roberta-base",
    "roberta-large",
    "deberta-v3-base",
    "minilm",
    "stories260K",
]


def test_registry_has_the_required_models():
    assert set(REQUIRED) <= set(MODELS)


def test_llama_7b_parameter_count_is_the_published_one():
    assert get_spec("llama-7b").num_parameters() == 6_738_415_616


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("llama-7b", (4096, 11008, 32, 32, 32, 32000, False)),
        ("llama-13b", (5120, 13824, 40, 40, 40, 32000, False)),
        ("llama-70b", (8192, 28672, 80, 64, 8, 32000, False)),
        ("llama-3-8b", (4096, 14336, 32, 32, 8, 128256, False)),
        ("mistral-7b", (4096, 14336, 32, 32, 8, 32000, False)),
        ("roberta-base", (768, 3072, 12, 12, 12, 50265, True)),
        ("roberta-large", (1024, 4096, 24, 16, 16, 50265, True)),
        ("deberta-v3-base", (768, 3072, 12, 12, 12, 128100, True)),
        ("minilm", (384, 1536, 6, 12, 12, 30522, True)),
        ("stories260K", (64, 172, 5, 8, 4, 512, True)),
    ],
)
def test_spec_fields(name, fields):
    s = get_spec(name)
    got = (
        s.hidden_size,
        s.intermediate_size,
        s.num_layers,
        s.num_heads,
        s.num_kv_heads,
        s.vocab_size,
        s.tied_embeddings,
    )
    assert got == fields


def _hf_count(spec: ModelSpec, num_layers: int) -> int:
    from transformers import AutoModel, AutoModelForCausalLM

    config = spec.to_hf_config(num_layers)
    decoder = spec.family_info.kind == "decoder" and spec.family != "gpt2"  # GPT-2: GPT2Model, head tied
    auto = AutoModelForCausalLM if decoder else AutoModel
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = auto.from_config(config)
    return sum(p.numel() for p in model.parameters())


# Registry entries of the families added with the family tables (issue 16).
NEW_FAMILIES = ["llama-3.1-8b", "qwen2.5-7b", "gemma-2-9b", "mixtral-8x7b", "phi-3-mini"]


@pytest.mark.parametrize("name", REQUIRED + NEW_FAMILIES)
def test_num_parameters_matches_transformers(name):
    # Parameters are affine in depth, so 1- and 2-layer meta-device models give the exact count at any depth.
    spec = get_spec(name)
    one, two = _hf_count(spec, 1), _hf_count(spec, 2)
    assert spec.num_parameters() == one + (spec.num_layers - 1) * (two - one)


def test_target_shapes_honour_kv_heads():
    shapes = get_spec("llama-70b").target_shapes()
    assert shapes["q_proj"] == (8192, 8192)
    assert shapes["k_proj"] == shapes["v_proj"] == (1024, 8192)  # 8 KV heads x 128
    assert shapes["down_proj"] == (8192, 28672)
    s = get_spec("stories260K").target_shapes()
    assert s == {
        "wq": (64, 64),
        "wk": (32, 64),
        "wv": (32, 64),
        "wo": (64, 64),
        "w1": (172, 64),
        "w2": (64, 172),
        "w3": (172, 64),
    }
    assert list(get_spec("minilm").target_shapes()) == [
        "query",
        "key",
        "value",
        "attention-output",
        "intermediate",
        "output",
    ]


def test_lora_trainable_count_from_shapes_matches_reference():
    # REFERENCE.md: LoRA r=128 on all seven Llama-2-7B projections, 32 layers = 319,815,680.
    spec = get_spec("llama-7b")
    total = spec.num_layers * sum(128 * (m + n) for m, n in spec.target_shapes().values())
    assert total == 319_815_680


@pytest.mark.parametrize(
    "name", ["llama-7b", "mistral-7b", "roberta-base", "deberta-v3-base", "minilm", *NEW_FAMILIES]
)
def test_hf_config_round_trip(name):
    spec = get_spec(name)
    back = spec_from_hf_config(spec.hf_config_dict(), name=spec.name, hub_id=spec.hub_id)
    assert back.target_shapes() == spec.target_shapes()
    assert back.num_parameters() == spec.num_parameters()


def test_get_spec_is_case_insensitive_and_takes_hub_ids():
    assert get_spec("LLAMA-7B") is MODELS["llama-7b"]
    assert get_spec("stories260k") is MODELS["stories260K"]
    assert get_spec("meta-llama/Llama-2-7b-hf") is MODELS["llama-7b"]


@pytest.mark.parametrize(
    ("typo", "expected"),
    [
        ("llama7b", "llama-7b"),
        ("lama-7b", "llama-7b"),
        ("robertabase", "roberta-base"),
        ("mistral", "mistral-7b"),
    ],
)
def test_unknown_name_suggests_closest(typo, expected):
    with pytest.raises(UnknownModelError) as err:
        get_spec(typo)
    assert isinstance(err.value, ValueError)
    assert expected in err.value.suggestions
    assert "Did you mean" in str(err.value) and expected in str(err.value)


def test_hf_module_suffixes():
    assert hf_module_suffixes("bert")["attention-output"] == "attention.output.dense"
    assert hf_module_suffixes("bert")["query"] == "attention.self.query"
    assert hf_module_suffixes("deberta")["query"] == "attention.self.query_proj"
    assert hf_module_suffixes("llama")["down_proj"] == "mlp.down_proj"
    assert hf_module_suffixes("llama2c")["w2"] == "mlp.down_proj"
    for family, modules in FAMILY_MODULES.items():
        assert list(hf_module_suffixes(family)) == list(modules)


def test_canonical_module_matches_suffix_exactly():
    # BERT's "output.dense" is also the tail of "attention.output.dense": exact matching tells them apart.
    assert canonical_module("bert.encoder.layer.3.attention.output.dense.weight", "bert") == (
        3,
        "attention-output",
    )
    assert canonical_module("encoder.layer.3.output.dense.weight", "bert") == (3, "output")
    assert canonical_module("encoder.layer.3.output.LayerNorm.weight", "bert") is None
    assert canonical_module("model.layers.12.mlp.up_proj", "llama") == (12, "up_proj")
    assert canonical_module("model.embed_tokens.weight", "llama") is None
    assert canonical_module("transformer.h.1.mlp.c_fc.weight", "gpt2") == (1, "mlp.c_fc")
    assert canonical_module("layers.4.feed_forward.w3.weight", "llama2c") == (4, "w3")


def test_select_modules():
    assert select_modules("llama", None) == list(FAMILY_MODULES["llama"])
    assert select_modules("llama", "all-linear") == list(FAMILY_MODULES["llama"])
    assert select_modules("llama", "v_proj,q_proj") == ["q_proj", "v_proj"]  # block order, not input order
    assert select_modules("bert", ["value", "attention.self.query"]) == ["query", "value"]
    assert select_modules("gpt2", "c_attn") == ["attn.c_attn"]


def test_select_modules_errors_list_valid_names():
    with pytest.raises(ValueError, match="q_proj, k_proj, v_proj") as err:
        select_modules("llama", "q_proj,query")
    assert "'query'" in str(err.value)
    with pytest.raises(ValueError, match="ambiguous"):
        select_modules("gpt2", "c_proj")
    with pytest.raises(ValueError, match="unknown model family"):
        select_modules("acme", None)


def test_parse_layers():
    assert parse_layers(None, 32) is None
    assert parse_layers("all", 32) is None
    assert parse_layers("0-3,7", 32) == [0, 1, 2, 3, 7]
    assert parse_layers("7, 2-3, 3", 32) == [2, 3, 7]
    assert parse_layers([5, 1], 6) == [1, 5]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("0-32", "out of range"),
        ("3-1", "backwards"),
        ("a", "cannot read"),
        ("1;2", "cannot read"),
        ("-1", "cannot read"),
    ],
)
def test_parse_layers_errors(text, match):
    with pytest.raises(ValueError, match=match) as err:
        parse_layers(text, 32)
    assert "0-31" in str(err.value) or "backwards" in str(err.value)


def test_spec_validation():
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelSpec("bad", None, "llama", 64, 128, 2, 8, 3, 100, False)
    with pytest.raises(ValueError, match="unknown family"):
        ModelSpec("bad", None, "acme", 64, 128, 2, 8, 8, 100, False)
