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
# # 03 · NLoRA's Nyström initialisation: as released, as drawn, and as the textbook sketches it
#
# NLoRA (Guo et al. 2025, arXiv 2502.14482) initialises an adapter ΔW = s · B · M · A with a Nyström
# form of the pre-trained W. Its paper draws the CUR/Nyström picture; its released code
# (`TracyGuo2001/NLoRA`, `nlora_init`) does something else. Three variants, all in
# `lowrank_lab.linalg` and as adapters in `lowrank_lab.adapters.ADAPTERS`:
#
# | name (factorization / adapter) | B | M | A |
# |---|---|---|---|
# | `nystrom-released` / `nlora` (and `inttune`) | W[:, :r] | **W[:r, :r]** (raw block) | W[:r, :] |
# | `nystrom-pinv` / `nlora-pinv` (paper's figure, CUR–Nyström) | W[:, :r] | W[:r, :r]⁺ | W[:r, :] |
# | `nystrom` / `nlora-sketch` (Nakatsukasa 2020, stabilised, ℓ = r/2, q = 2) | W X | (Yᵀ W X)⁺_ε | Yᵀ W |
#
# Neither NLoRA variant subtracts its product from the frozen base (no residual), so the adapted model
# computes W + ΔW from step 0. This notebook measures (1) how well each variant approximates W,
# (2) ΔW and the change of the model's output at step 0, and (3) what that does to training.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from lowrank_lab import notebook_support as nbs

NOTEBOOK = "notebooks/03_nystrom_as_released_vs_textbook.ipynb"
SMALL = nbs.start(NOTEBOOK)  # small or full size, BLAS threads, pandas display, where outputs go

# %% [markdown]
# ## 1 · Approximation error on real weights
#
# From `python -m lowrank_lab.analyze` (error ratio against the Eckart–Young optimum), plus the size
# of each approximation, ‖Ŵ‖_F / ‖W‖_F, computed with `lowrank_lab.linalg.factorize` on the same
# matrices: an approximation of W should have about W's norm.

# %%
import torch

from lowrank_lab.analysis.report import method_rank_table
from lowrank_lab.linalg import factorize
from lowrank_lab.weights import open_source

METHODS = ["svd", "nystrom", "nystrom-pinv", "nystrom-released"]
ranks = nbs.pick(small=[8, 32], full=[8, 32, 64])
d = nbs.analysis_dir("minilm", name="03_minilm",
                     small=dict(methods=",".join(METHODS), layers="0", ranks="8,32", repeats=1, warmup=0))
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

# %%
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

# %% [markdown]
# Reading it: the released form's product W[:, :r]·W[:r, :r]·W[:r, :] scales like ‖W‖³, not ‖W‖ —
# for MiniLM's weights (entries of order 0.05) it is a small fraction of W, so its relative error sits
# at ≈ 1: no better than approximating W by zero. The pseudo-inverse form reproduces the chosen r
# rows and columns exactly but is not rank-revealing, and an ill-conditioned W[:r, :r] makes its
# worst case large. The sketched, stabilised Nyström is within a small factor of the optimum. Keep
# the optimum in view too (`median_rel_err_fro` of `svd`): MiniLM's spectra decay slowly, so at small r
# even the best rank-r approximation leaves most of ‖W‖_F, and a method 10–20 % above it is already
# no closer to W than the zero matrix.
#
# ## 2 · ΔW and the model's output at step 0
#
# Each adapter is injected into the real all-MiniLM-L6-v2 (every linear map of every layer) at
# rank r with `lowrank_lab.adapters.inject`. Per matrix: ‖W_eff − W‖_F / ‖W‖_F where
# W_eff = base weight + `delta_weight()` is what the adapted layer computes. Then the model's output
# on a few sentences: the relative change of the last hidden states and the cosine between the
# sentence embeddings (mean-pooled hidden states, the way all-MiniLM-L6-v2 is used) before and after
# injection. LoRA (B = 0) and PiSSA (residual base) are the controls: both must leave the model as is.

# %%
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

# %%
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

# %% [markdown]
# ## 3 · What it means for training
#
# The fine-tuning harness (`python -m lowrank_lab.finetune`, issue 7) trains each variant on SST-2
# with the same data order, seed and schedule; the loss curves show whether starting from a changed
# model costs anything. LoRA and PiSSA are the output-preserving references. Small mode trains a few
# steps on the query/value maps only (a smoke test of the pipeline, not evidence); the full run trains
# 300 steps on every linear map. Needs ../shared/data (GLUE SST-2); skipped without it.

# %%
from lowrank_lab.training.finetune_run import FinetuneConfig
from lowrank_lab.training.record import study_records

if nbs.shared_data() is None:
    print("../shared/data not found: the training comparison is skipped (set LOWRANK_LAB_SHARED_DATA)")
    records = []
else:
    train_methods = nbs.pick(small=("lora", "nlora", "nlora-pinv"),
                             full=("lora", "pissa", "nlora", "nlora-pinv", "nlora-sketch"))
    common = dict(task="sst2", model="minilm", methods=train_methods, seeds=(0,),
                  data_dir=str(nbs.shared_data()), no_save_merged=True, no_progress=True, rank=8)
    study = nbs.outputs(
        name="03_finetune_sst2",
        small=FinetuneConfig(**common, steps=8, batch_size=8, max_length=32, eval_samples=32, val_samples=64,
                             eval_every=0, targets="query,value"),
        full=FinetuneConfig(**common, steps=300, eval_samples=256),
    )
    records = study_records(study)  # RunRecord: one per runs/<run>/run.json
    runs = pd.DataFrame([{"method": r.method, "status": r.status,
                          "first_loss": r.train_loss[0] if r.train_loss else None,
                          "final_loss": r.train_loss[-1] if r.train_loss else None,
                          "initial_metric": r.initial_metric, "final_metric": r.final_metric,
                          "trainable_params": r.trainable_params} for r in records])
    nbs.save_table(runs, "03_training", source=NOTEBOOK,
                   title="SST-2 with MiniLM: Nyström variants vs LoRA/PiSSA")
    display(runs)

# %%
if records:
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for r in records:
        loss = np.asarray(r.train_loss, dtype=float)
        if loss.size:
            w = max(1, loss.size // 20)   # light smoothing for display only
            ax.plot(np.arange(1, loss.size + 1)[w - 1:], np.convolve(loss, np.ones(w) / w, "valid"),
                    label=f"{r.method} ({r.status})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss" + (f" (moving average of {w})" if w > 1 else ""))
    ax.set_title("SST-2, MiniLM, r = 8: training loss per init")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    print(nbs.save_figure(fig, "03_training_loss"))
    plt.show()
