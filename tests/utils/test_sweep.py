"""The sweep engine and what it stands on: the --out lock, atomic writes that refuse symbolic links,
and RowWriter's resume checks (issue 18). The CLIs over them: tests/cli/test_out_safety.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lowrank_lab.utils.files import SymlinkError, atomic_path, atomic_write_text, open_append
from lowrank_lab.utils.lock import LOCK_NAME, OutputLock, OutputLockedError
from lowrank_lab.utils.sweep import SkipItem, Sweep, Table
from lowrank_lab.utils.tables import RowWriter

# -- files ------------------------------------------------------------------------------------------


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # as open() would make it


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk gone")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.csv"]


def test_temporary_names_are_unique_and_keep_the_suffix(tmp_path):
    with atomic_path(tmp_path / "f.png") as a, atomic_path(tmp_path / "f.png") as b:
        assert a != b and a.suffix == b.suffix == ".png"
        a.write_text("a")
        b.write_text("b")


@pytest.mark.parametrize("write", [lambda p: atomic_write_text(p, "x"), lambda p: open_append(p).close()])
def test_a_symlink_is_never_written_through(tmp_path, write):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "out.csv"
    link.symlink_to(victim)
    with pytest.raises(SymlinkError, match="is a symbolic link .* remove the link or pass another --out"):
        write(link)
    assert victim.read_text() == "precious" and link.is_symlink()


def test_rowwriter_checks_the_header_before_cutting_a_torn_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"x,y\r\n1,2\r\n3")
    with pytest.raises(ValueError, match="columns \\['x', 'y'\\] differ"):
        RowWriter(path, ["a", "b"], ["a"], resume=True)
    assert path.read_bytes() == b"x,y\r\n1,2\r\n3"
    w = RowWriter(path, ["x", "y"], ["x"], resume=True)  # the right layout: the torn row is dropped
    w.write({"x": 3, "y": 4})
    w.close()
    assert path.read_text().splitlines() == ["x,y", "1,2", "3,4"]


def test_rowwriter_restarts_a_file_whose_header_was_torn(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x,")
    with RowWriter(path, ["x", "y"], ["x"], resume=True) as w:
        w.write({"x": 1, "y": 2})
    assert path.read_text().splitlines() == ["x,y", "1,2"]


# -- the lock -----------------------------------------------------------------------------------------


def test_a_second_holder_is_refused_with_the_first_ones_description(tmp_path):
    with OutputLock(tmp_path, command="python -m lowrank_lab.analyze --out x") as first:
        assert first.held and json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(OutputLockedError) as exc:
            OutputLock(tmp_path).acquire()
    msg = str(exc.value)
    assert f"in use by pid {os.getpid()} on {socket.gethostname()}, started 20" in msg
    assert "(python -m lowrank_lab.analyze --out x)" in msg and "\n" not in msg
    assert not (tmp_path / LOCK_NAME).exists()
    OutputLock(tmp_path).acquire().release()  # free again


@pytest.mark.slow  # a second Python process that imports the package: 0.2-7 s by load
def test_a_lock_held_in_another_process_is_refused(tmp_path):
    code = (f"from lowrank_lab.utils.lock import OutputLock; import sys, time; "
            f"OutputLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid} "):
            OutputLock(tmp_path).acquire()
    finally:
        holder.communicate("", timeout=30)
    # The holder exited without releasing: the kernel dropped its flock, the file names a dead pid.
    lock = OutputLock(tmp_path).acquire()
    assert lock.took_over["pid"] == holder.pid and f"left by pid {holder.pid}" in lock.note()
    lock.release()


def test_a_live_holder_on_this_host_is_respected_even_without_flock(tmp_path):
    # A file system that ignores flock: the description alone must stop a second run.
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                  "started": "then"}))
    with pytest.raises(OutputLockedError, match=f"pid {os.getppid()} "):
        OutputLock(tmp_path).acquire()


# -- the engine -----------------------------------------------------------------------------------------


def _sweep(out: Path, **kw) -> Sweep:
    tables = {"rows": Table(out / "rows.csv", ["item", "value"], ["item"]),
              "skipped": Table(out / "skipped.csv", ["item", "reason"], ["item"])}
    return Sweep(out, tables, order=lambda df: df.sort_values("item"), **kw)


def _work(item):
    if item == "bad":
        raise SkipItem("NaN\nentries")
    yield "rows", {"item": item, "value": len(item)}


def _run(out: Path, items, **kw) -> tuple[Sweep, list]:
    with _sweep(out, **kw) as sweep:
        def finished(item):
            return sweep.done("rows", (item,)) or sweep.done("skipped", (item,))

        did = sweep.run(items, _work, finished=finished, cost=len,
                        on_skip=lambda item, why: [("skipped", {"item": item, "reason": why})])
        counts, _ = sweep.finish()
    return sweep, did, counts


def test_the_engine_skips_bad_items_and_resumes_only_what_is_missing(tmp_path):
    sweep, did, counts = _run(tmp_path, ["a", "bad", "ccc"])
    assert did == ["a", "bad", "ccc"] and sweep.skipped == [("bad", "NaN entries")]
    assert counts == {"rows": 2, "skipped": 1, "skipped_items": 1}
    skipped = pd.read_csv(tmp_path / "skipped.csv").to_dict("records")
    assert skipped == [{"item": "bad", "reason": "NaN entries"}]
    assert not (tmp_path / LOCK_NAME).exists() and not (tmp_path / "parts").exists()

    _, did, counts = _run(tmp_path, ["a", "bad", "ccc", "dd"], resume=True)
    assert did == ["dd"] and counts["rows"] == 1  # the skipped item is not retried
    _, did, _ = _run(tmp_path, ["a", "bad", "ccc", "dd"], resume=True, retry_tables=("skipped",))
    assert did == ["bad"]
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert rows["item"].tolist() == ["a", "ccc", "dd"] and len(pd.read_csv(tmp_path / "skipped.csv")) == 1

    _, did, _ = _run(tmp_path, ["a"])  # fresh: earlier rows are gone
    assert did == ["a"] and pd.read_csv(tmp_path / "rows.csv")["item"].tolist() == ["a"]


def test_a_resume_check_runs_under_the_lock_before_anything_changes(tmp_path):
    _run(tmp_path, ["a", "b"])
    before = (tmp_path / "rows.csv").read_bytes()

    def refuse():
        assert (tmp_path / LOCK_NAME).exists()
        raise ValueError("made with other options")

    with pytest.raises(ValueError, match="other options"):
        _sweep(tmp_path, resume=True, check_resume=refuse).open()
    assert (tmp_path / "rows.csv").read_bytes() == before and not (tmp_path / LOCK_NAME).exists()
