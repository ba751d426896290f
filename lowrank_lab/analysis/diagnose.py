"""Step-0 diagnostics of adapter initialisations on a task (``diagnose``'s library side).

For every method of :attr:`DiagnoseConfig.methods` the model is built and injected exactly as
``lowrank_lab.finetune`` does for that seed (same task head, same calibration examples: the run's
first training examples), then, before any training step, per target matrix: the alignment of the
first update ΔW with the top-r subspaces of the full fine-tuning gradient, its norm, the gradient's
norm, how far the init moved the weight, the output change at init, and the principal angles between
the methods' initial subspaces. With a fine-tuning study (default ``reports/finetune/<task>`` when it
exists) it also asks whether step-0 alignment predicts which method's loss falls faster (Spearman
rank correlation of mean alignment against the study's loss AUC). The numerics are
:mod:`lowrank_lab.analysis.step0`; :func:`run` composes them (torchtune's recipe shape: set up, loop
over the methods, write).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lowrank_lab.adapters import ADAPTERS
from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.loop import CALIBRATION_SAMPLES
from lowrank_lab.utils import options
from lowrank_lab.utils.cli import csv_list, positive
from lowrank_lab.utils.files import atomic_path, atomic_write_text, read_text, write_frame
from lowrank_lab.utils.options import option

PROG = "python -m lowrank_lab.diagnose"
DEFAULT_METHODS = ("lora", "pissa", "milora", "eva", "corda-ipm", "lora-ga", "lora-one", "nlora", "full")
#: Methods whose initial subspaces are compared pairwise (issue 17) — those of --methods that are among
#: them: every init whose A is computed from W or the task data (a factorization or calibration, and A
#: not drawn at random: :attr:`~lowrank_lab.adapters.AdapterMethod.computed_input_subspace`), read
#: from the adapter registry (issue 29, point 5).
ANGLE_METHODS = tuple(name for name, am in ADAPTERS.items() if am.computed_input_subspace)
COLUMNS = [
    "method", "tensor", "rows", "cols", "rank", "lr", "optimizer", "alignment", "cos_neg_grad",
    "update_norm", "grad_norm", "weight_change", "output_change", "init_seconds",
]  # fmt: skip
ANGLE_COLUMNS = ["method_a", "method_b", "tensor", "mean_cos2", "min_cos"]


def _names(text: str) -> tuple[str, ...]:
    return tuple(csv_list(text))


def _positive_or_none(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and not value > 0:  # also refuses NaN
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value!r}")


@dataclass(frozen=True)
class DiagnoseConfig:
    """The options of ``python -m lowrank_lab.diagnose``; each default is written here only, and
    those finetune shares are read from :class:`~lowrank_lab.training.config.RunConfig`."""

    task: str = option(
        help="task of lowrank_lab.training (e.g. sst2, rte, gsm8k)",
        why="no default: each task has its own data and head",
    )
    out: str = option(
        help="output directory, e.g. reports/diagnose/sst2",
        why="no default: a run never writes over another by accident",
    )
    model: str | None = option(
        None, help="model", shown="the task's, minilm for GLUE",
        why="the model the task's fine-tuning study uses",
    )  # fmt: skip
    data_dir: str | None = option(
        None, help="folder holding glue/ and gsm8k/", shown="$LOWRANK_LAB_SHARED_DATA or ../shared/data",
        why="where README's Install puts the real task data",
    )  # fmt: skip
    methods: tuple[str, ...] = option(
        DEFAULT_METHODS, help="comma-separated adapter methods", type=_names, metavar="METHODS",
        why="random, SVD-based and data-driven inits beside full fine-tuning: the committed study's nine",
    )  # fmt: skip
    rank: int = option(
        RunConfig.rank, help="adapter rank r", type=positive(int), why="finetune's rank, LoRA's r = 8"
    )
    alpha: float | None = option(
        None, help="scaling numerator", type=float, shown="alpha = r",
        why="s = 1, as finetune's adapters start",
    )  # fmt: skip
    scaling: str = option(
        "lora", help="s = alpha/r (lora) or alpha/sqrt(r) (rslora)", choices=["lora", "rslora"],
        why="the LoRA paper's scale, finetune's default",
    )  # fmt: skip
    targets: str | None = option(
        None, help="target modules", shown="every linear map of every block",
        why="finetune's default injection",
    )  # fmt: skip
    seed: int = option(
        RunConfig.seed, help="seed of the head, the data order and random inits", type=int,
        why="finetune's first seed, so the batch is its run's first",
    )  # fmt: skip
    batch_size: int = option(
        RunConfig.batch_size, help="examples of the first step's batch", type=positive(int),
        why="finetune's batch size",
    )  # fmt: skip
    max_length: int | None = option(
        None, help="tokens per example", type=positive(int), shown="the task's",
        why="finetune's truncation for the task",
    )  # fmt: skip
    calibration_samples: int | None = option(
        None, help="training examples data-driven inits calibrate on", type=positive(int), metavar="N",
        shown=str(CALIBRATION_SAMPLES), why="finetune's, LoRA-SB's ~50 samples",
    )  # fmt: skip
    optimizer: str = option(
        "adam", help="the first step: adam (AdamW's step 1, -lr·g/(|g|+eps)) or sgd (-lr·g)",
        choices=["adam", "sgd"], why="finetune trains with AdamW",
    )  # fmt: skip
    lr: float | None = option(
        None, help="learning rate", type=positive(float), shown="finetune's per method family",
        why="the step a run of finetune takes",
    )  # fmt: skip
    study: str | None = option(
        None, help="a finetune study directory with runs.csv to compare against ('none' to skip)",
        shown="reports/finetune/<task> when it exists", why="the task's committed study",
    )  # fmt: skip
    summary_only: bool = option(
        False,
        help="measure nothing: rebuild summary.md and the figures from --out's diagnostics.csv and "
        "angles.csv (e.g. against another --study)",
        why="measuring is the costly part",
    )
    threads: int | None = option(
        None, help="torch intra-op threads", type=positive(int), shown="torch's",
        why="torch picks one per core",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("--methods is empty; e.g. --methods lora,pissa")
        if self.scaling not in ("lora", "rslora"):
            raise ValueError(f"--scaling must be lora or rslora, got {self.scaling!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"--optimizer must be adam or sgd, got {self.optimizer!r}")
        _positive_or_none(self, "rank", "batch_size", "max_length", "calibration_samples", "lr", "threads")


@dataclass
class _FirstStep:
    """What every method's measurement shares: the task, its encoder, the run's first batch."""

    spec: Any
    model_name: str
    enc: Any
    order: torch.Tensor
    steps: int
    max_len: int
    first: dict[str, torch.Tensor]
    device: torch.device

    def logits(self, model: torch.nn.Module) -> torch.Tensor:  # on the first batch
        return model(**{k: v for k, v in self.first.items() if k != "target"}).logits

    def loss(self, model: torch.nn.Module) -> torch.Tensor:
        from lowrank_lab.training.loop import task_loss

        return task_loss(self.spec, self.logits(model), self.first["target"])

    def factory(self) -> torch.nn.Module:
        from lowrank_lab.training.models import load_model

        return load_model(self.model_name, self.spec)


def _methods(config: DiagnoseConfig) -> list[str]:
    from lowrank_lab.adapters import get_adapter
    from lowrank_lab.training.config import HEAD_ONLY

    for m in config.methods:
        if m == HEAD_ONLY:
            raise ValueError("--methods: 'head' has no adapter and no first update to diagnose")
        get_adapter(m)
    return list(config.methods)


def _first_step(config: DiagnoseConfig, spec: Any) -> _FirstStep:
    from lowrank_lab.training.batching import Encoder, batch_order
    from lowrank_lab.training.models import load_tokenizer
    from lowrank_lab.training.tasks import default_data_dir, load_examples

    model_name = config.model or spec.default_model
    train = load_examples(spec, config.data_dir or default_data_dir(), "train")
    tok = load_tokenizer(model_name, spec)
    max_len = config.max_length or spec.default_max_length
    enc = Encoder(spec, tok, max_len, train)
    device = torch.device("cpu")
    n_cal = config.calibration_samples or CALIBRATION_SAMPLES
    steps = max(1, math.ceil(n_cal / config.batch_size))
    order = batch_order(len(enc), steps, config.batch_size, config.seed)
    first = {k: v.to(device) for k, v in enc.collate(order[0].tolist()).items()}  # the run's first batch
    return _FirstStep(spec, model_name, enc, order, steps, max_len, first, device)


def _run_config(config: DiagnoseConfig, step: _FirstStep, method: str) -> RunConfig:
    """The finetune run whose first step is measured."""
    extra: dict = {}
    if config.scaling != "lora":
        extra["scaling_rule"] = config.scaling
    if config.calibration_samples is not None:
        extra["calibration_samples"] = config.calibration_samples
    same = ("seed", "rank", "alpha", "targets", "batch_size", "lr")  # diagnose's option is finetune's
    return RunConfig(
        task=step.spec.name,
        method=method,
        model=step.model_name,
        steps=step.steps,
        max_length=step.max_len,
        extra=extra,
        **{name: getattr(config, name) for name in same},
    )


@dataclass
class _Reference:
    """The pre-trained model with the seed's head: its weights, output and full-FT gradient."""

    names: list[str]
    W0: dict[str, torch.Tensor]
    logits: torch.Tensor
    G: dict[str, torch.Tensor]
    subspaces: dict[str, tuple[torch.Tensor, torch.Tensor]]


