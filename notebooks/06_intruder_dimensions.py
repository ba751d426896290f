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
# # 06 · Intruder dimensions: LoRA vs full fine-tuning (the "illusion of equivalence" figures, small scale)
#
# Shuttleworth et al. 2024 (arXiv 2410.21228): after fine-tuning, take the top-k singular vectors of each
# tuned weight and compare them with *all* singular vectors of the pre-trained weight; a tuned vector
# whose best |cos| is below ε is an **intruder dimension**. They find LoRA at low rank creates
# intruders and full fine-tuning essentially none. Their figures: intruder count against ε, and
# against LoRA's rank with full fine-tuning as the reference.
#
# Here the fine-tunes come from the harness (`python -m lowrank_lab.finetune`, which saves each run's
# merged weights) on SST-2 with MiniLM — LoRA at several ranks and full fine-tuning, same data order,
# seed and schedule — and the counts from `python -m lowrank_lab.intruders --sweep` (issue 6; k = 10,
# ε from 0.1 to 0.9, base SVDs cached on disk). When issue 7's committed study
# `reports/finetune/sst2` still has its runs' merged weights, every method of it is counted as well.
#
# Small mode: LoRA r ∈ {1, 8} and full FT, 10 steps on the query/value maps — a smoke test of the
# pipeline; after so few steps the counts say nothing. Full size: r ∈ {1, 4, 8, 16, 64}, 300 steps on
# every linear map; LoRA r = 8 and full fine-tuning are the study's seed-0 runs when it is on disk
# (trained with the same settings), the other ranks are trained here. Needs ../shared/data (GLUE SST-2).

# %%
import matplotlib.pyplot as plt
import pandas as pd

from lowrank_lab import notebook_support as nbs

NOTEBOOK = "notebooks/06_intruder_dimensions.ipynb"
SMALL = nbs.start(NOTEBOOK)  # small or full size, BLAS threads, pandas display, where outputs go

# %%
import re

from lowrank_lab.training.finetune_run import FinetuneConfig

ranks = nbs.pick(small=[1, 8], full=[1, 4, 8, 16, 64])
targets = nbs.pick(small="query,value", full=None)
run_dirs = {}                                   # label -> harness run directory (holding merged/)
study_runs = {}                                 # run name -> run directory of the issue-7 study
if nbs.shared_data() is None:
    print("../shared/data not found: no fine-tunes to compare, this notebook has nothing to show "
          "(set LOWRANK_LAB_SHARED_DATA)")
else:
    common = dict(task="sst2", model="minilm", data_dir=str(nbs.shared_data()), seeds=(0,),
                  no_progress=True, targets=targets)
    small = dict(steps=10, batch_size=8, max_length=32, eval_samples=32, val_samples=64, eval_every=0)
    full = dict(steps=300, eval_samples=256)
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
        methods = tuple(wanted)
        study = nbs.outputs(name=f"06_finetune_sst2_r{r}",
                            small=FinetuneConfig(**common, methods=methods, rank=r, **small),
                            full=FinetuneConfig(**common, methods=methods, rank=r, **full))
        for d in sorted(study.glob("runs/*")):
            if (d / "merged").is_dir():
                run_dirs[d.name] = d
    for d in study_runs.values():
        if d not in run_dirs.values():
            run_dirs[f"study:{d.name}"] = d
print(len(run_dirs), "fine-tuned models:", list(run_dirs))

# %%
from lowrank_lab.analysis.intruders_run import IntrudersConfig
from lowrank_lab.training.record import RunRecord

rows, sweeps, intruder_dirs = [], [], {}
for label, d in run_dirs.items():
    # The study's own counts, when its author ran the intruders CLI with --sweep into
    # <study>/intruders/<run>/ (where its summary.md looks), are read rather than redone.
    in_study = d in study_runs.values()
    saved = f"finetune/sst2/intruders/{d.name}" if in_study else None
    out = intruder_dirs[label] = nbs.outputs(
        name=f"06_intruders_{re.sub(r'[^A-Za-z0-9_.-]', '_', label)}",
        small=IntrudersConfig(base="minilm", tuned=str(d), sweep=True, targets=targets),
        full=IntrudersConfig(base="minilm", tuned=str(d), sweep=True), saved=saved, marker="sweep.csv")
    cfg = RunRecord.read(d).config  # the fine-tuned run's record, runs/<run>/run.json
    info = {"run": label, "method": cfg.method, "rank": cfg.rank if cfg.method != "full" else None,
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

# %% [markdown]
# ## Intruder count against ε
#
# Summed over all target matrices of each fine-tune (`sweep.csv` of each intruders run). A tuned
# vector "is an intruder at ε" when its best |cos| with the base's singular vectors is below ε, so the
# count grows with ε; at ε = 0.9 even small rotations count.

# %%
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

# %% [markdown]
# ## Intruder count against LoRA's rank, full fine-tuning as the reference

# %%
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

# %% [markdown]
# ## Per method of the confirmation study (when its merged weights are on disk)

# %%
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

# %% [markdown]
# The similarity matrix of the matrix with the most intruders, as the intruders CLI draws it
# (|cos| between the tuned top-k and the base's singular vectors), for the lowest-rank LoRA:

# %%
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
