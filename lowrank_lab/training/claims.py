"""The papers' claims as tests over a study's runs: gates, paired statistics, one table (issues 15, 30).

A claim compares method ``a`` with method ``b`` on one :class:`~.stats.Measure`, in the direction the
paper states, with the paper's own number for the same benchmark beside ours (:data:`CLAIMS`; numbers
from ../shared/REFERENCE.md, and where that file quotes a paper on another benchmark only, the cell
says so). The statistics and the decision rule are those of :mod:`.stats` (:data:`~.stats.DECISION_RULE`):
per-seed paired differences, a t interval, superiority and non-inferiority as different tests,
Holm-Bonferroni within one family per paper across its tasks, a minimum effect per measure.

Before any statistics, each task is gated (:func:`task_gate`); a row that fails reads "not testable"
with the reason in ``gate_reason``:

* **trained on this kind of data**: the base model's registry entry names the task among the kinds
  of data its released weights were trained on (:attr:`~lowrank_lab.weights.registry.ModelSpec.trained_tasks`:
  all-MiniLM-L6-v2 and STS-B, MRPC, QQP, MNLI, QNLI, RTE, WNLI);
* **the untuned model**: every reference predictor of the task, the untuned model's own among them,
  must be beaten on the interval: for each anchor (LoRA at the study's rank, and full fine-tuning on
  GLUE tasks) the lower bound of the 95% t interval of anchor − reference must reach
  :data:`GATE_MARGIN`. References: classification, the head-only control (a probe of the frozen,
  untuned encoder; paired by seed), the constant predictor and, when ``untuned.json`` holds it, the
  converged linear probe of the frozen encoder (:func:`.untuned.linear_probe`); regression, those
  and the untuned encoder's own cosine similarity (``untuned.json``, :mod:`.untuned`); language modelling, the
  unigram, the bigram and the untuned model's answer loss, and then the exact-match floor: the
  fine-tuned model's exact match must beat the untuned model's by :data:`EM_FLOOR` (a GSM8K claim is
  a claim about accuracy; a model that solves no problem cannot test it, whatever its loss does).

Runs are usable when finished and not collapsed (a constant predictor on dev, or a non-finite
metric, :attr:`~.record.RunRecord.usable`); collapsed runs are listed, never averaged in. A study folder
whose runs come from different code or protocol versions is refused (:func:`check_protocol`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lowrank_lab.utils.files import read_json_or_empty

from .config import HEAD_ONLY, RunConfig, method_label
from .record import RunRecord, method_labeller, study_rank, study_records
from .stats import (
    CORRELATION,
    EXACT_MATCH,
    FORGETTING,
    INTRUDER_COUNT,
    LOSS_AUC,
    MEASURES,
    NATS_LOSS_KINDS,
    STEPS_TO_90,
    Measure,
    Paired,
    convergence_measure,
    decide,
    holds,
    holm_families,
    hypotheses,
    paired,
)
from .summary import still_rising
from .tasks import TaskSpec, get_task

#: Margin by which each anchor's interval must clear every reference predictor (lower bound of
#: anchor − reference), in the task metric's unit: 5 points for accuracies and correlations (issue
#: 15), 0.1 nats per token for an answer loss (five times its minimum effect).
GATE_MARGIN: dict[str, float] = {
    "accuracy": 0.05,
    "matthews": 0.05,
    "spearman": 0.05,
    "pearson": 0.05,
    "exact_match": 0.05,
    "answer_loss": 0.1,
}

#: A language-modelling claim is testable only when the fine-tuned model's exact match beats the
#: untuned model's by this much (lower bound of the interval): 5 points of GSM8K accuracy, about
#: 2.6 binomial standard errors at 10% accuracy on 256 problems.
EM_FLOOR = 0.05

#: The methods whose runs the gate reads: LoRA at the study's rank, and full fine-tuning where the
#: task has a head (GLUE); a language-modelling study needs only LoRA.
GATE_ANCHORS = ("lora", "full")

#: A study's reference numbers (constant predictor, n-gram models), written by run_study.
BASELINES = "baselines.json"

#: Why a study holds no runs of some method: a JSON object mapping a method label, as the claims
#: table names it (``method_a``/``method_b``: ``pissa``, ``lora-xs@25``, ``lora@64``), or
#: ``"mitigation"`` for the mitigation tables, to the reason in words. Written by whoever decided
#: not to run them (benchmarks/plateau_study.sh, when a block does not fit its CPU-hour budget); a
#: claim whose runs are missing then reads "not run" with that reason beside the missing runs.
NOT_RUN = "not_run.json"

#: Config fields that may differ between the runs of one study (each run's own choice); every other
#: identity field of :class:`~.config.RunConfig` is the study's protocol and must agree.
PER_RUN_FIELDS = frozenset({"task", "method", "seed", "rank", "alpha", "targets", "lr", "head_lr", "extra"})

#: Columns of claims.csv, in order. The verdict is re-derivable from kind, expects, effect, ci_low,
#: ci_high, min_effect, test, p1_holm and p2_holm alone (:func:`decide_rows`).
COLUMNS = [
    "task",
    "claim",
    "paper",
    "paper_number",
    "kind",
    "expects",
    "metric",
    "unit",
    "method_a",
    "method_b",
    "n_seeds",
    "mean_a",
    "mean_b",
    "effect",
    "ci_low",
    "ci_high",
    "min_effect",
    "test",
    "p1",
    "p2",
    "family",
    "family_size",
    "p1_holm",
    "p2_holm",
    "verdict",
    "claim_holds",
    "gate",
    "gate_reason",
    "tuning",
    "still_rising",
    "runs",
]

#: Task names as the papers' tables print them.
TASK_LABELS = {"sst2": "SST-2", "stsb": "STS-B", "cola": "CoLA", "gsm8k": "GSM8K", "mrpc": "MRPC",
               "qqp": "QQP", "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}  # fmt: skip


def task_metric(spec: TaskSpec) -> Measure:
    """"Ends higher": the task's own metric on its dev examples."""
    return MEASURES[spec.metric]


