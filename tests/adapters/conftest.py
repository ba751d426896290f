"""Tiny random Hugging Face models, built in the test (no download): BERT, Llama and GPT-2 shapes.

Hidden sizes 32–48 keep every init (full SVDs included) in milliseconds; the shapes are not square
(intermediate = 2–3 × hidden) so (m, n) mix-ups show.
"""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaForCausalLM

VOCAB = 64


def _scale_linear_weights(model: torch.nn.Module, factor: float = 10.0) -> None:
    # HF's init (std 0.02) gives weights far smaller than trained ones; scale the Linear weights up
    # so that a wrong residual or a missing scaling is an O(1) change of the output, not a 1e-4 one.
    # (Embeddings are left alone: scaling them too makes the bf16 BERT chaotic, 28% off its fp32 twin.)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(factor)


def tiny_bert(dtype: torch.dtype = torch.float32, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertModel(cfg, add_pooling_layer=False).eval()
    _scale_linear_weights(model)
    return model.to(dtype)


def tiny_llama(dtype: torch.dtype = torch.float32, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = LlamaForCausalLM(cfg).eval()
    _scale_linear_weights(model)
    return model.to(dtype)


def tiny_gpt2(seed: int = 0) -> GPT2Model:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2Model(cfg).eval()


def run(model, ids: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
    """The model's logits (or last hidden state); detached unless ``grad``."""
    with torch.set_grad_enabled(grad):
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.fixture
def ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (2, 9), generator=g)


@pytest.fixture(params=["bert", "llama"])
def family(request) -> str:
    return request.param


class Tiny:
    """Factories handed to tests by the ``tiny`` fixture (conftest modules are not importable by name)."""

    bert = staticmethod(tiny_bert)
    llama = staticmethod(tiny_llama)
    gpt2 = staticmethod(tiny_gpt2)
    run = staticmethod(run)

    @staticmethod
    def make(family: str, dtype: torch.dtype = torch.float32, seed: int = 0):
        return {"bert": tiny_bert, "llama": tiny_llama}[family](dtype, seed)


@pytest.fixture(scope="session")
def tiny() -> type[Tiny]:
    return Tiny


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # The matrices here are at most 96 x 48: threads buy nothing, and on a shared, oversubscribed
    # machine every OpenMP region waits for descheduled workers — 0.1–0.5 s per SVD call instead of
    # 0.5 ms (measured with 2 threads at load 7). One thread keeps the area's tests at a few seconds.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
