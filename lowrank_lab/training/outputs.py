"""A study's tables and reports: runs.csv (one row per run), baselines.json, curves.csv, the figures and
summary.md (see :mod:`.study` for the folder's layout). Rows and reports are made from the run records
alone, so ``--summary-only`` and a rebuilt ``runs.csv`` give what the study wrote as it ran.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowrank_lab.utils.files import atomic_write_text, write_frame
from lowrank_lab.utils.provenance import write_run_json
from lowrank_lab.utils.tables import RowWriter

from . import figures as figs
from .claims import BASELINES, intruder_counts_by_run, read_baselines, reference_levels, study_claims
from .config import RunConfig
from .record import RunRecord, method_labeller, study_records
from .selection import redraw_selection_figure, selection_line
from .study_data import StudyData
from .summary import (
    curve_split,
    curves_frame,
    final_loss,
    loss_auc,
    loss_threshold,
    method_rows,
    render_summary,
)
from .tasks import TaskSpec

RUN_COLUMNS = [
    "task",
    "model",
    "method",
    "rank",
    "seed",
    "status",
    "lr",
    "initial_metric",
    "final_metric",
    "final_train_loss",
    "loss_auc",
    "steps_done",
    "trainable_params",
    "adapter_params",
    "init_seconds",
    "train_seconds",
    "eval_seconds",
    "seconds_per_step",
    "peak_memory_mb",
    "memory_kind",
    "run_dir",
    "message",
]
RUN_KEY = ["method", "rank", "seed"]


def run_dir_for(out: Path, cfg: RunConfig) -> Path:
    return out / "runs" / cfg.run_name()


def csv_row(rec: RunRecord, out: Path) -> dict[str, Any]:
    c = rec.config
    return {
        "task": c.task,
        "model": c.model,
        "method": c.method,
        "rank": c.rank,
        "seed": c.seed,
        "status": rec.status,
        "lr": rec.lr,
        "initial_metric": rec.initial_metric,
        "final_metric": rec.final_metric,
        "final_train_loss": final_loss(rec.train_loss) if rec.train_loss else None,
        "loss_auc": loss_auc(rec.train_loss) if rec.train_loss else None,
        "steps_done": rec.steps_done,
        "stop_reason": rec.stop_reason,
        "best_step": rec.best_step,
        "trainable_params": rec.trainable_params,
        "adapter_params": rec.adapter_params,
        "init_seconds": rec.init_seconds,
        "train_seconds": rec.train_seconds,
        "eval_seconds": rec.eval_seconds,
        "seconds_per_step": rec.seconds_per_step,
        "peak_memory_mb": rec.peak_memory_mb,
        "memory_kind": rec.memory_kind,
        "run_dir": str(run_dir_for(out, c).relative_to(out)),
        "message": rec.message,
    }


def intruder_counts(out: Path, records: list[RunRecord]) -> dict[str, list[float]]:
    """Intruder counts per method (one per run) from :func:`intruder_counts_by_run`."""
    by_run = {r.run_name: r.method for r in records}
    counts: dict[str, list[float]] = {}
    for name, count in intruder_counts_by_run(out).items():
        if name in by_run:
            counts.setdefault(by_run[name], []).append(count)
    return counts


def baseline_line(baselines: dict[str, Any]) -> str:
    """summary.md's line on the reference predictors a method must beat (baselines.json)."""
    if "bigram" in baselines:
        return (
            f"Reference predictors on the same {baselines.get('dev_n')} eval examples, fitted on "
            f"{baselines.get('ngram_fit_answers')} training answers: unigram {baselines['unigram']:.3f} and "
            f"interpolated bigram {baselines['bigram']:.3f} nats/token (lambda "
            f"{baselines.get('bigram_lambda')}, chosen on the validation split); a GSM8K claim is testable "
            "only for methods below the bigram."
        )
    return (
        f"Constant predictor (the training set's majority class, or 0 correlation) on the "
        f"{baselines.get('dev_n')} dev examples: {baselines.get('constant_predictor', float('nan')):.4f}."
    )


def write_baselines(out: Path, data: StudyData) -> Path:
    """``out/baselines.json``: :meth:`StudyData.baselines`, which the claims' gates read."""
    path = Path(out) / BASELINES
    write_run_json(path, data.baselines())
    return path


