"""Intruder counts across the ε sweep, per method and rank of a study (issue 30, point 9).

The intruder claims are decided at one ε fixed before the runs: 0.5, Shuttleworth et al. 2024's
(arXiv 2410.21228). Their Figure 3 shows how the count depends on it, and so does ours: a verdict
read at 0.5 alone could hide that LoRA's excess over full fine-tuning appears only at looser
thresholds. :func:`sweep_table` therefore reports every ε of the runs' ``sweep.csv`` (what
``python -m lowrank_lab.intruders --sweep`` writes into ``<study>/intruders/<run>/``): the left-side
count summed over matrices, per run, then per (method, rank) its seeds' mean with a 95% t interval.
Descriptive: no test is made across ε (it would be a family of its own, declared after the fact).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .frontier import mean_interval
from .record import RunRecord

COLUMNS = ["task", "method", "rank", "epsilon", "n_seeds", "mean", "ci_low", "ci_high", "seeds"]
#: The ε the claims read (the paper's); the sweep's other values are reported beside it.
DECIDING_EPSILON = 0.5


def run_totals(study: str | Path, side: str = "left") -> pd.DataFrame:
    """One row per (run, ε): the run's ``side`` intruder count summed over matrices, with the run's
    method, rank and seed from its record; empty when the study has no sweep files."""
    study = Path(study)
    rows = []
    for path in sorted(study.glob("intruders/*/sweep.csv")):
        rec = RunRecord.read(study / "runs" / path.parent.name)
        if rec is None:
            continue
        sweep = pd.read_csv(path)
        sweep = sweep[sweep["side"] == side] if "side" in sweep.columns else sweep
        for eps, count in sweep.groupby("epsilon")["count"].sum().items():
            rows.append({"task": rec.task, "run": path.parent.name, "method": rec.method,
                         "rank": None if rec.method == "full" else int(rec.rank), "seed": rec.seed,
                         "epsilon": float(eps), "count": float(count)})  # fmt: skip
    return pd.DataFrame(rows, columns=["task", "run", "method", "rank", "seed", "epsilon", "count"])


def sweep_table(study: str | Path) -> pd.DataFrame:
    """Per (method, rank, ε): seeds, mean count and its 95% t interval (long format, for pandas)."""
    totals = run_totals(study)
    rows = []
    keys = ["task", "method", "rank", "epsilon"]
    for (task, method, rank, eps), part in totals.groupby(keys, dropna=False, sort=True):
        part = part.sort_values("seed")
        mean, lo, hi, _ = mean_interval(list(part["count"]))
        rows.append({"task": task, "method": method, "rank": rank, "epsilon": eps, "n_seeds": len(part),
                     "mean": mean, "ci_low": lo, "ci_high": hi,
                     "seeds": ",".join(str(int(s)) for s in part["seed"])})  # fmt: skip
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["rank"] = frame["rank"].astype("Int64")
    return frame


def sweep_markdown(frame: pd.DataFrame) -> str:
    """Methods as rows, ε as columns, each cell ``mean [low, high]``; the deciding ε marked."""
    frame = frame.assign(
        who=[m if pd.isna(r) else f"{m} r={int(r)}"
             for m, r in zip(frame["method"], frame["rank"], strict=True)],  # fmt: skip
        cell=[f"{r['mean']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}]" if pd.notna(r["ci_low"])
              else f"{r['mean']:.1f}" for r in frame.to_dict("records")],  # fmt: skip
    )
    order = list(dict.fromkeys(frame.sort_values(["method", "rank"], kind="stable")["who"]))
    wide = frame.pivot(index="who", columns="epsilon", values="cell").loc[order]
    wide.columns = [f"ε={e:g}" + (" (decides)" if abs(e - DECIDING_EPSILON) < 1e-9 else "")
                    for e in wide.columns]  # fmt: skip
    from lowrank_lab.utils.tables import to_markdown

    seeds = frame.groupby("who")["n_seeds"].max()
    wide.insert(0, "seeds", seeds)
    return (
        "Intruder dimensions (left singular vectors, summed over matrices) across the ε sweep: mean over "
        "seeds [95% t interval]. The claims read ε = 0.5, fixed before the runs (Shuttleworth et al. "
        "2024's); the other columns are descriptive.\n\n" + to_markdown(wide.reset_index(names="run")) + "\n"
    )


def write_sweep(study: str | Path, out: str | Path) -> pd.DataFrame | None:
    """``intruders_sweep_<task>.csv`` and ``.md`` of ``study`` into ``out``; None when it has no sweeps."""
    from lowrank_lab.utils.files import atomic_write_text, write_frame

    frame = sweep_table(study)
    if frame.empty:
        return None
    task = frame["task"].iloc[0]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_frame(frame, out / f"intruders_sweep_{task}.csv")
    atomic_write_text(out / f"intruders_sweep_{task}.md", sweep_markdown(frame))
    return frame
