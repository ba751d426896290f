"""Forgetting as the drop of the encoder's own STS-B skill (issue 15, item 9)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from lowrank_lab.finetune import main as finetune_main
from lowrank_lab.training.forgetting import embed, measure_forgetting, sts_spearman
from lowrank_lab.training.tasks import get_task, load_examples


def test_embed_is_the_masked_mean_whatever_the_batch(tiny_pooled, bert_tokenizer):
    torch.manual_seed(0)
    enc = tiny_pooled(2, "mean")().backbone
    sentences = ["a", "a rather longer sentence here", "mid size one"]
    together = embed(enc, bert_tokenizer, sentences, batch_size=3)
    alone = torch.cat([embed(enc, bert_tokenizer, [s], batch_size=1) for s in sentences])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def _fake_run(out, name, method, seed, encoder):
    run = out / "runs" / name
    run.mkdir(parents=True)
    cfg = {"task": "sst2", "method": method, "seed": seed, "rank": 8, "model": "minilm"}
    (run / "run.json").write_text(json.dumps({"config": cfg, "status": "finished", "train_loss": [0.5]}))
    encoder.save_pretrained(run / "merged")


def test_forgetting_is_zero_for_the_base_and_not_when_the_encoder_is_damaged(glue_dir, tmp_path):
    from lowrank_lab.weights import load_hf_model

    out = tmp_path / "study"
    base = load_hf_model("minilm", head="base").float()
    _fake_run(out, "lora-r8-seed0", "lora", 0, base)
    damaged = load_hf_model("minilm", head="base").float()
    with torch.no_grad():
        for layer in damaged.encoder.layer:
            layer.attention.self.query.weight.mul_(-3.0)
    _fake_run(out, "full-seed0", "full", 0, damaged)
    path = measure_forgetting(out, get_task("sst2"), data_dir=glue_dir, say=lambda m: None)
    frame = pd.read_csv(path).set_index("run")
    assert list(frame.columns) == ["method", "rank", "seed", "base_spearman", "tuned_spearman", "drop"]
    pairs = load_examples("stsb", glue_dir, "eval")
    from lowrank_lab.training.models import load_tokenizer

    want = sts_spearman(base, load_tokenizer("minilm", get_task("stsb")), pairs)
    assert frame.loc["lora-r8-seed0", "base_spearman"] == pytest.approx(want)
    assert frame.loc["lora-r8-seed0", "drop"] == pytest.approx(0.0, abs=1e-6)  # same weights
    assert frame.loc["full-seed0", "drop"] != pytest.approx(0.0, abs=1e-3)
    # a second call measures nothing twice
    measure_forgetting(out, get_task("sst2"), data_dir=glue_dir, say=lambda m: None)
    assert len(pd.read_csv(path)) == 2


def test_forgetting_cli_names_an_unknown_run_and_needs_stsb(glue_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="no run nope-seed0 under"):
        measure_forgetting(tmp_path, get_task("sst2"), data_dir=glue_dir, runs=["nope-seed0"])
    (glue_dir / "glue" / "stsb" / "dev.tsv").unlink()
    out = tmp_path / "s"
    _fake_run(out, "lora-r8-seed0", "lora", 0, _Saver())
    code = finetune_main(["--task", "sst2", "--out", str(out), "--data-dir", str(glue_dir), "--forgetting"])
    assert code == 2 and "no stsb eval file" in capsys.readouterr().err


class _Saver:
    """Stands in for an encoder whose merged/ folder exists (the data error comes first)."""

    def save_pretrained(self, path):
        path.mkdir(parents=True)


def test_an_interrupted_measurement_keeps_the_runs_it_finished(glue_dir, tmp_path, monkeypatch):
    from lowrank_lab.training import forgetting
    from lowrank_lab.weights import load_hf_model

    out = tmp_path / "study"
    base = load_hf_model("minilm", head="base").float()
    for name, method, seed in (("full-seed0", "full", 0), ("lora-r8-seed0", "lora", 0)):
        _fake_run(out, name, method, seed, base)
    real, calls = forgetting.sts_spearman, []

    def second_interrupts(*a, **k):  # the base encoder, the first run, then Ctrl-C
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(forgetting, "sts_spearman", second_interrupts)
    with pytest.raises(KeyboardInterrupt):
        measure_forgetting(out, get_task("sst2"), data_dir=glue_dir, say=lambda m: None)
    assert list(pd.read_csv(out / "forgetting.csv")["run"]) == ["full-seed0"]
    monkeypatch.setattr(forgetting, "sts_spearman", real)
    measure_forgetting(out, get_task("sst2"), data_dir=glue_dir, say=lambda m: None)  # the rest only
    assert sorted(pd.read_csv(out / "forgetting.csv")["run"]) == ["full-seed0", "lora-r8-seed0"]
