"""Fixtures of the weights tests: tiny checkpoints written by ``transformers``, and an offline hub.

Every checkpoint is built here from a small random config and saved with ``save_pretrained``;
nothing third-party is committed. Session-scoped, so ``transformers`` builds each model once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import helpers.tiny_models as tiny_models
import pytest
import torch


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch, tmp_path_factory):
    # No test may touch the network or the user's cache: an empty cache, offline.
    cache = tmp_path_factory.mktemp("hf_cache_empty")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """Tiny tensors: one torch thread (tests/conftest.py)."""


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """(dir, state_dict): 11 layers so alphabetical order (10 before 2) differs from model order,
    grouped-query attention (4 heads, 2 KV heads), sharded into many safetensors files."""
    model = tiny_models.tiny_llama(0, hidden=16, intermediate=24, layers=11, vocab=32)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path, max_shard_size="8KB")
    return path, _state(model)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """(dir, state_dict) of a BertForSequenceClassification: keys carry the 'bert.' prefix; one file."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(1)
    model = BertForSequenceClassification(
        tiny_models.bert_config(hidden=16, intermediate=40, heads=2, vocab=30, max_positions=24)
    )
    path = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(path)
    return path, _state(model)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """(dir, model): GPT-2 stores its Conv1D weights (in, out)."""
    model = tiny_models.tiny_model("gpt2", 2, n_embd=16, n_layer=2, n_head=2, vocab_size=30, n_positions=24)
    path = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def tiny_deberta(tmp_path_factory):
    """(dir, model) of a DebertaV2Model with DeBERTa-v3's relative-position settings."""
    model = tiny_models.tiny_model(
        "deberta-v2",
        3,
        encoder=True,
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
