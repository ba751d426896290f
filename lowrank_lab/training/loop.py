"""One fine-tuning run: seed, build the model, inject the adapter, train, evaluate, record.

The loop is deliberately plain (AdamW, linear warm-up/decay, gradient clipping; see
:mod:`lowrank_lab.training.config` for the sources of each setting) so that the only thing that
differs between the runs of a study is the adapter method.

Determinism on the CPU: torch's global RNG is seeded before the model is built (the task head's
init) and again before the first step (dropout), the adapter init gets its own generator seeded
with the run's seed, and the data order comes from :func:`~.batching.batch_order`. Two runs with
the same config therefore give bit-identical loss curves on the same machine and thread count.

Divergence: a loss that is NaN/Inf, or larger than ``explode_factor`` × the first step's loss, or a
non-finite gradient norm, stops the run with :class:`Diverged`, whose message names the method, seed
and step; the record keeps the curve up to that step and ``status="diverged"``.
"""

from __future__ import annotations

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
from .config import HEAD_ONLY, RunConfig
from .metrics import METRICS
from .models import count_parameters, head_parameters
from .tasks import TaskSpec


class Diverged(RuntimeError):
    """The training loss became NaN/Inf or exploded; the message names method, seed and step."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


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
        return {"metric": loss, "loss": loss}
    metric = METRICS[spec.metric](torch.cat(preds), torch.cat(targets))
    return {"metric": float(metric), "loss": loss}


def _lr_lambda(steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = int(math.ceil(warmup_ratio * steps))

    def f(i: int) -> float:  # i = number of optimizer steps taken so far
        if warmup > 0 and i < warmup:
            return (i + 1) / warmup
        return max(0.0, (steps - i) / max(1, steps - warmup))

    return f


def prepare_model(
    cfg: RunConfig,
    spec: TaskSpec,
    model_factory: Callable[[], nn.Module],
    *,
    calibration: Callable[[nn.Module], torch.Tensor] | None,
    device: torch.device,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the base model (head drawn from the seeded global RNG), inject ``cfg.method`` and make
    the task head trainable. Returns the model and an info dict (init time, parameter counts)."""
    torch.manual_seed(cfg.seed)
    model = model_factory().to(device)
    base_params = count_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    report = None
    with Stopwatch(device) as sw:
        if cfg.method != HEAD_ONLY:
            from lowrank_lab.adapters import get_adapter, inject

            kwargs: dict[str, Any] = dict(cfg.extra)
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
    run_dir: str | Path | None = None,
    step_callback: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train one (method, seed) run and return its record.

    Parameters
    ----------
    cfg : RunConfig
    spec : TaskSpec
    train, eval_ : Encoder
        Tokenised training pool and eval split of the task.
    model_factory : callable
        Returns the pre-trained model with its task head, e.g. ``lambda: load_model("minilm", spec)``.
        Called after seeding torch's RNG with ``cfg.seed``.
    run_dir : path, optional
        Where ``merged/`` (the merged fine-tuned model, ``save_pretrained``) goes when
        ``cfg.save_merged``; nothing is written without it.
    step_callback : callable, optional
        ``f(step, loss)`` after each step (progress bars).

    Returns
    -------
    dict
        ``status`` ("finished" | "diverged"), ``message`` (why it stopped), ``train_loss`` (one
        float per step done), ``eval`` (``{"step", "metric", "loss", "seconds"}`` at step 0 =
        before training, every ``eval_every`` steps and at the last step), ``initial_metric``,
        ``final_metric`` (None unless finished), ``eval_n``; ``lr``, ``head_lr``;
        ``trainable_params`` = ``adapter_params`` + ``head_params``, ``base_params``, ``injection``
        (the adapter's InjectionReport totals); ``init_seconds`` (inject, CUDA-synchronised),
        ``train_seconds`` (steps only), ``eval_seconds``, ``seconds_per_step``, ``run_seconds``;
        ``peak_memory_mb`` with ``memory_kind`` ("rss": the whole process, sampled every step;
        "cuda_max_allocated") and ``memory_start_mb``; ``merged_dir`` when weights were saved.
        :func:`~lowrank_lab.training.study.run_study` adds ``config``, ``meta`` (command,
        versions, device, git commit) and ``wall_seconds`` when it writes ``run.json``.
    """
    device = torch.device(cfg.device)
    t_start = time.perf_counter()
    lr = cfg.resolved_lr(spec.kind)
    head_lr = cfg.resolved_head_lr()
    order = batch_order(len(train), cfg.steps, cfg.batch_size, cfg.seed)  # (steps, B)
    n_eval = spec.default_eval_samples if cfg.eval_samples is None else cfg.eval_samples
    eval_idx = eval_subset(len(eval_), n_eval)
    meter = MemoryMeter(device)

    def calibration(model: nn.Module) -> torch.Tensor:
        # LoRA-SB's approximate first update uses ~50 training examples (REFERENCE.md): the run's
        # first 48 examples in its own order, so calibration depends on the seed only.
        batch = _to(train.collate(order.flatten()[: min(48, order.numel())].tolist()), device)
        return task_loss(spec, _forward(model, batch), batch["target"])

    model, info = prepare_model(cfg, spec, model_factory, calibration=calibration, device=device)
    meter.sample()

    head_ids = {id(p) for _, p in head_parameters(model)}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in model.parameters() if p.requires_grad and id(p) in head_ids]
    groups = [g for g in ({"params": body, "lr": lr}, {"params": head, "lr": head_lr}) if g["params"]]
    if not groups:
        raise ValueError(
            f"method {cfg.method!r} left no trainable parameter; check --targets {cfg.targets!r}"
        )
    params = body + head
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.steps, cfg.warmup_ratio))

    record: dict[str, Any] = {
        "status": "running",
        "message": "",
        "lr": lr,
        "head_lr": head_lr,
        "train_loss": [],
        "eval": [],
        **info,
    }
    eval_seconds = 0.0

    def run_eval(step: int) -> None:
        nonlocal eval_seconds
        with Stopwatch(device) as sw:
            res = evaluate(model, spec, eval_, eval_idx, batch_size=cfg.eval_batch_size, device=device)
        eval_seconds += sw.seconds
        record["eval"].append({"step": step, **res, "seconds": round(sw.seconds, 4)})
        meter.sample()

    run_eval(0)
    torch.manual_seed(cfg.seed)  # dropout masks: same stream for every method of this seed
    model.train()
    first_loss = None
    synchronize(device)
    t_train = time.perf_counter()
    try:
        for step in range(1, cfg.steps + 1):
            batch = _to(train.collate(order[step - 1].tolist()), device)
            loss = task_loss(spec, _forward(model, batch), batch["target"])
            value = float(loss.detach())
            if first_loss is None:
                first_loss = value
            limit = cfg.explode_factor * max(first_loss, 1e-3)
            if not math.isfinite(value) or value > limit:
                what = (
                    "is not finite"
                    if not math.isfinite(value)
                    else f"exceeds {cfg.explode_factor:g} × the first loss {first_loss:.4g}"
                )
                raise Diverged(
                    f"{cfg.method} (seed {cfg.seed}) stopped at step {step}: "
                    f"training loss {value:.4g} {what}; "
                    f"lower --lr (was {lr:g}) or check the adapter init",
                    step,
                )
            loss.backward()
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            if not math.isfinite(gnorm):
                raise Diverged(
                    f"{cfg.method} (seed {cfg.seed}) stopped at step {step}: gradient norm is {gnorm}; "
                    f"lower --lr (was {lr:g}) or check the adapter init",
                    step,
                )
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            record["train_loss"].append(value)
            meter.sample()
            if step_callback is not None:
                step_callback(step, value)
            if (cfg.eval_every > 0 and step % cfg.eval_every == 0) or step == cfg.steps:
                run_eval(step)
        record["status"] = "finished"
    except Diverged as exc:
        record["status"] = "diverged"
        record["message"] = str(exc)
        record["diverged_step"] = exc.step
    synchronize(device)
    train_seconds = time.perf_counter() - t_train - eval_seconds

    if record["status"] == "finished" and cfg.save_merged and run_dir is not None:
        with Stopwatch(device) as sw:
            if cfg.method != HEAD_ONLY:
                from lowrank_lab.adapters import merge

                model = merge(model) or model
            model.save_pretrained(Path(run_dir) / "merged")
        record["merged_dir"] = "merged"
        record["save_seconds"] = round(sw.seconds, 3)

    evals = record["eval"]
    record["initial_metric"] = evals[0]["metric"] if evals else None
    done = record["status"] == "finished" and len(evals) > 1
    record["final_metric"] = evals[-1]["metric"] if done else None
    record["steps_done"] = len(record["train_loss"])
    record["eval_n"] = len(eval_idx)
    record["train_seconds"] = round(train_seconds, 3)
    record["eval_seconds"] = round(eval_seconds, 3)
    record["seconds_per_step"] = round(train_seconds / max(1, record["steps_done"]), 5)
    record["peak_memory_mb"] = round(meter.peak_mb(), 1)
    record["memory_kind"] = meter.kind
    record["memory_start_mb"] = round(meter.start / 2**20, 1)  # RSS: the process before this run
    record["run_seconds"] = round(time.perf_counter() - t_start, 3)
    return record
