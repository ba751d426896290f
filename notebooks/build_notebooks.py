"""Write the study notebooks (``notebooks/NN_*.ipynb``) from the cell texts below, outputs cleared.

The notebooks are the product; this script only keeps their source reviewable as Python and makes
"outputs cleared before committing" automatic. Run it after editing a cell:

    python notebooks/build_notebooks.py            # (re)write every notebook
    python notebooks/build_notebooks.py 04 01      # only those whose names start with 04 or 01
    python notebooks/build_notebooks.py --check    # exit 1 if a committed notebook differs from its source

It is not part of the package and holds no algorithm: each notebook imports lowrank_lab, calls it, plots.
"""

# ruff: noqa: E501  (the cell texts are notebook source, laid out for reading in Jupyter)
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# Shared first code cell: mode, output folders, matplotlib.
SETUP = '''\
import os

# MKL's OpenMP threads busy-wait between calls; on a shared 2-core CPU that makes small SVDs 100x
# slower (see lowrank_lab/analyze.py). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if os.environ.get("LOWRANK_LAB_SMALL", "").lower() in ("1", "true", "yes", "on"):
    # Small mode factors tiny matrices, where BLAS threads only fight over the cores (10x slower
    # under load); full-size runs keep every thread for the timings they report.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import matplotlib.pyplot as plt
{numpy}import pandas as pd

from lowrank_lab import notebook_support as nbs

SMALL = nbs.small_mode()
NOTEBOOK = "notebooks/{name}.ipynb"
pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 30)
print(nbs.mode_line())
print("figures ->", nbs.figures_dir(), "| tables ->", nbs.reports_dir())'''


NUMPY = "import numpy as np\n"


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


# ----------------------------------------------------------------------------------------------------
# 04 parameter counts

NB04 = [
    md('''
# 04 · Trainable-parameter tables of the NLoRA and PiSSA papers, regenerated

Both papers fine-tune **Llama-2-7B** with adapters on all seven projection types (q, k, v, o, gate,
up, down) of its 32 layers at rank r = 128, and print how many parameters each method trains.
Here every count comes from the toolkit's registries through `lowrank_lab.params.parameter_table`,
the table `python -m lowrank_lab.params --model llama-7b --rank 128` prints — the architecture from
`lowrank_lab.weights.get_spec("llama-7b")`, the per-matrix formula of each method from
`lowrank_lab.adapters.ADAPTERS` (`closed_form_trainable`) — and is checked against the published
figures (../shared/REFERENCE.md):

* LoRA at r = 128: **319,815,680** trainable parameters;
* the extra r × r cores of SLoRA / NLoRA: 7 · 32 · r² = **3,670,016** at r = 128 ("+3.67M");
* IntTune trains only those cores.

Then the closed form is checked against a *count* on a real model: each adapter is injected into
the real all-MiniLM-L6-v2 and its `requires_grad` parameters are counted.
'''),
    code(SETUP.format(name="04_parameter_counts", numpy="")),
    code('''
from lowrank_lab.adapters import ADAPTERS
from lowrank_lab.params import parameter_table
from lowrank_lab.weights import get_spec

spec = get_spec("llama-7b")
shapes = spec.target_shapes()          # one block, (out, in) as torch.nn.Linear
L = spec.num_layers
base = spec.num_parameters()
print(f"{spec.name} ({spec.hub_id}): {L} layers, {base:,} parameters")
pd.DataFrame([{"module": k, "out": m, "in": n, "entries": m * n} for k, (m, n) in shapes.items()])
'''),
    md('''
## The NLoRA paper's table (Llama-2-7B, all seven projections)

NLoRA (Guo et al. 2025, arXiv 2502.14482) compares LoRA, SLoRA (LoRA with an r × r core), NLoRA
(Nyström init of that three-matrix form) and IntTune (only the core trains) at several ranks.
'''),
    code('''
ranks = [8, 16, 32, 64, 128, 256]
# the table of: python -m lowrank_lab.params --model llama-7b --rank 8,16,32,64,128,256 --csv
params = parameter_table("llama-7b", ranks=ranks)
print("targets:", params.targets.iloc[0], "| layers:", params.layers.iloc[0])
trainable = params.set_index(["method", "rank"])["trainable"]

def count(method, rank):
    return int(trainable[(method, rank)])

rows = []
for method, rank in [("lora", 128), ("slora", 128), ("nlora", 128),
                     ("inttune", 256), ("inttune", 128), ("inttune", 64)]:
    n = count(method, rank)
    rows.append({
        "method": method, "rank": rank, "trainable": n,
        # the paper's "+3.67M": what the r x r cores add on top of LoRA's A and B (SLoRA, NLoRA)
        "extra_vs_lora": n - count("lora", rank) if {"A", "M"} <= ADAPTERS[method].trains else None,
        "pct_of_base": 100 * n / base,
        "formula_per_matrix": ADAPTERS[method].closed_form,
    })
nlora_table = pd.DataFrame(rows).astype({"extra_vs_lora": "Int64"})
nbs.save_table(nlora_table, "04_nlora_paper_params", source=NOTEBOOK,
               title="Trainable parameters, Llama-2-7B, q/k/v/o/gate/up/down × 32 layers (NLoRA paper)")
nlora_table
'''),
    md('''
## The PiSSA paper's table (Llama-2-7B, r = 128)

PiSSA (Meng et al. 2024, arXiv 2404.02948, Table 2) trains the same number of parameters as LoRA —
only the initialisation differs — against full fine-tuning of the whole model. MiLoRA and the fast
(randomized-SVD) PiSSA are added for completeness: their counts are LoRA's too.
'''),
    code('''
rank = 128
rows = [{"method": "full fine-tuning (whole model)", "trainable": base}]
rows += [{"method": "full fine-tuning (target matrices only)", "trainable": count("full", rank)}]
rows += [{"method": m, "trainable": count(m, rank)} for m in ["lora", "pissa", "pissa-fast", "milora"]]
pissa_table = pd.DataFrame(rows)
pissa_table["pct_of_base"] = 100 * pissa_table["trainable"] / base
nbs.save_table(pissa_table, "04_pissa_paper_params", source=NOTEBOOK,
               title="Trainable parameters, Llama-2-7B, r = 128 (PiSSA paper, Table 2)")
pissa_table
'''),
    md('''
## Against the published numbers

Each line is an assertion: the notebook fails (and so does CI) if a registry change moves a count.
'''),
    code('''
published = [
    ("LoRA r=128, 7 projections x 32 layers", count("lora", 128), 319_815_680),
    ("SLoRA/NLoRA extra cores at r=128 (+3.67M)", count("nlora", 128) - count("lora", 128), 3_670_016),
    ("IntTune r=128 = 7*32*r^2", count("inttune", 128), 7 * 32 * 128**2),
    ("Llama-2-7B base parameters (model card)", base, 6_738_415_616),
]
check = pd.DataFrame(published, columns=["quantity", "regenerated", "published"])
check["match"] = check["regenerated"] == check["published"]
nbs.save_table(check, "04_published_check", source=NOTEBOOK,
               title="Parameter counts regenerated from the registry vs the published numbers")
assert check["match"].all(), check[~check["match"]]
check
'''),
    md('''
## Every adapter of the registry against rank

One line per method, all seven projections of Llama-2-7B: the r² methods (LoRA-XS, LoRA-SB,
IntTune) and LoLDU's r per matrix sit orders of magnitude below the r·(m + n) family.
'''),
    code('''
methods = [m for m in ADAPTERS if m != "full"]
sweep = params[params.method != "full"][["method", "rank", "trainable"]]
wide = sweep.pivot(index="method", columns="rank", values="trainable").loc[methods]
nbs.save_table(wide.reset_index(), "04_params_vs_rank", source=NOTEBOOK, floatfmt=",.0f",
               title="Trainable parameters vs rank, every adapter, Llama-2-7B (7 projections x 32 layers)")

# Methods with the same closed form have identical counts: one line per formula, the methods in its label.
groups = {}
for m in methods:
    groups.setdefault(ADAPTERS[m].closed_form, []).append(m)
fig, ax = plt.subplots(figsize=(7, 4.5))
for k, (formula, ms) in enumerate(groups.items()):
    d = sweep[sweep.method == ms[0]]
    ax.plot(d["rank"], d["trainable"], marker="os^D"[k % 4], ls=["-", "--", "-.", ":"][k % 4],
            ms=8 - 2 * (k % 2), label=f"{formula}: " + ", ".join(ms))
ax.axhline(count("full", 8), color="k", ls="--", lw=1, label="full FT of the target matrices")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("rank r")
ax.set_ylabel("trainable parameters")
ax.set_title("Llama-2-7B, q/k/v/o/gate/up/down x 32 layers")
ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=1)
print(nbs.save_figure(fig, "04_params_vs_rank"))
plt.show()
wide
'''),
    md('''
## Closed form vs a real count

`inject` wraps each target of a real model and reports both `trainable` (parameters with
`requires_grad`, counted) and `closed_form` (the registry formula on the same shapes). On the real
all-MiniLM-L6-v2 (6 layers × 6 linear maps) they must agree for every method. LoRA-SB needs
calibration gradients, so it is left out here (its count is LoRA-XS's r²). Small mode keeps to
one layer.
'''),
    code('''
import copy

from lowrank_lab.adapters import inject, resolve_targets
from lowrank_lab.weights import load_hf_model

minilm = load_hf_model("minilm", head="base")
targets = resolve_targets(minilm)          # the family's canonical modules, full names
if SMALL:
    targets = [t for t in targets if ".layer.0." in t]
rank = 8
rows = []
for method, am in ADAPTERS.items():
    if am.needs_calibration:
        continue
    model = copy.deepcopy(minilm)
    rep = inject(model, method, rank=rank, targets=targets, generator=0, progress=False)
    rows.append({"method": method, "matrices": len(rep.modules), "counted": rep.trainable,
                 "closed_form": rep.closed_form, "init_seconds": rep.init_seconds})
real = pd.DataFrame(rows)
real["agree"] = real["counted"] == real["closed_form"]
nbs.save_table(real, "04_minilm_counted_vs_closed_form", source=NOTEBOOK,
               title=f"all-MiniLM-L6-v2, rank {rank}: trainable parameters counted after inject "
                     "vs closed form")
assert real["agree"].all(), real[~real["agree"]]
real
'''),
]