def _reference(config: DiagnoseConfig, step: _FirstStep) -> _Reference:
    from lowrank_lab.adapters import calibration_gradients, resolve_targets
    from lowrank_lab.analysis import step0

    torch.manual_seed(config.seed)
    base = step.factory().to(step.device).eval()  # diagnostics without dropout: one deterministic gradient
    names = resolve_targets(base, config.targets)
    W0 = {n: base.get_submodule(n).weight.detach().float().clone() for n in names}
    with torch.no_grad():
        ref_logits = step.logits(base).float()
    G = calibration_gradients(base, names, [step.loss], reduce="sum", method="diagnose")
    subspaces_G = {n: step0.top_subspaces(G[n], min(config.rank, *G[n].shape)) for n in names}
    return _Reference(names, W0, ref_logits, G, subspaces_G)


def _measure(
    config: DiagnoseConfig, step: _FirstStep, ref: _Reference, method: str
) -> tuple[list[dict], dict | None]:
    """One method's rows (one per target matrix) and, for :data:`ANGLE_METHODS`, its A subspaces."""
    from lowrank_lab.analysis import step0
    from lowrank_lab.training.loop import calibration_losses, prepare_model

    cfg = _run_config(config, step, method)
    cal = calibration_losses(cfg, step.spec, step.enc, step.order, step.device)
    model, info = prepare_model(cfg, step.spec, step.factory, calibration=cal, device=step.device)
    init_seconds = float(info.get("init_seconds", float("nan")))
    model.eval()  # the init was made as finetune makes it (train mode); now measure without dropout
    with torch.no_grad():
        logits = step.logits(model).float()
    output_change = float((logits - ref.logits).norm() / ref.logits.norm())
    W_init = step0.effective_weights(model, ref.names)
    subspaces = step0.input_subspaces(model) if method in ANGLE_METHODS else None
    lr = cfg.resolved_lr(step.spec.kind)
    dW = step0.first_update(model, ref.names, step.loss, lr=lr, optimizer=config.optimizer)
    rows = []
    for n in ref.names:
        U, V = ref.subspaces[n]
        W0, G = ref.W0[n], ref.G[n]
        rows.append({
            "method": method, "tensor": n, "rows": W0.shape[0], "cols": W0.shape[1], "rank": config.rank,
            "lr": lr, "optimizer": config.optimizer, "alignment": step0.alignment(dW[n], U, V),
            "cos_neg_grad": step0.cosine(dW[n], -G), "update_norm": float(dW[n].norm()),
            "grad_norm": float(G.norm()),
            "weight_change": float((W_init[n].double() - W0.double()).norm() / W0.norm()),
            "output_change": output_change, "init_seconds": init_seconds,
        })  # fmt: skip
    mean = pd.Series([r["alignment"] for r in rows]).mean()
    print(f"{method}: mean alignment {mean:.3f}, output change at init {output_change:.3g}", file=sys.stderr)
    return rows, subspaces


