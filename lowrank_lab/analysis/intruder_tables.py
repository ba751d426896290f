"""The tables of an intruder-dimension run: the long-format rows of intruders.csv and what is
summed from them (per matrix, per module type, against ε). Plots: :mod:`lowrank_lab.analysis.figures`."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from lowrank_lab.analysis.intruders import EPSILON_GRID, IntruderRecord
from lowrank_lab.utils.tables import to_markdown

#: Columns of intruders.csv: one row per (matrix, side, tuned rank) — long format for pandas.
ROW_COLUMNS = (
    "tensor",
    "layer",
    "module",
    "expert",
    "side",
    "rows",
    "cols",
    "rank",
    "singular_value",
    "similarity",
    "similarity_bound",
    "base_rank",
    "base_singular_value",
    "intruder",
    "count",
    "epsilon",
    "top_k",
    "tuned_svd",
)
ROW_KEY = ("tensor", "side", "rank")
#: The file of those rows in an intruders run's output folder.
ROWS_FILE = "intruders.csv"


def read_intruder_count(path, side: str = "left") -> float | None:
    """Intruder dimensions in one intruders.csv (:data:`ROW_COLUMNS`): the sum of its 0/1
    ``intruder`` column over the rows of ``side`` (the left singular vectors: Shuttleworth et al.
    2024 count those), at the ε the file was written with. A table without a ``side`` column counts
    every row. None when the file cannot be read or has no ``intruder`` column.
    """
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError):
        return None
    if "intruder" not in df.columns:
        return None
    if "side" in df.columns:
        df = df[df["side"] == side]
    return float(df["intruder"].sum())


def record_rows(info, record: IntruderRecord) -> list[dict]:
    """The long-format rows of one matrix and side: one per tuned vector ranked 1..k."""
    rows = []
    bounds = record.similarity_bounds
    for i in range(record.top_k):
        sim = float(record.similarities[i])
        rows.append(
            {
                "tensor": info.tensor,
                "layer": "" if info.layer is None else int(info.layer),
                "module": info.module,
                "expert": "" if getattr(info, "expert", None) is None else int(info.expert),
                "side": record.side,
                "rows": int(info.shape[0]),
                "cols": int(info.shape[1]),
                "rank": i + 1,
                "singular_value": f"{float(record.singular_values[i]):.8g}",
                "similarity": f"{sim:.8g}",
                "similarity_bound": 0.0 if bounds is None else f"{float(bounds[i]):.3g}",
                "base_rank": int(record.base_ranks[i]),
                "base_singular_value": f"{float(record.base_singular_values[i]):.8g}",
                "intruder": int(sim < record.epsilon),
                "count": record.count,
                "epsilon": record.epsilon,
                "top_k": record.top_k,
                "tuned_svd": record.tuned_svd,
            }
        )
    return rows



def per_matrix(df):
    """One row per (tensor, side) from the long table, in the table's (model) order: layer, module,
    count, min and mean of the top-k best-match similarities."""
    out = (
        df.groupby(["tensor", "side"], sort=False)
        .agg(
            layer=("layer", "first"),
            module=("module", "first"),
            count=("intruder", "sum"),
            min_similarity=("similarity", "min"),
            mean_similarity=("similarity", "mean"),
            top_k=("rank", "size"),
        )
        .reset_index()
    )
    return out


def module_totals(df):
    """Totals per module type (and side): matrices, intruders, matrices with any, mean best match."""
    pm = per_matrix(df)
    stats = {
        "matrices": ("tensor", "size"),
        "intruders": ("count", "sum"),
        "with_intruders": ("count", lambda c: int((c > 0).sum())),
        "mean_similarity": ("mean_similarity", "mean"),
    }
    out = pm.groupby(["side", "module"], sort=False).agg(**stats).reset_index()
    total = pm.groupby("side", sort=False).agg(**stats).reset_index().assign(module="all")
    return pd.concat([out, total[out.columns]], ignore_index=True)


def sweep_table(df, epsilons: Sequence[float] = EPSILON_GRID, *, totals: bool = True):
    """Long table ``(side, module, epsilon, count)`` recomputed from the stored similarities.

    A row's similarity is its best match, so the count at any ε is a filter on the CSV — no SVD.
    With ``totals`` the rows ``module == "all"`` hold the sums (leave them out before summing
    over modules yourself).
    """
    rows = []
    for (side, module), grp in df.groupby(["side", "module"], sort=False):
        for e in epsilons:
            rows.append(
                {
                    "side": side,
                    "module": module,
                    "epsilon": float(e),
                    "count": int((grp.similarity < e).sum()),
                }
            )
    if totals:
        for side, grp in df.groupby("side", sort=False):
            for e in epsilons:
                rows.append(
                    {
                        "side": side,
                        "module": "all",
                        "epsilon": float(e),
                        "count": int((grp.similarity < e).sum()),
                    }
                )
    return pd.DataFrame(rows, columns=["side", "module", "epsilon", "count"])


def summary_markdown(
    *,
    totals: pd.DataFrame,
    sweep: pd.DataFrame,
    per_matrix: pd.DataFrame,
    skipped: pd.DataFrame,
    base: str,
    tuned: str,
    sides: Sequence[str],
    top_k: int,
    epsilon: float,
    tuned_svd: str,
    command: str | None,
    cache: tuple[object, int, int] | None,
    pick: tuple[str, str] | None,
    figures: Sequence[str],
    with_sweep: bool,
) -> str:
    """summary.md of an intruder run: what was compared, the totals per module type, the count
    against ε (``with_sweep``), the matrix with most intruders, the skipped matrices, the files.

    ``cache`` is ``(directory, hits, misses)`` of the base-SVD cache, or None when it was off.
    """
    lines = [
        "# Intruder dimensions",
        "",
        f"- base: `{base}`",
        f"- tuned: `{tuned}`",
        f"- definition: Shuttleworth et al. 2024 (arXiv 2410.21228) — a top-{top_k} "
        f"{'/'.join(sides)} singular vector of the tuned matrix whose best |cos| with all base singular "
        f"vectors is < ε = {epsilon}",
        f"- matrices: {per_matrix.tensor.nunique()}, tuned SVD: {tuned_svd}, base SVD cache: "
        + ("off" if cache is None else f"`{cache[0]}` ({cache[1]} hits, {cache[2]} misses this run)"),
        f"- command: `{command}`",
        "",
        f"## Totals per module type (ε = {epsilon})",
        "",
        to_markdown(totals),
    ]
    if with_sweep:
        wide = sweep.pivot_table(index="epsilon", columns=["side", "module"], values="count", sort=False)
        wide.columns = [m if len(sides) == 1 else f"{s}:{m}" for s, m in wide.columns]
        lines += ["## Count against ε", "", to_markdown(wide.reset_index())]
    if pick is not None:
        see = f": see `{figures[-1]}`" if figures else ""
        lines += ["## Matrix with most intruders", "", f"`{pick[0]}` ({pick[1]}){see}", ""]
    if not skipped.empty:
        lines += ["## Skipped matrices", ""]
        lines += [f"- `{r.tensor}`: {r.reason}" for r in skipped.itertuples()]
        lines.append("")
    lines += [
        "## Files",
        "",
        "- `intruders.csv` (long format; columns in `python -m lowrank_lab.intruders --help`)",
        "- `skipped.csv`",
    ]
    lines += [f"- `{f}`" for f in figures]
    if with_sweep:
        lines.append("- `sweep.csv`")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Intruder mitigation (``intruders --mitigate``)
# --------------------------------------------------------------------------------------------------

#: Columns of mitigation.csv: one row per (run, λ). λ = 1 is the tuned model itself (the reference
#: a mitigated row is compared with, paired by run). ``task_metric`` is the run's task metric on its
#: dev examples (``metric`` names it; ``recorded_metric`` is what the run recorded there, which the
#: λ = 1 row reproduces); ``forgetting`` is ``base_spearman − tuned_spearman`` of
#: :mod:`lowrank_lab.training.forgetting` (positive: skill lost). Empty for a PEFT adapter (no task).
MITIGATION_COLUMNS = (
    "run", "method", "rank", "seed", "task", "metric", "lambda", "top_k", "epsilon", "matrices",
    "mitigated_matrices", "intruders", "task_metric", "task_loss", "recorded_metric", "base_spearman",
    "tuned_spearman", "forgetting", "adapter",
)
#: Columns of mitigation_matrices.csv: what each λ did to each matrix.
MITIGATION_MATRIX_COLUMNS = (
    "lambda", "tensor", "layer", "module", "rows", "cols", "adapter_rank", "scaling", "intruders",
    "intruder_ranks", "changed", "delta_fro", "mitigated_delta_fro",
)


def collect_mitigation(paths) -> pd.DataFrame:
    """One table from the mitigation.csv of several ``intruders --mitigate`` runs (files or folders):
    the per-run rows a claim over a study's runs reads. Rows of one (run, λ) given twice are kept once."""
    from pathlib import Path

    frames = []
    for p in paths:
        p = Path(p)
        f = p / "mitigation.csv" if p.is_dir() else p
        if f.is_file():
            frames.append(pd.read_csv(f))
    if not frames:
        return pd.DataFrame(columns=list(MITIGATION_COLUMNS))
    return pd.concat(frames, ignore_index=True).drop_duplicates(["run", "lambda"], keep="last")