def convergence(spec: TaskSpec) -> Measure:
    """"Converges faster": :func:`~.stats.convergence_measure` of the task's loss."""
    return convergence_measure(spec.kind)


@dataclass(frozen=True)
class Claim:
    """One paper claim: ``a`` beats ``b`` (``kind="superiority"``) or matches it
    (``"non-inferiority"``) on ``measure``: a :class:`~.stats.Measure` (``INTRUDER_COUNT``,
    ``FORGETTING``, ``CORRELATION``), or a rule that picks the task's measure: :func:`task_metric`
    (the default) or :func:`convergence`. Methods are labels of
    :func:`~.record.method_labeller`: ``lora`` is LoRA at the study's rank, ``lora@1`` at rank 1.

    ``family`` names the paper's Holm family; ``numbers`` maps a task to the paper's own number for
    that benchmark (:meth:`paper_number`); ``expects="none"``: a contrast the paper predicts shows no
    difference that matters."""

    key: str
    text: str
    paper: str
    family: str
    a: str
    b: str
    kind: str = "superiority"
    measure: Measure | Callable[[TaskSpec], Measure] = task_metric
    tasks: tuple[str, ...] | None = None  # None: every task
    numbers: Mapping[str, str] = field(default_factory=dict)
    expects: str = "difference"

    def paper_number(self, task: str) -> str:
        """The paper's number for ``task``'s benchmark; never one from another benchmark."""
        if task in self.numbers:
            return self.numbers[task]
        label = TASK_LABELS.get(task, task)
        other = sorted(TASK_LABELS.get(t, t) for t in self.numbers)
        tail = f" (its {', '.join(other)} number is another benchmark)" if other else ""
        return f"no {label} number from this paper in REFERENCE.md{tail}"


NLORA = "Guo et al. 2025, NLoRA (arXiv 2502.14482)"
PISSA = "Meng et al. 2024, PiSSA (arXiv 2404.02948)"
MILORA = "Wang et al. 2024, MiLoRA (arXiv 2406.09044)"
LORA_XS = "Bałazy et al. 2024, LoRA-XS (arXiv 2405.17604)"
LORA_SB = "Ponkshe et al. 2024, LoRA-SB (arXiv 2411.19557)"
LOLDU = "Shi et al. 2024, LoLDU (arXiv 2410.13618)"
INTRUDERS = "Shuttleworth et al. 2024, intruder dimensions (arXiv 2410.21228)"
_INTRUDER_FINDING = (
    "qualitative: LoRA at r <= 16 shows intruder dimensions, full fine-tuning essentially none"
)

#: The paper's own configuration of each "comparable with far fewer parameters" claim (issue 30, item 7;
#: reports/README.md, "Plateau study"), judged against LoRA at the study's rank
#: (:data:`~.config.REFERENCE_RANK`):
#: LoRA-XS at r = 25, the top of the rank range of its GLUE runs (625 numbers per matrix); IntTune at
#: r = 128, the middle of the three ranks the NLoRA paper reports for it (64, 128, 256; GSM8K 44.28 at
#: 128); LoLDU at full rank, as its released code defaults (the diagonal spans min(m, n), which is 384
#: for every MiniLM matrix). A study without runs at these ranks reads "not run" and names them: the
#: r = 8 runs of issue 15's study test a configuration no paper uses.
CAPACITY_RANKS: Mapping[str, int] = {"lora-xs": 25, "inttune": 128, "loldu": 384}


def _at_paper_rank(method: str) -> str:
    return f"{method}@{CAPACITY_RANKS[method]}"


