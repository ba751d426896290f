"""Where each run of a study stands (``finetune --status``), read from its folders alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lowrank_lab.utils.lock import LOCK_NAME, OutputLock

from .checkpoint import read_checkpoint_meta
from .config import HEAD_ONLY
from .record import RunRecord
from .scheduling import held, holder_text
from .tasks import TASKS

if TYPE_CHECKING:
    import pandas as pd

#: Columns of :func:`study_status` (``finetune --status``).
STATUS_COLUMNS = (
    "stage",
    "run",
    "method",
    "seed",
    "lr",
    "head_lr",
    "state",
    "step",
    "steps",
    "val_metric",
    "dev_metric",
    "cpu_hours",
    "minutes_left",
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
    :func:`run_cpu_hours`; ``minutes_left`` for a run in training or interrupted, its remaining
    budget (steps - step) at the pace of the study's finished runs of its method (:func:`study_pace`),
    or at its own pace so far where none has finished: an upper bound, since early stopping can end
    it sooner. Reads files only: safe beside running studies."""
    import pandas as pd

    out = Path(out)
    rows, records, own = [], [], []
    for stage, folder in (("select", "select"), ("seed", "runs")):
        for rdir in sorted(p for p in (out / folder).glob("*") if p.is_dir()):
            rec = RunRecord.read(rdir)
            records += [rec] if rec is not None else []
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
            if (rdir / LOCK_NAME).exists() and held(lock):
                row.update(state=f"training ({holder_text(lock)})", step=meta.get("step"))
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
            own.append(_own_pace(meta))
    pace = study_pace(records)
    for row, own_pace in zip(rows, own, strict=True):  # in progress: training or interrupted
        if row["state"] == "interrupted" or str(row["state"]).startswith("training"):
            row["minutes_left"] = _minutes_left(row, pace, own_pace)
    return pd.DataFrame(rows, columns=list(STATUS_COLUMNS))


def study_pace(records: Sequence[RunRecord]) -> dict[str | None, float]:
    """Seconds a step of a study takes, from its finished run ``records``: the median of their
    ``seconds_per_step`` per method, and under the key None over all of them ({} before a run has
    finished). A step's cost depends on the method (full fine-tuning updates every weight), so a
    run's own method gives its pace where the study has one."""
    from statistics import median

    paces: dict[str | None, list[float]] = {}
    for rec in records:
        if rec.status != "finished" or not rec.seconds_per_step:
            continue
        for key in (rec.method, None):
            paces.setdefault(key, []).append(float(rec.seconds_per_step))
    return {k: median(v) for k, v in paces.items()}


def _minutes_left(row: dict, pace: dict[str | None, float], own: float | None) -> float | None:
    """``row``'s remaining budget in minutes: at its method's pace in the study where a run of that
    method has finished; else at the run's ``own`` pace (seconds a step so far, from its checkpoint),
    since a step's cost differs by method (full fine-tuning's is several times LoRA's and head-only's
    a fraction of it); else, for a checkpoint that records no time, at the study's pace."""
    per_step = pace.get(row["method"]) or own or pace.get(None)
    if per_step is None or row.get("steps") is None or row.get("step") is None:
        return None
    return round(max(int(row["steps"]) - int(row["step"]), 0) * per_step / 60, 1)


def _own_pace(meta: dict) -> float | None:
    """Seconds a step of a run in progress so far, from its ``checkpoint.json``; None before a
    step or for a checkpoint that records no time."""
    seconds, step = (meta.get("seconds") or {}).get("run"), meta.get("step")
    return float(seconds) / int(step) if seconds and step else None


def run_cpu_hours(rec: RunRecord) -> float | None:
    """A recorded run's compute: its time times its torch threads, in hours. The time is
    ``run_seconds``, which a resumed run carries over from its checkpoints (every process that
    trained it, up to its last checkpoint), or the last process's ``wall_seconds`` where that is
    longer (it adds the interpreter's start and the record's writing); None for neither."""
    seconds = max((t for t in (rec.run_seconds, rec.wall_seconds) if t is not None), default=None)
    return None if seconds is None else seconds * int(rec.meta.get("threads") or 1) / 3600
