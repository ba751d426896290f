"""``python -m lowrank_lab.diagnose``: what each initialisation makes the first optimiser step do.

For every method of ``--methods`` the model is built and injected exactly as ``lowrank_lab.finetune``
does for that seed (same task head, same calibration examples: the run's first training examples),
then, before any training step, per target matrix: the alignment of the first update ΔW with the
top-r subspaces of the full fine-tuning gradient, its norm, the gradient's norm, how far the init
moved the weight, the output change at init, and the principal angles between the methods'
initial subspaces. With a fine-tuning study (``--study``, default ``reports/finetune/<task>`` when
it exists) it also asks whether step-0 alignment predicts which method's loss falls faster
(Spearman rank correlation of mean alignment against the study's loss AUC). The numerics live in
:mod:`lowrank_lab.analysis.step0`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from lowrank_lab.adapters import ADAPTERS
from lowrank_lab.utils.cli import csv_list, guarded_main, positive
from lowrank_lab.utils.files import atomic_path, atomic_write_text, write_frame

DEFAULT_METHODS = "lora,pissa,milora,eva,corda-ipm,lora-ga,lora-one,nlora,full"
#: Methods whose initial subspaces are compared pairwise (issue 17) — those of --methods that are among
#: them: every init whose A is computed from W or the task data (a factorization or calibration, and A
#: not drawn at random), read from the adapter registry (issue 29, point 5).
ANGLE_METHODS = tuple(
    name
    for name, am in ADAPTERS.items()
    if am.init is not None and "A" not in am.drawn and (am.factorization or am.calibration)
)
COLUMNS = [
    "method", "tensor", "rows", "cols", "rank", "lr", "optimizer", "alignment", "cos_neg_grad",
    "update_norm", "grad_norm", "weight_change", "output_change", "init_seconds",
]  # fmt: skip

EPILOG = """\
examples:
  # the step-0 picture of nine inits on SST-2 with MiniLM, compared with the committed study
  python -m lowrank_lab.diagnose --model minilm --task sst2 --data-dir ../shared/data \\
      --methods lora,pissa,milora,eva,corda-ipm,lora-ga,lora-one,nlora,full --rank 8 \\
      --out reports/diagnose/sst2

  # plain SGD instead of Adam's first step, 256 calibration examples (CorDA's advice: plenty)
  python -m lowrank_lab.diagnose --task sst2 --methods pissa,corda-ipm --optimizer sgd \\
      --calibration-samples 256 --out /tmp/diag

outputs (in --out):
  diagnostics.csv  one row per method and matrix: method, tensor, rows, cols, rank, lr, optimizer,
                   alignment (share of ΔW in the top-r singular subspaces of the full-FT gradient),
                   cos_neg_grad, update_norm (‖ΔW‖_F), grad_norm (‖G‖_F), weight_change
                   (‖W_init − W‖/‖W‖), output_change (model-level ‖logits_init − logits_base‖/‖·‖),
                   init_seconds
  angles.csv       method_a, method_b, tensor, mean_cos2 (‖Q_aᵀQ_b‖²_F / r), min_cos
  summary.md       per-method means, the angle matrix, and alignment against the study's loss AUC
  alignment.png, angles.png, alignment_vs_convergence.png (with a study), run.json

