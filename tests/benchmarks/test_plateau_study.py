"""benchmarks/plateau_study.sh's bookkeeping (revision 5), on constructed study folders: what it counts
against the 40 CPU-hours, the selection budget it reads, and that a block over budget trains nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "plateau_study.sh"


def _study(out: Path, hours_per_run: float) -> None:
    """CoLA and SST-2 folders with two seeds of two rates each (whole budget, agreeing halves)."""
    for task in ("cola", "sst2"):
        for lr, curve in ((1e-4, [0.5, 0.6, 0.7, 0.72, 0.73, 0.74]), (1e-3, [0.5, 0.8, 0.84, 0.85, 0.85])):
            for seed in (100, 101):
                folder = out / task / "select" / f"lora-r8-seed{seed}-lr{lr}"
                folder.mkdir(parents=True)
                cfg = {"task": task, "method": "lora", "rank": 8, "lr": lr, "seed": seed, "steps": 100,
                       "min_delta": 0.0}  # fmt: skip
                rec = {"config": cfg, "status": "finished", "val_metric": max(curve),
                       "eval": [{"step": 20 * i, "metric": m, "loss": 1.0} for i, m in enumerate(curve)],
                       "run_seconds": hours_per_run * 3600, "meta": {"threads": 1}}  # fmt: skip
                (folder / "run.json").write_text(json.dumps(rec))


def _script(stage: str, out: Path, **env: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "STUDY_STAGE": stage, "STUDY_OUT": str(out), **env}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_budget_counts_every_recorded_run_and_reads_the_selection_rule(tmp_path):
    _study(tmp_path, hours_per_run=0.5)  # 8 runs
    proc = _script("budget", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "recorded: 4.00 of 40 CPU-hours; selection runs of blocks 2 and 4: 0.5 epoch" in proc.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_a_block_over_the_budget_is_not_started_and_says_why(tmp_path):
    _study(tmp_path, hours_per_run=0.5)
    proc = _script("sst2-r1", tmp_path, STUDY_BUDGET_HOURS="6")  # 4 recorded + 8 runs x 0.7 > 6
    assert proc.returncode == 0, proc.stderr
    assert "sst2-r1: not started: 4.00 CPU-hours recorded + about 5.6 for it > the 6-hour budget" in (
        proc.stderr
    )
    assert not (tmp_path / "sst2" / "runs").exists()  # nothing trained
    said = json.loads((tmp_path / "sst2" / "not_run.json").read_text())  # the claims repeat it
    why = "outside the 6 CPU-hour budget (block sst2-r1: 4.00 CPU-hours recorded + about 5.6 for it)"
    assert said == {"lora@1": why}
    proc = _script("sst2-rest", tmp_path, STUDY_BUDGET_HOURS="4")  # every later block refused, and block 5
    assert proc.returncode == 0, proc.stderr
    said = json.loads((tmp_path / "sst2" / "not_run.json").read_text())  # merged with the first
    assert set(said) == {"lora@1", "lora-xs@25", "loldu@384", "inttune@128", "lora@64", "mitigation",
                         "pissa", "milora", "nlora", "slora", "lora-sb", "lora-xs"}  # fmt: skip
    assert said["pissa"].startswith("block 5 (the init variants at r = 8, about 14 CPU-hours) was left out")
    assert said["lora@1"] == why.replace(" 6 ", " 4 ")


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_an_unknown_stage_exits_2_naming_the_stages(tmp_path):
    proc = _script("sst3", tmp_path)
    assert proc.returncode == 2 and "unknown stage sst3 (probe sst2-ref" in proc.stderr
