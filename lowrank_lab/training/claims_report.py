"""The claims table over ``finetune``'s study folders and its reports (``claims``' library side).

Reads each study's runs (``runs/*/run.json``), its reference predictors (``baselines.json``; made
from the task data when missing), the untuned model's own predictor (``untuned.json``; measured when
missing and the task has one, :mod:`lowrank_lab.training.untuned`), its intruder counts
(``intruders/<run>/intruders.csv``) and its forgetting measure (``forgetting.csv``); :func:`run`
writes ``claims.csv`` (one row per task and claim, columns :data:`lowrank_lab.training.claims.COLUMNS`)
and ``claims.md``: the decision rule verbatim (:data:`lowrank_lab.training.stats.DECISION_RULE`), the
measures with their minimum effects, a one-screen summary, then one table per task; with
:attr:`ClaimsConfig.readme` it regenerates README's "What the measurements say so far" from the same
rows (:func:`readme_section`). The decisions themselves are :mod:`lowrank_lab.training.claims`.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from lowrank_lab.training.claims import (
    BASELINES,
    COLUMNS,
    EM_FLOOR,
    GATE_MARGIN,
    decide_rows,
    missing_task_rows,
    study_claims,
)
from lowrank_lab.training.frontier import write_frontier
from lowrank_lab.training.intruder_sweep import sweep_markdown, write_sweep
from lowrank_lab.training.stats import DECISION_RULE, MEASURES
from lowrank_lab.training.tasks import DATA_DIR_ENV, default_data_dir
from lowrank_lab.utils import options
from lowrank_lab.utils.files import atomic_write_text, write_frame
from lowrank_lab.utils.options import option
from lowrank_lab.utils.tables import to_markdown

PROG = "python -m lowrank_lab.claims"

#: README's section that :func:`readme_section` writes.
README_HEADING = "## What the measurements say so far"


@dataclass(frozen=True)
class ClaimsConfig:
    """The options of ``python -m lowrank_lab.claims``, each default written here only."""

    studies: tuple[str, ...] = option(
        help="finetune --out folders", why="no default: the studies to judge are the caller's",
        nargs="+", metavar="DIR",
    )  # fmt: skip
    out: str = option(
        "reports", help="where claims.csv and claims.md go",
        why="the committed table's folder, which README and reports/README.md link",
    )  # fmt: skip
    data_dir: str | None = option(
        None, help=f"task data for a study without {BASELINES} or untuned.json",
        shown=f"${DATA_DIR_ENV} or ../shared/data", why="where README's Install puts the real task data",
    )  # fmt: skip
    readme: str | None = option(
        None, help=f"also rewrite the '{README_HEADING[3:]}' section of FILE from the table",
        shown="leave it", why="a README changes only when asked", metavar="FILE",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if not self.studies:
            raise ValueError("--studies needs at least one finetune --out folder")
        if not self.out:
            raise ValueError("--out must name a folder, e.g. --out reports")


@dataclass(frozen=True)
class ClaimsResult:
    """What :func:`run` made: the decided rows (claims.csv) and the folder they went to."""

    frame: pd.DataFrame
    out: Path


def run(
    config: ClaimsConfig, out: str | Path | None = None, *, argv: Sequence[str] | None = None
) -> ClaimsResult:
    """Judge ``config.studies``: write claims.csv and claims.md into ``out`` (default ``config.out``)
    and, with ``config.readme``, that file's section. ``argv`` is the command claims.md records
    (default: the flags that make ``config``, :func:`lowrank_lab.utils.options.to_argv`).

    Raises FileNotFoundError for a study folder without runs, ValueError for studies that cannot be
    judged together (the message names the runs) or a README without the section.
    """
    argv = options.to_argv(config) if argv is None else list(argv)
    studies = [Path(s) for s in config.studies]
    for study in studies:
        if not (study / "runs").is_dir() and not (study / "selection.csv").is_file():
            raise FileNotFoundError(
                f"--studies {study}: no runs/ folder or selection.csv; pass a finetune --out folder"
            )
        _ensure_baselines(study, config.data_dir or default_data_dir())
        _ensure_untuned(study, config.data_dir or default_data_dir())
    frame = table(studies)
    folder = Path(config.out if out is None else out)
    folder.mkdir(parents=True, exist_ok=True)
    write_frame(frame, folder / "claims.csv")
    command = shlex.join([*PROG.split(), *argv])  # replayable when a path holds a space (issue 31)
    sections = []
    for study in studies:  # beside the claims: the capacity frontier and the intruder ε sweep
        frontier = write_frontier(study, folder)
        if frontier is not None:
            task = frontier["task"].iloc[0]
            sections.append(f"Capacity frontier of {task}: `frontier_{task}.md`, "
                            f"`figures/frontier_{task}.png`.")
        sweep = write_sweep(study, folder)
        if sweep is not None:
            sections.append(f"## Intruders across ε ({sweep['task'].iloc[0]})\n\n" + sweep_markdown(sweep))
    text = render(frame, studies, command)
    atomic_write_text(folder / "claims.md", text + ("\n" + "\n\n".join(sections) + "\n" if sections else ""))
    if config.readme:  # from the file just written, as the README test reads it
        path = Path(config.readme)
        section = readme_section(pd.read_csv(folder / "claims.csv"), folder)
        atomic_write_text(path, replace_readme_section(path.read_text(), section))
    return ClaimsResult(frame, folder)


def table(studies: Sequence[Path]) -> pd.DataFrame:
    """The claims rows of ``studies``, Holm-adjusted per paper across them and decided."""
    rows: list[dict[str, Any]] = []
    for study in studies:
        rows.extend(study_claims(study, decided=False))
    rows.extend(missing_task_rows({r["task"] for r in rows}))
    return pd.DataFrame(decide_rows(rows), columns=COLUMNS)


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


def _ensure_untuned(study: Path, data_dir: str | Path) -> None:
    """Measure and write ``untuned.json`` of a study whose task has an untuned predictor and that
    lacks it; without the task data the gate says the reference is missing."""
    from lowrank_lab.training.claims import check_protocol
    from lowrank_lab.training.record import study_records
    from lowrank_lab.training.tasks import get_task
    from lowrank_lab.training.untuned import UNTUNED, measure_untuned, needs_untuned, write_untuned

    if (study / UNTUNED).is_file():
        return
    recs = study_records(study)
    if not recs or not needs_untuned(get_task(recs[0].task).kind):
        return
    check_protocol(recs, study)  # a mixed study is refused before a model is loaded for it
    try:
        value = measure_untuned(recs, data_dir)
    except (FileNotFoundError, ValueError) as exc:  # no task data, or a model that cannot be loaded here
        print(f"{PROG}: note: {study}: no {UNTUNED}, and it cannot be measured here ({exc}); its gate "
              "goes without the untuned model's own predictor and says so", file=sys.stderr)  # fmt: skip
        return
    if value is not None:
        write_untuned(study, value)


def _fmt(x, spec: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def _interval(row: Any, spec: str = ".4f") -> str:
    e = row.effect
    if e is None or (isinstance(e, float) and math.isnan(e)):
        return "–"
    if isinstance(row.ci_low, float) and math.isinf(row.ci_low):
        return _fmt(e, spec)
    return f"{_fmt(e, spec)} [{_fmt(row.ci_low, spec)}, {_fmt(row.ci_high, spec)}]"


#: The summary's short words for why a row was not tested (claim_holds prefix -> cell).
_UNTESTED = (
    ("not run", "not run"),
    ("not testable: base trained on this kind of data", "not testable: base trained on it"),
    ("not testable at this scale", "not testable at this scale"),
    ("not testable: fine-tuning not shown", "not testable: gate"),
)


def _verdict_cell(row: Any) -> str:
    """The summary's word for a row: the verdict, or in a few words why it was not tested."""
    if row.verdict != "not testable":
        return str(row.verdict)
    holds = str(row.claim_holds)
    return next((short for prefix, short in _UNTESTED if holds.startswith(prefix)), holds)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Claim by task: verdict and effect [95% interval] (one screen)."""
    tasks = list(dict.fromkeys(frame["task"]))
    claims = list(dict.fromkeys(frame["claim"]))
    cells = {(r.claim, r.task): r for r in frame.itertuples()}
    out = {"claim": claims}
    for task in tasks:
        col = []
        for claim in claims:
            r = cells.get((claim, task))
            if r is None:
                col.append("")
            elif r.verdict == "not testable":
                effect = f" ({_interval(r, '.3g')})" if _finite(r.effect) else ""
                col.append(_verdict_cell(r) + effect)
            else:
                col.append(f"**{r.verdict}** {_interval(r, '.3g')}")
        out[task] = col
    return pd.DataFrame(out)


def descriptive_lines(frame: pd.DataFrame) -> list[str]:
    """Effects measured on tasks that could not test them, by task: findings at this scale, not tests."""
    lines = []
    for (task, holds), rows in frame.groupby(["task", "claim_holds"], sort=False):
        rows = rows[(rows["verdict"] == "not testable") & rows["effect"].map(_finite)]
        if holds == "not run" or rows.empty:
            continue
        lines.append(f"- {task} ({holds}):")
        lines += [
            f"  - {r.method_a} − {r.method_b}, {r.metric}: {_interval(r)} ({r.unit}; {r.n_seeds} "
            + ("runs)" if r.kind == "correlation" else "seeds)")
            for r in rows.itertuples()
        ]
    return lines


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def render(frame: pd.DataFrame, studies: Sequence[Path], command: str) -> str:
    """The markdown of claims.md: summary, the rule verbatim, the measures, one table per task."""
    lines = [
        "# Claims at this scale",
        "",
        f"- Command: `{command}`",
        f"- Made: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
        + ", ".join(f"`{s}`" for s in studies),
        "",
        "## Summary: verdict and effect [95% interval] by claim and task",
        "",
        "Effects are a − b signed so that positive is the claim's direction, in each row's measure "
        "(below). Every number, gate and p-value is in the task tables and in claims.csv.",
        "",
        to_markdown(summary_table(frame)),
        "",
    ]
    desc = descriptive_lines(frame)
    if desc:
        lines += ["Measured where no claim could be tested (descriptive, no verdict):", "", *desc, ""]
    lines += ["## The decision rule", "", "```text", DECISION_RULE, "```", ""]
    lines += [
        "Gates: every anchor (LoRA at the study's rank, and full fine-tuning on GLUE tasks) must clear "
        "every reference predictor on the interval (lower bound of anchor − reference, signed so that "
        "positive is better) by " + ", ".join(f"{k} {v:g}" for k, v in GATE_MARGIN.items()) + "; "
        "references: head-only (the frozen untuned encoder with a trained head), the constant predictor "
        "and, when measured, the converged linear probe of the frozen encoder (classification), plus the "
        "untuned encoder's cosine similarity (STS-B); unigram, "
        "bigram and the untuned model's answer loss (language modelling), then the fine-tuned exact "
        f"match above the untuned model's by {EM_FLOOR:g}. A task the base model was trained on (its "
        "registry entry) is not testable.",
        "",
        "Measures (declared before the runs):",
        "",
        to_markdown(_measures_table()),
        "",
    ]
    for task, rows in frame.groupby("task", sort=False):
        lines += _task_section(task, rows)
    return "\n".join(lines)


def _measures_table() -> pd.DataFrame:
    """The declared measures: name, direction, unit, scale, minimum effect and its reason."""
    return pd.DataFrame(
        {
            "measure": [m.name for m in MEASURES.values()],
            "better": ["higher" if m.direction > 0 else "lower" for m in MEASURES.values()],
            "unit": [m.unit for m in MEASURES.values()],
            "scale": [m.scale for m in MEASURES.values()],
            "δ": [_fmt(m.min_effect, "g") for m in MEASURES.values()],
            "why": [m.reason for m in MEASURES.values()],
        }
    )


def _task_section(task: str, rows: pd.DataFrame) -> list[str]:
    """claims.md's section of one task: its rows, its gates, the rates selected for its methods."""
    lines = [f"## {task}", ""]
    show = pd.DataFrame(
        {
            "claim": rows["claim"],
            "kind": rows["kind"],
            "paper's number": rows["paper_number"],
            "measure": rows["metric"],
            "a": rows["method_a"] + " " + rows["mean_a"].map(_fmt),
            "b": rows["method_b"] + " " + rows["mean_b"].map(_fmt),
            "n": rows["n_seeds"],
            "effect [95% CI]": [_interval(r) for r in rows.itertuples()],
            "δ": rows["min_effect"].map(lambda v: _fmt(v, "g")),
            "p1 / p2 (Holm, family)": [
                f"{_fmt(r.p1_holm, '.3g')} / {_fmt(r.p2_holm, '.3g')}"
                + (
                    f" ({r.family}, {int(r.family_size)})"
                    if isinstance(r.family, str) and r.family
                    else ""
                )
                for r in rows.itertuples()
            ],
            "verdict": rows["verdict"],
            "holds": [_holds(row) for row in rows.itertuples()],
        }
    )
    lines += [to_markdown(show), ""]
    gates = rows[["gate", "gate_reason"]].drop_duplicates(subset=["gate_reason"])
    not_run = gates["gate_reason"].astype(str).str.startswith("not run")
    lines += ["Gates:", ""] + [f"- {g.gate}: {g.gate_reason}" for g in gates[~not_run].itertuples()] + [""]
    unrun = rows["runs"].astype(str).str.startswith("not run: ")  # not testable here, and not run either
    if not_run.any() or unrun.any():  # a claim whose runs are missing says so once, apart from the gate
        reasons = pd.concat([gates.loc[not_run, "gate_reason"], rows.loc[unrun, "runs"]]).astype(str)
        why = reasons.str.replace(r"^not run( on \S+)?: ", "", regex=True).drop_duplicates()
        lines += ["Not run: " + "; ".join(why) + ".", ""]
    notes = [n for t in rows["tuning"].dropna() for n in str(t).split("; ") if n]
    if notes:  # each method's selected rate, once: an edge means it may be under-tuned there
        lines += [
            "Rates selected on the validation split (how many were tried; a choice at the edge "
            "of the grid after its extensions is named): " + "; ".join(dict.fromkeys(notes)) + ".",
            "",
        ]
    return lines