# ----------------------------------------------------------------------------------------------------
# 01 factorization error and time

NB01 = [
    md('''
# 01 · Error and init time of every factorization, against rank, on real weights

Every adapter initialisation starts from a factorization of the pre-trained weight W. How close
each one gets to the best possible rank-r approximation (Eckart–Young: the truncated SVD), and
what it costs, is measured here on **real** weights: all-MiniLM-L6-v2 (36 matrices, 384 × 384 and
1536 × 384) and, when ../shared/data is present, the llama2.c model stories260K.

* **error ratio** = ‖W − Ŵ‖_F / ‖W − W_r‖_F (1 = optimal); **init time** = median of repeated,
  warmed-up calls. Both come from `python -m lowrank_lab.analyze` (issue 5), run here in-process, or
  read from `reports/<model>/factorization.csv` when a full run is saved there.
* The second half regenerates the *shape* of the PiSSA paper's Appendix B table (init time of the
  whole model: full SVD vs `niter` power iterations of a randomized SVD) with the toolkit's own
  `pissa` and `pissa-fast` adapters.

Small mode (`LOWRANK_LAB_SMALL=1`): MiniLM layer 0 only, two ranks, one timing repeat.
'''),
    code(SETUP.format(name="01_factorization_error_and_time", numpy=NUMPY)),
    code('''
from lowrank_lab.analysis.report import method_rank_table
from lowrank_lab.linalg import FACTORIZATIONS

print(pd.DataFrame([{"method": k, "what": m.summary, "reference": m.reference,
                     "randomized": m.randomized, "rank_revealing": m.rank_revealing}
                    for k, m in FACTORIZATIONS.items()]).to_string(index=False))

runs = {}
runs["minilm"] = nbs.analysis_dir(
    "minilm", name="01_minilm",
    small_argv=["--layers", "0", "--ranks", "8,32", "--repeats", "1", "--warmup", "0"],
    full_argv=[],                       # the CLI default: every method, ranks 8,32,64, all 36 matrices
)
stories = nbs.stories260k_path()
if stories is None:
    print("stories260K: ../shared/data/models/stories260K/stories260K.bin not found -> that part is skipped")
else:
    runs["stories260K"] = nbs.analysis_dir(
        str(stories), name="01_stories260K", saved="stories260K",
        small_argv=["--layers", "0", "--ranks", "4,8,16", "--repeats", "1", "--warmup", "0"],
        full_argv=["--ranks", "4,8,16"],  # its matrices are 32..172 x 64: rank 64 would be full rank
    )
fact = pd.concat([pd.read_csv(d / "factorization.csv").assign(model=name) for name, d in runs.items()],
                 ignore_index=True)
print(len(fact), "factorization rows:", fact.groupby("model").size().to_dict())
'''),
    md('''
## Median and worst error ratio, total init time, per method and rank

`method_rank_table` is the same table the analysis summary prints (issue 5). NaN ratios (the rank
reaches a matrix's numerical rank, so the optimum is 0) are counted in `undefined_ratio`.
'''),
    code('''
tables = []
for name in runs:
    t = method_rank_table(fact[fact.model == name]).assign(model=name)
    tables.append(t)
table = pd.concat(tables, ignore_index=True)[["model", *tables[0].columns[:-1]]]
nbs.save_table(table, "01_error_ratio_and_time", source=NOTEBOOK,
               title="Error ratio (vs Eckart-Young) and init time per method and rank, real weights")
table
'''),
    code('''
methods = list(dict.fromkeys(fact["method"]))
fig, axes = plt.subplots(1, len(runs), figsize=(6.2 * len(runs), 4.3), squeeze=False, layout="constrained")
for ax, name in zip(axes[0], runs, strict=True):
    t = table[table.model == name]
    for k, m in enumerate(methods):
        d = t[t.method == m]
        (line,) = ax.plot(d["rank"], d["median_err_ratio"], marker="osD^v<>P"[k % 8], label=m)
        ax.fill_between(d["rank"], d["median_err_ratio"], d["worst_err_ratio"],
                        color=line.get_color(), alpha=0.12)
    ax.axhline(1, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(t["rank"].unique()), [str(r) for r in sorted(t["rank"].unique())])
    ax.set_xlabel("rank r")
    ax.set_ylabel("error ratio ‖W − Ŵ‖_F / ‖W − W_r‖_F")
    n_matrices = fact[fact.model == name].tensor.nunique()
    ax.set_title(f"{name}: {n_matrices} real matrices (median; band up to worst)")
    ax.grid(True, which="both", alpha=0.3)
axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
print(nbs.save_figure(fig, "01_error_ratio_vs_rank"))
plt.show()
'''),
    code('''
fig, axes = plt.subplots(1, len(runs), figsize=(6.2 * len(runs), 4.3), squeeze=False, layout="constrained")
for ax, name in zip(axes[0], runs, strict=True):
    per = fact[fact.model == name].groupby(["method", "rank"])["init_seconds"].median().reset_index()
    for k, m in enumerate(methods):
        d = per[per.method == m]
        ax.plot(d["rank"], 1e3 * d["init_seconds"], marker="osD^v<>P"[k % 8], label=m)
    ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank r")
    ax.set_ylabel("init time per matrix, median (ms)")
    ax.set_title(f"{name}: factorization time on {fact[fact.model == name].device.iloc[0]}")
    ax.grid(True, which="both", alpha=0.3)
axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
print(nbs.save_figure(fig, "01_init_time_vs_rank"))
plt.show()
'''),
    md('''
What to read in these two figures:

* `svd` is the optimum by construction (ratio 1); `rsvd` and the sketched `nystrom` (both with two
  power iterations) should sit just above it.
* `nystrom-released` — NLoRA's core W[:r, :r] *without* the pseudo-inverse — is not an
  approximation of W: W[:, :r]·W[:r, :r]·W[:r, :] scales like ‖W‖³, so on weights with small
  entries it is nearly zero (relative error ≈ 1, "no better than the zero matrix") and on larger
  ones it overshoots; notebook 03 is about that. Its ratio looks moderate only because the
  optimum itself is far from 0 at these ranks — compare `median_rel_err_fro` in the table.
* `ldu`, `qr` and `nystrom-pinv` keep the *first* r pivots/rows/columns: not rank-revealing, so
  their error is far from σ_{r+1} on a slowly decaying spectrum; `rlu` (randomized LU) is.
'''),
    code('''
r_top = int(table["rank"].max())
at = table[table["rank"] == table.groupby("model")["rank"].transform("max")]
print("At each model's largest rank, median error ratio (1 = optimal), best first:")
print(at.sort_values(["model", "median_err_ratio"])[["model", "rank", "method", "median_err_ratio",
      "worst_err_ratio", "median_rel_err_fro", "total_init_seconds"]].to_string(index=False))
'''),
    md('''
## The PiSSA appendix table, regenerated at small scale: full SVD vs power iterations

PiSSA (Meng et al. 2024, Appendix B, Table 6) initialises Llama-2-7B with a full SVD (≈ 435 s for
the whole model at every rank) or with `torch.svd_lowrank(W, q=r, niter=N)` (PEFT's
`pissa_niter_N`: ≈ 4 s at niter 1 to ≈ 23 s at niter 16), and finds the final training loss
barely moves (0.2301 at niter 1, 0.2266 at niter 16, 0.2264 with the full SVD, r = 128).

Here: the toolkit's `pissa` (exact SVD) and `pissa-fast` (randomized SVD with PEFT's settings: no
oversampling, QR re-normalisation) adapters are injected into the real MiniLM, and
`InjectionReport.init_seconds` — the summed per-matrix init time of the whole model — is recorded
for each rank and `niter`. Beside it, the error ratio of the rank-r SVD each fast init starts from
(same options, through `lowrank_lab.linalg.factorize`). MiniLM's matrices are small, so a full
SVD is cheap here and the speed-up is far smaller than on 4096 × 11008 matrices; the full-size run
adds one llama-7b-shaped matrix for that.
'''),
    code('''
import copy

from lowrank_lab.adapters import ADAPTERS, inject, resolve_targets
from lowrank_lab.analysis.factorization import error_ratio
from lowrank_lab.linalg import factorize, optimal_error, relative_errors, singular_values
from lowrank_lab.weights import load_hf_model

fast_opts = {k: v for k, v in ADAPTERS["pissa-fast"].options.items() if k in ("oversample", "normalizer")}
print("pissa-fast options (PEFT pissa_niter_N):", ADAPTERS["pissa-fast"].options)

minilm = load_hf_model("minilm", head="base")
targets = resolve_targets(minilm)
if SMALL:
    targets = [t for t in targets if ".layer.0." in t]
weights = {t: minilm.get_submodule(t).weight.detach() for t in targets}
spectra = {t: singular_values(W) for t, W in weights.items()}
ranks = nbs.pick(small=[8, 32], full=[8, 16, 32, 64, 128])
niters = nbs.pick(small=[1, 4, 16], full=[1, 2, 4, 8, 16])

rows = []
for rank in ranks:
    for niter in [None, *niters]:
        method, opts = ("pissa", {}) if niter is None else ("pissa-fast", {"n_iter": niter})
        rep = inject(copy.deepcopy(minilm), method, rank=rank, targets=targets, generator=0,
                     progress=False, **opts)
        ratios = []
        for t, W in weights.items():
            F = factorize(W, rank, "svd") if niter is None else factorize(W, rank, "rsvd", generator=0,
                                                                          n_iter=niter, **fast_opts)
            rel = relative_errors(W, F, spectral=False)[0]
            ratios.append(error_ratio(rel, optimal_error(spectra[t], rank)[0]))
        rows.append({"init": "full SVD" if niter is None else f"niter={niter}", "rank": rank,
                     "matrices": len(rep.modules), "whole_model_init_seconds": rep.init_seconds,
                     "median_err_ratio": float(np.median(ratios)), "worst_err_ratio": float(np.max(ratios))})
pissa_time = pd.DataFrame(rows)
pissa_wide = pissa_time.pivot(index="init", columns="rank", values="whole_model_init_seconds")
pissa_wide = pissa_wide.loc[["full SVD"] + [f"niter={k}" for k in niters]]
nbs.save_table(pissa_time, "01_pissa_init_time_minilm", source=NOTEBOOK,
               title="PiSSA init time of the whole model (MiniLM): full SVD vs randomized SVD "
                     "with niter power iterations")
pissa_wide.round(4)
'''),
    code('''
published = pd.DataFrame([
    {"init": "full SVD", "published_seconds_llama2_7b": 435.0, "published_final_loss_r128": 0.2264},
    {"init": "niter=1", "published_seconds_llama2_7b": 4.0, "published_final_loss_r128": 0.2301},
    {"init": "niter=16", "published_seconds_llama2_7b": 23.0, "published_final_loss_r128": 0.2266},
])
r_ref = max(ranks)
ours = pissa_time[pissa_time["rank"] == r_ref].set_index("init")
cmp = published.set_index("init").join(ours[["whole_model_init_seconds", "median_err_ratio"]], how="left")
cmp["published_speedup_vs_svd"] = 435.0 / cmp["published_seconds_llama2_7b"]
cmp["our_speedup_vs_svd"] = ours.loc["full SVD", "whole_model_init_seconds"] / cmp["whole_model_init_seconds"]
cmp = cmp.rename(columns={"whole_model_init_seconds": f"our_seconds_minilm_r{r_ref}",
                          "median_err_ratio": f"our_median_err_ratio_r{r_ref}"})
nbs.save_table(cmp.reset_index(), "01_pissa_table6_comparison", source=NOTEBOOK,
               title="PiSSA Appendix B Table 6 (Llama-2-7B, published) beside the same measurement on MiniLM")
display(cmp)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
for rank in ranks:
    d = pissa_time[(pissa_time["rank"] == rank) & (pissa_time.init != "full SVD")]
    k = [int(s.split("=")[1]) for s in d.init]
    (line,) = ax1.plot(k, d.whole_model_init_seconds, marker="o", label=f"r = {rank}, randomized SVD")
    ax1.axhline(float(pissa_time[(pissa_time["rank"] == rank) & (pissa_time.init == "full SVD")]
                      .whole_model_init_seconds.iloc[0]), color=line.get_color(), ls="--", lw=1,
                label=f"r = {rank}, full SVD")
    ax2.plot(k, d.median_err_ratio, marker="o", label=f"r = {rank}")
for ax in (ax1, ax2):
    ax.set_xscale("log", base=2)
    ax.set_xticks(niters, [str(k) for k in niters])
    ax.set_xlabel("niter (power iterations)")
    ax.grid(True, which="both", alpha=0.3)
ax1.set_ylabel("whole-model init time (s)")
ax1.set_title(f"PiSSA init time, MiniLM ({len(targets)} matrices)")
ax2.set_ylabel("median error ratio of the rank-r SVD (1 = exact)")
ax2.set_title("quality of the randomized SVD (q = r, no oversampling)")
ax1.legend(fontsize=8)
print(nbs.save_figure(fig, "01_pissa_init_time"))
plt.show()
'''),
    md('''
### One Llama-2-7B-shaped matrix (full size only)

The speed-up of the randomized SVD grows with the matrix: on MiniLM's 384-wide matrices a full SVD
takes milliseconds. At full size this section also times one synthetic 4096 × 4096 `q_proj` of
Llama-2-7B's shape with a power-law spectrum (`lowrank_lab.weights.open_source(..., synthetic=True)`;
its exact singular values are known, so the optimum needs no SVD), at r = 128, with
`lowrank_lab.utils.timing.time_call` (one repeat: a full SVD of it takes tens of seconds on 2 cores).
'''),
    code('''
from lowrank_lab.utils.timing import time_call
from lowrank_lab.weights import open_source

if SMALL:
    print("small mode: the 4096 x 4096 matrix is skipped "
          "(its full SVD alone takes longer than the whole notebook)")
else:
    src = open_source("llama-7b", synthetic=True, targets="q_proj", layers="0", seed=0)
    wm = src.load(src.targets()[0])
    W, rank = wm.weight, 128
    opt = optimal_error(wm.singular_values, rank)[0]
    rows = []
    for niter in [None, *niters]:
        fn = (lambda: factorize(W, rank, "svd")) if niter is None else (
            lambda niter=niter: factorize(W, rank, "rsvd", generator=0, n_iter=niter, **fast_opts))
        t = time_call(fn, device="cpu", repeats=1, warmup=0)
        rows.append({"init": "full SVD" if niter is None else f"niter={niter}", "rank": rank,
                     "seconds": t.median,
                     "err_ratio": error_ratio(relative_errors(W, t.result, spectral=False)[0], opt)})
    big = pd.DataFrame(rows)
    big["speedup_vs_svd"] = big.seconds.iloc[0] / big.seconds
    nbs.save_table(big, "01_pissa_init_time_llama7b_qproj", source=NOTEBOOK,
                   title=f"Full SVD vs randomized SVD (q = r) on one synthetic Llama-2-7B q_proj "
                         f"{tuple(W.shape)}, r = {rank}")
    display(big)
'''),
]

