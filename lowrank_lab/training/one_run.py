"""One run of a study, the envelope every caller shares: a study's runs and its learning-rate
selection's (:mod:`.scheduling`) and a replay for merged weights (:mod:`.replay`) all call
:func:`run_one`, with what a study's runs share as one :class:`RunContext`.

The envelope: continue from the run's checkpoint or start afresh, record the provenance
(:func:`~lowrank_lab.utils.provenance.run_metadata`) and the wall time, train under a step bar
(:class:`~.loop.Trainer` through :func:`~.loop.train_run`), turn an exception into a ``failed``
record (one broken method must not end a long study) and, for a study's run, write ``run.json`` and
drop the checkpoint of a run that ended.
"""

from __future__ import annotations

import gc
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lowrank_lab.utils.provenance import run_metadata

from .checkpoint import read_checkpoint_meta, remove_checkpoint
from .config import CHECKPOINT_SECONDS, RunConfig
from .loop import train_run
from .record import RunRecord
from .study_data import StudyData
from .tasks import TaskSpec


def _to_stderr(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


@dataclass(frozen=True)
class RunContext:
    """What every run of a study shares: the task, its tokenised data, how to build the model, the
    command recorded in each run.json, the progress bars, the checkpoint interval and where messages
    go."""

    spec: TaskSpec
    data: StudyData
    factory: Callable[[], Any]
    argv: Sequence[str] | None = None
    #: tqdm's ``disable``: None shows the bars only on a terminal
    disable: bool | None = None
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    say: Callable[[str], None] = field(default=_to_stderr)


@dataclass
class OneRun:
    """A run's record, the provenance of the process that trained it, and its wall seconds."""

    record: RunRecord
    meta: dict[str, Any]
    seconds: float


def run_one(cfg: RunConfig, rdir: Path, ctx: RunContext, *, resume: bool, score_dev: bool = True,
            write: bool = True) -> OneRun:  # fmt: skip
    """Train ``cfg`` into ``rdir`` (its lock held by the caller). ``resume`` continues from the
    folder's checkpoint (without it a stale checkpoint is removed first); ``score_dev=False``
    (selection runs) never evaluates the dev set; ``write`` saves ``run.json`` with the provenance
    and removes the checkpoint of a run that finished or diverged (a replay checks its record first,
    :mod:`.replay`)."""
    rdir.mkdir(parents=True, exist_ok=True)
    start_at = 0
    if not resume:
        remove_checkpoint(rdir)  # a fresh run must not leave an older run's state to resume from
    elif (ck := read_checkpoint_meta(rdir)) is not None:
        start_at = int(ck["step"])
        ctx.say(f"resume {cfg.run_name()} from its checkpoint at step {start_at} of {cfg.steps}")
    argv = list(ctx.argv) if ctx.argv is not None else None
    meta = run_metadata(argv, seed=cfg.seed, device=cfg.device)
    t0 = time.perf_counter()
    rec = _train_with_bar(cfg, rdir, ctx, resume=resume, start_at=start_at, score_dev=score_dev)
    done = OneRun(rec, meta, time.perf_counter() - t0)
    if write:
        rec.meta = meta
        rec.write(rdir, done.seconds)
        if rec.status in ("finished", "diverged"):
            remove_checkpoint(rdir)
    return done


def _train_with_bar(
    cfg: RunConfig, rdir: Path, ctx: RunContext, *, resume: bool, start_at: int, score_dev: bool
) -> RunRecord:
    """:func:`~.loop.train_run` under a step bar; an exception becomes a ``failed`` record (one broken
    method must not end a long study), an interruption propagates with its checkpoint saved."""
    gc.collect()  # the previous run's model must not count in this run's peak RSS
    steps = tqdm(total=cfg.steps, initial=start_at, desc=cfg.run_name(), unit="step", leave=False,
                 disable=ctx.disable, file=sys.stderr)  # fmt: skip

    def tick(step: int, loss: float) -> None:
        steps.update(1)
        if step % 10 == 0:
            steps.set_postfix(loss=f"{loss:.4f}")

    train_enc, eval_enc, dev_enc = ctx.data.encoders()
    try:
        return train_run(
            cfg,
            ctx.spec,
            train_enc,
            eval_enc,
            ctx.factory,
            dev=dev_enc if score_dev else None,
            validation=ctx.data.val is not None,
            run_dir=rdir,
            step_callback=tick,
            checkpoint_seconds=ctx.checkpoint_seconds,
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
