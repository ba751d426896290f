"""A study's data: the task's examples tokenised once and shared by every run (train, validation, dev)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .baselines import constant_predictor, ngram_losses
from .batching import Encoder, batch_order, default_validation_size, eval_subset, validation_split
from .config import RunConfig
from .models import ResolvedModel, load_tokenizer, resolve_model
from .tasks import TaskSpec, load_examples, load_scored


class StudyData:
    """The tokenised splits of a study: ``train`` (what runs train on), ``val`` (carved from the
    training data by :func:`~.batching.validation_split`; None with ``val_samples=0``) and ``dev``
    (the task's held-out set, scored at the end of each run); ``model``, the study's model resolved
    once (:class:`~.models.ResolvedModel`), whose tokenizer made them and which each run loads (None
    when the caller gave the tokenizer)."""

    def __init__(
        self,
        spec: TaskSpec,
        train: Encoder,
        val: Encoder | None,
        dev: Encoder,
        n_eval: int,
        model: ResolvedModel | None = None,
    ) -> None:
        self.spec, self.train, self.val, self.dev, self.n_eval = spec, train, val, dev, n_eval
        self.model = model

    @classmethod
    def load(cls, spec: TaskSpec, base: RunConfig, data_dir: str | Path, tokenizer: Any = None) -> StudyData:
        """The splits of ``base``'s task, tokenised by ``tokenizer``, else by the tokenizer of
        ``base.model``, resolved here once (after the examples: bad data is reported first)."""
        train_ex = load_examples(spec, data_dir, "train")
        eval_ex = load_scored(spec, data_dir, base.eval_set)
        model = resolve_model(base.model, spec, base.pooling) if tokenizer is None else None
        tok = tokenizer if tokenizer is not None else load_tokenizer(model, spec)
        max_len = base.max_length or spec.default_max_length
        n_val = default_validation_size(len(train_ex)) if base.val_samples is None else base.val_samples
        train_idx, val_idx = validation_split(len(train_ex), n_val)
        train = Encoder(spec, tok, max_len, [train_ex[i] for i in train_idx])
        val = Encoder(spec, tok, max_len, [train_ex[i] for i in val_idx]) if val_idx else None
        n_eval = spec.default_eval_samples if base.eval_samples is None else base.eval_samples
        return cls(spec, train, val, Encoder(spec, tok, max_len, eval_ex), n_eval, model)

    def baselines(self) -> dict[str, Any]:
        """The reference predictors of :mod:`.baselines` on this study's dev examples."""
        dev_idx = eval_subset(len(self.dev), self.n_eval)
        out: dict[str, Any] = {"task": self.spec.name, "metric": self.spec.metric, "dev_n": len(dev_idx)}
        if self.spec.kind == "causal-lm":
            tok = self.train.tokenizer
            vocab = getattr(tok, "vocab_size", None) or len(tok)
            out.update(ngram_losses(self.train, self.val, self.dev, dev_idx, int(vocab)))
        else:
            out["constant_predictor"] = constant_predictor(self.spec, self.train, self.dev, dev_idx)
        return out

    def encoders(self) -> tuple[Encoder, Encoder, Encoder | None]:
        """(train, scored during training, scored at the end): (train, val, dev), or (train, dev,
        None) when there is no validation split."""
        if self.val is None:
            return self.train, self.dev, None
        return self.train, self.val, self.dev

    def prepare(self, configs: Sequence[RunConfig], disable: bool | None) -> None:
        """Tokenise every example the runs of ``configs`` will see, before the first run: otherwise
        the first method of each seed pays for it inside its step time (GSM8K with llama2.c's BPE:
        ~15 ms per example)."""
        if not configs:
            return
        name = self.spec.name
        wanted = {
            i
            for seed, steps, batch in {(c.seed, c.steps, c.batch_size) for c in configs}
            for i in batch_order(len(self.train), steps, batch, int(seed)).flatten().tolist()
        }
        self.train.prepare(sorted(wanted), desc=f"tokenize {name} train", disable=disable)
        if self.val is not None:
            self.val.prepare(range(len(self.val)), desc=f"tokenize {name} validation", disable=disable)
        dev_idx = eval_subset(len(self.dev), self.n_eval)
        self.dev.prepare(dev_idx, desc=f"tokenize {name} dev", disable=disable)
