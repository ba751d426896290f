"""The claims table on constructed studies: gates (the untuned model, the base's training data, the
exact-match floor), pairing, Holm per paper, every verdict; and the committed table recomputed."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from lowrank_lab.claims import main as claims_main
from lowrank_lab.training.claims import (
    CAPACITY_RANKS,
    CLAIMS,
    COLUMNS,
    EM_FLOOR,
    GATE_MARGIN,
    check_protocol,
    claim_rows,
    decide_rows,
    missing_task_rows,
    steps_to_fraction,
)
from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.record import DevScore, EvalPoint, RunRecord
from lowrank_lab.training.stats import VERDICTS
from lowrank_lab.training.tasks import get_task

SST2 = get_task("sst2")
STSB = get_task("stsb")
COLA = get_task("cola")
GSM8K = get_task("gsm8k")


def _rec(method, seed, metric, *, rank=8, loss=0.5, collapsed=False, status="finished", task="sst2",
         model="m", steps=600, em=None):  # fmt: skip
    return RunRecord(
        config=RunConfig(task=task, method=method, seed=seed, rank=rank, model=model, steps=steps),
        status=status,
        final_metric=metric,
        collapsed=collapsed,
        train_loss=[loss] * 10,
        dev=DevScore(
            step=10,
            metric=metric,
            loss=metric if task == "gsm8k" else loss,
            collapsed=False,
            n=8,
            exact_match=em,
        ),  # fmt: skip
    )


OFFSETS = [0.0, 0.004, -0.003, 0.002, -0.001]  # a seed's shared offset: differences stay exact
NOISE = [0.0, 0.003, -0.002, 0.001, -0.002]  # a method's own per-seed noise


def _study(task="sst2", noisy=(), model="m", **means):
    """Five seeds per method; seed s adds a shared offset, and the methods in ``noisy`` their own
    noise, so differences between the others are exact (zero variance). The capacity claims' methods
    run at their papers' ranks (CAPACITY_RANKS), the others at 8."""
    return [
        _rec(m, s, v + OFFSETS[s] + (NOISE[s] if m in noisy else 0.0), task=task, model=model,
             rank=CAPACITY_RANKS.get(m, 8))
        for m, v in means.items()
        for s in range(5)
    ]


BASE = {"head": 0.78, "lora": 0.88, "full": 0.89}
BASELINES = {"constant_predictor": 0.509}


def _row(rows, key, task=None):
    text = next(c.text for c in CLAIMS if c.key == key)
    return next(r for r in rows if r["claim"] == text and (task is None or r["task"] == task))


def test_rows_have_every_column_and_one_row_per_applicable_claim():
    rows = claim_rows(SST2, _study(**BASE, pissa=0.90), baselines=BASELINES)
    assert all(set(r) == set(COLUMNS) for r in rows)
    # the paired claims, then the two mitigation rows (not run here: no mitigation tables)
    assert len(rows) == sum(c.tasks is None or "sst2" in c.tasks for c in CLAIMS) + 2
    assert {r["verdict"] for r in rows} <= set(VERDICTS)
    gsm = claim_rows(GSM8K, [], baselines={"bigram": 3.0})
    assert not any("intruder" in r["claim"] for r in gsm)  # intruder claims are SST-2's


def test_confirmed_with_paired_seeds_and_the_numbers_it_reports():
    rows = claim_rows(SST2, _study(noisy=("pissa",), **BASE, pissa=0.90), baselines=BASELINES)
    r = _row(rows, "pissa>lora")
    assert r["verdict"] == "confirmed" and r["claim_holds"] == "yes" and r["gate"] == "pass"
    assert r["kind"] == "superiority" and r["metric"] == "accuracy" and r["test"] == "paired t"
    assert r["n_seeds"] == 5 and r["effect"] == pytest.approx(0.02) and r["min_effect"] == 0.01
    assert r["ci_low"] > 0.01 and r["family"] == "PiSSA" and r["p1_holm"] < 0.05
    assert r["runs"].startswith("pissa-r8-seed0 vs lora-r8-seed0")
    assert r["paper_number"].startswith("no SST-2 number from this paper")  # its GSM8K number is not quoted
    assert "GSM8K" in r["paper_number"] and "53.22" not in r["paper_number"]


def test_zero_variance_has_no_test_statistic_and_states_the_values():
    rows = claim_rows(SST2, _study(**BASE, pissa=0.90), baselines=BASELINES)  # +0.02 on every seed
    r = _row(rows, "pissa>lora")
    assert r["verdict"] == "exact" and r["test"] == "none (zero variance)"
    assert math.isnan(r["p1"]) and math.isnan(r["p2"]) and math.isnan(r["p1_holm"])
    assert r["claim_holds"].startswith("yes: the difference is exactly +0.02 on all 5 seeds (pissa 0.9")