CLAIMS: tuple[Claim, ...] = (
    Claim("nlora>lora", "NLoRA ends higher than LoRA", NLORA, "NLoRA", "nlora", "lora",
          numbers={"gsm8k": "GSM8K accuracy 57.70 vs 42.30 (Llama-2-7B, r = 128)"}),
    Claim("nlora-converges", "NLoRA converges faster than LoRA", NLORA, "NLoRA", "nlora", "lora",
          measure=convergence, numbers={"gsm8k": "faster loss decrease in training (a figure; no number)"}),
    Claim("slora>lora", "SLoRA ends higher than LoRA", NLORA, "NLoRA", "slora", "lora",
          numbers={"gsm8k": "GSM8K accuracy 56.48 vs 42.30 (Llama-2-7B)"}),
    Claim("inttune~lora", "IntTune (r = 128) keeps LoRA's performance, training only an r x r core", NLORA,
          "NLoRA", _at_paper_rank("inttune"), "lora", kind="non-inferiority",
          numbers={"gsm8k": "GSM8K accuracy 44.28 (r = 128) vs LoRA 42.30; 7·32·r² trainable"}),
    Claim("pissa>lora", "PiSSA ends higher than LoRA", PISSA, "PiSSA", "pissa", "lora",
          numbers={"gsm8k": "GSM8K accuracy 53.22 vs 42.85 (Llama-2-7B, Table 2)"}),
    Claim("pissa-converges", "PiSSA converges faster than LoRA", PISSA, "PiSSA", "pissa", "lora",
          measure=convergence, numbers={"gsm8k": "faster loss decrease (Figure 1; no number)"}),
    Claim("milora>pissa", "MiLoRA ends higher than PiSSA", MILORA, "MiLoRA", "milora", "pissa",
          numbers={"gsm8k": "GSM8K accuracy 63.5 vs 58.2 (README, Llama-2-7B)"}),
    Claim("milora>lora", "MiLoRA ends higher than LoRA", MILORA, "MiLoRA", "milora", "lora",
          numbers={"gsm8k": "GSM8K accuracy 63.5 vs 60.6 (README, Llama-2-7B)"}),
    Claim("lora-xs~lora", "LoRA-XS (r = 25) matches LoRA with far fewer parameters", LORA_XS, "LoRA-XS",
          _at_paper_rank("lora-xs"), "lora", kind="non-inferiority"),
    Claim("lora-sb>lora", "LoRA-SB beats LoRA", LORA_SB, "LoRA-SB", "lora-sb", "lora"),
    Claim("lora-sb>lora-xs", "LoRA-SB beats LoRA-XS at equal rank", LORA_SB, "LoRA-SB", "lora-sb", "lora-xs"),
    Claim("loldu~lora", "LoLDU (full rank) matches LoRA with far fewer parameters", LOLDU, "LoLDU",
          _at_paper_rank("loldu"), "lora", kind="non-inferiority"),
    Claim("intruders r1", "LoRA (r = 1) has more intruder dimensions than full fine-tuning", INTRUDERS,
          "intruders", "lora@1", "full", measure=INTRUDER_COUNT, tasks=("sst2",),
          numbers={"sst2": _INTRUDER_FINDING}),
    Claim("intruders r8", "LoRA (r = 8) has more intruder dimensions than full fine-tuning", INTRUDERS,
          "intruders", "lora", "full", measure=INTRUDER_COUNT, tasks=("sst2",),
          numbers={"sst2": _INTRUDER_FINDING}),
    Claim("intruders r64", "LoRA (r = 64) has no more intruder dimensions than full fine-tuning (contrast)",
          INTRUDERS, "intruders", "lora@64", "full", measure=INTRUDER_COUNT, tasks=("sst2",), expects="none",
          numbers={"sst2": "qualitative: the intruders of low ranks fade at high rank"}),
)  # fmt: skip

#: Biderman et al.'s "learns less, forgets less": LoRA keeps more of the base model's skills than full
#: fine-tuning. Measured here as the drop of the encoder's own STS-B skill (training/forgetting.py).
BIDERMAN = "Biderman et al. 2024, LoRA Learns Less and Forgets Less (arXiv 2405.09673)"
CLAIMS = (
    *CLAIMS,
    Claim("lora-forgets-less", "LoRA forgets less than full fine-tuning (STS-B skill of the encoder)",
          BIDERMAN, "LoRA learns less and forgets less", "lora", "full", measure=FORGETTING,
          tasks=("sst2", "cola")),  # the paper measures forgetting after code and math training only
)  # fmt: skip

#: The forgetting claim is a correlation across runs rather than a paired comparison: WITHIN each
#: method (issue 30, point 9), since pooling methods mixes full fine-tuning's larger forgetting with
#: LoRA's intruders and can make a correlation that no single method shows.
FORGETTING_CLAIM = Claim(
    "intruders~forgetting",
    "More intruder dimensions go with more forgetting, within a method (STS-B Spearman drop)",
    INTRUDERS,
    "intruders",
    "intruders",
    "forgetting",
    kind="correlation",
    measure=CORRELATION,
    tasks=("sst2",),
    numbers={"sst2": "qualitative: more intruders, more forgetting of the pre-training distribution"},
)


#: Intruder mitigation (Shuttleworth et al. 2024; PEFT 0.22 reduce_intruder_dimension) judged on the
#: study's own LoRA runs at PEFT's default λ = 0.75, fixed before the runs: two rows, read from the
#: runs' ``mitigation/<run>/mitigation.csv`` (``python -m lowrank_lab.intruders --mitigate``), each
#: pairing a run's mitigated weights with the same run unmitigated (λ = 1), seed by seed.
MITIGATION_LAMBDA = 0.75
MITIGATION_CLAIMS = (
    Claim("mitigation-forgets-less", f"Intruder mitigation (λ = {MITIGATION_LAMBDA:g}) reduces forgetting",
          INTRUDERS, "intruders", f"mitigated λ={MITIGATION_LAMBDA:g}", "unmitigated", measure=FORGETTING,
          tasks=("sst2",)),
    Claim("mitigation-keeps-task",
          f"Intruder mitigation (λ = {MITIGATION_LAMBDA:g}) keeps the task metric within δ",
          INTRUDERS, "intruders", f"mitigated λ={MITIGATION_LAMBDA:g}", "unmitigated",
          kind="non-inferiority", tasks=("sst2",)),
)  # fmt: skip


def measure_for(claim: Claim, spec: TaskSpec) -> Measure:
    """The :class:`~.stats.Measure` a claim reads on ``spec``'s task."""
    return claim.measure if isinstance(claim.measure, Measure) else claim.measure(spec)


def steps_to_fraction(rec: RunRecord, spec: TaskSpec, fraction: float = 0.9) -> float | None:
    """Steps to reach ``fraction`` of the run's gain in its held-out metric, from the step-0 value to
    the last evaluation, linearly interpolated between evaluations, as a fraction of the run's steps
    (scale-free: no loss scale enters). None without a gain or a curve."""
    evals, steps = rec.evals, rec.steps_done or 0
    if len(evals) < 2 or not steps:
        return None
    sign = 1.0 if spec.higher_is_better else -1.0
    gains = [sign * (float(e.metric) - float(evals[0].metric)) for e in evals]
    if not all(math.isfinite(g) for g in gains) or gains[-1] <= 0:
        return None
    target = fraction * gains[-1]
    for k in range(1, len(evals)):
        if gains[k] >= target:
            s0, s1, g0, g1 = evals[k - 1].step, evals[k].step, gains[k - 1], gains[k]
            return (s0 + (target - g0) / (g1 - g0) * (s1 - s0)) / steps
    return None  # not reached (cannot happen: the last gain is the whole gain)