def plot_mitigation_tradeoff(frame: pd.DataFrame, path, *, title: str = ""):
    """Task metric against forgetting, one point per λ (labelled), joined in λ order per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lowrank_lab.utils.files import atomic_path

    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for run, grp in frame.sort_values("lambda").groupby("run", sort=False):
        ax.plot(grp["forgetting"], grp["task_metric"], marker="o", label=str(run))
        for lam, x, y in zip(grp["lambda"], grp["forgetting"], grp["task_metric"], strict=True):
            ax.annotate(f"λ={lam:g}", (x, y), fontsize=7, textcoords="offset points", xytext=(4, 3))
    metric = str(frame["metric"].iloc[0]) if len(frame) else "task metric"
    ax.set_xlabel("forgetting (STS-B Spearman drop, base − model)")
    ax.set_ylabel(f"task {metric} (dev)")
    ax.set_title(title or "Intruder mitigation: task metric vs forgetting over λ", fontsize=9)
    if frame["run"].nunique() > 1:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def mitigation_effects(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run and λ < 1, the paired differences a claim judges, against the same run's λ = 1 row:
    ``task_cost = task_metric(1) − task_metric(λ)`` (positive: the task got worse, for a metric where
    higher is better) and ``forgetting_reduction = forgetting(1) − forgetting(λ)`` (positive: less
    forgotten). Columns: run, method, rank, seed, task, metric, lambda, task_cost,
    forgetting_reduction. A run without its λ = 1 row has no reference and is left out."""
    cols = ["run", "method", "rank", "seed", "task", "metric", "lambda", "task_cost", "forgetting_reduction"]
    ref = frame[frame["lambda"] == 1.0].set_index("run")
    rows = frame[(frame["lambda"] != 1.0) & frame["run"].isin(ref.index)].copy()
    if rows.empty:
        return pd.DataFrame(columns=cols)
    rows["task_cost"] = rows["run"].map(ref["task_metric"]) - rows["task_metric"]
    rows["forgetting_reduction"] = rows["run"].map(ref["forgetting"]) - rows["forgetting"]
    return rows[cols].reset_index(drop=True)