def test_each_verdict_is_reachable_from_runs():
    recs = _study(noisy=("pissa", "slora"), **BASE, pissa=0.86, slora=0.874)
    recs += [_rec("milora", s, 0.8605 + OFFSETS[s] + NOISE[::-1][s]) for s in range(5)]
    swings = [0.0, 0.05, -0.05, 0.04, -0.04]  # nlora: big per-seed swings around lora
    recs += [_rec("nlora", s, 0.88 + OFFSETS[s] + swings[s]) for s in range(5)]
    recs += [_rec("loldu", s, 0.878 + OFFSETS[s] + NOISE[s], rank=384) for s in range(5)]
    recs += [_rec("inttune", s, 0.80 + OFFSETS[s] + NOISE[s], rank=128) for s in range(5)]
    rows = claim_rows(SST2, recs, baselines=BASELINES)
    assert _row(rows, "pissa>lora")["verdict"] == "contradicted"  # 0.02 worse
    assert _row(rows, "milora>pissa")["verdict"] == "equivalent"  # 0.0005 apart: inside ±0.01
    assert _row(rows, "slora>lora")["verdict"] == "contradicted"  # 0.006 worse, significant, inside ±δ
    assert _row(rows, "nlora>lora")["verdict"] == "inconclusive"
    loldu = _row(rows, "loldu~lora")  # 0.002 below LoRA, well inside -delta: matches
    assert (
        loldu["kind"] == "non-inferiority"
        and loldu["verdict"] == "confirmed"
        and loldu["claim_holds"] == "yes"
    )
    it = _row(rows, "inttune~lora")
    assert it["verdict"] == "contradicted" and it["claim_holds"] == "no" and it["ci_high"] < -0.01
    xs = _row(rows, "lora-xs~lora")  # no lora-xs runs: a budget choice, said as such, with the runs missing
    assert xs["verdict"] == "not testable" and xs["claim_holds"] == "not run"
    assert xs["gate_reason"] == "not run on sst2: no runs of lora-xs@25 (runs/lora-xs-r25-seed*)"


def test_equivalent_when_a_difference_is_inside_delta():
    recs = _study(noisy=("milora",), **BASE, pissa=0.86)
    recs += [_rec("milora", s, 0.86 + OFFSETS[s] + NOISE[s] / 3) for s in range(5)]
    r = _row(claim_rows(SST2, recs, baselines=BASELINES), "milora>pissa")
    assert -0.01 < r["ci_low"] < r["ci_high"] < 0.01 and r["verdict"] == "equivalent"
    assert r["claim_holds"] == "no (no difference that matters)"


def test_holm_families_are_one_per_paper_across_its_tasks():
    sst = claim_rows(SST2, _study(noisy=("pissa", "milora"), **BASE, pissa=0.89, milora=0.885),
                     baselines=BASELINES, decided=False)  # fmt: skip
    cola = claim_rows(COLA, _study("cola", noisy=("pissa", "milora"), **BASE, pissa=0.89, milora=0.885),
                      baselines=BASELINES, decided=False)  # fmt: skip
    rows = decide_rows(sst + cola)
    pissa = [r for r in rows if r["family"] == "PiSSA"]
    # PiSSA's two claims (ends higher; converges faster: zero variance, no p) on two tasks
    assert {r["task"] for r in pissa} == {"sst2", "cola"}
    assert {r["family_size"] for r in pissa} == {4}  # p1 and p2 of "ends higher" on each task
    milora = [r for r in rows if r["family"] == "MiLoRA"]
    assert {r["family_size"] for r in milora} == {4} and len(milora) == 4  # milora>pissa: exact, no p
    assert {r["verdict"] for r in milora if r["claim"] == "MiLoRA ends higher than PiSSA"} == {"exact"}
    alone = _row(claim_rows(SST2, _study(noisy=("pissa", "milora"), **BASE, pissa=0.89, milora=0.885),
                            baselines=BASELINES), "pissa>lora")  # fmt: skip
    together = _row(rows, "pissa>lora", "sst2")
    assert together["p1"] == pytest.approx(alone["p1"]) and together["p1_holm"] >= alone["p1_holm"]
    assert not {r["family"] for r in rows if r["gate"] != "pass"} - {""}  # untested rows join no family


def test_gate_fails_when_the_interval_does_not_clear_the_head_only_control():
    # the mean clears head-only by 0.06, but LoRA's own seed noise puts the lower bound under 0.05
    recs = _study(head=0.82, full=0.89, pissa=0.90)
    wide = [0.0, 0.012, -0.012, 0.008, -0.008]
    recs += [_rec("lora", s, 0.88 + OFFSETS[s] + wide[s]) for s in range(5)]
    r = _row(claim_rows(SST2, recs, baselines=BASELINES), "pissa>lora")
    assert r["verdict"] == "not testable" and r["gate"] == "fail" and r["family"] == ""
    assert f"fails (each lower bound ≥ {GATE_MARGIN['accuracy']:g} needed)" in r["gate_reason"]
    assert "lora − head-only (frozen untuned encoder) +0.060 [" in r["gate_reason"]
    assert r["claim_holds"].startswith("not testable: fine-tuning not shown to beat")
    assert r["effect"] == pytest.approx(0.02 - 0.0)  # descriptive numbers stay
    assert math.isnan(r["p1"] if r["p1"] is not None else math.nan)


def test_gate_needs_the_constant_predictor_and_the_control():
    rows = claim_rows(SST2, _study(**BASE, pissa=0.9), baselines={})
    assert "no constant predictor result" in _row(rows, "pissa>lora")["gate_reason"]
    rows = claim_rows(SST2, _study(lora=0.88, full=0.89, pissa=0.9), baselines=BASELINES)
    assert "no head-only (frozen untuned encoder) result" in _row(rows, "pissa>lora")["gate_reason"]


