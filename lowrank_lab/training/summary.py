"""Aggregate the run records of a study: per-method tables, curve statistics and claim verdicts.

Curve statistics (all on the per-step training loss of each run):

* **final loss** — mean of the last 10 % of the steps (one step's loss is one batch: noisy);
* **area under the loss curve** — the mean training loss over all steps (the area divided by the
  number of steps, so it reads in loss units; lower = faster convergence);
* **steps to threshold** — the first step at which the trailing moving average (window: 5 % of the
  steps) falls to the threshold; by default the threshold is the reference method's (LoRA's) mean
  final loss, i.e. "how many steps a method needs to get where LoRA ends".

Claim verdicts use one rule, stated in ``summary.md``: with ``d`` the difference of two method
means in the claimed direction and ``se`` its standard error (``sqrt(sd_a²/n_a + sd_b²/n_b)``
over seeds), a claim is *confirmed* when ``d > 2·se``, *contradicted* when ``d < −2·se`` and
*inconclusive* otherwise. With one seed there is no seed spread: accuracy differences then use
the binomial standard error of the eval set (``sqrt(p(1−p)/N)`` per method, which ignores the
seed-to-seed variation and so over-states confidence), and other quantities are inconclusive.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lowrank_lab.utils.tables import to_markdown

from .config import LR_SOURCES, method_family
from .metrics import METRIC_LABELS
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
# loading


def load_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Read run.json files (missing ones are skipped)."""
    out = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            out.append(json.loads(p.read_text()))
    return out


def _method(r: dict[str, Any]) -> str:
    return r["config"]["method"]


def _finished(r: dict[str, Any]) -> bool:
    return r.get("status") == "finished"


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
    records: list[dict[str, Any]], methods: Sequence[str], override: float | None = None
) -> tuple[float, str]:
    """The loss level for "steps to threshold" and a phrase saying where it comes from."""
    if override is not None:
        return float(override), "given with --loss-threshold"
    for ref in [REFERENCE_METHOD, *methods]:
        s = stat(final_loss(r["train_loss"]) for r in records if _method(r) == ref and _finished(r))
        if s.n:
            return s.mean, f"the mean final training loss of {ref}"
    return float("nan"), "no finished run"


def method_rows(
    records: list[dict[str, Any]], methods: Sequence[str], spec: TaskSpec, threshold: float
) -> list[dict[str, Any]]:
    """One dict per method with the aggregated numbers (Stat objects and plain values)."""
    rows = []
    for m in methods:
        runs = [r for r in records if _method(r) == m]
        fin = [r for r in runs if _finished(r)]
        steps_hit = [steps_to_threshold(r["train_loss"], threshold) for r in fin]
        first = runs[0] if runs else {}
        rows.append(
            {
                "method": m,
                "family": method_family(m) if m != "head" else "head",
                "runs": len(runs),
                "finished": len(fin),
                "diverged": sum(r.get("status") == "diverged" for r in runs),
                "failed": sum(r.get("status") == "failed" for r in runs),
                "lr": first.get("lr"),
                "trainable_params": first.get("trainable_params"),
                "adapter_params": first.get("adapter_params"),
                "base_params": first.get("base_params"),
                "metric": stat(r["final_metric"] for r in fin),
                "initial_metric": stat(r.get("initial_metric") for r in runs),
                "final_loss": stat(final_loss(r["train_loss"]) for r in fin),
                "auc": stat(loss_auc(r["train_loss"]) for r in fin),
                "steps_to_threshold": stat(s for s in steps_hit if s is not None),
                "reached": sum(s is not None for s in steps_hit),
                "init_seconds": stat(r.get("init_seconds") for r in runs),
                "seconds_per_step": stat(r.get("seconds_per_step") for r in fin),
                "train_seconds": stat(r.get("train_seconds") for r in fin),
                "peak_memory_mb": stat(r.get("peak_memory_mb") for r in fin),
                "eval_n": first.get("eval_n"),
                "messages": [r.get("message") for r in runs if r.get("message")],
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
                "init s": row["init_seconds"].fmt(".3f"),
                "s / step": row["seconds_per_step"].fmt(".3f"),
                "peak MB": row["peak_memory_mb"].fmt(".0f"),
            }
        )
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------
# claims


