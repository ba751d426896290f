"""The run record: what one fine-tuning run did and measured, the ``runs/<run>/run.json`` of a study.

:class:`RunRecord` is the one place that knows the file's keys. The trainer fills one in
(:class:`~.loop.Trainer`), the study writes it (:meth:`RunRecord.write`, atomic) and every reader —
summary, claims, selection, figures, forgetting, notebooks — gets the dataclass back from
:meth:`RunRecord.read` / :func:`load_records` and uses its attributes: no string keys outside this
module.

Layout (schema ``lowrank_lab.finetune.run/1``; keys in this order, a key whose value is None left
out unless it is one of :data:`ALWAYS`)::

    schema, config (RunConfig.to_dict), status, message, lr, head_lr,
    train_loss [one float per step], eval [{step, metric, loss, collapsed, seconds}],
    resumed_at, init_seconds, base_params, trainable_params, head_params, adapter_params, injection,
    diverged_step, dev {step, metric, loss, collapsed, n, seconds[, exact_match, generate_seconds]},
    metric ("exact_match" under --eval generate), merged_dir, save_seconds,
    initial_metric, val_metric, val_collapsed, final_metric, collapsed,
    steps_done, eval_n, train_seconds, eval_seconds, seconds_per_step,
    peak_memory_mb, memory_kind, memory_start_mb, run_seconds,
    meta (command, versions, device, git commit), replaces, merged_rebuilt, traceback, wall_seconds

Records written before issue 15 lack ``resumed_at``, the validation keys, ``collapsed`` and
``dev``: they read as None (their config as ``pooling="native"``, ``val_samples=0``; see
:meth:`~.config.RunConfig.from_dict`). Keys this version does not know are kept in ``unknown`` and
written back, so rewriting a newer record loses nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lowrank_lab.utils.files import atomic_write_text, read_text

from .config import RunConfig, common_rank, method_label

SCHEMA = "lowrank_lab.finetune.run/1"
FILE = "run.json"

#: Keys written even when their value is None (a reader can tell "not measured" from "absent").
ALWAYS = frozenset(
    {"schema", "config", "status", "message", "lr", "head_lr", "train_loss", "eval", "initial_metric",
     "final_metric"}
)


@dataclass
class EvalPoint:
    """One evaluation during training: the split scored during training (validation, or dev in
    records without a validation split) at ``step`` (0 = before training)."""

    step: int
    metric: float
    loss: float
    seconds: float = 0.0
    collapsed: bool | None = None  # None: records made before issue 15 did not say

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalPoint:
        return cls(
            step=int(d["step"]),
            metric=d["metric"],
            loss=d["loss"],
            seconds=d.get("seconds", 0.0),
            collapsed=d.get("collapsed"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "metric": self.metric, "loss": self.loss}
        if self.collapsed is not None:
            out["collapsed"] = self.collapsed
        out["seconds"] = self.seconds
        return out


@dataclass
class DevScore:
    """The dev/test set scored once after the last step: the data the claims are judged on."""

    step: int
    metric: float
    loss: float
    collapsed: bool
    n: int
    seconds: float = 0.0
    exact_match: float | None = None  # --eval generate: greedy generation, final number (GSM8K)
    generate_seconds: float | None = None
    unknown: dict[str, Any] = field(default_factory=dict)  # keys a later version wrote

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DevScore:
        names = {f.name for f in fields(cls)} - {"unknown"}
        known = {k: v for k, v in d.items() if k in names}
        return cls(**known, unknown={k: v for k, v in d.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "unknown"}
        out = {k: v for k, v in out.items() if v is not None or k not in ("exact_match", "generate_seconds")}
        return {**out, **self.unknown}


# JSON key -> attribute, where they differ ("eval" is a builtin; "metric" says which dev number
# final_metric is).
_KEY_TO_ATTR = {"eval": "evals", "metric": "final_metric_name"}
_ATTR_TO_KEY = {v: k for k, v in _KEY_TO_ATTR.items()}
_NOT_KEYS = frozenset({"unknown", "stored_config"})  # attributes that are not keys of the file


@dataclass
class RunRecord:
    """One run's record (see the module docstring for the file); attributes are the JSON keys,
    except ``evals`` (``eval``) and ``final_metric_name`` (``metric``)."""

    config: RunConfig
    status: str = "running"  # running | finished | diverged | failed
    message: str = ""
    lr: float | None = None
    head_lr: float | None = None
    train_loss: list[float] = field(default_factory=list)
    evals: list[EvalPoint] = field(default_factory=list)
    resumed_at: list[int] | None = None
    init_seconds: float | None = None
    base_params: int | None = None
    trainable_params: int | None = None
    head_params: int | None = None
    adapter_params: int | None = None
    injection: dict[str, Any] | None = None
    diverged_step: int | None = None
    dev: DevScore | None = None
    final_metric_name: str | None = None
    merged_dir: str | None = None
    save_seconds: float | None = None
    initial_metric: float | None = None
    val_metric: float | None = None
    val_collapsed: bool | None = None
    final_metric: float | None = None
    collapsed: bool | None = None
    steps_done: int | None = None
    # Early stopping (RunConfig.patience): "plateau" (stopped by patience) or "budget" (ran every
    # step of the maximum budget), and the step whose weights the run kept (its best evaluation).
    stop_reason: str | None = None
    best_step: int | None = None
    eval_n: int | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    seconds_per_step: float | None = None
    peak_memory_mb: float | None = None
    memory_kind: str | None = None
    memory_start_mb: float | None = None
    run_seconds: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    replaces: dict[str, Any] | None = None  # a replay's record: what it replaced (--rebuild-merged)
    merged_rebuilt: dict[str, Any] | None = None  # merged/ rebuilt by an identical replay
    traceback: str | None = None  # a failed run's
    wall_seconds: float | None = None
    schema: str = SCHEMA
    unknown: dict[str, Any] = field(default_factory=dict)  # keys a later version wrote
    #: The ``config`` object as the file holds it (None for a record made in memory): what
    #: ``--resume`` compares (a field the file lacks counts as today's default, as for a
    #: checkpoint), and where config keys a later version added are kept for a rewrite.
    stored_config: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    # -- reading and writing -------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        """The record of a parsed run.json (any version of schema 1)."""
        if not isinstance(d.get("config"), dict):
            raise ValueError("not a run record: it has no 'config' object")
        # the file's key names only: an attribute name used as a key ("evals") is a foreign key
        keys = ({f.name for f in fields(cls)} - set(_ATTR_TO_KEY) - _NOT_KEYS) | set(_KEY_TO_ATTR)
        kw: dict[str, Any] = {}
        unknown: dict[str, Any] = {}
        for key, value in d.items():
            if key in keys:
                kw[_KEY_TO_ATTR.get(key, key)] = value
            else:
                unknown[key] = value
        kw["config"] = RunConfig.from_dict(d["config"])
        kw["stored_config"] = dict(d["config"])
        kw["evals"] = [EvalPoint.from_dict(e) for e in d.get("eval") or []]
        kw["train_loss"] = list(d.get("train_loss") or [])
        if d.get("dev") is not None:
            kw["dev"] = DevScore.from_dict(d["dev"])
        return cls(**kw, unknown=unknown)

    def to_dict(self) -> dict[str, Any]:
        """The run.json object: keys in the documented order, None left out (but :data:`ALWAYS`)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in _NOT_KEYS:
                continue
            key = _ATTR_TO_KEY.get(f.name, f.name)
            value = getattr(self, f.name)
            if value is None and key not in ALWAYS:
                continue
            if f.name == "config":  # keys of the stored config this version does not know stay
                value = {**(self.stored_config or {}), **value.to_dict()}
            elif f.name == "evals":
                value = [e.to_dict() for e in value]
            elif f.name == "dev":
                value = value.to_dict()
            out[key] = value
        out = {"schema": out.pop("schema"), **out}
        wall = out.pop("wall_seconds", None)
        out.update(self.unknown)
        if wall is not None:
            out["wall_seconds"] = wall
        return out

    @classmethod
    def read(cls, path: str | Path) -> RunRecord | None:
        """The record in ``path`` (a run.json, or a run directory); None when there is none, or the
        file is not a run record (written atomically, so only a foreign file can be torn)."""
        path = _file(path)
        if not path.is_file():
            return None
        try:
            return cls.from_dict(json.loads(read_text(path)))
        except (ValueError, TypeError, KeyError, AttributeError):  # JSONDecodeError is a ValueError
            return None

    def write(self, path: str | Path, wall_seconds: float | None = None) -> Path:
        """Write the record atomically to ``path`` (a run.json, or a run directory), with
        ``wall_seconds`` when given."""
        path = _file(path)
        if wall_seconds is not None:
            self.wall_seconds = round(float(wall_seconds), 3)
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, default=str) + "\n")

    # -- what readers ask ----------------------------------------------------------------------

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def rank(self) -> int:
        return int(self.config.rank)

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    @property
    def run_name(self) -> str:
        """The run's directory name (``lora-r8-seed0``, ``full-seed0``)."""
        return self.config.run_name()

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def usable(self) -> bool:
        """Finished, with a finite final metric, and not collapsed to a constant predictor: the runs
        claims and intruder tables read (issue 15)."""
        value = self.final_metric
        return self.finished and value is not None and math.isfinite(float(value)) and not self.collapsed

    @property
    def dev_loss(self) -> float | None:
        """The dev loss after the last step (records before issue 15: the final metric, which for a
        language-modelling task is that loss)."""
        return self.dev.loss if self.dev is not None else self.final_metric

    @property
    def command(self) -> str | None:
        return self.meta.get("command")


def _file(path: str | Path) -> Path:
    """``path`` itself, or its run.json when it is a run directory."""
    path = Path(path)
    return path / FILE if path.is_dir() else path


def load_records(paths: Iterable[str | Path]) -> list[RunRecord]:
    """The records of run.json files or run directories, in order (missing or foreign ones skipped)."""
    out = []
    for p in paths:
        rec = RunRecord.read(p)
        if rec is not None:
            out.append(rec)
    return out


def study_records(out: str | Path) -> list[RunRecord]:
    """Every run record of a study folder, ``out/runs/*/run.json``, by directory name."""
    return load_records(sorted(Path(out).glob(f"runs/*/{FILE}")))


def study_rank(records: Iterable[RunRecord]) -> int | None:
    """:func:`~.config.common_rank` of a study's run records."""
    return common_rank((rec.method, rec.rank) for rec in records)


def method_labeller(records: Iterable[RunRecord]) -> Callable[[RunRecord], str]:
    """:func:`~.config.method_label` of each run record, at the rank of ``records`` (:func:`study_rank`)."""
    rank = study_rank(records)
    return lambda rec: method_label(rec.method, rec.rank, rank)
