"""Data-driven inits inside a fine-tuning run: they calibrate on the run's own training batches
(``calibration_samples``), and ``--scaling``/``--dora`` reach the adapters through ``extra``."""

from __future__ import annotations

import pytest
import torch

from lowrank_lab.training.batching import Encoder, batch_order
from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.loop import calibration_losses, train_run
from lowrank_lab.training.tasks import get_task, load_examples


def _setup(glue_dir, tok):
    spec = get_task("sst2")
    tr = Encoder(spec, tok, 32, load_examples(spec, glue_dir, "train"))
    ev = Encoder(spec, tok, 32, load_examples(spec, glue_dir, "eval"))
    return spec, tr, ev


def _cfg(method, **kw):
    base = dict(task="sst2", method=method, steps=2, batch_size=4, eval_every=0, rank=2, save_merged=False)
    base.update(kw)
    return RunConfig(**base)


@pytest.mark.parametrize("method", ["eva", "corda-ipm", "lora-ga", "lora-one"])
def test_data_driven_inits_train_from_the_runs_training_batches(glue_dir, bert_tokenizer, tiny_bert, method):
    spec, tr, ev = _setup(glue_dir, bert_tokenizer)
    rec = train_run(_cfg(method, extra={"calibration_samples": 8}), spec, tr, ev, tiny_bert(2))
    assert rec.status == "finished" and len(rec.train_loss) == 2
    assert rec.injection["calibration_seconds"] > 0
    again = train_run(_cfg(method, extra={"calibration_samples": 8}), spec, tr, ev, tiny_bert(2))
    assert again.train_loss == rec.train_loss  # deterministic for a seed


def test_calibration_uses_the_first_training_examples_in_batches_of_48(glue_dir, bert_tokenizer):
    spec, tr, _ = _setup(glue_dir, bert_tokenizer)
    cfg = _cfg("eva", steps=30, extra={"calibration_samples": 100})
    order = batch_order(len(tr), cfg.steps, cfg.batch_size, cfg.seed)
    seen = []
    tr_collate = tr.collate
    tr.collate = lambda idx: (seen.append(list(idx)), tr_collate(idx))[1]
    fns = calibration_losses(cfg, spec, tr, order, torch.device("cpu"))
    assert len(fns) == 3  # 48 + 48 + 4
    model = type("M", (), {})()
    for f in fns:
        try:
            f(model)
        except TypeError:
            pass  # the fake model cannot run; only the batch indices matter here
    assert sum(seen, []) == order.flatten()[:100].tolist()
    assert [len(s) for s in seen] == [48, 48, 4]


def test_rslora_and_dora_reach_the_adapters(glue_dir, bert_tokenizer, tiny_bert):
    spec, tr, ev = _setup(glue_dir, bert_tokenizer)
    rec = train_run(
        _cfg("pissa", alpha=4, extra={"scaling_rule": "rslora", "dora": True}), spec, tr, ev, tiny_bert(2)
    )
    assert rec.injection["scaling"] == pytest.approx(4 / 2**0.5)
    plain = train_run(_cfg("pissa", alpha=4), spec, tr, ev, tiny_bert(2))
    n_targets = 2 * 6
    # DoRA adds one magnitude per output row of every target: 32·4 + 64 + 32 per BERT layer
    assert rec.adapter_params - plain.adapter_params == 2 * (32 * 4 + 64 + 32)
    assert n_targets == rec.injection["n_modules"]
    full = train_run(_cfg("full", extra={"dora": True, "scaling_rule": "rslora"}), spec, tr, ev, tiny_bert(2))
    assert full.status == "finished"  # the study-wide options do not apply to full fine-tuning