Exit status 2 with a one-line message for bad input (no traceback).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lowrank_lab.diagnose",
        description="Step-0 diagnostics of adapter initialisations on a task: alignment of the first "
        "update with the full fine-tuning gradient, norms, output change, subspace angles.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, help="task of lowrank_lab.training (e.g. sst2, rte, gsm8k)")
    p.add_argument("--model", default=None, help="model (default: the task's, minilm for GLUE)")
    p.add_argument(
        "--data-dir", default=None, help="folder holding glue/ and gsm8k/ (default ../shared/data)"
    )
    p.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help=f"comma-separated adapter methods (default {DEFAULT_METHODS})",
    )
    p.add_argument("--rank", type=positive(int), default=8, help="adapter rank r (default 8)")
    p.add_argument("--alpha", type=float, default=None, help="scaling numerator (default alpha = r)")
    p.add_argument(
        "--scaling", choices=["lora", "rslora"], default="lora", help="s = alpha/r (lora) or alpha/sqrt(r)"
    )
    p.add_argument(
        "--targets", default=None, help="target modules (default: every linear map of every block)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the head, the data order and random inits (0)"
    )
    p.add_argument(
        "--batch-size",
        type=positive(int),
        default=16,
        help="examples of the first step's batch (16, finetune's)",
    )
    p.add_argument("--max-length", type=positive(int), default=None, help="tokens per example (task default)")
    p.add_argument(
        "--calibration-samples",
        type=positive(int),
        default=None,
        metavar="N",
        help="training examples data-driven inits calibrate on (default 48, as finetune)",
    )
    p.add_argument(
        "--optimizer",
        choices=["adam", "sgd"],
        default="adam",
        help="the first step: adam (AdamW's step 1, -lr·g/(|g|+eps), as finetune trains) or sgd (-lr·g)",
    )
    p.add_argument(
        "--lr",
        type=positive(float),
        default=None,
        help="learning rate (default: finetune's per method family)",
    )
    p.add_argument(
        "--study",
        default=None,
        help="a finetune study directory with runs.csv to compare against (default reports/finetune/<task> "
        "when it exists; 'none' to skip)",
    )
    p.add_argument("--out", required=True, help="output directory, e.g. reports/diagnose/sst2")
    p.add_argument(
        "--summary-only",
        action="store_true",
        help="measure nothing: rebuild summary.md and the figures from --out's diagnostics.csv and "
        "angles.csv (e.g. against another --study)",
    )
    p.add_argument("--threads", type=positive(int), default=None, help="torch intra-op threads")
    return p


def _angle_rows(subspaces: dict[str, dict[str, torch.Tensor]]) -> list[dict]:
    from lowrank_lab.analysis.step0 import principal_cosines

    rows = []
    methods = list(subspaces)
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            for tensor, A in subspaces[a].items():
                if tensor not in subspaces[b]:
                    continue
                cos = principal_cosines(A, subspaces[b][tensor])
                r = min(A.shape[0], subspaces[b][tensor].shape[0])
                rows.append(
                    {
                        "method_a": a,
                        "method_b": b,
                        "tensor": tensor,
                        "mean_cos2": float((cos**2).sum()) / r,
                        "min_cos": float(cos[r - 1]),
                    }
                )
    return rows


def _study_table(study: Path, per_method: pd.DataFrame) -> tuple[pd.DataFrame, dict] | None:
    runs = study / "runs.csv"
    if not runs.is_file():
        return None
    df = pd.read_csv(runs)
    df = df[df["status"] == "finished"]
    auc = (
        df.groupby("method")["loss_auc"]
        .agg(["mean", "count"])
        .rename(columns={"mean": "loss_auc", "count": "seeds"})
    )
    from lowrank_lab.training.config import method_family

    joined = per_method.join(auc, how="inner").dropna(subset=["alignment", "loss_auc"])
    joined["family"] = [method_family(m) for m in joined.index]
    stat: dict = {"n": len(joined)}
    if len(joined) >= 3:
        from scipy import stats

        res = stats.spearmanr(joined["alignment"], joined["loss_auc"])
        stat.update(rho=float(res.statistic), p=float(res.pvalue))
        # Within the factor-training family the studies use one learning rate and similar parameter
        # counts, so the init is the main difference left.
        fam = joined[joined["family"] == "lora"]
        if len(fam) >= 5:  # below 5 a rank correlation's p-value says nothing (n = 3: p = 0 or 1/3)
            res = stats.spearmanr(fam["alignment"], fam["loss_auc"])
            stat.update(family_n=len(fam), family_rho=float(res.statistic), family_p=float(res.pvalue))
    return joined, stat


