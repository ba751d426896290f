"""Curve statistics and the claim rule on hand-made records."""

from __future__ import annotations

import math

import pytest

from lowrank_lab.training.summary import (
    claims,
    final_loss,
    loss_auc,
    machines_line,
    method_rows,
    moving_average,
    render_summary,
    replaced_lines,
    stat,
    steps_to_threshold,
    verdict,
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


def test_verdict_rule():
    assert verdict(0.05, 0.01) == "confirms"
    assert verdict(-0.05, 0.01) == "contradicts"
    assert verdict(0.01, 0.01) == "inconclusive"
    assert verdict(0.5, float("nan")) == "inconclusive"


def test_stat_mean_and_sample_sd():
    s = stat([1.0, 2.0, 3.0, None, float("nan")])
    assert (s.mean, s.sd, s.n) == (2.0, 1.0, 3)
    assert s.fmt(".1f") == "2.0 ± 1.0"
    assert stat([5.0]).fmt(".1f") == "5.0" and stat([]).fmt() == "–"


def _rec(method, seed, metric, losses, *, adapter=1000, head=10, initial=0.5, status="finished"):
    return {
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
    }


def _study(nlora_acc, lora_acc, inttune_acc=(0.80, 0.81, 0.79)):
    recs = []
    for s in range(3):
        recs.append(_rec("lora", s, lora_acc[s], [0.7] * 50 + [0.4] * 50))
        recs.append(_rec("nlora", s, nlora_acc[s], [0.7] * 20 + [0.3] * 80, adapter=1100))
        recs.append(_rec("pissa", s, lora_acc[s], [0.7] * 50 + [0.4] * 50))
        recs.append(_rec("inttune", s, inttune_acc[s], [0.7] * 60 + [0.5] * 40, adapter=20))
    return recs


def test_claims_confirm_contradict_inconclusive():
    methods = ["lora", "nlora", "pissa", "inttune"]
    recs = _study(nlora_acc=(0.90, 0.91, 0.90), lora_acc=(0.85, 0.86, 0.85))
    rows = method_rows(recs, methods, SST2, threshold=0.4)
    by = {c["claim"].split(" ")[0]: c for c in claims(rows, SST2)}
    assert by["NLoRA"]["verdict"] == "confirms"  # lower loss area and higher accuracy, beyond 2 s.e.
    assert "steps to threshold NLoRA 24 ± 0 (3/3) vs LoRA 55 ± 0 (3/3)" in by["NLoRA"]["evidence"]
    assert by["PiSSA"]["verdict"] == "inconclusive"  # identical numbers
    # IntTune: gain 0.30 of LoRA's 0.353 over the step-0 metric 0.5 (85 %) with 2 % of the parameters.
    assert by["IntTune"]["verdict"] == "confirms"
    assert "2.00% of its adapter parameters" in by["IntTune"]["evidence"]
    assert by["LoRA"]["verdict"] == "pending"

    recs = _study(nlora_acc=(0.80, 0.81, 0.80), lora_acc=(0.85, 0.86, 0.85), inttune_acc=(0.55, 0.56, 0.55))
    rows = method_rows(recs, methods, SST2, threshold=0.4)
    by = {c["claim"].split(" ")[0]: c for c in claims(rows, SST2)}
    assert by["NLoRA"]["verdict"] == "contradicts"  # faster, but ends lower
    assert by["IntTune"]["verdict"] == "contradicts"  # keeps 15 % of the gain


def test_one_seed_uses_binomial_error_for_accuracy():
    recs = [_rec("lora", 0, 0.80, [0.5] * 10), _rec("pissa", 0, 0.90, [0.5] * 10)]
    rows = method_rows(recs, ["lora", "pissa"], SST2, threshold=0.5)
    c = next(c for c in claims(rows, SST2) if c["claim"].startswith("PiSSA"))
    # s.e. = sqrt(.8·.2/800 + .9·.1/800) = 0.0177; d = 0.10 > 2 s.e.
    assert c["verdict"] == "confirms" and "+0.1000 ± 0.0354 (2 s.e.)" in c["evidence"]


def test_lower_is_better_metric_flips_the_direction():
    gsm = get_task("gsm8k")
    recs = [
        _rec(m, s, v + 0.01 * s, [2.0] * 10) for s in range(3) for m, v in (("lora", 2.0), ("pissa", 1.5))
    ]
    rows = method_rows(recs, ["lora", "pissa"], gsm, threshold=2.0)
    c = next(c for c in claims(rows, gsm) if c["claim"].startswith("PiSSA"))
    assert c["verdict"] == "confirms"  # PiSSA's answer loss is lower


def test_render_summary_lists_stopped_runs_and_claims():
    recs = _study(nlora_acc=(0.9, 0.9, 0.9), lora_acc=(0.8, 0.8, 0.8))
    recs.append(_rec("full", 0, None, [0.7, 0.7], status="diverged"))
    text = render_summary(
        recs, ["lora", "nlora", "pissa", "inttune", "full"], SST2, title="T", command="python -m x"
    )
    assert text.startswith("# T\n") and "`python -m x`" in text
    assert "| full | 0.0004 | 0/1 |" in text
    assert "## Runs that stopped" in text and "full stopped at step 3" in text
    assert text.count("— **") == 4
    assert not math.isnan(final_loss([1.0]))


def test_claim_needs_both_methods():
    rows = method_rows([_rec("lora", 0, 0.8, [0.5])], ["lora"], SST2, threshold=0.5)
    assert all(c["verdict"] in ("not run", "pending") for c in claims(rows, SST2))


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_no_gain_is_inconclusive(value):
    recs = [_rec("lora", s, 0.5 + value * 0.01 * s, [0.5] * 5) for s in range(3)]
    recs += [_rec("inttune", s, 0.5, [0.5] * 5, adapter=10) for s in range(3)]
    rows = method_rows(recs, ["lora", "inttune"], SST2, threshold=0.5)
    c = next(c for c in claims(rows, SST2) if c["claim"].startswith("IntTune"))
    assert c["verdict"] == "inconclusive"


def test_machine_line_names_every_machine_and_commit():
    a = {"device": "cpu (1 threads, x86_64)", "versions": {"torch": "2.13.0+cpu"}, "git_commit": "a" * 40}
    b = {**a, "cpu": "AMD EPYC (avx2)", "git_commit": "b" * 40 + "-dirty"}
    recs = [{**_rec("lora", s, 0.8, [0.5]), "meta": m} for s, m in enumerate([a, a, b])]
    assert machines_line(recs) == (
        "cpu (1 threads, x86_64), torch 2.13.0+cpu, CPU model not recorded (2 runs); "
        "cpu (1 threads, x86_64), torch 2.13.0+cpu, AMD EPYC (avx2) (1 run); commits aaaaaaa, bbbbbbb-dirty"
    )
    assert machines_line(recs[:1]).endswith("(1 run); commit aaaaaaa")
    assert "- Machine: cpu (1 threads" in render_summary(recs, ["lora"], SST2, title="T", command=None)


def test_replaced_records_are_said_with_their_old_metric():
    recs = [_rec("lora", 0, 0.80, [0.5]), _rec("head", 1, 0.60, [0.5]), _rec("nlora", 2, 0.7, [0.5])]
    assert replaced_lines(recs) == []
    recs[0]["replaces"] = {"final_metric": 0.79, "first_different_step": 6, "max_rel_loss_difference": 2e-7}
    recs[1]["replaces"] = {"final_metric": 0.63, "first_different_step": 1, "max_rel_loss_difference": 4e-7}
    recs[2]["replaces"] = {"final_metric": 0.70, "first_different_step": 2, "max_rel_loss_difference": 0.15}
    (line,) = replaced_lines(recs)
    assert line.startswith("- 3 runs trained again for their merged weights (`finetune --rebuild-merged")
    assert "lora seed 0, head seed 1, nlora seed 2)" in line and "differ from steps 1–6 on" in line
    assert "by at most 4.0e-07 relative in 2 of them (float32 rounding); by more in nlora seed 2 (1.5e-01)" \
        in line
    assert "final metric moved by 0.0133 on average (max 0.0300)" in line
    assert line in render_summary(recs, ["lora", "head", "nlora"], SST2, title="T", command=None)
    for r in recs[1:]:
        del r["replaces"]
    (one,) = replaced_lines(recs)
    assert one.startswith("- 1 run trained again") and "differ from step 6 on, by at most 2.0e-07" in one
