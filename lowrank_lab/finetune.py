"""``python -m lowrank_lab.finetune``: train adapter methods on a real task and record everything.

Every method of ``--methods`` is trained with every seed of ``--seeds`` on the same data order and
schedule; each run writes a JSON record and its merged fine-tuned model, and the study ends with
``summary.md`` (metric mean ± sd over seeds, convergence, paper-claim verdicts) and figures. The
components live in :mod:`lowrank_lab.training`; this module only parses options.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch

from lowrank_lab.adapters import ADAPTERS
from lowrank_lab.training.config import (
    DEFAULT_HEAD_LR,
    DEFAULT_LR,
    HEAD_ONLY,
    LR_SOURCES,
    RunConfig,
)
from lowrank_lab.training.forgetting import measure_forgetting
from lowrank_lab.training.loop import Interrupted
from lowrank_lab.training.selection import parse_grid
from lowrank_lab.training.study import rebuild_merged, run_study, summarize_existing
from lowrank_lab.training.tasks import DATA_DIR_ENV, TASKS, HubDataset, TaskSpec, default_data_dir, get_task
from lowrank_lab.utils.cli import (
    csv_list,
    guarded_main,
    nonnegative_float,
    nonnegative_int,
    positive,
)

DEFAULT_METHODS = "lora,pissa,nlora,inttune,full"
# the registry names the methods once; the help lists them from it
_METHOD_LIST = "\n  ".join(textwrap.wrap(", ".join(ADAPTERS), 90, break_on_hyphens=False))

EPILOG = f"""
examples:
  # issue 15's protocol: each method's rate selected on a validation split carved from the training
  # data (five rates, 0.1x-10x the published one; the head's first), then 5 paired seeds judged on dev
  python -m lowrank_lab.finetune --task sst2 --methods lora,full,head,pissa --steps 600 --eval-every 120 \
      --lr-grid --seeds 0,1,2,3,4 --out reports/study/sst2 --resume
  # every run of the study: the encoder's STS-B skill lost (forgetting.csv), for the intruders claim
  python -m lowrank_lab.finetune --task sst2 --out reports/study/sst2 --forgetting
  # issue 7's study: SST-2 with MiniLM, five methods, three seeds
  python -m lowrank_lab.finetune --task sst2 --model minilm --methods lora,pissa,nlora,inttune,full \\
      --rank 8 --steps 300 --seeds 0,1,2 --data-dir ../shared/data --out reports/finetune/sst2
  # GSM8K loss curves with stories260K (causal LM on "Question: ... Answer: ...")
  python -m lowrank_lab.finetune --task gsm8k --methods lora,pissa,nlora,inttune,full --steps 300 \\
      --out reports/finetune/gsm8k
  # a quick look: 20 steps, 200 eval examples, resume whatever is already done
  python -m lowrank_lab.finetune --task rte --methods lora,full --steps 20 --eval-samples 200 --resume
  # online: GLUE RTE from the Hugging Face Hub (nyu-mll/glue, config rte) instead of local files
  python -m lowrank_lab.finetune --task rte --methods lora --dataset --out /tmp/rte-hub
  # merged/ weights gone (not committed, or --no-save-merged)? replay the runs, checked bit for bit
  python -m lowrank_lab.finetune --task rte --out reports/finetune/rte --rebuild-merged lora-r8-seed1
  # rebuild summary.md and the figures from the runs already in --out
  python -m lowrank_lab.finetune --task sst2 --out reports/finetune/sst2 --summary-only
  # where a long study stands: each run finished, training (which process), interrupted (at which step)
  python -m lowrank_lab.finetune --task stsb --out reports/study/stsb --status

tasks: {", ".join(f"{k} ({v.metric})" for k, v in TASKS.items())}
methods: every name of lowrank_lab.adapters.ADAPTERS ({_METHOD_LIST}) plus '{HEAD_ONLY}'
  (no adapter: only the task head trains — the control that shows what the head alone reaches).
default learning rates (--lr overrides): {", ".join(f"{f}/{k}: {v:g}" for (f, k), v in DEFAULT_LR.items())};
  the GLUE task head: {DEFAULT_HEAD_LR:g} for every method (--head-lr)
  sources — {"; ".join(f"{k}: {v}" for k, v in LR_SOURCES.items())}
