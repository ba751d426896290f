"""benchmarks/rsvd_passes.py stays runnable and its work formula matches the product count."""

from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("rsvd_passes")


def test_work_is_products_times_width_over_peft(script):
    assert script.work(128, 0, 4) == pytest.approx(1.0)  # PEFT pissa_niter_4 itself
    assert script.work(128, 0, 2) == pytest.approx(0.6)
    assert script.work(128, 32, 1) == pytest.approx(0.5)


def test_a_small_run_writes_the_table_and_more_power_never_hurts(script, tmp_path):
    out = tmp_path / "passes.md"
    argv = [
        "--shapes",
        "192x128",
        "--rank",
        "8",
        "--oversample",
        "0,10",
        "--n-iter",
        "0,2",
        "--out",
        str(out),
    ]
    assert script.main(argv) == 0
    df = pd.read_csv(out.with_suffix(".csv"))
    assert len(df) == 4 and (df.err_ratio >= 1 - 1e-4).all()
    for p, g in df.groupby("oversample_p"):
        q0, q2 = (float(g[g.n_iter_q == q].err_ratio.iloc[0]) for q in (0, 2))
        assert q2 <= q0 + 1e-6, p
    assert "Least product work" in out.read_text()
