"""``python -m lowrank_lab.finetune``'s library side: its options as one frozen config, and :func:`run`.

:class:`FinetuneConfig` follows Hugging Face PEFT's ``LoraConfig`` (each option a field with its help,
checks in ``__post_init__``) with the reason for each default beside it, as scikit-learn's docstrings
give one; :mod:`lowrank_lab.utils.options` generates the command's parser from it. The options that
define one run (rank, steps, batch size, warm-up, eval interval, explode factor, device, ...) take their
defaults from :class:`~lowrank_lab.training.config.RunConfig`, whose module docstring gives their
sources (LoRA's GLUE setting, PiSSA/NLoRA's scripts, Hugging Face Trainer); :meth:`FinetuneConfig.run_config`
turns the config into the study's shared :class:`RunConfig`. A study's own defaults (the checkpoint
interval, the selection seed) are :data:`~lowrank_lab.training.config.CHECKPOINT_SECONDS` and
:data:`~lowrank_lab.training.config.SELECTION_SEED`.

:func:`run` is torchtune's recipe shape: the command line (:mod:`lowrank_lab.finetune`) only turns argv
into a config; :func:`run` picks the one thing the config asks for (a study's status, replaying runs for
their merged weights, measuring forgetting, rebuilding the summary, or training the study) and composes
it from :mod:`lowrank_lab.training`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowrank_lab.adapters import ADAPTERS
from lowrank_lab.utils import options
from lowrank_lab.utils.cli import MAX_SEED, csv_list, nonnegative_float, nonnegative_int, positive
from lowrank_lab.utils.options import option

from .config import (
    CHECKPOINT_SECONDS,
    DEFAULT_HEAD_LR,
    HEAD_ONLY,
    SELECTION_SEED,
    RunConfig,
    check_run_options,
)
from .forgetting import measure_forgetting
from .loop import CALIBRATION_SAMPLES, Interrupted
from .selection import parse_grid
from .study import rebuild_merged, run_study, summarize_existing
from .tasks import DATA_DIR_ENV, TASKS, HubDataset, TaskSpec, default_data_dir, get_task

#: The methods a study trains without --methods: issue 7's five (random, SVD and core-only inits
#: beside full fine-tuning).
DEFAULT_METHODS = ("lora", "pissa", "nlora", "inttune", "full")
#: The data-driven inits that --calibration-samples feeds, read from the adapter registry.
CALIBRATED = ", ".join(name for name, am in ADAPTERS.items() if am.needs_calibration)


def _names(text: str) -> tuple[str, ...]:
    return tuple(csv_list(text))


def seed_list(text: str) -> list[int]:
    """``--seeds``'s text: distinct integers in analyze's seed range (0 .. 2**63-1) (a list, as argparse
    gives it; the config holds it as a tuple)."""
    try:
        values = [int(t) for t in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds takes comma-separated integers, e.g. 0,1,2 (got {text!r})"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("--seeds is empty")
    outside = [s for s in values if not 0 <= s <= MAX_SEED]
    if outside:  # 2**64 failed in torch after runs.csv was written; -1 trained "head-r8-seed-1"
        raise argparse.ArgumentTypeError(
            f"every seed must be in 0 .. 2**63-1 ({MAX_SEED}), as analyze's --seed; got {outside[0]}"
        )
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"--seeds repeats a seed: {text!r}")
    return values


def _key_value(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--adapter-option takes KEY=VALUE, e.g. n_iter=2 (got {text!r})")
    return text


def adapter_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` as the adapter init takes it: an int, a float, true/false, none, else the text."""
    k, v = _key_value(text).split("=", 1)
    for cast in (int, float):
        try:
            return k.strip(), cast(v)
        except ValueError:
            pass
    low = v.strip().lower()
    if low in ("true", "false"):
        return k.strip(), low == "true"
    if low == "none":
        return k.strip(), None
    return k.strip(), v.strip()