def run(config: DiagnoseConfig, out: str | Path | None = None, *, argv: Sequence[str] | None = None) -> Path:
    """Measure every method's first step (or, with ``summary_only``, rebuild the report) into ``out``
    (default ``config.out``); returns the folder. ``argv`` is the command recorded in summary.md and
    run.json (default: the flags that make ``config``, :func:`lowrank_lab.utils.options.to_argv`).

    Raises ValueError for a bad option (an unknown or head-only method, a rank out of range for an
    init) and OSError for missing task data or an unwritable ``out``.
    """
    from lowrank_lab.training.tasks import get_task
    from lowrank_lab.utils.provenance import run_metadata, write_run_json
    from lowrank_lab.utils.tables import ensure_writable_dir

    argv = options.to_argv(config) if argv is None else list(argv)
    if out is not None:
        config = dataclasses.replace(config, out=str(out))
    if config.summary_only:
        return summary_only(config, argv)
    t0 = time.perf_counter()
    spec = get_task(config.task)
    methods = _methods(config)
    out = ensure_writable_dir(config.out)
    step = _first_step(config, spec)
    ref = _reference(config, step)
    rows, subspaces = [], {}
    for method in methods:
        method_rows, method_subspaces = _measure(config, step, ref, method)
        rows += method_rows
        if method_subspaces is not None:
            subspaces[method] = method_subspaces
    diag = pd.DataFrame(rows, columns=COLUMNS)
    write_frame(diag, out / "diagnostics.csv")
    angles = pd.DataFrame(_angle_rows(subspaces), columns=ANGLE_COLUMNS)
    write_frame(angles, out / "angles.csv")
    report(out, config, diag, angles, spec.name, argv)
    meta = run_metadata(["-m", "lowrank_lab.diagnose", *argv], seed=config.seed, device=step.device,
                        extra={"config": options.to_dict(config)})  # fmt: skip
    write_run_json(out / "run.json", meta, time.perf_counter() - t0)
    return out


