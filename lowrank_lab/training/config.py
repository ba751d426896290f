"""Run configuration of the fine-tuning harness and where every default comes from.

Learning rates per method family
--------------------------------
The papers tune learning rates per method; a fair small-scale comparison uses each family's
published setting rather than one rate for all. Defaults (``--lr`` overrides all of them):

========================  =====================  ==========================================================
family (methods)          GLUE (MiniLM)          GSM8K (stories260K)
========================  =====================  ==========================================================
``lora``: lora, pissa,    4e-4                   2e-4
milora, olora, slora,     LoRA paper (Hu et al.  NLoRA's released run_lora.sh / run_nlora.sh
nlora, and every other    2021, Table 9,         (TracyGuo2001/NLoRA, MetaMathQA, r = alpha = 128);
method that trains its    RoBERTa-base: 4e-4     PEFT's LoRA examples use 1e-4..3e-4.
factors                   CoLA/STS-B, 5e-4
                          SST-2/RTE).
``core``: inttune,        4e-3                   4e-3
lora-xs, lora-sb, loldu   LoRA-XS (Bałazy et al. 2024) trains only the r×r core: its released
(every registry method    run_math_tuning.sh uses 4e-3 (Mistral-7B, MetaMathQA) and its GLUE grid
training only its core)   goes up to 1e-3 for the core and 5e-3 for the head. NOTE: NLoRA's released
                          run_inttune.sh uses 2e-4 for IntTune (the same as NLoRA) at 7B scale with
                          100k examples; with 300 steps a core of r² numbers barely moves at 2e-4,
                          so the core family gets the LoRA-XS rate here — pass ``--lr`` to test 2e-4.
``full``                  2e-5                   2e-5
                          BERT's GLUE grid {2,3,5}e-5 (Devlin et al. 2019); PiSSA's full fine-tuning
                          on MetaMathQA uses 2e-5 (PiSSA paper §5, NLoRA's run_pissa.sh).
========================  =====================  ==========================================================

Schedule (same for every method): AdamW (β = 0.9, 0.999, ε = 1e-8, weight decay 0 as the
PiSSA/NLoRA scripts), linear warm-up over 6 % of the steps then linear decay to 0 (the LoRA
paper's GLUE schedule, warm-up ratio 0.06), gradient norm clipped at 1.0 (Hugging Face
Trainer's ``max_grad_norm`` default). Rank 8 and alpha = rank (scale s = 1) follow LoRA's GLUE
setting (r = 8, alpha = 8) and PiSSA/NLoRA's alpha = r.

Heads: for GLUE the task head (``classifier``, new and randomly initialised) trains with every
method, as PEFT's ``modules_to_save`` does for sequence classification, and at one rate for every
method, ``DEFAULT_HEAD_LR`` = 4e-4 (LoRA's GLUE rate, Table 9, at which LoRA's classifier trains):
the head is not part of the method being compared, and at full fine-tuning's 2e-5 a random head
barely moves in a few hundred steps, which would charge the head's slowness to the method.
The pre-trained pooler and the embeddings stay frozen for every method (``full`` trains the
target linear maps of the blocks, as ``lowrank_lab.adapters.inject`` defines it). For GSM8K no head
trains (the LM head is pre-trained and tied to the embedding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from lowrank_lab.adapters import ADAPTERS

#: A control run by this harness (not an adapter): no adapter, only the task head trains (a
#: linear probe of the frozen model). Its metric is what the head alone achieves, so the gain of
#: an adapter over it is what the adapter adds. Learning rate: the LoRA family's.
HEAD_ONLY = "head"

#: Methods that train only a small core between frozen factors: derived from the adapter registry
#: (every method whose trainable parts are the core M alone), so a new core-only init joins it.
CORE_ONLY_METHODS = frozenset(name for name, am in ADAPTERS.items() if am.trains and set(am.trains) <= {"M"})

#: Learning rate of the new task head, the same for every method (see the module docstring).
DEFAULT_HEAD_LR = 4e-4

#: (family, task kind) -> learning rate; see the module docstring for sources.
DEFAULT_LR: dict[tuple[str, str], float] = {
    ("lora", "glue"): 4e-4,
    ("lora", "causal-lm"): 2e-4,
    ("core", "glue"): 4e-3,
    ("core", "causal-lm"): 4e-3,
    ("full", "glue"): 2e-5,
    ("full", "causal-lm"): 2e-5,
}

LR_SOURCES = {
    "lora": "LoRA paper Table 9 (RoBERTa-base GLUE 4e-4..5e-4); "
    "NLoRA run_lora.sh/run_nlora.sh 2e-4 (MetaMathQA)",
    "core": "LoRA-XS run_math_tuning.sh 4e-3 (core-only training); NLoRA run_inttune.sh uses 2e-4 at 7B",
    "full": "BERT GLUE grid 2e-5..5e-5 (Devlin et al. 2019); PiSSA full fine-tuning 2e-5",
}


def method_family(method: str) -> str:
    """``"full"``, ``"core"`` (only an r×r core / r numbers train) or ``"lora"`` (factors train)."""
    if method in CORE_ONLY_METHODS:
        return "core"
    trains = getattr(ADAPTERS.get(method), "trains", None)  # None for HEAD_ONLY
    if method == "full" or (trains is not None and "W" in trains):
        return "full"
    return "lora"


#: The adapter rank a study's plain method names refer to when it has runs there: the default of
#: --rank, LoRA's GLUE setting (Hu et al. 2021, Table 9) and the rank the papers' comparisons share.
REFERENCE_RANK = 8


def common_rank(runs: Iterable[tuple[str, int]]) -> int | None:
    """The rank plain method names refer to among ``(method, rank)`` pairs: :data:`REFERENCE_RANK`
    when some adapter run uses it, else the rank most adapter runs use (ties: the smaller); None
    without adapter runs.

    Counting alone would let a study's naming flip as it grows: the plateau study runs five seeds at
    each of r = 1, 8 and 64 for LoRA and at 25, 128 and 384 for the capacity claims, a tie that the
    smaller rank (1) would win, so that ``lora`` meant LoRA r = 1 and the gate read the wrong runs."""
    counts: dict[int, int] = {}
    for method, rank in runs:
        if method not in ("full", HEAD_ONLY):
            counts[int(rank)] = counts.get(int(rank), 0) + 1
    if REFERENCE_RANK in counts:
        return REFERENCE_RANK
    return min(counts, key=lambda r: (-counts[r], r)) if counts else None


def method_label(method: str, rank: int, study_rank: int | None) -> str:
    """How tables, figures and claims name a method within a study: ``lora`` at the study's rank,
    ``lora@64`` at another; ``full`` and the head-only control carry no rank."""
    if method in ("full", HEAD_ONLY) or study_rank is None or int(rank) == study_rank:
        return method
    return f"{method}@{int(rank)}"


def default_lr(method: str, task_kind: str) -> float:
    """The learning rate :data:`DEFAULT_LR` gives ``method`` on a task of ``task_kind``."""
    kind = "causal-lm" if task_kind == "causal-lm" else "glue"
    return DEFAULT_LR[(method_family(method), kind)]


#: Wall seconds between a run's checkpoints (finetune's --checkpoint-every; 0: only when interrupted):
#: saving full fine-tuning's 260 MB of MiniLM weights and AdamW moments takes about a second, under 1%
#: of a run, and an interrupted run loses at most two minutes.
CHECKPOINT_SECONDS = 120

#: Seed of the learning-rate selection runs (finetune's --selection-seeds): none of a study's usual
#: seeds 0-9, so the runs a verdict uses are not the ones a rate was chosen on.
SELECTION_SEED = 100


def check_run_options(config: Any) -> None:
    """The checks of the options that define a run, shared by :class:`RunConfig` and finetune's
    config (both have these fields): ValueError naming the option at fault."""
    patience, delta = config.patience, config.min_delta
    if patience is not None and (isinstance(patience, bool) or int(patience) < 1):
        raise ValueError(f"--patience must be a whole number of evaluations >= 1, got {patience!r}")
    if not (isinstance(delta, (int, float)) and math.isfinite(delta)) or delta < 0:
        raise ValueError(f"--min-delta must be a finite number >= 0, got {delta!r}")
    if config.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype must be float32 or bfloat16, got {config.dtype!r}")
    if config.eval_set not in ("dev", "dev+test"):
        raise ValueError(f"--eval-set must be dev or dev+test, got {config.eval_set!r}")
    if patience is not None and config.eval_every <= 0:
        raise ValueError("--patience needs evaluations during training: give --eval-every N > 0")


@dataclass
class RunConfig:
    """Everything that defines one fine-tuning run; two runs with equal configs give equal curves
    on the CPU.

    Defaults carry their reasons in the module docstring; ``lr=None`` means :func:`default_lr`.
    """

    task: str
    method: str
    model: str = "minilm"
    seed: int = 0
    rank: int = REFERENCE_RANK
    alpha: float | None = None  # None: the adapter's default (alpha = rank, s = 1)
    targets: str | None = None  # None: all linear target modules of the model family
    steps: int = 300
    batch_size: int = 16
    max_length: int | None = None  # None: the task's default (64 GLUE, 512 GSM8K)
    lr: float | None = None
    head_lr: float | None = None  # None: DEFAULT_HEAD_LR for every method
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 100  # a full SST-2 dev pass costs ~35 training steps of CPU: 4 evals per 300-step run
    eval_samples: int | None = None  # None: the task's default (all of GLUE dev, 256 GSM8K); 0: all
    eval_batch_size: int = 64
    explode_factor: float = 10.0  # stop when loss > factor × first-step loss
    device: str = "cpu"
    save_merged: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # adapter options passed to inject
    # Sentence pooling of the classification head (None: the checkpoint's sentence-transformers
    # pooling when it has one, else the architecture's own head); see training.models.
    pooling: str | None = None
    # Examples carved from the training data for selection and curves (None: 10%, 100..1000;
    # 0: none, and the dev set is scored during training as before issue 15); see batching.
    val_samples: int | None = None
    epochs: float | None = None  # provenance: the --epochs that set ``steps`` (None: --steps)
    # "loss": the task's metric; "generate" (causal LM): greedy generation scored by exact match of
    # the final number after the dev pass (training.generate), the metric GSM8K papers report.
    eval_mode: str = "loss"
    # Early stopping on the split scored during training (issue 30, point 8): stop once this many
    # evaluations in a row failed to beat the best by more than ``min_delta``, and keep the best
    # evaluation's weights (Hugging Face Trainer's EarlyStoppingCallback with
    # load_best_model_at_end; Prechelt 1998, "Early stopping -- but when?"). ``steps`` is then the
    # maximum budget, and the schedule decays over it. None: train every step (as before issue 30).
    patience: int | None = None
    min_delta: float = 0.0
    # The held-out examples scored after training (training.tasks.EVAL_SETS): "dev", or "dev+test"
    # for a task with labelled test files (SST-2: 872 + 1,821 sentences; issue 30's cheap lever).
    eval_set: str = "dev"
    # Precision and memory for large models on a GPU (issue 30, point 10): "bfloat16" keeps the frozen
    # base in bf16 and the trained parameters in float32, and runs forward passes under bf16 autocast
    # (PEFT's autocast_adapter_dtype and Hugging Face Trainer's bf16=True); gradient checkpointing
    # recomputes block activations in the backward pass (Chen et al. 2016) to fit long sequences.
    dtype: str = "float32"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        check_run_options(self)

    @property
    def early_stopping(self) -> bool:
        return self.patience is not None

    def resolved_lr(self, task_kind: str) -> float:
        return float(self.lr) if self.lr is not None else default_lr(self.method, task_kind)

    def resolved_head_lr(self) -> float:
        return float(self.head_lr) if self.head_lr is not None else DEFAULT_HEAD_LR

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The config of a stored record. Records made before issue 15 have no ``pooling`` or
        ``val_samples``: they used the architecture's own head and scored dev during training."""
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in d.items() if k in names}
        kept.setdefault("pooling", "native")
        kept.setdefault("val_samples", 0)
        return cls(**kept)

    def run_name(self) -> str:
        """Directory name of the run: ``lora-r8-seed0`` (``full-seed0`` for full fine-tuning)."""
        if self.method == "full":
            return f"full-seed{self.seed}"
        return f"{self.method}-r{self.rank}-seed{self.seed}"

    # Fields that must agree for --resume to treat an existing run as this run.
    IDENTITY = (
        "task",
        "method",
        "model",
        "seed",
        "rank",
        "alpha",
        "targets",
        "steps",
        "batch_size",
        "max_length",
        "lr",
        "head_lr",
        "warmup_ratio",
        "weight_decay",
        "max_grad_norm",
        "eval_every",
        "eval_samples",
        "extra",
        "pooling",
        "val_samples",
        "eval_mode",
        "patience",
        "min_delta",
        "eval_set",
        "dtype",
        "gradient_checkpointing",
    )

    def differences(self, other: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Identity fields whose value in ``other`` (a stored config) differs from this one. A field
        that a stored config lacks (written before the field existed) counts as its default."""
        mine = self.to_dict()
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        stored = {k: other.get(k, defaults.get(k)) for k in self.IDENTITY}
        return {k: (stored[k], mine[k]) for k in self.IDENTITY if stored[k] != mine[k]}
