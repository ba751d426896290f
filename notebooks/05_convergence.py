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
# # 05 · Convergence of the adapter methods (NLoRA's convergence figure, at small scale)
#
# NLoRA's paper plots training loss against steps for LoRA, PiSSA and NLoRA and claims NLoRA
# converges faster and ends lower; PiSSA claims the same over LoRA. Here the curves come from the
# fine-tuning harness (`python -m lowrank_lab.finetune`): same data order, head init and schedule for
# every method within a seed, each method's learning rate selected on a validation split carved from
# the training data (`--lr-grid`), the claims judged on the dev set by `python -m lowrank_lab.claims`.
#
# Sources, in order: issue 15's study `reports/study/{sst2,stsb,gsm8k}` (benchmarks/claims_study.sh)
# when a task of it is finished; else issue 7's earlier study `reports/finetune/{sst2,rte,gsm8k}`
# (300 steps, borrowed rates, the BERT pooler: kept to show what changed, not as evidence); else a study
# run here — SST-2 with MiniLM (small mode: three methods, a few steps on the query/value maps; full
# size: six methods, 300 steps, one seed). GLUE and GSM8K come from ../shared/data; without it this
# notebook says so and stops. The claims table is `reports/claims.csv` when it exists.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from lowrank_lab import notebook_support as nbs

NOTEBOOK = "notebooks/05_convergence.ipynb"
SMALL = nbs.start(NOTEBOOK)  # small or full size, BLAS threads, pandas display, where outputs go

# %%
from lowrank_lab.training import get_task
from lowrank_lab.training.claims import read_baselines, reference_levels, study_claims
from lowrank_lab.training.config import method_label
from lowrank_lab.training.figures import draw_references
from lowrank_lab.training.finetune_run import FinetuneConfig
from lowrank_lab.training.record import method_labeller, study_rank, study_records
from lowrank_lab.training.summary import (
    curve_split,
    loss_threshold,
    method_rows,
    method_table,
    moving_average,
    smoothing_window,
)

studies = {}
for task in ["sst2", "stsb", "gsm8k"]:  # issue 15's study
    found = nbs.saved_result(f"study/{task}", marker="summary.md")
    if found is not None:
        studies[task] = found
if not studies:  # issue 7's study, superseded: the protocol it lacked is what issue 15 added
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
    common = dict(task="sst2", model="minilm", data_dir=str(nbs.shared_data()), no_save_merged=True,
                  no_progress=True, rank=8, seeds=(0,))
    studies["sst2"] = nbs.outputs(
        name="05_finetune_sst2",
        small=FinetuneConfig(**common, methods=("lora", "pissa", "nlora"), steps=10, batch_size=8,
                             max_length=32, eval_samples=32, val_samples=64, eval_every=5,
                             targets="query,value"),
        full=FinetuneConfig(**common, methods=("lora", "slora", "pissa", "nlora", "inttune", "full"),
                            steps=300, eval_samples=256, eval_every=50),
    )
records = {task: study_records(d) for task, d in studies.items()}  # RunRecord per runs/<run>/run.json
# one colour per method in every figure of this notebook (tab20: the full study has 15 methods)
LABELS = list(dict.fromkeys(m for recs in records.values() for m in map(method_labeller(recs), recs)))


def color(label):
    return plt.get_cmap("tab20")(LABELS.index(label) % 20) if label in LABELS else "0.5"


for task, recs in records.items():
    print(f"{task}: {len(recs)} runs,", pd.Series([r.status for r in recs]).value_counts().to_dict())

# %% [markdown]
# ## Loss curves per method (mean over seeds, band = min–max over seeds)
#
# Smoothed with the harness's own trailing window (`lowrank_lab.training.summary.smoothing_window`:
# 5 % of the steps), the same curves as the studies' `figures/loss_curves.png`, side by side.

