"""A study of several methods: files on disk, divergence does not stop it, --resume skips."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pandas as pd
import pytest
from transformers import AutoConfig

from lowrank_lab.training import config as config_mod
from lowrank_lab.training import one_run as one_run_mod
from lowrank_lab.training import scheduling as scheduling_mod
from lowrank_lab.training import study as study_mod
from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.record import RunRecord, study_records
from lowrank_lab.training.study import (
    StudyResumeError,
    intruder_counts,
    run_study,
    summarize_existing,
)
from lowrank_lab.utils.lock import OutputLock


def _base(**kw):
    d = dict(task="sst2", method="lora", steps=3, batch_size=4, eval_every=2, rank=2, save_merged=False)
    d.update(kw)
    return RunConfig(**d)


def _run(glue_dir, out, tok, factory, methods=("lora", "head"), seeds=(0,), **kw):
    return run_study(
        _base(**kw.pop("base", {})),
        list(methods),
        list(seeds),
        data_dir=glue_dir,
        out=out,
        progress=False,
        model_factory=factory,
        tokenizer=tok,
        log=lambda m: None,
        argv=["-m", "lowrank_lab.finetune", "--task", "sst2"],
        **kw,
    )


@pytest.mark.slow  # trains a study, ~9 s
def test_study_writes_records_csv_summary_figures(glue_dir, tmp_path, bert_tokenizer, tiny_bert):
    out = tmp_path / "study"
    res = _run(glue_dir, out, bert_tokenizer, tiny_bert(2), methods=("lora", "head"), seeds=(0, 1))
    assert [(r.config.seed, r.config.method) for r in res["records"]] == [
        (0, "lora"),
        (0, "head"),
        (1, "lora"),
        (1, "head"),
    ]  # seed-major
    rec = json.loads((out / "runs" / "lora-r2-seed1" / "run.json").read_text())
    assert rec["schema"] == "lowrank_lab.finetune.run/1" and rec["status"] == "finished"
    assert rec["meta"]["command"].endswith("-m lowrank_lab.finetune --task sst2") and rec["meta"]["seed"] == 1
    assert rec["wall_seconds"] > 0 and len(rec["train_loss"]) == 3
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 and set(runs["status"]) == {"finished"}
    curves = pd.read_csv(out / "curves.csv")
    assert list(curves.columns) == ["method", "seed", "step", "series", "value"]
    assert len(curves[curves.series == "train_loss"]) == 4 * 3
    text = (out / "summary.md").read_text()
    assert (
        "`python -m lowrank_lab.finetune --task sst2`" in text and "| lora |" in text and "| head |" in text
    )
    for f in ("loss_curves", "eval_curves", "metric_vs_params"):
        assert (out / "figures" / f"{f}.png").stat().st_size > 1000


@pytest.mark.slow  # trains a study
def test_divergence_stops_one_run_and_the_study_goes_on(
    glue_dir, tmp_path, bert_tokenizer, tiny_bert, monkeypatch
):
    real = config_mod.default_lr
    monkeypatch.setattr(config_mod, "default_lr", lambda m, k: 1e30 if m == "lora" else real(m, k))
    messages = []
    res = run_study(
        _base(steps=4),
        ["lora", "full"],
        [0],
        data_dir=glue_dir,
        out=tmp_path / "s",
        progress=False,
        model_factory=tiny_bert(2),
        tokenizer=bert_tokenizer,
        log=messages.append,
    )
    status = {r.config.method: r.status for r in res["records"]}
    assert status == {"lora": "diverged", "full": "finished"}
    assert any(m.startswith("DIVERGED: lora (seed 0) stopped at step") for m in messages)
    assert "## Runs that stopped" in (tmp_path / "s" / "summary.md").read_text()


@pytest.mark.slow  # trains a study
def test_failed_run_is_recorded_and_the_study_goes_on(glue_dir, tmp_path, bert_tokenizer, tiny_bert):
    res = run_study(
        _base(extra={"no_such_option": 1}),
        ["lora"],
        [0],
        data_dir=glue_dir,
        out=tmp_path / "f",
        progress=False,
        model_factory=tiny_bert(2),
        tokenizer=bert_tokenizer,
        log=lambda m: None,
    )
    assert res["failed"] == 1
    rec = res["records"][0]
    assert rec.status == "failed" and rec.message.startswith("lora (seed 0) failed: AdapterOptionError")


@pytest.mark.slow  # trains a study
def test_resume_skips_finished_runs_and_rejects_other_settings(
    glue_dir, tmp_path, bert_tokenizer, tiny_bert, monkeypatch
):
    out = tmp_path / "r"
    first = _run(glue_dir, out, bert_tokenizer, tiny_bert(2), methods=("lora",))

    def boom(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(one_run_mod, "train_run", boom)
    again = _run(glue_dir, out, bert_tokenizer, tiny_bert(2), methods=("lora",), resume=True)
    assert again["records"][0].train_loss == first["records"][0].train_loss
    assert len(pd.read_csv(out / "runs.csv")) == 1
    with pytest.raises(
        StudyResumeError, match=r"lora-r2-seed0 was made with other settings \(steps: stored 3, asked 5\)"
    ):
        _run(glue_dir, out, bert_tokenizer, tiny_bert(2), methods=("lora",), resume=True, base={"steps": 5})
    # a default that changed between versions: the stored config says lr None both times, but the
    # rate the run used differs from today's default, so the run is not the one asked for
    monkeypatch.setattr(config_mod, "DEFAULT_HEAD_LR", 1e-3)
    with pytest.raises(StudyResumeError, match=r"head_lr used: stored 0.0004, asked 0.001"):
        _run(glue_dir, out, bert_tokenizer, tiny_bert(2), methods=("lora",), resume=True)
    monkeypatch.undo()
    # a run.json that is not a record this version reads: refused, never silently trained over
    (out / "runs" / "lora-r2-seed0" / "run.json").write_text('{"config": null}')
    with pytest.raises(StudyResumeError, match=r"lora-r2-seed0/run.json is not a run record this version"):
        _run(glue_dir, out, bert_tokenizer, tiny_bert(2), methods=("lora",), resume=True)


@pytest.mark.slow  # trains a study
def test_a_study_extended_with_resume_summarises_every_run_in_the_folder(
    glue_dir, tmp_path, bert_tokenizer, tiny_bert
):
    out = tmp_path / "grow"
    _run(glue_dir, out, bert_tokenizer, tiny_bert(2), methods=("lora",))
    res = _run(glue_dir, out, bert_tokenizer, tiny_bert(2), methods=("head",), seeds=(0, 1), resume=True)
    assert [r.config.method for r in res["records"]] == ["head", "head"]  # this call's runs
    text = (out / "summary.md").read_text()
    assert "| lora |" in text and "| head |" in text  # the earlier call's lora run is still summarised
    assert set(pd.read_csv(out / "curves.csv")["method"]) == {"lora", "head"}
    assert len(pd.read_csv(out / "runs.csv")) == 3


@pytest.mark.slow  # trains a study
def test_summarize_existing_and_intruder_line(glue_dir, tmp_path, bert_tokenizer, tiny_bert):
    out = tmp_path / "x"
    _run(glue_dir, out, bert_tokenizer, tiny_bert(2), methods=("lora", "full"))
    # the layout benchmarks/confirmation_study.sh gives: intruders/<run>/intruders.csv per run
    for run, flags in (("lora-r2-seed0", [1, 1, 0, 1]), ("full-seed0", [0, 0, 0, 0])):
        (out / "intruders" / run).mkdir(parents=True)
        pd.DataFrame({"side": ["left", "left", "left", "right"], "intruder": flags}).to_csv(
            out / "intruders" / run / "intruders.csv", index=False
        )
    records = study_records(out)
    assert intruder_counts(out, records) == {"full": [0.0], "lora": [2.0]}  # right side not counted
    path = summarize_existing(out, [], study_mod.get_task("sst2"))
    text = path.read_text()
    # one seed each: the intruder claim is in the table, not testable (2 paired seeds needed)
    assert "| LoRA (r = 8) has more intruder dimensions than full fine-tuning | 0 |" in text or (
        "has more intruder dimensions" in text and "not testable" in text
    )
    with pytest.raises(FileNotFoundError, match="no run records for task rte"):
        summarize_existing(out, [], study_mod.get_task("rte"))


@pytest.mark.slow  # trains a study
@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_any_hugging_face_model_directory_is_a_model(glue_dir, tmp_path, bert_tokenizer, tiny_bert, task):
    # --model DIR: what a user with bigger hardware passes (here a tiny BERT saved with its tokenizer);
    # the study loads model and tokenizer from the directory itself and gives it the task's head.
    model_dir = tmp_path / "my-bert"
    tiny_bert(2)().save_pretrained(model_dir)
    bert_tokenizer.save_pretrained(model_dir)
    res = run_study(
        _base(task=task, model=str(model_dir), save_merged=True),
        ["lora"],
        [0],
        data_dir=glue_dir,
        out=tmp_path / "s",
        progress=False,
        log=lambda m: None,
    )
    (rec,) = res["records"]
    assert rec.status == "finished", rec.message
    assert rec.config.model == str(model_dir) and len(rec.train_loss) == 3
    merged = AutoConfig.from_pretrained(tmp_path / "s" / "runs" / "lora-r2-seed0" / "merged")
    assert merged.hidden_size == 32 and merged.num_labels == (1 if task == "stsb" else 2)


@pytest.mark.slow  # two trainers, lock polling
@pytest.mark.parametrize("other_finishes", [True, False], ids=["other-finishes", "other-dies"])
def test_two_processes_on_one_study_share_its_runs(
    glue_dir, tmp_path, bert_tokenizer, tiny_bert, monkeypatch, other_finishes
):
    # "Another process" holds lora seed 0's folder; this study trains the head run meanwhile, then
    # waits for lora: it takes the other's record when one is written, else trains lora itself.
    monkeypatch.setattr(scheduling_mod, "LOCK_POLL_SECONDS", 0.05)
    made = _run(glue_dir, tmp_path / "made", bert_tokenizer, tiny_bert(2), methods=("lora",))
    out = tmp_path / "shared"
    held = out / "runs" / "lora-r2-seed0"
    held.mkdir(parents=True)
    other = OutputLock(held).acquire()
    said: list[str] = []

    seen: list[bool] = []

    def the_other_process():
        try:
            deadline = time.monotonic() + 60
            waiting = lambda: any(m.startswith("wait for lora-r2-seed0") for m in said)  # noqa: E731
            while not waiting() and time.monotonic() < deadline:
                time.sleep(0.02)
            seen.append((out / "runs" / "head-r2-seed0" / "run.json").is_file())  # trained meanwhile
            if other_finishes:
                shutil.copy(tmp_path / "made" / "runs" / "lora-r2-seed0" / "run.json", held / "run.json")
        finally:
            other.release()  # never leave the study waiting

    thread = threading.Thread(target=the_other_process)
    thread.start()
    trained: list[str] = []
    real = one_run_mod.train_run

    def counted(cfg, *a, **k):
        trained.append(cfg.method)
        return real(cfg, *a, **k)

    monkeypatch.setattr(one_run_mod, "train_run", counted)
    res = run_study(
        _base(), ["lora", "head"], [0], data_dir=glue_dir, out=out, progress=False, resume=True,
        model_factory=tiny_bert(2), tokenizer=bert_tokenizer, log=said.append,
    )
    thread.join(timeout=60)
    assert seen == [True]
    assert f"later lora-r2-seed0: pid {os.getpid()} on" in said[0]
    assert [r.method for r in res["records"]] == ["lora", "head"]  # the order asked, not the order done
    lora = res["records"][0]
    assert lora.train_loss == made["records"][0].train_loss and lora.status == "finished"
    if other_finishes:
        assert trained == ["head"] and "took lora-r2-seed0: finished by another process" in said
        assert list(pd.read_csv(out / "runs.csv")["method"]) == ["head"]  # the other writes its own row
    else:
        assert trained == ["head", "lora"]
        assert sorted(pd.read_csv(out / "runs.csv")["method"]) == ["head", "lora"]
    assert not list(out.rglob(".lowrank_lab.lock"))  # every lock let go


@pytest.mark.slow  # another process
def test_a_fresh_study_on_a_folder_another_process_trains_in_is_refused(
    glue_dir, tmp_path, bert_tokenizer, tiny_bert
):
    out = tmp_path / "busy"
    held = out / "select" / "lora-r2-seed100-lr0.001"
    held.mkdir(parents=True)
    (out / "runs" / "gone-r2-seed0").mkdir(parents=True)
    (out / "runs" / "gone-r2-seed0" / ".lowrank_lab.lock").write_text('{"pid": 1}')  # its process died
    refusal = rf"pid {os.getpid()} on .* is training lora-r2-seed100-lr0.001 there now; add --resume to share"
    with OutputLock(held, command="the other"):
        with pytest.raises(StudyResumeError, match=refusal):
            _run(glue_dir, out, bert_tokenizer, tiny_bert(2), methods=("lora",))
        assert not (out / "runs.csv").exists()
        assert not (out / "runs" / "gone-r2-seed0" / ".lowrank_lab.lock").exists()  # a dead one's: cleared
        # with --resume it is welcome: it trains the runs nobody holds
        res = _run(glue_dir, out, bert_tokenizer, tiny_bert(2), methods=("lora",), resume=True)
        assert [r.status for r in res["records"]] == ["finished"]


@pytest.mark.slow  # trains a study
def test_status_says_where_each_run_stands(glue_dir, tmp_path, bert_tokenizer, tiny_bert, capsys):
    from lowrank_lab import finetune
    from lowrank_lab.training.checkpoint import save_checkpoint
    from lowrank_lab.training.study import STATUS_COLUMNS, study_status

    out = tmp_path / "st"
    _run(glue_dir, out, bert_tokenizer, tiny_bert(2), methods=("lora", "head"))
    (out / "runs" / "full-seed0").mkdir()  # a folder whose process stopped before its first checkpoint
    stopped = {"step": 2, "lr": 1e-3, "config": {"method": "pissa", "seed": 0, "steps": 3}}
    save_checkpoint(out / "runs" / "pissa-r2-seed0", {}, stopped)  # after step 2; no process goes on
    held = out / "select" / "lora-r2-seed100-lr0.001"
    held.mkdir(parents=True)
    with OutputLock(held):
        table = study_status(out)
        assert finetune.main(["--task", "sst2", "--out", str(out), "--status"]) == 0
    assert list(table.columns) == list(STATUS_COLUMNS)
    state = dict(zip(table["run"], table["state"], strict=True))
    assert state["lora-r2-seed0"] == state["head-r2-seed0"] == "finished"
    assert state["pissa-r2-seed0"] == "interrupted" and state["full-seed0"] == "started"
    assert state["lora-r2-seed100-lr0.001"].startswith(f"training (pid {os.getpid()} on ")
    lora = table.set_index("run").loc["lora-r2-seed0"]
    assert lora["stage"] == "seed" and lora["step"] == lora["steps"] == 3 and 0 <= lora["dev_metric"] <= 1
    assert table.set_index("run").loc["pissa-r2-seed0", "step"] == 2
    head = table.set_index("run").loc["head-r2-seed0"]  # head-only trains its head only: no body rate
    assert pd.isna(head["lr"]) and head["head_lr"] == lora["head_lr"] > 0 and lora["lr"] > 0
    text = capsys.readouterr().out
    assert "| stage | run | method |" in text
    assert f"(5 runs in {out}; the recorded ones took 0.0 CPU-hours)" in text
    assert (table["cpu_hours"].dropna() > 0).sum() == 2
    assert "2 finished" in text and "1 training" in text and "1 interrupted" in text and "1 started" in text
    assert not (held / ".lowrank_lab.lock").exists()  # --status took no lock it kept


def test_a_resumed_run_counts_the_time_of_every_process_that_trained_it():
    from lowrank_lab.training.study import run_cpu_hours

    rec = RunRecord(config=RunConfig(task="gsm8k", method="lora"), meta={"threads": 2})
    rec.run_seconds, rec.wall_seconds = 1980.0, 1044.0  # resumed: the last process took 1044 s of it
    assert run_cpu_hours(rec) == pytest.approx(2 * 1980 / 3600)
    rec.run_seconds = 900.0  # one process: its wall time adds the start and the record's writing
    assert run_cpu_hours(rec) == pytest.approx(2 * 1044 / 3600)
    rec.run_seconds = rec.wall_seconds = None
    assert run_cpu_hours(rec) is None


def test_status_leaves_head_lr_empty_for_a_causal_lm_which_has_no_task_head(tmp_path):
    from lowrank_lab.training.checkpoint import save_checkpoint
    from lowrank_lab.training.study import study_status

    for task in ("gsm8k", "sst2"):  # each stopped after step 1, as a checkpoint holds it
        meta = {"step": 1, "lr": 1e-3, "head_lr": 4e-4, "config": {"task": task, "method": "lora", "seed": 0}}
        save_checkpoint(tmp_path / "runs" / f"{task}-lora-seed0", {}, meta)
    table = study_status(tmp_path).set_index("run")
    assert pd.isna(table.loc["gsm8k-lora-seed0", "head_lr"]) and table.loc["gsm8k-lora-seed0", "lr"] == 1e-3
    assert table.loc["sst2-lora-seed0", "head_lr"] == 4e-4


@pytest.mark.slow  # another process
@pytest.mark.parametrize("resume", [True, False], ids=["resume", "fresh"])
def test_a_run_another_process_finished_meanwhile_is_taken_not_trained_again(
    glue_dir, tmp_path, bert_tokenizer, tiny_bert, monkeypatch, resume
):
    # lora has no record when this call starts; "the other process" finishes it while this one
    # trains the head run, before this one reaches lora: lora must not be trained a second time.
    made = _run(glue_dir, tmp_path / "made", bert_tokenizer, tiny_bert(2), methods=("lora",))
    out = tmp_path / "shared"
    trained: list[str] = []
    real = one_run_mod.train_run

    def head_then_the_other_finishes_lora(cfg, *a, **k):
        trained.append(cfg.method)
        rec = real(cfg, *a, **k)
        (out / "runs" / "lora-r2-seed0").mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "made" / "runs" / "lora-r2-seed0" / "run.json", out / "runs" / "lora-r2-seed0")
        return rec

    monkeypatch.setattr(one_run_mod, "train_run", head_then_the_other_finishes_lora)
    said: list[str] = []
    res = run_study(
        _base(), ["head", "lora"], [0], data_dir=glue_dir, out=out, progress=False, resume=resume,
        model_factory=tiny_bert(2), tokenizer=bert_tokenizer, log=said.append,
    )
    assert trained == ["head"] and "took lora-r2-seed0: finished by another process" in said
    assert res["records"][1].train_loss == made["records"][0].train_loss


def test_status_gives_runs_in_progress_their_budget_left_at_the_pace_of_the_finished_ones(tmp_path, capsys):
    from lowrank_lab import finetune
    from lowrank_lab.training.checkpoint import save_checkpoint
    from lowrank_lab.training.study import study_status

    for seed, (method, pace) in enumerate((("lora", 0.3), ("lora", 0.5), ("full", 1.2))):  # LoRA: 0.4 s
        rec = RunRecord(config=RunConfig(task="sst2", method=method, seed=seed), status="finished",
                        seconds_per_step=pace, steps_done=100)  # fmt: skip
        (tmp_path / "runs" / rec.run_name).mkdir(parents=True)
        rec.write(tmp_path / "runs" / rec.run_name)
    # interrupted at `step` of 1,000, `run` seconds so far (None: a checkpoint that records no time)
    runs = (("lora", 400, 1.0), ("full", 900, None), ("pissa", 0, None), ("dora", 500, 1000.0))
    for method, step, run in runs:
        cfg = {"task": "sst2", "method": method, "seed": 9, "steps": 1000}
        meta = {"step": step, "lr": 1e-3, "config": cfg} | ({"seconds": {"run": run}} if run else {})
        save_checkpoint(tmp_path / "select" / f"{method}-r8-seed9-lr0.001", {}, meta)
    table = study_status(tmp_path).set_index("run")
    left = table["minutes_left"]  # to a tenth of a minute
    assert left["lora-r8-seed9-lr0.001"] == pytest.approx(600 * 0.4 / 60, abs=0.05)  # its method's pace
    assert left["full-r8-seed9-lr0.001"] == pytest.approx(100 * 1.2 / 60, abs=0.05)
    assert left["dora-r8-seed9-lr0.001"] == pytest.approx(500 * 2.0 / 60, abs=0.05)  # no dora: its own pace
    assert left["pissa-r8-seed9-lr0.001"] == pytest.approx(1000 * 0.5 / 60, abs=0.05)  # no time: the study's
    assert table.loc[table["state"] == "finished", "minutes_left"].isna().all()
    assert finetune.main(["--task", "sst2", "--out", str(tmp_path), "--status"]) == 0
    assert "the 4 run(s) in progress have at most 0.5 CPU-hours of budget left" in capsys.readouterr().out