def run(args: argparse.Namespace, argv: list[str]) -> Path:
    from lowrank_lab.adapters import calibration_gradients, get_adapter, resolve_targets
    from lowrank_lab.analysis import step0
    from lowrank_lab.training.batching import Encoder, batch_order
    from lowrank_lab.training.config import HEAD_ONLY, RunConfig
    from lowrank_lab.training.loop import calibration_losses, prepare_model, task_loss
    from lowrank_lab.training.models import load_model, load_tokenizer
    from lowrank_lab.training.tasks import default_data_dir, get_task, load_examples
    from lowrank_lab.utils.provenance import run_metadata, write_run_json
    from lowrank_lab.utils.tables import ensure_writable_dir

    t0 = time.perf_counter()
    spec = get_task(args.task)
    methods = csv_list(args.methods)
    if not methods:
        raise ValueError("--methods is empty; e.g. --methods lora,pissa")
    for m in methods:
        if m == HEAD_ONLY:
            raise ValueError("--methods: 'head' has no adapter and no first update to diagnose")
        get_adapter(m)
    out = ensure_writable_dir(args.out)
    model_name = args.model or spec.default_model
    data_dir = args.data_dir or default_data_dir()
    train = load_examples(spec, data_dir, "train")
    tok = load_tokenizer(model_name, spec)
    max_len = args.max_length or spec.default_max_length
    enc = Encoder(spec, tok, max_len, train)
    device = torch.device("cpu")
    n_cal = args.calibration_samples or 48
    steps = max(1, math.ceil(n_cal / args.batch_size))
    order = batch_order(len(enc), steps, args.batch_size, args.seed)
    first = {k: v.to(device) for k, v in enc.collate(order[0].tolist()).items()}  # the run's first batch
    inputs = {k: v for k, v in first.items() if k != "target"}

    def logits_of(model: torch.nn.Module) -> torch.Tensor:  # on the first batch
        return model(**inputs).logits

    def step_loss(model: torch.nn.Module) -> torch.Tensor:
        return task_loss(spec, logits_of(model), first["target"])

    def factory() -> torch.nn.Module:
        return load_model(model_name, spec)

    extra: dict = {}
    if args.scaling != "lora":
        extra["scaling_rule"] = args.scaling
    if args.calibration_samples is not None:
        extra["calibration_samples"] = args.calibration_samples

    def config(method: str) -> RunConfig:
        return RunConfig(
            task=spec.name,
            method=method,
            model=model_name,
            seed=args.seed,
            rank=args.rank,
            alpha=args.alpha,
            targets=args.targets,
            steps=steps,
            batch_size=args.batch_size,
            max_length=max_len,
            lr=args.lr,
            extra=dict(extra),
        )

    # The pre-trained model with the seed's head: the reference output and the full-FT gradient.
    torch.manual_seed(args.seed)
    base = factory().to(device).eval()  # diagnostics without dropout: one deterministic gradient
    names = resolve_targets(base, args.targets)
    W0 = {n: base.get_submodule(n).weight.detach().float().clone() for n in names}
    with torch.no_grad():
        ref_logits = logits_of(base).float()
    G = calibration_gradients(base, names, [step_loss], reduce="sum", method="diagnose")
    subspaces_G = {n: step0.top_subspaces(G[n], min(args.rank, *G[n].shape)) for n in names}
    del base

    rows, subspaces = [], {}
    for method in methods:
        cfg = config(method)
        cal = calibration_losses(cfg, spec, enc, order, device)
        model, info = prepare_model(cfg, spec, factory, calibration=cal, device=device)
        init_seconds = float(info.get("init_seconds", float("nan")))
        model.eval()  # the init was made as finetune makes it (train mode); now measure without dropout
        with torch.no_grad():
            logits = logits_of(model).float()
        output_change = float((logits - ref_logits).norm() / ref_logits.norm())
        W_init = step0.effective_weights(model, names)
        if method in ANGLE_METHODS:
            subspaces[method] = step0.input_subspaces(model)
        lr = cfg.resolved_lr(spec.kind)
        dW = step0.first_update(model, names, step_loss, lr=lr, optimizer=args.optimizer)
        for n in names:
            U, V = subspaces_G[n]
            rows.append(
                {
                    "method": method,
                    "tensor": n,
                    "rows": W0[n].shape[0],
                    "cols": W0[n].shape[1],
                    "rank": args.rank,
                    "lr": lr,
                    "optimizer": args.optimizer,
                    "alignment": step0.alignment(dW[n], U, V),
                    "cos_neg_grad": step0.cosine(dW[n], -G[n]),
                    "update_norm": float(dW[n].norm()),
                    "grad_norm": float(G[n].norm()),
                    "weight_change": float((W_init[n].double() - W0[n].double()).norm() / W0[n].norm()),
                    "output_change": output_change,
                    "init_seconds": init_seconds,
                }
            )
        mean = pd.Series([r["alignment"] for r in rows if r["method"] == method]).mean()
        print(
            f"{method}: mean alignment {mean:.3f}, output change at init {output_change:.3g}", file=sys.stderr
        )
        del model

    diag = pd.DataFrame(rows, columns=COLUMNS)
    write_frame(diag, out / "diagnostics.csv")
    angles = pd.DataFrame(
        _angle_rows(subspaces), columns=["method_a", "method_b", "tensor", "mean_cos2", "min_cos"]
    )
    write_frame(angles, out / "angles.csv")
    report(out, args, diag, angles, spec.name, argv)
    meta = run_metadata(["-m", "lowrank_lab.diagnose", *argv], seed=args.seed, device=device)
    write_run_json(out / "run.json", meta, time.perf_counter() - t0)
    return out


