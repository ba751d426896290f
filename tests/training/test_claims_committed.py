"""Every committed row of each claims table (reports/claims.csv over issue 15's study in reports/study,
reports/plateau/claims.csv over the plateau study) recomputed from the study's files by the stated rule.

The recomputation reads run.json, intruders.csv, forgetting.csv and untuned.json with json and pandas,
computes the paired statistics with scipy.stats and Holm with its own few lines, and takes from the
package only the rule itself (stats.decide, the code form of DECISION_RULE) and the registry's
training-data field: an error in the claims engine's reading, pairing, signing, interval, p-values,
families or gates shows as a disagreement here. Also: README's section equals what the claims.csv it
names generates.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from lowrank_lab.training.stats import decide
from lowrank_lab.weights.registry import lookup

REPO = Path(__file__).resolve().parents[2]
#: Each committed claims table and the folder holding its studies (one subfolder per task).
COMMITTED = {"reports/claims.csv": "reports/study", "reports/plateau/claims.csv": "reports/plateau"}
LOWER_IS_BETTER = {"answer_loss", "loss_auc", "steps_to_90", "forgetting"}
MARGIN = {"accuracy": 0.05, "matthews": 0.05, "spearman": 0.05, "answer_loss": 0.1}

TABLES = [pytest.param(csv, root, id=csv) for csv, root in COMMITTED.items() if (REPO / csv).is_file()]
pytestmark = pytest.mark.skipif(not TABLES, reason="no committed claims table")


def _runs(study: Path) -> tuple[dict[str, dict[int, dict]], int]:
    """label -> seed -> run.json of a study folder, labels as the table names methods (plain at the
    study's rank: 8 when any adapter run uses it, else the most used, ties the smaller), and that rank."""
    recs = [json.loads(p.read_text()) for p in sorted((study / "runs").glob("*/run.json"))]
    ranks = Counter(r["config"]["rank"] for r in recs if r["config"]["method"] not in ("full", "head"))
    rank = 8 if 8 in ranks else min(ranks, key=lambda k: (-ranks[k], k))
    out: dict[str, dict[int, dict]] = {}
    for r in recs:
        m, k = r["config"]["method"], r["config"]["rank"]
        label = m if m in ("full", "head") or k == rank else f"{m}@{k}"
        out.setdefault(label, {})[r["config"]["seed"]] = r
    return out, rank


def _label(name: str, rank: int) -> str:
    """A table's method name as the study labels it (``lora-xs@25`` is plain in a rank-25 study)."""
    method, _, r = name.partition("@")
    return method if r and int(r) == rank else name


def _usable(r: dict) -> bool:
    v = r.get("final_metric")
    return r["status"] == "finished" and v is not None and math.isfinite(v) and not r.get("collapsed")


def _intruders(study: Path) -> dict[str, float]:
    out = {}
    for p in sorted((study / "intruders").glob("*/intruders.csv")):
        df = pd.read_csv(p)
        out[p.parent.name] = float(df.loc[df["side"] == "left", "intruder"].sum())
    return out


def _steps_to_90(r: dict, higher: bool) -> float | None:
    ev = r["eval"]
    sign = 1.0 if higher else -1.0
    g = [sign * (e["metric"] - ev[0]["metric"]) for e in ev]
    if len(ev) < 2 or g[-1] <= 0:
        return None
    target = 0.9 * g[-1]
    k = next(i for i in range(1, len(g)) if g[i] >= target)
    s = ev[k - 1]["step"] + (target - g[k - 1]) / (g[k] - g[k - 1]) * (ev[k]["step"] - ev[k - 1]["step"])
    return s / r["steps_done"]


def _forgetting(study: Path) -> dict[str, float]:
    path = study / "forgetting.csv"
    return pd.read_csv(path).set_index("run")["drop"].dropna().to_dict() if path.is_file() else {}


def _value(r: dict, metric: str, intruders: dict[str, float], study: Path) -> float | None:
    if metric == "forgetting":
        name = "full-seed{seed}" if r["config"]["method"] == "full" else "{method}-r{rank}-seed{seed}"
        return _forgetting(study).get(name.format(**r["config"]))
    if metric == "loss_auc":
        return float(np.mean(r["train_loss"]))
    if metric == "steps_to_90":  # the gain of the task's own metric (all of this study's: higher is better)
        return _steps_to_90(r, r["config"]["task"] != "gsm8k")
    if metric == "intruders":
        name = "full-seed{seed}" if r["config"]["method"] == "full" else "{method}-r{rank}-seed{seed}"
        return intruders.get(name.format(**r["config"]))
    return float(r["final_metric"])


def _paired(d: np.ndarray) -> tuple[float, float, float, bool]:
    if len(d) == 0:  # no seed with a value on both sides (a measure not taken): nothing to report
        return math.nan, math.nan, math.nan, False
    mean = float(d.mean())
    if len(d) < 2:  # one seed: no interval (the library writes it as -inf to inf)
        return mean, -math.inf, math.inf, False
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return mean, mean, mean, True
    ci = sps.ttest_1samp(d, 0.0).confidence_interval(0.95)
    return mean, float(ci.low), float(ci.high), False


def _task_testable(task: str, runs: dict, baselines: dict, untuned: dict) -> bool:
    """The gates recomputed: the base's training data, every anchor's lower bound over every
    reference, and for language modelling the exact-match floor."""
    model = next(iter(next(iter(runs.values())).values()))["config"]["model"]
    spec = lookup(model)
    if spec is not None and task in spec.trained_tasks:
        return False
    lm = task == "gsm8k"
    metric = "answer_loss" if lm else baselines["metric"]
    sign = -1.0 if lm else 1.0
    pick = (lambda r: r["dev"]["loss"]) if lm else (lambda r: r["final_metric"])
    refs: dict = (
        {
            "unigram": baselines["unigram"],
            "bigram": baselines["bigram"],
            "untuned": untuned.get("answer_loss"),
        }
        if lm
        else {
            "head": {s: pick(r) for s, r in runs["head"].items() if _usable(r)},
            "constant": baselines["constant_predictor"],
        }  # fmt: skip
    )
    if task == "stsb":
        refs["untuned"] = untuned.get("metric")
    elif not lm and "probe_C" in untuned:  # the converged linear probe of the untuned encoder
        refs["probe"] = untuned["metric"]
    for anchor in ("lora",) if lm else ("lora", "full"):
        vals = {s: pick(r) for s, r in runs[anchor].items() if _usable(r)}
        for ref in refs.values():
            if ref is None:
                return False
            seeds = sorted(set(vals) & set(ref)) if isinstance(ref, dict) else sorted(vals)
            d = sign * np.array([vals[s] - (ref[s] if isinstance(ref, dict) else ref) for s in seeds])
            _, lo, _, _ = _paired(d)
            if not lo >= MARGIN[metric]:
                return False
    if lm:
        em = [r["dev"].get("exact_match") for r in runs["lora"].values() if _usable(r)]
        if not em or any(e is None for e in em) or untuned.get("exact_match") is None:
            return False
        _, lo, _, _ = _paired(np.array(em) - untuned["exact_match"])
        return lo >= 0.05
    return True


def _holm(p: list[float]) -> list[float]:
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - k) * p[i]))
        out[i] = running
    return out


