# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Data-driven initialisations: error, time, and what the first step does
#
# EVA, CorDA, LoRA-GA and LoRA-One build the adapter from the task's own data (activations or the
# gradient of the task loss), LoftQ from the weight's NF4 quantisation error (REFERENCE.md,
# "Initialisations beyond PiSSA and OLoRA"). The newest ones (REFERENCE.md, "PEFT 0.22 and the
# newest inits"; issue 32) are here too: Astra (eigenvectors of the layer's *output* covariance on
# task data), LoRA-Null (W projected on the input directions the task data leaves empty), and three
# that need no data — NoRA (LoRA with unit-norm columns of A), KaSA (the base loses its r smallest
# singular triplets, a trainable diagonal sits between A and B) and Init[AB] (both factors random,
# their product subtracted from the base). This notebook asks three questions on SST-2 with
# all-MiniLM-L6-v2:
#
# 1. **Error and time.** How far is each init's adapter from the best rank-r approximation of W (where
#    it approximates W at all), and what does calibration + init cost?
# 2. **Step 0.** What does each init make the *first* optimiser step do — how much of the update lies in
#    the top-r subspace of the full fine-tuning gradient (`python -m lowrank_lab.diagnose`)?
# 3. **Does step 0 predict convergence?** Step-0 alignment against the loss AUC of the committed
#    fine-tuning study (`reports/finetune/sst2`).
#
# Small mode (`LOWRANK_LAB_SMALL=1`): the first encoder layer, 8 calibration sentences, rank 4.

