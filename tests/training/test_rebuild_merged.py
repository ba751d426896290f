"""``rebuild_merged``: a replay gives back a run's merged weights, checked bit for bit, or nothing."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lowrank_lab.finetune import main
from lowrank_lab.training import one_run as one_run_mod
from lowrank_lab.training import study as study_mod
from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.study import rebuild_merged, run_study


def _study(glue_dir, out, tok, factory, methods, save_merged):
    base = RunConfig(
        task="sst2", method="lora", steps=4, batch_size=4, eval_every=2, rank=2, save_merged=save_merged
    )
    return run_study(
        base,
        list(methods),
        [0],
        data_dir=glue_dir,
        out=out,
        progress=False,
        model_factory=factory,
        tokenizer=tok,
        log=lambda m: None,
    )


def _rebuild(glue_dir, out, tok, factory, **kw):
    messages: list[str] = []
    res = rebuild_merged(
        out,
        study_mod.get_task("sst2"),
        data_dir=glue_dir,
        progress=False,
        model_factory=factory,
        tokenizer=tok,
        log=messages.append,
        **kw,
    )
    return res, messages


def _weights(run_dir):
    return load_file(str(run_dir / "merged" / "model.safetensors"))


@pytest.mark.slow  # trains and replays a study
@pytest.mark.parametrize("method", ["pissa", "full", "head"])
def test_replay_gives_the_weights_the_run_saved(glue_dir, tmp_path, bert_tokenizer, tiny_bert, method):
    # pissa: the SVD residual base; full: every linear map; head: no adapter to merge
    kept, lost = tmp_path / "kept", tmp_path / "lost"
    _study(glue_dir, kept, bert_tokenizer, tiny_bert(2), [method], save_merged=True)
    _study(glue_dir, lost, bert_tokenizer, tiny_bert(2), [method], save_merged=False)
    name = "full-seed0" if method == "full" else f"{method}-r2-seed0"
    before = json.loads((lost / "runs" / name / "run.json").read_text())
    assert not (lost / "runs" / name / "merged").exists()

    res, said = _rebuild(glue_dir, lost, bert_tokenizer, tiny_bert(2))
    assert res == {"rebuilt": [name], "replaced": {}, "failed": {}, "summary": None}
    assert said == [f"rebuilt {lost / 'runs' / name / 'merged'} (replay identical to the record)"]
    want, got = _weights(kept / "runs" / name), _weights(lost / "runs" / name)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    after = json.loads((lost / "runs" / name / "run.json").read_text())
    note = after.pop("merged_rebuilt")
    assert after == before  # the record itself is untouched
    assert note["threads"] == 1 and note["cpu"] and note["checked"] == (
        "training loss at all 4 steps and 3 evaluations identical to the record"
    )
    assert not (lost / "runs" / name / "checkpoint.pt").exists()
    # a second call finds nothing to do
    assert _rebuild(glue_dir, lost, bert_tokenizer, tiny_bert(2))[0]["rebuilt"] == []


@pytest.mark.slow  # trains and replays a study
def test_a_replay_that_differs_from_its_record_keeps_nothing(glue_dir, tmp_path, bert_tokenizer, tiny_bert):
    out = tmp_path / "s"
    _study(glue_dir, out, bert_tokenizer, tiny_bert(2), ["lora", "head"], save_merged=False)
    path = out / "runs" / "lora-r2-seed0" / "run.json"
    rec = json.loads(path.read_text())
    rec["train_loss"][2] += 1e-12  # one bit of step 3 (a different build or thread count)
    path.write_text(json.dumps(rec))

    res, said = _rebuild(glue_dir, out, bert_tokenizer, tiny_bert(2))
    assert res["rebuilt"] == ["head-r2-seed0"] and list(res["failed"]) == ["lora-r2-seed0"]
    assert res["replaced"] == {} and res["summary"] is None
    msg = res["failed"]["lora-r2-seed0"]
    assert msg.startswith("lora-r2-seed0: the replay differs from its record (training loss at step 3: ")
    assert "so its weights were not kept" in msg and "1 thread(s)" in msg and "torch 2." in msg
    assert "(--replace-different)" in msg
    assert f"FAILED: {msg}" in said
    assert not (out / "runs" / "lora-r2-seed0" / "merged").exists()
    assert not (out / "runs" / "lora-r2-seed0" / "checkpoint.pt").exists()
    assert "merged_rebuilt" not in json.loads(path.read_text())


@pytest.mark.slow  # trains and replays a study
def test_a_replay_that_differs_can_replace_its_record(glue_dir, tmp_path, bert_tokenizer, tiny_bert):
    out = tmp_path / "r"
    _study(glue_dir, out, bert_tokenizer, tiny_bert(2), ["lora", "head"], save_merged=False)
    rows_before = pd.read_csv(out / "runs.csv")
    path = out / "runs" / "lora-r2-seed0" / "run.json"
    true = json.loads(path.read_text())
    tampered = {**true, "train_loss": [*true["train_loss"][:2], 9.0, *true["train_loss"][3:]]}
    tampered["final_metric"] = 0.123
    path.write_text(json.dumps(tampered))

    res, said = _rebuild(glue_dir, out, bert_tokenizer, tiny_bert(2), replace_different=True)
    assert res["rebuilt"] == ["head-r2-seed0"] and res["failed"] == {}
    step3 = f"training loss at step 3: recorded 9.0, replayed {true['train_loss'][2]!r}"
    assert res["replaced"] == {"lora-r2-seed0": step3}
    new = json.loads(path.read_text())
    assert new["train_loss"] == true["train_loss"] and new["final_metric"] == true["final_metric"]
    assert new["replaces"]["final_metric"] == 0.123 and new["replaces"]["why"].startswith(
        "replay for merged/ weights differs from the record (training loss at step 3"
    )
    assert new["replaces"]["first_different_step"] == 3
    rel = abs(9.0 - true["train_loss"][2]) / 9.0  # only step 3 differs
    assert new["replaces"]["max_rel_loss_difference"] == float(f"{rel:.3g}")
    assert new["meta"]["cpu"] and new["config"]["save_merged"] is True
    assert (out / "runs" / "lora-r2-seed0" / "merged" / "model.safetensors").is_file()
    rows = pd.read_csv(out / "runs.csv")  # rewritten from the records, in the same order
    assert list(rows["run_dir"]) == list(rows_before["run_dir"]) and len(rows) == 2
    assert rows["final_metric"].tolist() == rows_before["final_metric"].tolist()
    assert res["summary"] == out / "summary.md" and "| lora |" in res["summary"].read_text()


@pytest.mark.slow  # trains and replays a study
def test_evaluations_are_checked_too(glue_dir, tmp_path, bert_tokenizer, tiny_bert):
    out = tmp_path / "e"
    _study(glue_dir, out, bert_tokenizer, tiny_bert(2), ["lora"], save_merged=False)
    path = out / "runs" / "lora-r2-seed0" / "run.json"
    rec = json.loads(path.read_text())
    rec["eval"][1]["loss"] = 0.0
    path.write_text(json.dumps(rec))
    res, _ = _rebuild(glue_dir, out, bert_tokenizer, tiny_bert(2))
    assert "(eval loss at step 2: recorded 0.0, replayed " in res["failed"]["lora-r2-seed0"]


@pytest.mark.slow  # trains a study
def test_named_runs_are_checked_before_any_work(glue_dir, tmp_path, bert_tokenizer, tiny_bert, monkeypatch):
    out = tmp_path / "n"
    _study(glue_dir, out, bert_tokenizer, tiny_bert(2), ["lora"], save_merged=True)
    monkeypatch.setattr(one_run_mod, "train_run", lambda *a, **k: pytest.fail("trained before checking"))
    with pytest.raises(FileNotFoundError, match=r"no run record .*lorra-r2-seed0/run.json for task sst2; "
                       r"runs here: lora-r2-seed0"):
        _rebuild(glue_dir, out, bert_tokenizer, tiny_bert(2), runs=["lorra-r2-seed0"])
    with pytest.raises(ValueError, match=r"lora-r2-seed0/merged exists already; delete it to rebuild it"):
        _rebuild(glue_dir, out, bert_tokenizer, tiny_bert(2), runs=["lora-r2-seed0"])
    path = out / "runs" / "lora-r2-seed0" / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "diverged"}))
    with pytest.raises(ValueError, match=r"is 'diverged', not finished"):
        _rebuild(glue_dir, out, bert_tokenizer, tiny_bert(2), runs=["lora-r2-seed0"])


def test_cli_options_exclude_each_other_and_name_the_missing_study(capsys, tmp_path):
    assert main(["--task", "sst2", "--out", str(tmp_path), "--summary-only", "--rebuild-merged"]) == 2
    assert "--summary-only and --rebuild-merged exclude each other" in capsys.readouterr().err
    assert main(["--task", "sst2", "--out", str(tmp_path), "--rebuild-merged", "lora-r8-seed0"]) == 2
    assert "error: no run record" in capsys.readouterr().err
    assert main(["--task", "sst2", "--out", str(tmp_path), "--replace-different"]) == 2
    assert "--replace-different only applies to --rebuild-merged" in capsys.readouterr().err


@pytest.mark.slow  # trains and replays a study
def test_a_run_another_process_holds_is_not_replayed_under_it(glue_dir, tmp_path, bert_tokenizer, tiny_bert):
    import os

    from lowrank_lab.utils.lock import OutputLock

    out = tmp_path / "s"
    _study(glue_dir, out, bert_tokenizer, tiny_bert(2), ["lora", "head"], save_merged=False)
    with OutputLock(out / "runs" / "lora-r2-seed0", command="another finetune"):
        res, said = _rebuild(glue_dir, out, bert_tokenizer, tiny_bert(2))
    assert res["rebuilt"] == ["head-r2-seed0"] and list(res["failed"]) == ["lora-r2-seed0"]
    assert res["failed"]["lora-r2-seed0"] == (
        f"{out / 'runs' / 'lora-r2-seed0'}: pid {os.getpid()} on {os.uname().nodename} is using it; "
        "rebuild it when it is done"
    )
    assert not (out / "runs" / "lora-r2-seed0" / "merged").exists()
