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
"""

from __future__ import annotations

import gc
import math
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from lowrank_lab.utils.files import atomic_write_text, write_frame
from lowrank_lab.utils.lock import LOCK_NAME, OutputLock, OutputLockedError
from lowrank_lab.utils.provenance import run_metadata, write_run_json
from lowrank_lab.utils.tables import RowWriter, ensure_writable_dir

from . import figures as figs
from .baselines import constant_predictor, ngram_losses
from .batching import Encoder, batch_order, default_validation_size, eval_subset, validation_split
from .checkpoint import CHECKPOINT_META, read_checkpoint_meta, remove_checkpoint
from .claims import BASELINES, intruder_counts_by_run, read_baselines, reference_levels, study_claims
from .config import CHECKPOINT_SECONDS, HEAD_ONLY, SELECTION_SEED, RunConfig
from .loop import train_run
from .models import NATIVE, load_model, load_tokenizer, resolve_pooling
from .record import RunRecord, method_labeller, study_records
from .selection import redraw_selection_figure, select_rates, selection_line
from .summary import (
    curve_split,
    curves_frame,
    final_loss,
    loss_auc,
    loss_threshold,
    method_rows,
    render_summary,
)
from .tasks import TASKS, TaskSpec, get_task, load_examples, load_scored

if TYPE_CHECKING:
    import pandas as pd

RUN_COLUMNS = [
    "task",
    "model",
    "method",
    "rank",
    "seed",
    "status",
    "lr",
    "initial_metric",
    "final_metric",
    "final_train_loss",
    "loss_auc",
    "steps_done",
    "trainable_params",
    "adapter_params",
    "init_seconds",
    "train_seconds",
    "eval_seconds",
    "seconds_per_step",
    "peak_memory_mb",
    "memory_kind",
    "run_dir",
    "message",
]
RUN_KEY = ["method", "rank", "seed"]


class StudyResumeError(ValueError):
    """``--resume`` found a run made with different settings."""


def run_dir_for(out: Path, cfg: RunConfig) -> Path:
    return out / "runs" / cfg.run_name()


def _csv_row(rec: RunRecord, out: Path) -> dict[str, Any]:
    c = rec.config
    return {
        "task": c.task,
        "model": c.model,
        "method": c.method,
        "rank": c.rank,
        "seed": c.seed,
        "status": rec.status,
        "lr": rec.lr,
        "initial_metric": rec.initial_metric,
        "final_metric": rec.final_metric,
        "final_train_loss": final_loss(rec.train_loss) if rec.train_loss else None,
        "loss_auc": loss_auc(rec.train_loss) if rec.train_loss else None,
        "steps_done": rec.steps_done,
        "stop_reason": rec.stop_reason,
        "best_step": rec.best_step,
        "trainable_params": rec.trainable_params,
        "adapter_params": rec.adapter_params,
        "init_seconds": rec.init_seconds,
        "train_seconds": rec.train_seconds,
        "eval_seconds": rec.eval_seconds,
        "seconds_per_step": rec.seconds_per_step,
        "peak_memory_mb": rec.peak_memory_mb,
        "memory_kind": rec.memory_kind,
        "run_dir": str(run_dir_for(out, c).relative_to(out)),
        "message": rec.message,
    }


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
    say = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    disable = None if progress is None else (not progress)
    if lr_grid is not None and base.val_samples == 0:
        raise ValueError("--lr-grid selects on the validation split: do not set --val-samples 0")
    if base.pooling is None and spec.kind != "causal-lm" and model_factory is None:
        # record the pooling the runs use, not "auto": a record must say what it ran
        base = replace(base, pooling=resolve_pooling(base.model, None) or NATIVE)
    data = StudyData.load(spec, base, data_dir, tokenizer)  # bad data fails before --out is made
    out = ensure_writable_dir(out)
    if not resume and (busy := _busy_run(out)) is not None:
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
    factory = model_factory or (lambda: load_model(base.model, spec, base.pooling))
    runner = _Runner(spec, data, factory, argv, disable, resume, checkpoint_seconds, say)

    result: dict[str, Any] = {}
    if lr_grid is not None:
        choices, head_lr = select_rates(runner, base, methods, lr_grid, selection_seed, out)
        result["selection"] = choices
        usable = [m for m in methods if choices[m].lr is not None]
        for m in methods:
            if choices[m].lr is None:
                say(f"NO RATE for {m}: {choices[m].reason}; it gets no final runs and no verdict")
        configs = [
            replace(base, method=m, seed=int(s), lr=choices[m].lr, head_lr=head_lr)
            if m != HEAD_ONLY
            else replace(base, method=m, seed=int(s), head_lr=head_lr)
            for s in seeds
            for m in usable
        ]
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


class StudyData:
    """The tokenised splits of a study: ``train`` (what runs train on), ``val`` (carved from the
    training data by :func:`~.batching.validation_split`; None with ``val_samples=0``) and ``dev``
    (the task's held-out set, scored at the end of each run)."""

    def __init__(self, spec: TaskSpec, train: Encoder, val: Encoder | None, dev: Encoder, n_eval: int):
        self.spec, self.train, self.val, self.dev, self.n_eval = spec, train, val, dev, n_eval

    @classmethod
    def load(cls, spec: TaskSpec, base: RunConfig, data_dir: str | Path, tokenizer: Any = None) -> StudyData:
        train_ex = load_examples(spec, data_dir, "train")
        eval_ex = load_scored(spec, data_dir, base.eval_set)
        tok = tokenizer if tokenizer is not None else load_tokenizer(base.model, spec)
        max_len = base.max_length or spec.default_max_length
        n_val = default_validation_size(len(train_ex)) if base.val_samples is None else base.val_samples
        train_idx, val_idx = validation_split(len(train_ex), n_val)
        train = Encoder(spec, tok, max_len, [train_ex[i] for i in train_idx])
        val = Encoder(spec, tok, max_len, [train_ex[i] for i in val_idx]) if val_idx else None
        n_eval = spec.default_eval_samples if base.eval_samples is None else base.eval_samples
        return cls(spec, train, val, Encoder(spec, tok, max_len, eval_ex), n_eval)

    def baselines(self) -> dict[str, Any]:
        """The reference predictors of :mod:`.baselines` on this study's dev examples."""
        dev_idx = eval_subset(len(self.dev), self.n_eval)
        out: dict[str, Any] = {"task": self.spec.name, "metric": self.spec.metric, "dev_n": len(dev_idx)}
        if self.spec.kind == "causal-lm":
            tok = self.train.tokenizer
            vocab = getattr(tok, "vocab_size", None) or len(tok)
            out.update(ngram_losses(self.train, self.val, self.dev, dev_idx, int(vocab)))
        else:
            out["constant_predictor"] = constant_predictor(self.spec, self.train, self.dev, dev_idx)
        return out

    def encoders(self) -> tuple[Encoder, Encoder, Encoder | None]:
        """(train, scored during training, scored at the end): (train, val, dev), or (train, dev,
        None) when there is no validation split."""
        if self.val is None:
            return self.train, self.dev, None
        return self.train, self.val, self.dev

    def prepare(self, configs: Sequence[RunConfig], disable: bool | None) -> None:
        """Tokenise every example the runs of ``configs`` will see, before the first run: otherwise
        the first method of each seed pays for it inside its step time (GSM8K with llama2.c's BPE:
        ~15 ms per example)."""
        if not configs:
            return
        name = self.spec.name
        wanted = {
            i
            for seed, steps, batch in {(c.seed, c.steps, c.batch_size) for c in configs}
            for i in batch_order(len(self.train), steps, batch, int(seed)).flatten().tolist()
        }
        self.train.prepare(sorted(wanted), desc=f"tokenize {name} train", disable=disable)
        if self.val is not None:
            self.val.prepare(range(len(self.val)), desc=f"tokenize {name} validation", disable=disable)
        dev_idx = eval_subset(len(self.dev), self.n_eval)
        self.dev.prepare(dev_idx, desc=f"tokenize {name} dev", disable=disable)


class _Runner:
    """Runs a list of configs into their run directories: resume checks before any work, one run at
    a time under a progress bar, a failed run recorded and skipped (see :func:`run_study`)."""

    def __init__(
        self,
        spec: TaskSpec,
        data: StudyData,
        factory: Callable[[], Any],
        argv: Sequence[str] | None,
        disable: bool | None,
        resume: bool,
        checkpoint_seconds: float,
        say: Callable[[str], None],
    ) -> None:
        self.spec, self.data, self.factory, self.argv = spec, data, factory, argv
        self.disable, self.resume, self.say = disable, resume, say
        self.checkpoint_seconds = checkpoint_seconds

    def run(
        self,
        configs: Sequence[RunConfig],
        dir_of: Callable[[RunConfig], Path],
        desc: str,
        writer: RowWriter | None = None,
        *,
        score_dev: bool = True,
    ) -> tuple[list[RunRecord], int]:
        """Records of ``configs`` (in order) and the number that failed. ``score_dev=False``
        (selection runs) never evaluates the dev set."""
        say = self.say
        started = time.time()  # a record written after this is another process's work of this call
        done = self._resumable(configs, dir_of) if self.resume else {}
        self.data.prepare([c for c in configs if dir_of(c) not in done], self.disable)
        train_enc, eval_enc, dev_enc = self.data.encoders()
        encoders = (train_enc, eval_enc, dev_enc if score_dev else None)
        by_dir: dict[Path, RunRecord] = {}
        failed = 0
        later: list[RunConfig] = []  # runs another process is training: taken up at the end
        bar = tqdm(total=len(configs), desc=desc, unit="run", disable=self.disable, file=sys.stderr)
        try:
            for cfg in configs:
                rdir = dir_of(cfg)
                bar.set_postfix_str(rdir.name)
                if rdir in done:
                    rec = done[rdir]
                    say(f"skip {rdir.name}: already {rec.status} (--resume)")
                    if writer is not None and not writer.done(_csv_row(rec, rdir.parents[1])):
                        writer.write(_csv_row(rec, rdir.parents[1]))
                    by_dir[rdir] = rec
                    bar.update()
                    continue
                lock = _run_lock(rdir)
                try:
                    lock.acquire()
                except OutputLockedError:
                    say(f"later {rdir.name}: {_holder_text(lock)} is training it")
                    later.append(cfg)
                    continue
                with lock:
                    by_dir[rdir], bad = self._take_or_train(cfg, rdir, started, encoders, writer)
                failed += bad
                bar.update()
            for cfg in later:  # every other run is done: wait for the other process's
                rdir = dir_of(cfg)
                lock = _run_lock(rdir)
                say(f"wait for {rdir.name}: {_holder_text(lock)} is training it")
                with lock.acquire(wait=True, poll=LOCK_POLL_SECONDS):
                    by_dir[rdir], bad = self._take_or_train(cfg, rdir, started, encoders, writer)
                failed += bad
                bar.update()
        finally:
            bar.close()
        return [by_dir[dir_of(c)] for c in configs], failed

    def _take_or_train(
        self,
        cfg: RunConfig,
        rdir: Path,
        started: float,
        encoders: tuple[Encoder, Encoder, Encoder | None],
        writer: RowWriter | None,
    ) -> tuple[RunRecord, int]:
        """With the run's lock held: the record another process finished there while this call ran
        (it wrote that run's runs.csv row), else the run trained here (from its checkpoint, if it
        has one and ``resume``). With ``resume`` any finished record of the same settings counts;
        without it only one written since ``started``, as an older one is what a fresh study
        replaces. (record, 1 if it failed)."""
        rec = RunRecord.read(rdir)
        if rec is not None and rec.status in ("finished", "diverged"):
            fresh = (rdir / "run.json").stat().st_mtime >= started
            try:
                stored = rec.stored_config or rec.config.to_dict()
                _check_same_settings(cfg, self.spec, stored, rec.lr, rec.head_lr, rdir)
            except StudyResumeError:
                if self.resume:  # as much a mismatch as at the start of a --resume
                    raise
                fresh = False  # a fresh study overwrites a run made with other settings
            if self.resume or fresh:
                self.say(f"took {rdir.name}: {rec.status} by another process")
                return rec, 0
        return self._train(cfg, rdir, *encoders, writer)

    def _resumable(
        self, configs: Sequence[RunConfig], dir_of: Callable[[RunConfig], Path]
    ) -> dict[Path, RunRecord]:
        """The finished (or diverged) runs of ``configs`` that --resume keeps, by folder. Every
        stored run and checkpoint is checked against its config first: a mismatch must not surface
        after hours of training."""
        done: dict[Path, RunRecord] = {}
        for cfg in configs:
            rdir = dir_of(cfg)
            rec = RunRecord.read(rdir)
            if rec is None and (rdir / "run.json").is_file():
                raise StudyResumeError(
                    f"--resume: {rdir / 'run.json'} is not a run record this version can read; "
                    "move it away (or rerun without --resume to overwrite it)"
                )
            if rec is not None and rec.status in ("finished", "diverged"):
                stored = rec.stored_config or rec.config.to_dict()
                _check_same_settings(cfg, self.spec, stored, rec.lr, rec.head_lr, rdir)
                done[rdir] = rec
            elif (meta := read_checkpoint_meta(rdir)) is not None:
                _check_same_settings(
                    cfg, self.spec, meta.get("config", {}), meta.get("lr"), meta.get("head_lr"),
                    rdir / CHECKPOINT_META,
                )
        return done

    def _train(
        self,
        cfg: RunConfig,
        rdir: Path,
        train_enc: Encoder,
        eval_enc: Encoder,
        dev_enc: Encoder | None,
        writer: RowWriter | None,
    ) -> tuple[RunRecord, int]:
        """Train one run into ``rdir`` (its lock held) and log its fate: (record, 1 if it failed)."""
        rec = _one_run(
            cfg,
            self.spec,
            train_enc,
            eval_enc,
            self.factory,
            rdir,
            self.argv,
            self.disable,
            self.resume,
            self.checkpoint_seconds,
            self.say,
            dev_enc,
            self.data.val is not None,
        )
        if rec.status == "diverged":
            self.say(f"DIVERGED: {rec.message} — continuing with the other runs")
        elif rec.status == "failed":
            self.say(f"FAILED: {rec.message} — continuing with the other runs")
        if writer is not None:
            writer.write(_csv_row(rec, rdir.parents[1]))
        return rec, int(rec.status == "failed")


#: How often a process waiting for a run another process trains looks whether it is done.
LOCK_POLL_SECONDS = 5.0


def _run_lock(rdir: Path) -> OutputLock:
    """The lock a process holds on a run's folder while it trains (or replays) that run: a second
    process on the same study takes other runs meanwhile (:class:`_Runner`)."""
    rdir.mkdir(parents=True, exist_ok=True)
    return OutputLock(rdir, command="python -m lowrank_lab.finetune", option="run folder")


def _busy_run(out: Path) -> tuple[Path, str] | None:
    """A run folder of the study at ``out`` that another live process is training, with that
    process (None: no such folder)."""
    for rdir in sorted([*out.glob("runs/*/"), *out.glob("select/*/")]):
        if not (rdir / LOCK_NAME).exists():
            continue
        lock = OutputLock(rdir, option="run folder")
        if _held(lock):
            return rdir, _holder_text(lock)
    return None


def _holder_text(lock: OutputLock) -> str:
    h = lock.holder()
    return f"pid {h['pid']} on {h.get('host', '?')}" if "pid" in h else "another process"


def _check_same_settings(
    cfg: RunConfig,
    spec: TaskSpec,
    config: dict[str, Any],
    lr: float | None,
    head_lr: float | None,
    where: Path,
) -> None:
    """StudyResumeError unless a stored run (a run.json or checkpoint.json: its ``config`` and the
    rates it used) has ``cfg``'s settings."""
    diff = cfg.differences(config)
    # Defaults can change between versions: compare the rates the run actually used.
    used = (("lr", lr, cfg.resolved_lr(spec.kind)), ("head_lr", head_lr, cfg.resolved_head_lr()))
    for key, stored, want in used:
        if stored is not None and float(stored) != want:
            diff[f"{key} used"] = (stored, want)
    if diff:
        shown = ", ".join(f"{k}: stored {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise StudyResumeError(
            f"--resume: {where} was made with other settings ({shown}); "
            "use a new --out, or rerun without --resume to overwrite"
        )


def _one_run(
    cfg: RunConfig,
    spec: TaskSpec,
    train_enc: Encoder,
    eval_enc: Encoder,
    factory: Callable[[], Any],
    rdir: Path,
    argv: Sequence[str] | None,
    disable: bool | None,
    resume: bool,
    checkpoint_seconds: float,
    say: Callable[[str], None],
    dev_enc: Encoder | None = None,
    validation: bool | None = None,
) -> RunRecord:
    rdir.mkdir(parents=True, exist_ok=True)
    start_at = 0
    if not resume:
        remove_checkpoint(rdir)  # a fresh run must not leave an older run's state to resume from
    elif (ck := read_checkpoint_meta(rdir)) is not None:
        start_at = int(ck["step"])
        say(f"resume {cfg.run_name()} from its checkpoint at step {start_at} of {cfg.steps}")
    meta = run_metadata(list(argv) if argv is not None else None, seed=cfg.seed, device=cfg.device)
    t0 = time.perf_counter()
    rec = _train_with_bar(
        cfg, spec, train_enc, eval_enc, factory, rdir, disable, resume, checkpoint_seconds, start_at, dev_enc,
        validation,
    )
    rec.meta = meta
    rec.write(rdir, time.perf_counter() - t0)
    if rec.status in ("finished", "diverged"):
        remove_checkpoint(rdir)
    return rec


def _train_with_bar(
    cfg: RunConfig,
    spec: TaskSpec,
    train_enc: Encoder,
    eval_enc: Encoder,
    factory: Callable[[], Any],
    rdir: Path,
    disable: bool | None,
    resume: bool,
    checkpoint_seconds: float,
    start_at: int = 0,
    dev_enc: Encoder | None = None,
    validation: bool | None = None,
) -> RunRecord:
    """:func:`~.loop.train_run` under a step bar; an exception becomes a ``failed`` record (one broken
    method must not end a long study), an interruption propagates with its checkpoint saved."""
    gc.collect()  # the previous run's model must not count in this run's peak RSS
    steps = tqdm(
        total=cfg.steps,
        initial=start_at,
        desc=cfg.run_name(),
        unit="step",
        leave=False,
        disable=disable,
        file=sys.stderr,
    )

    def tick(step: int, loss: float) -> None:
        steps.update(1)
        if step % 10 == 0:
            steps.set_postfix(loss=f"{loss:.4f}")

    try:
        return train_run(
            cfg,
            spec,
            train_enc,
            eval_enc,
            factory,
            dev=dev_enc,
            validation=validation,
            run_dir=rdir,
            step_callback=tick,
            checkpoint_seconds=checkpoint_seconds,
            resume=resume,
        )
    except Exception as exc:  # noqa: BLE001 - one broken method must not end a long study
        return RunRecord(
            config=cfg,
            status="failed",
            message=f"{cfg.method} (seed {cfg.seed}) failed: {type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
        )
    finally:
        steps.close()


def intruder_counts(out: Path, records: list[RunRecord]) -> dict[str, list[float]]:
    """Intruder counts per method (one per run) from :func:`intruder_counts_by_run`."""
    by_run = {r.run_name: r.method for r in records}
    counts: dict[str, list[float]] = {}
    for name, count in intruder_counts_by_run(out).items():
        if name in by_run:
            counts.setdefault(by_run[name], []).append(count)
    return counts


def baseline_line(baselines: dict[str, Any]) -> str:
    """summary.md's line on the reference predictors a method must beat (baselines.json)."""
    if "bigram" in baselines:
        return (
            f"Reference predictors on the same {baselines.get('dev_n')} eval examples, fitted on "
            f"{baselines.get('ngram_fit_answers')} training answers: unigram {baselines['unigram']:.3f} and "
            f"interpolated bigram {baselines['bigram']:.3f} nats/token (lambda "
            f"{baselines.get('bigram_lambda')}, chosen on the validation split); a GSM8K claim is testable "
            "only for methods below the bigram."
        )
    return (
        f"Constant predictor (the training set's majority class, or 0 correlation) on the "
        f"{baselines.get('dev_n')} dev examples: {baselines.get('constant_predictor', float('nan')):.4f}."
    )


def write_baselines(out: Path, data: StudyData) -> Path:
    """``out/baselines.json``: :meth:`StudyData.baselines`, which the claims' gates read."""
    path = Path(out) / BASELINES
    write_run_json(path, data.baselines())
    return path


def write_study_outputs(
    out: Path,
    records: list[RunRecord],
    methods: Sequence[str],
    spec: TaskSpec,
    *,
    argv: Sequence[str] | None = None,
    threshold_override: float | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write curves.csv, the figures and summary.md from ``records``."""
    out = Path(out)
    write_frame(curves_frame(records), out / "curves.csv")  # atomic: two streams may both summarise
    baselines = read_baselines(out)
    notes = [*([baseline_line(baselines)] if baselines else []), *notes]
    title = f"Fine-tuning study: {spec.name}"
    fig_paths = []
    have = [r for r in records if r.train_loss]
    if have:
        threshold, _ = loss_threshold(records, methods, threshold_override)
        rows = method_rows(records, methods, spec, threshold)
        fig_paths = [
            figs.loss_curves(
                have, methods, out / "figures" / "loss_curves.png", title=f"{title}: training loss"
            ),
            figs.eval_curves(
                have,
                methods,
                spec,
                out / "figures" / "eval_curves.png",
                title=f"{title}: eval",
                references=reference_levels(baselines, curve_split(have)),
            ),
            figs.metric_vs_params(
                rows,
                spec,
                out / "figures" / "metric_vs_params.png",
                title=f"{title}: metric vs trainable parameters",
                references=reference_levels(baselines, "dev"),
            ),
        ]
        redraw_selection_figure(out)
    commands = sorted({r.command for r in records if r.command})
    if argv is not None:
        command = "python " + " ".join(shlex.quote(str(a)) for a in argv)
    else:
        command = "; ".join(commands) if commands else None
    text = render_summary(
        records,
        methods,
        spec,
        title=title,
        command=command,
        threshold_override=threshold_override,
        figures=[str(p.relative_to(out)) for p in fig_paths],
        claim_table=study_claims(out, records),
        selection=selection_line(out),
        notes=notes,
    )
    return atomic_write_text(out / "summary.md", text)


def summarize_existing(out: str | Path, methods: Sequence[str], spec: TaskSpec, **kw: Any) -> Path:
    """Rebuild summary.md and figures from the run.json files already under ``out/runs``."""
    out = Path(out)
    recs = [r for r in study_records(out) if r.task == spec.name]
    label = method_labeller(recs)  # once: it scans every record for the study's rank
    if methods:
        recs = [r for r in recs if r.method in methods or label(r) in methods]
    if not recs:
        raise FileNotFoundError(f"no run records for task {spec.name} under {out / 'runs'}")
    if not methods:
        # the order of the study's command, as runs.csv keeps it (else the directory order)
        order: list[str] = []
        csv_path = out / "runs.csv"
        if csv_path.is_file():
            import pandas as pd

            order = list(dict.fromkeys(pd.read_csv(csv_path)["method"].astype(str)))
        found = list(dict.fromkeys(map(method_labeller(recs), recs)))
        rank = {m: i for i, m in enumerate(order)}
        methods = sorted(found, key=lambda k: (rank.get(k.split("@")[0], len(rank)), k))
    return write_study_outputs(out, recs, methods, spec, **kw)


#: Columns of :func:`study_status` (``finetune --status``).
STATUS_COLUMNS = (
    "stage", "run", "method", "seed", "lr", "head_lr", "state", "step", "steps", "val_metric",
    "dev_metric", "cpu_hours",
)


def study_status(out: str | Path) -> pd.DataFrame:
    """Where every run of the study at ``out`` stands, from its folder alone: one row per
    ``select/<run>`` (stage ``select``) and ``runs/<run>`` (stage ``seed``), columns
    :data:`STATUS_COLUMNS`. ``state`` is the record's status (finished, diverged, failed), or
    ``training (pid N on host)`` while a process holds the folder, ``interrupted`` for a
    checkpoint that no process is continuing, ``started`` for a folder with neither; ``step`` is
    the steps done (for a run in progress: at its last checkpoint); ``lr`` the body's rate (empty
    for head-only, which trains no body) and ``head_lr`` the head's, the rate head-only's selection
    tunes (empty for a causal LM, which has no task head); ``cpu_hours`` a recorded run's
    :func:`run_cpu_hours`. Reads files only: safe beside running studies."""
    import pandas as pd

    out = Path(out)
    rows = []
    for stage, folder in (("select", "select"), ("seed", "runs")):
        for rdir in sorted(p for p in (out / folder).glob("*") if p.is_dir()):
            rec = RunRecord.read(rdir)
            meta = read_checkpoint_meta(rdir) or {}
            cfg = rec.config.to_dict() if rec is not None else meta.get("config", {})
            row = dict.fromkeys(STATUS_COLUMNS)
            row.update(stage=stage, run=rdir.name, method=cfg.get("method"), seed=cfg.get("seed"))
            lr, head_lr = (rec.lr, rec.head_lr) if rec is not None else (meta.get("lr"), meta.get("head_lr"))
            body_lr = None if cfg.get("method") == HEAD_ONLY else lr  # head-only trains no body
            if cfg.get("task") in TASKS and TASKS[cfg["task"]].kind == "causal-lm":
                head_lr = None  # a causal LM trains no task head
            row.update(steps=cfg.get("steps"), lr=body_lr, head_lr=head_lr)
            lock = OutputLock(rdir, option="run folder")
            held = (rdir / LOCK_NAME).exists() and _held(lock)
            if held:
                row.update(state=f"training ({_holder_text(lock)})", step=meta.get("step"))
            elif rec is not None and rec.status != "running":
                row.update(state=rec.status, step=rec.steps_done, val_metric=rec.val_metric)
                row["cpu_hours"] = run_cpu_hours(rec)
                if stage == "seed":
                    row["dev_metric"] = rec.final_metric
            elif meta:
                row.update(state="interrupted", step=meta.get("step"))
            else:
                row["state"] = "started"
            rows.append(row)
    return pd.DataFrame(rows, columns=list(STATUS_COLUMNS))


def run_cpu_hours(rec: RunRecord) -> float | None:
    """A recorded run's compute: its time times its torch threads, in hours. The time is
    ``run_seconds``, which a resumed run carries over from its checkpoints (every process that
    trained it, up to its last checkpoint), or the last process's ``wall_seconds`` where that is
    longer (it adds the interpreter's start and the record's writing); None for neither."""
    seconds = max((t for t in (rec.run_seconds, rec.wall_seconds) if t is not None), default=None)
    return None if seconds is None else seconds * int(rec.meta.get("threads") or 1) / 3600


def _held(lock: OutputLock) -> bool:
    """Whether a live process holds ``lock``; a free one is taken and let go at once, which clears
    the lock file a killed process left."""
    try:
        lock.acquire()
    except OutputLockedError:
        return True
    lock.release()
    return False


def rebuild_merged(
    out: str | Path,
    spec: TaskSpec,
    *,
    data_dir: str | Path | Any,
    runs: Sequence[str] = (),
    replace_different: bool = False,
    threads: int | None = None,
    progress: bool | None = None,
    model_factory: Callable[[], Any] | None = None,
    tokenizer: Any = None,
    log: Callable[[str], None] | None = None,
    argv: Sequence[str] | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> dict[str, Any]:
    """Replay finished runs whose ``merged/`` is gone and save their merged weights again.

    ``merged/`` (about 90 MB per MiniLM run) is not committed, and a study run with
    ``--no-save-merged``, or copied without its weights, cannot be counted by
    :mod:`lowrank_lab.intruders`. Training here is deterministic (see :mod:`.loop`): the same config,
    data, torch build, thread count and CPU kernels give the same loss curve bit for bit, so a replay
    from the record's own config gives the run's weights. The replay is *checked*: its training loss
    at every step and its evaluations must equal the record's exactly. A kept replay adds
    ``merged_rebuilt`` (command, commit, date, CPU, threads, seconds) to ``run.json``; nothing else
    of the record changes.

    A replay that differs (another CPU type picks other vector kernels, whose float32 sums round
    differently: curves then part in the last bits within a few steps) is a new run of the same
    config, not the recorded one. By default its weights are deleted and the run is reported as
    failed with the first difference. With ``replace_different`` it *replaces* the record instead,
    so that record and weights stay one run: ``run.json`` becomes the replay's (with ``replaces``:
    the first difference and the old record's final metric, loss, commit and date), ``runs.csv``
    is rewritten from the records and ``summary.md`` rebuilt.

    Parameters
    ----------
    out : path
        The study directory (``runs/<run>/run.json``).
    runs : run names, optional
        Only these (e.g. ``lora-r8-seed1``); default every finished run of ``spec`` without ``merged/``.
        A listed run that has ``merged/`` already, or is not finished, is an error.
    replace_different : bool
        Keep a replay that differs from its record as the run's new record (see above).
    threads : int, optional
        torch threads for the replays; default each run's recorded ``meta.threads`` (the thread
        count is part of what makes CPU results bit-identical).
    model_factory, tokenizer, log, progress, checkpoint_seconds
        As for :func:`run_study`; an interrupted replay continues from its checkpoint.

    Returns
    -------
    dict with ``rebuilt`` (run names, replays identical to their record), ``replaced`` (run name ->
    the first difference), ``failed`` (run name -> message), ``summary`` (path when rebuilt, else None).
    """
    import torch

    out = Path(out)
    say = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    disable = None if progress is None else (not progress)
    records = {}
    for path in sorted((out / "runs").glob("*/run.json")):
        rec = RunRecord.read(path)
        if rec is not None and rec.task == spec.name:
            records[path.parent.name] = rec
    if runs:
        unknown = [r for r in runs if r not in records]
        if unknown:
            raise FileNotFoundError(
                f"no run record {out / 'runs' / unknown[0] / 'run.json'} for task {spec.name}; "
                f"runs here: {', '.join(sorted(records)) or 'none'}"
            )
        for name in runs:
            if not records[name].finished:
                raise ValueError(
                    f"{out / 'runs' / name} is {records[name].status!r}, not finished: "
                    "only a finished run has merged weights to rebuild"
                )
            if (out / "runs" / name / "merged").is_dir():
                raise ValueError(f"{out / 'runs' / name / 'merged'} exists already; delete it to rebuild it")
        todo = list(runs)
    else:
        todo = [
            n
            for n, r in records.items()
            if r.finished and not (out / "runs" / n / "merged").is_dir()
        ]
    result: dict[str, Any] = {"rebuilt": [], "replaced": {}, "failed": {}, "summary": None}
    if not todo:
        say(f"every finished {spec.name} run under {out / 'runs'} has its merged/ weights: nothing to do")
        return result

    splits: dict[tuple[str, int, int | None], StudyData] = {}
    threads_before = torch.get_num_threads()
    bar = tqdm(todo, desc=f"{spec.name} rebuild merged", unit="run", disable=disable, file=sys.stderr)
    try:
        for name in bar:
            bar.set_postfix_str(name)
            rec = records[name]
            cfg = replace(rec.config, save_merged=True)
            key = (cfg.model, cfg.max_length or spec.default_max_length, cfg.val_samples)
            if key not in splits:
                splits[key] = StudyData.load(spec, cfg, data_dir, tokenizer)
            torch.set_num_threads(int(threads or rec.meta.get("threads") or threads_before))
            factory = model_factory or (lambda cfg=cfg: load_model(cfg.model, spec, cfg.pooling))
            rdir = out / "runs" / name
            lock = _run_lock(rdir)
            try:
                lock.acquire()
            except OutputLockedError:
                busy = f"{rdir}: {_holder_text(lock)} is using it; rebuild it when it is done"
                result["failed"][name] = busy
                say(f"FAILED: {result['failed'][name]}")
                continue
            with lock:
                outcome, detail = _replay_one(
                    rec, cfg, spec, splits[key], factory, rdir, argv, disable, checkpoint_seconds,
                    replace_different,
                )
            if outcome == "identical":
                result["rebuilt"].append(name)
                say(f"rebuilt {rdir / 'merged'} (replay identical to the record)")
            elif outcome == "replaced":
                result["replaced"][name] = detail
                say(f"replaced {rdir / 'run.json'} by its replay, which differs from it ({detail})")
            else:
                result["failed"][name] = detail
                say(f"FAILED: {detail}")
    finally:
        bar.close()
        torch.set_num_threads(threads_before)
        if result["replaced"]:  # records changed: the study's table and summary follow them
            rewrite_runs_csv(out)
            result["summary"] = summarize_existing(out, [], spec)
    return result


def _replay_mismatch(rec: RunRecord, new: RunRecord) -> str | None:
    """Where a replayed run's curve or evaluations first differ from its record (None: identical)."""
    old_loss, new_loss = rec.train_loss, new.train_loss
    step = loss_difference(rec, new)["first_different_step"]
    if step is not None:
        a, b = old_loss[step - 1], new_loss[step - 1]
        return f"training loss at step {step}: recorded {a!r}, replayed {b!r}"
    if len(old_loss) != len(new_loss):
        return f"steps: recorded {len(old_loss)}, replayed {len(new_loss)}"
    old_eval, new_eval = rec.evals, new.evals
    if [e.step for e in old_eval] != [e.step for e in new_eval]:
        return "the evaluation steps differ"
    for a, b in zip(old_eval, new_eval, strict=True):
        for key in ("metric", "loss"):
            was, now = getattr(a, key), getattr(b, key)
            if was != now:
                return f"eval {key} at step {a.step}: recorded {was!r}, replayed {now!r}"
    return None