def _check_methods(methods: tuple[str, ...]) -> None:
    from lowrank_lab.adapters import get_adapter

    if not methods:
        raise ValueError("--methods is empty; e.g. --methods lora,full")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods repeats a method: {','.join(methods)}")
    for m in methods:
        if m != HEAD_ONLY:
            get_adapter(m)  # raises UnknownAdapterError (a ValueError) listing the valid names


@dataclass(frozen=True)
class FinetuneConfig:
    """The options of ``python -m lowrank_lab.finetune``; each default is written here only, and those
    of one run are read from :class:`~lowrank_lab.training.config.RunConfig`."""

    task: str = option(
        help="task to train on, e.g. --task sst2", choices=sorted(TASKS),
        why="no default: each task has its own data, head and metric",
    )  # fmt: skip
    model: str | None = option(
        None, help="model name for lowrank_lab.weights, e.g. --model minilm",
        shown="the task's: minilm for GLUE, stories260K for gsm8k",
        why="the model each task's papers scale down to",
    )  # fmt: skip
    methods: tuple[str, ...] = option(
        DEFAULT_METHODS, help="comma-separated adapter methods, e.g. --methods lora,full", type=_names,
        metavar="METHODS",
        why="issue 7's five: random, SVD-based and core-only inits beside full fine-tuning",
    )  # fmt: skip
    rank: int = option(RunConfig.rank, help="adapter rank r", type=positive(int), why="LoRA's GLUE setting")
    alpha: float | None = option(
        None, help="scaling numerator, s = alpha / r, e.g. --alpha 16", type=float, shown="alpha = r",
        why="s = 1, as PiSSA and NLoRA",
    )  # fmt: skip
    targets: str | None = option(
        None, help="target modules: canonical names, roles (q, k, v, o, qkv, gate, up, down, gate_up) or "
        "module-name suffixes, e.g. --targets query,value or --targets q,v",
        shown="all linear maps of every block", why="the papers' adapters cover every linear map",
    )  # fmt: skip
    steps: int = option(
        RunConfig.steps, help="optimizer steps per run", type=positive(int), group="budget",
        why="issue 7's CPU budget of about 4 minutes a run",
    )  # fmt: skip
    epochs: float | None = option(
        None, help="passes over the training split instead of --steps (steps = ceil(epochs x examples / "
        "batch); the validation split is not part of it), e.g. --epochs 3", type=positive(float),
        group="budget", shown="--steps", why="a step budget is the same for every task",
    )  # fmt: skip
    patience: int | None = option(
        None, help="early stopping: stop a run once this many evaluations in a row (every --eval-every "
        "steps, on the validation split) failed to beat its best by more than --min-delta, and keep the "
        "best evaluation's weights; --steps/--epochs is then the maximum budget, e.g. --patience 3",
        type=positive(int), shown="off, every step runs",
        why="Hugging Face Trainer's EarlyStoppingCallback, Prechelt 1998, is opt-in",
    )  # fmt: skip
    min_delta: float = option(
        RunConfig.min_delta, help="early stopping: the smallest gain in the task metric that counts as an "
        "improvement, e.g. --min-delta 0.002", type=nonnegative_float, why="any gain counts",
    )  # fmt: skip
    pooling: str | None = option(
        None, help="sentence vector the classification head reads, e.g. --pooling cls",
        choices=["mean", "cls", "max", "pooler", "native"],
        shown="the checkpoint's sentence-transformers pooling when it has 1_Pooling/config.json (mean for "
        "minilm), else native: the architecture's own transformers head, BERT's pooler",
        why="the sentence vector the checkpoint was trained to give",
    )  # fmt: skip
    eval_mode: str = option(
        RunConfig.eval_mode, flag="--eval", choices=["loss", "generate"],
        help="what a run is judged on: loss = the task's metric (GSM8K: teacher-forced answer loss); "
        "generate = GSM8K only, greedy generation after training scored by exact match of the final "
        "number after '####' (the papers' metric; slow on big models)",
        why="the task's metric, cheap on a CPU",
    )  # fmt: skip
    dtype: str = option(
        RunConfig.dtype, choices=["float32", "bfloat16"],
        help="precision of the frozen base: float32, or bfloat16, which keeps the trained parameters in "
        "float32 and runs forward passes under bf16 autocast (PEFT's autocast_adapter_dtype, Hugging Face "
        "Trainer's bf16): half the memory of a 7B base on a GPU, e.g. --dtype bfloat16",
        why="bit-reproducible on the CPU",
    )  # fmt: skip
    gradient_checkpointing: bool = option(
        False, help="recompute each block's activations in the backward pass instead of storing them "
        "(Hugging Face's gradient checkpointing): less memory for long sequences, ~30% more compute",
        why="small models fit without it",
    )  # fmt: skip
    eval_set: str = option(
        RunConfig.eval_set, choices=["dev", "dev+test"],
        help="the held-out examples runs are judged on after training: dev (GLUE's dev set), or dev+test "
        "where the task has labelled test files (SST-2: 872 + 1,821 sentences, a narrower interval on the "
        "same runs)", why="GLUE's dev set, as the papers report",
    )  # fmt: skip
    val_samples: int | None = option(
        None, help="training examples held out as the validation split that curves and --lr-grid read "
        "(the same split for every run); 0: none, and the dev set is scored during training as before",
        type=nonnegative_int, shown="10% of the training set, 100..1000",
        why="enough to rank rates, little taken from training",
    )  # fmt: skip
    lr_grid: tuple[str, ...] | None = option(
        None, action="append", nargs="?", const="default", metavar="GROUP=R1,R2,...",
        help="select each method's learning rate on the validation split first: alone, 5 rates from 0.1x "
        "to 10x each family's published rate (head rate first, with the head-only control); or rates per "
        "group (lora, core, full, head, or a method name), repeatable, e.g. --lr-grid --lr-grid "
        "full=1e-5,3e-5,1e-4", shown="off", why="the published rates apply",
    )  # fmt: skip
    select_only: bool = option(
        False, help="with --lr-grid: run the selection stage only (selection.csv, figures/lr_selection.png), "
        "no seeds; a later call with the same grid and --resume skips those runs and trains the seeds",
        why="a study usually selects and then trains",
    )  # fmt: skip
    selection_seed: tuple[int, ...] = option(
        (SELECTION_SEED,), flag="--selection-seeds", aliases=("--selection-seed",), type=seed_list,
        help="comma-separated seeds of the --lr-grid selection runs; with several, each rate runs on every "
        "one and is scored by their mean validation metric, so one lucky seed does not choose the rate, "
        "e.g. --selection-seeds 100,101", why="outside the verdict seeds 0-9",
    )  # fmt: skip
    seeds: tuple[int, ...] = option(
        (RunConfig.seed,), help="comma-separated seeds, e.g. --seeds 0,1,2", type=seed_list,
        why="one run per method, a quick look; verdicts need several",
    )  # fmt: skip
    batch_size: int = option(
        RunConfig.batch_size, help="examples per step", type=positive(int), why="LoRA's GLUE batch size"
    )
    max_length: int | None = option(
        None, help="tokens per example, e.g. --max-length 128", type=positive(int),
        shown="64 for GLUE, 512 for gsm8k", why="each task's own truncation (TaskSpec.default_max_length)",
    )  # fmt: skip
    eval_every: int = option(
        RunConfig.eval_every, help="evaluate every N steps, plus step 0 and the last step (0: only those "
        "two)", type=nonnegative_int,
        why="a pass over the 872 SST-2 dev examples costs as much CPU as ~35 training steps",
    )  # fmt: skip
    eval_samples: int | None = option(
        None, help="held-out examples scored: 0 = the whole split, N = a fixed random subset, the same for "
        "every run, e.g. --eval-samples 256", type=nonnegative_int,
        shown="all of the GLUE dev set, 256 GSM8K test problems",
        why="scoring all 1,319 GSM8K test problems at every evaluation costs too much CPU",
    )  # fmt: skip
    lr: float | None = option(
        None, help="learning rate for every method, e.g. --lr 3e-4", type=positive(float),
        shown="per method family, see below", why="each family's published rate",
    )  # fmt: skip
    head_lr: float | None = option(
        None, help="learning rate of the new task head, the same for every method, e.g. --head-lr 1e-3",
        type=positive(float), shown=f"{DEFAULT_HEAD_LR:g}",
        why="LoRA's GLUE rate, so that the head's speed is not charged to the method",
    )  # fmt: skip
    warmup_ratio: float = option(
        RunConfig.warmup_ratio, help="fraction of steps of linear warm-up", type=float,
        why="LoRA's GLUE schedule",
    )  # fmt: skip
    weight_decay: float = option(
        RunConfig.weight_decay, help="AdamW weight decay", type=float, why="PiSSA's and NLoRA's scripts"
    )
    max_grad_norm: float = option(
        RunConfig.max_grad_norm, help="gradient-norm clip", type=positive(float),
        why="Hugging Face Trainer's max_grad_norm",
    )  # fmt: skip
    explode_factor: float = option(
        RunConfig.explode_factor, help="stop a run when its loss exceeds this × its first loss; NaN/Inf "
        "always stops", type=positive(float), why="stops a diverged run early, not a noisy one",
    )  # fmt: skip
    loss_threshold: float | None = option(
        None, help="loss level for 'steps to threshold'", type=float, shown="LoRA's mean final loss",
        why="the baseline's end point",
    )  # fmt: skip
    adapter_option: tuple[str, ...] = option(
        (), action="append", type=_key_value, metavar="KEY=VALUE",
        help="option passed to the adapter init, repeatable, e.g. --adapter-option n_iter=2",
        shown="none", why="each init's published settings",
    )  # fmt: skip
    data_dir: str | None = option(
        None, help="folder holding glue/ and gsm8k/, e.g. --data-dir ../shared/data", group="source",
        shown=f"${DATA_DIR_ENV} or ../shared/data beside the repository",
        why="where README's Install puts the real task data",
    )  # fmt: skip
    dataset: str | None = option(
        None, nargs="?", const="", metavar="NAME[:CONFIG]", group="source",
        help="read the task from the Hugging Face Hub with `datasets` instead (online only; pip install "
        "datasets): alone, the task's own dataset (nyu-mll/glue:<task>, openai/gsm8k:main); or a name, "
        "e.g. --dataset nyu-mll/glue:rte", shown="off, local files", why="offline by default",
    )  # fmt: skip
    scaling: str = option(
        "lora", choices=["lora", "rslora"],
        help="adapter scaling s: lora = alpha/r, rslora = alpha/sqrt(r) (Kalajdzievski 2023; LoRA-One's "
        "recipe), e.g. --scaling rslora", why="the LoRA paper's scale",
    )  # fmt: skip
    dora: bool = option(
        False, help="weight-decomposed adapters (DoRA, arXiv 2402.09353) on top of each method's init: a "
        "trainable magnitude per output row; not applied to full and head", why="the papers' inits alone",
    )  # fmt: skip
    calibration_samples: int | None = option(
        None, type=positive(int), metavar="N",
        help=f"training examples (the run's first N, never dev data) that data-driven inits ({CALIBRATED}) "
        f"calibrate on, in batches of {CALIBRATION_SAMPLES}, e.g. --calibration-samples 256 for CorDA",
        shown=str(CALIBRATION_SAMPLES), why="LoRA-SB's ~50",
    )  # fmt: skip
    out: str | None = option(
        None, help="study directory", shown="reports/finetune/<task>", why="the committed studies' place"
    )
    resume: bool = option(
        False, help="skip runs already finished in --out with the same settings, and continue an "
        "interrupted run from its last checkpoint. Processes can share one --out (e.g. the same command "
        "once per core): each trains the runs no other process holds, then waits for the rest",
        why="a fresh study starts its tables afresh", resume=False,
    )  # fmt: skip
    checkpoint_every: int = option(
        CHECKPOINT_SECONDS, type=nonnegative_int, metavar="SECONDS", resume=False,
        help="save a run's trainable weights, optimizer and RNG state this often (0: only on "
        "Ctrl-C/SIGTERM), so --resume continues it with the same loss curve instead of restarting",
        why="under 1% of a run: saving full fine-tuning's 260 MB takes about a second",
    )  # fmt: skip
    device: str = option(
        RunConfig.device, help="torch device: cpu, cuda, cuda:1, or auto (cuda when available)",
        why="deterministic",
    )  # fmt: skip
    no_save_merged: bool = option(
        False, help="do not write runs/<run>/merged/ (saves ~90 MB per MiniLM run)",
        why="intruders need the merged weights",
    )  # fmt: skip
    rebuild_merged: str | None = option(
        None, nargs="?", const="", metavar="RUN[,RUN...]",
        help="replay finished runs of --out whose merged/ weights are missing (all of them, or the runs "
        "named, e.g. lora-r8-seed1) from their run.json configs, with the recorded thread count unless "
        "--threads, and save merged/ again; a replay whose loss curve or evals differ from the record in "
        "any bit is discarded and reported (exit 1). For intruders of an old study",
        shown="off", why="a study saves merged/ as it trains",
    )  # fmt: skip
    replace_different: bool = option(
        False, help="with --rebuild-merged: a replay that differs from its record (made on another CPU "
        "type) becomes the run's record instead of being discarded (run.json keeps the old numbers under "
        "'replaces'; runs.csv and summary.md are rebuilt), so record and weights stay one run",
        why="a record is not overwritten unasked",
    )  # fmt: skip
    forgetting: str | None = option(
        None, nargs="?", const="stsb", choices=["stsb"],
        help="measure forgetting of the finished runs in --out that have merged/ weights: the drop of the "
        "STS-B dev Spearman correlation of the encoder's mean-pooled cosine similarities (the sentence "
        "encoder's own skill), into forgetting.csv; needs the STS-B data in --data-dir",
        shown="off", why="a study trains; forgetting is measured after",
    )  # fmt: skip
    summary_only: bool = option(
        False, help="only rebuild summary.md, curves.csv and figures from the runs already in --out",
        why="a study trains",
    )  # fmt: skip
    status: bool = option(
        False, help="list every selection and seed run in --out and where it stands (finished, diverged, "
        "failed, training by which process, interrupted at which step, with the minutes of budget left at "
        "the pace of the finished runs), then exit; reads files only, so "
        "it is safe beside running processes (as a DataFrame: lowrank_lab.training.study.study_status(out))",
        why="a study trains",
    )  # fmt: skip
    threads: int | None = option(
        None, type=positive(int), resume=False,
        help="torch intra-op threads. Loss curves are bit-identical for the same seed, thread count and CPU "
        "type; on a busy shared machine --threads 1 can be faster. Example: --threads 1",
        shown="torch's choice, one per core", why="torch's default",
    )  # fmt: skip
    no_progress: bool = option(
        False, help="no tqdm bars", why="they hide themselves off a terminal", resume=False
    )

    def __post_init__(self) -> None:
        _check_methods(self.methods)
        check_run_options(self)

    def extra(self) -> dict[str, Any]:
        """The adapter options of a run (``RunConfig.extra``, passed to inject): --adapter-option, and
        --scaling/--dora/--calibration-samples only when not the default, so the configs of earlier
        runs still match on --resume."""
        extra: dict[str, Any] = dict(adapter_option(text) for text in self.adapter_option)
        if self.scaling != "lora":
            extra["scaling_rule"] = self.scaling
        if self.dora:
            extra["dora"] = True
        if self.calibration_samples is not None:
            extra["calibration_samples"] = self.calibration_samples
        return extra

    def run_config(self, task: str, model: str, device: str) -> RunConfig:
        """The settings every run of the study shares (the first method's; each run replaces
        ``method``, ``seed`` and, after selection, the rates), for the canonical ``task``, the
        resolved ``model`` and ``device``."""
        shared = ("rank", "alpha", "targets", "steps", "batch_size", "max_length", "lr", "head_lr",
                  "warmup_ratio", "weight_decay", "max_grad_norm", "eval_every", "eval_samples",
                  "explode_factor", "pooling", "val_samples", "epochs", "eval_mode", "patience",
                  "min_delta", "eval_set", "dtype", "gradient_checkpointing")  # fmt: skip
        return RunConfig(
            task=task, method=self.methods[0], model=model, device=device,
            save_merged=not self.no_save_merged, extra=self.extra(),
            **{name: getattr(self, name) for name in shared},
        )  # fmt: skip


