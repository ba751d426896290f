"""Figures of an analysis run (PNG, matplotlib's Agg backend, so no display is needed).

Each function takes the tables ``python -m lowrank_lab.analyze`` writes (pandas DataFrames read from
its CSV files) and writes one titled figure with labelled axes and a legend.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window (headless CI, remote GPU boxes)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lowrank_lab.utils.files import atomic_path  # noqa: E402

#: Above this many layers the spectra plot uses a colour bar instead of one legend entry per layer.
_MAX_LEGEND_LAYERS = 8
_DPI = 120
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_DASHES = ["-", "--", "-.", ":"]
#: Marker sizes of the first and last method of the error-ratio plot (see plot_error_ratio).
_MARKER_MAX, _MARKER_MIN = 11.0, 4.0


def _save(fig: plt.Figure, path: str | Path, *, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` atomically, never through a symbolic link, and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path, "--figures") as tmp:
            fig.savefig(tmp, dpi=_DPI, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)
    return path


def plot_spectra(
    spectra: pd.DataFrame,
    singular_values: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    model: str = "",
) -> Path:
    """Singular-value spectra σ_i against i on log-log axes, one panel per module type, one line per
    layer (coloured by depth).

    Parameters
    ----------
    spectra : DataFrame
        spectra.csv (for each tensor's module and layer, in model order).
    singular_values : mapping tensor name -> array
        All singular values of each matrix; tensors without values are left out.
    """
    modules = list(dict.fromkeys(spectra["module"])) if not spectra.empty else []
    ncols = min(3, max(len(modules), 1))
    nrows = max(1, -(-len(modules) // ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False, layout="constrained"
    )
    layers = sorted({int(v) for v in spectra["layer"]}) if not spectra.empty else []
    cmap = plt.get_cmap("viridis")
    span = max(len(layers) - 1, 1)
    colour = {layer: cmap(i / span) for i, layer in enumerate(layers)}
    for ax, module in zip(axes.flat, modules, strict=False):
        rows = spectra[spectra["module"] == module]
        for tensor, layer in zip(rows["tensor"], rows["layer"], strict=True):
            s = singular_values.get(tensor)
            if s is None:
                continue
            s = np.asarray(s, dtype=np.float64)
            s = s[s > 0]
            ax.loglog(
                np.arange(1, s.size + 1), s, color=colour[int(layer)], lw=1.2, label=f"layer {int(layer)}"
            )
        ax.set_title(f"{module} ({int(rows['m'].iloc[0])}×{int(rows['n'].iloc[0])})")
        ax.set_xlabel(r"index $i$ (descending order)")
        ax.set_ylabel(r"singular value $\sigma_i$")
        ax.grid(True, which="major", alpha=0.3)
        if len(layers) <= _MAX_LEGEND_LAYERS:
            ax.legend(fontsize=7, title="layer", title_fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(modules):]:
        ax.axis("off")
    if len(layers) > _MAX_LEGEND_LAYERS:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(min(layers), max(layers)))
        fig.colorbar(sm, ax=axes.ravel().tolist(), label="layer")
    fig.suptitle(f"Singular-value spectra per module type{' — ' + model if model else ''}")
    return _save(fig, path)


def plot_error_ratio(fact: pd.DataFrame, path: str | Path, *, model: str = "") -> Path:
    """Median error ratio (‖W − Ŵ‖_F over the Eckart–Young optimum) against rank, one line per method,
    with the range over matrices shaded; log y axis, since methods differ by orders of magnitude."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    data = fact.assign(err_ratio=pd.to_numeric(fact["err_ratio"], errors="coerce"))
    data = data.dropna(subset=["err_ratio"])
    methods = list(dict.fromkeys(data["method"]))
    for k, method in enumerate(methods):
        g = data[data["method"] == method].groupby("rank")["err_ratio"]
        ranks = np.array(sorted(g.groups))
        med, lo, hi = g.median().loc[ranks], g.min().loc[ranks], g.max().loc[ranks]
        # Methods with equal ratios (svd and rsvd both at 1.0; qr and rlu) must not hide each other:
        # distinct markers and dashes, hollow markers shrinking and drawn later (higher zorder) method
        # by method, so coinciding points show as nested rings, and lines thinning the same way.
        size = _MARKER_MAX - (_MARKER_MAX - _MARKER_MIN) * k / max(len(methods) - 1, 1)
        (line,) = ax.plot(ranks, med, marker=_MARKERS[k % len(_MARKERS)], ls=_DASHES[k % len(_DASHES)],
                          ms=size, mfc="none", mew=1.4, lw=2.6 - 1.4 * k / max(len(methods) - 1, 1),
                          zorder=3 + k, label=method)
        ax.fill_between(ranks, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(1.0, color="black", lw=0.8, ls="--", label="optimum (SVD)")
    ax.set_yscale("log")
    if not data.empty:
        ax.set_xticks(sorted(data["rank"].unique()))
    ax.set_xlabel("rank r")
    ax.set_ylabel(r"error ratio  $\|W - \hat{W}\|_F \,/\, \|W - W_r\|_F$")
    suffix = f" — {model}" if model else ""
    ax.set_title(f"Error ratio vs rank per method (median, range over matrices){suffix}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_init_time(fact: pd.DataFrame, path: str | Path, *, model: str = "") -> Path:
    """Total initialisation time per method (summed over matrices), one bar group per rank; log y."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    methods = list(dict.fromkeys(fact["method"])) if not fact.empty else []
    ranks = sorted(fact["rank"].unique()) if not fact.empty else []
    total = fact.groupby(["method", "rank"])["init_seconds"].sum() if methods else pd.Series(dtype=float)
    width = 0.8 / max(len(ranks), 1)
    x = np.arange(len(methods))
    for k, rank in enumerate(ranks):
        heights = [float(total.get((m, rank), np.nan)) for m in methods]
        ax.bar(x + (k - (len(ranks) - 1) / 2) * width, heights, width, label=f"r = {rank}")
    ax.set_xticks(x, methods, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_xlabel("method")
    ax.set_ylabel("init time, summed over matrices (s)")
    ax.set_title(f"Initialisation time per method{' — ' + model if model else ''}")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, title="rank")
    return _save(fig, path)


def plot_count_vs_epsilon(sweep, path: str | Path, *, title: str = "") -> Path:
    """Intruder count against ε, one line per module type and the total (paper, Fig. 4 style)."""
    sides = list(dict.fromkeys(sweep.side))
    fig, axes = plt.subplots(1, len(sides), figsize=(5.5 * len(sides), 4), squeeze=False)
    for ax, side in zip(axes[0], sides, strict=True):
        part = sweep[sweep.side == side]
        for module, grp in part.groupby("module", sort=False):
            style = {"color": "black", "linewidth": 2.5} if module == "all" else {"linewidth": 1.2}
            ax.plot(grp.epsilon, grp["count"], marker="o", markersize=3, label=module, **style)
        ax.set_xlabel("ε (best-match |cos| threshold)")
        ax.set_ylabel("intruder dimensions")
        ax.set_title(f"{side} singular vectors")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, tight=False)


def plot_similarity_matrix(record, path: str | Path, *, tensor: str = "") -> Path:
    """Heatmap of the (k, p) |cos| matrix of one matrix; intruder rows are marked on the left."""
    if record.similarity_matrix is None:
        raise ValueError("the record holds no similarity matrix: compute it with keep_matrix=True")
    S = record.similarity_matrix.float().numpy()
    fig, ax = plt.subplots(figsize=(9, 0.35 * S.shape[0] + 1.6))
    im = ax.imshow(S, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xlabel(f"base {record.side} singular vector (rank 1..{S.shape[1]})")
    ax.set_ylabel("tuned singular vector (rank)")
    ax.set_yticks(range(S.shape[0]), [str(r) for r in record.ranks])
    for r in record.intruder_ranks:
        ax.annotate(
            "< intruder",
            (S.shape[1] - 0.5, r - 1),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
            color="crimson",
            annotation_clip=False,
        )
    fig.colorbar(im, ax=ax, label="|cos|")
    ax.set_title(f"{tensor}: {record.count} intruder(s) at ε = {record.epsilon}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, tight=False)