# ----------------------------------------------------------------------------------------------------
# 02 spectra

NB02 = [
    md('''
# 02 · Singular-value spectra of real weights

Whether a rank-r factorization can be good at all is decided by the spectrum: how fast σ_i falls.
REFERENCE.md notes that real LLM weights decay slowly (log-log slope ≈ −0.3 to −0.5), which is where
sketches without power iterations fail and where "the top r directions" hold only part of ‖W‖².
Here, for every target matrix of all-MiniLM-L6-v2 (and stories260K when ../shared/data is present):

* the spectra σ_i against i on log-log axes, one panel per module type, one line per layer;
* across layers: **stable rank** ‖W‖_F² / ‖W‖₂², **effective rank** (Roy & Vetterli 2007, entropy of
  σ / Σσ) and the **power-law exponent alpha** of the eigenvalue density of WᵀW (WeightWatcher's
  fit; α ≈ 2 is WeightWatcher's "well trained"), with its standard error;
* the fraction of ‖W‖_F² the best rank-r approximation keeps.

Every number comes from `spectra.csv` and the saved singular values of a `python -m
lowrank_lab.analyze` run (issue 5): read from `reports/<model>/` when a full run is saved there,
else run here. Small mode keeps every MiniLM layer (stories260K: layers 0, 2, 4) and a single cheap
factorization per matrix (svd at the smallest ranks).
'''),
    code(SETUP.format(name="02_spectra_of_real_weights", numpy=NUMPY)),
    code('''
from IPython.display import Image, display

from lowrank_lab.analysis.figures import plot_spectra
from lowrank_lab.analysis.report import module_spectra_table

runs = {"minilm": nbs.analysis_dir(
    "minilm", name="02_minilm",
    small_argv=["--methods", "svd", "--ranks", "8", "--repeats", "1", "--warmup", "0"])}
stories = nbs.stories260k_path()
if stories is None:
    print("stories260K: ../shared/data/models/stories260K/stories260K.bin not found -> that part is skipped")
else:
    runs["stories260K"] = nbs.analysis_dir(
        str(stories), name="02_stories260K", saved="stories260K",
        small_argv=["--methods", "svd", "--ranks", "4,8,16", "--layers", "0,2,4", "--repeats", "1",
                    "--warmup", "0"],
        full_argv=["--ranks", "4,8,16"])
spectra = {name: pd.read_csv(d / "spectra.csv") for name, d in runs.items()}
values = {name: nbs.load_singular_values(d, list(spectra[name]["tensor"])) for name, d in runs.items()}
for name in runs:
    print(f"{name}: {len(spectra[name])} matrices, modules {list(dict.fromkeys(spectra[name].module))}, "
          f"{len(values[name])} saved spectra")
'''),
    md('''
## Spectra per module type

One panel per module type, one line per layer (colour = depth); the figure is drawn by
`lowrank_lab.analysis.figures.plot_spectra`, the one the analysis CLI writes.
'''),
    code('''
for name in runs:
    path = plot_spectra(spectra[name], values[name], nbs.figures_dir() / f"02_spectra_{name}.png", model=name)
    print(path)
    display(Image(filename=str(path)))
'''),
    md('''
All module types of one model on the same axes, normalised (σ_i / σ_1 against i / min(m, n)),
with the slopes REFERENCE.md quotes for real LLM weights drawn for comparison (grey lines are
guides through σ_1, not fits).
'''),
    code('''
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
'''),
    md('''
## Stable rank, effective rank and alpha across layers

Per module type (one line each) against depth. The alpha panel shows the fit's standard error as
error bars; WeightWatcher recommends ≥ 50 eigenvalues for a meaningful fit, so stories260K's 32–64
eigenvalue matrices give rough exponents at best (NaN where the fit refused).
'''),
    code('''
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
'''),
    md('''
## Per module type: medians over layers, and the energy a rank-r approximation keeps

`module_spectra_table` is the spectral part of the analysis summary (issue 5); `median_energy_r{r}`
is Σ_{i≤r} σ_i² / Σ σ_i², the most of ‖W‖_F² any rank-r adapter init can capture.
'''),
    code('''
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
'''),
    code('''
per_matrix = pd.concat([spectra[n].assign(model=n) for n in runs], ignore_index=True)
cols = ["model", "tensor", "layer", "module", "m", "n", "spec_norm", "stable_rank", "effective_rank",
        "alpha", "alpha_sigma", "alpha_ks_d", "alpha_n_tail"]
nbs.save_table(per_matrix[cols], "02_spectra_per_matrix", source=NOTEBOOK,
               title="Spectral statistics of every target matrix")
min_dim = per_matrix[["m", "n"]].min(axis=1)
for col in ["stable_rank", "effective_rank"]:
    share = (per_matrix[col] / min_dim).groupby(per_matrix.model).median().round(4).to_dict()
    print(f"{col} / min(m, n), median per model:", share)
'''),
]

