"""``finetune``'s library entry point: :func:`run` does what a :class:`FinetuneConfig` asks.

torchtune's recipe shape: the command line (:mod:`lowrank_lab.finetune`) only turns argv into a
:class:`~lowrank_lab.training.finetune_config.FinetuneConfig`; :func:`run` picks the one thing the
config asks for (a study's status, replaying runs for their merged weights, measuring forgetting,
rebuilding the summary, or training the study) and composes it from :mod:`lowrank_lab.training`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowrank_lab.utils import options

from .finetune_config import DEFAULT_METHODS, FinetuneConfig
from .forgetting import measure_forgetting
from .loop import Interrupted
from .selection import parse_grid
from .study import rebuild_merged, run_study, summarize_existing
from .tasks import HubDataset, TaskSpec, default_data_dir, get_task

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
    print(
        "\n" + ", ".join(f"{n} {state}" for state, n in counts.items()) + f" ({len(table)} runs in {out}; "
        f"the recorded ones took {spent:.1f} CPU-hours)"
    )
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
