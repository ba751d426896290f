"""One fine-tuning run: seed, build the model, inject the adapter, train, evaluate, record.

The loop is deliberately plain (AdamW, linear warm-up/decay, gradient clipping; see
:mod:`lowrank_lab.training.config` for the sources of each setting) so that the only thing that
differs between the runs of a study is the adapter method.

Determinism on the CPU: torch's global RNG is seeded before the model is built (the task head's
init) and again before the first step (dropout), the adapter init gets its own generator seeded
with the run's seed, and the data order comes from :func:`~.batching.batch_order`. Two runs with
the same config therefore give bit-identical loss curves on the same machine and thread count.
Not across CPU types: the same torch build picks other vector kernels on another CPU, whose float32
sums round differently. The confirmation study's RTE replays (same torch, one thread) parted from
records made on another machine within the first ten steps, by at most 2e-6 relative over 300 steps
for 18 of 24 runs and by up to 15% for nlora-pinv and nlora-sketch, whose inits amplify rounding
(``finetune --rebuild-merged`` checks and reports exactly this).

Divergence: a loss that is NaN/Inf, or larger than ``explode_factor`` × the first step's loss, or a
non-finite gradient norm, stops the run with :class:`Diverged`, whose message names the method, seed
and step; the record keeps the curve up to that step and ``status="diverged"``.

Interruption: with a ``run_dir``, the loop checkpoints every ``checkpoint_seconds`` and on Ctrl-C or
SIGTERM (see :mod:`.checkpoint`), then raises :class:`Interrupted`; ``train_run(..., resume=True)``
continues from that step and gives the same loss curve as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from lowrank_lab.utils.timing import Stopwatch, synchronize

from .batching import IGNORE_INDEX, Encoder, batch_order, eval_subset
from .checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    read_checkpoint_meta,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import HEAD_ONLY, RunConfig
from .metrics import METRICS
from .models import count_parameters, head_parameters
from .record import DevScore, EvalPoint, RunRecord
from .tasks import TaskSpec


class Diverged(RuntimeError):
    """The training loss became NaN/Inf or exploded; the message names method, seed and step."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM through the CLI) stopped a run; the message says where it can resume."""


class MemoryMeter:
    """Peak memory of a run: RSS of this process sampled at every step on the CPU (the OS keeps
    only a process-lifetime peak, ``ru_maxrss``, which would mix runs), or
    ``torch.cuda.max_memory_allocated`` on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "rss"
        self.peak = 0
        self._proc = None
        if self.kind == "cuda_max_allocated":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            try:
                import psutil

                self._proc = psutil.Process(os.getpid())
            except ImportError:  # psutil ships with the dev extras; fall back to /proc
                self._proc = None
        self.sample()
        self.start = self.peak

    def _rss(self) -> int:
        if self._proc is not None:
            return int(self._proc.memory_info().rss)
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def sample(self) -> None:
        if self.kind == "rss":
            self.peak = max(self.peak, self._rss())

    def peak_mb(self) -> float:
        if self.kind == "cuda_max_allocated":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        return self.peak / 2**20


def task_loss(
    spec: TaskSpec, logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy (classification), MSE (regression, STS-B as in GLUE baselines), or next-token
    cross-entropy over the non-ignored labels (causal LM; labels shifted by one inside)."""
    if spec.kind == "causal-lm":
        shift_logits = logits[:, :-1, :].float()  # (B, T-1, V)
        shift_labels = target[:, 1:]  # (B, T-1)
        return F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]),
            shift_labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction=reduction,
        )
    if spec.kind == "regression":
        return F.mse_loss(logits.float().squeeze(-1), target.float(), reduction=reduction)
    return F.cross_entropy(logits.float(), target, reduction=reduction)