def loss_difference(rec: RunRecord, new: RunRecord) -> dict[str, Any]:
    """How two runs' training losses differ: the first step where they do (None: at none) and the
    largest relative difference over the steps both have, ``|a − b| / |a|``."""
    pairs = list(zip(rec.train_loss, new.train_loss, strict=False))
    first = next((i + 1 for i, (a, b) in enumerate(pairs) if a != b), None)
    rel = max((abs(a - b) / abs(a) for a, b in pairs if a != 0), default=0.0)
    return {"first_different_step": first, "max_rel_loss_difference": float(f"{rel:.3g}")}


def _replay_one(
    rec: RunRecord,
    cfg: RunConfig,
    spec: TaskSpec,
    data: StudyData,
    factory: Callable[[], Any],
    rdir: Path,
    argv: Sequence[str] | None,
    disable: bool | None,
    checkpoint_seconds: float,
    replace_different: bool,
) -> tuple[str, str]:
    """Retrain one recorded run into ``rdir/merged``: ("identical" | "replaced" | "failed", detail)."""
    import shutil

    ck = read_checkpoint_meta(rdir)
    meta = run_metadata(list(argv) if argv is not None else None, seed=cfg.seed, device=cfg.device)
    t0 = time.perf_counter()
    start_at = int(ck["step"]) if ck else 0
    train_enc, eval_enc, dev_enc = data.encoders()
    new = _train_with_bar(
        cfg, spec, train_enc, eval_enc, factory, rdir, disable, True, checkpoint_seconds, start_at, dev_enc
    )
    problem = _replay_mismatch(rec, new) if new.finished else new.message
    remove_checkpoint(rdir)
    made = rec.meta
    if problem is None:
        rec.merged_rebuilt = {
            "command": meta["command"],
            "git_commit": meta["git_commit"],
            "started": meta["started"],
            "cpu": meta["cpu"],
            "threads": meta["threads"],
            "seconds": round(time.perf_counter() - t0, 3),
            "checked": f"training loss at all {len(rec.train_loss)} steps and "
            f"{len(rec.evals)} evaluations identical to the record",
        }
        rec.write(rdir)
        return "identical", ""
    if replace_different and new.finished:
        replaces = {
            "why": f"replay for merged/ weights differs from the record ({problem})",
            **loss_difference(rec, new),
            "final_metric": rec.final_metric,
            "final_train_loss": final_loss(rec.train_loss),
            "git_commit": made.get("git_commit"),
            "started": made.get("started"),
            "platform": made.get("platform"),
            "cpu": made.get("cpu"),
        }
        new.meta, new.replaces = meta, replaces
        new.write(rdir, time.perf_counter() - t0)
        return "replaced", problem
    shutil.rmtree(rdir / "merged", ignore_errors=True)  # not the recorded run's weights
    return "failed", (
        f"{rdir.name}: the replay differs from its record ({problem}), so its weights were not kept. "
        f"Recorded with torch {made.get('versions', {}).get('torch')}, {made.get('threads')} thread(s) "
        f"on {made.get('cpu', 'an unrecorded CPU')}; replayed with torch {meta['versions']['torch']}, "
        f"{meta['threads']} thread(s) on {meta['cpu']}. CPU results are bit-identical only on the same "
        "CPU kernels: replay where the run was made, or keep the replay as the run's new record "
        "(--replace-different)."
    )


def rewrite_runs_csv(out: str | Path) -> Path:
    """Write ``out/runs.csv`` afresh from the run records, in its present row order (new runs last)."""
    import pandas as pd

    out = Path(out)
    found = {p.parent.name: RunRecord.read(p) for p in sorted((out / "runs").glob("*/run.json"))}
    recs = {name: rec for name, rec in found.items() if rec is not None}
    order: list[str] = []
    path = out / "runs.csv"
    if path.is_file() and path.stat().st_size > 0:
        order = [str(d) for d in pd.read_csv(path)["run_dir"]]
    names = list(dict.fromkeys(Path(d).name for d in order if Path(d).name in recs))
    names += [n for n in recs if n not in names]
    tmp = path.with_suffix(".csv.tmp")
    with RowWriter(tmp, RUN_COLUMNS, RUN_KEY) as writer:
        writer.write_many(_csv_row(recs[n], out) for n in names)
    tmp.replace(path)
    return path