def test_the_converged_linear_probe_joins_the_classification_gate_when_measured():
    recs = _study(**BASE, pissa=0.90)
    probe = {"metric": 0.95, "probe_C": 1.0, "probe_class_weight": "none"}  # beats every method
    r = _row(claim_rows(SST2, recs, baselines=BASELINES, untuned=probe), "pissa>lora")
    assert r["verdict"] == "not testable"
    assert "lora − linear probe on the untuned encoder -0.070" in r["gate_reason"]
    weak = _row(claim_rows(SST2, recs, baselines=BASELINES, untuned={**probe, "metric": 0.70}), "pissa>lora")
    assert weak["gate"] == "pass" and "linear probe on the untuned encoder +0.180" in weak["gate_reason"]
    without = _row(claim_rows(SST2, recs, baselines=BASELINES), "pissa>lora")
    assert "linear probe" not in without["gate_reason"]


def test_untuned_gate_on_a_task_the_base_already_solves_is_not_testable():
    # STS-B-like: the untuned encoder's cosine similarity (0.90) beats fine-tuning (0.88)
    recs = _study("stsb", noisy=("pissa",), head=0.38, lora=0.88, full=0.89, pissa=0.90)
    base = {"constant_predictor": 0.0}
    rows = claim_rows(STSB, recs, baselines=base, untuned={"metric": 0.90})
    r = _row(rows, "pissa>lora")
    assert r["verdict"] == "not testable" and "untuned encoder's cosine similarity" in r["gate_reason"]
    assert "lora − untuned encoder's cosine similarity -0.020" in r["gate_reason"]
    missing = _row(claim_rows(STSB, recs, baselines=base), "pissa>lora")  # no untuned.json
    assert missing["gate_reason"].startswith("no untuned encoder's cosine similarity result (untuned.json)")
    ok = _row(claim_rows(STSB, recs, baselines=base, untuned={"metric": 0.50}), "pissa>lora")
    assert ok["gate"] == "pass" and ok["verdict"] == "confirmed"


def test_a_task_the_base_was_trained_on_is_not_testable_and_still_runs():
    recs = _study("stsb", noisy=("pissa",), model="minilm", head=0.38, lora=0.88, full=0.89, pissa=0.90)
    rows = claim_rows(STSB, recs, baselines={"constant_predictor": 0.0}, untuned={"metric": 0.5})
    assert {r["verdict"] for r in rows} == {"not testable"}
    r = _row(rows, "pissa>lora")
    assert r["claim_holds"] == "not testable: base trained on this kind of data"
    assert "Quora duplicate questions" in r["gate_reason"] and r["effect"] == pytest.approx(0.02)
    sst = claim_rows(SST2, _study(model="minilm", noisy=("pissa",), **BASE, pissa=0.90), baselines=BASELINES)
    assert _row(sst, "pissa>lora")["verdict"] == "confirmed"  # SST-2 is not in MiniLM's training data


def _gsm(em_lora, em_pissa=None):
    recs = []
    for m, loss, em in (
        ("lora", 2.0, em_lora),
        ("pissa", 2.1, em_pissa if em_pissa is not None else em_lora),
    ):
        for s in range(5):
            recs.append(_rec(m, s, loss + 0.01 * s + (0.003 * s * s if m == "pissa" else 0.0), task="gsm8k",
                             em=None if em is None else em + 0.01 * (s % 2)))  # fmt: skip
    return recs


GSM_BASE = {"bigram": 2.8, "unigram": 4.4}
UNTUNED_LM = {"answer_loss": 6.98, "metric": 6.98, "exact_match": 0.0}


def test_language_modelling_claims_need_the_exact_match_floor():
    rows = claim_rows(GSM8K, _gsm(None), baselines=GSM_BASE, untuned=UNTUNED_LM)
    r = _row(rows, "pissa>lora")
    assert r["verdict"] == "not testable" and r["claim_holds"] == "not testable at this scale"
    assert r["gate_reason"].startswith("exact match not measured on the lora runs")
    assert r["effect"] == pytest.approx(-0.1 - 0.003 * 30 / 5) and r["metric"] == "answer_loss"  # descriptive
    at_zero = _row(claim_rows(GSM8K, _gsm(0.0), baselines=GSM_BASE, untuned=UNTUNED_LM), "pissa>lora")
    assert at_zero["verdict"] == "not testable" and "exact-match floor fails" in at_zero["gate_reason"]
    able = _row(claim_rows(GSM8K, _gsm(0.20), baselines=GSM_BASE, untuned=UNTUNED_LM), "pissa>lora")
    assert able["gate"] == "pass" and f"≥ {EM_FLOOR:g} needed" in able["gate_reason"]
    assert able["verdict"] == "contradicted"  # higher answer loss: worse
    bigram = _row(claim_rows(GSM8K, _gsm(0.2), baselines={"bigram": 1.9, "unigram": 4.4}, untuned=UNTUNED_LM),
                  "pissa>lora")  # fmt: skip
    assert bigram["verdict"] == "not testable" and "lora − bigram" in bigram["gate_reason"]
    no_untuned = _row(claim_rows(GSM8K, _gsm(0.2), baselines=GSM_BASE), "pissa>lora")
    assert no_untuned["gate_reason"] == "no untuned model result (untuned.json) to gate against"