def report(
    out: Path, config: DiagnoseConfig, diag: pd.DataFrame, angles: pd.DataFrame, task: str, argv
) -> None:
    """summary.md and the figures, from the diagnostics and angle tables."""
    from lowrank_lab.utils.tables import to_markdown

    per_method = diag.groupby("method", sort=False)[
        ["alignment", "cos_neg_grad", "update_norm", "weight_change", "output_change", "init_seconds"]
    ].mean()
    named = config.study or f"reports/finetune/{task}"
    study = None if (config.study or "").lower() == "none" else Path(named)
    compared = _study_table(study, per_method) if study is not None else None
    _figures(out, diag, angles, compared)
    _summary(out, config, diag, per_method, angles, compared, study, argv, to_markdown)


def summary_only(config: DiagnoseConfig, argv: Sequence[str]) -> Path:
    """``--summary-only``: rebuild summary.md and figures from the tables already in ``config.out``."""
    out = Path(config.out)
    if not (out / "diagnostics.csv").is_file():
        raise FileNotFoundError(
            f"--summary-only: {out}/diagnostics.csv not found; run diagnose into --out first"
        )
    diag = pd.read_csv(out / "diagnostics.csv")
    angles = pd.read_csv(out / "angles.csv") if (out / "angles.csv").is_file() else pd.DataFrame()
    if "rank" in diag and len(diag):  # the summary names the setting that measured
        config = dataclasses.replace(
            config, rank=int(diag["rank"].iloc[0]), optimizer=str(diag["optimizer"].iloc[0])
        )
    if (out / "run.json").is_file():  # the summary names the command that measured, not this one
        argv = json.loads(read_text(out / "run.json")).get("argv", ["-m", "lowrank_lab.diagnose"])[2:]
    report(out, config, diag, angles, config.task, argv)
    return out


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


def _summary(out, config, diag, per_method, angles, compared, study, argv, to_markdown) -> None:
    lines = [
        f"# Step-0 diagnostics: {config.task}, rank {config.rank}, {config.optimizer} first step, "
        f"seed {config.seed}",
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
