"""A study: every (seed, method) run of one task, records on disk, then summary and figures.

Layout of ``--out``::

    runs/<method>-r<rank>-seed<seed>/run.json   one record per run (config, curves, timings, memory)
    runs/<method>-r<rank>-seed<seed>/merged/    merged fine-tuned model (save_pretrained, safetensors)
    runs.csv                                   one row per run, appended and flushed as runs finish
    curves.csv                                 long format: method, seed, step, series, value
    summary.md                                 tables, claim verdicts, figures
    figures/loss_curves.png, eval_curves.png, metric_vs_params.png

Runs go seed-major (all methods of seed 0, then seed 1, ...) so an interrupted study already
compares every method. A run's record is written atomically when it ends; with ``resume=True``
finished or diverged runs with the same config are skipped (a different config is an error, so a
resumed study never mixes settings), failed or missing runs are (re)done, and a run that was
interrupted continues from its ``runs/<run>/checkpoint.pt`` (see :mod:`.checkpoint`).

Several processes may work on one study at once (one per core, say, with the same command and
``resume=True``; without it each process starts the study's tables afresh): a
process locks a run's folder while it trains it (:class:`~lowrank_lab.utils.lock.OutputLock`),
passes over runs another process holds, and at the end waits for those and takes their records,
or trains one itself when its holder stopped without a record. No run is trained twice into the
same files, and the tables they share (selection.csv, runs.csv, summary.md) keep every run's rows.

:func:`run_study` composes the parts, one module per concern: :mod:`.study_data` (the tokenised
splits), :mod:`.scheduling` (order, resume checks, locks, claiming runs), :mod:`.one_run` (the
envelope of one run, which selection runs and replays share), :mod:`.outputs` (runs.csv, baselines,
curves, figures, summary.md), :mod:`.status` (``--status``) and :mod:`.replay` (``--rebuild-merged``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lowrank_lab.utils.tables import RowWriter, ensure_writable_dir

from .claims import BASELINES, read_baselines
from .config import CHECKPOINT_SECONDS, HEAD_ONLY, SELECTION_SEED, RunConfig
from .models import NATIVE, load_model, resolve_model
from .one_run import RunContext
from .outputs import (
    RUN_COLUMNS,
    RUN_KEY,
    baseline_line,
    intruder_counts,
    rewrite_runs_csv,
    run_dir_for,
    summarize_existing,
    write_baselines,
    write_study_outputs,
)
from .replay import loss_difference, rebuild_merged
from .scheduling import LOCK_POLL_SECONDS, Runner, StudyResumeError, busy_run
from .selection import select_rates
from .status import STATUS_COLUMNS, run_cpu_hours, study_status
from .study_data import StudyData
from .tasks import TaskSpec, get_task

# What other modules, tests and notebooks import from here: the study's parts live in the modules
# of each concern (scheduling, one_run, outputs, status, replay, study_data) since issue 29.
__all__ = [
    "LOCK_POLL_SECONDS", "RUN_COLUMNS", "RUN_KEY", "STATUS_COLUMNS", "StudyData", "StudyResumeError",
    "baseline_line", "intruder_counts", "loss_difference", "rebuild_merged", "rewrite_runs_csv",
    "run_cpu_hours", "run_dir_for", "run_study", "study_status", "summarize_existing", "write_baselines",
    "write_study_outputs",
]  # fmt: skip


def run_study(
    base: RunConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    data_dir: str | Path,
    out: str | Path,
    resume: bool = False,
    argv: Sequence[str] | None = None,
    loss_threshold_override: float | None = None,
    progress: bool | None = None,
    model_factory: Callable[[], Any] | None = None,
    tokenizer: Any = None,
    log: Callable[[str], None] | None = None,
    notes: Sequence[str] = (),
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    lr_grid: dict[str, list[float]] | None = None,
    selection_seed: int | Sequence[int] = SELECTION_SEED,
) -> dict[str, Any]:
    """Run ``methods`` × ``seeds`` on ``base.task`` and write the study files (see module docstring).

    Parameters
    ----------
    base : RunConfig
        Settings shared by all runs (its ``method``/``seed`` are replaced per run).
    methods, seeds : sequences
        Adapter registry names (plus ``full`` and the ``head`` control) and integer seeds.
    data_dir, out : paths
        Where the task's files are, and the study directory.
    resume : bool
        Skip runs whose record exists with the same config; continue interrupted ones from their
        checkpoint. The summary then covers every run under ``out/runs``, including those of earlier
        calls with other methods or seeds.
    progress : bool or None
        tqdm bars; None shows them only on a terminal.
    model_factory, tokenizer : optional
        Replace :func:`~.models.load_model` / :func:`~.models.load_tokenizer` (tests use tiny models).
    log : callable
        Where messages go (default: ``tqdm.write`` to stderr).
    checkpoint_seconds : float
        Wall seconds between a run's checkpoints (0: only when interrupted); the default,
        :data:`~.config.CHECKPOINT_SECONDS`, says why.
    lr_grid : dict, optional
        Select each method's learning rate first (:mod:`.selection`): ``{}`` for the default grids,
        or rates per family/method/``head``. Selection runs go to ``out/select/`` on
        ``selection_seed``, are scored on the validation split only, and are summarised in
        ``selection.csv`` and ``figures/lr_selection.png``; the study's seeds then run at the chosen
        rates. Needs a validation split (``base.val_samples`` other than 0). Selection runs save no
        merged weights. A ``base.head_lr`` is taken as already chosen: only the methods' rates are
        selected then.
    selection_seed : int or sequence of int
        Seed(s) of the selection runs (default :data:`~.config.SELECTION_SEED`: none of the study's
        usual seeds 0-9). Several seeds score each rate by
        their mean validation metric (:func:`~.selection.pooled`; issue 30, point 11).

    Returns
    -------
    dict with ``records`` (list), ``summary`` (path; None when there is no run yet: selection only),
    ``failed`` (count of failed runs) and, with
    ``lr_grid``, ``selection`` (the :class:`~.selection.Choice` per method).
    """
    spec: TaskSpec = get_task(base.task)
    say = log or _to_stderr
    disable = None if progress is None else (not progress)
    if lr_grid is not None and base.val_samples == 0:
        raise ValueError("--lr-grid selects on the validation split: do not set --val-samples 0")
    base, data, out = _set_up(base, spec, data_dir, out, tokenizer, model_factory is None, resume)
    factory = model_factory or (lambda: load_model(data.model, spec))
    runner = Runner(RunContext(spec, data, factory, argv, disable, checkpoint_seconds, say), resume)
    result: dict[str, Any] = {}
    if lr_grid is not None:
        result["selection"], configs = _selected(runner, base, methods, seeds, lr_grid, selection_seed, out)
    else:
        configs = [replace(base, method=m, seed=int(s)) for s in seeds for m in methods]
    if configs:
        writer = RowWriter(out / "runs.csv", RUN_COLUMNS, RUN_KEY, resume=resume)
        try:
            records, failed = runner.run(configs, lambda c: run_dir_for(out, c), f"{spec.name} runs", writer)
        finally:
            writer.close()
    else:  # selection only (no seeds): runs.csv, and the runs of an earlier call, stay as they are
        records, failed = [], 0
    if not configs and not any((out / "runs").glob("*/run.json")):
        summary = None  # selection only (no seeds), and no run of an earlier call to summarise
    elif resume or lr_grid is not None:
        # A study extended with --resume (more methods or seeds than an earlier call) holds runs this
        # call did not list: the summary covers every run in the folder, as --summary-only does.
        summary = summarize_existing(out, [], spec, threshold_override=loss_threshold_override, notes=notes)
    else:
        summary = write_study_outputs(
            out, records, methods, spec, argv=argv, threshold_override=loss_threshold_override, notes=notes
        )
    return {"records": records, "summary": summary, "failed": failed, **result}


def _to_stderr(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def _set_up(
    base: RunConfig,
    spec: TaskSpec,
    data_dir: Any,
    out: str | Path,
    tokenizer: Any,
    own_model: bool,
    resume: bool,
) -> tuple[RunConfig, StudyData, Path]:
    """Before any run: the tokenised data, with the model resolved once (``data.model``: every run
    loads it), the pooling and step count the records will say (bad data fails before ``out`` is made),
    ``out`` itself (refused when another process trains there and this is no ``resume``) and its
    baselines.json."""
    data = StudyData.load(spec, base, data_dir, tokenizer)
    if own_model and data.model is None:  # the caller's tokenizer, the study's own model
        data.model = resolve_model(base.model, spec, base.pooling)
    if base.pooling is None and spec.kind != "causal-lm" and own_model:
        # record the pooling the runs use, not "auto": a record must say what it ran
        base = replace(base, pooling=data.model.pooling or NATIVE)
    out = ensure_writable_dir(out)
    if not resume and (busy := busy_run(out)) is not None:
        # a fresh study starts runs.csv afresh: it would drop the rows of the process at work there
        raise StudyResumeError(
            f"--out {out}: {busy[1]} is training {busy[0].name} there now; add --resume to share the "
            "study with it (each process takes the runs the other does not hold), or pass another --out"
        )
    stale = spec.kind == "causal-lm" and "bigram_validation" not in read_baselines(out)
    if not (out / BASELINES).is_file() or stale:  # (made before the validation bigram existed)
        write_baselines(out, data)
    if base.epochs is not None:
        base = replace(base, steps=max(1, math.ceil(base.epochs * len(data.train) / base.batch_size)))
    return base, data, out


def _selected(
    runner: Runner,
    base: RunConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    lr_grid: dict[str, list[float]],
    selection_seed: int | Sequence[int],
    out: Path,
) -> tuple[dict[str, Any], list[RunConfig]]:
    """The learning-rate selection (:func:`~.selection.select_rates`), then the study's runs at the
    chosen rates: (the choice per method, the configs); a method without a rate gets no runs."""
    choices, head_lr = select_rates(runner, base, methods, lr_grid, selection_seed, out)
    for m in methods:
        if choices[m].lr is None:
            runner.ctx.say(f"NO RATE for {m}: {choices[m].reason}; it gets no final runs and no verdict")
    usable = [m for m in methods if choices[m].lr is not None]
    configs = [
        replace(base, method=m, seed=int(s), lr=choices[m].lr, head_lr=head_lr)
        if m != HEAD_ONLY
        else replace(base, method=m, seed=int(s), head_lr=head_lr)
        for s in seeds
        for m in usable
    ]
    return choices, configs