PROG = "python -m lowrank_lab.finetune"


def output_dir(config: Any) -> str:
    """``--out``, or ``reports/finetune/<task>`` under the task's canonical name."""
    return config.out or f"reports/finetune/{get_task(config.task).name}"


def data_source(config: FinetuneConfig, spec: TaskSpec) -> Path | str | HubDataset:
    """--dataset (the task's Hub dataset when given alone), else --data-dir or the shared data."""
    if config.dataset is None:
        return config.data_dir or default_data_dir()
    return HubDataset.parse(config.dataset) if config.dataset else HubDataset.default_for(spec)


def resolve_device(text: str) -> str:
    """--device as torch names it: ``auto`` is cuda when available, else cpu."""
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device {text!r} is not a torch device; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text!r}: CUDA is not available on this machine; use --device cpu")
    return str(dev)


def how_to_resume(config: Any, exc: KeyboardInterrupt) -> str:
    """Where an interrupted command stopped (a run's own message, when a run was under way) and the
    command that goes on from there; ``config`` may be the parsed namespace (same names)."""
    where = str(exc) if isinstance(exc, Interrupted) else "between training steps"
    try:
        out = output_dir(config)
    except ValueError:  # an unknown task: nothing was written
        out = config.out or "reports/finetune/<task>"
    again = "the same command" if config.rebuild_merged is not None else "the same command with --resume"
    return f"{where}. Finished runs are in {out}/runs; rerun {again} to go on"


