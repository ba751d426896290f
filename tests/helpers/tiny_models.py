"""Tiny random Hugging Face models for the tests, built from a config (no download), in one place.

Each builder seeds torch's global RNG with ``seed`` (None: draws from it as it stands, for factories
that a caller seeds) and builds transformers' own model of a small config, in eval mode. Defaults are
the shapes most tests use; hidden sizes of 16-64 keep every init, full SVDs included, in
milliseconds, and intermediate sizes differ from the hidden size so that (m, n) mix-ups show.
"""

from __future__ import annotations

from typing import Any

import torch

#: MiniLM's WordPiece vocabulary: a tiny BERT with it reads the real tokenizer's ids.
MINILM_VOCAB = 30522


def _seeded(seed: int | None) -> None:
    if seed is not None:
        torch.manual_seed(seed)


def scale_linear_weights(model: torch.nn.Module, factor: float = 10.0) -> torch.nn.Module:
    """Multiply every ``nn.Linear`` weight by ``factor``, in place.

    HF's init (std 0.02) gives weights far smaller than trained ones; scaled up, a wrong residual or a
    missing scaling is an O(1) change of the output, not a 1e-4 one. Embeddings are left alone
    (scaling them too made the bf16 BERT chaotic, 28% off its fp32 twin)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(factor)
    return model


def bert_config(
    *,
    hidden: int = 48,
    layers: int = 2,
    heads: int = 4,
    intermediate: int | None = None,
    vocab: int = 64,
    max_positions: int = 32,
    **extra: Any,
):
    """A small ``BertConfig``; ``intermediate`` defaults to twice ``hidden``."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden if intermediate is None else intermediate,
        max_position_embeddings=max_positions,
        **extra,
    )


def minilm_vocab_bert_config(**extra: Any):
    """The fine-tuning tests' BERT: 2 layers, 32 wide, 2 heads, MiniLM's vocabulary and 128
    positions, so MiniLM's tokenizer drives it."""
    return bert_config(hidden=32, heads=2, vocab=MINILM_VOCAB, max_positions=128, **extra)


def tiny_bert(seed: int | None = 0, *, pooler: bool = True, **config: Any):
    """A ``BertModel`` (encoder, with or without its pooler) of :func:`bert_config`."""
    from transformers import BertModel

    _seeded(seed)
    return BertModel(bert_config(**config), add_pooling_layer=pooler).eval()


def llama_config(
    *,
    hidden: int = 32,
    intermediate: int = 80,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 64,
    max_positions: int = 32,
    **extra: Any,
):
    """A small ``LlamaConfig`` with grouped-query attention (4 heads, 2 KV heads)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        **extra,
    )


def tiny_llama(seed: int | None = 0, **config: Any):
    """A ``LlamaForCausalLM`` of :func:`llama_config`."""
    from transformers import LlamaForCausalLM

    _seeded(seed)
    return LlamaForCausalLM(llama_config(**config)).eval()


def tiny_gpt2(seed: int | None = 0, *, hidden: int = 32, layers: int = 2, heads: int = 4, vocab: int = 64,
              positions: int = 32, **extra: Any):  # fmt: skip
    """A ``GPT2Model`` (Conv1D weights stored (in, out)), dropout off."""
    from transformers import GPT2Config, GPT2Model

    _seeded(seed)
    config = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **extra)  # fmt: skip
    return GPT2Model(config).eval()


def tiny_model(model_type: str, seed: int | None = 0, *, encoder: bool = False, **config: Any):
    """transformers' model of ``AutoConfig.for_model(model_type, **config)``: T5 with its LM head,
    an encoder's ``AutoModel`` when ``encoder``, else a causal LM."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, T5ForConditionalGeneration

    _seeded(seed)
    cfg = AutoConfig.for_model(model_type, **config)
    if model_type == "t5":
        return T5ForConditionalGeneration(cfg).eval()
    return (AutoModel if encoder else AutoModelForCausalLM).from_config(cfg).eval()