# %%
if records:
    fig, axes = plt.subplots(1, len(records), figsize=(6.5 * len(records), 4.2), squeeze=False,
                         layout="constrained")
    for ax, (task, recs) in zip(axes[0], records.items(), strict=True):
        label = method_labeller(recs)
        methods = list(dict.fromkeys(map(label, recs)))  # lora@64: another rank
        window = smoothing_window(max((len(r.train_loss) for r in recs), default=1))
        for m in methods:
            curves = [r.train_loss for r in recs if label(r) == m and r.train_loss]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            sm = np.array([moving_average(c[:n], window) for c in curves])      # (seeds, n)
            x = np.arange(1, n + 1)
            ax.plot(x, sm.mean(0), color=color(m),
                    label=f"{m} ({len(curves)} seed{'s' * (len(curves) > 1)})")
            if len(curves) > 1:
                ax.fill_between(x, sm.min(0), sm.max(0), color=color(m), alpha=0.2, lw=0)
        cfg = recs[0].config
        ax.set_title(f"{task}, {cfg.model}, r = {cfg.rank}, batch {cfg.batch_size}")
        ax.set_xlabel("step")
        ax.set_ylabel(f"training loss (moving average, {window} steps)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    print(nbs.save_figure(fig, "05_loss_curves"))
    plt.show()

# %%
if records:
    fig, axes = plt.subplots(1, len(records), figsize=(6.5 * len(records), 4.0), squeeze=False,
                         layout="constrained")
    for ax, (task, recs) in zip(axes[0], records.items(), strict=True):
        spec = get_task(task)
        label = method_labeller(recs)
        methods = list(dict.fromkeys(map(label, recs)))  # lora@64: another rank
        for m in methods:
            evals = [{e.step: e.metric for e in r.evals} for r in recs if label(r) == m and r.evals]
            if not evals:
                continue
            steps = sorted(set.intersection(*[set(ev) for ev in evals]))
            vals = np.array([[ev[s] for s in steps] for ev in evals])  # (seeds, evaluations)
            ax.errorbar(steps, vals.mean(0), yerr=vals.std(0) if len(evals) > 1 else None, marker="o", ms=3,
                        color=color(m), capsize=2, label=m)
        # the reference predictors scored on the same split (GSM8K: the bigram of the gate)
        draw_references(ax, reference_levels(read_baselines(studies[task]), curve_split(recs)))
        ax.set_title(f"{task}: held-out {spec.metric} during training")
        ax.set_xlabel("step")
        ax.set_ylabel(spec.metric)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    print(nbs.save_figure(fig, "05_eval_curves"))
    plt.show()

# %% [markdown]
# ## Per method: final metric, loss AUC, steps to a loss threshold — and the papers' claims
#
# `method_rows` / `method_table` / `study_claims` are the harness's own aggregation (the tables of each
# study's summary.md): mean ± sd over seeds; "steps to threshold" counts steps until the smoothed loss
# first reaches LoRA's mean final loss. The claims are read from `reports/claims.csv`, the table
# `python -m lowrank_lab.claims` writes (gates against the untuned model and the base's training data,
# per-seed paired differences, Holm per paper across tasks, the decision rule of
# `lowrank_lab.training.stats.DECISION_RULE`); without it (a study run here) from `study_claims`.

# %%
tables, verdicts = [], []
for task, recs in records.items():
    spec = get_task(task)
    methods = list(dict.fromkeys(map(method_labeller(recs), recs)))  # lora@64: another rank
    threshold, why = loss_threshold(recs, methods)
    rows = method_rows(recs, methods, spec, threshold)
    tables.append(method_table(rows, spec).assign(task=task))
    # what `python -m lowrank_lab.claims` reads of a study folder: its runs, baselines, intruder
    # counts (<study>/intruders/<run>/), forgetting.csv and selection.csv
    verdicts += study_claims(studies[task], recs)
if tables:
    table = pd.concat(tables, ignore_index=True)
    table = table[["task", *[c for c in table.columns if c != "task"]]]
    nbs.save_table(table, "05_convergence_table", source=NOTEBOOK,
                   title="Fine-tuning studies: metric, loss AUC and steps to threshold per method")
    display(table)
    saved = nbs.saved_result("claims.csv")
    if saved is not None:  # python -m lowrank_lab.claims over the committed study folders
        print("claims from", saved)
        claim_table = pd.read_csv(saved)
    else:
        claim_table = pd.DataFrame(verdicts)
    claim_table = claim_table[["task", "claim", "kind", "paper_number", "metric", "n_seeds", "effect",
                               "ci_low", "ci_high", "p1_holm", "p2_holm", "verdict", "claim_holds",
                               "gate_reason", "tuning"]]
    nbs.save_table(claim_table, "05_claims", source=NOTEBOOK, title="Paper claims at this scale")
    with pd.option_context("display.max_colwidth", 120):
        # one screen first: the verdict of each claim on each task, as claims.md opens
        display(claim_table.pivot_table(index="claim", columns="task", values="verdict", aggfunc="first",
                                        sort=False))
        display(claim_table)

# %% [markdown]
# In small mode these are a handful of steps on two of the six linear maps: the table and verdicts
# exercise the pipeline and mean nothing about the claims (one seed: they come out "not testable" for that
# reason). The committed study under `reports/study/` and `reports/claims.md` are the evidence.

# %% [markdown]
# ## Learning rate against the validation metric (the selection behind every run above)

# %%
for task, folder in studies.items():
    sel_path = folder / "selection.csv"
    if not sel_path.is_file():
        continue
    sel = pd.read_csv(sel_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    main_rank = study_rank(records[task]) if records.get(task) else None
    for (method, rank), rows in sel.groupby(["method", "rank"], sort=False):
        rows = rows.sort_values("lr")
        label = method_label(method, rank, main_rank)
        ok = rows[(rows["status"] == "finished") & ~rows["collapsed"].astype(bool)]
        ax.plot(ok["lr"], ok["val_metric"], "o-", color=color(label), label=label)
        chosen = rows[rows["chosen"].astype(bool)]
        ax.plot(chosen["lr"], chosen["val_metric"], "o", mfc="none", mec=color(label), ms=11)
    draw_references(ax, reference_levels(read_baselines(folder), "validation"))
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="validation metric", title=f"{task}: selection (ringed: chosen)")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7, ncol=2)
    nbs.save_figure(fig, f"05_lr_selection_{task}")
    plt.show()
