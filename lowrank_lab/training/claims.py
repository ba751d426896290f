"""The papers' claims as tests over a study's runs: gates, paired statistics, one table (issue 15).

A claim compares method ``a`` with method ``b`` on one measure, in the direction the paper states,
with the paper's own number beside ours (:data:`CLAIMS`; numbers from ../shared/REFERENCE.md).
The statistics are those of :mod:`.stats`: per-seed paired differences, a t interval, TOST for
"matches" claims, Holm-Bonferroni across the claims of a study, a minimum effect per metric.

Gates decide first whether a task can test anything at this scale (:func:`task_gate`):

* classification and regression tasks: LoRA (r = 8) and full fine-tuning must each beat the
  head-only control and the constant predictor by at least :data:`GATE_MARGIN` (5 points), mean over
  seeds on the dev set; otherwise the adapters did not learn the task beyond what a probe of the
  frozen model does, and no claim about them is testable;
* language-modelling tasks (GSM8K answer loss): the methods of a claim must each end below the
  interpolated bigram fitted on the training answers (``baselines.json``); a model worse than a
  bigram has not learned the answers, so a difference between two such models says nothing about
  the paper's GSM8K claims.

Runs are usable when finished and not collapsed (a constant predictor on dev, or a non-finite
metric, :attr:`~.record.RunRecord.usable`); collapsed runs are listed, never averaged in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import HEAD_ONLY, method_label
from .record import RunRecord, method_labeller, study_rank, study_records
from .stats import MIN_EFFECT, Paired, holm, paired, verdict
from .summary import still_rising
from .tasks import TaskSpec, get_task

#: Margin by which LoRA and full fine-tuning must beat the head-only control and the constant
#: predictor on a classification/regression task before a claim is testable there (issue 15).
GATE_MARGIN = 0.05

#: A study's reference numbers (constant predictor, n-gram models), written by run_study.
BASELINES = "baselines.json"

#: Columns of claims.csv, in order.
COLUMNS = [
    "task",
    "claim",
    "paper",
    "paper_number",
    "metric",
    "method_a",
    "method_b",
    "n_seeds",
    "mean_a",
    "mean_b",
    "effect",
    "ci_low",
    "ci_high",
    "min_effect",
    "p_value",
    "p_holm",
    "p_tost_holm",
    "verdict",
    "claim_holds",
    "gate",
    "gate_reason",
    "tuning",
    "still_rising",
    "runs",
]


@dataclass(frozen=True)
class Claim:
    """One paper claim: ``a`` beats (``kind="superior"``) or matches (``"match"``) ``b`` on
    ``measure`` (``"final"``: the task metric on dev; ``"loss_auc"``: mean training loss, lower is
    faster; ``"intruders"``: intruder dimensions, summed over matrices). Methods are labels of
    :func:`~.record.method_labeller`: ``lora`` is LoRA at the study's rank, ``lora@1`` at rank 1."""

    key: str
    text: str
    paper: str
    paper_number: str
    a: str
    b: str
    kind: str = "superior"
    measure: str = "final"
    tasks: tuple[str, ...] | None = None  # None: every task


NLORA = "Guo et al. 2025, NLoRA (arXiv 2502.14482)"
PISSA = "Meng et al. 2024, PiSSA (arXiv 2404.02948)"
MILORA = "Wang et al. 2024, MiLoRA (arXiv 2406.09044)"
INTRUDERS = "Shuttleworth et al. 2024, intruder dimensions (arXiv 2410.21228)"

