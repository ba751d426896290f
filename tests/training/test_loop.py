"""One run: determinism, same data for every method, divergence, records, merged weights."""

from __future__ import annotations

import math
import time

import pytest
import torch
from safetensors.torch import load_file

from lowrank_lab.training.batching import Encoder
from lowrank_lab.training.config import RunConfig, default_lr, method_family
from lowrank_lab.training.loop import train_run
from lowrank_lab.training.tasks import get_task, load_examples


def _encoders(task, glue_dir, tok, max_length=32):
    spec = get_task(task)
    return (
        spec,
        Encoder(spec, tok, max_length, load_examples(spec, glue_dir, "train")),
        Encoder(spec, tok, max_length, load_examples(spec, glue_dir, "eval")),
    )


def _cfg(method="lora", **kw):
    base = dict(task="sst2", method=method, steps=4, batch_size=4, eval_every=2, rank=2, save_merged=False)
    base.update(kw)
    return RunConfig(**base)


def test_same_seed_same_curve_other_seed_other_curve(glue_dir, bert_tokenizer, tiny_bert):
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    a = train_run(_cfg(), spec, tr, ev, tiny_bert(2))
    b = train_run(_cfg(), spec, tr, ev, tiny_bert(2))
    c = train_run(_cfg(seed=1), spec, tr, ev, tiny_bert(2))
    assert a.status == "finished" and len(a.train_loss) == 4
    assert a.train_loss == b.train_loss  # bit-identical on the CPU
    assert [e.metric for e in a.evals] == [e.metric for e in b.evals]
    assert a.train_loss != c.train_loss


def test_every_method_sees_the_same_first_batch(glue_dir, bert_tokenizer, tiny_bert):
    # LoRA (B = 0), PiSSA (residual base), full fine-tuning and the head-only control compute the
    # base model's function at step 1, so with the same head and batch their first losses agree.
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    first = {
        m: train_run(_cfg(m, steps=1, eval_every=0), spec, tr, ev, tiny_bert(2)).train_loss[0]
        for m in ("lora", "pissa", "full", "head")
    }
    assert first["pissa"] == pytest.approx(first["lora"], abs=1e-5)
    assert first["full"] == first["lora"] == first["head"]


def test_record_fields_and_eval_schedule(glue_dir, bert_tokenizer, tiny_bert):
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    rec = train_run(_cfg(steps=5, eval_every=2), spec, tr, ev, tiny_bert(2))
    assert [e.step for e in rec.evals] == [0, 2, 4, 5]
    assert rec.eval_n == 20
    assert rec.trainable_params == rec.adapter_params + rec.head_params
    assert rec.head_params == 32 * 2 + 2
    # LoRA at r = 2 on the six linear maps of 2 BERT layers: r·(m + n) each.
    per_layer = 2 * (3 * (32 + 32) + (32 + 32) + (32 + 64) + (64 + 32))
    assert rec.adapter_params == 2 * per_layer
    assert rec.lr == default_lr("lora", "classification") == 4e-4
    assert rec.head_lr == 4e-4  # one head rate for every method
    assert train_run(_cfg("full", steps=1), spec, tr, ev, tiny_bert(2)).head_lr == 4e-4
    assert rec.peak_memory_mb > 0 and rec.memory_kind == "rss"
    assert rec.init_seconds >= 0 and rec.seconds_per_step > 0
    assert (
        rec.initial_metric == rec.evals[0].metric and rec.final_metric == rec.evals[-1].metric
    )


def test_train_seconds_count_the_steps_and_no_evaluation(glue_dir, bert_tokenizer, tiny_bert, monkeypatch):
    # An evaluation that takes 0.4 s, steps that take ~10 ms: the step-0 evaluation, which runs
    # before the first step, must not be taken off the steps' time (it was: train_seconds < 0).
    from lowrank_lab.training import loop

    real = loop.evaluate

    def slow(*a, **k):
        time.sleep(0.4)
        return real(*a, **k)

    monkeypatch.setattr(loop, "evaluate", slow)
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    rec = train_run(_cfg(steps=4, eval_every=2), spec, tr, ev, tiny_bert(2))
    assert [e.step for e in rec.evals] == [0, 2, 4] and rec.eval_seconds >= 3 * 0.4
    assert 0 < rec.train_seconds < 0.4  # four tiny steps, none of the three 0.4 s evaluations
    assert rec.train_seconds + rec.eval_seconds <= rec.run_seconds


def test_head_only_trains_just_the_head(glue_dir, bert_tokenizer, tiny_bert):
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    rec = train_run(_cfg("head"), spec, tr, ev, tiny_bert(2))
    assert rec.trainable_params == rec.head_params == 66 and rec.adapter_params == 0


