"""A study: every (seed, method) run of one task, records on disk, then summary and figures.

Layout of ``--out``::

    runs/<method>-r<rank>-seed<seed>/run.json   one record per run (config, curves, timings, memory)
    runs/<method>-r<rank>-seed<seed>/merged/    merged fine-tuned model (save_pretrained, safetensors)
    runs.csv                                   one row per run, appended and flushed as runs finish
    curves.csv                                 long format: method, seed, step, series, value
    summary.md                                 tables, claim verdicts, figures
    figures/loss_curves.png, eval_curves.png, metric_vs_params.png

Runs go seed-major (all methods of seed 0, then seed 1, ...) so an interrupted study already
compares every method. A run's record is written atomically when it ends; with ``resume=True``
finished or diverged runs with the same config are skipped (a different config is an error, so a
resumed study never mixes settings), failed or missing runs are (re)done, and a run that was
interrupted continues from its ``runs/<run>/checkpoint.pt`` (see :mod:`.checkpoint`).
"""

from __future__ import annotations

import gc
import json
import math
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lowrank_lab.utils.provenance import run_metadata, write_run_json
from lowrank_lab.utils.tables import RowWriter, ensure_writable_dir

from . import figures as figs
from .batching import Encoder, batch_order, eval_subset
from .checkpoint import CHECKPOINT_META, read_checkpoint_meta, remove_checkpoint
from .config import RunConfig
from .loop import train_run
from .models import load_model, load_tokenizer
from .summary import (
    curves_frame,
    final_loss,
    load_records,
    loss_auc,
    loss_threshold,
    method_rows,
    render_summary,
)
from .tasks import TaskSpec, get_task, load_examples

RUN_COLUMNS = [
    "task",
    "model",
    "method",
    "rank",
    "seed",
    "status",
    "lr",
    "initial_metric",
    "final_metric",
    "final_train_loss",
    "loss_auc",
    "steps_done",
    "trainable_params",
    "adapter_params",
    "init_seconds",
    "train_seconds",
    "eval_seconds",
    "seconds_per_step",
    "peak_memory_mb",
    "memory_kind",
    "run_dir",
    "message",
]
RUN_KEY = ["method", "rank", "seed"]
SCHEMA = "lowrank_lab.finetune.run/1"


class StudyResumeError(ValueError):
    """``--resume`` found a run made with different settings."""


def run_dir_for(out: Path, cfg: RunConfig) -> Path:
    return out / "runs" / cfg.run_name()


