"""The untuned model's own predictor on a study's dev examples: the reference every gate includes (issue 30).

Fine-tuning must beat what the model already does before a claim about fine-tuning methods can be
tested. What the untuned model does depends on the task:

* classification: a task head on the frozen, untuned encoder. The study's head-only control runs
  are one such head (trained by seed beside the methods, under the study's own early stopping, which
  can end a head that learns slowly early); :func:`linear_probe` is the other, fitted to convergence:
  L2-regularised logistic regression on the frozen encoder's pooled sentence vectors of the whole
  training split, its strength C and class weighting chosen on the validation split by the task's
  metric, scored on the examples the runs score. That is the linear-probe protocol of representation
  studies (Alain & Bengio 2016, arXiv 1610.01644; Conneau et al. 2018's SentEval, arXiv 1803.05449,
  which also tunes the L2 penalty on a validation split), so the gate asks fine-tuning to beat the
  best the untuned encoder can do with a linear head, not an early-stopped one;
* regression on sentence pairs (STS-B): the cosine similarity of the untuned encoder's mean-pooled
  embeddings, scored by Spearman against the gold scores (how all-MiniLM-L6-v2 was trained to be used;
  :func:`~.forgetting.sts_spearman`, the base value of forgetting.csv);
* language modelling (GSM8K): the untuned model's answer loss on the study's dev examples, and its
  exact match of the final number under greedy generation (:func:`~.generate.exact_match`).

``untuned.json`` in the study folder keeps the result (task, model, split, n, metric; for
language modelling answer_loss and exact_match; for classification the probe's chosen C, class
weighting and validation score), so the claims table and its recomputation read a
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
    """Whether a task of ``task_kind`` has an untuned reference to measure (every kind the study
    trains: classification, regression, causal-lm)."""
    return task_kind in ("classification", "regression", "causal-lm")


#: The probe's grid (:func:`linear_probe`): scikit-learn's inverse L2 strength C over six decades,
#: 1e-3 .. 1e2 (SentEval tunes the L2 penalty over decades likewise), crossed with plain and balanced
#: class weights (CoLA is 70% acceptable, and Matthews correlation rewards the minority class). A
#: first SST-2 measurement on 1e-2 .. 1e2 chose the edge 1e-2, hence the decade below it; the
#: result records ``probe_C_at_edge`` so a choice at either end is visible.
PROBE_C = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
PROBE_CLASS_WEIGHT = (None, "balanced")


def _pooled(model, enc, indices: Sequence[int], batch_size: int = 128):
    """The pooled sentence vectors (n, hidden) of ``enc``'s examples ``indices``, in their order;
    batches go by token length so little is padded."""
    import torch

    order = sorted(range(len(indices)), key=lambda j: enc.length(indices[j]))
    chunks, where = [], []
    with torch.no_grad():
        for lo in range(0, len(order), batch_size):
            pos = order[lo : lo + batch_size]
            batch = enc.collate([indices[j] for j in pos])
            batch.pop("target")
            chunks.append(model.pool(**batch).float())
            where += pos
    feats = torch.cat(chunks)
    out = torch.empty_like(feats)
    out[torch.tensor(where)] = feats
    return out.numpy()


def _targets(enc, indices: Sequence[int]):
    import numpy as np

    return np.array([enc.feature(int(i)).target for i in indices])


def linear_probe(model, data, metric: str, eval_indices: Sequence[int]) -> dict[str, Any]:
    """A logistic-regression probe on the frozen encoder of ``model`` (a pooled classifier), fitted
    on ``data.train``, its C and class weight (:data:`PROBE_C`, :data:`PROBE_CLASS_WEIGHT`) chosen on
    ``data.val`` by ``metric`` (ties: the smaller C, then no weighting, so the choice is stable),
    scored on ``data.dev[eval_indices]``. Features are standardised on the training split (the
    fit's scale, not the data's, then sets what C means)."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from .metrics import METRICS

    if not hasattr(model, "pool"):
        raise ValueError("the linear probe needs a pooled model (finetune --pooling mean, cls or max)")
    if data.val is None:
        raise ValueError("the linear probe chooses its C on the validation split: the study has none")
    score = METRICS[metric]
    model.eval()
    train_idx, val_idx = list(range(len(data.train))), list(range(len(data.val)))
    x_tr, y_tr = _pooled(model, data.train, train_idx), _targets(data.train, train_idx)
    x_va, y_va = _pooled(model, data.val, val_idx), _targets(data.val, val_idx)
    x_ev, y_ev = _pooled(model, data.dev, eval_indices), _targets(data.dev, eval_indices)
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_va, x_ev = scaler.transform(x_tr), scaler.transform(x_va), scaler.transform(x_ev)
    best = None
    for weight in PROBE_CLASS_WEIGHT:
        for c in PROBE_C:
            fit = LogisticRegression(C=c, class_weight=weight, max_iter=2000).fit(x_tr, y_tr)
            val = float(score(torch.as_tensor(fit.predict(x_va)), torch.as_tensor(y_va)))
            if best is None or val > best[0] + 1e-12:
                best = (val, c, weight, fit)
    val, c, weight, fit = best
    metric_value = float(score(torch.as_tensor(fit.predict(x_ev)), torch.as_tensor(y_ev)))
    return {"metric": metric_value, "probe_C": c, "probe_class_weight": weight or "none",
            "probe_C_at_edge": c in (min(PROBE_C), max(PROBE_C)), "probe_val_metric": val,
            "train_n": len(train_idx), "val_n": len(val_idx)}  # fmt: skip