def run(config: FinetuneConfig, argv: Sequence[str] | None = None) -> int:
    """Do what ``config`` asks and return the command's exit status (0; 1 when a run failed).
    ``argv`` is the command recorded in each run.json (default: the flags that make ``config``).

    Raises ValueError for options that exclude each other or a bad device, and OSError for missing
    task data or an unwritable ``--out``."""
    argv = ["-m", "lowrank_lab.finetune", *(options.to_argv(config) if argv is None else argv)]
    spec = get_task(config.task)
    out = output_dir(config)
    if config.status:
        return print_status(out)
    if config.summary_only and config.rebuild_merged is not None:
        raise ValueError("--summary-only and --rebuild-merged exclude each other; give one")
    if config.replace_different and config.rebuild_merged is None:
        raise ValueError("--replace-different only applies to --rebuild-merged")
    if config.rebuild_merged is not None:
        return _rebuild(config, spec, out, argv)
    if config.forgetting is not None:
        path = measure_forgetting(out, spec, data_dir=data_source(config, spec))
        summarize_existing(out, [], spec, threshold_override=config.loss_threshold)
        print(f"wrote {path}")
        return 0
    if config.summary_only:
        methods = list(config.methods) if config.methods != DEFAULT_METHODS else []
        path = summarize_existing(out, methods, spec, threshold_override=config.loss_threshold)
        print(f"wrote {path}")
        return 0
    return _study(config, spec, out, argv)