def write_study_outputs(
    out: Path,
    records: list[RunRecord],
    methods: Sequence[str],
    spec: TaskSpec,
    *,
    argv: Sequence[str] | None = None,
    threshold_override: float | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write curves.csv, the figures and summary.md from ``records``."""
    out = Path(out)
    write_frame(curves_frame(records), out / "curves.csv")  # atomic: two streams may both summarise
    baselines = read_baselines(out)
    notes = [*([baseline_line(baselines)] if baselines else []), *notes]
    title = f"Fine-tuning study: {spec.name}"
    fig_paths = []
    have = [r for r in records if r.train_loss]
    if have:
        threshold, _ = loss_threshold(records, methods, threshold_override)
        rows = method_rows(records, methods, spec, threshold)
        fig_paths = [
            figs.loss_curves(
                have, methods, out / "figures" / "loss_curves.png", title=f"{title}: training loss"
            ),
            figs.eval_curves(
                have,
                methods,
                spec,
                out / "figures" / "eval_curves.png",
                title=f"{title}: eval",
                references=reference_levels(baselines, curve_split(have)),
            ),
            figs.metric_vs_params(
                rows,
                spec,
                out / "figures" / "metric_vs_params.png",
                title=f"{title}: metric vs trainable parameters",
                references=reference_levels(baselines, "dev"),
            ),
        ]
        redraw_selection_figure(out)
    commands = sorted({r.command for r in records if r.command})
    if argv is not None:
        command = "python " + " ".join(shlex.quote(str(a)) for a in argv)
    else:
        command = "; ".join(commands) if commands else None
    text = render_summary(
        records,
        methods,
        spec,
        title=title,
        command=command,
        threshold_override=threshold_override,
        figures=[str(p.relative_to(out)) for p in fig_paths],
        claim_table=study_claims(out, records),
        selection=selection_line(out),
        notes=notes,
    )
    return atomic_write_text(out / "summary.md", text)


def summarize_existing(out: str | Path, methods: Sequence[str], spec: TaskSpec, **kw: Any) -> Path:
    """Rebuild summary.md and figures from the run.json files already under ``out/runs``."""
    out = Path(out)
    recs = [r for r in study_records(out) if r.task == spec.name]
    label = method_labeller(recs)  # once: it scans every record for the study's rank
    if methods:
        recs = [r for r in recs if r.method in methods or label(r) in methods]
    if not recs:
        raise FileNotFoundError(f"no run records for task {spec.name} under {out / 'runs'}")
    if not methods:
        # the order of the study's command, as runs.csv keeps it (else the directory order)
        order: list[str] = []
        csv_path = out / "runs.csv"
        if csv_path.is_file():
            import pandas as pd

            order = list(dict.fromkeys(pd.read_csv(csv_path)["method"].astype(str)))
        found = list(dict.fromkeys(map(method_labeller(recs), recs)))
        rank = {m: i for i, m in enumerate(order)}
        methods = sorted(found, key=lambda k: (rank.get(k.split("@")[0], len(rank)), k))
    return write_study_outputs(out, recs, methods, spec, **kw)


def rewrite_runs_csv(out: str | Path) -> Path:
    """Write ``out/runs.csv`` afresh from the run records, in its present row order (new runs last)."""
    import pandas as pd

    out = Path(out)
    found = {p.parent.name: RunRecord.read(p) for p in sorted((out / "runs").glob("*/run.json"))}
    recs = {name: rec for name, rec in found.items() if rec is not None}
    order: list[str] = []
    path = out / "runs.csv"
    if path.is_file() and path.stat().st_size > 0:
        order = [str(d) for d in pd.read_csv(path)["run_dir"]]
    names = list(dict.fromkeys(Path(d).name for d in order if Path(d).name in recs))
    names += [n for n in recs if n not in names]
    tmp = path.with_suffix(".csv.tmp")
    with RowWriter(tmp, RUN_COLUMNS, RUN_KEY) as writer:
        writer.write_many(csv_row(recs[n], out) for n in names)
    tmp.replace(path)
    return path
