"""The capacity frontier (training/frontier.py, issue 30 point 7) on constructed run records."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.frontier import COLUMNS, frontier_table, references_of, write_frontier
from lowrank_lab.training.record import DevScore, RunRecord
from lowrank_lab.training.tasks import get_task

COLA = get_task("cola")


def _rec(method, rank, seed, metric, params, *, stop="plateau", status="finished"):
    return RunRecord(
        config=RunConfig(task="cola", method=method, seed=seed, rank=rank, model="m", steps=100),
        status=status, final_metric=metric, trainable_params=params, stop_reason=stop, train_loss=[0.5] * 4,
        dev=DevScore(step=100, metric=metric, loss=0.5, collapsed=False, n=8),
    )  # fmt: skip


def _records():
    recs = []
    for s, off in enumerate((0.0, 0.01, -0.01)):
        recs.append(_rec("lora", 1, s, 0.30 + off, 1_000))
        recs.append(_rec("lora", 8, s, 0.40 + off, 8_000, stop="budget" if s == 0 else "plateau"))
        recs.append(_rec("lora-xs", 25, s, 0.35 + off, 3_000))
        recs.append(_rec("full", 8, s, 0.45 + off, 22_000_000))
    recs.append(_rec("lora", 16, 0, 0.41, 16_000))  # one seed: no interval
    recs.append(_rec("lora", 4, 0, 0.2, 4_000, status="diverged"))  # not usable: left out
    return recs


def test_one_row_per_method_and_rank_with_t_interval_and_stop_counts():
    frame = frontier_table(_records(), COLA)
    assert list(frame.columns) == COLUMNS
    keyed = {(row["method"], None if pd.isna(row["rank"]) else int(row["rank"])): row
             for row in frame.to_dict("records")}  # fmt: skip
    assert set(keyed) == {("lora", 1), ("lora", 8), ("lora", 16), ("lora-xs", 25), ("full", None)}
    r8 = keyed[("lora", 8)]
    assert r8["n_seeds"] == 3 and r8["mean"] == pytest.approx(0.40)
    half = 4.302653 * 0.01 / math.sqrt(3)  # t(0.975, 2) x sd / sqrt(n)
    assert (r8["ci_low"], r8["ci_high"]) == (pytest.approx(0.40 - half), pytest.approx(0.40 + half))
    assert (r8["plateau_stops"], r8["budget_stops"], r8["seeds"]) == (2, 1, "0,1,2")
    assert keyed[("lora", 16)]["n_seeds"] == 1 and math.isnan(keyed[("lora", 16)]["ci_low"])
    lora = frame[frame["method"] == "lora"]
    assert list(lora["trainable_params"]) == sorted(lora["trainable_params"])  # ordered along the curve


def test_references_are_the_constant_predictor_and_a_measured_probe_only():
    assert references_of({"constant_predictor": 0.0}, {"metric": 0.14, "probe_C": 10.0}) == {
        "constant predictor": 0.0, "linear probe, untuned encoder": 0.14}
    assert references_of({}, {"metric": 0.8}) == {}  # STS-B's cosine is not a probe


def test_write_frontier_writes_csv_markdown_and_figure(tmp_path):
    study = tmp_path / "cola"
    for rec in _records():
        run = study / "runs" / rec.run_name
        run.mkdir(parents=True, exist_ok=True)
        rec.write(run)
    (study / "baselines.json").write_text(json.dumps({"task": "cola", "constant_predictor": 0.0}))
    frame = write_frontier(study, tmp_path / "out")
    assert frame is not None and len(frame) == 5
    back = pd.read_csv(tmp_path / "out" / "frontier_cola.csv")
    assert list(back.columns) == COLUMNS and len(back) == 5
    md = (tmp_path / "out" / "frontier_cola.md").read_text()
    assert "constant predictor 0.0000" in md and "2 plateau, 1 budget" in md
    assert (tmp_path / "out" / "figures" / "frontier_cola.png").stat().st_size > 1000
    assert write_frontier(tmp_path / "empty", tmp_path / "out2") is None


def test_runs_judged_by_exact_match_are_labelled_so_against_the_untuned_model(tmp_path):
    """finetune --eval generate (GSM8K): final_metric is exact match, not the task's answer loss."""
    for s, em in enumerate((0.008, 0.012)):
        rec = RunRecord(
            config=RunConfig(task="gsm8k", method="lora", seed=s, rank=8, model="m", steps=10),
            status="finished", final_metric=em, final_metric_name="exact_match", trainable_params=46_240,
            train_loss=[2.0] * 4,
            dev=DevScore(step=10, metric=2.0, loss=2.0, collapsed=False, n=8, exact_match=em),
        )  # fmt: skip
        (tmp_path / "runs" / rec.run_name).mkdir(parents=True)
        rec.write(tmp_path / "runs" / rec.run_name)
    (tmp_path / "untuned.json").write_text(json.dumps({"answer_loss": 7.0, "exact_match": 0.0}))
    frame = write_frontier(tmp_path, tmp_path / "out")
    assert frame["mean"].iloc[0] == pytest.approx(0.010)
    md = (tmp_path / "out" / "frontier_gsm8k.md").read_text()
    assert md.startswith("Capacity frontier on gsm8k: dev exact match") and "untuned model 0.0000" in md
    assert references_of({}, {"exact_match": 0.0, "answer_loss": 7.0}, "answer_loss") == {}