# ----------------------------------------------------------------------------------------------------
# 03 NLoRA's Nyström: released vs textbook vs sketched

NB03 = [
    md('''
# 03 · NLoRA's Nyström initialisation: as released, as drawn, and as the textbook sketches it

NLoRA (Guo et al. 2025, arXiv 2502.14482) initialises an adapter ΔW = s · B · M · A with a Nyström
form of the pre-trained W. Its paper draws the CUR/Nyström picture; its released code
(`TracyGuo2001/NLoRA`, `nlora_init`) does something else. Three variants, all in
`lowrank_lab.linalg` and as adapters in `lowrank_lab.adapters.ADAPTERS`:

| name (factorization / adapter) | B | M | A |
|---|---|---|---|
| `nystrom-released` / `nlora` (and `inttune`) | W[:, :r] | **W[:r, :r]** (raw block) | W[:r, :] |
| `nystrom-pinv` / `nlora-pinv` (the paper's figure, textbook CUR–Nyström) | W[:, :r] | W[:r, :r]⁺ | W[:r, :] |
| `nystrom` / `nlora-sketch` (Nakatsukasa 2020, stabilised, ℓ = r/2, 2 power iterations) | W X | (Yᵀ W X)⁺_ε | Yᵀ W |

Neither NLoRA variant subtracts its product from the frozen base (no residual), so the adapted model
computes W + ΔW from step 0. This notebook measures (1) how well each variant approximates W,
(2) ΔW and the change of the model's output at step 0, and (3) what that does to training.
'''),
    code(SETUP.format(name="03_nystrom_as_released_vs_textbook", numpy=NUMPY)),
    md('''
## 1 · Approximation error on real weights

From `python -m lowrank_lab.analyze` (error ratio against the Eckart–Young optimum), plus the size
of each approximation, ‖Ŵ‖_F / ‖W‖_F, computed with `lowrank_lab.linalg.factorize` on the same
matrices: an approximation of W should have about W's norm.
'''),
    code('''
import torch

from lowrank_lab.analysis.report import method_rank_table
from lowrank_lab.linalg import factorize
from lowrank_lab.weights import open_source

METHODS = ["svd", "nystrom", "nystrom-pinv", "nystrom-released"]
ranks = nbs.pick(small=[8, 32], full=[8, 32, 64])
d = nbs.analysis_dir("minilm", name="03_minilm",
                     small_argv=["--methods", ",".join(METHODS), "--layers", "0", "--ranks", "8,32",
                                 "--repeats", "1", "--warmup", "0"])
fact = pd.read_csv(d / "factorization.csv")
fact = fact[fact.method.isin(METHODS) & fact["rank"].isin(ranks)]

layers = nbs.pick(small="0", full=None)
src = open_source("minilm", layers=layers)
rows = []
for wm in src:
    W = wm.weight
    for r in ranks:
        for m in METHODS:
            F = factorize(W, r, m, generator=0)
            size = torch.linalg.matrix_norm(F.reconstruct()) / torch.linalg.matrix_norm(W)
            rows.append({"tensor": wm.tensor, "module": wm.module, "method": m, "rank": r,
                         "norm_ratio": float(size)})
scale = pd.DataFrame(rows)
sizes = scale.groupby(["method", "rank"]).norm_ratio.agg(median_norm_ratio="median", max_norm_ratio="max")
table = method_rank_table(fact).merge(sizes.reset_index(), on=["method", "rank"])
nbs.save_table(table, "03_nystrom_error", source=NOTEBOOK,
               title="Nyström variants on real MiniLM weights: error ratio vs the optimum, "
                     "and ‖Ŵ‖_F/‖W‖_F")
table[["method", "rank", "matrices", "median_err_ratio", "worst_err_ratio", "median_rel_err_fro",
       "median_norm_ratio", "max_norm_ratio"]]
'''),
    code('''
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
for k, m in enumerate(METHODS):
    g = fact[fact.method == m]
    s = scale[scale.method == m]
    jitter = 1 + 0.04 * (k - 1.5)
    ax1.scatter(g["rank"] * jitter, g.rel_err_fro, s=14, alpha=0.6, label=m)
    ax2.scatter(s["rank"] * jitter, s.norm_ratio, s=14, alpha=0.6, label=m)
ax1.axhline(1, color="k", ls="--", lw=0.8)
ax1.text(min(ranks), 1.05, "the zero matrix", fontsize=8)
ax1.set_ylabel("relative error ‖W − Ŵ‖_F / ‖W‖_F")
ax2.axhline(1, color="k", ls="--", lw=0.8)
ax2.set_ylabel("‖Ŵ‖_F / ‖W‖_F")
for ax in (ax1, ax2):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.set_xlabel("rank r (points: matrices)")
    ax.grid(True, which="both", alpha=0.3)
ax1.set_title("error of each approximation")
ax2.set_title("size of each approximation")
ax2.legend(fontsize=8)
print(nbs.save_figure(fig, "03_nystrom_error_and_scale"))
plt.show()
'''),
    md('''
Reading it: the released form's product W[:, :r]·W[:r, :r]·W[:r, :] scales like ‖W‖³, not ‖W‖ —
for MiniLM's weights (entries of order 0.05) it is a small fraction of W, so its relative error sits
at ≈ 1: no better than approximating W by zero. The pseudo-inverse form reproduces the chosen r
rows and columns exactly but is not rank-revealing, and an ill-conditioned W[:r, :r] makes its
worst case large. The sketched, stabilised Nyström is within a small factor of the optimum. Keep
the optimum in view too (`median_rel_err_fro` of `svd`): MiniLM's spectra decay slowly, so at small r
even the best rank-r approximation leaves most of ‖W‖_F, and a method 10–20 % above it is already
no closer to W than the zero matrix.

## 2 · ΔW and the model's output at step 0

Each adapter is injected into the real all-MiniLM-L6-v2 (every linear map of every layer) at
rank r with `lowrank_lab.adapters.inject`. Per matrix: ‖W_eff − W‖_F / ‖W‖_F where
W_eff = base weight + `delta_weight()` is what the adapted layer computes. Then the model's output
on a few sentences: the relative change of the last hidden states and the cosine between the
sentence embeddings (mean-pooled hidden states, the way all-MiniLM-L6-v2 is used) before and after
injection. LoRA (B = 0) and PiSSA (residual base) are the controls: both must leave the model as is.
'''),
    code('''
import copy

from transformers import AutoTokenizer

from lowrank_lab.adapters import inject, lowrank_modules
from lowrank_lab.weights import load_hf_model, model_dir

rank = nbs.pick(small=8, full=32)
ADAPTER_METHODS = ["lora", "pissa", "nlora", "nlora-pinv", "nlora-sketch"]
base = load_hf_model("minilm", head="base").eval()
W0 = {n: m.weight.detach().clone() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
tok = AutoTokenizer.from_pretrained(str(model_dir("minilm")))
sentences = ["A low-rank adapter starts from a factorization of the weight.",
             "The film was a delight from start to finish.",
             "Stock prices fell sharply after the announcement.",
             "She walked her dog along the river every morning."]
batch = tok(sentences, padding=True, return_tensors="pt")
mask = batch["attention_mask"].unsqueeze(-1).float()                      # (B, T, 1)

def embed(model):
    with torch.no_grad():
        h = model(**batch).last_hidden_state                               # (B, T, 384)
    return h, (h * mask).sum(1) / mask.sum(1)  # mean pooling, as sentence-transformers embeds

h0, e0 = embed(base)
delta_rows, output_rows = [], []
for method in ADAPTER_METHODS:
    model = copy.deepcopy(base)
    rep = inject(model, method, rank=rank, generator=0, progress=False)
    for name, layer in lowrank_modules(model).items():
        eff = layer.weight + layer.delta_weight()
        delta_rows.append({"method": method, "module": name, "rel_delta": float(
            torch.linalg.matrix_norm(eff - W0[name]) / torch.linalg.matrix_norm(W0[name]))})
    h, e = embed(model)
    output_rows.append({"method": method, "rank": rank,
                        "rel_change_hidden": float(((h - h0) * mask).norm() / (h0 * mask).norm()),
                        "embedding_cosine_min": float(torch.nn.functional.cosine_similarity(e, e0).min())})
deltas = pd.DataFrame(delta_rows)
per_method = deltas.groupby("method").rel_delta.agg(median_rel_delta="median", max_rel_delta="max")
step0 = pd.DataFrame(output_rows).merge(per_method.reset_index(), on="method")
nbs.save_table(step0, "03_step0_change", source=NOTEBOOK,
               title=f"Step 0: how much each adapter changes MiniLM before any training (rank {rank})")
step0
'''),
    code('''
fig, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
data = [deltas[deltas.method == m].rel_delta.clip(lower=1e-12).values for m in ADAPTER_METHODS]
ax.boxplot(data, showfliers=True)
ax.set_xticks(range(1, len(ADAPTER_METHODS) + 1), ADAPTER_METHODS)
ax.set_yscale("log")
ax.set_ylabel("‖W_eff − W‖_F / ‖W‖_F at step 0 (per matrix)")
ax.set_title(f"What each init adds to MiniLM's weights before training (r = {rank}; 1e-12 = nothing)")
ax.grid(True, axis="y", which="both", alpha=0.3)
print(nbs.save_figure(fig, "03_step0_delta"))
plt.show()
'''),
    md('''
## 3 · What it means for training

The fine-tuning harness (`python -m lowrank_lab.finetune`, issue 7) trains each variant on SST-2
with the same data order, seed and schedule; the loss curves show whether starting from a changed
model costs anything. LoRA and PiSSA are the output-preserving references. Small mode trains a few
steps on the query/value maps only (a smoke test of the pipeline, not evidence); the full run trains
300 steps on every linear map. Needs ../shared/data (GLUE SST-2); skipped without it.
'''),
    code('''
from lowrank_lab.training.summary import load_records

if nbs.shared_data() is None:
    print("../shared/data not found: the training comparison is skipped (set LOWRANK_LAB_SHARED_DATA)")
    records = []
else:
    train_methods = nbs.pick(small="lora,nlora,nlora-pinv", full="lora,pissa,nlora,nlora-pinv,nlora-sketch")
    common = ["--task", "sst2", "--model", "minilm", "--methods", train_methods, "--seeds", "0",
              "--data-dir", str(nbs.shared_data()), "--no-save-merged", "--no-progress"]
    study = nbs.cli_outputs(
        "finetune", name="03_finetune_sst2",
        small_argv=[*common, "--rank", "8", "--steps", "8", "--batch-size", "8", "--max-length", "32",
                    "--eval-samples", "32", "--eval-every", "0", "--targets", "query,value"],
        full_argv=[*common, "--rank", "8", "--steps", "300", "--eval-samples", "256"],
    )
    records = load_records(sorted(study.glob("runs/*/run.json")))
    runs = pd.DataFrame([{"method": r["config"]["method"], "status": r["status"],
                          "first_loss": r["train_loss"][0] if r["train_loss"] else None,
                          "final_loss": r["train_loss"][-1] if r["train_loss"] else None,
                          "initial_metric": r.get("initial_metric"), "final_metric": r.get("final_metric"),
                          "trainable_params": r.get("trainable_params")} for r in records])
    nbs.save_table(runs, "03_training", source=NOTEBOOK,
                   title="SST-2 with MiniLM: Nyström variants vs LoRA/PiSSA")
    display(runs)
'''),
    code('''
if records:
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for r in records:
        loss = np.asarray(r["train_loss"], dtype=float)
        if loss.size:
            w = max(1, loss.size // 20)   # light smoothing for display only
            ax.plot(np.arange(1, loss.size + 1)[w - 1:], np.convolve(loss, np.ones(w) / w, "valid"),
                    label=f'{r["config"]["method"]} ({r["status"]})')
    ax.set_xlabel("step")
    ax.set_ylabel("training loss" + (f" (moving average of {w})" if w > 1 else ""))
    ax.set_title("SST-2, MiniLM, r = 8: training loss per init")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    print(nbs.save_figure(fig, "03_training_loss"))
    plt.show()
'''),
]

