"""Forgetting without extra data: how much of its own skill a sentence encoder loses (issue 15).

all-MiniLM-L6-v2 was trained so that the cosine similarity of mean-pooled embeddings tracks
semantic similarity. Its skill on the STS-B dev pairs, the Spearman correlation between those
cosines and the gold scores, is measured for the pre-trained encoder and again for the encoder of a
fine-tuned run (its ``merged/`` weights); the drop is the forgetting (Shuttleworth et al. 2024 relate
intruder dimensions to forgetting of the pre-training distribution; ../shared/REFERENCE.md "Study
protocol" proposes this measure). No task head and no training is involved: only the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .metrics import spearman
from .tasks import Example

#: Token budget per sentence when embedding STS-B (its sentences are short: the longest dev pair
#: member is well under 128 MiniLM tokens).
MAX_LENGTH = 128


@torch.no_grad()
def embed(
    encoder: nn.Module, tokenizer: Any, sentences: Sequence[str], *, batch_size: int = 64
) -> torch.Tensor:
    """Mean-pooled last hidden states (N, H) of ``sentences``, in their order."""
    encoder.eval()
    out = []
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))  # less padding per batch
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        texts = [sentences[i] for i in idx]
        enc = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        hidden = encoder(**enc).last_hidden_state  # (B, T, H)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0), idx))
    emb = torch.empty(len(sentences), out[0][0].shape[1]) if out else torch.empty(0, 0)
    for vectors, idx in out:
        emb[idx] = vectors.float()
    return emb


def sts_spearman(encoder: nn.Module, tokenizer: Any, pairs: Sequence[Example]) -> float:
    """Spearman correlation between the cosine similarity of each pair's embeddings and its score."""
    a = embed(encoder, tokenizer, [p.text_a for p in pairs])
    b = embed(encoder, tokenizer, [p.text_b or "" for p in pairs])
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return float(spearman(cos, torch.tensor([float(p.label) for p in pairs])))


def load_encoder(path: str | Path) -> nn.Module:
    """The encoder of a run's ``merged/`` folder (or any checkpoint folder), without a task head."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path), local_files_only=True).float()
