"""``python -m lowrank_lab.claims``: one claims table over the study folders of ``finetune``.

Reads each study's runs (``runs/*/run.json``), its reference predictors (``baselines.json``; made
from the task data when missing), its intruder counts (``intruders/<run>/intruders.csv``) and its
forgetting measure (``forgetting.csv``), and writes ``claims.csv`` (one row per task and claim,
columns :data:`lowrank_lab.training.claims.COLUMNS`) and ``claims.md``. The rules (gates, paired
t intervals, Holm-Bonferroni within a study, minimum effects, verdicts) are those of
:mod:`lowrank_lab.training.claims` and :mod:`lowrank_lab.training.stats`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from lowrank_lab.training.claims import BASELINES, COLUMNS, GATE_MARGIN, study_claims
from lowrank_lab.training.stats import MIN_EFFECT
from lowrank_lab.training.tasks import DATA_DIR_ENV, default_data_dir
from lowrank_lab.utils.cli import guarded_main
from lowrank_lab.utils.files import atomic_write_text, write_frame
from lowrank_lab.utils.tables import to_markdown

EPILOG = """
examples:
  # the committed study (benchmarks/claims_study.sh writes these folders)
  python -m lowrank_lab.claims --studies reports/study/sst2 reports/study/stsb reports/study/gsm8k \
      --out reports
  # one study, tables elsewhere
  python -m lowrank_lab.claims --studies /tmp/my-sst2 --out /tmp/claims
"""

PROG = "python -m lowrank_lab.claims"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Test the papers' claims on finished fine-tuning studies: gates, seed-paired "
        "t intervals, Holm-Bonferroni, minimum effects; writes claims.csv and claims.md.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--studies", nargs="+", required=True, metavar="DIR", help="finetune --out folders")
    p.add_argument("--out", default="reports", help="where claims.csv and claims.md go (default reports)")
    p.add_argument(
        "--data-dir",
        default=None,
        help=f"task data for a study without {BASELINES} (default ${DATA_DIR_ENV} or ../shared/data)",
    )
    return p


def _ensure_baselines(study: Path, data_dir: str | Path) -> None:
    """Write ``baselines.json`` of a study made before it existed, from its first record's config."""
    if (study / BASELINES).is_file():
        return
    from lowrank_lab.training.record import study_records
    from lowrank_lab.training.study import StudyData, write_baselines
    from lowrank_lab.training.tasks import get_task

    recs = study_records(study)
    if not recs:
        return
    cfg = recs[0].config
    write_baselines(study, StudyData.load(get_task(cfg.task), cfg, data_dir))


def _fmt(x, spec: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def render(frame: pd.DataFrame, studies: Sequence[Path], command: str) -> str:
    """The markdown of claims.md: the rules, one table per task, then the gates."""
    lines = [
        "# Claims at this scale",
        "",
        f"- Command: `{command}`",
        f"- Made: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
        + ", ".join(f"`{s}`" for s in studies),
        "- Effect = mean over seeds of the per-seed difference a − b, signed so that positive means "
        "the claim's direction (lower loss, more intruders); 95% interval from the t distribution with "
        "n − 1 degrees of freedom over the paired seeds; p: two-sided paired t for a difference, and "
        "TOST against ±δ for equivalence, each Holm-Bonferroni adjusted across the claims of each "
        "task (confirmed and contradicted read the first, equivalent the second).",
        "- Minimum effect δ: " + ", ".join(f"{k} {v:g}" for k, v in MIN_EFFECT.items()) + ".",
        "- Verdicts: confirmed (interval above 0 and effect ≥ δ), equivalent (interval inside ±δ), "
        "contradicted (interval below 0), each only when its Holm-adjusted p < 0.05, and in that order "
        "(an interval below 0 but inside ±δ reads equivalent: the difference is too small to matter); "
        "else inconclusive. "
        f"Not testable: LoRA or full fine-tuning beat neither the head-only control nor the constant "
        f"predictor by {GATE_MARGIN:g} (classification), a method not below the bigram (GSM8K), or "
        "fewer than 2 paired seeds; `holds` says \"not run\" instead when the study trained no "
        "run of one of the claim's methods on that task (a choice of budget, not a finding). `holds` "
        "reads the verdict against the claim ('matches' claims hold when equivalent), then names "
        "each method whose validation metric was still rising over the last 20% of its runs (a gain "
        "of more than δ/2 there), as runs still rising / runs scored: such a verdict holds at the "
        "study's budget, not at convergence.",
        "",
    ]
    for task, rows in frame.groupby("task", sort=False):
        lines += [f"## {task}", ""]
        show = pd.DataFrame(
            {
                "claim": rows["claim"],
                "paper's number": rows["paper_number"],
                "a": rows["method_a"] + " " + rows["mean_a"].map(_fmt),
                "b": rows["method_b"] + " " + rows["mean_b"].map(_fmt),
                "n": rows["n_seeds"],
                "effect [95% CI]": [
                    "–" if e is None or math.isnan(e) else f"{_fmt(e)} [{_fmt(lo)}, {_fmt(hi)}]"
                    for e, lo, hi in zip(rows["effect"], rows["ci_low"], rows["ci_high"], strict=True)
                ],
                "δ": rows["min_effect"].map(lambda v: _fmt(v, "g")),
                "p Holm: difference / TOST": [
                    f"{_fmt(a, '.3g')} / {_fmt(b, '.3g')}"
                    for a, b in zip(rows["p_holm"], rows["p_tost_holm"], strict=True)
                ],
                "verdict": rows["verdict"],
                "holds": [_holds(row) for row in rows.itertuples()],
            }
        )
        lines += [to_markdown(show), ""]
        gates = rows[["claim", "gate", "gate_reason"]].drop_duplicates(subset=["gate_reason"])
        lines += ["Gates:", ""] + [f"- {g.gate}: {g.gate_reason}" for g in gates.itertuples()] + [""]
        notes = [n for t in rows["tuning"].dropna() for n in str(t).split("; ") if n]
        if notes:  # each method's selected rate, once: an edge means it may be under-tuned there
            lines += [
                "Rates selected on the validation split (how many were tried; a choice at the edge "
                "of the grid after its extensions is named): " + "; ".join(dict.fromkeys(notes)) + ".",
                "",
            ]
    return "\n".join(lines)


def _holds(row: Any) -> str:
    """The ``holds`` cell: the claim's reading of the verdict, and the methods still rising at the
    end of their runs (a tested claim's verdict then holds at this budget only)."""
    rising = row.still_rising if isinstance(row.still_rising, str) else ""
    tested = row.verdict != "not testable"
    return f"{row.claim_holds}; still rising: {rising}" if rising and tested else str(row.claim_holds)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    return guarded_main(PROG, lambda: _run(args, argv_list))


def _run(args: argparse.Namespace, argv_list: list[str]) -> int:
    rows = []
    studies = [Path(s) for s in args.studies]
    for study in studies:
        if not (study / "runs").is_dir() and not (study / "selection.csv").is_file():
            raise FileNotFoundError(
                f"--studies {study}: no runs/ folder or selection.csv; pass a finetune --out folder"
            )
        _ensure_baselines(study, args.data_dir or default_data_dir())
        rows.extend(study_claims(study))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    write_frame(frame, out / "claims.csv")
    command = "python -m lowrank_lab.claims " + " ".join(argv_list)
    atomic_write_text(out / "claims.md", render(frame, studies, command))
    counts = frame["verdict"].value_counts().to_dict()
    print(f"wrote {out / 'claims.csv'} and claims.md: {len(frame)} claims, {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