def test_nan_loss_stops_the_run_naming_method_and_step(glue_dir, bert_tokenizer, tiny_bert):
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    make = tiny_bert(2)

    def poisoned():
        m = make()
        with torch.no_grad():
            m.classifier.weight.fill_(float("nan"))
        return m

    rec = train_run(_cfg("lora"), spec, tr, ev, poisoned)
    assert rec.status == "diverged" and rec.diverged_step == 1
    assert rec.message.startswith("lora (seed 0) stopped at step 1: training loss nan is not finite")
    assert rec.final_metric is None and rec.train_loss == []


def test_exploding_loss_stops_the_run(glue_dir, bert_tokenizer, tiny_bert):
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    rec = train_run(
        _cfg("full", lr=50.0, head_lr=50.0, steps=30, explode_factor=1.5), spec, tr, ev, tiny_bert(2)
    )
    assert rec.status == "diverged"
    assert f"stopped at step {rec.diverged_step}" in rec.message
    assert "full (seed 0)" in rec.message and "lower --lr (was 50)" in rec.message
    assert len(rec.train_loss) == rec.diverged_step - 1


def test_merged_weights_are_saved_and_differ_from_base(glue_dir, bert_tokenizer, tiny_bert, tmp_path):
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    rec = train_run(_cfg("lora", save_merged=True, lr=1e-2), spec, tr, ev, tiny_bert(2), run_dir=tmp_path)
    assert rec.merged_dir == "merged"
    sd = load_file(tmp_path / "merged" / "model.safetensors")
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert key in sd and not any(".A" in k or "lora" in k for k in sd)  # a plain HF model again
    torch.manual_seed(0)
    base = tiny_bert(2)()
    assert not torch.allclose(sd[key], base.state_dict()[key])  # LoRA's update was folded in
    assert (tmp_path / "merged" / "config.json").is_file()


def test_regression_task_reports_spearman(glue_dir, bert_tokenizer, tiny_bert):
    spec, tr, ev = _encoders("stsb", glue_dir, bert_tokenizer)
    rec = train_run(_cfg("lora", task="stsb"), spec, tr, ev, tiny_bert(1))
    assert rec.status == "finished"
    assert -1.0 <= rec.final_metric <= 1.0


def test_causal_lm_answer_loss(glue_dir, char_tokenizer, tiny_llama):
    spec, tr, ev = _encoders("gsm8k", glue_dir, char_tokenizer, max_length=128)
    rec = train_run(_cfg("lora", task="gsm8k", lr=1e-2), spec, tr, ev, tiny_llama)
    assert rec.status == "finished" and rec.head_params == 0
    e0, e1 = rec.evals[0], rec.evals[-1]
    assert e0.metric == e0.loss and math.isfinite(e0.metric)
    assert e0.metric == pytest.approx(math.log(64), rel=0.1)  # random init ≈ uniform over 64 tokens
    assert e1.metric < e0.metric


def test_method_families():
    assert method_family("lora") == method_family("pissa") == method_family("nlora") == "lora"
    assert method_family("inttune") == method_family("lora-xs") == method_family("loldu") == "core"
    assert method_family("full") == "full"
    assert default_lr("inttune", "causal-lm") == 4e-3 and default_lr("full", "regression") == 2e-5


@pytest.mark.data
def test_real_stories260k_on_gsm8k(shared_data, stories260k):
    # The real llama2.c model and tokenizer through the weights layer; short sequences keep it fast.
    from lowrank_lab.training.models import load_model, load_tokenizer

    spec = get_task("gsm8k")
    tok = load_tokenizer("stories260K", spec)
    examples = load_examples(spec, shared_data, "eval")[:6]
    tr, ev = Encoder(spec, tok, 96, examples), Encoder(spec, tok, 96, examples[:4])
    rec = train_run(
        _cfg("lora", task="gsm8k", model="stories260K", steps=2, batch_size=2, eval_every=0),
        spec,
        tr,
        ev,
        lambda: load_model("stories260K", spec),
    )
    assert rec.status == "finished" and rec.head_params == 0
    assert rec.injection["n_modules"] == 35  # wq wk wv wo w1 w2 w3 in each of 5 layers
    assert rec.base_params == 260_032
    # A TinyStories model on grade-school maths: far from its training text, yet a finite loss
    # of a few nats per answer token (uniform over 512 tokens would be ln 512 = 6.2).
    assert 1.0 < rec.initial_metric < 12.0


@pytest.mark.gpu
def test_cuda_run_records_cuda_memory(glue_dir, bert_tokenizer, tiny_bert):
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    rec = train_run(_cfg("lora", device="cuda"), spec, tr, ev, tiny_bert(2))
    assert rec.status == "finished" and rec.memory_kind == "cuda_max_allocated"
    assert rec.peak_memory_mb > 0
