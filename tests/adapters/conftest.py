"""Tiny random Hugging Face models, built in the test (no download): BERT, Llama and GPT-2 shapes,
from the shared builders of tests/helpers/tiny_models.py.

Hidden sizes 32–48 keep every init (full SVDs included) in milliseconds; the shapes are not square
(intermediate = 2–3 × hidden) so (m, n) mix-ups show.
"""

from __future__ import annotations

import helpers.tiny_models as helpers
import pytest
import torch
from transformers import BertModel, GPT2Model, LlamaForCausalLM

VOCAB = 64


def tiny_bert(dtype: torch.dtype = torch.float32, seed: int = 0) -> BertModel:
    """48 wide, no pooler, dropout off, Linear weights at trained scale (x10)."""
    model = helpers.tiny_bert(
        seed, pooler=False, vocab=VOCAB, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    return helpers.scale_linear_weights(model).to(dtype)


def tiny_llama(dtype: torch.dtype = torch.float32, seed: int = 0) -> LlamaForCausalLM:
    """32 wide, intermediate 80, grouped-query attention, Linear weights at trained scale (x10)."""
    return helpers.scale_linear_weights(helpers.tiny_llama(seed, vocab=VOCAB)).to(dtype)


def tiny_gpt2(seed: int = 0) -> GPT2Model:
    return helpers.tiny_gpt2(seed, vocab=VOCAB)


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


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """The matrices here are at most 96 x 48: one torch thread (tests/conftest.py)."""
