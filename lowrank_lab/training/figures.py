"""Figures of a fine-tuning study: loss curves with seed bands, eval metric over steps, the final
metric against the number of trainable parameters, and the learning-rate selection. The metric
figures draw the reference predictors a method must beat (``references``: label -> level, from
:func:`~.claims.reference_levels`) as grey horizontal lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on the study machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lowrank_lab.utils.files import atomic_path  # noqa: E402

from .metrics import METRIC_LABELS  # noqa: E402
from .record import RunRecord, method_labeller  # noqa: E402
from .summary import moving_average, smoothing_window  # noqa: E402
from .tasks import TaskSpec  # noqa: E402


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def draw_references(ax, references: Mapping[str, float] | None) -> None:
    """Grey horizontal lines at the reference predictors' levels, labelled with their values."""
    for i, (label, level) in enumerate((references or {}).items()):
        ax.axhline(level, color="0.45", lw=1, ls=("--", ":", "-.")[i % 3], label=f"{label} {level:.3g}")


def loss_curves(
    records: list[RunRecord], methods: Sequence[str], path: str | Path, *, title: str
) -> Path:
    """Smoothed training loss per method: the mean over seeds as a line, min–max over seeds as a band."""
    colors = _colors(methods)
    label = method_labeller(records)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for m in methods:
        curves = [r.train_loss for r in records if label(r) == m and r.train_loss]
        if not curves:
            continue
        n = min(len(c) for c in curves)  # a diverged seed shortens the common span
        window = smoothing_window(max(len(c) for c in curves))
        sm = np.array([moving_average(c[:n], window) for c in curves])  # (seeds, n)
        x = np.arange(1, n + 1)
        ax.plot(
            x, sm.mean(0), color=colors[m], label=f"{m} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
        )
        if len(curves) > 1:
            ax.fill_between(x, sm.min(0), sm.max(0), color=colors[m], alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (moving average, {smoothing_window(_max_steps(records))} steps)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def eval_curves(
    records: list[RunRecord],
    methods: Sequence[str],
    spec: TaskSpec,
    path: str | Path,
    *,
    title: str,
    references: Mapping[str, float] | None = None,
) -> Path:
    """Eval metric at each evaluation step: mean over seeds with a min–max band; ``references``
    on the same split as grey lines."""
    colors = _colors(methods)
    label = method_labeller(records)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for m in methods:
        evals = [{e.step: e.metric for e in r.evals} for r in records if label(r) == m and r.evals]
        if not evals:
            continue
        steps = sorted(set.intersection(*[set(ev) for ev in evals]))
        if not steps:
            continue
        vals = np.array([[ev[s] for s in steps] for ev in evals])
        ax.plot(steps, vals.mean(0), marker="o", ms=3, color=colors[m], label=m)
        if len(evals) > 1:
            ax.fill_between(steps, vals.min(0), vals.max(0), color=colors[m], alpha=0.2, linewidth=0)
    draw_references(ax, references)
    ax.set_xlabel("step")
    ax.set_ylabel(METRIC_LABELS[spec.metric])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def metric_vs_params(
    rows: list[dict[str, Any]],
    spec: TaskSpec,
    path: str | Path,
    *,
    title: str,
    references: Mapping[str, float] | None = None,
) -> Path:
    """Final metric (mean, error bar = sd over seeds) against trainable parameters (log scale);
    ``references`` on the dev split as grey lines."""
    colors = _colors([r["method"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for r in rows:
        s = r["metric"]
        if not s.n or not r["trainable_params"]:
            continue
        yerr = s.sd if s.n > 1 else None
        ax.errorbar(r["trainable_params"], s.mean, yerr=yerr, fmt="o", color=colors[r["method"]], capsize=3)
        ax.annotate(
            r["method"],
            (r["trainable_params"], s.mean),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    draw_references(ax, references)
    if references:
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (adapter + task head, if any)")
    ax.set_ylabel(f"final {METRIC_LABELS[spec.metric]}")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def _max_steps(records: list[RunRecord]) -> int:
    return max((len(r.train_loss) for r in records), default=1)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # a reader (or a second stream of the study) never sees half a PNG
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def lr_selection(frame: Any, path: str | Path, *, references: Mapping[str, float] | None = None) -> Path:
    """Validation metric (``val_metric``: of the weights each run kept, the last or, under early
    stopping, the best evaluation's; mean over selection seeds) against learning rate, one line per
    method (log x), the chosen rate ringed and collapsed or unfinished runs drawn as crosses at the
    bottom of the axis; ``references`` on the validation split as grey lines (GSM8K: the bigram of
    the selection gate).

    ``frame`` is ``selection.csv`` as a pandas DataFrame (columns method, lr, val_metric, status,
    collapsed, chosen)."""
    frame = frame.copy()
    if "rank" in frame.columns and frame["rank"].nunique() > 1:
        frame["method"] = frame["method"] + " r" + frame["rank"].astype(str)
    methods = list(dict.fromkeys(frame["method"]))
    colors = _colors(methods)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ok = frame[(frame["status"] == "finished") & ~frame["collapsed"].fillna(False).astype(bool)]
    low = float(ok["val_metric"].min()) if len(ok) else 0.0
    for m in methods:
        rows = frame[frame["method"] == m].sort_values("lr")
        good = rows.index.isin(ok.index)
        ax.plot(rows["lr"][good], rows["val_metric"][good], "o-", color=colors[m], label=m, ms=4)
        if (~good).any():
            ax.plot(rows["lr"][~good], [low] * int((~good).sum()), "x", color=colors[m], ms=7)
        chosen = rows[rows["chosen"].fillna(False).astype(bool)]
        ax.plot(chosen["lr"], chosen["val_metric"], "o", mfc="none", mec=colors[m], ms=11, mew=1.5)
    draw_references(ax, references)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head rate for the head-only control)")
    ax.set_ylabel("validation metric of the kept weights")  # last step, or best under early stopping
    ax.set_title("learning-rate selection on the validation split (ringed: chosen; x: collapsed/failed)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)