def test_convergence_on_a_squared_error_loss_is_steps_to_90_percent_of_the_gain():
    rec = _rec("lora", 0, 0.8, task="stsb")
    rec.steps_done = 100
    rec.evals = [EvalPoint(step=k, metric=m, loss=1.0) for k, m in ((0, 0.0), (50, 0.5), (100, 1.0))]
    assert steps_to_fraction(rec, STSB) == pytest.approx(0.9)  # 0.9 reached at step 90 by interpolation
    rec.evals[1] = EvalPoint(step=50, metric=0.95, loss=1.0)
    assert steps_to_fraction(rec, STSB) == pytest.approx(50 * 0.9 / 0.95 / 100)
    rows = claim_rows(STSB, _study("stsb", **BASE, pissa=0.9), baselines={"constant_predictor": 0.0},
                      untuned={"metric": 0.5})  # fmt: skip
    assert _row(rows, "pissa-converges")["metric"] == "steps_to_90"
    assert _row(claim_rows(SST2, _study(**BASE, pissa=0.9), baselines=BASELINES), "pissa-converges")[
        "metric"] == "loss_auc"  # fmt: skip


def test_collapsed_runs_are_left_out_and_listed():
    recs = _study(noisy=("pissa",), **BASE, pissa=0.90)
    for r in recs:
        if r.method == "pissa" and r.seed in (1, 3):
            r.final_metric, r.collapsed = 0.509, True
    r = _row(claim_rows(SST2, recs, baselines=BASELINES), "pissa>lora")
    assert r["n_seeds"] == 3 and "collapsed, left out: pissa-r8-seed1, pissa-r8-seed3" in r["runs"]
    assert not _rec("lora", 0, math.nan).usable
    assert not _rec("lora", 0, 0.9, status="diverged").usable
    assert not _rec("lora", 0, None).usable and _rec("lora", 0, 0.9).usable


def test_a_study_with_runs_of_different_protocols_is_refused_naming_them():
    recs = _study(**BASE, pissa=0.9)
    recs[-1] = _rec("pissa", 4, 0.9, steps=1200)
    with pytest.raises(ValueError, match=r"pissa-r8-seed4: steps 1200 \(not 600\)"):
        claim_rows(SST2, recs, baselines=BASELINES)
    recs[-1] = _rec("pissa", 4, 0.9)
    recs[-1].meta = {"versions": {"lowrank_lab": "0.2.0"}}
    with pytest.raises(ValueError, match="different code or protocol versions"):
        check_protocol(recs, "reports/study/sst2")


def test_a_claim_naming_a_task_with_no_study_is_not_run():
    rows = missing_task_rows({"stsb"})
    assert rows and {r["task"] for r in rows} == {"sst2", "cola"}  # and LoRA-forgets-less on CoLA
    assert {r["claim_holds"] for r in rows} == {"not run"}
    assert all(r["gate_reason"] == f"not run: no study of {r['task']} among --studies" for r in rows)
    assert {r["task"] for r in missing_task_rows({"sst2"})} == {"cola"}
    assert missing_task_rows({"sst2", "cola"}) == []


def test_rank_variants_and_intruder_counts():
    recs = _study(**BASE) + [_rec("lora", s, 0.87, rank=1) for s in range(3)]
    counts = {f"lora-r1-seed{s}": 5.0 + s for s in range(3)} | {f"full-seed{s}": 0.0 for s in range(3)}
    r = _row(claim_rows(SST2, recs, baselines=BASELINES, intruders=counts), "intruders r1")
    assert r["n_seeds"] == 3 and r["effect"] == pytest.approx(6.0) and r["verdict"] == "confirmed"
    assert r["family"] == "intruders"
    r8 = _row(claim_rows(SST2, recs, baselines=BASELINES, intruders=counts), "intruders r8")
    assert r8["verdict"] == "not testable" and "a value of intruders" in r8["gate_reason"]
    zero = counts | {f"lora-r8-seed{s}": 0.0 for s in range(3)}
    r8 = _row(claim_rows(SST2, recs, baselines=BASELINES, intruders=zero), "intruders r8")
    assert r8["verdict"] == "exact" and r8["claim_holds"].startswith("no: the difference is exactly +0")


def test_forgetting_claim_is_a_spearman_correlation_within_methods_judged_by_its_interval():
    from lowrank_lab.training.claims import within_method_spearman

    names = [f"lora-r1-seed{i}" for i in range(8)]
    intr = dict(zip(names, [0, 0, 1, 3, 4, 6, 8, 9], strict=True))
    forg = dict(zip(names, [0.0, 0.01, 0.0, 0.02, 0.05, 0.04, 0.08, 0.1], strict=True))
    rows = claim_rows(SST2, _study(**BASE), baselines=BASELINES, intruders=intr, forgetting=forg)
    r = next(r for r in rows if r["method_a"] == "intruders")
    rho, lo, hi, p, n, g = within_method_spearman(intr, forg)
    assert (n, g) == (8, 1) and r["effect"] == pytest.approx(rho) and r["p1"] == pytest.approx(p)
    assert math.isnan(r["min_effect"]) and r["kind"] == "correlation"
    assert r["ci_low"] < rho < r["ci_high"] and r["verdict"] == "confirmed"
    few = claim_rows(SST2, _study(**BASE), baselines=BASELINES, intruders=intr, forgetting={"run0": 0.1})
    assert next(r for r in few if r["method_a"] == "intruders")["verdict"] == "not testable"


