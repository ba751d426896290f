"""Reference predictors a fine-tuned model must beat before its claims mean anything (issue 15).

* Classification: the constant predictor that answers the training set's majority class, scored on
  the same dev examples as the runs (for accuracy that is the dev frequency of that class; for
  Matthews correlation it is 0).
* Regression: a constant score has no rank correlation; its Spearman is taken as 0.
* Language modelling (GSM8K answer loss): a unigram and an interpolated bigram over answer tokens,
  fitted on training answers, scored in nats per answer token on the runs' eval examples. The
  bigram is P(t | p) = λ c(p, t) / c(p) + (1 − λ) P_uni(t), with P_uni add-one smoothed over the
  vocabulary and λ chosen on the validation split (Jelinek & Mercer 1980). ../shared/REFERENCE.md
  quotes unigram 4.41 and bigram 2.82-3.16 nats for stories260K's tokenizer on 3,000 answers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .batching import IGNORE_INDEX, Encoder

#: Training answers the n-gram models are fitted on (the first N of the training split).
NGRAM_TRAIN = 3000
LAMBDAS = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def constant_predictor(spec: Any, train: Encoder, dev: Encoder, dev_idx: Sequence[int]) -> float:
    """The dev metric of predicting the training majority class (0 for correlation metrics)."""
    if spec.kind != "classification" or spec.metric != "accuracy":
        return 0.0
    counts = Counter(int(ex.label) for ex in train.examples)
    majority = counts.most_common(1)[0][0]
    labels = [int(dev.examples[i].label) for i in dev_idx]
    return sum(lab == majority for lab in labels) / max(1, len(labels))


def _answer_pairs(enc: Encoder, indices: Sequence[int]) -> list[tuple[int, int]]:
    """(previous token, answer token) of every scored position of the examples ``indices``."""
    pairs = []
    for i in indices:
        f = enc.feature(int(i))
        ids, labels = f.input_ids, f.target
        pairs.extend((ids[t - 1], ids[t]) for t in range(1, len(ids)) if labels[t] != IGNORE_INDEX)
    return pairs


def ngram_losses(
    train: Encoder, val: Encoder | None, dev: Encoder, dev_idx: Sequence[int], vocab_size: int
) -> dict[str, Any]:
    """Unigram and interpolated-bigram answer loss (nats/token) on ``dev_idx``; see the docstring."""
    fit = _answer_pairs(train, range(min(NGRAM_TRAIN, len(train))))
    uni = Counter(t for _, t in fit)
    big = Counter(fit)
    ctx = Counter(p for p, _ in fit)
    total = sum(uni.values())

    def p_uni(t: int) -> float:
        return (uni[t] + 1) / (total + vocab_size)

    def loss(pairs: list[tuple[int, int]], lam: float | None) -> float:
        s = 0.0
        for p, t in pairs:
            q = p_uni(t)
            if lam is not None and ctx[p]:
                q = lam * big[(p, t)] / ctx[p] + (1 - lam) * q
            s -= math.log(q)
        return s / max(1, len(pairs))

    has_val = val is not None and len(val) > 0
    held = _answer_pairs(val, range(len(val))) if has_val else fit
    lam = min(LAMBDAS, key=lambda x: loss(held, x))
    scored = _answer_pairs(dev, dev_idx)
    return {
        "unigram": loss(scored, None),
        "bigram": loss(scored, lam),
        "bigram_lambda": lam,
        # the same bigram on the validation answers, where selection runs are scored (the gate a
        # study can apply before it spends its seeds: claims.selection_gate)
        "bigram_validation": loss(held, lam) if has_val else None,
        "ngram_fit_answers": min(NGRAM_TRAIN, len(train)),
        "scored_tokens": len(scored),
    }
