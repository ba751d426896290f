"""Replaying finished runs for their merged weights (``finetune --rebuild-merged``), checked bit for bit."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lowrank_lab.utils.lock import OutputLockedError

from .checkpoint import remove_checkpoint
from .config import CHECKPOINT_SECONDS, RunConfig
from .models import load_model
from .one_run import RunContext, run_one
from .outputs import rewrite_runs_csv, summarize_existing
from .record import RunRecord
from .scheduling import holder_text, run_lock
from .study_data import StudyData
from .summary import final_loss
from .tasks import TaskSpec


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
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
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
    say = log or _to_stderr
    disable = None if progress is None else (not progress)
    records, todo = _to_rebuild(out, spec, runs)
    result: dict[str, Any] = {"rebuilt": [], "replaced": {}, "failed": {}, "summary": None}
    if not todo:
        say(f"every finished {spec.name} run under {out / 'runs'} has its merged/ weights: nothing to do")
        return result
    splits: dict[tuple[str, int, int | None], StudyData] = {}
    threads_before = torch.get_num_threads()
    bar = tqdm(todo, desc=f"{spec.name} rebuild merged", unit="run", disable=disable, file=sys.stderr)
    try:
        for name in bar:
            bar.set_postfix_str(name)
            rec = records[name]
            cfg = replace(rec.config, save_merged=True)
            key = (cfg.model, cfg.max_length or spec.default_max_length, cfg.val_samples)
            if key not in splits:  # runs of one model and split share its tokenised data (and model)
                splits[key] = StudyData.load(spec, cfg, data_dir, tokenizer)
            model = splits[key].model or cfg.model  # resolved once per model, unless a tokenizer was given
            factory = model_factory or (lambda cfg=cfg, model=model: load_model(model, spec, cfg.pooling))
            ctx = RunContext(spec, splits[key], factory, argv, disable, checkpoint_seconds, say)
            torch.set_num_threads(int(threads or rec.meta.get("threads") or threads_before))
            outcome, detail = _replay_locked(rec, cfg, ctx, out / "runs" / name, replace_different)
            _report(result, name, outcome, detail, out / "runs" / name, say)
    finally:
        bar.close()
        torch.set_num_threads(threads_before)
        if result["replaced"]:  # records changed: the study's table and summary follow them
            rewrite_runs_csv(out)
            result["summary"] = summarize_existing(out, [], spec)
    return result


def _to_stderr(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def _to_rebuild(out: Path, spec: TaskSpec, runs: Sequence[str]) -> tuple[dict[str, RunRecord], list[str]]:
    """The task's run records under ``out/runs`` by name, and the names to replay: ``runs`` (each
    checked: recorded, finished, without ``merged/``), or every finished run without ``merged/``."""
    records = {}
    for path in sorted((out / "runs").glob("*/run.json")):
        rec = RunRecord.read(path)
        if rec is not None and rec.task == spec.name:
            records[path.parent.name] = rec
    if not runs:
        missing = [n for n, r in records.items() if r.finished and not (out / "runs" / n / "merged").is_dir()]
        return records, missing
    unknown = [r for r in runs if r not in records]
    if unknown:
        raise FileNotFoundError(
            f"no run record {out / 'runs' / unknown[0] / 'run.json'} for task {spec.name}; "
            f"runs here: {', '.join(sorted(records)) or 'none'}"
        )
    for name in runs:
        if not records[name].finished:
            raise ValueError(
                f"{out / 'runs' / name} is {records[name].status!r}, not finished: "
                "only a finished run has merged weights to rebuild"
            )
        if (out / "runs" / name / "merged").is_dir():
            raise ValueError(f"{out / 'runs' / name / 'merged'} exists already; delete it to rebuild it")
    return records, list(runs)


def _replay_locked(
    rec: RunRecord, cfg: RunConfig, ctx: RunContext, rdir: Path, replace_different: bool
) -> tuple[str, str]:
    """:func:`_replay_one` with the run folder's lock held; ("failed", why) when another process holds it."""
    lock = run_lock(rdir)
    try:
        lock.acquire()
    except OutputLockedError:
        return "failed", f"{rdir}: {holder_text(lock)} is using it; rebuild it when it is done"
    with lock:
        return _replay_one(rec, cfg, ctx, rdir, replace_different)