def report(
    out: Path, args: argparse.Namespace, diag: pd.DataFrame, angles: pd.DataFrame, task: str, argv
) -> None:
    """summary.md and the figures, from the diagnostics and angle tables."""
    from lowrank_lab.utils.tables import to_markdown

    per_method = diag.groupby("method", sort=False)[
        ["alignment", "cos_neg_grad", "update_norm", "weight_change", "output_change", "init_seconds"]
    ].mean()
    study = None if (args.study or "").lower() == "none" else Path(args.study or f"reports/finetune/{task}")
    compared = _study_table(study, per_method) if study is not None else None
    _figures(out, diag, angles, compared)
    _summary(out, args, diag, per_method, angles, compared, study, argv, to_markdown)


def summary_only(args: argparse.Namespace, argv: list[str]) -> Path:
    """``--summary-only``: rebuild summary.md and figures from the tables already in ``--out``."""
    out = Path(args.out)
    if not (out / "diagnostics.csv").is_file():
        raise FileNotFoundError(
            f"--summary-only: {out}/diagnostics.csv not found; run diagnose into --out first"
        )
    diag = pd.read_csv(out / "diagnostics.csv")
    angles = pd.read_csv(out / "angles.csv") if (out / "angles.csv").is_file() else pd.DataFrame()
    if "rank" in diag and len(diag):
        args.rank = int(diag["rank"].iloc[0])
        args.optimizer = str(diag["optimizer"].iloc[0])
    if (out / "run.json").is_file():  # the summary names the command that measured, not this one
        argv = json.loads((out / "run.json").read_text()).get("argv", ["-m", "lowrank_lab.diagnose"])[2:]
    report(out, args, diag, angles, args.task, argv)
    return out


