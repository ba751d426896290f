"""The claims table on constructed studies: gates, collapsed runs, pairing, Holm, every verdict."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from lowrank_lab.claims import main as claims_main
from lowrank_lab.training.claims import CLAIMS, COLUMNS, GATE_MARGIN, claim_rows
from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.record import RunRecord
from lowrank_lab.training.stats import VERDICTS
from lowrank_lab.training.tasks import get_task

SST2 = get_task("sst2")
GSM8K = get_task("gsm8k")


def _rec(method, seed, metric, *, rank=8, loss=0.5, collapsed=False, status="finished", task="sst2"):
    return RunRecord(
        config=RunConfig(task=task, method=method, seed=seed, rank=rank, model="m"),
        status=status,
        final_metric=metric,
        collapsed=collapsed,
        train_loss=[loss] * 10,
    )


def _study(**means):
    """Five seeds per method; seed s adds a shared offset, so paired differences are exact."""
    offsets = [0.0, 0.004, -0.003, 0.002, -0.001]
    return [_rec(m, s, v + offsets[s]) for m, v in means.items() for s in range(5)]


BASE = {"head": 0.78, "lora": 0.88, "full": 0.89}
BASELINES = {"constant_predictor": 0.509}


def _row(rows, key):
    text = next(c.text for c in CLAIMS if c.key == key)
    return next(r for r in rows if r["claim"] == text)


def test_rows_have_every_column_and_one_row_per_applicable_claim():
    rows = claim_rows(SST2, _study(**BASE, pissa=0.90), baselines=BASELINES)
    assert all(set(r) == set(COLUMNS) for r in rows)
    assert len(rows) == sum(c.tasks is None or "sst2" in c.tasks for c in CLAIMS)
    gsm = claim_rows(GSM8K, [], baselines={"bigram": 3.0})
    assert not any("intruder" in r["claim"] for r in gsm)  # intruder claims are SST-2's


def test_confirmed_with_paired_seeds_and_the_numbers_it_reports():
    # PiSSA is 0.02 better on every seed: the paired sd is 0, whatever the seed offsets
    rows = claim_rows(SST2, _study(**BASE, pissa=0.90), baselines=BASELINES)
    r = _row(rows, "pissa>lora")
    assert r["verdict"] == "confirmed" and r["claim_holds"] == "yes" and r["gate"] == "pass"
    assert r["n_seeds"] == 5 and r["effect"] == pytest.approx(0.02)
    assert r["ci_low"] == pytest.approx(0.02) and r["min_effect"] == 0.01
    assert r["runs"].startswith("pissa-r8-seed0 vs lora-r8-seed0")


def test_each_verdict_is_reachable_from_runs():
    recs = _study(**BASE, pissa=0.86, milora=0.8605, slora=0.87)
    noisy = [0.0, 0.05, -0.05, 0.04, -0.04]  # nlora: big per-seed swings around lora
    recs += [_rec("nlora", s, 0.88 + noisy[s]) for s in range(5)]
    rows = claim_rows(SST2, recs, baselines=BASELINES)
    assert _row(rows, "pissa>lora")["verdict"] == "contradicted"  # 0.02 worse on every seed
    assert _row(rows, "milora>pissa")["verdict"] == "equivalent"  # 0.0005 apart: inside ±0.01
    assert _row(rows, "milora>pissa")["claim_holds"].startswith("no")
    assert _row(rows, "slora>lora")["verdict"] == "contradicted"  # -0.01 on every seed: not inside ±δ
    assert _row(rows, "nlora>lora")["verdict"] == "inconclusive"
    xs = _row(rows, "lora-xs~lora")  # no lora-xs runs: a budget choice, said as such
    assert xs["verdict"] == "not testable" and xs["claim_holds"] == "not run"
    assert xs["gate_reason"] == "not run on sst2 (no seed runs): lora-xs"


def test_match_claims_hold_when_equivalent():
    rows = claim_rows(SST2, _study(**BASE, loldu=0.881, inttune=0.80), baselines=BASELINES)
    loldu = _row(rows, "loldu~lora")
    assert loldu["verdict"] == "equivalent" and loldu["claim_holds"] == "yes"
    assert _row(rows, "inttune~lora")["verdict"] == "contradicted"
    assert _row(rows, "inttune~lora")["claim_holds"] == "no"


def test_gate_fails_when_adapters_do_not_beat_the_head_only_control():
    rows = claim_rows(SST2, _study(head=0.86, lora=0.88, full=0.89, pissa=0.90), baselines=BASELINES)
    r = _row(rows, "pissa>lora")
    assert r["verdict"] == "not testable" and r["gate"] == "fail"
    assert f"fails (margin {GATE_MARGIN:g} needed)" in r["gate_reason"]
    assert "lora 0.880 vs head-only 0.860 (+0.020)" in r["gate_reason"]
    assert r["claim_holds"] == "not testable at this scale"


def test_gate_needs_the_constant_predictor_and_the_control():
    rows = claim_rows(SST2, _study(**BASE, pissa=0.9), baselines={})
    assert "no constant predictor result" in _row(rows, "pissa>lora")["gate_reason"]
    rows = claim_rows(SST2, _study(lora=0.88, full=0.89, pissa=0.9), baselines=BASELINES)
    assert "no head-only result" in _row(rows, "pissa>lora")["gate_reason"]


def test_collapsed_runs_are_left_out_and_listed():
    recs = _study(**BASE, pissa=0.90)
    for r in recs:
        if r.method == "pissa" and r.seed in (1, 3):
            r.final_metric, r.collapsed = 0.509, True
    r = _row(claim_rows(SST2, recs, baselines=BASELINES), "pissa>lora")
    assert r["n_seeds"] == 3 and "collapsed, left out: pissa-r8-seed1, pissa-r8-seed3" in r["runs"]
    assert not _rec("lora", 0, math.nan).usable
    assert not _rec("lora", 0, 0.9, status="diverged").usable
    assert not _rec("lora", 0, None).usable and _rec("lora", 0, 0.9).usable


def test_holm_adjusts_across_the_claims_of_a_study():
    # two modest, noisy effects: each interval excludes 0 but the adjusted p does not stay below 0.05
    recs = _study(**BASE)
    wiggle = [0.0, 0.012, -0.01, 0.011, -0.009]
    recs += [_rec("pissa", s, 0.88 + 0.013 + wiggle[s]) for s in range(5)]
    rows = claim_rows(SST2, recs, baselines=BASELINES)
    r = _row(rows, "pissa>lora")
    assert r["ci_low"] > 0 and r["p_value"] < 0.05
    assert r["p_holm"] >= r["p_value"]
    if r["p_holm"] >= 0.05:
        assert r["verdict"] == "inconclusive"


def test_language_modelling_claims_need_both_methods_below_the_bigram():
    means = (("lora", 3.4), ("pissa", 3.2))
    recs = [_rec(m, s, v + 0.01 * s, task="gsm8k") for m, v in means for s in range(5)]
    rows = claim_rows(GSM8K, recs, baselines={"bigram": 3.0, "unigram": 4.4})
    r = _row(rows, "pissa>lora")
    assert r["verdict"] == "not testable" and "not below the bigram" in r["gate_reason"]
    ok = claim_rows(GSM8K, recs, baselines={"bigram": 3.6, "unigram": 4.4})
    r = _row(ok, "pissa>lora")
    assert r["gate"] == "pass" and r["verdict"] == "confirmed"  # lower answer loss is better
    assert r["mean_a"] == pytest.approx(3.22) and r["effect"] == pytest.approx(0.2)


def test_rank_variants_and_intruder_counts():
    recs = _study(**BASE) + [_rec("lora", s, 0.87, rank=1) for s in range(3)]
    counts = {f"lora-r1-seed{s}": 5.0 + s for s in range(3)} | {f"full-seed{s}": 0.0 for s in range(3)}
    r = _row(claim_rows(SST2, recs, baselines=BASELINES, intruders=counts), "intruders r1")
    assert r["n_seeds"] == 3 and r["effect"] == pytest.approx(6.0) and r["verdict"] == "confirmed"
    r8 = _row(claim_rows(SST2, recs, baselines=BASELINES, intruders=counts), "intruders r8")
    assert r8["verdict"] == "not testable" and "intruder counts" in r8["gate_reason"]


def test_forgetting_claim_is_a_spearman_correlation_across_runs():
    from scipy import stats

    names = [f"run{i}" for i in range(8)]
    intr = dict(zip(names, [0, 0, 1, 3, 4, 6, 8, 9], strict=True))
    forg = dict(zip(names, [0.0, 0.01, 0.0, 0.02, 0.05, 0.04, 0.08, 0.1], strict=True))
    rows = claim_rows(SST2, _study(**BASE), baselines=BASELINES, intruders=intr, forgetting=forg)
    r = next(r for r in rows if r["method_a"] == "intruders")
    rho, p = stats.spearmanr(list(intr.values()), list(forg.values()))
    assert r["effect"] == pytest.approx(rho) and r["p_value"] == pytest.approx(p)
    assert r["ci_low"] < rho < r["ci_high"] and r["verdict"] == "confirmed"
    few = claim_rows(SST2, _study(**BASE), baselines=BASELINES, intruders=intr, forgetting={"run0": 0.1})
    assert next(r for r in few if r["method_a"] == "intruders")["verdict"] == "not testable"


def test_a_method_still_rising_is_named_beside_its_verdict():
    from lowrank_lab.claims import render
    from lowrank_lab.training.record import EvalPoint

    def curve(up):  # validation accuracy at steps 0, 5, 8 and 10 of a 10-step run
        late = ((5, 0.70), (8, 0.76), (10, 0.80)) if up else ((5, 0.80), (8, 0.79), (10, 0.80))
        return [EvalPoint(step=k, metric=m, loss=1.0) for k, m in ((0, 0.5), *late)]

    recs = _study(**BASE, loldu=0.80)
    rising = {("loldu", 0), ("loldu", 1), ("loldu", 2), *(("lora", s) for s in range(5))}
    for r in recs:  # "still rising": the slope over the last evaluations is above 0 on its interval
        r.steps_done = 10
        r.evals = curve((r.method, r.seed) in rising)
    rows = claim_rows(SST2, recs, baselines=BASELINES)
    loldu = _row(rows, "loldu~lora")
    assert loldu["still_rising"] == "loldu 3/5, lora 5/5" and loldu["verdict"] == "contradicted"
    assert _row(rows, "pissa>lora")["still_rising"] == "lora 5/5"  # pissa: not run
    md = render(pd.DataFrame(rows, columns=COLUMNS), [], "cmd")
    assert "| contradicted | no; still rising: loldu 3/5, lora 5/5 |" in md
    pissa = next(line for line in md.splitlines() if line.startswith("| PiSSA ends higher than LoRA |"))
    assert pissa.endswith("| not testable | not run |")  # an untested claim carries no budget caveat


def test_claims_cli_writes_csv_and_md_and_names_a_bad_folder(tmp_path, capsys):
    assert claims_main(["--studies", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m lowrank_lab.claims: error: --studies ") and len(err.splitlines()) == 1
    assert "no runs/ folder or selection.csv; pass a finetune --out folder" in err


def test_claims_cli_over_a_real_tiny_study(glue_dir, bert_tokenizer, tiny_pooled, tmp_path, capsys):
    from .test_study import _run

    study = tmp_path / "study"
    _run(glue_dir, study, bert_tokenizer, tiny_pooled(2), methods=("lora", "full", "head", "pissa"),
         seeds=(0, 1), base={"steps": 4, "val_samples": 12, "eval_every": 2})
    argv = ["--studies", str(study), "--out", str(tmp_path / "r"), "--data-dir", str(glue_dir)]
    assert claims_main(argv) == 0
    import pandas as pd

    table = pd.read_csv(tmp_path / "r" / "claims.csv")
    assert list(table.columns) == COLUMNS and set(table["task"]) == {"sst2"}
    assert set(table["verdict"]) <= set(VERDICTS)
    pissa = table[table["method_b"].eq("lora") & table["method_a"].eq("pissa")]
    assert len(pissa) == 2 and set(pissa["n_seeds"]) <= {0, 2}  # final metric and convergence
    md = (tmp_path / "r" / "claims.md").read_text()
    assert md.startswith("# Claims at this scale") and "## sst2" in md and "Gates:" in md
    assert (study / "baselines.json").is_file()  # written by the study (the CLI makes it when missing)
    assert "wrote" in capsys.readouterr().out


def test_language_modelling_study_gated_at_selection(tmp_path):
    import pandas as pd

    from lowrank_lab.training.claims import selection_gate, study_claims

    cols = ["method", "rank", "rate_of", "lr", "val_metric", "status", "collapsed", "steps_done", "chosen"]
    rows = [["lora", 8, "lr", 2e-4, 3.30, "finished", False, 600, True],
            ["lora", 8, "lr", 6e-4, 3.10, "finished", False, 600, False],  # better, but not chosen
            ["full", 8, "lr", 2e-5, 3.25, "finished", False, 600, True]]
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
    from lowrank_lab.training.selection import SELECTION_COLUMNS

    pd.DataFrame(
        [
            ("lora", 8, "lr", lr, 0.8, "finished", False, 10, lr == 1e-3) for lr in (3e-4, 1e-3, 3e-3)
        ] + [
            ("pissa", 8, "lr", lr, 0.8, "finished", False, 10, lr == 3e-3) for lr in (3e-4, 1e-3, 3e-3)
        ] + [
            ("lora", 64, "lr", lr, 0.8, "finished", False, 10, lr == 1e-4) for lr in (1e-4, 1e-3)
        ] + [("head", 8, "head_lr", 1e-2, 0.8, "finished", False, 10, True)],
        columns=SELECTION_COLUMNS,
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
