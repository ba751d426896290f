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
    checkpoint_seconds: float = 0.0,
    resume: bool = False,
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
    checkpoint_seconds : float
        With a ``run_dir``: save ``checkpoint.pt`` after the first step that ends this many seconds
        (wall) after the last save; 0 saves only on interruption. See :mod:`.checkpoint`.
    resume : bool
        Continue from ``run_dir``'s checkpoint when there is one (else start at step 0).

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
        "cuda_max_allocated") and ``memory_start_mb``; ``merged_dir`` when weights were saved;
        ``resumed_at`` (the steps a checkpoint restored the run at; times and peak memory add up
        over those sessions).

    Raises
    ------
    Interrupted
        On KeyboardInterrupt (Ctrl-C; the CLI turns SIGTERM into one) after saving a checkpoint of
        the last finished step, unless the interruption came inside an optimizer update, where
        the last periodic checkpoint stands.
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

    calibration = calibration_losses(cfg, spec, train, order, device)

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
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.steps, cfg.warmup_ratio))
    ckpt_dir = Path(run_dir) if run_dir is not None else None
    restored = None
    if resume and ckpt_dir is not None and read_checkpoint_meta(ckpt_dir) is not None:
        restored = load_checkpoint(ckpt_dir, device)

    record: dict[str, Any] = {
        "status": "running",
        "message": "",
        "lr": lr,
        "head_lr": head_lr,
        "train_loss": [],
        "eval": [],
        "resumed_at": [],
        **info,
    }
    eval_seconds = 0.0
    # Seconds spent before this session's training clock starts: earlier sessions of this run (train,
    # eval, run) and, for eval, also the evaluations of this session that precede the first step.
    before = {"train": 0.0, "eval": 0.0, "run": 0.0}

    def run_eval(step: int) -> None:
        nonlocal eval_seconds
        with Stopwatch(device) as sw:
            res = evaluate(model, spec, eval_, eval_idx, batch_size=cfg.eval_batch_size, device=device)
        eval_seconds += sw.seconds
        record["eval"].append({"step": step, **res, "seconds": round(sw.seconds, 4)})
        meter.sample()

    def eval_due(step: int) -> bool:
        return (cfg.eval_every > 0 and step % cfg.eval_every == 0) or step == cfg.steps

    first_loss = None
    start = 1
    if restored is not None:
        first_loss, start = _restore(restored, cfg, named, opt, sched, record, meter, ckpt_dir)
        before.update(restored["seconds"])
        eval_seconds = before["eval"]
        if start > 1 and eval_due(start - 1) and record["eval"][-1]["step"] != start - 1:
            run_eval(start - 1)  # the interruption came during this evaluation
            before["eval"] = eval_seconds  # it ran before the training clock starts: not step time
        set_rng_state(restored["rng"], device)
        del restored
    else:
        run_eval(0)
        before["eval"] = eval_seconds  # before the training clock starts: not step time
        torch.manual_seed(cfg.seed)  # dropout masks: same stream for every method of this seed
    model.train()
    rng_committed = rng_state(device)  # as it stands after the last finished step
    updating = False
    synchronize(device)
    t_train = time.perf_counter()
    last_save = t_train

    def seconds_so_far() -> dict[str, float]:
        session = time.perf_counter() - t_train - (eval_seconds - before["eval"])
        return {
            "train": before["train"] + session,
            "eval": eval_seconds,
            "run": before["run"] + time.perf_counter() - t_start,
        }

    def save() -> Path:
        assert ckpt_dir is not None
        step = len(record["train_loss"])
        state = {
            "config": cfg.to_dict(),
            "step": step,
            "params": {n: p.detach() for n, p in named},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": rng_committed,
            "first_loss": first_loss,
            "train_loss": record["train_loss"],
            "eval": record["eval"],
            "resumed_at": record["resumed_at"],
            "seconds": seconds_so_far(),
            "peak_memory": meter.peak,
        }
        meta = {"config": cfg.to_dict(), "lr": lr, "head_lr": head_lr, "step": step}
        return save_checkpoint(ckpt_dir, state, meta)

    try:
        for step in range(start, cfg.steps + 1):
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
            updating = True  # from here to the append, parameters and record disagree
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            record["train_loss"].append(value)
            updating = False
            rng_committed = rng_state(device)
            meter.sample()
            if step_callback is not None:
                step_callback(step, value)
            if eval_due(step):
                run_eval(step)
            now = time.perf_counter()
            if ckpt_dir is not None and 0 < checkpoint_seconds <= now - last_save and step < cfg.steps:
                save()
                last_save = time.perf_counter()
        record["status"] = "finished"
    except Diverged as exc:
        record["status"] = "diverged"
        record["message"] = str(exc)
        record["diverged_step"] = exc.step
    except KeyboardInterrupt:
        done = len(record["train_loss"])
        where = f"{cfg.method} (seed {cfg.seed}) interrupted after step {done} of {cfg.steps}"
        if ckpt_dir is None or done == 0:
            raise Interrupted(f"{where}; nothing was saved (no run directory or no step yet)") from None
        if updating:
            kept = read_checkpoint_meta(ckpt_dir)
            at = f"the checkpoint of step {kept['step']}" if kept else "step 0 (no checkpoint yet)"
            raise Interrupted(f"{where}, inside an optimizer update; --resume restarts from {at}") from None
        path = save()
        raise Interrupted(f"{where}; saved {path}; rerun with --resume to continue from there") from None
    synchronize(device)
    train_seconds = seconds_so_far()["train"]

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
    record["run_seconds"] = round(before["run"] + time.perf_counter() - t_start, 3)
    return record


def _restore(
    state: dict[str, Any],
    cfg: RunConfig,
    named: list[tuple[str, nn.Parameter]],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    record: dict[str, Any],
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
    record["train_loss"] = list(state["train_loss"])
    record["eval"] = list(state["eval"])
    record["resumed_at"] = [*state["resumed_at"], int(state["step"])]
    meter.peak = max(meter.peak, int(state["peak_memory"]))
    return state["first_loss"], int(state["step"]) + 1
