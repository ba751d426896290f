"""Injection on the families of the family tables: default targets, roles, output kept by residual inits.

Tiny random models that ``transformers`` builds from a config (no download): Llama, Qwen2 (q/k/v
biases), Phi-3 (fused qkv_proj and gate_up_proj), GPT-NeoX (fused query_key_value) and T5
(encoder, decoder, cross-attention). A PiSSA init moves the top singular directions into the
adapter and leaves the residual in the base, so the output is unchanged at init; merging folds the
adapter back and the output is unchanged again.
"""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import scale_linear_weights, tiny_model

from lowrank_lab.adapters import inject, lowrank_modules, merge, resolve_targets

SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=64)
CONFIGS = {
    "llama": dict(SMALL, num_key_value_heads=2),
    "qwen2": dict(SMALL, num_key_value_heads=2),
    "phi3": dict(SMALL, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=1),
    "gpt_neox": dict(SMALL),
    "t5": dict(d_model=32, d_ff=48, num_layers=2, num_heads=4, d_kv=8, vocab_size=64),
}
# Linear modules per block that the family table names (T5: 6 in an encoder block, 10 in a decoder block).
DEFAULT_TARGETS = {"llama": 14, "qwen2": 14, "phi3": 8, "gpt_neox": 8, "t5": 2 * 6 + 2 * 10}


def _model(model_type: str, seed: int = 0):
    # trained-size weights, so a wrong residual is an O(1) change of the output
    return scale_linear_weights(tiny_model(model_type, seed, **CONFIGS[model_type]))


def _run(model, ids):
    with torch.no_grad():
        if model.config.model_type == "t5":
            return model(input_ids=ids, decoder_input_ids=ids[:, :5]).logits
        return model(input_ids=ids).logits


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_residual_init_then_merge_keeps_the_output(model_type):
    ids = torch.randint(2, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    model = _model(model_type)
    ref = _run(model, ids)
    report = inject(model, "pissa", rank=4)
    assert len(report.modules) == DEFAULT_TARGETS[model_type]
    assert len(lowrank_modules(model)) == DEFAULT_TARGETS[model_type]
    assert _rel(_run(model, ids), ref) < 1e-5
    merge(model)
    assert not lowrank_modules(model)
    assert _rel(_run(model, ids), ref) < 1e-5


def test_roles_pick_the_same_modules_as_names():
    model = _model("qwen2")
    assert resolve_targets(model, "q,v") == resolve_targets(model, "q_proj,v_proj")
    t5 = _model("t5")
    cross = resolve_targets(t5, "cross_q")
    assert cross == ["decoder.block.0.layer.1.EncDecAttention.q", "decoder.block.1.layer.1.EncDecAttention.q"]
    # A role is not a raw suffix: "q" is self-attention only, while PEFT's suffix "SelfAttention.q" agrees.
    assert resolve_targets(t5, "q") == resolve_targets(t5, "SelfAttention.q")
    phi3 = _model("phi3")
    assert resolve_targets(phi3, "qkv") == [
        "model.layers.0.self_attn.qkv_proj",
        "model.layers.1.self_attn.qkv_proj",
    ]
