"""Reference predictors of the gates: the constant predictor and the GSM8K n-gram answer models."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from lowrank_lab.training.baselines import constant_predictor, ngram_losses
from lowrank_lab.training.batching import Encoder
from lowrank_lab.training.tasks import Example, get_task, load_examples


def test_constant_predictor_is_the_training_majority_scored_on_dev(glue_dir, bert_tokenizer):
    spec = get_task("sst2")
    train = Encoder(spec, bert_tokenizer, 32, load_examples(spec, glue_dir, "train"))
    dev = Encoder(spec, bert_tokenizer, 32, load_examples(spec, glue_dir, "eval"))
    majority = Counter(ex.label for ex in train.examples).most_common(1)[0][0]
    want = sum(ex.label == majority for ex in dev.examples) / len(dev.examples)
    assert constant_predictor(spec, train, dev, range(len(dev))) == pytest.approx(want)
    assert constant_predictor(get_task("stsb"), train, dev, range(len(dev))) == 0.0  # no rank correlation


def test_ngram_answer_losses(char_tokenizer):
    spec = get_task("gsm8k")
    answers = ["ab ab ab #### 1", "ab ab #### 2", "abab #### 3"]
    train = Encoder(spec, char_tokenizer, 256, [Example(f"q{i}", a, None) for i, a in enumerate(answers)])
    dev = Encoder(spec, char_tokenizer, 256, [Example("q", "ab ab #### 1", None)])
    out = ngram_losses(train, None, dev, [0], vocab_size=char_tokenizer.vocab_size)
    # the unigram by hand: add-one counts over the training answer tokens (answer + eos)
    def answer_tokens(enc, i):
        f = enc.feature(i)
        return [t for t, lab in zip(f.input_ids, f.target, strict=True) if lab != -100]

    fit = [t for i in range(3) for t in answer_tokens(train, i)]
    counts, total = Counter(fit), len(fit)
    scored = answer_tokens(dev, 0)
    want = -sum(math.log((counts[t] + 1) / (total + char_tokenizer.vocab_size)) for t in scored) / len(scored)
    assert out["unigram"] == pytest.approx(want)
    assert out["scored_tokens"] == len(scored)
    assert out["bigram"] < out["unigram"]  # "ab ab" is predictable from the previous character
    assert out["bigram_validation"] is None  # no validation split
    with_val = ngram_losses(train, dev, dev, [0], vocab_size=char_tokenizer.vocab_size)
    assert with_val["bigram_validation"] == pytest.approx(with_val["bigram"])  # val = dev here: same answers