def _report(result: dict[str, Any], name: str, outcome: str, detail: str, rdir: Path, say: Any) -> None:
    """A replay's outcome into ``result``, and said."""
    if outcome == "identical":
        result["rebuilt"].append(name)
        say(f"rebuilt {rdir / 'merged'} (replay identical to the record)")
    elif outcome == "replaced":
        result["replaced"][name] = detail
        say(f"replaced {rdir / 'run.json'} by its replay, which differs from it ({detail})")
    else:
        result["failed"][name] = detail
        say(f"FAILED: {detail}")


def _replay_mismatch(rec: RunRecord, new: RunRecord) -> str | None:
    """Where a replayed run's curve or evaluations first differ from its record (None: identical)."""
    old_loss, new_loss = rec.train_loss, new.train_loss
    step = loss_difference(rec, new)["first_different_step"]
    if step is not None:
        a, b = old_loss[step - 1], new_loss[step - 1]
        return f"training loss at step {step}: recorded {a!r}, replayed {b!r}"
    if len(old_loss) != len(new_loss):
        return f"steps: recorded {len(old_loss)}, replayed {len(new_loss)}"
    old_eval, new_eval = rec.evals, new.evals
    if [e.step for e in old_eval] != [e.step for e in new_eval]:
        return "the evaluation steps differ"
    for a, b in zip(old_eval, new_eval, strict=True):
        for key in ("metric", "loss"):
            was, now = getattr(a, key), getattr(b, key)
            if was != now:
                return f"eval {key} at step {a.step}: recorded {was!r}, replayed {now!r}"
    return None


def loss_difference(rec: RunRecord, new: RunRecord) -> dict[str, Any]:
    """How two runs' training losses differ: the first step where they do (None: at none) and the
    largest relative difference over the steps both have, ``|a − b| / |a|``."""
    pairs = list(zip(rec.train_loss, new.train_loss, strict=False))
    first = next((i + 1 for i, (a, b) in enumerate(pairs) if a != b), None)
    rel = max((abs(a - b) / abs(a) for a, b in pairs if a != 0), default=0.0)
    return {"first_different_step": first, "max_rel_loss_difference": float(f"{rel:.3g}")}


def _replay_one(
    rec: RunRecord, cfg: RunConfig, ctx: RunContext, rdir: Path, replace_different: bool
) -> tuple[str, str]:
    """Retrain one recorded run into ``rdir/merged`` (from its checkpoint, if a replay was
    interrupted): ("identical" | "replaced" | "failed", detail)."""
    import shutil

    done = run_one(cfg, rdir, ctx, resume=True, write=False)
    new, meta = done.record, done.meta
    problem = _replay_mismatch(rec, new) if new.finished else new.message
    remove_checkpoint(rdir)
    made = rec.meta
    if problem is None:
        rec.merged_rebuilt = {
            "command": meta["command"],
            "git_commit": meta["git_commit"],
            "started": meta["started"],
            "cpu": meta["cpu"],
            "threads": meta["threads"],
            "seconds": round(done.seconds, 3),
            "checked": f"training loss at all {len(rec.train_loss)} steps and "
            f"{len(rec.evals)} evaluations identical to the record",
        }
        rec.write(rdir)
        return "identical", ""
    if replace_different and new.finished:
        replaces = {
            "why": f"replay for merged/ weights differs from the record ({problem})",
            **loss_difference(rec, new),
            "final_metric": rec.final_metric,
            "final_train_loss": final_loss(rec.train_loss),
            "git_commit": made.get("git_commit"),
            "started": made.get("started"),
            "platform": made.get("platform"),
            "cpu": made.get("cpu"),
        }
        new.meta, new.replaces = meta, replaces
        new.write(rdir, done.seconds)
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