def _close(a, b) -> bool:
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("csv", "root"), TABLES)
def test_every_committed_row_is_recomputed_from_the_runs_files_by_the_stated_rule(csv, root):
    table = pd.read_csv(REPO / csv)
    assert len(table) > 0
    recomputed = []
    for row in table.itertuples():
        study = REPO / root / row.task
        got = {"effect": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p1": math.nan, "p2": math.nan}
        if row.claim_holds == "not run":
            assert row.verdict == "not testable" and "not run" in row.gate_reason
            recomputed.append(got | {"tested": False, "zero": False})
            continue
        runs, rank = _runs(study)
        baselines = json.loads((study / "baselines.json").read_text())
        untuned_path = study / "untuned.json"
        untuned = json.loads(untuned_path.read_text()) if untuned_path.is_file() else {}
        if str(row.runs).startswith("not run: "):  # a side missing where no run could make it testable
            assert row.verdict == "not testable" and not _task_testable(row.task, runs, baselines, untuned)
            recomputed.append(got | {"tested": False, "zero": False})
            continue
        higher = row.metric not in LOWER_IS_BETTER
        if row.kind == "correlation":
            forg = pd.read_csv(study / "forgetting.csv").set_index("run")["drop"].to_dict()
            intr = _intruders(study)
            names = sorted(set(intr) & set(forg))
            # within methods: ranks centred per method (run name less its -seedN), then correlated
            frame = pd.DataFrame({"x": [intr[n] for n in names], "y": [forg[n] for n in names]})
            frame["method"] = [n.rsplit("-seed", 1)[0] for n in names]
            varied = lambda g: len(g) >= 3 and g.x.nunique() > 1 and g.y.nunique() > 1  # noqa: E731
            spread = frame.groupby("method").filter(varied)
            ranks = spread.groupby("method")[["x", "y"]].rank()
            centred = ranks - ranks.groupby(spread["method"]).transform("mean")
            n, g = len(centred), spread["method"].nunique()
            rho = float((centred.x * centred.y).sum() / np.sqrt((centred.x**2).sum() * (centred.y**2).sum()))
            t = rho * math.sqrt((n - g - 1) / (1 - rho * rho))
            z, se = math.atanh(rho), 1.06 / math.sqrt(n - g - 2)
            got |= {
                "effect": rho,
                "ci_low": math.tanh(z - 1.96 * se),
                "ci_high": math.tanh(z + 1.96 * se),
                "p1": 2 * sps.t.sf(abs(t), n - g - 1),
            }
            zero = False
        else:
            intr = _intruders(study) if row.metric == "intruders" else {}
            if " λ=" in row.method_a:  # intruder mitigation: a run at λ against itself at λ = 1
                lam = float(row.method_a.split("λ=")[1])
                mit = pd.concat([pd.read_csv(p) for p in sorted(study.glob("mitigation/*/mitigation.csv"))])
                mit = mit[mit["rank"] == mit["rank"].min()]
                col = "forgetting" if row.metric == "forgetting" else "task_metric"
                a, b = ({int(r.seed): float(getattr(r, col)) for r in mit[mit["lambda"] == x].itertuples()}
                        for x in (lam, 1.0))  # fmt: skip
            else:
                side = [runs[_label(m, rank)] for m in (row.method_a, row.method_b)]
                a, b = ({s: _value(r, row.metric, intr, study) for s, r in x.items() if _usable(r)}
                        for x in side)  # fmt: skip
            seeds = sorted(s for s in set(a) & set(b) if a[s] is not None and b[s] is not None)
            assert row.n_seeds == len(seeds), row.claim
            sign = 1.0 if higher else -1.0
            d = sign * (np.array([a[s] for s in seeds]) - np.array([b[s] for s in seeds]))
            mean, lo, hi, zero = _paired(d)
            got |= {"effect": mean, "ci_low": lo, "ci_high": hi}
            assert _close(row.mean_a, np.mean([a[s] for s in seeds])), row.claim
            delta = row.min_effect
            if not zero and row.kind == "superiority":
                got["p1"] = sps.ttest_1samp(d, 0.0).pvalue
                got["p2"] = max(sps.ttest_1samp(d, -delta, alternative="greater").pvalue,
                                sps.ttest_1samp(d, delta, alternative="less").pvalue)  # fmt: skip
            elif not zero:
                got["p1"] = sps.ttest_1samp(d, -delta, alternative="greater").pvalue
                got["p2"] = sps.ttest_1samp(d, -delta, alternative="less").pvalue
        tested = _task_testable(row.task, runs, baselines, untuned) and row.n_seeds >= 2
        recomputed.append(got | {"tested": tested, "zero": zero})
        for key in ("effect", "ci_low", "ci_high"):
            assert _close(getattr(row, key), got[key]), (row.claim, row.task, key)
        assert (row.verdict != "not testable") == tested, (row.claim, row.task, row.gate_reason)
        if tested:
            assert _close(row.p1, got["p1"]) and _close(row.p2, got["p2"]), (row.claim, row.task)
    # Holm within each paper's family, over p1 and p2 of every tested row; then the rule
    families: dict[str, list[tuple[int, str]]] = {}
    for i, (row, got) in enumerate(zip(table.itertuples(), recomputed, strict=True)):
        if got["tested"]:
            for key in ("p1", "p2"):
                if math.isfinite(got[key]):
                    families.setdefault(row.family, []).append((i, key))
    adjusted: dict[tuple[int, str], float] = {}
    for members in families.values():
        for m, v in zip(members, _holm([recomputed[i][k] for i, k in members]), strict=True):
            adjusted[m] = v
    for i, (row, got) in enumerate(zip(table.itertuples(), recomputed, strict=True)):
        if not got["tested"]:
            continue
        p1h, p2h = adjusted.get((i, "p1"), math.nan), adjusted.get((i, "p2"), math.nan)
        assert _close(row.p1_holm, p1h) and _close(row.p2_holm, p2h), (row.claim, row.task)
        delta = None if row.kind == "correlation" else row.min_effect
        want = decide(row.kind, got["effect"], got["ci_low"], got["ci_high"], delta, p1h, p2h,
                      zero_variance=got["zero"])  # fmt: skip
        assert row.verdict == want, (row.claim, row.task)


def test_readme_section_is_generated_from_the_claims_csv_it_names():
    from lowrank_lab.claims import README_HEADING, readme_section

    text = (REPO / "README.md").read_text()
    start = text.index(README_HEADING)
    end = text.index("\n## ", start + len(README_HEADING))
    folder = re.search(r"<!-- generated from (\S+)/claims\.csv by", text[start:end]).group(1)
    assert f"{folder}/claims.csv" in COMMITTED, folder  # a table whose rows the test above recomputes
    assert text[start : end + 1] == readme_section(pd.read_csv(REPO / folder / "claims.csv"), folder) + "\n"


@pytest.mark.parametrize(("csv", "root"), TABLES)
def test_claims_md_prints_the_decision_rule_verbatim_and_opens_with_the_summary(csv, root):
    from lowrank_lab.training.stats import DECISION_RULE

    md = (REPO / csv).with_suffix(".md").read_text()
    assert DECISION_RULE in md
    first_task = pd.read_csv(REPO / csv)["task"].iloc[0]
    assert md.index("## Summary") < md.index("## The decision rule") < md.index(f"\n## {first_task}")
