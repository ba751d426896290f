"""benchmarks/factorizations.py stays runnable: a tiny run writes a report with every method and target."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from lowrank_lab.linalg import FACTORIZATIONS

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "factorizations.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_factorizations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_every_row_and_the_targets(tmp_path):
    bench = _load()
    out = tmp_path / "f.md"
    argv = ["--shapes", "96x64,64x96", "--ranks", "4,8", "--repeats", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    df = pd.read_csv(out.with_suffix(".csv"))
    expected = {*FACTORIZATIONS, "torch.svd_lowrank", "torch.linalg.svd"}
    assert len(df) == 2 * 2 * len(expected)
    for (_, _), g in df.groupby(["shape", "rank"]):
        assert set(g["method"]) == expected
    assert (df["err_ratio"] >= 1 - 1e-6).all()  # nothing beats Eckart–Young
    text = out.read_text()
    assert "Command: `python" in text and "## Targets (issue 2)" in text and "rsvd error ≤ 1.01" in text
    # --resume with everything done measures nothing and rewrites the same rows
    assert bench.main([*argv, "--resume"]) == 0
    assert len(pd.read_csv(out.with_suffix(".csv"))) == len(df)