def precision(cfg: RunConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of ``cfg.dtype``: bf16 autocast for ``"bfloat16"`` (the trained float32
    parameters meet the bf16 base in bf16 matmuls), nothing for ``"float32"``."""
    if cfg.dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _gradient_checkpointing(model: nn.Module) -> None:
    """Switch on Hugging Face's gradient checkpointing of ``model`` (or of the transformer it wraps),
    non-reentrant so that frozen embeddings need no input gradients."""
    target = model if hasattr(model, "gradient_checkpointing_enable") else getattr(model, "backbone", None)
    if target is None or not hasattr(target, "gradient_checkpointing_enable"):
        raise ValueError(f"--gradient-checkpointing: {type(model).__name__} does not support it")
    if hasattr(target, "activation_checkpointing_enable"):  # transformers >= 5 (the old name is deprecated)
        target.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(getattr(target, "config", None), "use_cache", False):
        target.config.use_cache = False  # a cache is kept for generation, not for training


def _forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "target"}
    return model(**inputs).logits


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    spec: TaskSpec,
    encoder: Encoder,
    indices: list[int],
    *,
    batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    """Score ``model`` on the eval examples ``indices``: ``{"metric", "loss"}``.

    Examples are batched in order of length (less padding; the attention mask makes the result
    independent of the batching). For GSM8K the metric is the answer loss itself: summed token
    cross-entropy over all answer tokens / their count.
    """
    was_training = model.training
    model.eval()
    order = sorted(indices, key=encoder.length)
    preds, targets = [], []
    loss_sum, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = _to(encoder.collate(order[start : start + batch_size]), device)
        logits = _forward(model, batch)
        target = batch["target"]
        loss_sum += float(task_loss(spec, logits, target, reduction="sum"))
        if spec.kind == "causal-lm":
            count += int((target[:, 1:] != IGNORE_INDEX).sum())
        else:
            count += target.shape[0]
            preds.append(
                logits.squeeze(-1).float().cpu() if spec.kind == "regression" else logits.argmax(-1).cpu()
            )
            targets.append(target.cpu())
    model.train(was_training)
    loss = loss_sum / max(count, 1)
    if spec.kind == "causal-lm":
        return {"metric": loss, "loss": loss, "collapsed": not math.isfinite(loss)}
    pred = torch.cat(preds)
    metric = float(METRICS[spec.metric](pred, torch.cat(targets)))
    # Collapsed: the model answers like a constant predictor (one class for every example, or a
    # constant score), or its metric is not finite; such runs are kept out of claims (issue 15).
    constant = bool(pred.unique().numel() <= 1) if spec.kind != "regression" else float(pred.std()) < 1e-6
    return {"metric": metric, "loss": loss, "collapsed": constant or not math.isfinite(metric)}


def _lr_lambda(steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = int(math.ceil(warmup_ratio * steps))

    def f(i: int) -> float:  # i = number of optimizer steps taken so far
        if warmup > 0 and i < warmup:
            return (i + 1) / warmup
        return max(0.0, (steps - i) / max(1, steps - warmup))

    return f


# Data-driven inits calibrate on the run's first training examples (never dev data), in batches of
# 48: LoRA-SB's ~50 samples (REFERENCE.md), so the default (48 samples) is one batch, as before.
CALIBRATION_SAMPLES = 48
CALIBRATION_BATCH = 48


def calibration_losses(
    cfg: RunConfig, spec: TaskSpec, train: Encoder, order: torch.Tensor, device: torch.device
) -> list[Callable[[nn.Module], torch.Tensor]]:
    """One task-loss callable per calibration batch: the first ``cfg.extra["calibration_samples"]``
    (default 48) training examples in the run's own order, so calibration depends on the seed only."""
    from lowrank_lab.adapters import batch_losses

    n = int(cfg.extra.get("calibration_samples", CALIBRATION_SAMPLES))
    first = order.flatten()[: min(n, order.numel())].tolist()
    chunks = [first[i : i + CALIBRATION_BATCH] for i in range(0, len(first), CALIBRATION_BATCH)]

    def loss(model: nn.Module, idx: list[int]) -> torch.Tensor:
        batch = _to(train.collate(idx), device)
        return task_loss(spec, _forward(model, batch), batch["target"])

    return batch_losses(chunks, loss)


def prepare_model(
    cfg: RunConfig,
    spec: TaskSpec,
    model_factory: Callable[[], nn.Module],
    *,
    calibration: Callable[[nn.Module], torch.Tensor] | list | None,
    device: torch.device,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the base model (head drawn from the seeded global RNG), inject ``cfg.method`` and make
    the task head trainable. Returns the model and an info dict (init time, parameter counts)."""
    torch.manual_seed(cfg.seed)
    model = model_factory().to(device)
    if cfg.dtype == "bfloat16":
        model.to(torch.bfloat16)
    base_params = count_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    report = None
    with Stopwatch(device) as sw:
        if cfg.method != HEAD_ONLY:
            from lowrank_lab.adapters import get_adapter, inject

            kwargs: dict[str, Any] = dict(cfg.extra)
            kwargs.pop("calibration_samples", None)  # read by calibration_losses
            if cfg.method == "full":  # a study-wide --dora/--scaling does not apply to full fine-tuning
                kwargs.pop("dora", None)
                kwargs.pop("scaling_rule", None)
            if getattr(get_adapter(cfg.method), "needs_calibration", False):
                kwargs["calibration"] = calibration
            report = inject(
                model,
                cfg.method,
                rank=cfg.rank,
                alpha=cfg.alpha,
                targets=cfg.targets,
                generator=cfg.seed,
                **kwargs,
            )
    heads = head_parameters(model)
    for _, p in heads:
        p.requires_grad_(True)
    if cfg.dtype != "float32":  # the trained parameters stay float32 (PEFT's autocast_adapter_dtype)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    if cfg.gradient_checkpointing:
        _gradient_checkpointing(model)
    head_count = sum(p.numel() for _, p in heads)
    trainable = trainable_count(model)
    info = {
        "init_seconds": sw.seconds,
        "base_params": base_params,
        "trainable_params": trainable,
        "head_params": head_count,
        "adapter_params": trainable - head_count,
        "injection": _report_summary(report),
    }
    return model, info


def trainable_count(model: nn.Module) -> int:
    """Trainable parameters, through the adapters' own counter when the adapters layer is there."""
    try:
        from lowrank_lab.adapters import trainable_parameters
    except ImportError:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    return int(trainable_parameters(model))


def _report_summary(report: Any) -> dict[str, Any]:
    # The InjectionReport's totals (its per-module rows are many for big models: keep the count).
    if report is None:
        return {"method": HEAD_ONLY, "n_modules": 0}
    out: dict[str, Any] = {}
    for name in (
        "method",
        "rank",
        "alpha",
        "scaling",
        "trainable",
        "closed_form",
        "base_parameters",
        "init_seconds",
        "calibration_seconds",
        "wall_seconds",
    ):
        v = getattr(report, name, None)
        if isinstance(v, (int, float, str)):
            out[name] = v
    modules = getattr(report, "modules", None)
    if modules is not None:
        out["n_modules"] = len(modules)
    return out


def train_run(
    cfg: RunConfig,
    spec: TaskSpec,
    train: Encoder,
    eval_: Encoder,
    model_factory: Callable[[], nn.Module],
    *,
    resume: bool = False,
    **options: Any,
) -> RunRecord:
    """Train one (method, seed) run and return its record (:class:`~.record.RunRecord`):
    ``Trainer(cfg, spec, train, eval_, model_factory, **options).fit(resume=resume)``. The keyword
    ``options`` are :class:`Trainer`'s (``dev``, ``validation``, ``run_dir``, ``step_callback``,
    ``checkpoint_seconds``), described below; an unknown one is a TypeError, as before.

    Parameters
    ----------
    cfg : RunConfig
    spec : TaskSpec
    train, eval_ : Encoder
        Tokenised training pool and the split scored during training: the validation split carved
        from the training data (with ``dev``), or the dev set itself (without).
    dev : Encoder, optional
        The task's dev/test set, scored once after the last step (``cfg.eval_samples`` of it): the
        data claims are judged on, which nothing during training reads.
    validation : bool, optional
        Whether ``eval_`` is the validation split (scored whole; the record's ``val_metric`` and
        ``val_collapsed``). Default: when ``dev`` is given. Selection runs pass True without a
        ``dev``, so they never read the dev set.
    model_factory : callable
        Returns the pre-trained model with its task head, e.g. ``lambda: load_model("minilm", spec)``.
        Called after seeding torch's RNG with ``cfg.seed``.
    run_dir : path, optional
        Where ``merged/`` (the merged fine-tuned model, ``save_pretrained``) goes when
        ``cfg.save_merged``; nothing is written without it.
    step_callback : callable, optional
        ``f(step, loss)`` after each step (progress bars).
    checkpoint_seconds : float
        With a ``run_dir``: save ``checkpoint.pt`` after the first step that ends this many seconds
        (wall) after the last save; 0 saves only on interruption. See :mod:`.checkpoint`.
    resume : bool
        Continue from ``run_dir``'s checkpoint when there is one (else start at step 0).

    Returns
    -------
    RunRecord
        ``status`` ("finished" | "diverged"), ``message`` (why it stopped), ``train_loss`` (one
        float per step done), ``evals`` (at step 0 = before training, every ``eval_every`` steps
        and at the last step), ``dev`` (after the last step, with a ``dev`` split),
        ``initial_metric``, ``val_metric``, ``final_metric`` (None unless finished), ``collapsed``,
        ``eval_n``; ``lr``, ``head_lr``; ``trainable_params`` = ``adapter_params`` +
        ``head_params``, ``base_params``, ``injection`` (the adapter's InjectionReport totals);
        ``init_seconds`` (inject, CUDA-synchronised), ``train_seconds`` (steps only),
        ``eval_seconds``, ``seconds_per_step``, ``run_seconds``; ``peak_memory_mb`` with
        ``memory_kind`` ("rss": the whole process, sampled every step; "cuda_max_allocated") and
        ``memory_start_mb``; ``merged_dir`` when weights were saved; ``resumed_at`` (the steps a
        checkpoint restored the run at; times and peak memory add up over those sessions).

    Raises
    ------
    Interrupted
        On KeyboardInterrupt (Ctrl-C; the CLI turns SIGTERM into one) after saving a checkpoint of
        the last finished step, unless the interruption came inside an optimizer update, where
        the last periodic checkpoint stands.
        :func:`~lowrank_lab.training.study.run_study` adds ``meta`` (command, versions, device,
        git commit) and ``wall_seconds`` when it writes ``run.json``.
    """
    return Trainer(cfg, spec, train, eval_, model_factory, **options).fit(resume=resume)


class Trainer:
    """One fine-tuning run in parts: :meth:`setup` (model, adapter, optimizer), :meth:`load` (a
    checkpoint), :meth:`start` (the step-0 evaluation and the clocks), :meth:`step` (one optimizer
    step), :meth:`evaluate`, :meth:`save` (a checkpoint), and :meth:`fit`, which runs them in order
    and returns the record. :func:`train_run` (the CLI and the study) is ``Trainer(...).fit()``;
    benchmarks/finetune_step.py times :meth:`step` itself, so the benchmark measures the very step
    the runs take. Parameters are those of :func:`train_run`; ``model`` replaces building and
    injecting one (a benchmark's PEFT model: trained by the same step).
    """

    def __init__(
        self,
        cfg: RunConfig,
        spec: TaskSpec,
        train: Encoder,
        eval_: Encoder,
        model_factory: Callable[[], nn.Module],
        *,
        dev: Encoder | None = None,
        validation: bool | None = None,
        run_dir: str | Path | None = None,
        step_callback: Callable[[int, float], None] | None = None,
        checkpoint_seconds: float = 0.0,
        model: nn.Module | None = None,
    ) -> None:
        self.cfg, self.spec, self.train_enc, self.eval_enc, self.dev_enc = cfg, spec, train, eval_, dev
        self.model_factory, self.given_model = model_factory, model
        self.step_callback, self.checkpoint_seconds = step_callback, checkpoint_seconds
        self.ckpt_dir = Path(run_dir) if run_dir is not None else None
        self.device = torch.device(cfg.device)
        self.lr = cfg.resolved_lr(spec.kind)
        self.head_lr = cfg.resolved_head_lr()
        self.order = batch_order(len(train), cfg.steps, cfg.batch_size, cfg.seed)  # (steps, B)
        n_eval = spec.default_eval_samples if cfg.eval_samples is None else cfg.eval_samples
        self.validation = dev is not None if validation is None else validation
        self.eval_idx = list(range(len(eval_))) if self.validation else eval_subset(len(eval_), n_eval)
        self.dev_idx = eval_subset(len(dev), n_eval) if dev is not None else []
        self.first_loss: float | None = None
        self.next_step = 1
        self.updating = False
        # Early stopping (cfg.patience): the best evaluation so far, its trainable weights (on the
        # CPU) and how many evaluations since have not beaten it by cfg.min_delta.
        self.best: dict[str, Any] | None = None
        self.bad_evals = 0

    # -- parts -------------------------------------------------------------------------------

    def setup(self) -> Trainer:
        """Seed, build the model with its adapter (or take the given one), the AdamW optimizer with
        its body and head groups, and the schedule; start the record."""
        cfg, spec, device = self.cfg, self.spec, self.device
        self.t_start = time.perf_counter()
        self.meter = MemoryMeter(device)

        # Data-driven inits (LoRA-SB, EVA, CorDA, LoRA-GA, ...) calibrate on the run's own first
        # training examples (calibration_losses): never the validation or dev data.
        calibration = calibration_losses(cfg, spec, self.train_enc, self.order, device)
        if self.given_model is None:
            model, info = prepare_model(cfg, spec, self.model_factory, calibration=calibration, device=device)
        else:
            model, info = self.given_model.to(device), {}
        self.model = model
        self.meter.sample()

        head_ids = {id(p) for _, p in head_parameters(model)}
        body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
        head = [p for p in model.parameters() if p.requires_grad and id(p) in head_ids]
        groups = [{"params": body, "lr": self.lr}, {"params": head, "lr": self.head_lr}]
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise ValueError(
                f"method {cfg.method!r} left no trainable parameter; check --targets {cfg.targets!r}"
            )
        self.params = body + head
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg.steps, cfg.warmup_ratio))
        self.record = RunRecord(
            config=cfg, status="running", lr=self.lr, head_lr=self.head_lr, resumed_at=[], **info
        )
        self.eval_seconds = 0.0
        # Seconds spent before this session's training clock starts: earlier sessions of this run (train,
        # eval, run) and, for eval, also the evaluations of this session that precede the first step.
        self.before = {"train": 0.0, "eval": 0.0, "run": 0.0}
        return self

    def load(self) -> bool:
        """Continue from ``run_dir``'s checkpoint if there is one (the evaluation an interruption cut
        short is redone); False when there is none."""
        if self.ckpt_dir is None or read_checkpoint_meta(self.ckpt_dir) is None:
            return False
        restored = load_checkpoint(self.ckpt_dir, self.device)
        self.first_loss, self.next_step = _restore(
            restored, self.cfg, self.named, self.opt, self.sched, self.record, self.meter, self.ckpt_dir
        )
        self.before.update(restored["seconds"])
        self.eval_seconds = self.before["eval"]
        self.best, self.bad_evals = restored.get("best"), int(restored.get("bad_evals") or 0)
        done = self.next_step - 1
        if done > 0 and self._eval_due(done) and self.record.evals[-1].step != done:
            self.evaluate("eval", done)  # the interruption came during this evaluation
            self.before["eval"] = self.eval_seconds  # it ran before the training clock starts: not step time
        set_rng_state(restored["rng"], self.device)
        return True

    def start(self, *, fresh: bool = True, evaluate: bool = True) -> None:
        """Before the first step of this session: for a fresh run the step-0 evaluation and the
        dropout seed (the same stream for every method of a seed); then the training clock."""
        if fresh:
            if evaluate:
                self.evaluate("eval", 0)
            self.before["eval"] = self.eval_seconds  # before the training clock starts: not step time
            torch.manual_seed(self.cfg.seed)
        self.model.train()
        self.rng_committed = rng_state(self.device)  # as it stands after the last finished step
        synchronize(self.device)
        self.t_train = time.perf_counter()
        self.last_save = self.t_train

    def step(self, step: int | None = None) -> float:
        """One optimizer step on the batch of ``step`` (default: the next); returns its loss.

        Raises :class:`Diverged` on a non-finite or exploding loss or a non-finite gradient norm.
        """
        cfg, device = self.cfg, self.device
        step = self.next_step if step is None else step
        batch = _to(self.train_enc.collate(self.order[(step - 1) % len(self.order)].tolist()), device)
        with precision(cfg, device):
            loss = task_loss(self.spec, _forward(self.model, batch), batch["target"])
        value = float(loss.detach())
        if self.first_loss is None:
            self.first_loss = value
        limit = cfg.explode_factor * max(self.first_loss, 1e-3)
        if not math.isfinite(value) or value > limit:
            what = (
                "is not finite"
                if not math.isfinite(value)
                else f"exceeds {cfg.explode_factor:g} × the first loss {self.first_loss:.4g}"
            )
            raise Diverged(
                f"{cfg.method} (seed {cfg.seed}) stopped at step {step}: training loss {value:.4g} {what}; "
                f"lower --lr (was {self.lr:g}) or check the adapter init",
                step,
            )
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
        if not math.isfinite(gnorm):
            raise Diverged(
                f"{cfg.method} (seed {cfg.seed}) stopped at step {step}: gradient norm is {gnorm}; "
                f"lower --lr (was {self.lr:g}) or check the adapter init",
                step,
            )
        self.updating = True  # from here to the append, parameters and record disagree
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.record.train_loss.append(value)
        self.updating = False
        self.rng_committed = rng_state(device)
        self.meter.sample()
        self.next_step = step + 1
        return value

    def evaluate(self, split: str = "eval", step: int | None = None) -> dict[str, float]:
        """Score the split scored during training (``"eval"``: appended to the record's curve at
        ``step``) or the dev set (``"dev"``: the record's ``dev``, with exact match under
        ``--eval generate``)."""
        enc, idx = (self.eval_enc, self.eval_idx) if split == "eval" else (self.dev_enc, self.dev_idx)
        if enc is None:
            raise ValueError(f"this run has no {split} split to evaluate")
        with Stopwatch(self.device) as sw, precision(self.cfg, self.device):
            res = evaluate(
                self.model, self.spec, enc, idx, batch_size=self.cfg.eval_batch_size, device=self.device
            )
        self.eval_seconds += sw.seconds
        if split == "eval":
            self.record.evals.append(EvalPoint(step=step, **res, seconds=round(sw.seconds, 4)))
            self.meter.sample()
            if self.cfg.early_stopping:
                self._track_best(int(step or 0), self.record.evals[-1])
            return res
        dev = DevScore(step=len(self.record.train_loss), **res, n=len(idx), seconds=round(sw.seconds, 4))
        self.record.dev = dev
        if self.cfg.eval_mode == "generate":
            from .generate import exact_match

            with Stopwatch(self.device) as sw, precision(self.cfg, self.device):
                dev.exact_match = exact_match(self.model, enc, idx, device=self.device)
            dev.generate_seconds = round(sw.seconds, 4)
            self.record.final_metric_name = "exact_match"
        return res

    def _track_best(self, step: int, point: EvalPoint) -> None:
        """Keep the weights of the best evaluation so far; count the evaluations that did not beat
        it by more than ``cfg.min_delta`` in the task metric's direction (a NaN never does)."""
        value = float(point.metric)
        if self.best is None:
            better = math.isfinite(value)
        else:
            gain = value - self.best["metric"] if self.spec.higher_is_better else self.best["metric"] - value
            better = math.isfinite(value) and gain > self.cfg.min_delta
        if better:
            params = {n: p.detach().to("cpu", copy=True) for n, p in self.named}
            self.best = {"step": step, "metric": value, "collapsed": point.collapsed, "params": params}
            self.bad_evals = 0
        else:
            self.bad_evals += 1

    def plateaued(self) -> bool:
        """Early stopping is on and ``cfg.patience`` evaluations in a row did not beat the best."""
        return self.cfg.early_stopping and self.bad_evals >= int(self.cfg.patience)  # type: ignore[arg-type]

    def restore_best(self) -> None:
        """Put the best evaluation's weights back (early stopping keeps them, not the last step's)."""
        if self.best is None:
            return
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(self.best["params"][n].to(p.device))

    def _eval_due(self, step: int) -> bool:
        every = self.cfg.eval_every
        return (every > 0 and step % every == 0) or step == self.cfg.steps

    def _seconds_so_far(self) -> dict[str, float]:
        session = time.perf_counter() - self.t_train - (self.eval_seconds - self.before["eval"])
        return {
            "train": self.before["train"] + session,
            "eval": self.eval_seconds,
            "run": self.before["run"] + time.perf_counter() - self.t_start,
        }

    def save(self) -> Path:
        """Write ``run_dir/checkpoint.pt`` of the last finished step (:mod:`.checkpoint`)."""
        assert self.ckpt_dir is not None
        step = len(self.record.train_loss)
        state = {
            "config": self.cfg.to_dict(),
            "step": step,
            "params": {n: p.detach() for n, p in self.named},
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": self.rng_committed,
            "first_loss": self.first_loss,
            "train_loss": self.record.train_loss,
            "eval": [e.to_dict() for e in self.record.evals],
            "resumed_at": self.record.resumed_at,
            "seconds": self._seconds_so_far(),
            "peak_memory": self.meter.peak,
            "best": self.best,
            "bad_evals": self.bad_evals,
        }
        meta = {"config": self.cfg.to_dict(), "lr": self.lr, "head_lr": self.head_lr, "step": step,
                "seconds": state["seconds"]}  # fmt: skip
        return save_checkpoint(self.ckpt_dir, state, meta)

    # -- the whole run ---------------------------------------------------------------------------

    def fit(self, *, resume: bool = False) -> RunRecord:
        """Run every step with its evaluations and checkpoints; return the record (see
        :func:`train_run`)."""
        cfg, record = self.cfg, None
        self.setup()
        record = self.record
        restored = resume and self.load()
        self.start(fresh=not restored)
        try:
            for step in range(self.next_step, cfg.steps + 1):
                value = self.step(step)
                if self.step_callback is not None:
                    self.step_callback(step, value)
                if self._eval_due(step):
                    self.evaluate("eval", step)
                    if self.plateaued():
                        break
                now = time.perf_counter()
                periodic = 0 < self.checkpoint_seconds <= now - self.last_save
                if self.ckpt_dir is not None and periodic and step < cfg.steps:
                    self.save()
                    self.last_save = time.perf_counter()
            record.status = "finished"
            if cfg.early_stopping:
                record.stop_reason = "plateau" if self.plateaued() else "budget"
                record.best_step = self.best["step"] if self.best is not None else None
                self.restore_best()
        except Diverged as exc:
            record.status = "diverged"
            record.message = str(exc)
            record.diverged_step = exc.step
        except KeyboardInterrupt:
            done = len(record.train_loss)
            where = f"{cfg.method} (seed {cfg.seed}) interrupted after step {done} of {cfg.steps}"
            if self.ckpt_dir is None or done == 0:
                raise Interrupted(f"{where}; nothing was saved (no run directory or no step yet)") from None
            if self.updating:
                kept = read_checkpoint_meta(self.ckpt_dir)
                at = f"the checkpoint of step {kept['step']}" if kept else "step 0 (no checkpoint yet)"
                raise Interrupted(
                    f"{where}, inside an optimizer update; --resume restarts from {at}"
                ) from None
            path = self.save()
            raise Interrupted(f"{where}; saved {path}; rerun with --resume to continue from there") from None
        synchronize(self.device)
        train_seconds = self._seconds_so_far()["train"]

        if record.finished and self.dev_enc is not None:
            self.evaluate("dev")

        model = self.model
        if record.finished and cfg.save_merged and self.ckpt_dir is not None:
            with Stopwatch(self.device) as sw:
                if cfg.method != HEAD_ONLY:
                    from lowrank_lab.adapters import merge

                    model = merge(model) or model
                model.save_pretrained(self.ckpt_dir / "merged")
            record.merged_dir = "merged"
            record.save_seconds = round(sw.seconds, 3)
        return self._finish(train_seconds)

    def _finish(self, train_seconds: float) -> RunRecord:
        record, evals = self.record, self.record.evals
        record.initial_metric = evals[0].metric if evals else None
        done = record.finished and len(evals) > 1
        # The evaluation whose weights the run kept: the last, or the best one under early stopping.
        kept = evals[-1] if evals else None
        if done and self.cfg.early_stopping and self.best is not None:
            kept = next(e for e in evals if e.step == self.best["step"])
        if self.validation:  # validation during training, dev (if scored) at the end
            record.val_metric = kept.metric if done else None
            record.val_collapsed = bool(kept.collapsed) if done else None
            dev = record.dev
            if dev is not None:
                generated = record.final_metric_name == "exact_match"
                record.final_metric = dev.exact_match if generated else dev.metric
                record.collapsed = bool(dev.collapsed)
        else:
            record.final_metric = kept.metric if done else None
            record.collapsed = bool(kept.collapsed) if done else None
        record.steps_done = len(record.train_loss)
        record.eval_n = len(self.eval_idx)
        record.train_seconds = round(train_seconds, 3)
        record.eval_seconds = round(self.eval_seconds, 3)
        record.seconds_per_step = round(train_seconds / max(1, record.steps_done), 5)
        record.peak_memory_mb = round(self.meter.peak_mb(), 1)
        record.memory_kind = self.meter.kind
        record.memory_start_mb = round(self.meter.start / 2**20, 1)  # RSS: the process before this run
        record.run_seconds = round(self.before["run"] + time.perf_counter() - self.t_start, 3)
        return record