def measure_value(
    rec: RunRecord,
    measure: Measure,
    spec: TaskSpec,
    intruders: Mapping[str, float],
    forgetting: Mapping[str, float] | None = None,
) -> float | None:
    """A run's value on ``measure``, in the measure's own unit (not signed)."""
    if measure == FORGETTING:
        return (forgetting or {}).get(rec.run_name)
    if measure == LOSS_AUC:
        if spec.kind not in NATS_LOSS_KINDS:
            raise ValueError(f"loss AUC is compared only in nats; {spec.name}'s loss is not a cross-entropy")
        losses = rec.train_loss
        return sum(losses) / len(losses) if losses else None
    if measure == STEPS_TO_90:
        return steps_to_fraction(rec, spec)
    if measure == INTRUDER_COUNT:
        return intruders.get(rec.run_name)
    if measure == EXACT_MATCH and rec.final_metric_name != EXACT_MATCH.name:
        return rec.dev.exact_match if rec.dev is not None else None
    value = rec.final_metric
    return None if value is None else float(value)


def _values(
    runs: Mapping[int, RunRecord],
    measure: Measure,
    spec: TaskSpec,
    intruders: Mapping[str, float],
    forgetting: Mapping[str, float] | None,
) -> dict[int, float]:
    """Seed -> :func:`measure_value` of each run that has one."""
    got = {s: measure_value(r, measure, spec, intruders, forgetting) for s, r in runs.items()}
    return {s: v for s, v in got.items() if v is not None}


def intruder_counts_by_run(out: Path) -> dict[str, float]:
    """Intruder count of each run with ``out/intruders/<run>/intruders.csv``: the sum over matrices
    of the left-side intruders at the file's ε (the paper's definition; ε = 0.5 by default).

    Those files are what ``python -m lowrank_lab.intruders --base <model> --tuned runs/<run>
    --out intruders/<run>`` writes (benchmarks/claims_study.sh): one row per (matrix, side, tuned
    singular vector) with a 0/1 ``intruder`` column.
    """
    from lowrank_lab.analysis.intruder_tables import ROWS_FILE, read_intruder_count

    counts: dict[str, float] = {}
    for path in sorted(Path(out).glob(f"intruders/*/{ROWS_FILE}")):
        if (count := read_intruder_count(path)) is not None:
            counts[path.parent.name] = count
    return counts


def read_baselines(out: str | Path) -> dict[str, Any]:
    """The study's ``baselines.json`` ({} when there is none or it is not JSON)."""
    return read_json_or_empty(Path(out) / BASELINES)


def read_not_run(out: str | Path) -> dict[str, str]:
    """The study's :data:`NOT_RUN` declarations ({} when there are none)."""
    return {str(k): str(v) for k, v in read_json_or_empty(Path(out) / NOT_RUN).items()}


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


# -- the protocol of a study folder ---------------------------------------------------------------


def protocol_of(rec: RunRecord) -> tuple[tuple[str, Any], ...]:
    """What must agree between the runs of one study: the record's schema and lowrank_lab version,
    and every identity field of its config but the run's own choices (:data:`PER_RUN_FIELDS`)."""
    version = (rec.meta.get("versions") or {}).get("lowrank_lab")
    keys = [k for k in getattr(RunConfig, "IDENTITY", ()) if k not in PER_RUN_FIELDS]
    cfg = [(k, json.dumps(getattr(rec.config, k, None), sort_keys=True, default=str)) for k in keys]
    return (("schema", rec.schema), ("lowrank_lab", version), *cfg)


def check_protocol(records: Sequence[RunRecord], where: str | Path = "") -> None:
    """Refuse a study whose runs come from different code or protocol versions (ValueError naming
    the fields that differ and the runs of every version but the most common)."""
    groups: dict[tuple, list[str]] = {}
    for rec in records:
        groups.setdefault(protocol_of(rec), []).append(rec.run_name)
    if len(groups) < 2:
        return
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[1]))
    main = dict(ordered[0][0])
    parts = []
    for proto, runs in ordered[1:]:
        diff = ", ".join(f"{k} {v} (not {main[k]})" for k, v in proto if main.get(k) != v)
        shown = ", ".join(runs[:6]) + (f" and {len(runs) - 6} more" if len(runs) > 6 else "")
        parts.append(f"{shown}: {diff}")
    raise ValueError(
        f"{where or 'study'}: runs from different code or protocol versions ({len(ordered[0][1])} runs "
        f"agree; " + "; ".join(parts) + "): a study folder holds one protocol, so move those runs to "
        "their own folder or rerun them"
    )


# -- gates -----------------------------------------------------------------------------------------


def trained_on(model: str | None, task: str) -> str | None:
    """Why ``model``'s released weights were trained on ``task``'s kind of data (its registry
    entry), else None."""
    from lowrank_lab.weights.registry import lookup

    spec = lookup(model) if model else None
    if spec is None or task not in spec.trained_tasks:
        return None
    return (
        f"base trained on this kind of data: the training data of {spec.hub_id or spec.name} "
        f"({spec.training_sources}) overlaps {TASK_LABELS.get(task, task)}"
    )


def _against(values: Mapping[int, float], ref: Mapping[int, float] | float) -> Paired:
    """Paired interval of per-seed ``values`` minus a reference (per seed, or one number)."""
    if isinstance(ref, Mapping):
        seeds = sorted(set(values) & set(ref))
        return paired([values[s] for s in seeds], [ref[s] for s in seeds])
    seeds = sorted(values)
    return paired([values[s] for s in seeds], [float(ref)] * len(seeds))


