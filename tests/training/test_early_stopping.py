"""Early stopping on the validation curve (issue 30, point 8): patience, minimum gain, the best
evaluation's weights kept, plateau against budget, resume, and bad options."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lowrank_lab import finetune
from lowrank_lab.training import loop
from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.loop import Trainer, train_run

from .test_checkpoint import _ctrl_c_after
from .test_loop import _encoders


def _cfg(**kw):
    base = dict(task="sst2", method="lora", steps=20, batch_size=4, eval_every=2, rank=2, save_merged=False)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture
def scripted_curve(monkeypatch):
    """Make the validation metric follow a given sequence, one value per evaluation (step 0 first)."""

    def install(values):
        it = iter(values)

        def fake_evaluate(model, spec, enc, idx, **kw):
            return {"metric": float(next(it)), "loss": 0.5, "collapsed": False}

        monkeypatch.setattr(loop, "evaluate", fake_evaluate)

    return install


def _fit_with_snapshots(cfg, spec, tr, ev, make):
    """Fit ``cfg`` and return (record, trainer, {step: trainable weights after that step})."""
    snaps: dict[int, dict[str, torch.Tensor]] = {}
    trainer = Trainer(cfg, spec, tr, ev, make, validation=True)

    def snap(step, loss):
        snaps[step] = {n: p.detach().clone() for n, p in trainer.named}

    trainer.step_callback = snap
    return trainer.fit(), trainer, snaps


def test_plateau_stops_after_patience_and_keeps_the_best_weights(
    glue_dir, bert_tokenizer, tiny_bert, scripted_curve
):
    # evaluations at steps 0, 2, 4, 6, 8: best at step 4, then two that do not beat it
    scripted_curve([0.5, 0.6, 0.7, 0.69, 0.7])
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    rec, trainer, snaps = _fit_with_snapshots(_cfg(patience=2), spec, tr, ev, tiny_bert(2))
    assert rec.status == "finished" and rec.stop_reason == "plateau"
    assert rec.steps_done == 8 and [e.step for e in rec.evals] == [0, 2, 4, 6, 8]
    assert rec.best_step == 4 and rec.val_metric == pytest.approx(0.7)
    for n, p in trainer.named:  # the weights after step 4, not after step 8
        assert torch.equal(p.detach(), snaps[4][n]), n
    assert any(not torch.equal(snaps[8][n], snaps[4][n]) for n, _ in trainer.named)


def test_gains_below_min_delta_do_not_count(glue_dir, bert_tokenizer, tiny_bert, scripted_curve):
    # gains of 0.003, 0.006, 0.009 over step 2's 0.6, all clearly below min_delta 0.01
    scripted_curve([0.5, 0.6, 0.603, 0.606, 0.609])
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    rec = train_run(_cfg(patience=3, min_delta=0.01), spec, tr, ev, tiny_bert(2), validation=True)
    assert rec.stop_reason == "plateau" and rec.best_step == 2 and rec.steps_done == 8


def test_a_curve_still_improving_runs_the_whole_budget(glue_dir, bert_tokenizer, tiny_bert, scripted_curve):
    scripted_curve([0.1 * k for k in range(11)])  # 0, 2, ..., 20: every evaluation better
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    rec = train_run(_cfg(patience=1), spec, tr, ev, tiny_bert(2), validation=True)
    assert rec.stop_reason == "budget" and rec.steps_done == 20 and rec.best_step == 20


def test_lower_is_better_metrics_stop_on_a_rising_loss(glue_dir, bert_tokenizer, tiny_bert, scripted_curve):
    # a causal LM's answer loss: lower is better, so step 2's 2.0 is the best
    scripted_curve([3.0, 2.0, 2.1, 2.5])
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    spec = dataclasses.replace(spec, higher_is_better=False)
    rec = train_run(_cfg(patience=2), spec, tr, ev, tiny_bert(2), validation=True)
    assert rec.stop_reason == "plateau" and rec.best_step == 2 and rec.val_metric == pytest.approx(2.0)


def test_without_patience_nothing_changes(glue_dir, bert_tokenizer, tiny_bert):
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    rec = train_run(_cfg(steps=4), spec, tr, ev, tiny_bert(2))
    assert rec.stop_reason is None and rec.best_step is None and rec.steps_done == 4
    assert "stop_reason" not in rec.to_dict() and "patience" in rec.to_dict()["config"]


def test_an_interrupted_early_stopping_run_resumes_to_the_same_record(
    glue_dir, bert_tokenizer, tiny_bert, tmp_path
):
    # real evaluations: whatever the curve, the resumed run must stop where the whole run stopped
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    cfg = _cfg(steps=12, patience=3)  # the earliest plateau is at step 6: interrupt after step 5
    whole = train_run(cfg, spec, tr, ev, tiny_bert(2), validation=True)
    assert whole.steps_done >= 6
    _ctrl_c_after(5, cfg, spec, tr, ev, tiny_bert(2), tmp_path, validation=True)
    resumed = train_run(cfg, spec, tr, ev, tiny_bert(2), validation=True, run_dir=tmp_path, resume=True)
    assert resumed.train_loss == whole.train_loss
    assert [(e.step, e.metric) for e in resumed.evals] == [(e.step, e.metric) for e in whole.evals]
    assert (resumed.stop_reason, resumed.best_step, resumed.val_metric) == (
        whole.stop_reason,
        whole.best_step,
        whole.val_metric,
    )


@pytest.mark.parametrize(
    ("kw", "named"),
    [
        ({"patience": 0}, "--patience"),
        ({"patience": -2}, "--patience"),
        ({"min_delta": -0.1}, "--min-delta"),
        ({"min_delta": float("nan")}, "--min-delta"),
        ({"patience": 2, "eval_every": 0}, "--eval-every"),
    ],
)
def test_bad_early_stopping_settings_name_the_option(kw, named):
    with pytest.raises(ValueError, match=named):
        _cfg(**kw)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--patience", "0"], "--patience"),
        (["--min-delta", "-1"], "--min-delta"),
        (["--min-delta", "inf"], "--min-delta"),
        (["--patience", "3", "--eval-every", "0"], "--eval-every"),
    ],
)
def test_the_command_refuses_bad_early_stopping_options_with_status_2(argv, named, tmp_path, capsys):
    try:  # argparse exits; a check after parsing returns the status
        code = finetune.main(["--task", "sst2", "--out", str(tmp_path / "out"), *argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # argparse's usage may come first
    assert code == 2 and "Traceback" not in err and not (tmp_path / "out").exists()
    assert last.startswith("python -m lowrank_lab.finetune: error:") and named in last
