"""The capacity frontier of a study: dev metric against trainable parameters, per method and rank (issue 30).

"Comparable with far fewer parameters" (LoRA-XS, Bałazy et al. 2024; IntTune, the NLoRA paper's
core-only variant, Guo et al. 2025; LoLDU, Shi et al. 2024) is a claim about a curve, not one point:
at how many trainable numbers does a method reach what LoRA reaches? :func:`frontier_table` puts
every (method, rank) of a study folder on that curve with its seeds' mean, a 95% t interval and how
its runs stopped (early stopping or the budget), beside the references that bound it from below (the
head-only control, the untuned encoder's linear probe, the constant predictor); :func:`write_frontier`
writes it as ``frontier_<task>.csv`` (long format, one row per point, for pandas), a markdown table and
``figures/frontier_<task>.png`` (log-scaled parameters; each method's ranks joined by a line).
Counts are what the runs trained: the adapter's trainable numbers plus the task head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .config import HEAD_ONLY
from .record import RunRecord
from .stats import paired
from .tasks import TaskSpec

COLUMNS = [
    "task", "method", "rank", "trainable_params", "n_seeds", "mean", "ci_low", "ci_high", "sd",
    "plateau_stops", "budget_stops", "seeds",
]  # fmt: skip


def mean_interval(xs: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, low, high, sd) of ``xs`` with a two-sided one-sample t interval (:func:`.stats.paired`
    against zero, so one formula serves every interval of the reports); NaN bounds and sd below two
    values, the point itself when the values agree exactly."""
    p = paired(xs, [0.0] * len(xs), level=level)
    if p.n < 2:
        return p.mean, math.nan, math.nan, math.nan
    return p.mean, p.ci_low, p.ci_high, p.sd


def frontier_table(records: Sequence[RunRecord], spec: TaskSpec) -> pd.DataFrame:
    """One row per (method, rank) of the usable ``records`` (finished, not collapsed), ordered by
    method then trainable parameters; ``rank`` is empty for full fine-tuning and the head-only control."""
    groups: dict[tuple[str, int | None], list[RunRecord]] = {}
    for rec in records:
        if rec.usable and rec.final_metric is not None and math.isfinite(rec.final_metric):
            rank = None if rec.method in ("full", HEAD_ONLY) else int(rec.rank)
            groups.setdefault((rec.method, rank), []).append(rec)
    rows = []
    for (method, rank), runs in groups.items():
        runs = sorted(runs, key=lambda r: r.seed)
        mean, lo, hi, sd = mean_interval([float(r.final_metric) for r in runs])
        rows.append({
            "task": spec.name, "method": method, "rank": rank, "trainable_params": runs[0].trainable_params,
            "n_seeds": len(runs), "mean": mean, "ci_low": lo, "ci_high": hi, "sd": sd,
            "plateau_stops": sum(r.stop_reason == "plateau" for r in runs),
            "budget_stops": sum(r.stop_reason != "plateau" for r in runs),
            "seeds": ",".join(str(r.seed) for r in runs),
        })  # fmt: skip
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["rank"] = frame["rank"].astype("Int64")
    return frame.sort_values(["method", "trainable_params"], kind="stable").reset_index(drop=True)


def frontier_markdown(frame: pd.DataFrame, spec: TaskSpec, references: Mapping[str, float]) -> str:
    """The table as markdown under a line naming the metric and the references."""
    from lowrank_lab.utils.tables import to_markdown

    from .metrics import METRIC_LABELS

    def dev(row: Mapping[str, Any]) -> str:
        if math.isfinite(row["ci_low"]):
            return f"{row['mean']:.4f} [{row['ci_low']:.4f}, {row['ci_high']:.4f}]"
        return f"{row['mean']:.4f} (one seed)"

    rows = frame.to_dict("records")
    shown = frame.assign(
        trainable_params=frame["trainable_params"].map(lambda v: f"{int(v):,}" if pd.notna(v) else "–"),
        dev=[dev(r) for r in rows],
        stops=[f"{r['plateau_stops']} plateau, {r['budget_stops']} budget" for r in rows],
    )[["method", "rank", "trainable_params", "n_seeds", "dev", "stops"]]
    refs = "; ".join(f"{k} {v:.4f}" for k, v in references.items()) or "none measured"
    return (
        f"Capacity frontier on {spec.name}: dev {METRIC_LABELS[spec.metric]} (mean over seeds, 95% t "
        f"interval) against trainable parameters. References: {refs}.\n\n" + to_markdown(shown) + "\n"
    )