def _clears(
    name: str, ref_name: str, p: Paired, margin: float, sign: float, unit: str = ""
) -> tuple[bool, str]:
    """Whether the signed interval of anchor − reference has its lower bound at least ``margin``."""
    lo = p.ci_low if sign > 0 else -p.ci_high
    mean = sign * p.mean
    hi = p.ci_high if sign > 0 else -p.ci_low
    ok = math.isfinite(lo) and lo >= margin
    return ok, f"{name} − {ref_name} {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]{unit}"


def task_gate(
    spec: TaskSpec,
    by_method: Mapping[str, Sequence[RunRecord]],
    baselines: Mapping[str, Any],
    untuned: Mapping[str, Any] | None = None,
) -> tuple[bool, str, bool]:
    """(testable, reason, judged) of a task: every anchor beats every reference predictor on the
    interval, and for language modelling the exact-match floor (see the module docstring). ``judged``
    is whether the gate compared measured values; a gate that lacks a reference, an anchor's seeds or
    the exact match is not judged, and a claim with missing runs then reads "not run" rather than
    "not testable"."""
    untuned = dict(untuned or {})
    lm = spec.kind == "causal-lm"
    anchors = ("lora",) if lm else GATE_ANCHORS
    metric = "answer_loss" if lm else spec.metric
    sign = float(MEASURES[metric].direction)
    margin = GATE_MARGIN[metric]

    def per_seed(method: str, value) -> dict[int, float]:
        out = {}
        for r in by_method.get(method, []):
            v = value(r) if r.usable else None
            if v is not None and math.isfinite(float(v)):
                out[r.seed] = float(v)
        return out

    main = (lambda r: r.dev_loss) if lm else (lambda r: r.final_metric)
    refs: dict[str, Mapping[int, float] | float | None] = {}
    if lm:
        refs = {"unigram": baselines.get("unigram"), "bigram": baselines.get("bigram"),
                "untuned model": untuned.get("answer_loss", untuned.get("metric"))}  # fmt: skip
    else:
        head = per_seed(HEAD_ONLY, main)
        refs = {"head-only (frozen untuned encoder)": head or None,
                "constant predictor": baselines.get("constant_predictor")}  # fmt: skip
        if spec.kind == "regression":
            refs["untuned encoder's cosine similarity"] = untuned.get("metric")
        elif "probe_C" in untuned:  # the converged linear probe (untuned.linear_probe), when measured
            refs["linear probe on the untuned encoder"] = untuned.get("metric")
    missing = [name for name, ref in refs.items() if ref is None]
    if missing:
        where = {"untuned model": "untuned.json", "untuned encoder's cosine similarity": "untuned.json"}
        return False, "no " + ", ".join(f"{m} result" + (f" ({where[m]})" if m in where else "")
                                        for m in missing) + " to gate against", False  # fmt: skip
    parts, ok = [], True
    for anchor in anchors:
        values = per_seed(anchor, main)
        if len(values) < 2:
            few = f"{len(values)} usable {anchor} run(s): the gate needs at least 2 seeds of {anchor}"
            return False, few, False
        for name, ref in refs.items():
            good, text = _clears(anchor, name, _against(values, ref), margin, sign)  # type: ignore[arg-type]
            ok &= good
            parts.append(text + ("" if good else " (short)"))
    head_line = f"{'passes' if ok else 'fails'} (each lower bound ≥ {margin:g} needed): " + "; ".join(parts)
    if not ok or not lm:
        return ok, head_line, True
    em = per_seed("lora", lambda r: r.dev.exact_match if r.dev is not None else None)
    base_em = untuned.get("exact_match")
    if not em:
        unmeasured = (
            f"exact match not measured on the lora runs (trained with --eval loss), so the floor (fine-tuned "
            f"exact match above the untuned model's{_num(base_em, ' ', '.3f')} by {EM_FLOOR:g}) cannot be "
            f"shown; {head_line}"
        )
        return False, unmeasured, False
    if base_em is None:
        return False, f"no untuned exact match (untuned.json) to gate against; {head_line}", False
    good, text = _clears("lora exact match", "untuned", _against(em, float(base_em)), EM_FLOOR, 1.0)
    return (
        good,
        f"exact-match floor {'passes' if good else 'fails'} ({text}, ≥ {EM_FLOOR:g} needed); {head_line}",
        True,
    )


def _num(x: Any, prefix: str = "", spec: str = ".4g") -> str:
    return f"{prefix}{format(float(x), spec)}" if isinstance(x, (int, float)) and math.isfinite(x) else ""


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


# -- rows ------------------------------------------------------------------------------------------


def _run_pattern(label: str, rank: int | None) -> str:
    method, _, r = label.partition("@")
    if method in ("full",):
        return "full-seed*"
    return f"{method}-r{r or rank or '?'}-seed*"


def _in_study(label: str, rank: int | None) -> str:
    """``label`` as :func:`~.record.method_labeller` names those runs in a study of ``rank``: a claim's
    ``lora-xs@25`` is plain ``lora-xs`` in a study whose rank is 25."""
    method, _, r = label.partition("@")
    return method if r and rank is not None and int(r) == rank else label


def _declared(not_run: Mapping[str, str] | None, labels: Iterable[str]) -> str:
    """The study's declared reasons (:data:`NOT_RUN`) for not running ``labels``, each once, as the
    start of a "not run" reason ("<reason>; "), or "" where none is declared."""
    reasons = dict.fromkeys(r for m in labels if (r := (not_run or {}).get(m)))
    return "".join(f"{r}; " for r in reasons)


def _not_testable(row: dict[str, Any], reason: str, holds_text: str) -> dict[str, Any]:
    row.update(gate="fail", gate_reason=reason, verdict="not testable", claim_holds=holds_text, family="")
    return row


