"""Data order depends on the seed only; padding and label masks are exact."""

from __future__ import annotations

import pytest
import torch

from lowrank_lab.training.batching import IGNORE_INDEX, Encoder, batch_order, eval_subset
from lowrank_lab.training.tasks import Example, get_task


def test_batch_order_is_a_function_of_seed():
    a = batch_order(50, steps=7, batch_size=16, seed=3)
    assert a.shape == (7, 16)
    assert torch.equal(a, batch_order(50, 7, 16, 3))
    assert not torch.equal(a, batch_order(50, 7, 16, 4))


def test_batch_order_covers_each_epoch_once():
    order = batch_order(10, steps=5, batch_size=4, seed=0).flatten()  # 20 = two epochs
    assert sorted(order[:10].tolist()) == list(range(10))
    assert sorted(order[10:].tolist()) == list(range(10))


def test_batch_order_rejects_empty():
    with pytest.raises(ValueError, match="no training examples"):
        batch_order(0, 1, 1, 0)


def test_eval_subset_is_fixed_and_seed_free():
    assert eval_subset(10, 0) == list(range(10))
    assert eval_subset(10, 50) == list(range(10))
    s = eval_subset(100, 7)
    assert len(s) == 7 and s == sorted(s) and s == eval_subset(100, 7)


def test_glue_pairs_pad_to_longest_with_token_types(bert_tokenizer):
    ex = [Example("a b c d e f", "g", 1), Example("a", "b", 0)]
    enc = Encoder(get_task("rte"), bert_tokenizer, 8, ex)
    batch = enc.collate([0, 1])
    assert batch["input_ids"].shape == (2, 8)  # first pair truncated to max_length 8
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]  # [CLS] a [SEP] b [SEP]
    assert batch["token_type_ids"][1, :5].tolist() == [0, 0, 0, 1, 1]
    assert batch["target"].tolist() == [1, 0] and batch["target"].dtype == torch.long


def test_regression_targets_are_float(bert_tokenizer):
    enc = Encoder(get_task("stsb"), bert_tokenizer, 16, [Example("a", "b", 3.2)])
    assert enc.collate([0])["target"].dtype == torch.float32


def test_causal_lm_masks_prompt_and_padding(char_tokenizer):
    ex = [Example("1+1?", "2", None), Example("What is 10+10?", "It is 20", None)]
    enc = Encoder(get_task("gsm8k"), char_tokenizer, 512, ex)
    f = enc.feature(0)
    prompt = char_tokenizer.encode("Question: 1+1?\nAnswer:")
    answer = char_tokenizer.encode(" 2")
    assert f.input_ids == [1, *prompt, *answer, 2]
    assert f.target == [IGNORE_INDEX] * (1 + len(prompt)) + [*answer, 2]
    batch = enc.collate([0, 1])
    n0 = len(f.input_ids)
    assert (batch["target"][0, n0:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][0].sum() == n0


def test_causal_lm_truncation_keeps_answer_tokens(char_tokenizer):
    enc = Encoder(get_task("gsm8k"), char_tokenizer, 10, [Example("a long question here", "answer", None)])
    f = enc.feature(0)
    assert len(f.input_ids) == len(f.target) == 10
    # half of the budget goes to the answer: the question loses its beginning, not the answer
    assert sum(t != IGNORE_INDEX for t in f.target) == 5
    assert f.input_ids[0] == 1 and f.input_ids[1:5] == char_tokenizer.encode("wer:")[-4:]
    short = Encoder(get_task("gsm8k"), char_tokenizer, 60, [Example("q?", "a long answer text here", None)])
    g = short.feature(0)
    assert g.input_ids[1:][: len(char_tokenizer.encode("Question: q?\nAnswer:"))] == char_tokenizer.encode(
        "Question: q?\nAnswer:"
    )  # a short question is kept whole


def test_max_length_must_fit_specials(char_tokenizer):
    with pytest.raises(ValueError, match="--max-length must be >= 2"):
        Encoder(get_task("gsm8k"), char_tokenizer, 1, [])