CLAIMS: tuple[Claim, ...] = (
    Claim("nlora>lora", "NLoRA ends higher than LoRA", NLORA,
          "GSM8K 57.70 vs 42.30 (Llama-2-7B, r = 128)", "nlora", "lora"),
    Claim("nlora-converges", "NLoRA converges faster than LoRA (lower mean training loss)", NLORA,
          "faster loss decrease (convergence figure; no number)", "nlora", "lora", measure="loss_auc"),
    Claim("slora>lora", "SLoRA ends higher than LoRA", NLORA,
          "GSM8K 56.48 vs 42.30 (Llama-2-7B)", "slora", "lora"),
    Claim("inttune~lora", "IntTune keeps LoRA's performance with about 1% of its parameters", NLORA,
          "GSM8K 44.28 (r = 128) vs LoRA 42.30; 7·32·r² trainable", "inttune", "lora", kind="match"),
    Claim("pissa>lora", "PiSSA ends higher than LoRA", PISSA,
          "GSM8K 53.22 vs 42.85 (Llama-2-7B, Table 2)", "pissa", "lora"),
    Claim("pissa-converges", "PiSSA converges faster than LoRA (lower mean training loss)", PISSA,
          "faster loss decrease (Figure 1; no number)", "pissa", "lora", measure="loss_auc"),
    Claim("milora>pissa", "MiLoRA ends higher than PiSSA", MILORA,
          "GSM8K 63.5 vs 58.2 (README, Llama-2-7B)", "milora", "pissa"),
    Claim("milora>lora", "MiLoRA ends higher than LoRA", MILORA,
          "GSM8K 63.5 vs 60.6 (README, Llama-2-7B)", "milora", "lora"),
    Claim("lora-xs~lora", "LoRA-XS matches LoRA with far fewer parameters",
          "Bałazy et al. 2024, LoRA-XS (arXiv 2405.17604)",
          "'comparable' (no figure in REFERENCE.md)", "lora-xs", "lora", kind="match"),
    Claim("lora-sb>lora-xs", "LoRA-SB beats LoRA-XS at equal rank",
          "Ponkshe et al. 2024, LoRA-SB (arXiv 2411.19557)",
          "'outperforms' (no figure in REFERENCE.md)", "lora-sb", "lora-xs"),
    Claim("loldu~lora", "LoLDU matches LoRA", "Shi et al. 2024, LoLDU (arXiv 2410.13618)",
          "'comparable' (no figure in REFERENCE.md)", "loldu", "lora", kind="match"),
    Claim("intruders r1", "LoRA (r = 1) has more intruder dimensions than full fine-tuning", INTRUDERS,
          "r <= 16 shows intruders, full FT essentially none", "lora@1", "full", measure="intruders",
          tasks=("sst2",)),
    Claim("intruders r8", "LoRA (r = 8) has more intruder dimensions than full fine-tuning", INTRUDERS,
          "r <= 16 shows intruders, full FT essentially none", "lora", "full", measure="intruders",
          tasks=("sst2",)),
    Claim("intruders r64", "LoRA (r = 64) has more intruder dimensions than full fine-tuning", INTRUDERS,
          "(the paper's claim is for r <= 16; r = 64 is the contrast)", "lora@64", "full",
          measure="intruders", tasks=("sst2",)),
)  # fmt: skip

#: The forgetting claim is a correlation across runs rather than a paired comparison.
FORGETTING_CLAIM = Claim(
    "intruders~forgetting",
    "More intruder dimensions go with more forgetting (STS-B Spearman drop)",
    INTRUDERS,
    "more intruders, more forgetting of the pre-training distribution",
    "intruders",
    "forgetting",
    measure="correlation",
    tasks=("sst2",),
)


def _signed(spec: TaskSpec, value: float) -> float:
    return value if spec.higher_is_better else -value


def measure_of(
    rec: RunRecord, measure: str, spec: TaskSpec, intruders: Mapping[str, float]
) -> float | None:
    """A run's value on ``measure``, signed so that larger is better for the claim's ``a``."""
    if measure == "final":
        return _signed(spec, float(rec.final_metric))  # type: ignore[arg-type]
    if measure == "loss_auc":
        losses = rec.train_loss
        return -(sum(losses) / len(losses)) if losses else None  # lower loss = better
    if measure == "intruders":
        return intruders.get(rec.run_name)  # more intruders = the claim's direction
    raise ValueError(f"unknown measure {measure!r}")


def min_effect(spec: TaskSpec, measure: str) -> float:
    """δ of :data:`~.stats.MIN_EFFECT` for the claim's measure."""
    key = spec.metric if measure == "final" else measure
    return MIN_EFFECT[key]


def intruder_counts_by_run(out: Path) -> dict[str, float]:
    """Intruder count of each run with ``out/intruders/<run>/intruders.csv``: the sum over matrices
    of the left-side intruders at the file's ε (the paper's definition; ε = 0.5 by default).

    Those files are what ``python -m lowrank_lab.intruders --base <model> --tuned runs/<run>
    --out intruders/<run>`` writes (benchmarks/claims_study.sh): one row per (matrix, side, tuned
    singular vector) with a 0/1 ``intruder`` column.
    """
    import pandas as pd

    counts: dict[str, float] = {}
    for path in sorted(Path(out).glob("intruders/*/intruders.csv")):
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError):
            continue
        if "intruder" not in df.columns:
            continue
        if "side" in df.columns:
            df = df[df["side"] == "left"]
        counts[path.parent.name] = float(df["intruder"].sum())
    return counts