def scored_spec(spec: TaskSpec, records: Sequence[RunRecord]) -> TaskSpec:
    """``spec`` with the metric the study's runs were judged by: exact match (higher better) when
    every usable run scored it (``finetune --eval generate``), else the task's own."""
    if records and all(r.final_metric_name == EXACT_MATCH.name for r in records if r.usable):
        return replace(spec, metric=EXACT_MATCH.name, higher_is_better=True)
    return spec


def claim_rows(
    spec: TaskSpec,
    records: Sequence[RunRecord],
    *,
    baselines: Mapping[str, Any] | None = None,
    intruders: Mapping[str, float] | None = None,
    forgetting: Mapping[str, float] | None = None,
    mitigation: Any = None,
    study_gate: tuple[bool, str] | None = None,
    tuning: Mapping[str, str] | None = None,
    untuned: Mapping[str, Any] | None = None,
    model: str | None = None,
    not_run: Mapping[str, str] | None = None,
    decided: bool = True,
) -> list[dict[str, Any]]:
    """One row per claim that applies to ``spec`` (columns :data:`COLUMNS`). ``intruders`` and
    ``forgetting`` map run names to the run's intruder count and STS-B Spearman drop. A failed
    ``study_gate`` (:func:`selection_gate`) makes every claim not testable, with its reason.
    ``tuning`` maps a method label to how its rate was chosen (:func:`tuning_notes`); ``untuned`` is
    the study's ``untuned.json``; ``model`` the base model (default: the runs'); ``not_run`` why the
    study holds no runs of a method (:data:`NOT_RUN`), said where a claim lacks them. With ``decided``
    the rows are Holm-adjusted within their families and given verdicts (:func:`decide_rows`); a
    table over several studies passes False and decides once over all of them."""
    baselines = dict(baselines or {})
    intruders = dict(intruders or {})
    check_protocol(records)
    spec = scored_spec(spec, records)
    model = model or (records[0].config.model if records else None)
    by_method: dict[str, list[RunRecord]] = {}
    label = method_labeller(records)
    rank = study_rank(records)
    for rec in records:
        by_method.setdefault(label(rec), []).append(rec)
    contaminated = trained_on(model, spec.name)
    task_ok, task_reason, task_judged = task_gate(spec, by_method, baselines, untuned)
    if (head := (tuning or {}).get(HEAD_ONLY)) is not None and spec.kind != "causal-lm":
        task_reason += f"; {head}"  # how well tuned the control the gate reads was
    scale = (
        "not testable at this scale"
        if spec.kind == "causal-lm"
        else "not testable: fine-tuning not shown to beat the untuned model's predictors by the margin"
    )

    rows: list[dict[str, Any]] = []
    for claim in CLAIMS:
        if claim.tasks is not None and spec.name not in claim.tasks:
            continue
        measure = measure_for(claim, spec)
        row = _base_row(spec, claim, measure)
        a_label, b_label = _in_study(claim.a, rank), _in_study(claim.b, rank)
        row["tuning"] = "; ".join(t for m in (a_label, b_label) if (t := (tuning or {}).get(m)))
        runs_a = {r.seed: r for r in by_method.get(a_label, [])}
        runs_b = {r.seed: r for r in by_method.get(b_label, [])}
        row["still_rising"] = still_rising_note(spec, {a_label: runs_a.values(), b_label: runs_b.values()})
        good_a = {s: r for s, r in runs_a.items() if r.usable}
        good_b = {s: r for s, r in runs_b.items() if r.usable}
        collapsed = sorted(r.run_name for r in [*runs_a.values(), *runs_b.values()] if r.collapsed)
        va, vb = (_values(runs, measure, spec, intruders, forgetting) for runs in (good_a, good_b))
        seeds = sorted(set(va) & set(vb))
        row["runs"] = "; ".join(good_a[s].run_name + " vs " + good_b[s].run_name for s in seeds)
        if collapsed:
            row["runs"] += ("; " if row["runs"] else "") + "collapsed, left out: " + ", ".join(collapsed)
        row["n_seeds"] = len(seeds)
        not_run_labels = [m for m, runs in ((a_label, runs_a), (b_label, runs_b)) if not runs]
        if study_gate is not None and not study_gate[0]:  # the gate at selection decided to run no seeds
            rows.append(_not_testable(row, study_gate[1], "not testable at this scale"))
            continue
        if not_run_labels:  # a budget decision, not a result at this scale: say which runs are missing
            missing = ", ".join(f"{m} (runs/{_run_pattern(m, rank)})" for m in not_run_labels)
            if contaminated or (task_judged and not task_ok):  # no runs could make it testable here
                why, holds = (task_reason, scale)
                if contaminated:
                    why, holds = contaminated, "not testable: base trained on this kind of data"
                row["runs"] = f"not run: no runs of {missing}"
                rows.append(_not_testable(row, why, holds))
            else:
                why = f"not run on {spec.name}: {_declared(not_run, not_run_labels)}no runs of {missing}"
                rows.append(_not_testable(row, why, "not run"))
            continue
        if len(seeds) >= 1:  # descriptive numbers even where no test follows
            a = [va[s] for s in seeds]
            b = [vb[s] for s in seeds]
            p = paired([measure.signed(x) for x in a], [measure.signed(x) for x in b])
            row.update(mean_a=sum(a) / len(a), mean_b=sum(b) / len(b), effect=p.mean, ci_low=p.ci_low,
                       ci_high=p.ci_high)  # fmt: skip
        if contaminated:
            rows.append(_not_testable(row, contaminated, "not testable: base trained on this kind of data"))
            continue
        if not task_ok:
            rows.append(_not_testable(row, task_reason, scale))
            continue
        if len(seeds) < 2:
            have = f"{len(seeds)} seed(s) where both {a_label} and {b_label} have a usable run with a value "
            have += f"of {measure.name}"
            rows.append(_not_testable(row, f"{have}; at least 2 needed", "not testable: too few seeds"))
            continue
        row.update(gate="pass", gate_reason=task_reason, family=claim.family)
        row["test"] = "none (zero variance)" if p.zero_variance else "paired t"
        row["p1"], row["p2"] = hypotheses(claim.kind, p, measure.min_effect)
        rows.append(row)

    if FORGETTING_CLAIM.tasks and spec.name in FORGETTING_CLAIM.tasks and forgetting is not None:
        rows.append(
            _forgetting_row(
                spec,
                intruders,
                forgetting,
                (contaminated, "not testable: base trained on this kind of data")
                if contaminated
                else (None if task_ok else (task_reason, scale)),
            )
        )
    if spec.name in (MITIGATION_CLAIMS[0].tasks or ()):
        gate_failed = (
            (contaminated, "not testable: base trained on this kind of data")
            if contaminated
            else (None if task_ok else (task_reason, scale))
        )
        rows += mitigation_rows(spec, mitigation, gate_failed, _declared(not_run, ["mitigation"]))
    return decide_rows(rows) if decided else rows