# ----------------------------------------------------------------------------------------------------
# 05 convergence

NB05 = [
    md('''
# 05 · Convergence of the adapter methods (NLoRA's convergence figure, at small scale)

NLoRA's paper plots training loss against steps for LoRA, PiSSA and NLoRA and claims NLoRA
converges faster and ends lower; PiSSA claims the same over LoRA. Here the curves come from the
fine-tuning harness (`python -m lowrank_lab.finetune`, issue 7): same data order, seed and schedule for
every method, learning rates per method family as the papers use them (stated in each study's
summary.md).

Sources, in order: the committed studies `reports/finetune/{sst2,rte,gsm8k}` (issue 7's confirmation
study) when present; otherwise a study run here — SST-2 with MiniLM (small mode: three methods, a
few steps on the query/value maps; full size: six methods, 300 steps, one seed). GLUE and GSM8K
come from ../shared/data; without it this notebook says so and stops.
'''),
    code(SETUP.format(name="05_convergence", numpy=NUMPY)),
    code('''
from lowrank_lab.training import get_task
from lowrank_lab.training.study import find_intruders
from lowrank_lab.training.summary import (
    claims,
    load_records,
    loss_threshold,
    method_rows,
    method_table,
    moving_average,
    smoothing_window,
)

studies = {}
for task in ["sst2", "rte", "gsm8k"]:
    found = nbs.saved_result(f"finetune/{task}", marker="summary.md")
    if found is not None:
        studies[task] = found
if studies:
    print("reading the saved studies:", {k: str(v) for k, v in studies.items()})
elif nbs.shared_data() is None:
    print("../shared/data not found and no saved study under reports/finetune: nothing to show "
          "(set LOWRANK_LAB_SHARED_DATA, or run python -m lowrank_lab.finetune first)")
else:
    common = ["--task", "sst2", "--model", "minilm", "--data-dir", str(nbs.shared_data()), "--no-save-merged",
              "--no-progress", "--rank", "8"]
    studies["sst2"] = nbs.cli_outputs(
        "finetune", name="05_finetune_sst2",
        small_argv=[*common, "--methods", "lora,pissa,nlora", "--seeds", "0", "--steps", "10",
                    "--batch-size", "8", "--max-length", "32", "--eval-samples", "32", "--eval-every", "5",
                    "--targets", "query,value"],
        full_argv=[*common, "--methods", "lora,slora,pissa,nlora,inttune,full", "--seeds", "0",
                   "--steps", "300", "--eval-samples", "256", "--eval-every", "50"],
    )
records = {task: load_records(sorted(d.glob("runs/*/run.json"))) for task, d in studies.items()}
COLORS = plt.get_cmap("tab20")  # the full study has 15 methods: tab10 would repeat colours
for task, recs in records.items():
    print(f"{task}: {len(recs)} runs,", pd.Series([r["status"] for r in recs]).value_counts().to_dict())
'''),
    md('''
## Loss curves per method (mean over seeds, band = min–max over seeds)

Smoothed with the harness's own trailing window (`lowrank_lab.training.summary.smoothing_window`:
5 % of the steps), the same curves as the studies' `figures/loss_curves.png`, side by side.
'''),
    code('''
if records:
    fig, axes = plt.subplots(1, len(records), figsize=(6.5 * len(records), 4.2), squeeze=False,
                         layout="constrained")
    for ax, (task, recs) in zip(axes[0], records.items(), strict=True):
        methods = list(dict.fromkeys(r["config"]["method"] for r in recs))
        window = smoothing_window(max((len(r["train_loss"]) for r in recs), default=1))
        for k, m in enumerate(methods):
            curves = [r["train_loss"] for r in recs if r["config"]["method"] == m and r["train_loss"]]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            sm = np.array([moving_average(c[:n], window) for c in curves])      # (seeds, n)
            x = np.arange(1, n + 1)
            ax.plot(x, sm.mean(0), color=COLORS(k % 20), ls=["-", "--"][k // 10 % 2],
                    label=f"{m} ({len(curves)} seed{'s' * (len(curves) > 1)})")
            if len(curves) > 1:
                ax.fill_between(x, sm.min(0), sm.max(0), color=COLORS(k % 20), alpha=0.2, lw=0)
        cfg = recs[0]["config"]
        ax.set_title(f"{task}, {cfg['model']}, r = {cfg['rank']}, batch {cfg['batch_size']}")
        ax.set_xlabel("step")
        ax.set_ylabel(f"training loss (moving average, {window} steps)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    print(nbs.save_figure(fig, "05_loss_curves"))
    plt.show()
'''),
    code('''
if records:
    fig, axes = plt.subplots(1, len(records), figsize=(6.5 * len(records), 4.0), squeeze=False,
                         layout="constrained")
    for ax, (task, recs) in zip(axes[0], records.items(), strict=True):
        spec = get_task(task)
        methods = list(dict.fromkeys(r["config"]["method"] for r in recs))
        for k, m in enumerate(methods):
            evals = [r["eval"] for r in recs if r["config"]["method"] == m and r.get("eval")]
            if not evals:
                continue
            steps = sorted(set.intersection(*[{e["step"] for e in ev} for ev in evals]))
            vals = np.array([[next(e["metric"] for e in ev if e["step"] == s) for s in steps]
                             for ev in evals])  # (seeds, evaluations)
            ax.errorbar(steps, vals.mean(0), yerr=vals.std(0) if len(evals) > 1 else None, marker="o", ms=3,
                        color=COLORS(k % 20), capsize=2, label=m)
        ax.set_title(f"{task}: held-out {spec.metric} during training")
        ax.set_xlabel("step")
        ax.set_ylabel(spec.metric)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    print(nbs.save_figure(fig, "05_eval_curves"))
    plt.show()
'''),
    md('''
## Per method: final metric, loss AUC, steps to a loss threshold — and the papers' claims

`method_rows` / `method_table` / `claims` are the harness's own aggregation (the tables of each
study's summary.md): mean ± sd over seeds; "steps to threshold" counts steps until the smoothed loss
first reaches LoRA's mean final loss; each claim is confirmed or contradicted only when the difference
exceeds two standard errors.
'''),
    code('''
tables, verdicts = [], []
for task, recs in records.items():
    spec = get_task(task)
    methods = list(dict.fromkeys(r["config"]["method"] for r in recs))
    threshold, why = loss_threshold(recs, methods)
    rows = method_rows(recs, methods, spec, threshold)
    tables.append(method_table(rows, spec).assign(task=task))
    # the intruder claim reads the counts the intruders CLI wrote into <study>/intruders/<run>/
    verdicts += [{"task": task, **c} for c in claims(rows, spec, find_intruders(studies[task], recs))]
if tables:
    table = pd.concat(tables, ignore_index=True)
    table = table[["task", *[c for c in table.columns if c != "task"]]]
    nbs.save_table(table, "05_convergence_table", source=NOTEBOOK,
                   title="Fine-tuning studies: metric, loss AUC and steps to threshold per method")
    display(table)
    claim_table = pd.DataFrame(verdicts)
    nbs.save_table(claim_table, "05_claims", source=NOTEBOOK, title="Paper claims at this scale")
    with pd.option_context("display.max_colwidth", 120):
        display(claim_table)
'''),
    md('''
In small mode these are a handful of steps on two of the six linear maps: the table and verdicts
exercise the pipeline and mean nothing about the claims (they come out "inconclusive" for that
reason). The committed studies under `reports/finetune/` are the evidence.
'''),
]

