"""torchrun with 2 CPU processes (gloo) writes the same files as one process (issue 9)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lowrank_lab.utils.distributed import launch_command

ARGS = ["--layers", "0", "--ranks", "4,8", "--methods", "svd,rsvd,ldu", "--threads", "1", "--repeats", "1",
        "--warmup", "0", "--no-figures"]  # figures are tested in test_analyze.py
TIMING = ["init_seconds"]

# torchrun with 2 processes: ~25-60 s a test, ~190 s the two files (issue 31: slow, run by CI).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH"),
]


def _run(cmd: list[str], out: Path) -> subprocess.CompletedProcess:
    # torchrun leaves torchelastic_* folders in TMPDIR: in the test's own folder, they go with it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TMPDIR": str(out.parent)}
    proc = subprocess.run([*cmd, *ARGS, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _torchrun(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run([*launch_command("lowrank_lab.analyze", 2), *extra], out)


def _frame(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    return df.drop(columns=[c for c in TIMING if c in df])


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    _run([sys.executable, "-m", "lowrank_lab.analyze"], out)
    return out


def test_two_processes_write_the_single_process_rows_row_for_row(single, tmp_path) -> None:
    out = tmp_path / "dist"
    proc = _torchrun(out)
    for name in ("factorization.csv", "spectra.csv", "skipped.csv"):
        pd.testing.assert_frame_equal(_frame(out / name), _frame(single / name))
    assert not (out / "parts").exists()  # folded into the run's files
    assert "6 matrices, 36 new factorization rows" in proc.stdout
    assert sorted(p.name for p in (out / "singular_values").iterdir()) == sorted(
        p.name for p in (single / "singular_values").iterdir())


def test_resume_after_an_interrupted_distributed_run_computes_only_missing_rows(single, tmp_path) -> None:
    # What an interrupted 2-rank run leaves: some rows merged, rank 1's rows still in its part file,
    # the rest never computed.
    out = tmp_path / "dist"
    shutil.copytree(single, out)
    fact = pd.read_csv(out / "factorization.csv", dtype=str, keep_default_na=False)
    (out / "parts").mkdir()
    fact.iloc[:10].to_csv(out / "factorization.csv", index=False)
    fact.iloc[10:20].to_csv(out / "parts" / "factorization.rank1.csv", index=False)
    proc = _torchrun(out, "--resume")
    assert "16 new factorization rows" in proc.stdout
    pd.testing.assert_frame_equal(_frame(out / "factorization.csv"), _frame(single / "factorization.csv"))
    assert not (out / "parts").exists()


def test_every_rank_stops_with_exit_2_when_out_is_in_use(tmp_path) -> None:
    # The ranks of one job share rank 0's lock; when rank 0 cannot take it, no rank starts work
    # (and none waits forever at a barrier).
    from lowrank_lab.utils.lock import OutputLock

    out = tmp_path / "busy"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TMPDIR": str(tmp_path)}
    with OutputLock(out, command="a test holding --out"):
        proc = subprocess.run([*launch_command("lowrank_lab.analyze", 2), *ARGS, "--out", str(out)],
                              capture_output=True, text=True, env=env,
                              timeout=300)
    assert proc.returncode != 0
    assert f"in use by pid {os.getpid()}" in proc.stderr and "(a test holding --out)" in proc.stderr
    assert "rank 0 could not prepare" in proc.stderr  # what rank 1 says
    assert not (out / "factorization.csv").exists() and not (out / "parts").exists()