# %%
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see lowrank_lab/analyze.py
if os.environ.get("LOWRANK_LAB_SMALL", "").lower() in ("1", "true", "yes", "on"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import copy

import matplotlib.pyplot as plt
import pandas as pd
import torch
from scipy import stats

from lowrank_lab import notebook_support as nbs
from lowrank_lab.adapters import (
    ADAPTERS,
    activation_statistics,
    batch_losses,
    inject,
    lowrank_modules,
    resolve_targets,
)
from lowrank_lab.analysis.diagnose import DEFAULT_METHODS, DiagnoseConfig
from lowrank_lab.linalg import optimal_error, singular_values
from lowrank_lab.training.batching import Encoder, batch_order
from lowrank_lab.training.models import load_model, load_tokenizer
from lowrank_lab.training.tasks import get_task, load_examples

SMALL = nbs.small_mode()
NOTEBOOK = "notebooks/07_data_driven_inits.ipynb"
DATA = nbs.shared_data()
RANK = nbs.pick(4, 16)
N_CAL = nbs.pick(8, 48)
pd.set_option("display.width", 160)
print(nbs.mode_line())
print("figures ->", nbs.figures_dir(), "| tables ->", nbs.reports_dir())

# %% [markdown]
# ## 1 · Error against the optimum and init time
#
# The SST-2 classifier on MiniLM (seed-0 head, eval mode), calibrated on the first `N_CAL` SST-2
# *training* sentences (never dev data), one callable per sentence. Without `../shared/data` the
# calibration falls back to random token ids (the numbers then say nothing about the task).
# `err_ratio` = ‖W − s·B·A‖_F / ‖W − W_r‖_F for inits whose adapter is a part of W (PiSSA, CorDA,
# Astra and LoRA-Null: projections of W); EVA, NoRA and KaSA (B = 0), LoRA-GA and LoRA-One (gradient
# directions), Init[AB] (random) and LoftQ (fits W minus its NF4 copy) have none.
# `input_energy` = the share of the calibration inputs' energy that A's row space reads,
# tr(Qᵀ·XᵀX·Q) / tr(XᵀX) with Q an orthonormal basis of A's rows (a random A reads about r/n of it;
# LoRA-Null's A reads none by construction). `output_change` = ‖logits − logits_base‖ / ‖logits_base‖
# on the calibration sentences at init: zero for residual and B = 0 inits, not for KaSA, whose base
# changed.

# %%
spec = get_task("sst2")
torch.manual_seed(0)
proto = load_model("minilm", spec).eval()
if DATA is not None:
    enc = Encoder(spec, load_tokenizer("minilm", spec), 64, load_examples(spec, DATA, "train"))
    batches = [enc.collate([i]) for i in batch_order(len(enc), N_CAL, 1, seed=0).flatten().tolist()]
else:
    print("../shared/data not found: calibrating on random token ids")
    g = torch.Generator().manual_seed(0)
    batches = [
        {"input_ids": torch.randint(1000, 30000, (1, 24), generator=g), "target": torch.tensor([i % 2])}
        for i in range(N_CAL)
    ]
targets = [n for n in resolve_targets(proto) if not SMALL or ".layer.0." in n]


def loss(model, b):
    return model(**{k: v for k, v in b.items() if k != "target"}, labels=b["target"]).loss


def logits(model):
    with torch.no_grad():
        return torch.cat([model(**{k: v for k, v in b.items() if k != "target"}).logits for b in batches])


# The calibration inputs' scatter XᵀX at every target (uncentred, float64), and the base logits.
stats_in = activation_statistics(proto, targets, batch_losses(batches, loss))
scatter = {n: st.scatter for n, st in stats_in.items()}
base_logits = logits(proto)
METHODS = ["pissa", "eva", "corda-ipm", "corda-kpm", "lora-ga", "lora-one", "loftq",
           "astra", "lora-null", "nora", "kasa", "init-ab"]  # fmt: skip
rows = []
for method in METHODS:
    model = copy.deepcopy(proto)
    originals = {n: model.get_submodule(n).weight.detach().double().clone() for n in targets}
    calibration = batch_losses(batches, loss) if ADAPTERS[method].needs_calibration else None
    report = inject(model, method, rank=RANK, targets=targets, calibration=calibration, progress=False)
    ratios, energy = [], []
    for n, layer in lowrank_modules(model).items():
        if method in ("pissa", "corda-ipm", "corda-kpm", "astra", "lora-null"):
            W = originals[n]
            opt, _ = optimal_error(singular_values(W), RANK)
            ratios.append(float((W - layer.delta_weight(torch.float64)).norm() / W.norm()) / opt)
        Q = torch.linalg.qr(layer.A.detach().double().T).Q  # (n, r): A's row space
        energy.append(float(torch.trace(Q.T @ scatter[n] @ Q) / torch.trace(scatter[n])))
    rows.append({
        "method": method, "matrices": len(report.modules), "calibration_s": report.calibration_seconds,
        "init_s": report.init_seconds,
        "err_ratio_mean": sum(ratios) / len(ratios) if ratios else float("nan"),
        "input_energy": sum(energy) / len(energy),
        "output_change": float((logits(model) - base_logits).norm() / base_logits.norm()),
    })  # fmt: skip
errors = pd.DataFrame(rows)
nbs.save_table(errors, "07_error_and_time", title="Data-driven inits: error against the optimum and time",
               source=NOTEBOOK)  # fmt: skip
print(errors.to_string(float_format="%.4g"))

# %%
fig, ax = plt.subplots(figsize=(6, 3))
ax.barh(errors.method, errors.calibration_s, label="calibration")
ax.barh(errors.method, errors.init_s, left=errors.calibration_s, label="init (all matrices)")
ax.set_xlabel("seconds")
ax.legend()
ax.set_title(f"MiniLM SST-2, rank {RANK}, {N_CAL} calibration sentences")
nbs.save_figure(fig, "07_init_time")

# %% [markdown]
# CorDA-IPM keeps the directions of W·C with the largest singular values, so its adapter approximates
# W almost as well as PiSSA's (a ratio near 1); KPM keeps the least-excited directions, far from the
# optimum by design, and LoRA-Null's projection on the inputs' empty directions likewise. Astra keeps
# the output directions of *largest* second moment, as PEFT 0.22's code does (`V[:, -r:]` of an
# ascending eigendecomposition) though its name speaks of tail eigenvectors; `which="smallest"` takes
# the other end. EVA's A spans the inputs' principal components (mean-centred, so not all of the
# uncentred energy measured here); LoRA-Null's A reads none of it. The PEFT timing comparison is
# `python benchmarks/adapter_init.py --data-driven`
# (reports/benchmarks/adapter_init_data_driven.md).
#
# ## 2 · The first step
#
# `python -m lowrank_lab.diagnose` builds every method exactly as `lowrank_lab.finetune` does for
# seed 0 and measures, per matrix, the share of the first Adam update ΔW inside the top-r singular
# subspaces of the full fine-tuning gradient (`alignment`), and the principal angles between the
# methods' initial input subspaces. The saved full-size run is read when there is one.

# %%
diag_dir = nbs.saved_result("diagnose/sst2", marker="summary.md")  # the full-size run, when saved
if diag_dir is not None:
    print("reading the saved results in", diag_dir)
elif DATA is None:
    print("../shared/data not found: the step-0 diagnostics need SST-2's training data")
else:
    name = "07_diagnose-small" if SMALL else "07_diagnose"
    diag_dir = nbs.output_root() / "reports" / nbs.NOTEBOOK_SUBDIR / name
    common = dict(task="sst2", model="minilm", data_dir=str(DATA), study="none", out=str(diag_dir))
    if SMALL:
        small = ("lora", "pissa", "eva", "lora-ga", "lora-one", "astra", "lora-null", "kasa")
        config = DiagnoseConfig(**common, methods=small, rank=4, batch_size=8, max_length=32,
                                calibration_samples=8, targets="query,value")  # fmt: skip
    else:
        extra = ("astra", "lora-null", "nora", "kasa", "init-ab")
        config = DiagnoseConfig(**common, methods=(*DEFAULT_METHODS, *extra))
    print("running", config)
    nbs.run_library(config)  # lowrank_lab.analysis.diagnose.run, what python -m lowrank_lab.diagnose calls
if diag_dir is not None:
    diag = pd.read_csv(diag_dir / "diagnostics.csv")
    per_method = diag.groupby("method", sort=False)[["alignment", "cos_neg_grad", "output_change"]].mean()
    fig, ax = plt.subplots(figsize=(7, 3))
    per_method.sort_values("alignment").alignment.plot.barh(ax=ax)
    ax.set_xlabel("share of the first update in the full-FT gradient's top-r subspaces (mean over matrices)")
    nbs.save_figure(fig, "07_step0_alignment")
    print(per_method.sort_values("alignment", ascending=False).to_string(float_format="%.3f"))

# %% [markdown]
# LoRA-GA and LoRA-One put A on the gradient's top right singular vectors, so their first step lies
# mostly in the full-FT gradient's subspace; EVA's A spans the input's principal components, which
# the gradient (input ⊗ error) also favours. PiSSA, MiLoRA and CorDA take directions of W, not of the
# task's gradient; LoRA's random A is the baseline.
#
# ## 3 · Does step-0 alignment predict faster convergence?
#
# The committed study `reports/finetune/sst2` (300 steps, three seeds) records each method's training-
# loss AUC (lower = falls faster). The diagnose run joins them and reports Spearman's ρ.

# %%
study = nbs.saved_result("finetune/sst2", marker="runs.csv")
if diag_dir is None or study is None:
    print("no saved study or diagnostics to compare (run the fine-tuning study and diagnose at full size)")
else:
    auc = pd.read_csv(study / "runs.csv").query("status == 'finished'").groupby("method").loss_auc.mean()
    joined = per_method.join(auc, how="inner")
    rho = stats.spearmanr(joined.alignment, joined.loss_auc)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(joined.alignment, joined.loss_auc)
    for m, r in joined.iterrows():
        ax.annotate(m, (r.alignment, r.loss_auc), fontsize=7)
    ax.set_xlabel("step-0 alignment")
    ax.set_ylabel("training-loss AUC (study)")
    ax.set_title(f"Spearman ρ = {rho.statistic:.2f} (p = {rho.pvalue:.2g}, n = {len(joined)})")
    nbs.save_figure(fig, "07_alignment_vs_convergence")
    print((diag_dir / "summary.md").read_text().split("## Does step-0")[-1])

# %% [markdown]
# Read with care: the study's methods differ in more than their init — core-only methods (LoRA-XS,
# IntTune, LoLDU) train far fewer parameters at a 10× learning rate — so the correlation mixes the
# init's direction with capacity and step size. The new data-driven inits are not in the committed
# study yet; `python -m lowrank_lab.finetune --methods eva,corda-ipm,lora-ga,lora-one ...` adds them,
# and `--methods astra,lora-null,nora,kasa,init-ab` the newest. KaSA's two regularisers (β = 1e-4,
# γ = 1e-3) are not added by the harness, as PEFT leaves `_get_kasa_loss` to the user;
# `lowrank_lab.adapters.kasa_loss(model)` computes them for a training loop that wants them.
