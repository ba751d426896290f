"""Curve statistics and summary.md on hand-made records (the claims: test_claims.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.record import DevScore, EvalPoint, RunRecord
from lowrank_lab.training.summary import (
    curve_split,
    final_loss,
    late_slope,
    loss_auc,
    machines_line,
    moving_average,
    render_summary,
    replaced_lines,
    stat,
    steps_to_threshold,
    still_rising,
)
from lowrank_lab.training.tasks import get_task

SST2 = get_task("sst2")


def test_moving_average_and_curve_stats():
    assert moving_average([4.0, 2.0, 0.0, 2.0], 2) == [4.0, 3.0, 1.0, 1.0]
    losses = [1.0] * 10 + [0.5] * 10
    assert final_loss(losses) == 0.5
    assert loss_auc(losses) == 0.75
    assert steps_to_threshold(losses, 0.6, window=1) == 11
    assert steps_to_threshold(losses, 0.1) is None


def _curve(values, steps=None, stop_reason=None):
    evals = [EvalPoint(step=20 * i, metric=v, loss=0.5) for i, v in enumerate(values)]
    steps = steps or evals[-1].step
    cfg = RunConfig(task="sst2", method="lora")
    return RunRecord(config=cfg, evals=evals, steps_done=steps, stop_reason=stop_reason)


def test_late_slope_is_the_least_squares_slope_of_the_last_four_evaluations():
    # steps 40..100 (step 0 and 20 left out): y = 0.8 + 0.5/1000 per step, exactly
    s = late_slope(_curve([0.1, 0.2, 0.82, 0.83, 0.84, 0.85]), SST2)
    assert s.n == 4 and s.per_1k_steps == pytest.approx(0.5)
    assert s.low == pytest.approx(0.5) and s.high == pytest.approx(0.5)  # no residual: no width
    # a loss: falling is improving, so the slope is positive
    gsm = get_task("gsm8k")
    assert late_slope(_curve([3.0, 2.9, 2.8, 2.7, 2.6]), gsm).per_1k_steps == pytest.approx(5.0)
    assert late_slope(_curve([0.5, 0.6, 0.7]), SST2) is None  # two evaluations after step 0


def test_still_rising_reads_the_slope_interval_and_the_stop_reason():
    assert still_rising(_curve([0.5, 0.80, 0.82, 0.84, 0.86, 0.88]), SST2) is True
    # noise around a level: the interval straddles zero
    assert still_rising(_curve([0.5, 0.85, 0.86, 0.84, 0.86, 0.85]), SST2) is False
    # a run early stopping ended on its plateau is not rising, whatever its last points
    assert still_rising(_curve([0.5, 0.8, 0.82, 0.84, 0.86], stop_reason="plateau"), SST2) is False
    assert still_rising(_curve([0.5, 0.9]), SST2) is None


def test_stat_mean_and_sample_sd():
    s = stat([1.0, 2.0, 3.0, None, float("nan")])
    assert (s.mean, s.sd, s.n) == (2.0, 1.0, 3)
    assert s.fmt(".1f") == "2.0 ± 1.0"
    assert stat([5.0]).fmt(".1f") == "5.0" and stat([]).fmt() == "–"


def _rec(method, seed, metric, losses, *, adapter=1000, head=10, initial=0.5, status="finished"):
    """A record as run.json holds it, read through RunRecord.from_dict (the one reader)."""
    return RunRecord.from_dict({
        "config": {
            "method": method,
            "seed": seed,
            "task": "sst2",
            "model": "minilm",
            "rank": 8,
            "steps": len(losses),
            "batch_size": 16,
            "warmup_ratio": 0.06,
            "max_grad_norm": 1.0,
            "eval_every": 50,
        },
        "status": status,
        "final_metric": metric if status == "finished" else None,
        "initial_metric": initial,
        "train_loss": losses,
        "eval": [{"step": 0, "metric": initial, "loss": 0.7}],
        "trainable_params": adapter + head,
        "adapter_params": adapter,
        "head_params": head,
        "base_params": 10**6,
        "lr": 4e-4,
        "eval_n": 800,
        "message": "" if status == "finished" else f"{method} stopped at step 3",
    })


def _study(nlora_acc, lora_acc, inttune_acc=(0.80, 0.81, 0.79)):
    recs = []
    for s in range(3):
        recs.append(_rec("lora", s, lora_acc[s], [0.7] * 50 + [0.4] * 50))
        recs.append(_rec("nlora", s, nlora_acc[s], [0.7] * 20 + [0.3] * 80, adapter=1100))
        recs.append(_rec("pissa", s, lora_acc[s], [0.7] * 50 + [0.4] * 50))
        recs.append(_rec("inttune", s, inttune_acc[s], [0.7] * 60 + [0.5] * 40, adapter=20))
    return recs


def test_render_summary_lists_stopped_runs_and_claims():
    recs = _study(nlora_acc=(0.9, 0.9, 0.9), lora_acc=(0.8, 0.8, 0.8))
    recs.append(_rec("full", 0, None, [0.7, 0.7], status="diverged"))
    text = render_summary(
        recs, ["lora", "nlora", "pissa", "inttune", "full"], SST2, title="T", command="python -m x"
    )
    assert text.startswith("# T\n") and "`python -m x`" in text
    assert "| full | 0.0004 | 0/1 |" in text
    assert "## Runs that stopped" in text and "full stopped at step 3" in text
    assert "## Paper claims at this scale" in text and "(no claim applies" in text  # no table passed
    assert not math.isnan(final_loss([1.0]))


def test_machine_line_names_every_machine_and_commit():
    a = {"device": "cpu (1 threads, x86_64)", "versions": {"torch": "2.13.0+cpu"}, "git_commit": "a" * 40}
    b = {**a, "cpu": "AMD EPYC (avx2)", "git_commit": "b" * 40 + "-dirty"}
    recs = [replace(_rec("lora", s, 0.8, [0.5]), meta=m) for s, m in enumerate([a, a, b])]
    assert machines_line(recs) == (
        "cpu (1 threads, x86_64), torch 2.13.0+cpu, CPU model not recorded (2 runs); "
        "cpu (1 threads, x86_64), torch 2.13.0+cpu, AMD EPYC (avx2) (1 run); commits aaaaaaa, bbbbbbb-dirty"
    )
    assert machines_line(recs[:1]).endswith("(1 run); commit aaaaaaa")
    assert "- Machine: cpu (1 threads" in render_summary(recs, ["lora"], SST2, title="T", command=None)


def test_replaced_records_are_said_with_their_old_metric():
    recs = [_rec("lora", 0, 0.80, [0.5]), _rec("head", 1, 0.60, [0.5]), _rec("nlora", 2, 0.7, [0.5])]
    assert replaced_lines(recs) == []
    recs[0].replaces = {"final_metric": 0.79, "first_different_step": 6, "max_rel_loss_difference": 2e-7}
    recs[1].replaces = {"final_metric": 0.63, "first_different_step": 1, "max_rel_loss_difference": 4e-7}
    recs[2].replaces = {"final_metric": 0.70, "first_different_step": 2, "max_rel_loss_difference": 0.15}
    (line,) = replaced_lines(recs)
    assert line.startswith("- 3 runs trained again for their merged weights (`finetune --rebuild-merged")
    assert "lora seed 0, head seed 1, nlora seed 2)" in line and "differ from steps 1–6 on" in line
    assert "by at most 4.0e-07 relative in 2 of them (float32 rounding); by more in nlora seed 2 (1.5e-01)" \
        in line
    assert "final metric moved by 0.0133 on average (max 0.0300)" in line
    assert line in render_summary(recs, ["lora", "head", "nlora"], SST2, title="T", command=None)
    for r in recs[1:]:
        r.replaces = None
    (one,) = replaced_lines(recs)
    assert one.startswith("- 1 run trained again") and "differ from step 6 on, by at most 2.0e-07" in one


def test_a_causal_lm_summary_says_no_task_head_trains():
    gsm = get_task("gsm8k")
    rec = replace(_rec("lora", 0, 2.0, [3.0, 2.5]), head_params=0, trainable_params=1000)
    rec.config = replace(rec.config, task="gsm8k", model="stories260K")
    rec.dev = DevScore(step=2, metric=2.0, loss=2.0, collapsed=False, n=256)
    text = render_summary([rec], ["lora"], gsm, title="T", command=None)
    assert "the 256 test examples the claims read" in text  # GSM8K has no dev split
    assert "- Head: the language model's own output layer, frozen for every method" in text
    assert "- No task head: every method is scored by the model's own next-token loss" in text
    assert "classifier" not in text and "pooler" not in text and "head init" not in text
    sst2 = render_summary([_rec("lora", 0, 0.8, [0.5])], ["lora"], SST2, title="T", command=None)
    assert "- The task head (`classifier`) trains with every method" in sst2 and "No task head" not in sst2


def test_curve_split_is_validation_once_records_carry_a_dev_score():
    old = _rec("lora", 0, 0.8, [0.5])  # before issue 15: dev scored during training
    assert curve_split([old]) == "dev"
    new = replace(old, dev=DevScore(step=1, metric=0.8, loss=0.4, collapsed=False, n=872))
    assert curve_split([old, new]) == "validation"
