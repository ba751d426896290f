"""Seeds a paired comparison needs, from a committed study's per-seed results (issue 30, point 12).

For each method against a reference (LoRA at the study's rank), the per-seed differences of the final
metric give a standard deviation s; two one-sided tests (TOST, α = 0.05 each side) at a true difference
of 0 reach power 1 − β when n satisfies (t_{1−α, n−1} + t_{1−β/2, n−1}) · s / √n ≤ δ (Julious 2004,
"Sample sizes for clinical trials with Normal data": at a true difference of 0 both one-sided tests
share β, hence β/2). Holm's correction is not in the bound:
the seeds it gives are a floor.

Usage:  python benchmarks/seeds_needed.py --runs reports/study/sst2/runs.csv --delta 1 --scale 100 \\
            --out reports/plateau/seeds_needed_sst2.md
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

import pandas as pd
from scipy import stats

from lowrank_lab.utils.tables import to_markdown


def seeds_for_tost(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8, cap: int = 200) -> int:
    """Smallest n whose TOST at a true difference of 0 has ``power`` against ±``delta``."""
    for n in range(3, cap + 1):
        quantiles = stats.t.ppf(1 - alpha, n - 1) + stats.t.ppf(1 - (1 - power) / 2, n - 1)
        if quantiles * sd / math.sqrt(n) <= delta:
            return n
    return cap


def table(runs: pd.DataFrame, delta: float, scale: float, reference: str, rank: int) -> pd.DataFrame:
    done = runs[runs["status"] == "finished"]
    wide = done.pivot_table(index="seed", columns=["method", "rank"], values="final_metric")
    ref = wide[(reference, rank)]
    rows = []
    for col in wide.columns:
        if col == (reference, rank) or col[0] == "head":
            continue
        d = (wide[col] - ref).dropna() * scale
        if len(d) < 3:
            continue
        sd = float(d.std(ddof=1))
        rows.append({
            "method": col[0],
            "rank": col[1],
            "n": len(d),
            "mean_difference": round(float(d.mean()), 3),
            "sd_difference": round(sd, 3),
            "seeds_for_80pct_TOST": seeds_for_tost(sd, delta),
        })
    return pd.DataFrame(rows).sort_values("seeds_for_80pct_TOST")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="a study's runs.csv")
    p.add_argument("--delta", type=float, required=True, help="minimum effect, in the scaled unit")
    p.add_argument("--scale", type=float, default=1.0, help="multiplier of final_metric (100: points)")
    p.add_argument("--reference", default="lora")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    path = Path(a.runs)
    if not path.is_file():
        print(f"seeds_needed: error: {path} does not exist", file=sys.stderr)
        return 2
    t = table(pd.read_csv(path), a.delta, a.scale, a.reference, a.rank)
    cmd = shlex.join(["python", "benchmarks/seeds_needed.py", *(argv if argv is not None else sys.argv[1:])])
    text = (f"# Seeds needed against {a.reference} r = {a.rank}, δ = {a.delta:g}\n\nCommand: `{cmd}`\n\n"
            + to_markdown(t) + "\n")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
