"""The tables of an intruder-dimension run: the long-format rows of intruders.csv and what is
summed from them (per matrix, per module type, against ε). Plots: :mod:`lowrank_lab.analysis.figures`."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from lowrank_lab.analysis.intruders import EPSILON_GRID, IntruderRecord

#: Columns of intruders.csv: one row per (matrix, side, tuned rank) — long format for pandas.
ROW_COLUMNS = (
    "tensor",
    "layer",
    "module",
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