def mitigation_rows(
    spec: TaskSpec, frame: Any, gate_failed: tuple[str, str] | None, why_not_run: str = ""
) -> list[dict[str, Any]]:
    """The two :data:`MITIGATION_CLAIMS` rows from a study's mitigation tables (the frame of
    :func:`lowrank_lab.analysis.intruder_tables.collect_mitigation`; None or empty: "not run", after
    ``why_not_run`` where the study declared it), at the lowest adapter rank the tables hold (the
    intruders of low ranks are what mitigation removes)."""
    out = []
    for claim in MITIGATION_CLAIMS:
        measure = measure_for(claim, spec)
        row = _base_row(spec, claim, measure)
        if frame is None or len(frame) == 0:
            where = "mitigation/<run>/mitigation.csv (python -m lowrank_lab.intruders --mitigate)"
            out.append(_not_testable(row, f"not run on {spec.name}: {why_not_run}no {where}", "not run"))
            continue
        rank = int(frame["rank"].min())
        sub = frame[frame["rank"] == rank]
        column = "forgetting" if claim.measure == FORGETTING else "task_metric"  # mitigation.csv columns
        at, ref = (
            {int(r.seed): float(getattr(r, column)) for r in sub[sub["lambda"] == lam].itertuples()}
            for lam in (MITIGATION_LAMBDA, 1.0)
        )
        seeds = sorted(s for s in set(at) & set(ref) if math.isfinite(at[s]) and math.isfinite(ref[s]))
        label = f"lora@{rank}"
        row.update(method_a=f"{label} λ={MITIGATION_LAMBDA:g}", method_b=label, n_seeds=len(seeds))
        row["runs"] = "; ".join(f"mitigation/{r}" for r in sorted(set(sub["run"])))
        if seeds:
            p = paired([measure.signed(at[s]) for s in seeds], [measure.signed(ref[s]) for s in seeds])
            row.update(mean_a=sum(at[s] for s in seeds) / len(seeds),
                       mean_b=sum(ref[s] for s in seeds) / len(seeds),
                       effect=p.mean, ci_low=p.ci_low, ci_high=p.ci_high)  # fmt: skip
        if gate_failed:
            out.append(_not_testable(row, *gate_failed))
            continue
        if len(seeds) < 2:
            why = f"{len(seeds)} seed(s) of {label} with λ = {MITIGATION_LAMBDA:g} and λ = 1 rows; at least 2"
            out.append(_not_testable(row, why, "not testable: too few seeds"))
            continue
        why = f"each run's mitigated weights against the same run unmitigated, {label}"
        row.update(gate="pass", gate_reason=why, family=claim.family)
        row["test"] = "none (zero variance)" if p.zero_variance else "paired t"
        row["p1"], row["p2"] = hypotheses(claim.kind, p, measure.min_effect)
        out.append(row)
    return out


def read_mitigation(out: str | Path) -> Any:
    """The study's mitigation tables (``out/mitigation/<run>/mitigation.csv``) as one frame, or None."""
    from lowrank_lab.analysis.intruder_tables import collect_mitigation

    paths = sorted(Path(out).glob("mitigation/*/mitigation.csv"))
    return collect_mitigation(paths) if paths else None


def missing_task_rows(tasks: Iterable[str]) -> list[dict[str, Any]]:
    """ "not run" rows of the claims that name a task none of the studies covers."""
    have = set(tasks)
    rows = []
    for claim in (*CLAIMS, FORGETTING_CLAIM, *MITIGATION_CLAIMS):
        for task in claim.tasks or ():
            if task in have:
                continue
            spec = get_task(task)
            row = _base_row(spec, claim, measure_for(claim, spec))
            row["n_seeds"] = 0
            rows.append(_not_testable(row, f"not run: no study of {task} among --studies", "not run"))
    return rows