def _diff(a: Stat, b: Stat, spec: TaskSpec | None, *, binomial_n: int | None = None) -> tuple[float, float]:
    """``a.mean − b.mean`` and its standard error (see the module docstring for the rule)."""
    d = a.mean - b.mean
    if a.n >= 2 and b.n >= 2:
        return d, math.sqrt(a.sd**2 / a.n + b.sd**2 / b.n)
    if spec is not None and spec.metric == "accuracy" and binomial_n:
        pa, pb = min(max(a.mean, 0.0), 1.0), min(max(b.mean, 0.0), 1.0)
        return d, math.sqrt(pa * (1 - pa) / binomial_n + pb * (1 - pb) / binomial_n)
    return d, float("nan")


def verdict(d: float, se: float) -> str:
    """confirms / contradicts / inconclusive for a difference ``d`` in the claimed direction."""
    if not math.isfinite(d):
        return "inconclusive"
    if not math.isfinite(se):
        return "inconclusive"
    if d > 2 * se:
        return "confirms"
    if d < -2 * se:
        return "contradicts"
    return "inconclusive"


def _combine(parts: Sequence[str]) -> str:
    if any(p == "contradicts" for p in parts):
        return "contradicts"
    if parts and all(p == "confirms" for p in parts):
        return "confirms"
    return "inconclusive"


def claims(rows: list[dict[str, Any]], spec: TaskSpec, intruders: str | None = None) -> list[dict[str, str]]:
    """One entry per paper claim: ``{"claim", "verdict", "evidence"}``."""
    by = {r["method"]: r for r in rows}
    sign = 1.0 if spec.higher_is_better else -1.0
    label = METRIC_LABELS[spec.metric]
    n_eval = next((r["eval_n"] for r in rows if r.get("eval_n")), None)
    out = []

    def have(*ms: str) -> bool:
        return all(m in by and by[m]["metric"].n > 0 for m in ms)

    def signed(s: Stat) -> Stat:
        return Stat(sign * s.mean, s.sd, s.n)

    # 1. NLoRA converges faster and ends higher than LoRA.
    c = "NLoRA converges faster and ends higher than LoRA (Guo et al. 2025)"
    if have("nlora", "lora"):
        a, b = by["nlora"], by["lora"]
        d_auc, se_auc = _diff(b["auc"], a["auc"], None)  # positive = NLoRA's area is smaller
        d_m, se_m = _diff(signed(a["metric"]), signed(b["metric"]), spec, binomial_n=n_eval)
        v_fast, v_end = verdict(d_auc, se_auc), verdict(d_m, se_m)
        ev = (
            f"loss AUC/step NLoRA {a['auc'].fmt()} vs LoRA {b['auc'].fmt()} (→ {v_fast}); "
            f"steps to threshold NLoRA {a['steps_to_threshold'].fmt('.0f')} "
            f"({a['reached']}/{a['finished']}) vs "
            f"LoRA {b['steps_to_threshold'].fmt('.0f')} ({b['reached']}/{b['finished']}); "
            f"final {label} NLoRA {a['metric'].fmt()} vs LoRA {b['metric'].fmt()}, "
            f"difference {sign * d_m:+.4f} ± {_fmt_se(se_m)} (→ {v_end})"
        )
        out.append({"claim": c, "verdict": _combine([v_fast, v_end]), "evidence": ev})
    else:
        out.append({"claim": c, "verdict": "not run", "evidence": "needs finished runs of nlora and lora"})

    # 2. IntTune keeps most of the gain with a tiny fraction of the parameters.
    c = "IntTune keeps most of the gain with a tiny fraction of the parameters (Guo et al. 2025)"
    if have("inttune", "lora"):
        a, b = by["inttune"], by["lora"]
        if "head" in by and by["head"]["metric"].n:
            base_stat, base_what = by["head"]["metric"], "training the head alone"
        else:
            base_stat, base_what = b["initial_metric"], "LoRA at step 0 (= the base model with a fresh head)"
        g_int = sign * (a["metric"].mean - base_stat.mean)
        g_lora = sign * (b["metric"].mean - base_stat.mean)
        frac = (a["adapter_params"] or 0) / b["adapter_params"] if b["adapter_params"] else float("nan")
        half = Stat(
            base_stat.mean + 0.5 * (b["metric"].mean - base_stat.mean), 0.5 * b["metric"].sd, b["metric"].n
        )
        d, se = _diff(signed(a["metric"]), signed(half), spec, binomial_n=n_eval)
        if b["metric"].n == 1 and spec.metric == "accuracy" and n_eval:
            # half-way point inherits half of LoRA's binomial error.
            p = min(max(a["metric"].mean, 0), 1)
            q = min(max(b["metric"].mean, 0), 1)
            se = math.sqrt(p * (1 - p) / n_eval + 0.25 * q * (1 - q) / n_eval)
        v = verdict(d, se) if g_lora > 0 else "inconclusive"
        if v == "confirms" and not (frac <= 0.1):
            v = "contradicts"
        ev = (
            f"gain over {base_what} ({base_stat.fmt()}): IntTune {g_int:+.4f}, LoRA {g_lora:+.4f} "
            f"→ IntTune keeps {_pct(g_int, g_lora)} of LoRA's gain with {frac:.2%} of its adapter parameters "
            f"({a['adapter_params']:,} vs {b['adapter_params']:,}); rule: 'most' = more than half, "
            f"beyond 2 s.e. ({_fmt_se(se)}), 'tiny' = at most 10 %"
        )
        if g_lora <= 0:
            ev += "; LoRA gained nothing here, so there is no gain to keep"
        out.append({"claim": c, "verdict": v, "evidence": ev})
    else:
        out.append({"claim": c, "verdict": "not run", "evidence": "needs finished runs of inttune and lora"})

    # 3. PiSSA beats LoRA.
    c = "PiSSA beats LoRA (Meng et al. 2024)"
    if have("pissa", "lora"):
        a, b = by["pissa"], by["lora"]
        d, se = _diff(signed(a["metric"]), signed(b["metric"]), spec, binomial_n=n_eval)
        d_auc, se_auc = _diff(b["auc"], a["auc"], None)
        ev = (
            f"final {label} PiSSA {a['metric'].fmt()} vs LoRA {b['metric'].fmt()}, difference "
            f"{sign * d:+.4f} ± {_fmt_se(se)}; loss AUC/step PiSSA {a['auc'].fmt()} vs LoRA {b['auc'].fmt()} "
            f"({verdict(d_auc, se_auc)} on convergence)"
        )
        out.append({"claim": c, "verdict": verdict(d, se), "evidence": ev})
    else:
        out.append({"claim": c, "verdict": "not run", "evidence": "needs finished runs of pissa and lora"})

    # 4. Intruder dimensions: LoRA has them, full fine-tuning does not.
    c = "LoRA leaves intruder dimensions that full fine-tuning does not (Shuttleworth et al. 2024)"
    if intruders:
        out.append(
            {
                "claim": c,
                "verdict": intruders.split(":", 1)[0],
                "evidence": intruders.split(":", 1)[-1].strip(),
            }
        )
    else:
        out.append(
            {
                "claim": c,
                "verdict": "pending",
                "evidence": "to be filled from `python -m lowrank_lab.intruders --base <model> --tuned "
                "runs/<run> --out intruders/<run>` in this directory (see benchmarks/confirmation_study.sh); "
                "no intruder results found yet",
            }
        )
    return out


