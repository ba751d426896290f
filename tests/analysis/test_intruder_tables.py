"""intruders.csv is read through the module that defines its columns (issue 29, point 7): the
claims engine's intruder count per run is read_intruder_count of each run's file."""

from __future__ import annotations

import pandas as pd

from lowrank_lab.analysis.intruder_tables import ROW_COLUMNS, ROWS_FILE, read_intruder_count
from lowrank_lab.training.claims import intruder_counts_by_run


def _rows(intruder_left, intruder_right):
    rows = [
        {"tensor": f"t{i}", "side": side, "rank": i + 1, "intruder": flag}
        for side, flags in (("left", intruder_left), ("right", intruder_right))
        for i, flag in enumerate(flags)
    ]
    return pd.DataFrame(rows)


def test_the_reader_reads_columns_the_writer_writes():
    assert {"side", "intruder"} <= set(ROW_COLUMNS) and ROWS_FILE == "intruders.csv"


def test_count_is_the_left_side_sum(tmp_path):
    path = tmp_path / ROWS_FILE
    _rows([1, 0, 1, 1], [1, 1, 1, 1]).to_csv(path, index=False)
    assert read_intruder_count(path) == 3.0
    assert read_intruder_count(path, side="right") == 4.0


def test_a_table_without_sides_counts_every_row(tmp_path):
    path = tmp_path / ROWS_FILE
    pd.DataFrame({"tensor": ["a", "b", "c"], "intruder": [1, 0, 1]}).to_csv(path, index=False)
    assert read_intruder_count(path) == 2.0


def test_unreadable_or_foreign_files_give_none(tmp_path):
    empty, foreign = tmp_path / "empty.csv", tmp_path / "foreign.csv"
    empty.write_text("")
    pd.DataFrame({"tensor": ["a"], "count": [3]}).to_csv(foreign, index=False)
    assert read_intruder_count(empty) is None
    assert read_intruder_count(foreign) is None
    assert read_intruder_count(tmp_path / "absent.csv") is None


def test_claims_count_each_run_of_a_study_through_the_reader(tmp_path):
    for run, left in (("lora-r1-seed0", [1, 1, 0]), ("full-seed0", [0, 0, 0])):
        folder = tmp_path / "intruders" / run
        folder.mkdir(parents=True)
        _rows(left, [1, 1, 1]).to_csv(folder / ROWS_FILE, index=False)
    broken = tmp_path / "intruders" / "broken-run"
    broken.mkdir()
    (broken / ROWS_FILE).write_text("")
    assert intruder_counts_by_run(tmp_path) == {"full-seed0": 0.0, "lora-r1-seed0": 2.0}
