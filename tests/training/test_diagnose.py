"""``python -m lowrank_lab.diagnose`` on a tiny BERT and a tiny SST-2: files, invariants, bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import lowrank_lab.training.models as models
from lowrank_lab.diagnose import main


@pytest.fixture
def tiny_task(monkeypatch, tiny_bert, bert_tokenizer):
    monkeypatch.setattr(models, "load_model", lambda name, spec: tiny_bert(spec.num_labels)().train())
    monkeypatch.setattr(models, "load_tokenizer", lambda name, spec: bert_tokenizer)


def _args(glue_dir, out, methods, *extra):
    return [
        "--task", "sst2", "--data-dir", str(glue_dir), "--methods", methods, "--rank", "2",
        "--batch-size", "8", "--max-length", "16", "--calibration-samples", "16", "--study", "none",
        "--out", str(out), *extra,
    ]  # fmt: skip


def test_diagnostics_files_and_what_they_must_show(tiny_task, glue_dir, tmp_path, capsys):
    out = tmp_path / "diag"
    methods = "lora,pissa,lora-ga,lora-one,eva,corda-ipm,nlora,full"
    assert main(_args(glue_dir, out, methods, "--optimizer", "sgd")) == 0
    df = pd.read_csv(out / "diagnostics.csv")
    assert len(df) == 8 * 12  # one row per method and matrix (2 BERT layers × 6 maps)
    assert {"method", "tensor", "alignment", "update_norm", "grad_norm"} <= set(df.columns)
    by = df.groupby("method")
    assert ((df.alignment >= 0) & (df.alignment <= 1 + 1e-9)).all()
    # Residual and zero-B inits start at the base function; LoRA-One and NLoRA do not.
    for m in ("lora", "pissa", "lora-ga", "eva", "corda-ipm", "full"):
        assert by.output_change.max()[m] < 1e-4, m
    for m in ("lora-one", "nlora"):
        assert by.weight_change.min()[m] > 0, m
    # SGD on full fine-tuning steps along −G exactly: cosine 1, alignment = ‖G_r‖/‖G‖ < 1.
    full = df[df.method == "full"]
    assert (full.cos_neg_grad > 1 - 1e-6).all() and (full.alignment < 1).all()
    # LoRA-GA's first SGD step lies in G's top subspaces far more than LoRA's random A allows.
    assert by.alignment.mean()["lora-ga"] > by.alignment.mean()["lora"]
    # The gradient norm is a property of the matrix and the batch, the same for every method.
    assert df.groupby("tensor").grad_norm.nunique().max() == 1
    angles = pd.read_csv(out / "angles.csv")
    assert set(angles.method_a) | set(angles.method_b) == {
        "pissa",
        "lora-ga",
        "lora-one",
        "eva",
        "corda-ipm",
        "nlora",
    }
    assert ((angles.mean_cos2 >= 0) & (angles.mean_cos2 <= 1 + 1e-9)).all()
    assert "Step-0 diagnostics" in (out / "summary.md").read_text()
    assert (out / "alignment.png").is_file() and (out / "angles.png").is_file()
    assert json.loads((out / "run.json").read_text())["seed"] == 0


def test_alignment_against_a_study(tiny_task, glue_dir, tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    pd.DataFrame(
        {
            "method": ["lora", "pissa", "lora-ga", "lora"],
            "status": ["finished"] * 4,
            "loss_auc": [0.5, 0.45, 0.4, 0.52],
        }
    ).to_csv(study / "runs.csv", index=False)
    out = tmp_path / "d"
    args = _args(glue_dir, out, "lora,pissa,lora-ga")
    args[args.index("--study") + 1] = str(study)
    assert main(args) == 0
    text = (out / "summary.md").read_text()
    assert "Spearman ρ(alignment, loss AUC)" in text and "n = 3" in text
    assert (out / "alignment_vs_convergence.png").is_file()


def test_bad_input_is_one_line_and_status_2(tiny_task, glue_dir, tmp_path, capsys):
    assert main(_args(glue_dir, tmp_path / "o", "lora,head")) == 2
    assert "'head' has no adapter" in capsys.readouterr().err
    assert main(_args(glue_dir, tmp_path / "o", "lora,lorra")) == 2
    assert "unknown adapter method 'lorra'" in capsys.readouterr().err
    args = _args(glue_dir, tmp_path / "o", "eva")
    args[args.index("--rank") + 1] = "100"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "rank=100 is out of range" in err and err.count("\n") == 1


def test_summary_only_rebuilds_from_the_tables(tiny_task, glue_dir, tmp_path):
    out = tmp_path / "d"
    assert main(_args(glue_dir, out, "lora,pissa")) == 0
    (out / "summary.md").unlink()
    study = tmp_path / "study"
    study.mkdir()
    pd.DataFrame(
        {"method": ["lora", "pissa", "x"], "status": ["finished"] * 3, "loss_auc": [0.5, 0.4, 0.3]}
    ).to_csv(study / "runs.csv", index=False)
    assert main(["--task", "sst2", "--out", str(out), "--summary-only", "--study", str(study)]) == 0
    text = (out / "summary.md").read_text()
    assert "--methods lora,pissa" in text  # the measuring command, from run.json
    assert "Only 2 methods in common" in text
    assert main(["--task", "sst2", "--out", str(tmp_path / "none"), "--summary-only"]) == 2
