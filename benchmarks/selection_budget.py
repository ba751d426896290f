"""Would a learning-rate selection at half the budget have chosen the rate the whole budget chose?

Revision 5 of the plateau study (reports/README.md) lets the later SST-2 blocks select their rates on
runs of half an epoch, if and only if this check passes on every selection group that ran at the whole
budget before it (CoLA block 3a, SST-2 block 1): for each (method, rank) group, the rate the library's
rule picks (the best mean over the selection seeds of each run's best validation metric) is the same
when only the evaluations in the first half of the budget count. Runs that early stopping ended before
the half count the same either way. The rule was written before any half-budget run existed.

Usage:  python benchmarks/selection_budget.py reports/plateau/cola reports/plateau/sst2 [--out FILE]
Prints one line per group and, last, the selection budget to use: 0.5 when every group agrees, else 1.
Exit status 0; 2 with a one-line message for a folder without selection runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def groups(study: Path) -> dict[tuple[str, int], dict[float, dict[int, tuple[float, float]]]]:
    """(method, rank) -> rate -> seed -> (best validation metric in the first half, over the whole run)."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for path in sorted(study.glob("select/*/run.json")):
        rec = json.loads(path.read_text())
        cfg = rec["config"]
        evals = rec.get("eval") or []
        if rec.get("status") != "finished" or rec.get("val_metric") is None or not evals:
            continue
        rate = cfg["head_lr"] if cfg["method"] == "head" else cfg["lr"]
        half = kept(evals, cfg.get("min_delta") or 0.0, cfg["steps"] / 2)
        out[(cfg["method"], int(cfg["rank"]))][float(rate)][int(cfg["seed"])] = (half, rec["val_metric"])
    return out


def kept(evals: list[dict], min_delta: float, last_step: float) -> float:
    """The validation metric early stopping keeps among the evaluations up to ``last_step`` (step 0
    included): an evaluation replaces the kept one when it beats it by more than ``min_delta``, as the
    training loop's ``_track_best`` does for a task whose metric is higher-better (SST-2, CoLA). Over the
    whole run this reproduces every selection record's ``val_metric``."""
    best = None
    for e in evals:
        if e["step"] > last_step or e.get("metric") is None:
            continue
        if best is None or e["metric"] - best > min_delta:
            best = e["metric"]
    return best


def chosen(by_rate: dict[float, dict[int, tuple[float, float]]], which: int) -> float:
    """The rate with the best mean over its seeds of element ``which`` (0: first half, 1: whole run)."""
    return max(by_rate, key=lambda r: sum(v[which] for v in by_rate[r].values()) / len(by_rate[r]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("studies", nargs="+", type=Path, help="study folders with whole-budget select/ runs")
    ap.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    args = ap.parse_args(argv)
    lines = ["| study | method | rank | rates | chosen (whole budget) | chosen (first half) | agree |",
             "|---|---|---|---|---|---|---|"]
    agree_all = True
    for study in args.studies:
        found = groups(study)
        if not found:
            print(f"selection_budget.py: {study}: no finished select/*/run.json", file=sys.stderr)
            return 2
        for (method, rank), by_rate in sorted(found.items()):
            full, half = chosen(by_rate, 1), chosen(by_rate, 0)
            agree_all &= full == half
            lines.append(f"| {study.name} | {method} | {rank} | {len(by_rate)} | {full:g} | {half:g} | "
                         f"{'yes' if full == half else 'NO'} |")
    budget = "0.5" if agree_all else "1"
    text = "\n".join(lines) + f"\n\nselection budget (fraction of the verdict runs' epochs): {budget}\n"
    if args.out:
        args.out.write_text(text)
    print(text, file=sys.stderr, end="")
    print(budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