def _restore(
    state: dict[str, Any],
    cfg: RunConfig,
    named: list[tuple[str, nn.Parameter]],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    record: RunRecord,
    meter: MemoryMeter,
    ckpt_dir: Path | None,
) -> tuple[float | None, int]:
    """Load a checkpoint's parameters, optimizer, schedule and record; returns (first loss, next step)."""
    where = Path(ckpt_dir or ".") / CHECKPOINT
    if cfg.differences(state["config"]):
        raise ValueError(f"{where} belongs to another run ({state['config']}); delete it to restart")
    want, got = {n for n, _ in named}, set(state["params"])
    if want != got:
        odd = sorted(want ^ got)
        raise ValueError(
            f"{where} does not match the trainable parameters of the rebuilt {cfg.method} model "
            f"({len(odd)} differ, e.g. {odd[:3]}); delete it to restart that run from step 0"
        )
    with torch.no_grad():
        for n, p in named:
            p.copy_(state["params"][n])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    record.train_loss = list(state["train_loss"])
    record.evals = [EvalPoint.from_dict(e) for e in state["eval"]]
    record.resumed_at = [*state["resumed_at"], int(state["step"])]
    meter.peak = max(meter.peak, int(state["peak_memory"]))
    return state["first_loss"], int(state["step"]) + 1