# ----------------------------------------------------------------------------------------------------
# 06 intruder dimensions

NB06 = [
    md('''
# 06 · Intruder dimensions: LoRA vs full fine-tuning (the "illusion of equivalence" figures, small scale)

Shuttleworth et al. 2024 (arXiv 2410.21228): after fine-tuning, take the top-k singular vectors of each
tuned weight and compare them with *all* singular vectors of the pre-trained weight; a tuned vector
whose best |cos| is below ε is an **intruder dimension**. They find LoRA at low rank creates
intruders and full fine-tuning essentially none. Their figures: intruder count against ε, and
against LoRA's rank with full fine-tuning as the reference.

Here the fine-tunes come from the harness (`python -m lowrank_lab.finetune`, which saves each run's
merged weights) on SST-2 with MiniLM — LoRA at several ranks and full fine-tuning, same data order,
seed and schedule — and the counts from `python -m lowrank_lab.intruders --sweep` (issue 6; k = 10,
ε from 0.1 to 0.9, base SVDs cached on disk). When issue 7's committed study
`reports/finetune/sst2` still has its runs' merged weights, every method of it is counted as well.

Small mode: LoRA r ∈ {1, 8} and full FT, 10 steps on the query/value maps — a smoke test of the
pipeline; after so few steps the counts say nothing. Full size: r ∈ {1, 4, 8, 16, 64}, 300 steps on
every linear map; LoRA r = 8 and full fine-tuning are the study's seed-0 runs when it is on disk
(trained with the same settings), the other ranks are trained here. Needs ../shared/data (GLUE SST-2).
'''),
    code(SETUP.format(name="06_intruder_dimensions", numpy="")),
    code('''
import re

ranks = nbs.pick(small=[1, 8], full=[1, 4, 8, 16, 64])
targets = nbs.pick(small=["--targets", "query,value"], full=[])
run_dirs = {}                                   # label -> harness run directory (holding merged/)
study_runs = {}                                 # run name -> run directory of the issue-7 study
if nbs.shared_data() is None:
    print("../shared/data not found: no fine-tunes to compare, this notebook has nothing to show "
          "(set LOWRANK_LAB_SHARED_DATA)")
else:
    common = ["--task", "sst2", "--model", "minilm", "--data-dir", str(nbs.shared_data()), "--seeds", "0",
              "--no-progress", *targets]
    small = ["--steps", "10", "--batch-size", "8", "--max-length", "32", "--eval-samples", "32",
             "--eval-every", "0"]
    full = ["--steps", "300", "--eval-samples", "256"]
    saved = nbs.saved_result("finetune/sst2", marker="summary.md")
    study_runs = {d.name: d for d in sorted(saved.glob("runs/*")) if (d / "merged").is_dir()} if saved else {}
    for r in ranks:
        wanted = ["lora", "full"] if r == ranks[-1] else ["lora"]   # full FT does not depend on r: once
        if not nbs.small_mode():
            # At full size the issue-7 study's seed-0 runs were trained with these very settings (only
            # its evaluation subset differs, which does not touch the weights): reuse them.
            for m in list(wanted):
                d = study_runs.get(f"lora-r{r}-seed0" if m == "lora" else "full-seed0")
                if d is not None:
                    run_dirs[d.name] = d
                    wanted.remove(m)
        if not wanted:
            continue
        methods = ",".join(wanted)
        study = nbs.cli_outputs("finetune", name=f"06_finetune_sst2_r{r}",
                                small_argv=[*common, "--methods", methods, "--rank", str(r), *small],
                                full_argv=[*common, "--methods", methods, "--rank", str(r), *full])
        for d in sorted(study.glob("runs/*")):
            if (d / "merged").is_dir():
                run_dirs[d.name] = d
    for d in study_runs.values():
        if d not in run_dirs.values():
            run_dirs[f"study:{d.name}"] = d
print(len(run_dirs), "fine-tuned models:", list(run_dirs))
'''),
    code('''
import json

rows, sweeps, intruder_dirs = [], [], {}
for label, d in run_dirs.items():
    # The study's own counts, when its author ran the intruders CLI with --sweep into
    # <study>/intruders/<run>/ (where its summary.md looks), are read rather than redone.
    in_study = d in study_runs.values()
    saved = f"finetune/sst2/intruders/{d.name}" if in_study else None
    out = intruder_dirs[label] = nbs.cli_outputs(
        "intruders", name=f"06_intruders_{re.sub(r'[^A-Za-z0-9_.-]', '_', label)}",
        small_argv=["--base", "minilm", "--tuned", str(d), "--sweep", *targets],
        full_argv=["--base", "minilm", "--tuned", str(d), "--sweep"], saved=saved, marker="sweep.csv")
    cfg = json.loads((d / "run.json").read_text())["config"]
    info = {"run": label, "method": cfg["method"], "rank": cfg["rank"] if cfg["method"] != "full" else None,
            "study": in_study}
    per = pd.read_csv(out / "intruders.csv")
    per_matrix = per.groupby(["tensor", "module", "side"], sort=False)["intruder"].sum().reset_index()
    rows.append({**info, "matrices": len(per_matrix), "intruders_at_0.5": int(per_matrix["intruder"].sum()),
                 "matrices_with_intruders": int((per_matrix["intruder"] > 0).sum())})
    sweeps.append(pd.read_csv(out / "sweep.csv").assign(**info))
counts = pd.DataFrame(rows, columns=["run", "method", "rank", "study", "matrices", "intruders_at_0.5",
                                     "matrices_with_intruders"]).astype({"rank": "Int64", "study": bool})
sweep = pd.concat(sweeps, ignore_index=True) if sweeps else pd.DataFrame()
if not counts.empty:
    nbs.save_table(counts, "06_intruders_per_run", source=NOTEBOOK,
                   title="Intruder dimensions (k = 10, ε = 0.5, left singular vectors) "
                         "per fine-tuned MiniLM")
counts
'''),
    md('''
## Intruder count against ε

Summed over all target matrices of each fine-tune (`sweep.csv` of each intruders run). A tuned
vector "is an intruder at ε" when its best |cos| with the base's singular vectors is below ε, so the
count grows with ε; at ε = 0.9 even small rotations count.
'''),
    code('''
if not sweep.empty:
    keys = ["run", "method", "rank", "study", "epsilon"]
    total = sweep.groupby(keys, dropna=False)["count"].sum().reset_index()
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    for k, (_run, g) in enumerate(total.groupby("run", sort=False)):
        m, r = g.method.iloc[0], g["rank"].iloc[0]
        label = "full fine-tuning" if m == "full" else f"{m} r = {int(r)}"
        label += " (study)" if g.study.iloc[0] else ""
        ax.plot(g.epsilon, g["count"], marker="o", ls="--" if m == "full" else "-",
                color="k" if m == "full" else f"C{k}", label=label)
    ax.set_xlabel("ε (similarity threshold)")
    ax.set_ylabel("intruder dimensions, summed over matrices")
    ax.set_title("Intruder count vs ε (top-10 left singular vectors)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    print(nbs.save_figure(fig, "06_intruders_vs_epsilon"))
    plt.show()
    nbs.save_table(total, "06_intruders_vs_epsilon", source=NOTEBOOK,
                   title="Intruder count vs ε per fine-tune (summed over matrices)")
'''),
    md('''
## Intruder count against LoRA's rank, full fine-tuning as the reference
'''),
    code('''
if not counts.empty:
    lora = counts[(counts.method == "lora") & ~counts.run.str.startswith("study:")].sort_values("rank")
    full_ft = counts[(counts.method == "full") & ~counts.run.str.startswith("study:")]
    # (at full size LoRA r = 8 and full FT are the study's seed-0 runs, labelled by their run name)
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    ax.plot(lora["rank"], lora["intruders_at_0.5"], marker="o", label="LoRA")
    for _, row in full_ft.iterrows():
        ax.axhline(row["intruders_at_0.5"], color="k", ls="--", label="full fine-tuning")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(lora["rank"]), [str(int(r)) for r in lora["rank"]])
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel("intruder dimensions at ε = 0.5 (all matrices)")
    n_matrices = int(lora.matrices.max()) if len(lora) else 0
    ax.set_title(f"Intruders vs rank, SST-2, MiniLM ({n_matrices} matrices)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    print(nbs.save_figure(fig, "06_intruders_vs_rank"))
    plt.show()
'''),
    md('''
## Per method of the confirmation study (when its merged weights are on disk)
'''),
    code('''
study_counts = counts[counts.study] if not counts.empty else counts
if study_counts.empty:
    print("no saved study with merged weights under reports/finetune/sst2/runs/*/merged: skipped")
else:
    fig, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
    ax.bar(study_counts.run.str.removeprefix("study:"), study_counts["intruders_at_0.5"])
    ax.set_ylabel("intruder dimensions at ε = 0.5")
    ax.set_title("Issue 7 study (SST-2, MiniLM): intruders per method")
    ax.tick_params(axis="x", rotation=30)
    print(nbs.save_figure(fig, "06_intruders_per_method"))
    plt.show()
'''),
    md('''
The similarity matrix of the matrix with the most intruders, as the intruders CLI draws it
(|cos| between the tuned top-k and the base's singular vectors), for the lowest-rank LoRA:
'''),
    code('''
from IPython.display import Image, display

if not counts.empty:
    lora_runs = counts[counts.method == "lora"].sort_values("rank")
    pick_run = lora_runs.run.iloc[0] if len(lora_runs) else counts.run.iloc[0]
    out = intruder_dirs[pick_run]
    pngs = sorted(out.glob("similarity_*.png"))
    if pngs:
        print(pngs[0])
        display(Image(filename=str(pngs[0])))
    else:
        print("no similarity figure in", out)
'''),
]


NOTEBOOKS = {
    "06_intruder_dimensions": NB06,
    "05_convergence": NB05,
    "03_nystrom_as_released_vs_textbook": NB03,
    "02_spectra_of_real_weights": NB02,
    "01_factorization_error_and_time": NB01,
    "04_parameter_counts": NB04,
}


def build(name: str, cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{i:02d}"  # stable ids: regenerating does not churn the diff
    return nb


def main(argv: list[str]) -> int:
    check = "--check" in argv
    wanted = [a for a in argv if not a.startswith("--")]
    stale = []
    for name, cells in NOTEBOOKS.items():
        if wanted and not any(name.startswith(w) for w in wanted):
            continue
        path = HERE / f"{name}.ipynb"
        text = nbformat.writes(build(name, cells)) + "\n"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
            continue
        path.write_text(text)
        print("wrote", path.relative_to(HERE.parent))
    if stale:
        print("out of date (run python notebooks/build_notebooks.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
