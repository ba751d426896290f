"""benchmarks/factorizations.py stays runnable: a tiny run writes a report with every method and target."""

from __future__ import annotations

import pandas as pd
import pytest

from lowrank_lab.linalg import FACTORIZATIONS


@pytest.fixture
def bench(benchmark_script):
    return benchmark_script("factorizations")


def test_tiny_run_writes_every_row_and_the_targets(bench, tmp_path):
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
    assert "\nDevice: cpu (" in text  # --device defaults to the CPU; a CUDA run names its GPU here
    # --resume with everything done measures nothing and rewrites the same rows
    assert bench.main([*argv, "--resume"]) == 0
    assert len(pd.read_csv(out.with_suffix(".csv"))) == len(df)


def test_rounds_alternate_their_order(bench):
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    measured = bench.measure_rounds(fns, 3)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] + ["c", "b", "a"] + ["a", "b", "c"]  # warm-up first
    assert all(len(wall) == 3 for wall, _, _ in measured.values())
