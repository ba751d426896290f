"""Hugging Face directories: sharded safetensors, .bin fallback, prefixes, Conv1D, model order."""

from __future__ import annotations

import json

import torch

from lowrank_lab.weights import open_source
from lowrank_lab.weights.registry import spec_from_hf_config

LLAMA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BERT_MODULES = ["query", "key", "value", "attention-output", "intermediate", "output"]


def test_sharded_llama_lists_every_target_in_model_order(tiny_llama):
    path, _ = tiny_llama
    assert json.loads((path / "model.safetensors.index.json").read_text())  # really sharded
    assert len(list(path.glob("model-*.safetensors"))) > 3
    src = open_source(str(path))
    infos = src.targets()
    assert src.family == "llama" and not src.synthetic and src.name == path.name
    assert len(infos) == 11 * 7
    # Layer order 0..10 (alphabetical would put 10 before 2), block order within a layer.
    assert [(i.layer, i.module) for i in infos] == [(lay, m) for lay in range(11) for m in LLAMA_MODULES]
    shapes = {i.module: i.shape for i in infos[:7]}
    assert shapes == {
        "q_proj": (16, 16),
        "k_proj": (8, 16),
        "v_proj": (8, 16),
        "o_proj": (16, 16),
        "gate_proj": (24, 16),
        "up_proj": (24, 16),
        "down_proj": (16, 24),
    }


def test_sharded_llama_weights_equal_the_model(tiny_llama):
    path, state = tiny_llama
    n = 0
    for wm in open_source(path):
        assert torch.equal(wm.weight, state[wm.tensor])
        assert wm.weight.shape == wm.shape and not wm.synthetic and wm.singular_values is None
        n += 1
    assert n == 77


def test_selection_dtype_and_len(tiny_llama):
    path, state = tiny_llama
    src = open_source(str(path), targets="v_proj,q_proj", layers="2,10", dtype="bf16")
    assert [(i.layer, i.module) for i in src.targets()] == [
        (2, "q_proj"),
        (2, "v_proj"),
        (10, "q_proj"),
        (10, "v_proj"),
    ]
    assert len(src) == 4
    wm = src.load(src.targets()[-1])
    assert wm.tensor == "model.layers.10.self_attn.v_proj.weight"
    assert wm.weight.dtype == torch.bfloat16
    assert torch.equal(wm.weight, state[wm.tensor].to(torch.bfloat16))
    assert src.describe()["layers"] == "2,10"


def test_bert_with_prefix_and_single_file(tiny_bert):
    path, state = tiny_bert
    assert (path / "model.safetensors").exists()
    src = open_source(path)
    infos = src.targets()
    assert src.family == "bert"
    assert [(i.layer, i.module) for i in infos] == [(lay, m) for lay in range(2) for m in BERT_MODULES]
    assert infos[3].tensor == "bert.encoder.layer.0.attention.output.dense.weight"
    assert infos[5].tensor == "bert.encoder.layer.0.output.dense.weight"
    assert infos[4].shape == (40, 16) and infos[5].shape == (16, 40)
    for wm in src:
        assert torch.equal(wm.weight, state[wm.tensor])


def test_bert_spec_counts_the_checkpoint(tiny_bert):
    path, state = tiny_bert
    spec = spec_from_hf_config(json.loads((path / "config.json").read_text()), name="tiny")
    base = sum(v.numel() for k, v in state.items() if k.startswith("bert.") and "position_ids" not in k)
    assert spec.num_parameters() == base