def _save(fig, path: Path) -> None:
    """A figure written whole or not at all (an interrupted report leaves the old one)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def _figures(out: Path, diag: pd.DataFrame, angles: pd.DataFrame, compared) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    diag.boxplot(column="alignment", by="method", ax=ax, rot=30)
    ax.set_title("share of the first update in the top-r subspaces of the full-FT gradient")
    ax.set_ylabel("alignment (per matrix)")
    fig.suptitle("")
    fig.tight_layout()
    _save(fig, out / "alignment.png")
    if len(angles):
        mean = angles.groupby(["method_a", "method_b"])["mean_cos2"].mean()
        ms = sorted(set(angles["method_a"]) | set(angles["method_b"]))
        M = pd.DataFrame(1.0, index=ms, columns=ms)
        for (a, b), v in mean.items():
            M.loc[a, b] = M.loc[b, a] = v
        fig, ax = plt.subplots(figsize=(5, 4))
        im = ax.imshow(M.values, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(ms)), ms, rotation=45, ha="right")
        ax.set_yticks(range(len(ms)), ms)
        for i in range(len(ms)):
            for j in range(len(ms)):
                ax.text(j, i, f"{M.values[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
        fig.colorbar(im, ax=ax, label="mean cos² of principal angles (A's row spaces)")
        fig.tight_layout()
        _save(fig, out / "angles.png")
    if compared is not None and len(compared[0]):
        joined, _ = compared
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.scatter(joined["alignment"], joined["loss_auc"])
        for m, r in joined.iterrows():
            ax.annotate(m, (r["alignment"], r["loss_auc"]), fontsize=7)
        ax.set_xlabel("step-0 alignment (mean over matrices)")
        ax.set_ylabel("training loss AUC in the study (lower = falls faster)")
        fig.tight_layout()
        _save(fig, out / "alignment_vs_convergence.png")


def _summary(out, args, diag, per_method, angles, compared, study, argv, to_markdown) -> None:
    lines = [
        f"# Step-0 diagnostics: {args.task}, rank {args.rank}, {args.optimizer} first step, seed {args.seed}",
        "",
        f"Command: `python -m lowrank_lab.diagnose {' '.join(argv)}`",
        "",
        "alignment = ‖U_rᵀ ΔW V_r‖_F / ‖ΔW‖_F with U_r, V_r the top-r singular vectors of the full "
        "fine-tuning gradient at the pre-trained weights and ΔW the change of the effective weight after "
        "one step; mean over the matrices.",
        "",
        to_markdown(per_method.reset_index()),
        "",
    ]
    if len(angles):
        mean = angles.groupby(["method_a", "method_b"])["mean_cos2"].mean().reset_index()
        lines += ["## Initial subspaces (mean cos² of principal angles between A's row spaces)", ""]
        lines += [to_markdown(mean), ""]
    lines += ["## Does step-0 alignment predict faster convergence?", ""]
    if compared is None:
        lines += [f"No study to compare with ({study}/runs.csv not found).", ""]
    else:
        joined, stat = compared
        lines += [f"Study: `{study}` (mean loss AUC over finished seeds; lower = loss falls faster).", ""]
        lines += [
            to_markdown(joined.reset_index()[["method", "family", "alignment", "loss_auc", "seeds"]]),
            "",
        ]
        if "rho" in stat:
            verdict = (
                "higher alignment goes with faster convergence"
                if stat["rho"] < 0 and stat["p"] < 0.05
                else "no significant monotone relation at the 5% level"
            )
            lines += [
                f"Spearman ρ(alignment, loss AUC) = {stat['rho']:.3f}, p = {stat['p']:.3g}, n = {stat['n']} "
                f"methods: {verdict}. Caveat: the study's methods also differ in learning rate (core-only "
                "methods train at 10x) and trainable parameters.",
                "",
            ]
            if "family_rho" in stat:
                lines += [
                    f"Within the `lora` family alone (factors train at one learning rate): Spearman ρ = "
                    f"{stat['family_rho']:.3f}, p = {stat['family_p']:.3g}, n = {stat['family_n']}. "
                    "Methods that change the output at init (NLoRA's variants; `output_change`) start from a "
                    "higher loss whatever their alignment.",
                    "",
                ]
        else:
            lines += [f"Only {stat['n']} methods in common: too few for a rank correlation.", ""]
    atomic_write_text(out / "summary.md", "\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass

    def body() -> int:
        out = summary_only(args, argv_list) if args.summary_only else run(args, argv_list)
        print(
            f"wrote {out}/summary.md"
            if args.summary_only
            else f"wrote {out}/diagnostics.csv, angles.csv, summary.md"
        )
        return 0

    # the one error path of every command: "python -m lowrank_lab.diagnose: error: ...", exit 2
    return guarded_main(
        "python -m lowrank_lab.diagnose", body, interrupted="nothing written beyond what is in --out"
    )


if __name__ == "__main__":
    sys.exit(main())
