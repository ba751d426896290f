"""``python -m lowrank_lab.finetune``: options, clear errors, and a real (tiny) SST-2 study."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pandas as pd
import pytest
import torch

from lowrank_lab.finetune import build_parser, main
from lowrank_lab.training.tasks import HubDataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_help_explains_every_option_with_examples():
    text = build_parser().format_help()
    for opt in (
        "--task",
        "--methods",
        "--rank",
        "--steps",
        "--seeds",
        "--batch-size",
        "--max-length",
        "--eval-every",
        "--eval-samples",
        "--lr",
        "--resume",
        "--device",
        "--data-dir",
        "--out",
        "--summary-only",
        "--rebuild-merged",
        "--replace-different",
    ):
        assert opt in text
    assert (
        "python -m lowrank_lab.finetune --task sst2 --model minilm --methods lora,pissa,nlora,inttune,full"
        in text
    )
    assert "LoRA-XS run_math_tuning.sh 4e-3" in text  # learning-rate sources are stated


@pytest.mark.slow  # a subprocess
def test_module_runs_as_script():
    out = subprocess.run(
        [sys.executable, "-m", "lowrank_lab.finetune", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "usage: python -m lowrank_lab.finetune" in out.stdout


def test_unknown_method_lists_valid_ones(capsys, tmp_path):
    assert main(["--task", "sst2", "--methods", "lora,lorra", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown adapter method 'lorra'" in err and "Did you mean lora" in err and "pissa" in err


def test_bad_seeds_and_rank_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--task", "sst2", "--seeds", "0,a"])
    assert e.value.code == 2 and "--seeds takes comma-separated integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--task", "sst2", "--rank", "0"])
    assert "must be > 0" in capsys.readouterr().err


def test_missing_data_dir_is_a_clear_error(capsys, tmp_path):
    assert main(["--task", "rte", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m lowrank_lab.finetune: error: --data-dir")
    assert "LOWRANK_LAB_SHARED_DATA" in err
    assert not (tmp_path / "o").exists()  # nothing created before the inputs are known to be good


@pytest.mark.parametrize(
    ("flags", "source"),
    [
        (["--dataset"], HubDataset("nyu-mll/glue", "rte")),
        (["--dataset", "glue"], HubDataset("glue")),
        (["--dataset", "nyu-mll/glue:rte"], HubDataset("nyu-mll/glue", "rte")),
        (["--data-dir", "somewhere"], "somewhere"),
    ],
)
def test_dataset_option_picks_the_data_source(monkeypatch, tmp_path, flags, source):
    seen = {}

    def fake_run_study(base, methods, seeds, **kw):
        seen.update(kw)
        return {"records": [], "summary": "-", "failed": 0}

    monkeypatch.setattr("lowrank_lab.training.finetune_run.run_study", fake_run_study)
    assert main(["--task", "rte", "--methods", "lora", *flags, "--out", str(tmp_path)]) == 0
    assert seen["data_dir"] == source


def test_dataset_and_data_dir_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["--task", "rte", "--dataset", "--data-dir", "x"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_dataset_offline_is_a_clear_error(monkeypatch, capsys, tmp_path):
    def load_dataset(name, config, split):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert main(["--task", "rte", "--dataset", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m lowrank_lab.finetune: error: --dataset nyu-mll/glue:rte: cannot load")
    assert "offline use --data-dir" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is absent")
def test_cuda_without_cuda(capsys, tmp_path):
    assert main(["--task", "sst2", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available on this machine" in capsys.readouterr().err


@pytest.mark.slow  # trains MiniLM on real SST-2
@pytest.mark.data
def test_real_sst2_study_resume_and_summary(shared_data, tmp_path, capsys):
    out = tmp_path / "sst2"
    args = [
        "--task",
        "sst2",
        "--model",
        "minilm",
        "--methods",
        "lora,full",
        "--rank",
        "4",
        "--steps",
        "2",
        "--seeds",
        "0",
        "--batch-size",
        "4",
        "--max-length",
        "32",
        "--eval-every",
        "1",
        "--eval-samples",
        "8",
        "--val-samples",
        "16",
        "--data-dir",
        str(shared_data),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    assert "2 runs (0 diverged, 0 failed)" in capsys.readouterr().out
    rec = json.loads((out / "runs" / "lora-r4-seed0" / "run.json").read_text())
    assert rec["status"] == "finished" and len(rec["train_loss"]) == 2
    # validation (16 held-out training examples) during training, 8 dev examples once at the end
    assert [e["step"] for e in rec["eval"]] == [0, 1, 2] and rec["eval_n"] == 16
    assert rec["dev"]["n"] == 8 and rec["dev"]["step"] == 2 and rec["final_metric"] == rec["dev"]["metric"]
    assert rec["config"]["pooling"] == "mean"  # MiniLM's sentence-transformers pooling
    assert rec["base_params"] == 22_713_986  # all-MiniLM-L6-v2 (with its pooler) + a 2-class head
    assert rec["head_params"] == 384 * 2 + 2
    assert rec["meta"]["command"].startswith("python") and "--task sst2" in rec["meta"]["command"]
    assert (out / "runs" / "full-seed0" / "merged" / "model.safetensors").is_file()
    full = json.loads((out / "runs" / "full-seed0" / "run.json").read_text())
    assert full["train_loss"][0] == rec["train_loss"][0]  # same head, same batch, same base function
    # --resume: nothing is retrained, the records stay as they were
    assert main([*args, "--resume"]) == 0
    assert (
        json.loads((out / "runs" / "lora-r4-seed0" / "run.json").read_text())["train_loss"]
        == rec["train_loss"]
    )
    assert len(pd.read_csv(out / "runs.csv")) == 2
    assert "skip lora-r4-seed0: already finished (--resume)" in capsys.readouterr().err
    # --resume with another setting is refused before any work
    assert main([*args[:-1], "--steps", "3", "--resume"]) == 2
    assert "was made with other settings (steps: stored 2, asked 3)" in capsys.readouterr().err
    assert main(["--task", "sst2", "--out", str(out), "--summary-only"]) == 0
    text = (out / "summary.md").read_text()
    assert "| lora |" in text and "| full |" in text and "PiSSA ends higher than LoRA" in text


def test_status_of_a_missing_study_folder_is_one_line_and_exit_2(tmp_path, capsys):
    from lowrank_lab.finetune import main

    assert main(["--task", "stsb", "--out", str(tmp_path / "nowhere"), "--status"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"python -m lowrank_lab.finetune: error: --out {tmp_path / 'nowhere'}: no such study folder"
    (tmp_path / "empty").mkdir()
    assert main(["--task", "stsb", "--out", str(tmp_path / "empty"), "--status"]) == 0
    assert "no runs yet" in capsys.readouterr().out