def decide_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Holm within each family over every row given, then each tested row's verdict and
    claim_holds by :data:`~.stats.DECISION_RULE` (reads only columns of claims.csv)."""
    p1h, p2h, sizes = holm_families(rows)
    for row, a, b in zip(rows, p1h, p2h, strict=True):
        if row.get("gate") != "pass":
            continue
        row.update(p1_holm=a, p2_holm=b, family_size=sizes.get(row["family"], 0))
        zero = row.get("test") == "none (zero variance)"
        v = decide(row["kind"], row["effect"], row["ci_low"], row["ci_high"], _delta(row), a, b,
                   zero_variance=zero)  # fmt: skip
        h = holds(row["kind"], v, effect=row["effect"], delta=_delta(row), expects=row["expects"])
        if v == "exact":
            a, b = f"{row['method_a']} {row['mean_a']:.4g}", f"{row['method_b']} {row['mean_b']:.4g}"
            h += f": the difference is exactly {row['effect']:+.4g} on all {row['n_seeds']} seeds ({a}, {b})"
        row.update(verdict=v, claim_holds=h)
    return rows


def _delta(row: Mapping[str, Any]) -> float | None:
    d = row.get("min_effect")
    return float(d) if isinstance(d, (int, float)) and math.isfinite(d) else None


def _base_row(spec: TaskSpec, claim: Claim, measure: Measure) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update(
        task=spec.name,
        claim=claim.text,
        paper=claim.paper,
        paper_number=claim.paper_number(spec.name),
        kind=claim.kind,
        expects=claim.expects,
        metric=measure.name,
        unit=measure.unit,
        method_a=claim.a,
        method_b=claim.b,
        min_effect=measure.min_effect if measure.min_effect is not None else math.nan,
        test="",
        family="",
    )
    return row


def method_of_run(name: str) -> str:
    """The method (and rank) part of a run's name: ``lora-r8`` of ``lora-r8-seed3``."""
    return re.sub(r"-seed\d+$", "", name)


def within_method_spearman(
    x: Mapping[str, float], y: Mapping[str, float]
) -> tuple[float, float, float, float, int, int] | None:
    """Spearman correlation of ``x`` and ``y`` (run name -> value) within methods: each value ranked
    within its method (:func:`method_of_run`), centred on its method's mean rank, and the centred
    ranks correlated over all runs (a pooled within-group correlation). Its 95% interval by Fisher's
    z with se = 1.06 / sqrt(n - g - 2) for n runs in g methods (Fieller et al. 1957's Spearman
    factor; one degree of freedom per method mean removed) and its t test on n - g - 1 degrees of
    freedom. Returns (rho, low, high, p, n, g), or None when fewer than 2 methods have 3 runs each
    with some spread in both values."""
    from scipy import stats

    groups: dict[str, list[str]] = {}
    for n in sorted(set(x) & set(y)):
        groups.setdefault(method_of_run(n), []).append(n)
    cx: list[float] = []
    cy: list[float] = []
    used = 0
    for names in groups.values():
        xs, ys = [x[n] for n in names], [y[n] for n in names]
        if len(names) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
            continue  # a method without spread says nothing about the relation inside it
        rx, ry = stats.rankdata(xs), stats.rankdata(ys)
        cx += list(rx - rx.mean())
        cy += list(ry - ry.mean())
        used += 1
    n = len(cx)
    if used < 1 or n - used - 2 < 1:
        return None
    rho = float(sum(a * b for a, b in zip(cx, cy, strict=True))
                / math.sqrt(sum(a * a for a in cx) * sum(b * b for b in cy)))  # fmt: skip
    df = n - used - 1
    t = rho * math.sqrt(df / max(1e-12, 1 - rho * rho))
    p = float(2 * stats.t.sf(abs(t), df))
    z, se = math.atanh(max(min(rho, 0.999999), -0.999999)), 1.06 / math.sqrt(n - used - 2)
    return rho, math.tanh(z - 1.96 * se), math.tanh(z + 1.96 * se), p, n, used


def _forgetting_row(
    spec: TaskSpec,
    intruders: Mapping[str, float],
    forgetting: Mapping[str, float],
    gate_failed: tuple[str, str] | None,
) -> dict[str, Any]:
    """The correlation of intruder count and forgetting within methods (:func:`within_method_spearman`)."""
    row = _base_row(spec, FORGETTING_CLAIM, measure_for(FORGETTING_CLAIM, spec))
    names = sorted(set(intruders) & set(forgetting))
    row["runs"] = ", ".join(names)
    row["n_seeds"] = len(names)
    got = within_method_spearman(intruders, forgetting)
    if got is None:
        reason = (f"{len(names)} runs with both an intruder count and a forgetting measure; a within-method "
                  "correlation needs a method with 3 or more runs whose counts and forgetting both vary")
        return _not_testable(row, reason, "not testable: no spread within a method")
    rho, lo, hi, pval, n, groups = got
    row.update(effect=rho, ci_low=lo, ci_high=hi)
    if gate_failed:
        return _not_testable(row, *gate_failed)  # (reason, claim_holds) of the task's gate
    row.update(
        gate="pass",
        gate_reason=f"Spearman correlation within methods ({groups} of them, {n} runs: ranks centred per "
        "method); interval by Fisher's z",
        test="Spearman within methods",
        p1=pval,
        p2=math.nan,
        family=FORGETTING_CLAIM.family,
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
    out: str | Path, records: Sequence[RunRecord] | None = None, *, decided: bool = True
) -> list[dict[str, Any]]:
    """:func:`claim_rows` of one study folder (its runs, baselines.json, untuned.json, intruder
    counts and forgetting.csv); ``decided=False`` leaves Holm and the verdicts to a table over
    several studies (:func:`decide_rows`)."""
    from .forgetting import read_forgetting
    from .untuned import read_untuned

    out = Path(out)
    if records is None:
        records = study_records(out)
    check_protocol(records, out)
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
        mitigation=read_mitigation(out),
        # a study that trained seeds is gated on dev; one that stopped at selection here
        study_gate=selection_gate(out, baselines) if spec.kind == "causal-lm" and not records else None,
        tuning=tuning_notes(out, records),
        untuned=read_untuned(out),
        not_run=read_not_run(out),
        decided=decided,
    )