def print_status(out: str) -> int:
    """``--status``: the study's runs as a table, then the count of each state."""
    from lowrank_lab.utils.tables import to_markdown

    from .study import study_status

    if not Path(out).is_dir():
        raise FileNotFoundError(f"--out {out}: no such study folder")
    table = study_status(out)
    if table.empty:
        print(f"{out}: no runs yet (no select/ or runs/ folders)")
        return 0
    print(to_markdown(table.astype(object).where(table.notna(), "–")).rstrip("\n"))
    counts = table["state"].str.replace(r" \(.*\)$", "", regex=True).value_counts()
    spent = table["cpu_hours"].sum()
    left = table["minutes_left"].dropna()
    print(
        "\n" + ", ".join(f"{n} {state}" for state, n in counts.items()) + f" ({len(table)} runs in {out}; "
        f"the recorded ones took {spent:.1f} CPU-hours)"
    )
    if len(left):  # one thread a run, as the study scripts run them
        print(f"the {len(left)} run(s) in progress have at most {left.sum() / 60:.1f} CPU-hours of budget "
              f"left at the pace of the finished runs (longest {left.max():.0f} min; early stopping can end "
              "them sooner)")  # fmt: skip
    return 0


def _rebuild(config: FinetuneConfig, spec: TaskSpec, out: str, argv: list[str]) -> int:
    """``--rebuild-merged``: replay the runs, report each outcome; 1 when one failed."""
    from lowrank_lab.utils.cli import csv_list

    res = rebuild_merged(
        out,
        spec,
        data_dir=data_source(config, spec),
        runs=csv_list(config.rebuild_merged or ""),
        replace_different=config.replace_different,
        threads=config.threads,
        progress=False if config.no_progress else None,
        argv=argv,
        checkpoint_seconds=config.checkpoint_every,
    )
    print(
        f"merged/ rebuilt for {len(res['rebuilt']) + len(res['replaced'])} runs: "
        f"{len(res['rebuilt'])} replays identical to their record, {len(res['replaced'])} "
        f"replaced their record, {len(res['failed'])} failed"
        + (f"; summary: {res['summary']}" if res["summary"] else "")
    )
    for msg in res["failed"].values():
        print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 1 if res["failed"] else 0


