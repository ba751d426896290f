"""The untuned model's own predictor on a study's dev examples: the reference every gate includes (issue 30).

Fine-tuning must beat what the model already does before a claim about fine-tuning methods can be
tested. What the untuned model does depends on the task:

* classification: a task head on the frozen, untuned encoder, which the study's head-only control
  runs already are (trained by seed beside the methods); nothing is measured here;
* regression on sentence pairs (STS-B): the cosine similarity of the untuned encoder's mean-pooled
  embeddings, scored by Spearman against the gold scores (how all-MiniLM-L6-v2 was trained to be used;
  :func:`~.forgetting.sts_spearman`, the base value of forgetting.csv);
* language modelling (GSM8K): the untuned model's answer loss on the study's dev examples, and its
  exact match of the final number under greedy generation (:func:`~.generate.exact_match`).

``untuned.json`` in the study folder keeps the result (task, model, split, n, metric, and for
language modelling answer_loss and exact_match), so the claims table and its recomputation read a
file, not a model. ``python -m lowrank_lab.claims`` writes it when it is missing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowrank_lab.utils.files import atomic_write_text, read_json_or_empty

from .record import RunRecord
from .tasks import get_task

UNTUNED = "untuned.json"


def read_untuned(out: str | Path) -> dict[str, Any]:
    """The study's ``untuned.json`` ({} when there is none or it is not JSON)."""
    return read_json_or_empty(Path(out) / UNTUNED)


def needs_untuned(task_kind: str) -> bool:
    """Whether a task of ``task_kind`` has an untuned reference to measure (classification reads its
    head-only runs instead)."""
    return task_kind in ("regression", "causal-lm")


def measure_untuned(records: Sequence[RunRecord], data_dir: str | Path) -> dict[str, Any] | None:
    """The untuned reference of the study whose runs are ``records`` (see the module docstring), on
    the dev examples its runs score; None for a classification task."""
    import torch

    cfg = records[0].config
    spec = get_task(cfg.task)
    if not needs_untuned(spec.kind):
        return None
    out: dict[str, Any] = {"task": spec.name, "model": cfg.model, "split": cfg.eval_set}
    if spec.kind == "regression":
        from lowrank_lab.weights import load_hf_model

        from .forgetting import sts_spearman
        from .models import load_tokenizer
        from .tasks import load_scored

        if spec.name != "stsb":
            raise ValueError(f"no untuned predictor known for the regression task {spec.name!r}")
        from .batching import eval_subset

        pairs = load_scored(spec, data_dir, cfg.eval_set)
        n_eval = spec.default_eval_samples if cfg.eval_samples is None else cfg.eval_samples
        pairs = [pairs[i] for i in eval_subset(len(pairs), n_eval)]  # the examples the runs score
        encoder = load_hf_model(cfg.model, head="base").float()
        value = sts_spearman(encoder, load_tokenizer(cfg.model, spec), pairs)
        how = "Spearman of the cosine similarity of the untuned encoder's mean-pooled embeddings"
        out.update(n=len(pairs), metric=value, how=how)
        return out
    from .batching import eval_subset
    from .generate import exact_match
    from .loop import evaluate
    from .models import load_model
    from .study import StudyData

    data = StudyData.load(spec, cfg, data_dir)
    idx = eval_subset(len(data.dev), data.n_eval)
    model = load_model(cfg.model, spec, cfg.pooling)
    device = torch.device("cpu")
    res = evaluate(model, spec, data.dev, idx, batch_size=cfg.eval_batch_size, device=device)
    em = exact_match(model, data.dev, idx, device=device)
    out.update(n=len(idx), metric=res["loss"], answer_loss=res["loss"], exact_match=em,
               how="the untuned model: answer loss (nats per answer token) and greedy exact match of "
               "the final number on the dev examples the runs score")  # fmt: skip
    return out


def write_untuned(out: str | Path, value: dict[str, Any]) -> Path:
    path = Path(out) / UNTUNED
    return atomic_write_text(path, json.dumps(value, indent=2) + "\n")