def test_pooling_methods_makes_a_correlation_that_no_method_shows():
    # full fine-tuning: no intruders, much forgetting; LoRA r = 1: many intruders, little forgetting. Inside
    # each method the two are unrelated (alternating orders), pooled they correlate strongly (negatively).
    from scipy import stats

    from lowrank_lab.training.claims import within_method_spearman

    intr = {f"full-seed{i}": float(i % 2) for i in range(6)}
    intr |= {f"lora-r1-seed{i}": 10.0 + (i % 3) for i in range(6)}
    forg = {f"full-seed{i}": 0.30 + 0.01 * ((i + 1) % 3) for i in range(6)}
    forg |= {f"lora-r1-seed{i}": 0.04 + 0.01 * (i % 2) for i in range(6)}
    names = sorted(intr)
    pooled, _ = stats.spearmanr([intr[n] for n in names], [forg[n] for n in names])
    rho, lo, hi, p, n, g = within_method_spearman(intr, forg)
    assert pooled < -0.7 and (n, g) == (12, 2)
    assert lo < 0 < hi and abs(rho) < abs(pooled)


def test_lora_forgets_less_than_full_fine_tuning_is_a_paired_row_of_its_own():
    recs = _study(**BASE)
    forg = {f"lora-r8-seed{s}": 0.04 + 0.005 * s for s in range(5)}
    forg |= {f"full-seed{s}": 0.26 - 0.01 * s for s in range(5)}
    r = _row(claim_rows(SST2, recs, baselines=BASELINES, forgetting=forg), "lora-forgets-less")
    assert r["metric"] == "forgetting" and r["n_seeds"] == 5
    # LoRA's drop is smaller: positive in the claim's direction, by 0.22 - 0.015 * seed on average
    assert r["effect"] == pytest.approx(0.22 - 0.015 * 2) and r["ci_low"] > 0.02
    assert r["verdict"] == "confirmed" and r["paper"].startswith("Biderman et al. 2024")


def test_a_method_still_rising_is_named_beside_its_verdict():
    from lowrank_lab.claims import render

    def curve(step):  # validation accuracy every 2 steps of a 10-step run, rising by ``step`` per eval
        return [
            EvalPoint(step=k, metric=0.5 if k == 0 else 0.7 + step * k, loss=1.0) for k in range(0, 11, 2)
        ]

    recs = _study(noisy=("loldu",), **BASE, loldu=0.80)
    rising = {("loldu", 0), ("loldu", 1), ("loldu", 2), *(("lora", s) for s in range(5))}
    for r in recs:  # the slope over the last evaluations, its interval above 0: "still rising"
        r.steps_done = 10
        r.evals = curve(0.01 if (r.method, r.seed) in rising else 0.0)
    rows = claim_rows(SST2, recs, baselines=BASELINES)
    loldu = _row(rows, "loldu~lora")
    assert loldu["still_rising"] == "loldu@384 3/5, lora 5/5" and loldu["verdict"] == "contradicted"
    assert _row(rows, "pissa>lora")["still_rising"] == "lora 5/5"  # pissa: not run
    md = render(pd.DataFrame(rows, columns=COLUMNS), [], "cmd")
    assert "| contradicted | no; still rising: loldu@384 3/5, lora 5/5 |" in md
    pissa = next(
        line for line in md.splitlines() if line.startswith("| PiSSA ends higher than LoRA | superiority |")
    )
    assert pissa.endswith("| not testable | not run |")  # an untested claim carries no budget caveat


