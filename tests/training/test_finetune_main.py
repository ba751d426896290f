"""``python -m lowrank_lab.finetune`` in-process, end to end on a tiny BERT directory and the tiny GLUE
folder: the quick suite's run of the command (the study tests, which call run_study directly, and the
subprocess ones are marked slow)."""

from __future__ import annotations

import json

import pandas as pd

from lowrank_lab.finetune import main


def _tiny_study(glue_dir, tmp_path, bert_tokenizer, tiny_bert):
    """(out, argv) of one two-step LoRA run of a tiny saved BERT on the fixture's SST-2."""
    model_dir = tmp_path / "bert"
    tiny_bert(2)().save_pretrained(model_dir)
    bert_tokenizer.save_pretrained(model_dir)
    out = tmp_path / "study"
    argv = ["--task", "sst2", "--model", str(model_dir), "--data-dir", str(glue_dir), "--methods", "lora",
            "--rank", "2", "--steps", "2", "--batch-size", "4", "--eval-every", "2", "--max-length", "16",
            "--no-save-merged", "--no-progress", "--out", str(out)]  # fmt: skip
    return out, argv


def test_one_tiny_lora_run_through_the_command(glue_dir, tmp_path, bert_tokenizer, tiny_bert, capsys):
    out, argv = _tiny_study(glue_dir, tmp_path, bert_tokenizer, tiny_bert)
    assert main(argv) == 0
    rec = json.loads((out / "runs" / "lora-r2-seed0" / "run.json").read_text())
    assert rec["status"] == "finished" and len(rec["train_loss"]) == 2
    assert list(pd.read_csv(out / "runs.csv")["method"]) == ["lora"]
    assert (out / "summary.md").is_file() and list((out / "figures").glob("*.png"))
    capsys.readouterr()


def test_resume_with_a_changed_option_is_refused_naming_it(
    glue_dir, tmp_path, bert_tokenizer, tiny_bert, capsys
):
    out, argv = _tiny_study(glue_dir, tmp_path, bert_tokenizer, tiny_bert)
    assert main(argv) == 0
    before = (out / "runs" / "lora-r2-seed0" / "run.json").read_text()
    capsys.readouterr()
    assert main([*argv, "--steps", "3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m lowrank_lab.finetune: error: --resume: ")
    assert "was made with other settings (steps: stored 2, asked 3)" in err
    assert (out / "runs" / "lora-r2-seed0" / "run.json").read_text() == before  # nothing retrained
