from __future__ import annotations

import os

import pandas as pd
import pytest

from lowrank_lab.utils.tables import (
    OutputDirError,
    RowWriter,
    ensure_writable_dir,
    read_keys,
    row_order,
    to_latex,
    to_markdown,
)

COLS = ["tensor", "rank", "value"]


def test_rows_are_on_disk_after_each_write(tmp_path) -> None:
    path = tmp_path / "rows.csv"
    w = RowWriter(path, COLS, ["tensor", "rank"])
    w.write({"tensor": "a", "rank": 8, "value": 0.5})
    # Read while the writer is still open: an interrupted run leaves exactly this.
    assert pd.read_csv(path).to_dict("records") == [{"tensor": "a", "rank": 8, "value": 0.5}]
    w.close()


def test_resume_keeps_rows_drops_a_torn_line_and_knows_what_is_done(tmp_path) -> None:
    path = tmp_path / "rows.csv"
    with RowWriter(path, COLS, ["tensor", "rank"]) as w:
        w.write_many([{"tensor": "a", "rank": 8, "value": 1.0}, {"tensor": "b", "rank": 8, "value": 2.0}])
    with open(path, "a") as fh:
        fh.write("c,8,3.")  # killed mid-row
    with RowWriter(path, COLS, ["tensor", "rank"], resume=True) as w:
        assert w.done(("a", 8)) and w.done({"tensor": "b", "rank": 8.0, "value": None})
        assert not w.done(("c", 8)) and w.n_done == 2
        w.write({"tensor": "c", "rank": 8, "value": 3.0})
    assert pd.read_csv(path)["tensor"].tolist() == ["a", "b", "c"]
    assert read_keys(path, ["tensor"]) == {("a",), ("b",), ("c",)}


def test_without_resume_the_file_starts_afresh(tmp_path) -> None:
    path = tmp_path / "rows.csv"
    with RowWriter(path, COLS, ["tensor"]) as w:
        w.write({"tensor": "a", "rank": 1, "value": 1})
    with RowWriter(path, COLS, ["tensor"]) as w:
        assert w.n_done == 0
    assert pd.read_csv(path).empty


def test_resume_refuses_a_file_with_other_columns(tmp_path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("tensor,other\na,1\n")
    with pytest.raises(ValueError, match="its columns .* differ"):
        RowWriter(path, COLS, ["tensor"], resume=True)
    with pytest.raises(ValueError, match="key columns"):
        RowWriter(tmp_path / "x.csv", COLS, ["nope"])


def test_unwritable_directory_is_named_with_the_option(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputDirError, match="--out .*file.* is not a writable directory"):
        ensure_writable_dir(blocker / "sub", "--out")
    assert ensure_writable_dir(tmp_path / "new" / "dir").is_dir()
    assert not os.listdir(tmp_path / "new" / "dir")  # the write probe is removed


def test_tables_render_without_optional_dependencies() -> None:
    df = pd.DataFrame({"method": ["svd", "rsvd_x"], "err": [1.0, float("nan")]})
    md = to_markdown(df)
    assert md.splitlines()[0] == "| method | err |" and "| rsvd_x | – |" in md
    tex = to_latex(df, caption="a_b")
    assert r"rsvd\_x" in tex and r"\caption{a\_b}" in tex and tex.count(r"\\") == 3


def test_concurrent_checks_of_one_directory_do_not_collide(tmp_path) -> None:
    # torchrun ranks check --out at the same moment; a shared probe name made one rank's delete
    # fail the other's check.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: ensure_writable_dir(tmp_path), range(64)))
    assert not os.listdir(tmp_path)


def test_row_order_sorts_by_position_then_integer_and_skips_absent_columns() -> None:
    # as a distributed run's part files are read: every cell text
    rows = pd.DataFrame({"tensor": ["b", "a", "b", "a", "z", "a"],
                         "side": ["left", "right", "left", "left", "left", "left"],
                         "rank": ["10", "1", "2", "2", "1", "1"]})
    order = row_order(("tensor", ["a", "b"]), ("side", ("left", "right")), ("rank", None))
    got = order(rows)
    assert list(zip(got.tensor, got.side, got["rank"], strict=True)) == [
        ("a", "left", "1"), ("a", "left", "2"), ("a", "right", "1"), ("b", "left", "2"), ("b", "left", "10"),
        ("z", "left", "1"),  # a tensor not listed goes last
    ]
    assert list(got.columns) == ["tensor", "side", "rank"]
    skipped = pd.DataFrame({"tensor": ["b", "a"], "reason": ["x", "y"]})  # one row per matrix
    assert list(order(skipped).tensor) == ["a", "b"]
    by_value = row_order(("tensor", ["a"]), ("rank", [16, 8]))  # values compared as text: 16 == "16"
    assert list(by_value(pd.DataFrame({"tensor": ["a", "a"], "rank": ["8", "16"]}))["rank"]) == ["16", "8"]