def read_record(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "run.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # written atomically, so only a foreign file can be torn
        return None


def _csv_row(rec: dict[str, Any], out: Path) -> dict[str, Any]:
    c = rec["config"]
    return {
        "task": c["task"],
        "model": c["model"],
        "method": c["method"],
        "rank": c["rank"],
        "seed": c["seed"],
        "status": rec["status"],
        "lr": rec.get("lr"),
        "initial_metric": rec.get("initial_metric"),
        "final_metric": rec.get("final_metric"),
        "final_train_loss": final_loss(rec["train_loss"]) if rec.get("train_loss") else None,
        "loss_auc": loss_auc(rec["train_loss"]) if rec.get("train_loss") else None,
        "steps_done": rec.get("steps_done"),
        "trainable_params": rec.get("trainable_params"),
        "adapter_params": rec.get("adapter_params"),
        "init_seconds": rec.get("init_seconds"),
        "train_seconds": rec.get("train_seconds"),
        "eval_seconds": rec.get("eval_seconds"),
        "seconds_per_step": rec.get("seconds_per_step"),
        "peak_memory_mb": rec.get("peak_memory_mb"),
        "memory_kind": rec.get("memory_kind"),
        "run_dir": str(run_dir_for(out, RunConfig.from_dict(c)).relative_to(out)),
        "message": rec.get("message", ""),
    }


def run_study(
    base: RunConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    data_dir: str | Path,
    out: str | Path,
    resume: bool = False,
    argv: Sequence[str] | None = None,
    loss_threshold_override: float | None = None,
    progress: bool | None = None,
    model_factory: Callable[[], Any] | None = None,
    tokenizer: Any = None,
    log: Callable[[str], None] | None = None,
    notes: Sequence[str] = (),
    checkpoint_seconds: float = 120.0,
) -> dict[str, Any]:
    """Run ``methods`` × ``seeds`` on ``base.task`` and write the study files (see module docstring).

    Parameters
    ----------
    base : RunConfig
        Settings shared by all runs (its ``method``/``seed`` are replaced per run).
    methods, seeds : sequences
        Adapter registry names (plus ``full`` and the ``head`` control) and integer seeds.
    data_dir, out : paths
        Where the task's files are, and the study directory.
    resume : bool
        Skip runs whose record exists with the same config; continue interrupted ones from their
        checkpoint. The summary then covers every run under ``out/runs``, including those of earlier
        calls with other methods or seeds.
    progress : bool or None
        tqdm bars; None shows them only on a terminal.
    model_factory, tokenizer : optional
        Replace :func:`~.models.load_model` / :func:`~.models.load_tokenizer` (tests use tiny models).
    log : callable
        Where messages go (default: ``tqdm.write`` to stderr).
    checkpoint_seconds : float
        Wall seconds between a run's checkpoints (0: only when interrupted). The default costs
        under 1% of a run: saving full fine-tuning's 260 MB of MiniLM weights and AdamW moments
        takes about a second.

    Returns
    -------
    dict with ``records`` (list), ``summary`` (path), ``failed`` (count of failed runs).
    """
    spec: TaskSpec = get_task(base.task)
    say = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    disable = None if progress is None else (not progress)

    train_ex = load_examples(spec, data_dir, "train")
    eval_ex = load_examples(spec, data_dir, "eval")
    out = ensure_writable_dir(out)
    tok = tokenizer if tokenizer is not None else load_tokenizer(base.model, spec)
    max_len = base.max_length or spec.default_max_length
    train_enc = Encoder(spec, tok, max_len, train_ex)
    eval_enc = Encoder(spec, tok, max_len, eval_ex)
    factory = model_factory or (lambda: load_model(base.model, spec))

    configs = [replace(base, method=m, seed=int(s)) for s in seeds for m in methods]
    # Check resumable runs before any work: a mismatch must not surface after hours of training.
    done: dict[str, dict[str, Any]] = {}
    if resume:
        for cfg in configs:
            rdir = run_dir_for(out, cfg)
            rec = read_record(rdir)
            if rec is not None and rec.get("status") in ("finished", "diverged"):
                _check_same_settings(cfg, spec, rec, rdir)
                done[cfg.run_name()] = rec
            elif (meta := read_checkpoint_meta(rdir)) is not None:
                _check_same_settings(cfg, spec, meta, rdir / CHECKPOINT_META)

    # Tokenise every example any run will see before the first run: otherwise the first method of
    # each seed pays for it inside its step time (GSM8K with llama2.c's BPE: ~15 ms per example).
    n_eval = spec.default_eval_samples if base.eval_samples is None else base.eval_samples
    todo_seeds = sorted({c.seed for c in configs if c.run_name() not in done})
    train_enc.prepare(
        [
            i
            for s in todo_seeds
            for i in batch_order(len(train_enc), base.steps, base.batch_size, int(s)).flatten().tolist()
        ],
        desc=f"tokenize {spec.name} train",
        disable=disable,
    )
    if todo_seeds:
        eval_enc.prepare(
            eval_subset(len(eval_enc), n_eval), desc=f"tokenize {spec.name} eval", disable=disable
        )
    writer = RowWriter(out / "runs.csv", RUN_COLUMNS, RUN_KEY, resume=resume)
    records: list[dict[str, Any]] = []
    failed = 0
    bar = tqdm(configs, desc=f"{spec.name} runs", unit="run", disable=disable, file=sys.stderr)
    try:
        for cfg in bar:
            bar.set_postfix_str(cfg.run_name())
            rdir = run_dir_for(out, cfg)
            if cfg.run_name() in done:
                rec = done[cfg.run_name()]
                say(f"skip {cfg.run_name()}: already {rec['status']} (--resume)")
                if not writer.done(_csv_row(rec, out)):
                    writer.write(_csv_row(rec, out))
                records.append(rec)
                continue
            rec = _one_run(
                cfg, spec, train_enc, eval_enc, factory, rdir, argv, disable, resume, checkpoint_seconds, say
            )
            if rec["status"] == "diverged":
                say(f"DIVERGED: {rec['message']} — continuing with the other runs")
            elif rec["status"] == "failed":
                failed += 1
                say(f"FAILED: {rec['message']} — continuing with the other runs")
            writer.write(_csv_row(rec, out))
            records.append(rec)
    finally:
        bar.close()
        writer.close()

    if resume:
        # A study extended with --resume (more methods or seeds than an earlier call) holds runs this
        # call did not list: the summary covers every run in the folder, as --summary-only does.
        summary = summarize_existing(out, [], spec, threshold_override=loss_threshold_override, notes=notes)
    else:
        summary = write_study_outputs(
            out, records, methods, spec, argv=argv, threshold_override=loss_threshold_override, notes=notes
        )
    return {"records": records, "summary": summary, "failed": failed}


def _check_same_settings(cfg: RunConfig, spec: TaskSpec, stored: dict[str, Any], where: Path) -> None:
    """StudyResumeError unless ``stored`` (a run.json or checkpoint.json) has ``cfg``'s settings."""
    diff = cfg.differences(stored.get("config", {}))
    # Defaults can change between versions: compare the rates the run actually used.
    for key, want in (("lr", cfg.resolved_lr(spec.kind)), ("head_lr", cfg.resolved_head_lr())):
        if stored.get(key) is not None and float(stored[key]) != want:
            diff[f"{key} used"] = (stored[key], want)
    if diff:
        shown = ", ".join(f"{k}: stored {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise StudyResumeError(
            f"--resume: {where} was made with other settings ({shown}); "
            "use a new --out, or rerun without --resume to overwrite"
        )


def _one_run(
    cfg: RunConfig,
    spec: TaskSpec,
    train_enc: Encoder,
    eval_enc: Encoder,
    factory: Callable[[], Any],
    rdir: Path,
    argv: Sequence[str] | None,
    disable: bool | None,
    resume: bool,
    checkpoint_seconds: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    rdir.mkdir(parents=True, exist_ok=True)
    start_at = 0
    if not resume:
        remove_checkpoint(rdir)  # a fresh run must not leave an older run's state to resume from
    elif (ck := read_checkpoint_meta(rdir)) is not None:
        start_at = int(ck["step"])
        say(f"resume {cfg.run_name()} from its checkpoint at step {start_at} of {cfg.steps}")
    meta = run_metadata(list(argv) if argv is not None else None, seed=cfg.seed, device=cfg.device)
    t0 = time.perf_counter()
    rec = _train_with_bar(
        cfg, spec, train_enc, eval_enc, factory, rdir, disable, resume, checkpoint_seconds, start_at
    )
    rec = {"schema": SCHEMA, "config": cfg.to_dict(), **rec, "meta": meta}
    write_run_json(rdir / "run.json", rec, time.perf_counter() - t0)
    if rec["status"] in ("finished", "diverged"):
        remove_checkpoint(rdir)
    return json.loads((rdir / "run.json").read_text())


def _train_with_bar(
    cfg: RunConfig,
    spec: TaskSpec,
    train_enc: Encoder,
    eval_enc: Encoder,
    factory: Callable[[], Any],
    rdir: Path,
    disable: bool | None,
    resume: bool,
    checkpoint_seconds: float,
    start_at: int = 0,
) -> dict[str, Any]:
    """:func:`~.loop.train_run` under a step bar; an exception becomes a ``failed`` record (one broken
    method must not end a long study), an interruption propagates with its checkpoint saved."""
    gc.collect()  # the previous run's model must not count in this run's peak RSS
    steps = tqdm(
        total=cfg.steps,
        initial=start_at,
        desc=cfg.run_name(),
        unit="step",
        leave=False,
        disable=disable,
        file=sys.stderr,
    )

    def tick(step: int, loss: float) -> None:
        steps.update(1)
        if step % 10 == 0:
            steps.set_postfix(loss=f"{loss:.4f}")

    try:
        return train_run(
            cfg,
            spec,
            train_enc,
            eval_enc,
            factory,
            run_dir=rdir,
            step_callback=tick,
            checkpoint_seconds=checkpoint_seconds,
            resume=resume,
        )
    except Exception as exc:  # noqa: BLE001 - one broken method must not end a long study
        return {
            "status": "failed",
            "train_loss": [],
            "eval": [],
            "message": f"{cfg.method} (seed {cfg.seed}) failed: {type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    finally:
        steps.close()


def intruder_counts(out: Path, records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Intruder counts per method from ``out/intruders/<run>/intruders.csv``.

    Those files are what ``python -m lowrank_lab.intruders --base <model> --tuned runs/<run>
    --out intruders/<run>`` writes (see benchmarks/confirmation_study.sh): one row per (matrix,
    side, tuned singular vector) with a 0/1 ``intruder`` column at its ε. A run's count is the sum
    over matrices of the left-side intruders (the paper's definition).
    """
    import pandas as pd

    by_run = {RunConfig.from_dict(r["config"]).run_name(): r["config"]["method"] for r in records}
    counts: dict[str, list[float]] = {}
    for path in sorted(out.glob("intruders/*/intruders.csv")):
        method = by_run.get(path.parent.name)
        if method is None:
            continue
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError):
            continue
        if "intruder" not in df.columns:
            continue
        if "side" in df.columns:
            df = df[df["side"] == "left"]
        counts.setdefault(method, []).append(float(df["intruder"].sum()))
    return counts


def find_intruders(out: Path, records: list[dict[str, Any]]) -> str | None:
    """The intruder claim's line (``"verdict: evidence"``) from :func:`intruder_counts`, or None.

    Rule: LoRA's mean count vs full fine-tuning's; with two or more seeds each, confirmed when the
    difference exceeds 2 s.e. (as the other claims), else when LoRA's count is simply larger.
    """
    from .summary import _diff, stat, verdict

    counts = intruder_counts(Path(out), records)
    if not counts:
        return None
    if "lora" not in counts or "full" not in counts:
        missing = " and ".join(m for m in ("lora", "full") if m not in counts)
        found = ", ".join(f"{m} {stat(c).fmt('.1f')}" for m, c in counts.items())
        return f"not run: needs the intruder counts of {missing} as well; counted so far: {found}"
    lo, fu = stat(counts["lora"]), stat(counts["full"])
    d, se = _diff(lo, fu, None)
    if lo.mean == 0 and fu.mean == 0:
        v = "inconclusive"  # no method moved its top singular vectors: the test has no power here
    elif math.isfinite(se):
        v = verdict(d, se)
    else:
        v = "confirms" if d > 0 else "contradicts"
    listed = ", ".join(f"{m} {stat(c).fmt('.1f')}" for m, c in counts.items())
    none = ""
    if lo.mean == 0:
        none = "; LoRA shows no intruder dimension at this training length" + (
            " (nor does full fine-tuning: the updates are too small to rotate the top singular vectors)"
            if fu.mean == 0
            else ""
        )
    return (
        f"{v}: intruder dimensions (top-10 left singular vectors, ε as run) summed over matrices, "
        f"mean ± sd over seeds: {listed} (from intruders/<run>/intruders.csv){none}"
    )


def write_study_outputs(
    out: Path,
    records: list[dict[str, Any]],
    methods: Sequence[str],
    spec: TaskSpec,
    *,
    argv: Sequence[str] | None = None,
    threshold_override: float | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write curves.csv, the figures and summary.md from ``records``."""
    out = Path(out)
    curves_frame(records).to_csv(out / "curves.csv", index=False)
    title = f"Fine-tuning study: {spec.name}"
    fig_paths = []
    have = [r for r in records if r.get("train_loss")]
    if have:
        threshold, _ = loss_threshold(records, methods, threshold_override)
        rows = method_rows(records, methods, spec, threshold)
        fig_paths = [
            figs.loss_curves(
                have, methods, out / "figures" / "loss_curves.png", title=f"{title}: training loss"
            ),
            figs.eval_curves(
                have, methods, spec, out / "figures" / "eval_curves.png", title=f"{title}: eval"
            ),
            figs.metric_vs_params(
                rows,
                spec,
                out / "figures" / "metric_vs_params.png",
                title=f"{title}: metric vs trainable parameters",
            ),
        ]
    commands = sorted({r["meta"]["command"] for r in records if r.get("meta", {}).get("command")})
    if argv is not None:
        command = "python " + " ".join(shlex.quote(str(a)) for a in argv)
    else:
        command = "; ".join(commands) if commands else None
    text = render_summary(
        records,
        methods,
        spec,
        title=title,
        command=command,
        threshold_override=threshold_override,
        figures=[str(p.relative_to(out)) for p in fig_paths],
        intruders=find_intruders(out, records),
        notes=notes,
    )
    path = out / "summary.md"
    path.write_text(text)
    return path


def summarize_existing(out: str | Path, methods: Sequence[str], spec: TaskSpec, **kw: Any) -> Path:
    """Rebuild summary.md and figures from the run.json files already under ``out/runs``."""
    out = Path(out)
    recs = load_records(sorted((out / "runs").glob("*/run.json")))
    recs = [
        r
        for r in recs
        if r["config"]["task"] == spec.name and (not methods or r["config"]["method"] in methods)
    ]
    if not recs:
        raise FileNotFoundError(f"no run records for task {spec.name} under {out / 'runs'}")
    if not methods:
        # the order of the study's command, as runs.csv keeps it (else the directory order)
        order: list[str] = []
        csv_path = out / "runs.csv"
        if csv_path.is_file():
            import pandas as pd

            order = list(dict.fromkeys(pd.read_csv(csv_path)["method"].astype(str)))
        found = list(dict.fromkeys(r["config"]["method"] for r in recs))
        methods = [m for m in order if m in found] + [m for m in found if m not in order]
    return write_study_outputs(out, recs, methods, spec, **kw)


def rebuild_merged(
    out: str | Path,
    spec: TaskSpec,
    *,
    data_dir: str | Path | Any,
    runs: Sequence[str] = (),
    replace_different: bool = False,
    threads: int | None = None,
    progress: bool | None = None,
    model_factory: Callable[[], Any] | None = None,
    tokenizer: Any = None,
    log: Callable[[str], None] | None = None,
    argv: Sequence[str] | None = None,
    checkpoint_seconds: float = 120.0,
) -> dict[str, Any]:
    """Replay finished runs whose ``merged/`` is gone and save their merged weights again.

    ``merged/`` (about 90 MB per MiniLM run) is not committed, and a study run with
    ``--no-save-merged``, or copied without its weights, cannot be counted by
    :mod:`lowrank_lab.intruders`. Training here is deterministic (see :mod:`.loop`): the same config,
    data, torch build, thread count and CPU kernels give the same loss curve bit for bit, so a replay
    from the record's own config gives the run's weights. The replay is *checked*: its training loss
    at every step and its evaluations must equal the record's exactly. A kept replay adds
    ``merged_rebuilt`` (command, commit, date, CPU, threads, seconds) to ``run.json``; nothing else
    of the record changes.

    A replay that differs (another CPU type picks other vector kernels, whose float32 sums round
    differently: curves then part in the last bits within a few steps) is a new run of the same
    config, not the recorded one. By default its weights are deleted and the run is reported as
    failed with the first difference. With ``replace_different`` it *replaces* the record instead,
    so that record and weights stay one run: ``run.json`` becomes the replay's (with ``replaces``:
    the first difference and the old record's final metric, loss, commit and date), ``runs.csv``
    is rewritten from the records and ``summary.md`` rebuilt.

    Parameters
    ----------
    out : path
        The study directory (``runs/<run>/run.json``).
    runs : run names, optional
        Only these (e.g. ``lora-r8-seed1``); default every finished run of ``spec`` without ``merged/``.
        A listed run that has ``merged/`` already, or is not finished, is an error.
    replace_different : bool
        Keep a replay that differs from its record as the run's new record (see above).
    threads : int, optional
        torch threads for the replays; default each run's recorded ``meta.threads`` (the thread
        count is part of what makes CPU results bit-identical).
    model_factory, tokenizer, log, progress, checkpoint_seconds
        As for :func:`run_study`; an interrupted replay continues from its checkpoint.

    Returns
    -------
    dict with ``rebuilt`` (run names, replays identical to their record), ``replaced`` (run name ->
    the first difference), ``failed`` (run name -> message), ``summary`` (path when rebuilt, else None).
    """
    import torch

    out = Path(out)
    say = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    disable = None if progress is None else (not progress)
    records = {}
    for path in sorted((out / "runs").glob("*/run.json")):
        rec = read_record(path.parent)
        if rec is not None and rec.get("config", {}).get("task") == spec.name:
            records[path.parent.name] = rec
    if runs:
        unknown = [r for r in runs if r not in records]
        if unknown:
            raise FileNotFoundError(
                f"no run record {out / 'runs' / unknown[0] / 'run.json'} for task {spec.name}; "
                f"runs here: {', '.join(sorted(records)) or 'none'}"
            )
        for name in runs:
            if records[name].get("status") != "finished":
                raise ValueError(
                    f"{out / 'runs' / name} is {records[name].get('status')!r}, not finished: "
                    "only a finished run has merged weights to rebuild"
                )
            if (out / "runs" / name / "merged").is_dir():
                raise ValueError(f"{out / 'runs' / name / 'merged'} exists already; delete it to rebuild it")
        todo = list(runs)
    else:
        todo = [
            n
            for n, r in records.items()
            if r.get("status") == "finished" and not (out / "runs" / n / "merged").is_dir()
        ]
    result: dict[str, Any] = {"rebuilt": [], "replaced": {}, "failed": {}, "summary": None}
    if not todo:
        say(f"every finished {spec.name} run under {out / 'runs'} has its merged/ weights: nothing to do")
        return result

    train_ex = load_examples(spec, data_dir, "train")
    eval_ex = load_examples(spec, data_dir, "eval")
    encoders: dict[tuple[str, int], tuple[Encoder, Encoder]] = {}
    threads_before = torch.get_num_threads()
    bar = tqdm(todo, desc=f"{spec.name} rebuild merged", unit="run", disable=disable, file=sys.stderr)
    try:
        for name in bar:
            bar.set_postfix_str(name)
            rec = records[name]
            cfg = replace(RunConfig.from_dict(rec["config"]), save_merged=True)
            key = (cfg.model, cfg.max_length or spec.default_max_length)
            if key not in encoders:
                tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.model, spec)
                encoders[key] = (Encoder(spec, tok, key[1], train_ex), Encoder(spec, tok, key[1], eval_ex))
            torch.set_num_threads(int(threads or rec.get("meta", {}).get("threads") or threads_before))
            factory = model_factory or (lambda cfg=cfg: load_model(cfg.model, spec))
            rdir = out / "runs" / name
            outcome, detail = _replay_one(
                rec, cfg, spec, *encoders[key], factory, rdir, argv, disable, checkpoint_seconds,
                replace_different,
            )
            if outcome == "identical":
                result["rebuilt"].append(name)
                say(f"rebuilt {rdir / 'merged'} (replay identical to the record)")
            elif outcome == "replaced":
                result["replaced"][name] = detail
                say(f"replaced {rdir / 'run.json'} by its replay, which differs from it ({detail})")
            else:
                result["failed"][name] = detail
                say(f"FAILED: {detail}")
    finally:
        bar.close()
        torch.set_num_threads(threads_before)
        if result["replaced"]:  # records changed: the study's table and summary follow them
            rewrite_runs_csv(out)
            result["summary"] = summarize_existing(out, [], spec)
    return result


def _replay_mismatch(rec: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Where a replayed run's curve or evaluations first differ from its record (None: identical)."""
    old_loss, new_loss = rec.get("train_loss", []), new.get("train_loss", [])
    step = loss_difference(rec, new)["first_different_step"]
    if step is not None:
        a, b = old_loss[step - 1], new_loss[step - 1]
        return f"training loss at step {step}: recorded {a!r}, replayed {b!r}"
    if len(old_loss) != len(new_loss):
        return f"steps: recorded {len(old_loss)}, replayed {len(new_loss)}"
    old_eval, new_eval = rec.get("eval", []), new.get("eval", [])
    if [e["step"] for e in old_eval] != [e["step"] for e in new_eval]:
        return "the evaluation steps differ"
    for a, b in zip(old_eval, new_eval, strict=True):
        for key in ("metric", "loss"):
            if a.get(key) != b.get(key):
                return f"eval {key} at step {a['step']}: recorded {a.get(key)!r}, replayed {b.get(key)!r}"
    return None


def loss_difference(rec: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """How two runs' training losses differ: the first step where they do (None: at none) and the
    largest relative difference over the steps both have, ``|a − b| / |a|``."""
    pairs = list(zip(rec.get("train_loss", []), new.get("train_loss", []), strict=False))
    first = next((i + 1 for i, (a, b) in enumerate(pairs) if a != b), None)
    rel = max((abs(a - b) / abs(a) for a, b in pairs if a != 0), default=0.0)
    return {"first_different_step": first, "max_rel_loss_difference": float(f"{rel:.3g}")}


def _replay_one(
    rec: dict[str, Any],
    cfg: RunConfig,
    spec: TaskSpec,
    train_enc: Encoder,
    eval_enc: Encoder,
    factory: Callable[[], Any],
    rdir: Path,
    argv: Sequence[str] | None,
    disable: bool | None,
    checkpoint_seconds: float,
    replace_different: bool,
) -> tuple[str, str]:
    """Retrain one recorded run into ``rdir/merged``: ("identical" | "replaced" | "failed", detail)."""
    import shutil

    ck = read_checkpoint_meta(rdir)
    meta = run_metadata(list(argv) if argv is not None else None, seed=cfg.seed, device=cfg.device)
    t0 = time.perf_counter()
    start_at = int(ck["step"]) if ck else 0
    new = _train_with_bar(
        cfg, spec, train_enc, eval_enc, factory, rdir, disable, True, checkpoint_seconds, start_at
    )
    problem = _replay_mismatch(rec, new) if new["status"] == "finished" else new["message"]
    remove_checkpoint(rdir)
    made = rec.get("meta", {})
    if problem is None:
        rec["merged_rebuilt"] = {
            "command": meta["command"],
            "git_commit": meta["git_commit"],
            "started": meta["started"],
            "cpu": meta["cpu"],
            "threads": meta["threads"],
            "seconds": round(time.perf_counter() - t0, 3),
            "checked": f"training loss at all {len(rec['train_loss'])} steps and "
            f"{len(rec['eval'])} evaluations identical to the record",
        }
        write_run_json(rdir / "run.json", rec)
        return "identical", ""
    if replace_different and new["status"] == "finished":
        replaces = {
            "why": f"replay for merged/ weights differs from the record ({problem})",
            **loss_difference(rec, new),
            "final_metric": rec.get("final_metric"),
            "final_train_loss": final_loss(rec["train_loss"]),
            "git_commit": made.get("git_commit"),
            "started": made.get("started"),
            "platform": made.get("platform"),
            "cpu": made.get("cpu"),
        }
        fresh = {"schema": SCHEMA, "config": cfg.to_dict(), **new, "meta": meta, "replaces": replaces}
        write_run_json(rdir / "run.json", fresh, time.perf_counter() - t0)
        return "replaced", problem
    shutil.rmtree(rdir / "merged", ignore_errors=True)  # not the recorded run's weights
    return "failed", (
        f"{rdir.name}: the replay differs from its record ({problem}), so its weights were not kept. "
        f"Recorded with torch {made.get('versions', {}).get('torch')}, {made.get('threads')} thread(s) "
        f"on {made.get('cpu', 'an unrecorded CPU')}; replayed with torch {meta['versions']['torch']}, "
        f"{meta['threads']} thread(s) on {meta['cpu']}. CPU results are bit-identical only on the same "
        "CPU kernels: replay where the run was made, or keep the replay as the run's new record "
        "(--replace-different)."
    )


def rewrite_runs_csv(out: str | Path) -> Path:
    """Write ``out/runs.csv`` afresh from the run records, in its present row order (new runs last)."""
    import pandas as pd

    out = Path(out)
    found = {p.parent.name: read_record(p.parent) for p in sorted((out / "runs").glob("*/run.json"))}
    recs = {name: rec for name, rec in found.items() if rec is not None}
    order: list[str] = []
    path = out / "runs.csv"
    if path.is_file() and path.stat().st_size > 0:
        order = [str(d) for d in pd.read_csv(path)["run_dir"]]
    names = list(dict.fromkeys(Path(d).name for d in order if Path(d).name in recs))
    names += [n for n in recs if n not in names]
    tmp = path.with_suffix(".csv.tmp")
    with RowWriter(tmp, RUN_COLUMNS, RUN_KEY) as writer:
        writer.write_many(_csv_row(recs[n], out) for n in names)
    tmp.replace(path)
    return path
