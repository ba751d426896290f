"""The run record: one dataclass reads and writes run.json, for every record this project has made."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.record import ALWAYS, SCHEMA, DevScore, EvalPoint, RunRecord, load_records

REPO = Path(__file__).resolve().parents[2]


def _committed_records() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "reports/**/run.json"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return []
    paths = [REPO / p for p in out]
    return [p for p in paths if p.is_file() and "config" in json.loads(p.read_text())
            and "schema" in json.loads(p.read_text())]


def _without_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def test_every_committed_record_reads_and_writes_back_unchanged():
    paths = _committed_records()
    if not paths:
        pytest.skip("no committed run records (not a git checkout)")
    for path in paths:
        raw = json.loads(path.read_text())
        rec = RunRecord.read(path)
        assert rec is not None, path
        back = rec.to_dict()
        # the config comes back complete (fields added since read as the defaults from_dict gives)
        assert back.pop("config") == RunConfig.from_dict(raw.pop("config")).to_dict()
        assert _without_none(back) == _without_none(raw), path
        assert set(raw) - set(back) <= {k for k, v in raw.items() if v is None}, path
        assert ALWAYS - {"config"} <= set(back)


def test_a_record_round_trips_through_its_file(tmp_path):
    cfg = RunConfig(task="sst2", method="lora", seed=3, rank=4, lr=1e-3, val_samples=50)
    rec = RunRecord(
        config=cfg,
        status="finished",
        lr=1e-3,
        head_lr=1e-2,
        train_loss=[0.7, 0.6],
        evals=[EvalPoint(0, 0.5, 0.69, 0.1, collapsed=True), EvalPoint(2, 0.8, 0.4, 0.1, collapsed=False)],
        resumed_at=[],
        dev=DevScore(step=2, metric=0.81, loss=0.41, collapsed=False, n=872, seconds=0.3),
        initial_metric=0.5,
        val_metric=0.8,
        val_collapsed=False,
        final_metric=0.81,
        collapsed=False,
        meta={"command": "python -m lowrank_lab.finetune"},
    )
    path = rec.write(tmp_path, wall_seconds=1.23456)
    assert path == tmp_path / "run.json"
    raw = json.loads(path.read_text())
    assert raw["schema"] == SCHEMA and list(raw)[:2] == ["schema", "config"]
    assert list(raw)[-1] == "wall_seconds"
    assert raw["eval"][0] == {"step": 0, "metric": 0.5, "loss": 0.69, "collapsed": True, "seconds": 0.1}
    dev = {"step": 2, "metric": 0.81, "loss": 0.41, "collapsed": False, "n": 872, "seconds": 0.3}
    assert raw["dev"] == dev
    assert "metric" not in raw and "diverged_step" not in raw  # None: left out
    assert raw["wall_seconds"] == 1.235
    back = RunRecord.read(tmp_path)
    assert back == rec
    assert back.usable and back.run_name == "lora-r4-seed3" and back.dev_loss == 0.41


def test_unknown_keys_survive_a_rewrite_and_foreign_files_are_not_records(tmp_path):
    raw = {"schema": SCHEMA, "config": {"task": "rte", "method": "full"}, "status": "diverged",
           "train_loss": [1.0], "eval": [{"step": 0, "metric": 0.5, "loss": 0.7, "seconds": 0.1}],
           "a_later_key": {"x": 1}, "wall_seconds": 2.0}
    (tmp_path / "run.json").write_text(json.dumps(raw))
    rec = RunRecord.read(tmp_path / "run.json")
    assert rec.unknown == {"a_later_key": {"x": 1}} and rec.evals[0].collapsed is None
    assert not rec.usable and rec.run_name == "full-seed0"
    rec.write(tmp_path)
    again = json.loads((tmp_path / "run.json").read_text())
    assert again["a_later_key"] == {"x": 1} and "collapsed" not in again["eval"][0]
    assert list(again)[-1] == "wall_seconds"

    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "run.json").write_text(json.dumps({"command": "python -m lowrank_lab.analyze"}))
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "run.json").write_text('{"config": {"task"')
    assert RunRecord.read(tmp_path / "sweep") is None and RunRecord.read(tmp_path / "torn") is None
    assert RunRecord.read(tmp_path / "nothing-here") is None
    found = load_records([tmp_path / "run.json", tmp_path / "sweep", tmp_path / "torn", tmp_path / "gone"])
    assert [r.method for r in found] == ["full"]
    with pytest.raises(ValueError, match="not a run record"):
        RunRecord.from_dict({"status": "finished"})


def test_later_keys_in_config_and_dev_survive_and_attribute_names_are_not_keys(tmp_path):
    raw = {"schema": SCHEMA, "config": {"task": "sst2", "method": "lora", "a_later_option": 3},
           "status": "finished", "final_metric": 0.8, "collapsed": False,
           "dev": {"step": 2, "metric": 0.8, "loss": 0.4, "collapsed": False, "n": 10, "seconds": 0.1,
                   "calibration": "later"},
           "evals": "a foreign key spelled like an attribute"}
    rec = RunRecord.from_dict(raw)
    assert rec.evals == [] and rec.unknown == {"evals": "a foreign key spelled like an attribute"}
    assert rec.dev.unknown == {"calibration": "later"}
    back = rec.to_dict()
    assert back["config"]["a_later_option"] == 3 and back["dev"]["calibration"] == "later"
    assert back["evals"] == raw["evals"] and back["eval"] == []


def test_broken_records_read_as_none(tmp_path):
    cases = {"null-config": {"config": None, "status": "finished"},
             "eval-without-step": {"config": {"task": "sst2", "method": "lora"}, "eval": [{"metric": 0.5}]},
             "list": [1, 2]}
    for name, raw in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(raw))
        assert RunRecord.read(tmp_path / name) is None, name
