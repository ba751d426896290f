"""Fixtures of the weights tests: tiny checkpoints written by ``transformers``, and an offline hub.

Every checkpoint is built here from a small random config and saved with ``save_pretrained``;
nothing third-party is committed. Session-scoped, so ``transformers`` builds each model once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch, tmp_path_factory):
    # No test may touch the network or the user's cache: an empty cache, offline.
    cache = tmp_path_factory.mktemp("hf_cache_empty")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="package")
def _single_thread():
    # Tiny tensors: a second OpenMP thread on the shared 2-core machine only adds waiting.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """(dir, state_dict): 11 layers so alphabetical order (10 before 2) differs from model order,
    grouped-query attention (4 heads, 2 KV heads), sharded into many safetensors files."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=11,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=32,
        max_position_embeddings=32,
    )
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path, max_shard_size="8KB")
    return path, _state(model)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """(dir, state_dict) of a BertForSequenceClassification: keys carry the 'bert.' prefix; one file."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    config = BertConfig(
        hidden_size=16,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=30,
        max_position_embeddings=24,
    )
    model = BertForSequenceClassification(config)
    path = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(path)
    return path, _state(model)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """(dir, model): GPT-2 stores its Conv1D weights (in, out)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(2)
    config = GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=30, n_positions=24)
    model = GPT2LMHeadModel(config)
    path = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def tiny_deberta(tmp_path_factory):
    """(dir, model) of a DebertaV2Model with DeBERTa-v3's relative-position settings."""
    from transformers import DebertaV2Config, DebertaV2Model

    torch.manual_seed(3)
    config = DebertaV2Config(
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=30,
        max_position_embeddings=32,
        relative_attention=True,
        position_buckets=4,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        type_vocab_size=0,
    )
    model = DebertaV2Model(config)
    path = tmp_path_factory.mktemp("tiny_deberta")
    model.save_pretrained(path)
    return path, model


@pytest.fixture
def llama_copy(tiny_llama, tmp_path) -> Path:
    """A writable copy of the tiny sharded Llama, for tests that damage it."""
    dst = tmp_path / "llama"
    shutil.copytree(tiny_llama[0], dst)
    return dst


@pytest.fixture
def bert_copy(tiny_bert, tmp_path) -> Path:
    dst = tmp_path / "bert"
    shutil.copytree(tiny_bert[0], dst)
    return dst