def _study(config: FinetuneConfig, spec: TaskSpec, out: str, argv: list[str]) -> int:
    """Train the study (or, with --select-only, its rate selection) and say how it went."""
    base = config.run_config(spec.name, config.model or spec.default_model, resolve_device(config.device))
    if config.eval_mode == "generate" and spec.kind != "causal-lm":
        raise ValueError(f"--eval generate scores a causal LM's answers; task {spec.name} is {spec.kind}")
    grid = parse_grid(config.lr_grid)
    if grid is not None and config.lr is not None:
        raise ValueError("--lr sets one rate for every method, --lr-grid selects one per method: give one")
    if config.select_only and grid is None:
        raise ValueError("--select-only runs the learning-rate selection: add --lr-grid")
    result = run_study(
        base,
        list(config.methods),
        [] if config.select_only else list(config.seeds),
        data_dir=data_source(config, spec),
        out=out,
        resume=config.resume,
        argv=argv,
        loss_threshold_override=config.loss_threshold,
        progress=False if config.no_progress else None,
        checkpoint_seconds=config.checkpoint_every,
        lr_grid=grid,
        selection_seed=list(config.selection_seed),
    )
    if config.select_only:
        picks = [(m, c) for m, c in result["selection"].items() if m in config.methods]
        chosen = ", ".join(f"{m} {c.lr:g}" if c.lr else f"{m} none ({c.reason})" for m, c in picks)
        print(f"selection only: {chosen}; {Path(out) / 'selection.csv'}")
        return 1 if result["failed"] else 0
    recs = result["records"]
    n_div = sum(r.status == "diverged" for r in recs)
    print(f"{len(recs)} runs ({n_div} diverged, {result['failed']} failed); summary: {result['summary']}")
    return 1 if result["failed"] else 0