def read_baselines(out: str | Path) -> dict[str, Any]:
    path = Path(out) / BASELINES
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def reference_levels(baselines: Mapping[str, Any], split: str = "dev") -> dict[str, float]:
    """The reference predictors of ``baselines.json`` that a figure draws beside the methods, by
    label: on ``"dev"`` the unigram and bigram answer loss (language modelling) or the constant
    predictor; on ``"validation"`` the bigram the selection gate reads (the only reference scored on
    the validation split). Empty where ``baselines`` holds none."""
    if split == "validation":
        keys = {"bigram_validation": "bigram"}
    elif split == "dev":
        keys = {"unigram": "unigram", "bigram": "bigram", "constant_predictor": "constant predictor"}
    else:
        raise ValueError(f"split must be 'dev' or 'validation', not {split!r}")
    return {
        label: float(baselines[key])
        for key, label in keys.items()
        if isinstance(baselines.get(key), (int, float)) and math.isfinite(baselines[key])
    }


def task_gate(
    spec: TaskSpec, by_method: Mapping[str, list[RunRecord]], baselines: Mapping[str, Any]
) -> tuple[bool, str]:
    """(testable, reason) for a classification/regression task; see the module docstring."""
    if spec.kind == "causal-lm":
        return True, "per claim: both methods must beat the bigram"

    def mean(method: str) -> float | None:
        vals = [float(r.final_metric) for r in by_method.get(method, []) if r.usable]  # type: ignore[arg-type]
        return sum(vals) / len(vals) if vals else None

    constant = baselines.get("constant_predictor")
    head = mean("head")
    parts, ok = [], True
    for m in ("lora", "full"):
        value = mean(m)
        if value is None:
            return False, f"no usable {m} run: the gate needs LoRA and full fine-tuning"
        for name, ref in (("head-only", head), ("constant predictor", constant)):
            if ref is None:
                return False, f"no {name} result to gate against (run the head control; baselines.json)"
            margin = _signed(spec, value - ref)
            ok &= margin >= GATE_MARGIN
            parts.append(f"{m} {value:.3f} vs {name} {ref:.3f} ({margin:+.3f})")
    verdict_text = "passes" if ok else "fails"
    return ok, f"{verdict_text} (margin {GATE_MARGIN:g} needed): " + "; ".join(parts)


def _lm_gate(
    runs_a: Sequence[RunRecord], runs_b: Sequence[RunRecord], baselines: Mapping[str, Any], a: str, b: str
) -> tuple[bool, str]:
    bigram = baselines.get("bigram")
    if bigram is None:
        return False, "no bigram baseline (baselines.json) to gate against"
    means = {}
    for name, runs in ((a, runs_a), (b, runs_b)):  # the answer loss on dev, whatever the metric
        vals = [float(r.dev_loss) for r in runs if r.dev_loss is not None]
        means[name] = sum(vals) / len(vals) if vals else math.inf
    worse = [f"{m} {v:.3f}" for m, v in means.items() if not v < bigram]
    shown = ", ".join(f"{m} {v:.3f}" for m, v in means.items())
    if worse:
        return False, (
            f"answer loss {shown} nats/token vs bigram {bigram:.3f} (unigram "
            f"{baselines.get('unigram', math.nan):.3f}): {', '.join(worse)} not below the bigram, so the "
            "model has not learned the answers at this scale"
        )
    return True, f"answer loss {shown} below the bigram {bigram:.3f}"


