"""``python -m lowrank_lab.claims`` in-process on run records written to disk, with no training: the quick
suite's test of the command end to end (tests/training/test_claims.py trains a tiny study for its own)."""

from __future__ import annotations

import json

import pandas as pd

from lowrank_lab.claims import main
from lowrank_lab.training.claims import COLUMNS
from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.record import RunRecord
from lowrank_lab.training.stats import VERDICTS

MEANS = {"head": 0.78, "lora": 0.88, "full": 0.89, "pissa": 0.90}
OFFSETS = [0.0, 0.004, -0.003, 0.002, -0.001]  # a seed's shared offset
NOISE = [0.0, 0.003, -0.002, 0.001, -0.002]  # PiSSA's own per-seed noise: its differences vary


def _write_study(study):
    for method, mean in MEANS.items():
        for seed in range(5):
            metric = mean + OFFSETS[seed] + (NOISE[seed] if method == "pissa" else 0.0)
            rec = RunRecord(
                config=RunConfig(task="sst2", method=method, seed=seed, rank=8, model="m"),
                status="finished", final_metric=metric, collapsed=False, train_loss=[0.5] * 10,
            )  # fmt: skip
            run = study / "runs" / rec.run_name
            run.mkdir(parents=True)
            rec.write(run)
    (study / "baselines.json").write_text(json.dumps({"task": "sst2", "constant_predictor": 0.509}))


def test_claims_over_written_run_records(tmp_path, capsys):
    study = tmp_path / "study"
    _write_study(study)
    assert main(["--studies", str(study), "--out", str(tmp_path / "r")]) == 0
    table = pd.read_csv(tmp_path / "r" / "claims.csv")
    assert list(table.columns) == COLUMNS and set(table["task"]) == {"sst2", "cola"}  # cola: "not run" rows
    assert set(table.loc[table["task"] == "cola", "claim_holds"]) == {"not run"}
    assert set(table["verdict"]) <= set(VERDICTS)
    pissa = table[table["method_a"].eq("pissa") & table["method_b"].eq("lora")]
    assert len(pissa) == 2 and set(pissa["n_seeds"]) == {5}  # final metric and convergence, 5 seeds each
    md = (tmp_path / "r" / "claims.md").read_text()
    assert md.startswith("# Claims at this scale")
    sst2 = md[md.index("## sst2"):md.index("## cola")]
    gates = sst2[sst2.index("Gates:"):sst2.index("Not run:")]
    assert "- pass: passes" in gates and "not run" not in gates  # the task's gate, apart from missing runs
    assert "Not run: no runs of nlora (runs/nlora-r8-seed*)" in sst2  # said once, without the prefix
    assert "wrote" in capsys.readouterr().out


def test_the_recorded_command_is_shell_quoted_and_replays(tmp_path):
    import shlex

    study = tmp_path / "a study"  # a space in the path
    _write_study(study)
    assert main(["--studies", str(study), "--out", str(tmp_path / "r")]) == 0
    lines = (tmp_path / "r" / "claims.md").read_text().splitlines()
    line = next(s for s in lines if s.startswith("- Command:"))
    command = line.split("`")[1]
    assert shlex.split(command)[:5] == ["python", "-m", "lowrank_lab.claims", "--studies", str(study)]
