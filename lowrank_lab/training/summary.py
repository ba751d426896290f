"""Aggregate the run records of a study: per-method tables, curve statistics, the claims section.

Curve statistics (all on the per-step training loss of each run):

* **final loss** — mean of the last 10 % of the steps (one step's loss is one batch: noisy);
* **area under the loss curve** — the mean training loss over all steps (the area divided by the
  number of steps, so it reads in loss units; lower = faster convergence);
* **steps to threshold** — the first step at which the trailing moving average (window: 5 % of the
  steps) falls to the threshold; by default the threshold is the reference method's (LoRA's) mean
  final loss, i.e. "how many steps a method needs to get where LoRA ends".

* **still rising** — the least-squares slope of the held-out metric over the last four evaluations
  is above zero on its 95% interval, and early stopping did not end the run on a plateau
  (:func:`still_rising`).

Claim verdicts are those of :mod:`.claims` (seed-paired intervals, Holm-Bonferroni, minimum
effects, gates), the same rows ``python -m lowrank_lab.claims`` writes to reports/claims.csv.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lowrank_lab.utils.tables import to_markdown

from .config import HEAD_ONLY, LR_SOURCES, RunConfig, method_family
from .metrics import METRIC_LABELS
from .record import RunRecord, method_labeller
from .tasks import TaskSpec

REFERENCE_METHOD = "lora"


# ---------------------------------------------------------------------------------------------
# curve statistics


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first ``window − 1`` points average what exists so far).

    Each window is summed afresh with ``math.fsum`` (curves are a few hundred points): a running
    sum would leave round-off that makes a curve sitting exactly on a threshold miss it.
    """
    window = max(1, int(window))
    return [
        math.fsum(values[max(0, i + 1 - window) : i + 1]) / min(i + 1, window) for i in range(len(values))
    ]