def selection_gate(out: str | Path, baselines: Mapping[str, Any]) -> tuple[bool, str] | None:
    """The bigram gate of a language-modelling study at its learning-rate selection: whether any
    method, at the rate chosen for it, ends below the interpolated bigram on the validation answers
    (``baselines.json``'s ``bigram_validation``: same examples, same nats per answer token). A study
    whose selection fails it spends no seeds (benchmarks/claims_study.sh, GSM8K), and its claims
    read this reason; a study with seeds is gated on dev instead. None without a ``selection.csv``
    or that baseline."""
    import pandas as pd

    path, bigram = Path(out) / "selection.csv", baselines.get("bigram_validation")
    if bigram is None or not path.is_file():
        return None
    sel = pd.read_csv(path)
    best = sel[sel["chosen"].fillna(False).astype(bool) & sel["rate_of"].eq("lr")]
    if best.empty:
        return False, f"no rate chosen in {path}: no method trained without collapsing"
    shown = ", ".join(f"{r.method} {r.val_metric:.3f} at {r.lr:g}" for r in best.itertuples())
    ok = bool((best["val_metric"] < bigram).any())
    if ok:
        return True, f"selection: validation answer loss {shown} nats/token; bigram {bigram:.3f}"
    return False, (
        f"at the selected rates the validation answer loss ({shown} nats/token) is not below the "
        f"bigram's {bigram:.3f} on the same answers: the model has not learned the answers at this scale, "
        "so no seeds were run"
    )


