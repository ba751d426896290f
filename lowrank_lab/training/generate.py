"""GSM8K scored as the papers score it: greedy generation, exact match of the final number.

PiSSA, MiLoRA and NLoRA report GSM8K accuracy: the model answers the question, and the number after
the answer's ``####`` (GSM8K's format, Cobbe et al. 2021) must equal the reference's. The default
study metric here is the teacher-forced answer loss, which a model too small to solve a problem
still moves; ``finetune --eval generate`` adds this metric for users with real models.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .batching import Encoder, _encode_text, _special_id
from .tasks import gsm8k_prompt

#: New tokens per answer: GSM8K's reference answers are at most ~400 characters of reasoning.
MAX_NEW_TOKENS = 256

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The number after the last ``####`` (commas dropped, a trailing ``.0`` kept as written), else
    the last number in the text (what lm-eval-harness's flexible extract does), else None."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    found = _NUMBER.findall(tail)
    if not found:
        return None
    value = (found[0] if "####" in text else found[-1]).replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def _decode(tok: Any, ids: Sequence[int]) -> str:
    try:
        return tok.decode(list(ids), skip_special_tokens=True)
    except TypeError:  # the llama2.c tokenizer's decode(ids)
        return tok.decode(list(ids))


@torch.no_grad()
def exact_match(
    model: nn.Module,
    encoder: Encoder,
    indices: Sequence[int],
    *,
    device: torch.device,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> float:
    """Share of examples ``indices`` whose greedy answer ends in the reference's final number.

    One example at a time (no padding to get wrong), greedy decoding up to ``max_new_tokens`` or
    the tokenizer's eos, the prompt built as in training (:func:`~.tasks.gsm8k_prompt`).
    """
    tok = encoder.tokenizer
    bos, eos = _special_id(tok, "bos"), _special_id(tok, "eos")
    was_training = model.training
    model.eval()
    hits = 0
    for i in indices:
        ex = encoder.examples[int(i)]
        prompt = [bos, *_encode_text(tok, gsm8k_prompt(ex.text_a), continuation=False)]
        budget = max(1, min(max_new_tokens, encoder.max_length - len(prompt)))
        ids = torch.tensor([prompt[-(encoder.max_length - 1) :]], device=device)
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=budget,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
        answer = _decode(tok, out[0, ids.shape[1] :].tolist())
        want = final_number(ex.text_b or "")
        hits += want is not None and final_number(answer) == want
    model.train(was_training)
    return hits / max(1, len(indices))