def _fmt_se(se: float) -> str:
    return f"{2 * se:.4f} (2 s.e.)" if math.isfinite(se) else "n/a (one seed: no spread)"


def _pct(a: float, b: float) -> str:
    return f"{a / b:.0%}" if b and math.isfinite(a / b) else "–"


# ---------------------------------------------------------------------------------------------
# summary.md


def machines_line(records: Sequence[dict[str, Any]]) -> str:
    """Where the runs were made: each (device, torch, CPU) with its number of runs, and the commits.

    A study extended over several sessions mixes machines; the CPU type matters because float32
    results differ in the last bits between CPUs (see ``finetune --rebuild-merged``)."""
    combos: dict[str, int] = {}
    commits: list[str] = []
    for r in records:
        m = r.get("meta", {})
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


def replaced_lines(records: Sequence[dict[str, Any]], *, last_bits: float = 1e-5) -> list[str]:
    """A note on runs whose record a replay replaced (``finetune --rebuild-merged --replace-different``):
    which, from which steps their losses differ, by how much (runs within ``last_bits`` relative
    differ only by float32 rounding; larger ones are named), and how far their final metric moved."""
    done = [r for r in records if r.get("replaces")]
    if not done:
        return []

    def name(r: dict[str, Any]) -> str:
        return f"{r['config']['method']} seed {r['config']['seed']}"

    steps = sorted(
        int(r["replaces"]["first_different_step"])
        for r in done
        if r["replaces"].get("first_different_step") is not None
    )
    parted = ""
    if steps:
        span = f" {steps[0]}" if steps[0] == steps[-1] else f"s {steps[0]}–{steps[-1]}"
        parted = f" from step{span} on"
    rel = {name(r): r["replaces"].get("max_rel_loss_difference") for r in done}
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
        abs(r["final_metric"] - r["replaces"]["final_metric"])
        for r in done
        if r.get("final_metric") is not None and r["replaces"].get("final_metric") is not None
    ]
    change = (
        f". Their final metric moved by {sum(deltas) / len(deltas):.4f} on average (max {max(deltas):.4f}) "
        "from the first records, which `replaces` in each run.json keeps"
        if deltas
        else ""
    )
    return [
        f"- {len(done)} run{'s' if len(done) != 1 else ''} trained again for their merged weights "
        f"(`finetune --rebuild-merged --replace-different`; {', '.join(rel)}). On another CPU than the "
        f"first records', their training losses differ{parted}{size}, so the replays replace those "
        f"records{change}."
    ]