def smoothing_window(steps: int) -> int:
    return max(1, steps // 20)


def final_loss(losses: Sequence[float]) -> float:
    """Mean of the last 10 % of the steps (at least one)."""
    if not losses:
        return float("nan")
    k = max(1, len(losses) // 10)
    return sum(losses[-k:]) / k


def loss_auc(losses: Sequence[float]) -> float:
    """Area under the per-step loss curve divided by the number of steps (= the mean loss)."""
    return sum(losses) / len(losses) if losses else float("nan")


#: "Still rising" (issue 30, point 8): the slope of the held-out metric over the run's last
#: ``RISING_EVALS`` evaluations, fitted by least squares with its 95% t interval (Student t on k - 2
#: degrees of freedom), lies above zero. Four points are the fewest that leave two degrees of freedom;
#: one comparison of the last evaluation with an earlier one (issue 15's rule) read noise as a trend.
RISING_EVALS = 4


@dataclass(frozen=True)
class Slope:
    """Least-squares slope of a metric against steps, in metric units per 1,000 steps, signed so
    that a positive slope is an improvement, with its 95% interval over ``n`` evaluations."""

    per_1k_steps: float
    low: float
    high: float
    n: int


def late_slope(rec: RunRecord, spec: TaskSpec, k: int = RISING_EVALS) -> Slope | None:
    """:class:`Slope` of ``rec``'s held-out metric over its last ``k`` evaluations (step 0 excluded);
    None with fewer than three such evaluations."""
    from scipy import stats as st

    pts = [(e.step, float(e.metric)) for e in rec.evals if e.step > 0 and math.isfinite(float(e.metric))]
    pts = pts[-k:]
    if len(pts) < 3:
        return None
    sign = 1.0 if spec.higher_is_better else -1.0
    xs = [x / 1000.0 for x, _ in pts]
    if len(set(xs)) < 2:
        return None
    n = len(pts)
    fit = st.linregress(xs, [sign * y for _, y in pts])  # least squares, with the slope's standard error
    b, half = float(fit.slope), float(st.t.ppf(0.975, n - 2)) * float(fit.stderr)
    return Slope(per_1k_steps=b, low=b - half, high=b + half, n=n)


def still_rising(rec: RunRecord, spec: TaskSpec) -> bool | None:
    """Whether ``rec`` had not reached its plateau: never for a run that early stopping ended on a
    plateau; otherwise the lower bound of :func:`late_slope` is above zero. None when the run has
    too few evaluations to fit a slope."""
    if rec.stop_reason == "plateau":
        return False
    slope = late_slope(rec, spec)
    return None if slope is None else slope.low > 0


def curve_split(records: Sequence[RunRecord]) -> str:
    """The split of the records' evaluation curves: ``"validation"`` since issue 15 (the records
    carry a separate dev score), ``"dev"`` for earlier records, which scored dev during training."""
    return "validation" if any(r.dev is not None for r in records) else "dev"


def steps_to_threshold(losses: Sequence[float], threshold: float, window: int | None = None) -> int | None:
    """First step (1-based) whose trailing moving average is ≤ ``threshold``; None if never."""
    if not losses or not math.isfinite(threshold):
        return None
    sm = moving_average(losses, window or smoothing_window(len(losses)))
    for i, v in enumerate(sm):
        if v <= threshold:
            return i + 1
    return None


# ---------------------------------------------------------------------------------------------
# tables


@dataclass
class Stat:
    mean: float
    sd: float
    n: int

    def se(self) -> float:
        return self.sd / math.sqrt(self.n) if self.n >= 2 else float("nan")

    def fmt(self, spec: str = ".4f") -> str:
        if self.n == 0 or not math.isfinite(self.mean):
            return "–"
        if self.n == 1:
            return format(self.mean, spec)
        return f"{format(self.mean, spec)} ± {format(self.sd, spec)}"


def stat(values: Iterable[float | None]) -> Stat:
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return Stat(float("nan"), float("nan"), 0)
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")
    return Stat(mean, sd, len(xs))


def loss_threshold(
    records: list[RunRecord], methods: Sequence[str], override: float | None = None
) -> tuple[float, str]:
    """The loss level for "steps to threshold" and a phrase saying where it comes from."""
    if override is not None:
        return float(override), "given with --loss-threshold"
    label = method_labeller(records)
    for ref in [REFERENCE_METHOD, *methods]:
        s = stat(final_loss(r.train_loss) for r in records if label(r) == ref and r.finished)
        if s.n:
            return s.mean, f"the mean final training loss of {ref}"
    return float("nan"), "no finished run"


def method_rows(
    records: list[RunRecord], methods: Sequence[str], spec: TaskSpec, threshold: float
) -> list[dict[str, Any]]:
    """One dict per method with the aggregated numbers (Stat objects and plain values)."""
    rows = []
    label = method_labeller(records)
    for m in methods:
        runs = [r for r in records if label(r) == m]
        fin = [r for r in runs if r.finished]
        steps_hit = [steps_to_threshold(r.train_loss, threshold) for r in fin]
        first = runs[0] if runs else None
        rows.append(
            {
                "method": m,
                "family": method_family(m.split("@")[0]) if m != HEAD_ONLY else HEAD_ONLY,
                "runs": len(runs),
                "finished": len(fin),
                "diverged": sum(r.status == "diverged" for r in runs),
                "failed": sum(r.status == "failed" for r in runs),
                "lr": None if first is None else first.head_lr if m == HEAD_ONLY else first.lr,
                "trainable_params": None if first is None else first.trainable_params,
                "adapter_params": None if first is None else first.adapter_params,
                "base_params": None if first is None else first.base_params,
                "metric": stat(r.final_metric for r in fin),
                "initial_metric": stat(r.initial_metric for r in runs),
                "final_loss": stat(final_loss(r.train_loss) for r in fin),
                "auc": stat(loss_auc(r.train_loss) for r in fin),
                "steps_to_threshold": stat(s for s in steps_hit if s is not None),
                "reached": sum(s is not None for s in steps_hit),
                "init_seconds": stat(r.init_seconds for r in runs),
                "seconds_per_step": stat(r.seconds_per_step for r in fin),
                "train_seconds": stat(r.train_seconds for r in fin),
                "peak_memory_mb": stat(r.peak_memory_mb for r in fin),
                "eval_n": None if first is None else first.eval_n,
                "val_metric": stat(r.val_metric for r in fin),
                "rising": sum(bool(still_rising(r, spec)) for r in fin),
                "collapsed": sum(bool(r.collapsed) for r in fin),
                "messages": [r.message for r in runs if r.message],
            }
        )
    return rows


def method_table(rows: list[dict[str, Any]], spec: TaskSpec) -> pd.DataFrame:
    """The per-method table of summary.md, as strings (mean ± sd over seeds)."""
    label = METRIC_LABELS[spec.metric]
    out = []
    for row in rows:
        base = row["base_params"] or 0
        tp = row["trainable_params"]
        out.append(
            {
                "method": row["method"],
                "lr": f"{row['lr']:g}" if row["lr"] is not None else "–",
                "seeds ok/run": f"{row['finished']}/{row['runs']}",
                "trainable (adapter + head)": f"{tp:,}" if tp is not None else "–",
                "% of base": f"{100 * tp / base:.3g}" if tp and base else "–",
                f"{label} at step 0": row["initial_metric"].fmt(),
                f"final {label}": row["metric"].fmt(),
                "final train loss": row["final_loss"].fmt(),
                "loss AUC / step": row["auc"].fmt(),
                "steps to threshold": (
                    f"{row['steps_to_threshold'].fmt('.0f')} ({row['reached']}/{row['finished']} reached)"
                    if row["finished"]
                    else "–"
                ),
                "still rising / collapsed": f"{row['rising']} / {row['collapsed']} of {row['finished']}",
                "init s": row["init_seconds"].fmt(".3f"),
                "s / step": row["seconds_per_step"].fmt(".3f"),
                "peak MB": row["peak_memory_mb"].fmt(".0f"),
            }
        )
    return pd.DataFrame(out)


def machines_line(records: Sequence[RunRecord]) -> str:
    """Where the runs were made: each (device, torch, CPU) with its number of runs, and the commits.

    A study extended over several sessions mixes machines; the CPU type matters because float32
    results differ in the last bits between CPUs (see ``finetune --rebuild-merged``)."""
    combos: dict[str, int] = {}
    commits: list[str] = []
    for r in records:
        m = r.meta
        key = f"{m.get('device')}, torch {m.get('versions', {}).get('torch')}, " + (
            m.get("cpu") or "CPU model not recorded"
        )
        combos[key] = combos.get(key, 0) + 1
        if m.get("git_commit"):
            sha = str(m["git_commit"])
            commits.append(sha[:7] + sha[40:])  # 40 hex digits, then "-dirty" when there is one
    where = "; ".join(f"{k} ({n} run{'s' if n != 1 else ''})" for k, n in combos.items())
    made = list(dict.fromkeys(commits))
    return f"{where}; commit{'s' if len(made) != 1 else ''} {', '.join(made) or 'not recorded'}"


def replaced_lines(records: Sequence[RunRecord], *, last_bits: float = 1e-5) -> list[str]:
    """A note on runs whose record a replay replaced (``finetune --rebuild-merged --replace-different``):
    which, from which steps their losses differ, by how much (runs within ``last_bits`` relative
    differ only by float32 rounding; larger ones are named), and how far their final metric moved."""
    replaced = [(r, r.replaces) for r in records if r.replaces]
    if not replaced:
        return []

    def name(r: RunRecord) -> str:
        return f"{r.method} seed {r.seed}"

    steps = sorted(
        int(was["first_different_step"]) for _, was in replaced if was.get("first_different_step") is not None
    )
    parted = ""
    if steps:
        span = f" {steps[0]}" if steps[0] == steps[-1] else f"s {steps[0]}–{steps[-1]}"
        parted = f" from step{span} on"
    rel = {name(r): was.get("max_rel_loss_difference") for r, was in replaced}
    known = {k: v for k, v in rel.items() if v is not None}
    small = [v for v in known.values() if v <= last_bits]
    big = {k: v for k, v in known.items() if v > last_bits}
    parts = []
    if small:
        parts.append(f"by at most {max(small):.1e} relative in {len(small)} of them (float32 rounding)")
    if big:
        parts.append("by more in " + ", ".join(f"{k} ({v:.1e})" for k, v in big.items()))
    size = (", " + "; ".join(parts)) if parts else ""
    deltas = [
        abs(r.final_metric - was["final_metric"])
        for r, was in replaced
        if r.final_metric is not None and was.get("final_metric") is not None
    ]
    change = (
        f". Their final metric moved by {sum(deltas) / len(deltas):.4f} on average (max {max(deltas):.4f}) "
        "from the first records, which `replaces` in each run.json keeps"
        if deltas
        else ""
    )
    return [
        f"- {len(replaced)} run{'s' if len(replaced) != 1 else ''} trained again for their merged weights "
        f"(`finetune --rebuild-merged --replace-different`; {', '.join(rel)}). On another CPU than the "
        f"first records', their training losses differ{parted}{size}, so the replays replace those "
        f"records{change}."
    ]


def render_summary(
    records: list[RunRecord],
    methods: Sequence[str],
    spec: TaskSpec,
    *,
    title: str,
    command: str | None,
    threshold_override: float | None = None,
    figures: Sequence[str] = (),
    claim_table: Sequence[dict[str, Any]] | None = None,
    selection: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The markdown text of ``summary.md``; ``claim_table`` is :func:`~.claims.claim_rows`."""
    threshold, why = loss_threshold(records, methods, threshold_override)
    rows = method_rows(records, methods, spec, threshold)
    table = method_table(rows, spec)
    cfg = records[0].config if records else RunConfig(task=spec.name, method=REFERENCE_METHOD)
    seeds = sorted({r.seed for r in records})
    label = METRIC_LABELS[spec.metric]
    lines = [f"# {title}", ""]
    lines += [f"- Command: `{command}`" if command else "- Command: (not recorded)"]
    lines += [
        f"- Task: {spec.description}; model `{cfg.model}`; rank {cfg.rank}, alpha "
        f"{cfg.alpha if cfg.alpha is not None else 'default (= rank)'}, targets "
        f"{cfg.targets or 'all linear targets of the family'}",
        f"- Schedule (same for every method): {cfg.steps} steps, batch {cfg.batch_size}, "
        f"max length {cfg.max_length or spec.default_max_length}, AdamW, warm-up "
        f"{cfg.warmup_ratio} then linear decay, grad-norm clip {cfg.max_grad_norm}, "
        f"seeds {', '.join(map(str, seeds))} (paired: one data order"
        f"{'' if spec.kind == 'causal-lm' else ', head init'} and dropout stream per seed); "
        f"{_held_out(records, rows, cfg, spec)}",
        f"- Head: {_head_line(cfg, spec)}",
        f"- Machine: {machines_line(records)}",
        *(
            [f"- Learning rates: {selection}"]
            if selection
            else ["- Learning rates per family: " + "; ".join(f"{k}: {v}" for k, v in LR_SOURCES.items())]
        ),
        _trains_line(records, spec),
        *replaced_lines(records),
        "",
        f"## {label} (mean ± sd over seeds) and convergence",
        "",
        to_markdown(table),
        f"Loss threshold for 'steps to threshold': {threshold:.4f} ({why}); smoothed with a trailing "
        "window of 5 % of the steps. Loss AUC / step = mean training loss over the run (lower = faster).",
        "",
        "## Paper claims at this scale",
        "",
        "The rules of `python -m lowrank_lab.claims` (lowrank_lab.training.stats.DECISION_RULE): gates "
        "first, seed-paired t intervals, Holm-Bonferroni per paper (here over this task alone; "
        "reports/claims.md holds each paper's family across its tasks), a minimum effect per measure.",
        "",
    ]
    if claim_table:
        shown = pd.DataFrame(
            {
                "claim": [c["claim"] for c in claim_table],
                "n": [c["n_seeds"] for c in claim_table],
                "effect [95% CI]": [_interval(c) for c in claim_table],
                "p1 / p2 (Holm)": [
                    f"{_num(c.get('p1_holm'), '.3g')} / {_num(c.get('p2_holm'), '.3g')}"
                    for c in claim_table
                ],
                "verdict": [c["verdict"] for c in claim_table],
                "gate": [c["gate_reason"] if c["gate"] != "pass" else "pass" for c in claim_table],
            }
        )
        lines += [to_markdown(shown), ""]
    else:
        lines += ["(no claim applies to the methods run here)", ""]
    if records and len(seeds) < 5:
        notes = [
            f"Reduced study: {len(seeds)} seed(s), where issue 15's protocol asks for at least 5 paired "
            "seeds (benchmarks/claims_study.sh); verdicts need 2 and are weak below 5.",
            *notes,
        ]
    problems = [m for r in rows for m in r["messages"]]
    if problems:
        lines += ["## Runs that stopped", ""] + [f"- {m}" for m in problems] + [""]
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _held_out(
    records: Sequence[RunRecord], rows: list[dict[str, Any]], cfg: RunConfig, spec: TaskSpec
) -> str:
    n = rows[0]["eval_n"] if rows else "?"
    dev = next((r.dev.n for r in records if r.dev is not None), None)
    every = cfg.eval_every
    # the split the records call "dev": GLUE's dev set, or a test split where the task has no dev (GSM8K)
    split = "test" if spec.hub_eval_split == "test" else "dev"
    if dev is None:  # records made before issue 15: dev scored during training
        return f"eval every {every} steps on {n} {split} examples (no validation split)"
    return (
        f"validation ({n} examples carved from the training data) every {every} steps; the {dev} {split} "
        "examples the claims read, once after the last step"
    )


def _trains_line(records: Sequence[RunRecord], spec: TaskSpec) -> str:
    """What trains besides the adapters: the task head of a classification or regression study,
    nothing for a causal language model (its own output layer scores the answer tokens)."""
    if spec.kind == "causal-lm":
        return (
            "- No task head: every method is scored by the model's own next-token loss on the answer "
            "tokens. `full` trains every linear map of the blocks (the embeddings, the norms and the "
            "output layer stay frozen)."
        )
    return (
        "- The task head (`classifier`) trains with every method (PEFT's `modules_to_save`) at one rate, "
        f"{records[0].head_lr if records else '?'}; 'trainable' counts it. `full` trains every "
        "linear map of the blocks plus the head (embeddings, LayerNorms and the pooler stay frozen)."
    )


def _head_line(cfg: RunConfig, spec: TaskSpec) -> str:
    if spec.kind == "causal-lm":
        return "the language model's own output layer, frozen for every method"
    pooling = cfg.pooling
    if pooling in (None, "native"):
        return "the architecture's own transformers classification head (for BERT: the pooler)"
    return f"{pooling} pooling of the last hidden states, then dropout and one linear map"


def _num(x: Any, spec: str = ".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _interval(c: dict[str, Any]) -> str:
    if c.get("effect") is None or not math.isfinite(c["effect"]):
        return "–"
    return f"{_num(c['effect'])} [{_num(c['ci_low'])}, {_num(c['ci_high'])}]"


def curves_frame(records: list[RunRecord]) -> pd.DataFrame:
    """Long format: method, seed, step, series (train_loss | eval_metric | eval_loss), value."""
    rows = []
    label = method_labeller(records)
    for r in records:
        m, s = label(r), r.seed
        for i, v in enumerate(r.train_loss, start=1):
            rows.append((m, s, i, "train_loss", v))
        for e in r.evals:
            rows.append((m, s, e.step, "eval_metric", e.metric))
            rows.append((m, s, e.step, "eval_loss", e.loss))
    return pd.DataFrame(rows, columns=["method", "seed", "step", "series", "value"])