def measure_untuned(records: Sequence[RunRecord], data_dir: str | Path) -> dict[str, Any] | None:
    """The untuned reference of the study whose runs are ``records`` (see the module docstring), on
    the dev examples its runs score; None for a classification task."""
    import torch

    cfg = records[0].config
    spec = get_task(cfg.task)
    if not needs_untuned(spec.kind):
        return None
    out: dict[str, Any] = {"task": spec.name, "model": cfg.model, "split": cfg.eval_set}
    if spec.kind == "classification":
        from .batching import eval_subset
        from .models import load_model
        from .study_data import StudyData

        data = StudyData.load(spec, cfg, data_dir)  # resolves the model once: data.model
        idx = eval_subset(len(data.dev), data.n_eval)
        probe = linear_probe(load_model(data.model, spec), data, spec.metric, idx)
        how = ("logistic regression on the frozen untuned encoder's pooled sentence vectors (standardised), "
               f"C in {list(PROBE_C)} x class weight none/balanced chosen on the validation split")
        out.update(n=len(idx), **probe, how=how)
        return out
    if spec.kind == "regression":
        from lowrank_lab.weights import load_hf_model

        from .forgetting import sts_spearman
        from .models import load_tokenizer, resolve_model
        from .tasks import load_scored

        if spec.name != "stsb":
            raise ValueError(f"no untuned predictor known for the regression task {spec.name!r}")
        from .batching import eval_subset

        pairs = load_scored(spec, data_dir, cfg.eval_set)
        n_eval = spec.default_eval_samples if cfg.eval_samples is None else cfg.eval_samples
        pairs = [pairs[i] for i in eval_subset(len(pairs), n_eval)]  # the examples the runs score
        model = resolve_model(cfg.model, spec, cfg.pooling)  # once, for the encoder and its tokenizer
        encoder = load_hf_model(model.location, head="base").float()
        value = sts_spearman(encoder, load_tokenizer(model, spec), pairs)
        how = "Spearman of the cosine similarity of the untuned encoder's mean-pooled embeddings"
        out.update(n=len(pairs), metric=value, how=how)
        return out
    from .batching import eval_subset
    from .generate import exact_match
    from .loop import evaluate
    from .models import load_model
    from .study_data import StudyData

    data = StudyData.load(spec, cfg, data_dir)  # resolves the model once: data.model
    idx = eval_subset(len(data.dev), data.n_eval)
    model = load_model(data.model, spec)
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
