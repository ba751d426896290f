"""Every family table against a tiny random checkpoint that ``transformers`` builds and saves.

For each family: discovery finds every block weight (counted on the model's own modules: each
Linear/Conv1D inside a block, each router, each expert of each stacked expert tensor); each
matrix read equals the model's parameter; the closed-form parameter count equals
``sum(p.numel())`` of the model; fused projections split where the model itself splits them.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
from helpers.tiny_models import tiny_model
from safetensors.torch import save_file

from lowrank_lab.weights import get_spec, open_source
from lowrank_lab.weights.families import FAMILIES, MODEL_TYPES
from lowrank_lab.weights.registry import spec_from_hf_config

SMALL = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, vocab_size=32)
ENCODER = dict(SMALL, max_position_embeddings=24)
# model key -> (model_type, config kwargs, family)
CONFIGS = {
    "llama": ("llama", dict(SMALL, num_key_value_heads=2), "llama"),
    "mistral": ("mistral", dict(SMALL, num_key_value_heads=2), "mistral"),
    "qwen2": ("qwen2", dict(SMALL, num_key_value_heads=2), "qwen2"),
    "qwen3": ("qwen3", dict(SMALL, num_key_value_heads=2, head_dim=8), "qwen3"),
    "gemma": ("gemma", dict(SMALL, num_key_value_heads=2, head_dim=8), "gemma"),
    "gemma2": ("gemma2", dict(SMALL, num_key_value_heads=2, head_dim=8), "gemma2"),
    "gemma3": ("gemma3_text", dict(SMALL, num_key_value_heads=2, head_dim=8), "gemma3"),
    "phi3": (
        "phi3",
        dict(SMALL, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=1),
        "phi3",
    ),
    "mixtral": ("mixtral", dict(SMALL, num_key_value_heads=2, num_local_experts=3), "mixtral"),
    "qwen2_moe": (
        "qwen2_moe",
        dict(
            SMALL,
            num_key_value_heads=2,
            num_experts=3,
            moe_intermediate_size=12,
            shared_expert_intermediate_size=20,
        ),
        "qwen2_moe",
    ),
    "qwen3_moe": (
        "qwen3_moe",
        dict(SMALL, num_key_value_heads=2, num_experts=3, moe_intermediate_size=12, head_dim=8),
        "qwen3_moe",
    ),
    "gpt_neox": ("gpt_neox", dict(SMALL), "gpt_neox"),
    "falcon": ("falcon", dict(SMALL), "falcon"),  # Falcon-7B's layout: multi-query, parallel attention
    "falcon-new": ("falcon", dict(SMALL, new_decoder_architecture=True, num_kv_heads=2), "falcon"),
    "opt": ("opt", dict(SMALL, ffn_dim=24, word_embed_proj_dim=16, max_position_embeddings=20), "opt"),
    "gpt2": ("gpt2", dict(n_embd=16, n_layer=2, n_head=4, vocab_size=32, n_positions=24), "gpt2"),
    "bert": ("bert", ENCODER, "bert"),
    "roberta": ("roberta", ENCODER, "roberta"),
    "xlm-roberta": ("xlm-roberta", ENCODER, "roberta"),
    "deberta-v2": ("deberta-v2", ENCODER, "deberta"),
    "t5": (
        "t5",
        dict(d_model=16, d_ff=24, num_layers=2, num_decoder_layers=3, num_heads=4, d_kv=4, vocab_size=32),
        "t5",
    ),
}
ENCODERS = {"bert", "roberta", "xlm-roberta", "deberta-v2"}
_IN_BLOCK = re.compile(r"\.(layers|layer|h|block)\.\d+\.")


def build(key: str, seed: int = 0):
    """The model transformers builds from the tiny config (causal LM for decoders, T5 with its LM head)."""
    model_type, kwargs, _ = CONFIGS[key]
    return tiny_model(model_type, seed, encoder=key in ENCODERS, **kwargs)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """key -> (directory, model), built and saved once per key."""
    cache = {}

    def get(key):
        if key not in cache:
            model = build(key)
            path = tmp_path_factory.mktemp(key)
            model.save_pretrained(path)
            cache[key] = (path, model)
        return cache[key]

    return get


def _expected_count(model) -> int:
    """Target matrices of the model's blocks, counted on its own modules: one per Linear/Conv1D
    weight and per router, one per expert of a stacked (experts, out, in) parameter; embeddings
    inside blocks (T5's relative-position bias) and norms are not targets."""
    count = 0
    for name, p in model.named_parameters():
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        if not _IN_BLOCK.search(name) or isinstance(owner, torch.nn.Embedding):
            continue
        count += {2: 1, 3: p.shape[0] if p.dim() == 3 else 0}.get(p.dim(), 0)
    return count


def _stored_state(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {}
    for file in path.glob("*.safetensors"):
        state.update(load_file(str(file)))
    return state


def test_every_model_type_of_the_issue_has_a_table():
    wanted = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
              "gemma3_text", "phi3", "gpt_neox", "falcon", "opt", "gpt2", "bert", "roberta", "xlm-roberta",
              "deberta-v2", "t5"}  # fmt: skip
    assert wanted <= set(MODEL_TYPES)
    for family in FAMILIES.values():
        assert len({m.name for m in family.modules}) == len(family.modules), family.name


@pytest.mark.parametrize("key", sorted(set(CONFIGS) - {"mixtral", "qwen2_moe", "qwen3_moe"}))
def test_discovery_finds_every_block_weight_and_reads_it(saved, key):
    path, model = saved(key)
    src = open_source(path)
    assert src.family == CONFIGS[key][2] and src.notes == []
    infos = src.targets()
    assert len(infos) == _expected_count(model)
    state = _stored_state(path)
    for wm in src:
        stored = state[wm.tensor]
        transposed = key == "gpt2"
        assert torch.equal(wm.weight, stored.T if transposed else stored), wm.tensor
        assert wm.role and wm.expert is None
    # The closed form counts what transformers builds (tied heads once).
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert src.spec.num_parameters() == total


@pytest.mark.parametrize("key", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_experts_as_saved_by_transformers_one_linear_each(saved, key):
    # save_pretrained writes transformers-4 names (experts.<e>.gate_proj / w1 ...): three matrices per
    # expert where the model holds a fused gate_up and a down tensor.
    path, model = saved(key)
    src = open_source(path)
    n_experts = src.spec.num_experts
    assert n_experts == 3
    experts = [i for i in src.targets() if i.expert is not None]
    assert len(experts) == 2 * 3 * n_experts  # 2 layers x (gate, up, down) x 3 experts
    assert len(src) == _expected_count(model) + 2 * n_experts  # gate_up counts once per expert in the model
    inner = src.spec.expert_intermediate_size
    stacked = model.state_dict()
    for wm in src:
        if wm.expert is None:
            continue
        prefix = f"model.layers.{wm.layer}.mlp.experts."
        gate_up, down = stacked[prefix + "gate_up_proj"][wm.expert], stacked[prefix + "down_proj"][wm.expert]
        want = {"expert_gate": gate_up[:inner], "expert_up": gate_up[inner:], "expert_down": down}[wm.role]
        assert torch.equal(wm.weight, want), wm.tensor
    total = sum(p.numel() for p in model.parameters())
    assert src.spec.num_parameters() == total


@pytest.fixture(scope="module")
def stacked_mixtral(saved, tmp_path_factory):
    """The transformers-5 layout on disk: the model's own state dict, experts as (experts, out, in)."""
    _, model = saved("mixtral")
    path = tmp_path_factory.mktemp("mixtral_stacked")
    model.config.save_pretrained(path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"))
    return path, model


def test_stacked_experts_one_matrix_per_expert(stacked_mixtral):
    path, model = stacked_mixtral
    src = open_source(path)
    assert len(src) == _expected_count(model) == 2 * (4 + 1 + 3 + 3)
    state = model.state_dict()
    experts = [i for i in src.targets() if i.expert is not None]
    assert [i.tensor for i in experts[:3]] == [
        f"model.layers.0.mlp.experts.gate_up_proj[{e}]" for e in range(3)
    ]
    assert {i.role for i in experts} == {"expert_gate_up", "expert_down"}
    assert all(i.fused for i in experts if i.role == "expert_gate_up")
    for wm in src:
        if wm.expert is not None:
            assert torch.equal(wm.weight, state[wm.tensor.rsplit("[", 1)[0]][wm.expert])
    # --split-fused adds each expert's gate and up halves.
    split = open_source(path, split_fused=True, layers="0", targets="experts.gate_up_proj")
    assert [(i.expert, i.part) for i in split.targets()][:3] == [(0, ""), (0, "gate"), (0, "up")]
    inner = src.spec.expert_intermediate_size
    for wm in split:
        if wm.info.part:
            whole = state["model.layers.0.mlp.experts.gate_up_proj"][wm.expert]
            assert torch.equal(wm.weight, whole[:inner] if wm.info.part == "gate" else whole[inner:])


def test_experts_option_selects_and_checks_the_range(stacked_mixtral):
    path, _ = stacked_mixtral
    some = open_source(path, experts="0,2")
    assert {i.expert for i in some.targets()} == {None, 0, 2}
    none = open_source(path, experts="none")
    assert {i.role for i in none.targets()} == {"q", "k", "v", "o", "router"}
    with pytest.raises(ValueError, match="valid experts are 0-2"):
        open_source(path, experts="3")
    with pytest.raises(ValueError, match="no mixture-of-experts"):
        open_source("llama-7b", synthetic=True, experts="0")


def _parts(src):
    return {(i.layer, i.module): i for i in src.targets()}


def test_phi3_fused_projections_split_at_their_gqa_sizes(saved):
    path, model = saved("phi3")
    src = open_source(path, split_fused=True, layers="0")
    got = [(i.module, i.shape, i.role, i.fused) for i in src.targets()]
    assert got == [
        ("qkv_proj", (32, 16), "qkv", True),
        ("qkv_proj[q]", (16, 16), "q", False),
        ("qkv_proj[k]", (8, 16), "k", False),  # 2 KV heads x head_dim 4
        ("qkv_proj[v]", (8, 16), "v", False),
        ("o_proj", (16, 16), "o", False),
        ("gate_up_proj", (48, 16), "gate_up", True),
        ("gate_up_proj[gate]", (24, 16), "gate", False),
        ("gate_up_proj[up]", (24, 16), "up", False),
        ("down_proj", (16, 24), "down", False),
    ]
    # The parts are what the model computes: modeling_phi3 slices q, k, v and chunks gate/up this way.
    layer = model.model.layers[0]
    x = torch.randn(3, 16)
    mats = {i.info.module: i.weight for i in src}
    qkv = layer.self_attn.qkv_proj(x)
    assert torch.allclose(x @ mats["qkv_proj[k]"].T, qkv[:, 16:24])
    gate, up = layer.mlp.gate_up_proj(x).chunk(2, dim=-1)
    assert torch.allclose(x @ mats["gate_up_proj[gate]"].T, gate) and torch.allclose(
        x @ mats["gate_up_proj[up]"].T, up
    )


@pytest.mark.parametrize("key", ["gpt_neox", "falcon", "falcon-new", "gpt2"])
def test_fused_qkv_parts_are_the_models_queries_keys_values(saved, key):
    path, model = saved(key)
    src = open_source(path, split_fused=True, layers="0")
    mats = {i.info.part: i.weight for i in src if i.info.part}
    spec = src.spec
    hd, heads, kv = spec.attention_head_dim, spec.num_heads, spec.num_kv_heads
    whole = next(i.weight for i in src if i.info.fused)
    # How each modelling file itself splits the fused output (heads, then q/k/v within a head or group).
    if key == "gpt_neox":
        view = whole.view(heads, 3, hd, -1)
        q, k, v = view[:, 0], view[:, 1], view[:, 2]
    elif key == "falcon-new":
        view = whole.view(kv, heads // kv + 2, hd, -1)
        q, k, v = view[:, :-2], view[:, -2], view[:, -1]
    else:  # falcon multi-query and GPT-2: [q; k; v]
        q, k, v = whole.split([heads * hd, kv * hd, kv * hd])
    for name, want in zip("qkv", (q, k, v), strict=True):
        assert torch.equal(mats[name], want.reshape(-1, whole.shape[1])), name
    assert mats["k"].shape == (kv * hd, spec.hidden_size)


def test_t5_encoder_decoder_and_cross_attention(saved):
    path, _ = saved("t5")
    src = open_source(path)
    by_role = {}
    for i in src.targets():
        by_role.setdefault(i.role, []).append(i)
    assert len(by_role["cross_q"]) == 3 and len(by_role["q"]) == 2 + 3  # 2 encoder, 3 decoder blocks
    assert by_role["cross_q"][0].tensor == "decoder.block.0.layer.1.EncDecAttention.q.weight"
    assert [i.module for i in open_source(path, targets="cross_q,cross_v", layers="2").targets()] == [
        "dec.cross.q",
        "dec.cross.v",
    ]


def test_config_round_trip_and_hf_config_count(saved):
    # A spec read from config.json writes a config.json that transformers builds to the same count.
    from transformers import AutoModelForCausalLM

    for key in ("qwen2", "phi3", "mixtral", "falcon-new", "gemma2"):
        path, model = saved(key)
        spec = spec_from_hf_config(json.loads((path / "config.json").read_text()), name=key)
        config = spec.to_hf_config()
        config.pad_token_id = None  # Phi-3's default 32000 is outside the tiny vocabulary
        with torch.device("meta"):
            again = AutoModelForCausalLM.from_config(config)
        assert spec.num_parameters() == sum(p.numel() for p in again.parameters()), key


@pytest.mark.slow  # analyzes every new family's synthetic shapes
def test_synthetic_registry_entries_of_new_families():
    assert len(open_source("mixtral-8x7b", synthetic=True, layers="0")) == 4 + 1 + 2 * 8
    assert len(open_source("mixtral-8x7b", synthetic=True, layers="0", experts="none")) == 5
    phi = open_source("phi-3-mini", synthetic=True, layers="0", split_fused=True, targets="qkv_proj")
    assert [i.shape for i in phi.targets()] == [(9216, 3072), (3072, 3072), (3072, 3072), (3072, 3072)]
    small = open_source(
        get_spec("phi-3-mini").with_layers(1), synthetic=True, split_fused=True, targets="qkv"
    )
    mats = {wm.info.part: wm.weight for wm in small}
    assert torch.equal(torch.cat([mats["q"], mats["k"], mats["v"]]), mats[""])


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_analyze_has_one_row_per_block_weight(saved, key, tmp_path):
    # The command a user runs: one spectra row per target matrix the source lists, nothing refused.
    from lowrank_lab.analyze import main

    path, model = saved(key)
    out = tmp_path / "out"
    argv = ["--model", str(path), "--ranks", "1", "--methods", "svd", "--device", "cpu", "--repeats", "1"]
    assert main([*argv, "--warmup", "0", "--out", str(out), "--no-figures"]) == 0
    spectra = pd.read_csv(out / "spectra.csv")
    # MoE checkpoints saved by transformers hold one Linear per expert: gate and up apart, so one more
    # matrix per expert and layer than the model's fused gate_up tensor.
    moe = key in ("mixtral", "qwen2_moe", "qwen3_moe")
    extra = 2 * open_source(path).spec.num_experts if moe else 0
    assert len(spectra) == _expected_count(model) + extra
    assert "generic" not in set(spectra.role)