def _holds(row: Any) -> str:
    """The ``holds`` cell: the claim's reading of the verdict, and the methods still rising at the
    end of their runs (a tested claim's verdict then holds at this budget only)."""
    rising = row.still_rising if isinstance(row.still_rising, str) else ""
    tested = row.verdict != "not testable"
    return f"{row.claim_holds}; still rising: {rising}" if rising and tested else str(row.claim_holds)


def readme_section(frame: pd.DataFrame, folder: str | Path = "reports") -> str:
    """README's "What the measurements say so far", generated from the rows of ``folder``'s claims.csv
    alone; the section names that folder (as given, relative to the README), so the README test and
    a reader find the table it came from."""
    folder = Path(folder).as_posix()
    lines = [
        README_HEADING,
        "",
        f"<!-- generated from {folder}/claims.csv by `python -m lowrank_lab.claims ... --readme README.md` "
        "(lowrank_lab.claims.readme_section); change the claims or the rule, not this text -->",
        f"Each paper's claim tested on the committed study (`{folder}/claims.md`: the decision rule, "
        "the gates, every number; `reports/README.md`: the protocol). Effect = a − b over paired "
        "seeds, positive in the claim's direction, with its 95% interval.",
        "",
    ]
    for task, rows in frame.groupby("task", sort=False):
        tested = rows[rows["verdict"] != "not testable"]
        untested = rows[rows["verdict"] == "not testable"]
        why = untested["claim_holds"].value_counts(sort=False)
        parts = [f"{n} {v}" for v, n in tested["verdict"].value_counts(sort=False).items()]
        parts += [f"{n} {v}" for v, n in why.items()]
        head = f"- **{task}** ({len(rows)} claims): " + ", ".join(parts)
        gates = [
            g for g in dict.fromkeys(untested["gate_reason"].dropna()) if not str(g).startswith("not run")
        ]
        if len(tested):
            head += f". Gate: {tested['gate_reason'].iloc[0]}"
        elif gates:
            head += ". Gate: " + "; ".join(gates)
        lines.append(head + ".")
        for r in tested.itertuples():
            lines.append(f"  - {r.claim}: **{r.verdict}**, {_interval(r)} {r.unit} ({r.claim_holds})")
        measured = untested[untested["effect"].map(_finite)]
        if len(measured):
            lines.append("  - measured where no test could be made (descriptive, not tests):")
            lines += [f"    - {r.claim}: {_interval(r)} {r.unit}" for r in measured.itertuples()]
        unrun = untested["runs"].astype(str).str.startswith("not run: ")  # not testable, and not run either
        not_run = untested[(untested["claim_holds"] == "not run") | unrun]
        if len(not_run):
            lines.append(f"  - not run on {task}: " + "; ".join(dict.fromkeys(not_run["claim"])))
    return "\n".join(lines) + "\n"


def replace_readme_section(text: str, section: str) -> str:
    """``text`` with its :data:`README_HEADING` section (up to the next ``## ``) replaced."""
    pattern = re.compile(rf"^{re.escape(README_HEADING)}\n.*?(?=^## )", re.S | re.M)
    if not pattern.search(text):
        raise ValueError(f"--readme: no '{README_HEADING}' section followed by another '## ' heading")
    return pattern.sub(lambda _: section + "\n", text, count=1)