def claim_rows(
    spec: TaskSpec,
    records: Sequence[RunRecord],
    *,
    baselines: Mapping[str, Any] | None = None,
    intruders: Mapping[str, float] | None = None,
    forgetting: Mapping[str, float] | None = None,
    study_gate: tuple[bool, str] | None = None,
    tuning: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per claim that applies to ``spec`` (columns :data:`COLUMNS`), Holm-adjusted across
    them. ``intruders`` and ``forgetting`` map run names to the run's intruder count and STS-B
    Spearman drop (None: those claims are "not testable: not measured"). A failed ``study_gate``
    (:func:`selection_gate`) makes every claim not testable, with its reason. ``tuning`` maps a
    method label to how its rate was chosen (:func:`tuning_notes`), shown per claim."""
    baselines = dict(baselines or {})
    intruders = dict(intruders or {})
    if records and all(r.final_metric_name == "exact_match" for r in records if r.usable):
        spec = replace(spec, metric="exact_match", higher_is_better=True)  # finetune --eval generate
    by_method: dict[str, list[RunRecord]] = {}
    label = method_labeller(records)
    for rec in records:
        by_method.setdefault(label(rec), []).append(rec)
    task_ok, task_reason = task_gate(spec, by_method, baselines)
    if (head := (tuning or {}).get(HEAD_ONLY)) is not None and spec.kind != "causal-lm":
        task_reason += f"; {head}"  # how well tuned the control the gate reads was

    rows: list[dict[str, Any]] = []
    tests: list[tuple[int, Paired, Claim]] = []
    for claim in CLAIMS:
        if claim.tasks is not None and spec.name not in claim.tasks:
            continue
        row = _base_row(spec, claim)
        row["tuning"] = "; ".join(t for m in (claim.a, claim.b) if (t := (tuning or {}).get(m)))
        runs_a = {r.seed: r for r in by_method.get(claim.a, [])}
        runs_b = {r.seed: r for r in by_method.get(claim.b, [])}
        row["still_rising"] = still_rising_note(spec, {claim.a: runs_a.values(), claim.b: runs_b.values()})
        good_a = {s: r for s, r in runs_a.items() if r.usable}
        good_b = {s: r for s, r in runs_b.items() if r.usable}
        collapsed = sorted(r.run_name for r in [*runs_a.values(), *runs_b.values()] if r.collapsed)
        seeds = sorted(set(good_a) & set(good_b))
        if claim.measure == "intruders":
            seeds = [s for s in seeds if {good_a[s].run_name, good_b[s].run_name} <= intruders.keys()]
        row["runs"] = "; ".join(good_a[s].run_name + " vs " + good_b[s].run_name for s in seeds)
        if collapsed:
            row["runs"] += ("; " if row["runs"] else "") + "collapsed, left out: " + ", ".join(collapsed)
        if spec.kind == "causal-lm":
            gate_ok, reason = _lm_gate(
                list(good_a.values()), list(good_b.values()), baselines, claim.a, claim.b
            )
        else:
            gate_ok, reason = task_ok, task_reason
        not_run = [m for m, runs in ((claim.a, runs_a), (claim.b, runs_b)) if not runs]
        if study_gate is not None and not study_gate[0]:
            gate_ok, reason = study_gate
        elif not_run:  # a budget decision, not a result at this scale: say which
            row.update(
                gate="fail",
                gate_reason=f"not run on {spec.name} (no seed runs): {', '.join(not_run)}",
                n_seeds=0,
                verdict="not testable",
                claim_holds="not run",
            )
            rows.append(row)
            continue
        elif len(seeds) < 2:
            have = f"{len(seeds)} seed(s) with usable runs of both {claim.a} and {claim.b}"
            if claim.measure == "intruders":
                have += " and intruder counts"
            gate_ok, reason = False, f"{have}; at least 2 needed" + (f" ({reason})" if not gate_ok else "")
        row["gate"] = "pass" if gate_ok else "fail"
        row["gate_reason"] = reason
        row["n_seeds"] = len(seeds)
        if not gate_ok:
            row["verdict"] = "not testable"
            row["claim_holds"] = "not testable at this scale"
            rows.append(row)
            continue
        va = [measure_of(good_a[s], claim.measure, spec, intruders) for s in seeds]
        vb = [measure_of(good_b[s], claim.measure, spec, intruders) for s in seeds]
        p = paired(va, vb)
        sign = 1.0 if (claim.measure != "final" or spec.higher_is_better) else -1.0
        row.update(
            mean_a=sign * sum(va) / len(va) if claim.measure != "intruders" else sum(va) / len(va),
            mean_b=sign * sum(vb) / len(vb) if claim.measure != "intruders" else sum(vb) / len(vb),
            effect=p.mean,
            ci_low=p.ci_low,
            ci_high=p.ci_high,
            p_value=p.p_two_sided,
        )
        if claim.measure == "loss_auc":
            row["mean_a"], row["mean_b"] = -row["mean_a"], -row["mean_b"]  # shown as losses
        tests.append((len(rows), p, claim))
        rows.append(row)

    if forgetting is not None and FORGETTING_CLAIM.tasks and spec.name in FORGETTING_CLAIM.tasks:
        rows.append(_forgetting_row(spec, intruders, forgetting))

    # Holm across the paired claims of this study: two-sided p's as one family, TOST p's as another.
    adj = holm([p.p_two_sided for _, p, _ in tests])
    adj_tost = holm([p.tost_p(rows[i]["min_effect"]) for i, p, _ in tests])
    for (i, p, claim), ph, pt in zip(tests, adj, adj_tost, strict=True):
        v = verdict(p, rows[i]["min_effect"], ph, pt)
        rows[i].update(p_holm=ph, p_tost_holm=pt, verdict=v, claim_holds=_holds(claim, v))
    return rows


def _holds(claim: Claim, v: str) -> str:
    if claim.kind == "match":
        holds = {"equivalent": "yes", "contradicted": "no", "confirmed": "no (a is better)"}
        return holds.get(v, "undecided")
    return {"confirmed": "yes", "contradicted": "no", "equivalent": "no (no difference that matters)"}.get(
        v, "undecided"
    )


def _base_row(spec: TaskSpec, claim: Claim) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update(
        task=spec.name,
        claim=claim.text,
        paper=claim.paper,
        paper_number=claim.paper_number,
        metric=spec.metric if claim.measure == "final" else claim.measure,
        method_a=claim.a,
        method_b=claim.b,
        min_effect=(
            min_effect(spec, claim.measure) if claim.measure != "correlation" else MIN_EFFECT["spearman"]
        ),
    )
    return row


def _forgetting_row(spec: TaskSpec, intruders: Mapping[str, float], forgetting: Mapping[str, float]) -> dict:
    """Spearman correlation, across runs, of intruder count and forgetting; its 95% interval by
    Fisher's z (se = 1.06 / sqrt(n − 3), Fieller et al. 1957 for Spearman's rho)."""
    from scipy import stats

    row = _base_row(spec, FORGETTING_CLAIM)
    names = sorted(set(intruders) & set(forgetting))
    row["runs"] = ", ".join(names)
    row["n_seeds"] = len(names)
    if len(names) < 5:
        row.update(
            gate="fail",
            gate_reason=f"{len(names)} runs with both an intruder count and a forgetting measure; at least 5",
            verdict="not testable",
            claim_holds="not testable at this scale",
        )
        return row
    x = [intruders[n] for n in names]
    y = [forgetting[n] for n in names]
    if len(set(x)) < 2 or len(set(y)) < 2:
        row.update(
            gate="fail",
            gate_reason="intruder counts (or forgetting) are the same for every run: no correlation to test",
            verdict="not testable",
            claim_holds="not testable at this scale",
        )
        return row
    rho, pval = stats.spearmanr(x, y)
    z, se = math.atanh(max(min(rho, 0.999999), -0.999999)), 1.06 / math.sqrt(len(names) - 3)
    lo, hi = math.tanh(z - 1.96 * se), math.tanh(z + 1.96 * se)
    p = Paired(len(names), float(rho), math.nan, lo, hi, float(pval))
    v = verdict(p, row["min_effect"], float(pval))  # one test: its own p
    row.update(
        gate="pass",
        gate_reason="Spearman correlation across runs (one claim, no Holm family)",
        effect=float(rho),
        ci_low=lo,
        ci_high=hi,
        p_value=float(pval),
        p_holm=float(pval),
        verdict=v,
        claim_holds=_holds(FORGETTING_CLAIM, v),
    )
    return row


def still_rising_note(spec: TaskSpec, runs: Mapping[str, Iterable[RunRecord]]) -> str:
    """``"loldu 5/5"``: per method, how many of its usable runs were still rising over the last 20%
    of the run (:func:`~.summary.still_rising`: issue 15's plateau check), for the methods with at
    least one; empty when every run had reached its plateau. A verdict against such a method holds
    at the study's budget, not at convergence."""
    parts = []
    for method, recs in runs.items():
        flags = [f for r in recs if r.usable and (f := still_rising(r, spec)) is not None]
        if any(flags):
            parts.append(f"{method} {sum(flags)}/{len(flags)}")
    return ", ".join(parts)


def tuning_notes(out: str | Path, records: Sequence[RunRecord]) -> dict[str, str]:
    """How each method's rate was chosen, from the study's ``selection.csv``, by method label
    (``lora``, ``lora@64``): ``"lora 0.0015 (5 rates)"``, with ``", at the top edge"`` (or
    bottom) when the chosen rate is the highest (lowest) tried even after the grid's extensions: a
    reviewer's first question about a comparison is whether each side was tuned to an optimum
    inside its grid. {} without a selection.csv."""
    import pandas as pd

    path = Path(out) / "selection.csv"
    if not path.is_file():
        return {}
    frame = pd.read_csv(path)
    rank = study_rank(records)
    notes: dict[str, str] = {}
    for (method, r), rows in frame.groupby(["method", "rank"], sort=False):
        chosen = rows.loc[rows["chosen"].astype(bool), "lr"]
        label = method_label(str(method), int(r), rank)
        if chosen.empty:
            notes[label] = f"{label} no usable rate ({len(rows)} rates)"
            continue
        lr, tried = float(chosen.iloc[0]), sorted(rows["lr"].astype(float))
        edge = ""
        if len(tried) > 1 and lr in (tried[0], tried[-1]):
            edge = ", at the top edge" if lr == tried[-1] else ", at the bottom edge"
        who = "head-only, head rate" if rows["rate_of"].iloc[0] == "head_lr" else label
        n = f"{len(tried)} rate" + ("s" if len(tried) > 1 else "")
        notes[label] = f"{who} {lr:.3g} ({n}{edge})"
    return notes


def study_claims(
    out: str | Path, records: Sequence[RunRecord] | None = None
) -> list[dict[str, Any]]:
    """:func:`claim_rows` of one study folder (its runs, baselines.json, intruder counts and
    forgetting.csv)."""
    from .forgetting import read_forgetting

    out = Path(out)
    if records is None:
        records = study_records(out)
    baselines = read_baselines(out)
    if records:
        spec = get_task(records[0].task)
    elif baselines.get("task") and (out / "selection.csv").is_file():
        spec = get_task(baselines["task"])  # selection only (finetune --select-only): no runs yet
    else:
        raise FileNotFoundError(f"no run records under {out / 'runs'}")
    forgetting = read_forgetting(out)
    return claim_rows(
        spec,
        records,
        baselines=baselines,
        intruders=intruder_counts_by_run(out),
        forgetting=forgetting or None,
        # a study that trained seeds is gated on dev by _lm_gate; one that stopped at selection here
        study_gate=selection_gate(out, baselines) if spec.kind == "causal-lm" and not records else None,
        tuning=tuning_notes(out, records),
    )
