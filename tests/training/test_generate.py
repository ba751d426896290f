"""--eval generate: GSM8K exact match of the final number after greedy generation."""

from __future__ import annotations

import pytest
import torch

from lowrank_lab.finetune import main as finetune_main
from lowrank_lab.training.batching import Encoder
from lowrank_lab.training.generate import exact_match, final_number
from lowrank_lab.training.tasks import Example, get_task


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("She pays 3 + 4 = 7 dollars.\n#### 7", "7"),
        ("#### 1,234", "1234"),
        ("so -5 left\n#### -5", "-5"),
        ("#### 2.50", "2.5"),
        ("#### 3.0", "3"),
        ("no marker: the last number, 42 then 17", "17"),
        ("nothing numeric", None),
    ],
)
def test_final_number(text, want):
    assert final_number(text) == want


class _Tok:
    """Characters as ids 3..; bos 1, eos 2, pad 0 (a llama2.c-style tokenizer with decode)."""

    bos_token_id, eos_token_id, pad_token_id, vocab_size = 1, 2, 0, 128

    def encode(self, text, add_special_tokens=False):
        return [3 + ord(c) % 120 for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 3) for i in ids if i > 2)


class _Parrot(torch.nn.Module):
    """A 'model' whose greedy answer is a fixed text: generation without training a model."""

    def __init__(self, answers):
        super().__init__()
        self.answers, self.calls = list(answers), 0
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def generate(self, ids, attention_mask, max_new_tokens, do_sample, eos_token_id, pad_token_id):
        assert not do_sample and ids.shape[0] == 1 and max_new_tokens >= 1
        text = self.answers[self.calls]
        self.calls += 1
        new = torch.tensor([[3 + ord(c) % 120 for c in text] + [eos_token_id]])
        return torch.cat([ids, new], dim=1)


def test_exact_match_counts_the_final_numbers_and_restores_train_mode():
    spec = get_task("gsm8k")
    examples = [Example("q1", "a\n#### 12", None), Example("q2", "b\n#### 7", None)]
    examples.append(Example("q3", "#### 1", None))
    enc = Encoder(spec, _Tok(), 128, examples)
    model = _Parrot(["x = 12\n#### 12", "I think 8", "#### 1.0"]).train()
    assert exact_match(model, enc, [0, 1, 2], device=torch.device("cpu")) == pytest.approx(2 / 3)
    assert model.training and model.calls == 3


def test_generate_is_refused_for_a_classification_task(capsys, tmp_path):
    assert finetune_main(["--task", "sst2", "--eval", "generate", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--eval generate scores a causal LM's answers; task sst2 is classification" in err