def test_gpt2_conv1d_comes_out_as_out_in(tiny_gpt2):
    path, model = tiny_gpt2
    src = open_source(path)
    infos = src.targets()
    assert [i.module for i in infos[:4]] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert [i.shape for i in infos[:4]] == [(48, 16), (16, 16), (64, 16), (16, 64)]
    block = model.transformer.h[1]
    conv = type(block.attn.c_attn).__name__ == "Conv1D"  # stored (in, out)
    for wm in src:
        if wm.layer != 1:
            continue
        module = {
            "attn.c_attn": block.attn.c_attn,
            "attn.c_proj": block.attn.c_proj,
            "mlp.c_fc": block.mlp.c_fc,
            "mlp.c_proj": block.mlp.c_proj,
        }[wm.module]
        expected = module.weight.T if conv else module.weight
        assert torch.equal(wm.weight, expected.detach())
        # The (out, in) weight is what nn.Linear would hold: y = x Wᵀ + b reproduces the module.
        x = torch.randn(3, wm.shape[1])
        assert torch.allclose(x @ wm.weight.T + module.bias, module(x.unsqueeze(0))[0].detach(), atol=1e-6)


def test_deberta_v2_names_and_count(tiny_deberta):
    path, model = tiny_deberta
    src = open_source(path)
    assert src.family == "deberta"
    infos = src.targets()
    assert infos[0].tensor.endswith("encoder.layer.0.attention.self.query_proj.weight")
    assert [i.module for i in infos[:6]] == BERT_MODULES
    assert src.spec.num_parameters() == sum(p.numel() for p in model.parameters())


def test_bin_fallback_single_and_sharded(tiny_llama, tmp_path):
    path, state = tiny_llama
    config = (path / "config.json").read_text()
    single = tmp_path / "single"
    single.mkdir()
    (single / "config.json").write_text(config)
    torch.save(state, single / "pytorch_model.bin")
    src = open_source(single, layers="10")
    assert src.format == "bin"
    for wm in src:
        assert torch.equal(wm.weight, state[wm.tensor])

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(config)
    keys = sorted(state)
    halves = {
        "pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
        "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :],
    }
    weight_map = {}
    for file, ks in halves.items():
        torch.save({k: state[k] for k in ks}, sharded / file)
        weight_map.update(dict.fromkeys(ks, file))
    (sharded / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    src = open_source(sharded)
    assert len(src) == 77
    assert [(i.layer, i.module) for i in src.targets()][:8] == [(0, m) for m in LLAMA_MODULES] + [
        (1, "q_proj")
    ]
    for wm in src:
        assert torch.equal(wm.weight, state[wm.tensor])


def test_safetensors_preferred_over_bin(tiny_bert, tmp_path):
    path, state = tiny_bert
    d = tmp_path / "both"
    d.mkdir()
    for f in path.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    (d / "pytorch_model.bin").write_bytes(b"not a checkpoint")  # would fail if it were read
    assert open_source(d).format == "safetensors"
    assert len(open_source(d).targets()) == 12


def test_synthetic_from_a_local_config(tiny_llama):
    path, _ = tiny_llama
    src = open_source(path, synthetic=True, layers="0")
    assert src.synthetic and [i.shape for i in src.targets()][:2] == [(16, 16), (8, 16)]
    wm = src.load(src.targets()[1])
    assert wm.synthetic and wm.weight.shape == (8, 16)


def test_roberta_and_mistral_layouts(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM, RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(4)
    roberta = RobertaForMaskedLM(
        RobertaConfig(
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=30,
            max_position_embeddings=20,
        )
    )
    mistral = MistralForCausalLM(
        MistralConfig(
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=1,
            vocab_size=30,
        )
    )
    for model, family, first, n in [
        (roberta, "roberta", "roberta.encoder.layer.0.attention.self.query.weight", 6),
        (mistral, "mistral", "model.layers.0.self_attn.q_proj.weight", 7),
    ]:
        model.save_pretrained(tmp_path / family)
        src = open_source(tmp_path / family)
        state = model.state_dict()
        assert src.family == family and len(src) == n and src.targets()[0].tensor == first
        for wm in src:
            assert torch.equal(wm.weight, state[wm.tensor])
    assert open_source(tmp_path / "mistral").targets()[1].shape == (4, 16)  # one KV head of width 4