default learning rates apply without --lr-grid; with it each method's rate is selected (selection.csv).
outputs in --out: runs/<run>/run.json (config, per-step loss, validation evals, dev at the end, wall
  time, peak memory, trainable params, init time), runs/<run>/merged/ (merged model, safetensors, for
  `python -m lowrank_lab.intruders`), runs.csv, curves.csv (long format), baselines.json, summary.md,
  figures/*.png; with --lr-grid also select/<run>-lr<rate>/ and selection.csv.
one claims table over study folders: python -m lowrank_lab.claims --studies DIR [DIR ...] --out reports
"""

PROG = "python -m lowrank_lab.finetune"


def _data_source(args: argparse.Namespace, spec: TaskSpec) -> Path | str | HubDataset:
    """--dataset (the task's Hub dataset when given alone), else --data-dir or the shared data."""
    if args.dataset is None:
        return args.data_dir or default_data_dir()
    return HubDataset.parse(args.dataset) if args.dataset else HubDataset.default_for(spec)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(t) for t in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds takes comma-separated integers, e.g. 0,1,2 (got {text!r})"
        ) from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds is empty")
    from lowrank_lab.utils.cli import MAX_SEED  # the range analyze's and intruders' --seed check

    outside = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if outside:  # 2**64 failed in torch after runs.csv was written; -1 trained "head-r8-seed-1"
        raise argparse.ArgumentTypeError(
            f"every seed must be in 0 .. 2**63-1 ({MAX_SEED}), as analyze's --seed; got {outside[0]}"
        )
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds repeats a seed: {text!r}")
    return seeds


def _option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--adapter-option takes KEY=VALUE, e.g. n_iter=2 (got {text!r})")
    k, v = text.split("=", 1)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Fine-tune a model with several adapter methods and seeds on one task; record loss "
        "curves, eval metric, time, memory, trainable parameters and merged weights; summarise the "
        "papers' claims.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, choices=sorted(TASKS), help="task to train on, e.g. --task sst2")
    p.add_argument(
        "--model",
        default=None,
        help="model name for lowrank_lab.weights (default: the task's — minilm for GLUE, "
        "stories260K for gsm8k), e.g. --model minilm",
    )
    p.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help=f"comma-separated adapter methods (default {DEFAULT_METHODS}), e.g. --methods lora,full",
    )
    p.add_argument(
        "--rank", type=positive(int), default=8, help="adapter rank r (default 8, LoRA's GLUE setting)"
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="scaling numerator, s = alpha / r (default: alpha = r, as PiSSA/NLoRA), e.g. --alpha 16",
    )
    p.add_argument(
        "--targets",
        default=None,
        help="target modules: canonical names, roles (q, k, v, o, qkv, gate, up, down, gate_up) or "
        "module-name suffixes (default: all linear maps of every block), e.g. --targets query,value or "
        "--targets q,v",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps", type=positive(int), default=300, help="optimizer steps per run (default 300)"
    )
    budget.add_argument(
        "--epochs",
        type=positive(float),
        default=None,
        help="passes over the training split instead of --steps (steps = ceil(epochs x examples / batch); "
        "the validation split is not part of it), e.g. --epochs 3",
    )
    p.add_argument(
        "--patience",
        type=positive(int),
        default=None,
        help="early stopping: stop a run once this many evaluations in a row (every --eval-every steps, "
        "on the validation split) failed to beat its best by more than --min-delta, and keep the best "
        "evaluation's weights; --steps/--epochs is then the maximum budget (default: off, every step "
        "runs; Hugging Face Trainer's EarlyStoppingCallback, Prechelt 1998), e.g. --patience 3",
    )
    p.add_argument(
        "--min-delta",
        type=nonnegative_float,
        default=0.0,
        help="early stopping: the smallest gain in the task metric that counts as an improvement "
        "(default 0: any gain), e.g. --min-delta 0.002",
    )
    p.add_argument(
        "--pooling",
        default=None,
        choices=["mean", "cls", "max", "pooler", "native"],
        help="sentence vector the classification head reads (default: the checkpoint's "
        "sentence-transformers pooling when it has 1_Pooling/config.json — mean for minilm — else "
        "native: the architecture's own transformers head, BERT's pooler), e.g. --pooling cls",
    )
    p.add_argument(
        "--eval",
        dest="eval_mode",
        default="loss",
        choices=["loss", "generate"],
        help="what a run is judged on: loss = the task's metric (default; GSM8K: teacher-forced answer "
        "loss); generate = GSM8K only, greedy generation after training scored by exact match of the "
        "final number after '####' (the papers' metric; slow on big models)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="precision of the frozen base: float32 (default; bit-reproducible on the CPU) or bfloat16, "
        "which keeps the trained parameters in float32 and runs forward passes under bf16 autocast "
        "(PEFT's autocast_adapter_dtype, Hugging Face Trainer's bf16): half the memory of a 7B base on "
        "a GPU, e.g. --dtype bfloat16",
    )
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute each block's activations in the backward pass instead of storing them "
        "(Hugging Face's gradient checkpointing): less memory for long sequences, ~30%% more compute",
    )
    p.add_argument(
        "--eval-set",
        default="dev",
        choices=["dev", "dev+test"],
        help="the held-out examples runs are judged on after training: dev (default, GLUE's dev set), or "
        "dev+test where the task has labelled test files (SST-2: 872 + 1,821 sentences, a narrower "
        "interval on the same runs)",
    )
    p.add_argument(
        "--val-samples",
        type=nonnegative_int,
        default=None,
        help="training examples held out as the validation split that curves and --lr-grid read "
        "(default 10%% of the training set, 100..1000; the same split for every run); 0: none, and "
        "the dev set is scored during training as before",
    )
    p.add_argument(
        "--lr-grid",
        nargs="?",
        const="default",
        action="append",
        default=None,
        metavar="GROUP=R1,R2,...",
        help="select each method's learning rate on the validation split first: alone, 5 rates from "
        "0.1x to 10x each family's published rate (head rate first, with the head-only control); or "
        "rates per group (lora, core, full, head, or a method name), repeatable, e.g. "
        "--lr-grid --lr-grid full=1e-5,3e-5,1e-4",
    )
    p.add_argument(
        "--select-only",
        action="store_true",
        help="with --lr-grid: run the selection stage only (selection.csv, figures/lr_selection.png), "
        "no seeds; a later call with the same grid and --resume skips those runs and trains the seeds",
    )
    p.add_argument(
        "--selection-seeds",
        "--selection-seed",
        dest="selection_seed",
        type=_seeds,
        default=[100],
        help="comma-separated seeds of the --lr-grid selection runs (default 100, outside the verdict "
        "seeds); with several, each rate runs on every one and is scored by their mean validation "
        "metric, so one lucky seed does not choose the rate, e.g. --selection-seeds 100,101",
    )
    p.add_argument(
        "--seeds", type=_seeds, default=[0], help="comma-separated seeds (default 0), e.g. --seeds 0,1,2"
    )
    p.add_argument("--batch-size", type=positive(int), default=16, help="examples per step (default 16)")
    p.add_argument(
        "--max-length",
        type=positive(int),
        default=None,
        help="tokens per example (default: 64 for GLUE, 512 for gsm8k), e.g. --max-length 128",
    )
    p.add_argument(
        "--eval-every",
        type=nonnegative_int,
        default=100,
        help="evaluate every N steps, plus step 0 and the last step (default 100: a pass over the 872 "
        "SST-2 dev examples costs as much CPU as ~35 training steps; 0: only those two)",
    )
    p.add_argument(
        "--eval-samples",
        type=nonnegative_int,
        default=None,
        help="held-out examples scored: 0 = the whole split, N = a fixed random subset, the same for "
        "every run (default: all of the GLUE dev set, 256 GSM8K test problems), e.g. --eval-samples 256",
    )
    p.add_argument(
        "--lr",
        type=positive(float),
        default=None,
        help="learning rate for every method (default: per method family, see below), e.g. --lr 3e-4",
    )
    p.add_argument(
        "--head-lr",
        type=positive(float),
        default=None,
        help="learning rate of the new task head, the same for every method (default 4e-4, LoRA's "
        "GLUE rate) so that the head's speed is not charged to the method, e.g. --head-lr 1e-3",
    )
    p.add_argument(
        "--warmup-ratio",
        type=float,
        default=0.06,
        help="fraction of steps of linear warm-up (default 0.06, LoRA's GLUE schedule)",
    )
    p.add_argument(
        "--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0, PiSSA/NLoRA)"
    )
    p.add_argument(
        "--max-grad-norm", type=positive(float), default=1.0, help="gradient-norm clip (default 1.0)"
    )
    p.add_argument(
        "--explode-factor",
        type=positive(float),
        default=10.0,
        help="stop a run when its loss exceeds this × its first loss (default 10); NaN/Inf always stops",
    )
    p.add_argument(
        "--loss-threshold",
        type=float,
        default=None,
        help="loss level for 'steps to threshold' (default: LoRA's mean final loss)",
    )
    p.add_argument(
        "--adapter-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option passed to the adapter init, repeatable, e.g. --adapter-option n_iter=2",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--data-dir",
        default=None,
        help=f"folder holding glue/ and gsm8k/ (default: ${DATA_DIR_ENV} or ../shared/data beside "
        "the repository), e.g. --data-dir ../shared/data",
    )
    source.add_argument(
        "--dataset",
        nargs="?",
        const="",
        default=None,
        metavar="NAME[:CONFIG]",
        help="read the task from the Hugging Face Hub with `datasets` instead (online only; "
        "pip install datasets): alone, the task's own dataset (nyu-mll/glue:<task>, openai/gsm8k:main); "
        "or a name, e.g. --dataset nyu-mll/glue:rte",
    )
    p.add_argument(
        "--scaling",
        choices=["lora", "rslora"],
        default="lora",
        help="adapter scaling s: lora = alpha/r (default), rslora = alpha/sqrt(r) (Kalajdzievski 2023; "
        "LoRA-One's recipe), e.g. --scaling rslora",
    )
    p.add_argument(
        "--dora",
        action="store_true",
        help="weight-decomposed adapters (DoRA, arXiv 2402.09353) on top of each method's init: a trainable "
        "magnitude per output row; not applied to full and head",
    )
    p.add_argument(
        "--calibration-samples",
        type=positive(int),
        default=None,
        metavar="N",
        help="training examples (the run's first N, never dev data) that data-driven inits ("
        + ", ".join(n for n, am in ADAPTERS.items() if am.needs_calibration)
        + ") calibrate on, in batches of 48 (default 48, LoRA-SB's ~50), e.g. --calibration-samples 256 "
        "for CorDA",
    )
    p.add_argument("--out", default=None, help="study directory (default reports/finetune/<task>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip runs already finished in --out with the same settings, and continue an interrupted "
        "run from its last checkpoint. Processes can share one --out (e.g. the same command once per "
        "core): each trains the runs no other process holds, then waits for the rest",
    )
    p.add_argument(
        "--checkpoint-every",
        type=nonnegative_int,
        default=120,
        metavar="SECONDS",
        help="save a run's trainable weights, optimizer and RNG state this often (default 120 s; 0: only "
        "on Ctrl-C/SIGTERM), so --resume continues it with the same loss curve instead of restarting",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="torch device: cpu (default; deterministic), cuda, cuda:1, or auto (cuda when available)",
    )
    p.add_argument(
        "--no-save-merged",
        action="store_true",
        help="do not write runs/<run>/merged/ (saves ~90 MB per MiniLM run; intruders need it)",
    )
    p.add_argument(
        "--rebuild-merged",
        nargs="?",
        const="",
        default=None,
        metavar="RUN[,RUN...]",
        help="replay finished runs of --out whose merged/ weights are missing (all of them, or the "
        "runs named, e.g. lora-r8-seed1) from their run.json configs, with the recorded thread count "
        "unless --threads, and save merged/ again; a replay whose loss curve or evals differ from the "
        "record in any bit is discarded and reported (exit 1). For intruders of an old study",
    )
    p.add_argument(
        "--replace-different",
        action="store_true",
        help="with --rebuild-merged: a replay that differs from its record (made on another CPU type) "
        "becomes the run's record instead of being discarded (run.json keeps the old numbers under "
        "'replaces'; runs.csv and summary.md are rebuilt), so record and weights stay one run",
    )
    p.add_argument(
        "--forgetting",
        nargs="?",
        const="stsb",
        default=None,
        choices=["stsb"],
        help="measure forgetting of the finished runs in --out that have merged/ weights: the drop of the "
        "STS-B dev Spearman correlation of the encoder's mean-pooled cosine similarities (the "
        "sentence encoder's own skill), into forgetting.csv; needs the STS-B data in --data-dir",
    )
    p.add_argument(
        "--summary-only",
        action="store_true",
        help="only rebuild summary.md, curves.csv and figures from the runs already in --out",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="list every selection and seed run in --out and where it stands (finished, diverged, "
        "failed, training by which process, interrupted at which step), then exit; reads files only, "
        "so it is safe beside running processes (as a DataFrame: "
        "lowrank_lab.training.study.study_status(out))",
    )
    p.add_argument(
        "--threads",
        type=positive(int),
        default=None,
        help="torch intra-op threads (default: torch's choice, one per core). Loss curves are "
        "bit-identical for the same seed, thread count and CPU type; on a busy shared machine --threads 1 "
        "can be faster. Example: --threads 1",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no tqdm bars (they hide themselves off a terminal)"
    )
    return p


def _extra(args: argparse.Namespace) -> dict[str, object]:
    # --scaling/--dora/--calibration-samples ride in RunConfig.extra (passed to inject), only when
    # not the default, so the configs of earlier runs still match on --resume.
    extra = dict(args.adapter_option)
    if args.scaling != "lora":
        extra["scaling_rule"] = args.scaling
    if args.dora:
        extra["dora"] = True
    if args.calibration_samples is not None:
        extra["calibration_samples"] = args.calibration_samples
    return extra


def _resolve_device(text: str) -> str:
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device {text!r} is not a torch device; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text!r}: CUDA is not available on this machine; use --device cpu")
    return str(dev)


def _check_methods(methods: list[str]) -> None:
    from lowrank_lab.adapters import get_adapter

    if not methods:
        raise ValueError("--methods is empty; e.g. --methods lora,full")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods repeats a method: {','.join(methods)}")
    for m in methods:
        if m != HEAD_ONLY:
            get_adapter(m)  # raises UnknownAdapterError (a ValueError) listing the valid names


def _quiet_transformers() -> None:
    # transformers' own bars and reports ("Loading weights", "Writing model shards", the expected
    # "classifier MISSING" note for a new head) would interleave with the study's progress bars.
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # transformers is a dependency; keep the CLI usable without its logging API
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_transformers()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    return guarded_main(
        PROG, lambda: _run(args, argv_list), interrupted=lambda exc: _how_to_resume(args, exc)
    )


def _output_dir(args: argparse.Namespace) -> str:
    """``--out``, or ``reports/finetune/<task>`` under the task's canonical name."""
    return args.out or f"reports/finetune/{get_task(args.task).name}"


def _how_to_resume(args: argparse.Namespace, exc: KeyboardInterrupt) -> str:
    """Where an interrupted command stopped (a run's own message, when a run was under way) and
    the command that goes on from there."""
    where = str(exc) if isinstance(exc, Interrupted) else "between training steps"
    try:
        out = _output_dir(args)
    except ValueError:  # an unknown task: nothing was written
        out = args.out or "reports/finetune/<task>"
    again = "the same command" if args.rebuild_merged is not None else "the same command with --resume"
    return f"{where}. Finished runs are in {out}/runs; rerun {again} to go on"


def _print_status(out: str) -> int:
    """``--status``: the study's runs as a table, then the count of each state."""
    from lowrank_lab.training.study import study_status
    from lowrank_lab.utils.tables import to_markdown

    if not Path(out).is_dir():
        raise FileNotFoundError(f"--out {out}: no such study folder")
    table = study_status(out)
    if table.empty:
        print(f"{out}: no runs yet (no select/ or runs/ folders)")
        return 0
    print(to_markdown(table.astype(object).where(table.notna(), "–")).rstrip("\n"))
    counts = table["state"].str.replace(r" \(.*\)$", "", regex=True).value_counts()
    spent = table["cpu_hours"].sum()
    print(
        "\n" + ", ".join(f"{n} {state}" for state, n in counts.items()) + f" ({len(table)} runs in {out}; "
        f"the recorded ones took {spent:.1f} CPU-hours)"
    )
    return 0


def _run(args: argparse.Namespace, argv_list: list[str]) -> int:
    """The command itself; :func:`main` runs it under the shared error and interrupt handling."""
    spec = get_task(args.task)
    methods = csv_list(args.methods)
    _check_methods(methods)
    out = _output_dir(args)
    if args.status:
        return _print_status(out)
    if args.summary_only and args.rebuild_merged is not None:
        raise ValueError("--summary-only and --rebuild-merged exclude each other; give one")
    if args.replace_different and args.rebuild_merged is None:
        raise ValueError("--replace-different only applies to --rebuild-merged")
    if args.rebuild_merged is not None:
        res = rebuild_merged(
            out,
            spec,
            data_dir=_data_source(args, spec),
            runs=csv_list(args.rebuild_merged),
            replace_different=args.replace_different,
            threads=args.threads,
            progress=False if args.no_progress else None,
            argv=["-m", "lowrank_lab.finetune", *argv_list],
            checkpoint_seconds=args.checkpoint_every,
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
    if args.forgetting is not None:
        path = measure_forgetting(out, spec, data_dir=_data_source(args, spec))
        summarize_existing(out, [], spec, threshold_override=args.loss_threshold)
        print(f"wrote {path}")
        return 0
    if args.summary_only:
        path = summarize_existing(
            out,
            methods if args.methods != DEFAULT_METHODS else [],
            spec,
            threshold_override=args.loss_threshold,
        )
        print(f"wrote {path}")
        return 0
    base = RunConfig(
        task=spec.name,
        method=methods[0],
        model=args.model or spec.default_model,
        rank=args.rank,
        alpha=args.alpha,
        targets=args.targets,
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lr=args.lr,
        head_lr=args.head_lr,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        eval_every=args.eval_every,
        eval_samples=args.eval_samples,
        explode_factor=args.explode_factor,
        device=_resolve_device(args.device),
        save_merged=not args.no_save_merged,
        extra=_extra(args),
        pooling=args.pooling,
        val_samples=args.val_samples,
        epochs=args.epochs,
        eval_mode=args.eval_mode,
        patience=args.patience,
        min_delta=args.min_delta,
        eval_set=args.eval_set,
        dtype=args.dtype,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    if args.eval_mode == "generate" and spec.kind != "causal-lm":
        raise ValueError(f"--eval generate scores a causal LM's answers; task {spec.name} is {spec.kind}")
    grid = parse_grid(args.lr_grid)
    if grid is not None and args.lr is not None:
        raise ValueError(
            "--lr sets one rate for every method, --lr-grid selects one per method: give one"
        )
    if args.select_only and grid is None:
        raise ValueError("--select-only runs the learning-rate selection: add --lr-grid")
    result = run_study(
        base,
        methods,
        [] if args.select_only else args.seeds,
        data_dir=_data_source(args, spec),
        out=out,
        resume=args.resume,
        argv=["-m", "lowrank_lab.finetune", *argv_list],
        loss_threshold_override=args.loss_threshold,
        progress=False if args.no_progress else None,
        checkpoint_seconds=args.checkpoint_every,
        lr_grid=grid,
        selection_seed=args.selection_seed,
    )
    recs = result["records"]
    if args.select_only:
        picks = [(m, c) for m, c in result["selection"].items() if m in methods]
        chosen = ", ".join(f"{m} {c.lr:g}" if c.lr else f"{m} none ({c.reason})" for m, c in picks)
        print(f"selection only: {chosen}; {Path(out) / 'selection.csv'}")
        return 1 if result["failed"] else 0
    n_div = sum(r.status == "diverged" for r in recs)
    print(f"{len(recs)} runs ({n_div} diverged, {result['failed']} failed); summary: {result['summary']}")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
