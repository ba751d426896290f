"""Intruder counts across the ε sweep (training/intruder_sweep.py, issue 30 point 9)."""

from __future__ import annotations

import pandas as pd
import pytest

from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.intruder_sweep import COLUMNS, run_totals, sweep_markdown, sweep_table, write_sweep
from lowrank_lab.training.record import RunRecord


def _study(tmp_path):
    study = tmp_path / "sst2"
    for method, rank in (("lora", 1), ("full", 8)):
        for seed in range(3):
            rec = RunRecord(config=RunConfig(task="sst2", method=method, seed=seed, rank=rank, model="m"),
                            status="finished", final_metric=0.9)  # fmt: skip
            run = study / "runs" / rec.run_name
            run.mkdir(parents=True)
            rec.write(run)
            rows = []
            for eps in (0.5, 0.9):
                for module in ("query", "value"):
                    left = (seed + 1) * (2 if method == "lora" else 0) + (eps > 0.6)
                    rows += [{"side": "left", "module": module, "epsilon": eps, "count": left},
                             {"side": "right", "module": module, "epsilon": eps, "count": 100}]  # fmt: skip
            (study / "intruders" / rec.run_name).mkdir(parents=True)
            pd.DataFrame(rows).to_csv(study / "intruders" / rec.run_name / "sweep.csv", index=False)
    return study


def test_totals_sum_left_side_matrices_per_run_and_epsilon(tmp_path):
    totals = run_totals(_study(tmp_path))
    assert len(totals) == 2 * 3 * 2  # methods x seeds x epsilons
    lora2 = totals[(totals["run"] == "lora-r1-seed2") & (totals["epsilon"] == 0.9)]
    assert lora2["count"].tolist() == [2 * ((2 + 1) * 2 + 1)]  # two modules, right side left out


def test_table_gives_mean_and_t_interval_per_method_and_epsilon(tmp_path):
    frame = sweep_table(_study(tmp_path))
    assert list(frame.columns) == COLUMNS and len(frame) == 4
    lora = frame[(frame["method"] == "lora") & (frame["epsilon"] == 0.5)].iloc[0]
    assert lora["n_seeds"] == 3 and lora["mean"] == pytest.approx(8.0)  # 4, 8, 12
    assert (lora["ci_low"], lora["ci_high"]) == (pytest.approx(8 - 4.302653 * 4 / 3 ** 0.5),
                                                pytest.approx(8 + 4.302653 * 4 / 3 ** 0.5))  # fmt: skip
    full = frame[(frame["method"] == "full") & (frame["epsilon"] == 0.5)].iloc[0]
    assert (full["mean"], full["ci_low"], full["ci_high"]) == (0.0, 0.0, 0.0)  # identical: the point
    md = sweep_markdown(frame)
    assert "ε=0.5 (decides)" in md and "| lora r=1 | 3 | 8.0 [" in md


def test_write_sweep_writes_csv_and_markdown_or_nothing(tmp_path):
    frame = write_sweep(_study(tmp_path), tmp_path / "out")
    assert frame is not None and (tmp_path / "out" / "intruders_sweep_sst2.md").is_file()
    assert len(pd.read_csv(tmp_path / "out" / "intruders_sweep_sst2.csv")) == 4
    assert write_sweep(tmp_path / "nothing", tmp_path / "out2") is None