def plot_frontier(
    frame: pd.DataFrame, spec: TaskSpec, path: str | Path, references: Mapping[str, float]
) -> Path:
    """Dev metric against trainable parameters (log x), each method's ranks joined, intervals as bars,
    references as grey horizontal lines."""
    import matplotlib.pyplot as plt

    from .figures import _colors, _save, draw_references
    from .metrics import METRIC_LABELS

    methods = list(dict.fromkeys(frame["method"]))
    colors = _colors(methods)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for m in methods:
        part = frame[frame["method"] == m].dropna(subset=["trainable_params"])
        if part.empty:
            continue
        err = [(part["mean"] - part["ci_low"]).fillna(0), (part["ci_high"] - part["mean"]).fillna(0)]
        ax.errorbar(part["trainable_params"], part["mean"], yerr=err, fmt="o-", color=colors[m], capsize=3,
                    label=m, markersize=4)  # fmt: skip
        for _, r in part.iterrows():
            if pd.notna(r["rank"]):
                where = (r["trainable_params"], r["mean"])
                ax.annotate(f"r={int(r['rank'])}", where, textcoords="offset points", xytext=(4, -10),
                            fontsize=7, color=colors[m])  # fmt: skip
    draw_references(ax, references)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (adapter + task head)")
    ax.set_ylabel(f"dev {METRIC_LABELS[spec.metric]}")
    ax.set_title(f"Capacity frontier, {spec.name} (mean, 95% t interval over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def references_of(
    baselines: Mapping[str, Any], untuned: Mapping[str, Any], metric: str | None = None
) -> dict[str, float]:
    """The reference predictors a frontier is drawn against: the constant predictor
    (``baselines.json``) and the untuned encoder's linear probe (``untuned.json``), when measured;
    for runs judged by exact match (``metric``), the untuned model's exact match."""
    if metric == "exact_match":
        em = untuned.get("exact_match")
        return {"untuned model": float(em)} if isinstance(em, (int, float)) else {}
    refs = {}
    if isinstance(baselines.get("constant_predictor"), (int, float)):
        refs["constant predictor"] = float(baselines["constant_predictor"])
    if "probe_C" in untuned and isinstance(untuned.get("metric"), (int, float)):
        refs["linear probe, untuned encoder"] = float(untuned["metric"])
    return refs


def write_frontier(study: str | Path, out: str | Path) -> pd.DataFrame | None:
    """``frontier_<task>.csv``, ``.md`` and ``figures/frontier_<task>.png`` of the study folder
    ``study`` into ``out``; None (nothing written) for a study with no usable runs."""
    from lowrank_lab.utils.files import atomic_write_text, write_frame

    from .claims import read_baselines, scored_spec
    from .record import study_records
    from .tasks import get_task
    from .untuned import read_untuned

    records = study_records(study)
    if not records:
        return None
    spec = scored_spec(get_task(records[0].task), records)
    frame = frontier_table(records, spec)
    if frame.empty:
        return None
    refs = references_of(read_baselines(study), read_untuned(study), spec.metric)
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    write_frame(frame, out / f"frontier_{spec.name}.csv")
    atomic_write_text(out / f"frontier_{spec.name}.md", frontier_markdown(frame, spec, refs))
    plot_frontier(frame, spec, out / "figures" / f"frontier_{spec.name}.png", refs)
    return frame