def render_summary(
    records: list[dict[str, Any]],
    methods: Sequence[str],
    spec: TaskSpec,
    *,
    title: str,
    command: str | None,
    threshold_override: float | None = None,
    figures: Sequence[str] = (),
    intruders: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The markdown text of ``summary.md``."""
    threshold, why = loss_threshold(records, methods, threshold_override)
    rows = method_rows(records, methods, spec, threshold)
    table = method_table(rows, spec)
    cfg = records[0]["config"] if records else {}
    seeds = sorted({r["config"]["seed"] for r in records})
    label = METRIC_LABELS[spec.metric]
    lines = [f"# {title}", ""]
    lines += [f"- Command: `{command}`" if command else "- Command: (not recorded)"]
    lines += [
        f"- Task: {spec.description}; model `{cfg.get('model')}`; rank {cfg.get('rank')}, alpha "
        f"{cfg.get('alpha') if cfg.get('alpha') is not None else 'default (= rank)'}, targets "
        f"{cfg.get('targets') or 'all linear targets of the family'}",
        f"- Schedule (same for every method): {cfg.get('steps')} steps, batch {cfg.get('batch_size')}, "
        f"max length {cfg.get('max_length') or spec.default_max_length}, AdamW, warm-up "
        f"{cfg.get('warmup_ratio')} then linear decay, grad-norm clip {cfg.get('max_grad_norm')}, "
        f"seeds {', '.join(map(str, seeds))}; eval every {cfg.get('eval_every')} steps on "
        f"{rows[0]['eval_n'] if rows else '?'} held-out examples",
        f"- Machine: {machines_line(records)}",
        "- Learning rates per family: " + "; ".join(f"{k}: {v}" for k, v in LR_SOURCES.items()),
        "- The task head (`classifier`) trains with every method (PEFT's `modules_to_save`) at one rate, "
        f"{records[0].get('head_lr') if records else '?'}; 'trainable' counts it. `full` trains every "
        "linear map of the blocks plus the head (embeddings, LayerNorms and the pooler stay frozen).",
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
        "Rule: d = difference of method means in the claimed direction, s.e. = sqrt(sd_a²/n_a + sd_b²/n_b) "
        "over seeds; confirms if d > 2 s.e., contradicts if d < −2 s.e., else inconclusive. "
        "With one seed, accuracy uses the binomial s.e. of the eval set (ignores seed variance) and "
        "other quantities are inconclusive.",
        "",
    ]
    for c in claims(rows, spec, intruders):
        lines.append(f"- **{c['claim']}** — **{c['verdict']}**: {c['evidence']}")
    lines.append("")
    if records and (len(seeds) < 3 or (cfg.get("steps") or 0) < 300):
        notes = [
            f"Reduced study: {len(seeds)} seed(s) × {cfg.get('steps')} steps, where issue 7's confirmation "
            "study is 3 seeds × 300 steps (benchmarks/confirmation_study.sh); read the verdicts as "
            "indicative only.",
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


def curves_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Long format: method, seed, step, series (train_loss | eval_metric | eval_loss), value."""
    rows = []
    for r in records:
        m, s = _method(r), r["config"]["seed"]
        for i, v in enumerate(r["train_loss"], start=1):
            rows.append((m, s, i, "train_loss", v))
        for e in r.get("eval", []):
            rows.append((m, s, e["step"], "eval_metric", e["metric"]))
            rows.append((m, s, e["step"], "eval_loss", e["loss"]))
    return pd.DataFrame(rows, columns=["method", "seed", "step", "series", "value"])
