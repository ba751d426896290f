"""Which process trains which run of a study: resume checks before any work, a lock on each run's
folder while a process trains it, runs another process holds taken up at the end (see :mod:`.study`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lowrank_lab.utils.lock import LOCK_NAME, OutputLock, OutputLockedError
from lowrank_lab.utils.tables import RowWriter

from .checkpoint import CHECKPOINT_META, read_checkpoint_meta
from .config import RunConfig
from .one_run import RunContext, run_one
from .outputs import csv_row
from .record import RunRecord
from .tasks import TaskSpec


class StudyResumeError(ValueError):
    """``--resume`` found a run made with different settings."""


class Runner:
    """Runs a list of configs into their run directories: resume checks before any work, one run at
    a time under a progress bar (:func:`~.one_run.run_one`), a failed run recorded and skipped, a
    run another process holds taken up at the end (see :func:`~.study.run_study`)."""

    def __init__(self, ctx: RunContext, resume: bool) -> None:
        self.ctx, self.resume = ctx, resume

    @property
    def spec(self) -> TaskSpec:
        return self.ctx.spec

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
        say, started = self.ctx.say, time.time()  # a record written after ``started``: this call's
        done = self._resumable(configs, dir_of) if self.resume else {}
        self.ctx.data.prepare([c for c in configs if dir_of(c) not in done], self.ctx.disable)
        by_dir: dict[Path, RunRecord] = {}
        failed = 0
        later: list[RunConfig] = []  # runs another process is training: taken up at the end
        bar = tqdm(total=len(configs), desc=desc, unit="run", disable=self.ctx.disable, file=sys.stderr)
        try:
            for cfg in configs:
                rdir = dir_of(cfg)
                bar.set_postfix_str(rdir.name)
                if rdir in done:
                    by_dir[rdir] = _skipped(done[rdir], rdir, writer, say)
                    bar.update()
                    continue
                lock = run_lock(rdir)
                try:
                    lock.acquire()
                except OutputLockedError:
                    say(f"later {rdir.name}: {holder_text(lock)} is training it")
                    later.append(cfg)
                    continue
                with lock:
                    by_dir[rdir], bad = self._take_or_train(cfg, rdir, started, score_dev, writer)
                failed += bad
                bar.update()
            for cfg in later:  # every other run is done: wait for the other process's
                rdir = dir_of(cfg)
                lock = run_lock(rdir)
                say(f"wait for {rdir.name}: {holder_text(lock)} is training it")
                with lock.acquire(wait=True, poll=LOCK_POLL_SECONDS):
                    by_dir[rdir], bad = self._take_or_train(cfg, rdir, started, score_dev, writer)
                failed += bad
                bar.update()
        finally:
            bar.close()
        return [by_dir[dir_of(c)] for c in configs], failed

    def _take_or_train(
        self, cfg: RunConfig, rdir: Path, started: float, score_dev: bool, writer: RowWriter | None
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
                check_same_settings(cfg, self.spec, stored, rec.lr, rec.head_lr, rdir)
            except StudyResumeError:
                if self.resume:  # as much a mismatch as at the start of a --resume
                    raise
                fresh = False  # a fresh study overwrites a run made with other settings
            if self.resume or fresh:
                self.ctx.say(f"took {rdir.name}: {rec.status} by another process")
                return rec, 0
        rec = run_one(cfg, rdir, self.ctx, resume=self.resume, score_dev=score_dev).record
        if rec.status == "diverged":
            self.ctx.say(f"DIVERGED: {rec.message} — continuing with the other runs")
        elif rec.status == "failed":
            self.ctx.say(f"FAILED: {rec.message} — continuing with the other runs")
        if writer is not None:
            writer.write(csv_row(rec, rdir.parents[1]))
        return rec, int(rec.status == "failed")

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
                check_same_settings(cfg, self.spec, stored, rec.lr, rec.head_lr, rdir)
                done[rdir] = rec
            elif (meta := read_checkpoint_meta(rdir)) is not None:
                check_same_settings(
                    cfg,
                    self.spec,
                    meta.get("config", {}),
                    meta.get("lr"),
                    meta.get("head_lr"),
                    rdir / CHECKPOINT_META,
                )
        return done


def _skipped(rec: RunRecord, rdir: Path, writer: RowWriter | None, say: Callable[[str], None]) -> RunRecord:
    """A run --resume keeps: said, and its runs.csv row written when the table lacks it."""
    say(f"skip {rdir.name}: already {rec.status} (--resume)")
    if writer is not None and not writer.done(csv_row(rec, rdir.parents[1])):
        writer.write(csv_row(rec, rdir.parents[1]))
    return rec


#: How often a process waiting for a run another process trains looks whether it is done.
LOCK_POLL_SECONDS = 5.0


def run_lock(rdir: Path) -> OutputLock:
    """The lock a process holds on a run's folder while it trains (or replays) that run: a second
    process on the same study takes other runs meanwhile (:class:`Runner`)."""
    rdir.mkdir(parents=True, exist_ok=True)
    return OutputLock(rdir, command="python -m lowrank_lab.finetune", option="run folder")


def busy_run(out: Path) -> tuple[Path, str] | None:
    """A run folder of the study at ``out`` that another live process is training, with that
    process (None: no such folder)."""
    for rdir in sorted([*out.glob("runs/*/"), *out.glob("select/*/")]):
        if not (rdir / LOCK_NAME).exists():
            continue
        lock = OutputLock(rdir, option="run folder")
        if held(lock):
            return rdir, holder_text(lock)
    return None


def holder_text(lock: OutputLock) -> str:
    h = lock.holder()
    return f"pid {h['pid']} on {h.get('host', '?')}" if "pid" in h else "another process"


def check_same_settings(
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


def held(lock: OutputLock) -> bool:
    """Whether a live process holds ``lock``; a free one is taken and let go at once, which clears
    the lock file a killed process left."""
    try:
        lock.acquire()
    except OutputLockedError:
        return True
    lock.release()
    return False
