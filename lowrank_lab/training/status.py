"""Where each run of a study stands (``finetune --status``), read from its folders alone."""

from __future__ import annotations

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
    return pd.DataFrame(rows, columns=list(STATUS_COLUMNS))


def run_cpu_hours(rec: RunRecord) -> float | None:
    """A recorded run's compute: its time times its torch threads, in hours. The time is
    ``run_seconds``, which a resumed run carries over from its checkpoints (every process that
    trained it, up to its last checkpoint), or the last process's ``wall_seconds`` where that is
    longer (it adds the interpreter's start and the record's writing); None for neither."""
    seconds = max((t for t in (rec.run_seconds, rec.wall_seconds) if t is not None), default=None)
    return None if seconds is None else seconds * int(rec.meta.get("threads") or 1) / 3600
