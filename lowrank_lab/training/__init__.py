"""Fine-tuning harness: train every adapter method on real tasks and record convergence, metric,
time and memory (issue 7). The command line is ``python -m lowrank_lab.finetune``.

Components (each usable on its own): :mod:`.tasks` (GLUE/GSM8K readers, the task registry),
:mod:`.batching` (deterministic order, tokenisation, padding), :mod:`.metrics`, :mod:`.config`
(run settings and per-family learning rates with their sources), :mod:`.loop` (one run),
:mod:`.record` (the run record, run.json), :mod:`.study` (methods × seeds, records, resume),
:mod:`.summary` and :mod:`.figures`.
"""

from .batching import Encoder, batch_order, eval_subset
from .config import DEFAULT_LR, HEAD_ONLY, LR_SOURCES, RunConfig, default_lr, method_family
from .loop import Diverged, evaluate, task_loss, train_run
from .metrics import METRICS, accuracy, average_ranks, matthews_corrcoef, spearman
from .record import DevScore, EvalPoint, RunRecord, load_records, study_records
from .study import StudyResumeError, run_study, summarize_existing
from .tasks import (
    TASKS,
    Example,
    HubDataset,
    TaskDataError,
    TaskFormatError,
    TaskSpec,
    default_data_dir,
    get_task,
    load_examples,
)

__all__ = [
    "DEFAULT_LR",
    "HEAD_ONLY",
    "LR_SOURCES",
    "METRICS",
    "TASKS",
    "DevScore",
    "Diverged",
    "Encoder",
    "EvalPoint",
    "Example",
    "HubDataset",
    "RunConfig",
    "RunRecord",
    "StudyResumeError",
    "TaskDataError",
    "TaskFormatError",
    "TaskSpec",
    "accuracy",
    "average_ranks",
    "batch_order",
    "default_data_dir",
    "default_lr",
    "eval_subset",
    "evaluate",
    "get_task",
    "load_examples",
    "load_records",
    "matthews_corrcoef",
    "method_family",
    "run_study",
    "spearman",
    "study_records",
    "summarize_existing",
    "task_loss",
    "train_run",
]