def test_claims_cli_writes_csv_and_md_and_names_a_bad_folder(tmp_path, capsys):
    assert claims_main(["--studies", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m lowrank_lab.claims: error: --studies ") and len(err.splitlines()) == 1
    assert "no runs/ folder or selection.csv; pass a finetune --out folder" in err


@pytest.mark.slow  # trains a tiny study first (~10 s); tests/cli/test_claims.py is the quick one
def test_claims_cli_over_a_real_tiny_study(glue_dir, bert_tokenizer, tiny_pooled, tmp_path, capsys):
    from .test_study import _run

    study = tmp_path / "study"
    _run(
        glue_dir,
        study,
        bert_tokenizer,
        tiny_pooled(2),
        methods=("lora", "full", "head", "pissa"),
        seeds=(0, 1),
        base={"steps": 4, "val_samples": 12, "eval_every": 2},
    )
    argv = ["--studies", str(study), "--out", str(tmp_path / "r"), "--data-dir", str(glue_dir)]
    assert claims_main(argv) == 0
    import pandas as pd

    table = pd.read_csv(tmp_path / "r" / "claims.csv")
    assert list(table.columns) == COLUMNS and set(table["task"]) == {"sst2", "cola"}  # cola: not run
    assert set(table.loc[table["task"] == "cola", "claim_holds"]) == {"not run"}
    assert set(table["verdict"]) <= set(VERDICTS)
    pissa = table[table["method_b"].eq("lora") & table["method_a"].eq("pissa")]
    assert len(pissa) == 2 and set(pissa["n_seeds"]) <= {0, 2}  # final metric and convergence
    md = (tmp_path / "r" / "claims.md").read_text()
    assert md.startswith("# Claims at this scale") and "## sst2" in md and "Gates:" in md
    assert (study / "baselines.json").is_file()  # written by the study (the CLI makes it when missing)
    # classification: the converged linear probe of the untuned encoder is measured and gates
    untuned = json.loads((study / "untuned.json").read_text())
    assert untuned["task"] == "sst2" and "probe_C" in untuned and 0.0 <= untuned["metric"] <= 1.0
    assert "wrote" in capsys.readouterr().out


def test_language_modelling_study_gated_at_selection(tmp_path):
    import pandas as pd

    from lowrank_lab.training.claims import selection_gate, study_claims

    cols = ["method", "rank", "rate_of", "lr", "val_metric", "status", "collapsed", "steps_done", "chosen"]
    rows = [
        ["lora", 8, "lr", 2e-4, 3.30, "finished", False, 600, True],
        ["lora", 8, "lr", 6e-4, 3.10, "finished", False, 600, False],  # better, but not chosen
        ["full", 8, "lr", 2e-5, 3.25, "finished", False, 600, True],
    ]
    pd.DataFrame(rows, columns=cols).to_csv(tmp_path / "selection.csv", index=False)
    base = {"task": "gsm8k", "bigram": 3.0, "bigram_validation": 3.2, "unigram": 4.4}
    (tmp_path / "baselines.json").write_text(__import__("json").dumps(base))
    ok, reason = selection_gate(tmp_path, base)
    assert not ok and "lora 3.300 at 0.0002, full 3.250 at 2e-05" in reason and "bigram's 3.200" in reason
    rows_out = study_claims(tmp_path)  # selection only: no runs/, every claim gated with that reason
    assert rows_out and {r["verdict"] for r in rows_out} == {"not testable"}
    assert all(r["gate_reason"] == reason for r in rows_out)
    assert selection_gate(tmp_path, {**base, "bigram_validation": 3.26})[0]  # full's 3.25 is below
    assert selection_gate(tmp_path, {"bigram": 3.0}) is None  # a study made before the baseline existed


def test_each_claim_says_how_its_methods_rates_were_chosen(tmp_path):
    import pandas as pd

    from lowrank_lab.training.claims import tuning_notes

    cols = ["method", "rank", "rate_of", "lr", "val_metric", "status", "collapsed", "steps_done", "chosen"]

    pd.DataFrame(
        [("lora", 8, "lr", lr, 0.8, "finished", False, 10, lr == 1e-3) for lr in (3e-4, 1e-3, 3e-3)]
        + [("pissa", 8, "lr", lr, 0.8, "finished", False, 10, lr == 3e-3) for lr in (3e-4, 1e-3, 3e-3)]
        + [("lora", 64, "lr", lr, 0.8, "finished", False, 10, lr == 1e-4) for lr in (1e-4, 1e-3)]
        + [("head", 8, "head_lr", 1e-2, 0.8, "finished", False, 10, True)],
        columns=cols,  # the selection.csv columns tuning_notes reads, and a few more
    ).to_csv(tmp_path / "selection.csv", index=False)
    recs = _study(**BASE, pissa=0.90)
    notes = tuning_notes(tmp_path, recs)
    assert notes == {
        "lora": "lora 0.001 (3 rates)",
        "pissa": "pissa 0.003 (3 rates, at the top edge)",
        "lora@64": "lora@64 0.0001 (2 rates, at the bottom edge)",
        "head": "head-only, head rate 0.01 (1 rate)",
    }
    row = _row(claim_rows(SST2, recs, baselines=BASELINES, tuning=notes), "pissa>lora")
    assert row["tuning"] == "pissa 0.003 (3 rates, at the top edge); lora 0.001 (3 rates)"
    assert row["gate_reason"].endswith("; head-only, head rate 0.01 (1 rate)")  # the gate's control
    assert tuning_notes(tmp_path / "nowhere", recs) == {}


def test_claims_cli_refuses_a_study_with_mixed_protocols_in_one_line(tmp_path, capsys):
    study = tmp_path / "study"
    recs = _study(**BASE, pissa=0.9)
    recs[-1] = _rec("pissa", 4, 0.9, steps=1200)
    for rec in recs:
        rec.write((study / "runs" / rec.run_name).mkdir(parents=True) or study / "runs" / rec.run_name)
    (study / "baselines.json").write_text(json.dumps({"task": "sst2", "constant_predictor": 0.509}))
    assert claims_main(["--studies", str(study), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "runs from different code or protocol versions" in err
    assert "pissa-r8-seed4: steps 1200 (not 600)" in err and str(study) in err


def test_readme_section_is_replaced_between_headings_and_a_missing_one_is_refused():
    from lowrank_lab.claims import README_HEADING, replace_readme_section

    text = f"# x\n\n{README_HEADING}\n\nold\n\n## Install\n\npip\n"
    new = replace_readme_section(text, f"{README_HEADING}\n\nnew\n")
    assert new == f"# x\n\n{README_HEADING}\n\nnew\n\n## Install\n\npip\n"
    with pytest.raises(ValueError, match="--readme: no"):
        replace_readme_section("# x\n", "y")


def test_untuned_reference_is_read_from_its_file_and_every_task_kind_has_one(tmp_path):
    from lowrank_lab.training.untuned import UNTUNED, measure_untuned, needs_untuned, read_untuned

    assert read_untuned(tmp_path) == {}
    (tmp_path / UNTUNED).write_text(json.dumps({"task": "stsb", "metric": 0.867}))
    assert read_untuned(tmp_path)["metric"] == 0.867
    (tmp_path / UNTUNED).write_text("{not json")
    assert read_untuned(tmp_path) == {}
    assert needs_untuned("regression") and needs_untuned("causal-lm") and needs_untuned("classification")
    with pytest.raises(FileNotFoundError):  # SST-2's probe reads the task data, which tmp_path lacks
        measure_untuned(_study(**BASE), tmp_path)


def _mitigation_frame(n=5, reduction=0.01, cost=0.002):
    rows = []
    for s in range(n):
        base = 0.05 + 0.001 * s
        wobble = 0.001 * (s % 2)
        for lam, f, m in ((1.0, base, 0.84), (0.75, base - reduction - wobble, 0.84 - cost - wobble)):
            rows.append({"run": f"lora-r1-seed{s}", "method": "lora", "rank": 1, "seed": s, "lambda": lam,
                         "task_metric": m, "forgetting": f})
        rows.append({"run": f"lora-r1-seed{s}", "method": "lora", "rank": 1, "seed": s, "lambda": 0.0,
                     "task_metric": 0.5, "forgetting": 0.0})  # another lambda: not read by the claim
    return pd.DataFrame(rows)


def test_mitigation_claims_pair_each_run_with_itself_at_pefts_lambda():
    from lowrank_lab.training.claims import MITIGATION_CLAIMS, mitigation_rows

    assert {c.key for c in MITIGATION_CLAIMS} == {"mitigation-forgets-less", "mitigation-keeps-task"}
    forgets, keeps = mitigation_rows(SST2, _mitigation_frame(reduction=0.03), None)
    # forgetting falls by 0.03 or 0.031: positive in the claim's direction (a smaller drop is better)
    assert forgets["n_seeds"] == 5
    assert (forgets["method_a"], forgets["method_b"]) == ("lora@1 λ=0.75", "lora@1")
    assert forgets["effect"] == pytest.approx(0.0304) and forgets["ci_low"] > 0.02
    # the task metric falls by 0.002-0.003, inside the accuracy delta of 0.01: non-inferior
    assert keeps["kind"] == "non-inferiority" and keeps["effect"] == pytest.approx(-0.0024)
    assert keeps["ci_low"] > -0.01 and keeps["gate"] == "pass"
    decided = decide_rows([forgets, keeps])
    assert [r["verdict"] for r in decided] == ["confirmed", "confirmed"]
    # a reduction of 0.0104, inside the forgetting delta of 0.02, is not the claimed effect
    small = decide_rows(mitigation_rows(SST2, _mitigation_frame(reduction=0.01), None))
    assert small[0]["verdict"] == "equivalent"


def test_mitigation_claims_without_tables_are_not_run_and_follow_the_task_gate():
    from lowrank_lab.training.claims import mitigation_rows

    none = mitigation_rows(SST2, None, None)
    assert {r["claim_holds"] for r in none} == {"not run"} and "--mitigate" in none[0]["gate_reason"]
    gated = mitigation_rows(SST2, _mitigation_frame(), ("the gate failed", "not testable: gate"))
    assert {r["verdict"] for r in gated} == {"not testable"} and gated[0]["effect"] == pytest.approx(0.0104)
    few = mitigation_rows(SST2, _mitigation_frame(n=1), None)
    assert {r["claim_holds"] for r in few} == {"not testable: too few seeds"}


def test_plain_names_keep_meaning_lora_at_rank_8_when_other_ranks_tie_with_it():
    from lowrank_lab.training.config import common_rank

    tie = [("lora", 1), ("lora", 8), ("lora", 64), ("lora-xs", 25), ("full", 0), ("head", 0)]
    assert common_rank(tie * 5) == 8  # counting alone would pick r = 1
    assert common_rank([("lora", 16)] * 3 + [("lora", 4)] * 3) == 4  # no r = 8 runs: most used, then smaller
    assert common_rank([("full", 0)]) is None
    # in claims: the gate and "lora" read the r = 8 runs (r = 1 and 64 at 0.70 would fail the gate)
    recs = _study(**BASE, pissa=0.90)
    recs += [_rec("lora", s, 0.70 + OFFSETS[s] + NOISE[s], rank=r) for r in (1, 64) for s in range(5)]
    pissa = _row(claim_rows(SST2, recs, baselines=BASELINES), "pissa>lora")
    assert pissa["gate"] == "pass" and pissa["effect"] == pytest.approx(0.02)
    assert pissa["runs"].startswith("pissa-r8-seed0 vs lora-r8-seed0")


def test_capacity_claims_are_judged_at_the_papers_configuration_only():
    at8 = _study(**BASE, **{"lora-xs": 0.879, "loldu": 0.878, "inttune": 0.877})  # paper ranks: no r = 8
    at8 += [_rec(m, s, 0.87, rank=8) for m in ("lora-xs", "loldu", "inttune") for s in range(5)]
    rows = claim_rows(SST2, at8, baselines=BASELINES)
    for key, method in (("lora-xs~lora", "lora-xs"), ("loldu~lora", "loldu"), ("inttune~lora", "inttune")):
        r = _row(rows, key)
        assert r["method_a"] == f"{method}@{CAPACITY_RANKS[method]}" and r["n_seeds"] == 5
        assert f"{method}-r8-" not in r["runs"]  # LoRA's side is at r = 8, the method's at its paper's rank
        assert r["runs"].startswith(f"{method}-r{CAPACITY_RANKS[method]}-seed0 vs lora-r8-seed0")
    only8 = [r for r in at8 if not (r.method in CAPACITY_RANKS and r.rank != 8)]
    xs = _row(claim_rows(SST2, only8, baselines=BASELINES), "lora-xs~lora")
    assert xs["claim_holds"] == "not run"  # r = 8 is no paper's configuration: its runs are not read
    assert xs["gate_reason"] == "not run on sst2: no runs of lora-xs@25 (runs/lora-xs-r25-seed*)"
    # a study run at rank 25 throughout names its LoRA-XS runs plainly; the claim still finds them
    at25 = [_rec(m, s, v + OFFSETS[s], rank=25) for m, v in (("lora", 0.88), ("lora-xs", 0.879))
            for s in range(5)]  # fmt: skip
    at25 += [_rec(m, s, v + OFFSETS[s]) for m, v in (("head", 0.78), ("full", 0.89)) for s in range(5)]
    xs25 = _row(claim_rows(SST2, at25, baselines=BASELINES), "lora-xs~lora")
    assert xs25["n_seeds"] == 5 and xs25["runs"].startswith("lora-xs-r25-seed0 vs lora-r25-seed0")


def test_a_study_says_why_it_did_not_run_a_method_and_the_claims_repeat_it(tmp_path):
    import json

    from lowrank_lab.training.claims import MITIGATION_CLAIMS, NOT_RUN, study_claims

    for rec in _study(**BASE, pissa=0.90):
        (tmp_path / "runs" / rec.run_name).mkdir(parents=True)
        rec.write(tmp_path / "runs" / rec.run_name)
    (tmp_path / "baselines.json").write_text(json.dumps(BASELINES))
    budget = "outside the 40 CPU-hour budget (31.2 recorded + about 7.7 for block sst2-xs)"
    said = {"lora-xs@25": budget, "lora-sb": "block 5: left out", "lora-xs": "block 5: left out",
            "pissa": "never read: pissa has runs", "mitigation": "no r = 1 runs"}  # fmt: skip
    (tmp_path / NOT_RUN).write_text(json.dumps(said))
    rows = study_claims(tmp_path)
    xs = _row(rows, "lora-xs~lora")
    assert xs["claim_holds"] == "not run"
    missing = "no runs of lora-xs@25 (runs/lora-xs-r25-seed*)"
    assert xs["gate_reason"] == f"not run on sst2: {budget}; {missing}"
    sb = _row(rows, "lora-sb>lora-xs")  # both sides missing for one reason: said once
    missing = "no runs of lora-sb (runs/lora-sb-r8-seed*), lora-xs (runs/lora-xs-r8-seed*)"
    assert sb["gate_reason"] == f"not run on sst2: block 5: left out; {missing}"
    assert _row(rows, "pissa>lora")["verdict"] != "not testable"  # a declaration never hides runs
    nlora = _row(rows, "nlora>lora")  # nothing declared: the missing runs alone
    assert nlora["gate_reason"] == "not run on sst2: no runs of nlora (runs/nlora-r8-seed*)"
    mit = next(r for r in rows if r["claim"] == MITIGATION_CLAIMS[0].text)
    assert mit["gate_reason"].startswith("not run on sst2: no r = 1 runs; no mitigation/")
    (tmp_path / NOT_RUN).write_text("not json")  # unreadable: as if nothing were declared
    assert _row(study_claims(tmp_path), "lora-xs~lora")["gate_reason"].startswith("not run on sst2: no runs")


def test_a_claim_without_runs_on_a_task_no_run_could_make_testable_says_not_testable():
    """A judged gate that fails (the GSM8K floor) or a base trained on the task outranks missing runs:
    running the missing method would not make the claim testable, so "not run" would mislead."""
    lora_only = [r for r in _gsm(0.0) if r.method == "lora"]
    r = _row(claim_rows(GSM8K, lora_only, baselines=GSM_BASE, untuned=UNTUNED_LM), "pissa>lora")
    assert r["claim_holds"] == "not testable at this scale" and "exact-match floor fails" in r["gate_reason"]
    assert r["runs"] == "not run: no runs of pissa (runs/pissa-r8-seed*)"
    unmeasured = [r for r in _gsm(None) if r.method == "lora"]  # a gate that could not judge: not run
    assert _row(claim_rows(GSM8K, unmeasured, baselines=GSM_BASE, untuned=UNTUNED_LM), "pissa>lora")[
        "claim_holds"] == "not run"  # fmt: skip
    stsb = _study("stsb", model="minilm", **BASE)  # all-MiniLM-L6-v2 was trained on sentence pairs
    rows = claim_rows(STSB, stsb, baselines={"constant_predictor": 0.0}, untuned={"metric": 0.5})
    s = _row(rows, "pissa>lora")
    assert s["claim_holds"] == "not testable: base trained on this kind of data"
    assert s["runs"] == "not run: no runs of pissa (runs/pissa-r8-seed*)"
    assert "overlaps STS-B" in s["gate_reason"]
