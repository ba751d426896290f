# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Singular-value spectra of real weights
#
# Whether a rank-r factorization can be good at all is decided by the spectrum: how fast σ_i falls.
# REFERENCE.md notes that real LLM weights decay slowly (log-log slope ≈ −0.3 to −0.5), which is where
# sketches without power iterations fail and where "the top r directions" hold only part of ‖W‖².
# Here, for every target matrix of all-MiniLM-L6-v2 (and stories260K when ../shared/data is present):
#
# * the spectra σ_i against i on log-log axes, one panel per module type, one line per layer;
# * across layers: **stable rank** ‖W‖_F² / ‖W‖₂², **effective rank** (Roy & Vetterli 2007, entropy of
#   σ / Σσ) and the **power-law exponent alpha** of the eigenvalue density of WᵀW (WeightWatcher's
#   fit; α ≈ 2 is WeightWatcher's "well trained"), with its standard error;
# * the fraction of ‖W‖_F² the best rank-r approximation keeps.
#
# Every number comes from `spectra.csv` and the saved singular values of a `python -m
# lowrank_lab.analyze` run (issue 5): read from `reports/<model>/` when a full run is saved there,
# else run here. Small mode keeps every MiniLM layer (stories260K: layers 0, 2, 4) and a single cheap
# factorization per matrix (svd at the smallest ranks).

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lowrank_lab import notebook_support as nbs

NOTEBOOK = "notebooks/02_spectra_of_real_weights.ipynb"
SMALL = nbs.start(NOTEBOOK)  # small or full size, BLAS threads, pandas display, where outputs go

# %%
from IPython.display import Image, display

from lowrank_lab.analysis.figures import plot_spectra
from lowrank_lab.analysis.report import module_spectra_table

runs = {"minilm": nbs.analysis_dir(
    "minilm", name="02_minilm",
    small=dict(methods="svd", ranks="8", repeats=1, warmup=0))}
stories = nbs.stories260k_path()
if stories is None:
    print("stories260K: ../shared/data/models/stories260K/stories260K.bin not found -> that part is skipped")
else:
    runs["stories260K"] = nbs.analysis_dir(
        str(stories), name="02_stories260K", saved="stories260K",
        small=dict(methods="svd", ranks="4,8,16", layers="0,2,4", repeats=1, warmup=0),
        full=dict(ranks="4,8,16"))
spectra = {name: pd.read_csv(d / "spectra.csv") for name, d in runs.items()}
values = {name: nbs.load_singular_values(d, list(spectra[name]["tensor"])) for name, d in runs.items()}
for name in runs:
    print(f"{name}: {len(spectra[name])} matrices, modules {list(dict.fromkeys(spectra[name].module))}, "
          f"{len(values[name])} saved spectra")

# %% [markdown]
# ## Spectra per module type
#
# One panel per module type, one line per layer (colour = depth); the figure is drawn by
# `lowrank_lab.analysis.figures.plot_spectra`, the one the analysis CLI writes.

# %%
for name in runs:
    path = plot_spectra(spectra[name], values[name], nbs.figures_dir() / f"02_spectra_{name}.png", model=name)
    print(path)
    display(Image(filename=str(path)))

# %% [markdown]
# All module types of one model on the same axes, normalised (σ_i / σ_1 against i / min(m, n)),
# with the slopes REFERENCE.md quotes for real LLM weights drawn for comparison (grey lines are
# guides through σ_1, not fits).

# %%
fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.2), squeeze=False, layout="constrained")
for ax, name in zip(axes[0], runs, strict=True):
    s = spectra[name]
    modules = list(dict.fromkeys(s.module))
    for k, module in enumerate(modules):
        for j, tensor in enumerate(s[s.module == module].tensor):
            v = values[name].get(tensor)
            if v is None:
                continue
            v = v[v > 0]
            ax.loglog(np.arange(1, v.size + 1) / v.size, v / v[0], color=f"C{k}", lw=0.9, alpha=0.7,
                      label=module if j == 0 else None)
    x = np.logspace(-2.5, 0, 20)
    for slope in (-0.3, -0.5):
        ax.loglog(x, (x / x[0]) ** slope, color="grey", ls=":", lw=1)
        ax.annotate(f"slope {slope}", (x[-1], (x[-1] / x[0]) ** slope), fontsize=7, color="grey")
    ax.set_xlabel("i / min(m, n)")
    ax.set_ylabel("σ_i / σ_1")
    ax.set_title(f"{name}: normalised spectra, every layer")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
print(nbs.save_figure(fig, "02_normalised_spectra"))
plt.show()

# %% [markdown]
# ## Stable rank, effective rank and alpha across layers
#
# Per module type (one line each) against depth. The alpha panel shows the fit's standard error as
# error bars; WeightWatcher recommends ≥ 50 eigenvalues for a meaningful fit, so stories260K's 32–64
# eigenvalue matrices give rough exponents at best (NaN where the fit refused).

# %%
stats = [("stable_rank", "stable rank ‖W‖_F² / ‖W‖₂²"), ("effective_rank", "effective rank (Roy & Vetterli)"),
         ("alpha", "power-law alpha of ESD(WᵀW)")]
for name in runs:
    s = spectra[name]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), layout="constrained")
    for ax, (col, label) in zip(axes, stats, strict=True):
        for module, g in s.groupby("module", sort=False):
            g = g.sort_values("layer")
            if col == "alpha":
                ax.errorbar(g.layer, g.alpha, yerr=g.alpha_sigma, marker="o", capsize=3, label=module)
            else:
                ax.plot(g.layer, g[col], marker="o", label=module)
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
        ax.set_xticks(sorted(s.layer.unique()))
        ax.grid(True, alpha=0.3)
    axes[2].axhline(2.0, color="k", ls="--", lw=0.8)
    axes[2].axhspan(2.0, 6.0, color="green", alpha=0.05)  # WeightWatcher's "well-trained" range
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{name}: spectral statistics per module type across layers")
    print(nbs.save_figure(fig, f"02_stats_across_layers_{name}"))
    plt.show()

# %% [markdown]
# ## Per module type: medians over layers, and the energy a rank-r approximation keeps
#
# `module_spectra_table` is the spectral part of the analysis summary (issue 5); `median_energy_r{r}`
# is Σ_{i≤r} σ_i² / Σ σ_i², the most of ‖W‖_F² any rank-r adapter init can capture.

# %%
tables = []
for name in runs:
    s = spectra[name]
    ranks = sorted(int(c.removeprefix("energy_r")) for c in s.columns if c.startswith("energy_r"))
    tables.append(module_spectra_table(s, ranks).assign(model=name))
table = pd.concat(tables, ignore_index=True)
table = table[["model", *[c for c in table.columns if c != "model"]]]
nbs.save_table(table, "02_spectra_per_module", source=NOTEBOOK,
               title="Spectral statistics per module type (medians over layers), real weights")
table

# %%
per_matrix = pd.concat([spectra[n].assign(model=n) for n in runs], ignore_index=True)
cols = ["model", "tensor", "layer", "module", "m", "n", "spec_norm", "stable_rank", "effective_rank",
        "alpha", "alpha_sigma", "alpha_ks_d", "alpha_n_tail"]
nbs.save_table(per_matrix[cols], "02_spectra_per_matrix", source=NOTEBOOK,
               title="Spectral statistics of every target matrix")
min_dim = per_matrix[["m", "n"]].min(axis=1)
for col in ["stable_rank", "effective_rank"]:
    share = (per_matrix[col] / min_dim).groupby(per_matrix.model).median().round(4).to_dict()
    print(f"{col} / min(m, n), median per model:", share)
