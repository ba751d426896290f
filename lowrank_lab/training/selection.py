"""Learning-rate selection on a validation split carved from the training data (issue 15).

Why: the papers tune learning rates per method (LoRA's GLUE rates, LoRA-XS's grid up to 1e-3 for the
core and 5e-3 for the head, MiLoRA's tuned LoRA beating PiSSA; ../shared/REFERENCE.md "Study
protocol"), so a comparison at one borrowed rate per family measures the rate, not the method.

Protocol (what :func:`~lowrank_lab.training.study.run_study` does with ``lr_grid``):

1. the head's rate first: the head-only control at every rate of the ``head`` grid;
2. then every other method at every rate of its grid, with the chosen head rate (all methods'
   grids as one batch of runs, then each round of extensions as one: processes sharing a study
   share every round);
3. each on the selection seeds, scored on the validation split (:func:`~.batching.validation_split`)
   by the evaluation whose weights the run kept (its last, or under early stopping its best; the
   record's ``val_metric``), averaged over the seeds; the best finished, non-collapsed rate gives the
   method's rate;
4. a best rate at either end of the grid means the grid missed the optimum: the grid is extended
   one step further in that direction (the ratio of its two outermost rates), up to
   :data:`MAX_EXTENSIONS` times (:func:`extension`);
5. the study's seeds then run at the chosen rates and are judged on the dev set, which no
   selection run reads.

Default grids (:func:`default_grid`): five rates, the centre rate times 0.1, 0.3, 1, 3 and 10 (a
100x span, log-spaced at about half a decade), around each family's published rate
(:mod:`.config`), with the LoRA family centred on the LoRA paper's rate for the task (Hu et al.
2021, Table 9, RoBERTa-base: 5e-4 SST-2, RTE, MNLI, QQP; 4e-4 CoLA, STS-B, MRPC, QNLI; each task's
record in :data:`.tasks.TASKS` holds its rate) and the head
on :data:`HEAD_GRID_CENTRE`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lowrank_lab.utils.tables import update_table

from .config import HEAD_ONLY, RunConfig, common_rank, default_lr, method_family, method_label
from .record import RunRecord
from .tasks import TASKS

#: Multipliers of a family's published rate in the default grid.
GRID_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)

#: LoRA's GLUE learning rates (Hu et al. 2021, Table 9, RoBERTa-base), by task: a view of the task
#: records (:attr:`~.tasks.TaskSpec.lora_paper_lr`), where each rate is written.
LORA_PAPER_LR = {name: t.lora_paper_lr for name, t in TASKS.items() if t.lora_paper_lr is not None}

#: Grid keys: the three method families, the head, or a method's own name.
GRID_GROUPS = ("lora", "core", "full", "head")


class GridError(ValueError):
    """A ``--lr-grid`` value that is not a list of positive, finite rates."""


#: Centre of the head's default grid: 1e-3, so that the five rates (1e-4 .. 1e-2) hold both LoRA's
#: classifier rate (4e-4..5e-4, trained with the adapter) and the top of LoRA-XS's classifier grid
#: (5e-3); a linear probe of a frozen encoder wants the higher end.
HEAD_GRID_CENTRE = 1e-3


def paper_rate(method: str, task: str, task_kind: str) -> float:
    """The published rate the default grid of ``method`` is centred on (see the module docstring)."""
    if method == HEAD_ONLY:
        return HEAD_GRID_CENTRE
    spec = TASKS.get(task)
    if method_family(method) == "lora" and spec is not None and spec.lora_paper_lr is not None:
        return spec.lora_paper_lr
    return default_lr(method, task_kind)


def default_grid(center: float) -> list[float]:
    """``center`` times :data:`GRID_FACTORS`, rounded to three significant digits."""
    return [float(f"{center * f:.3g}") for f in GRID_FACTORS]


def parse_grid(items: Iterable[str] | None) -> dict[str, list[float]] | None:
    """``--lr-grid`` values: ``"default"`` (the bare flag) and/or ``GROUP=R1,R2,...`` where GROUP is
    a family (lora, core, full), ``head`` or a method name. None when the option was not given.

    Raises
    ------
    GridError
        Naming the value that is not a positive finite number, or a malformed item.
    """
    if items is None:
        return None
    grid: dict[str, list[float]] = {}
    for item in items:
        if item in ("", "default"):
            continue
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise GridError(
                f"--lr-grid {item!r}: expected GROUP=RATE,RATE,... with GROUP one of "
                f"{', '.join(GRID_GROUPS)} or a method, e.g. --lr-grid lora=1e-4,3e-4,1e-3"
            )
        rates = []
        for text in values.split(","):
            try:
                rate = float(text)
            except ValueError:
                raise GridError(f"--lr-grid {key}: {text.strip()!r} is not a number") from None
            if not math.isfinite(rate) or rate <= 0:
                raise GridError(f"--lr-grid {key}: learning rate {text.strip()!r} must be positive, finite")
            rates.append(rate)
        grid[key] = sorted(set(rates))
    return grid


def grid_for(method: str, task: str, task_kind: str, grid: Mapping[str, Sequence[float]]) -> list[float]:
    """The rates tried for ``method``: its own entry, else its family's (``head`` for the control),
    else the default grid around :func:`paper_rate`."""
    group = "head" if method == HEAD_ONLY else method_family(method)
    for key in (method, group):
        if key in grid:
            return list(grid[key])
    return default_grid(paper_rate(method, task, task_kind))


#: Extra rates a selection may add beyond an edge of the grid where its best rate sits.
MAX_EXTENSIONS = 2


def extension(
    scores: Mapping[float, float | None], best: float | None, *, higher_is_better: bool
) -> float | None:
    """The rate to try next when ``best`` is the largest (or smallest) rate of ``scores`` (rate ->
    validation metric, None where the run was not usable) and strictly better than its neighbour:
    one grid step beyond it (the ratio of the two outermost rates on that side). None when ``best``
    is inside the grid, ties its neighbour (a plateau: nothing to gain further out) or is None."""
    r = sorted(scores)
    if best is None or len(r) < 2 or best not in (r[0], r[-1]):
        return None
    edge, inner = (r[-1], r[-2]) if best == r[-1] else (r[0], r[1])
    v_edge, v_inner = scores[edge], scores[inner]
    if v_edge is None:
        return None
    if v_inner is not None and (v_edge <= v_inner if higher_is_better else v_edge >= v_inner):
        return None
    return float(f"{edge * edge / inner:.3g}")


@dataclass(frozen=True)
class Choice:
    """The selected rate of one method: ``lr`` (None when every rate collapsed, diverged or failed),
    the validation metric there, and why (for the summary)."""

    method: str
    lr: float | None
    val_metric: float | None
    reason: str


def selectable(rec: RunRecord) -> bool:
    """A selection run that can be chosen: finished, not collapsed on the validation split, with a
    finite validation metric."""
    value = rec.val_metric
    return rec.finished and not rec.val_collapsed and value is not None and math.isfinite(value)


def pooled(records: Sequence[RunRecord]) -> RunRecord:
    """One rate's selection runs over its selection seeds as one record: finished only if every
    seed finished, collapsed if any collapsed, ``val_metric`` their mean (None unless every seed is
    :func:`selectable`), with the per-seed values in ``meta["val_metrics"]``. One record is itself."""
    if len(records) == 1:
        return records[0]
    first = records[0]
    status = next((r.status for r in records if not r.finished), "finished")
    values = [r.val_metric for r in records]
    usable = all(selectable(r) for r in records)
    mean = sum(float(v) for v in values) / len(values) if usable else None  # type: ignore[arg-type]
    meta = {**first.meta, "val_metrics": values, "seeds": [r.seed for r in records]}
    return replace(
        first,
        status=status,
        val_metric=mean,
        val_collapsed=any(bool(r.val_collapsed) for r in records),
        steps_done=max(int(r.steps_done or 0) for r in records),
        meta=meta,
    )


def choose(
    method: str, rates: Sequence[float], records: Sequence[RunRecord], *, higher_is_better: bool
) -> Choice:
    """The rate whose selection run (``records[i]`` was made at ``rates[i]``) has the best
    validation metric.

    Runs that are not :func:`selectable` are not eligible; a tie keeps the smaller rate (the more
    conservative update). The metric read is ``val_metric``: the validation-split evaluation whose
    weights the run kept (its last, or under early stopping its best), the mean over the selection
    seeds for a record that stands for several; never the dev set.
    """
    trials = list(zip(map(float, rates), records, strict=True))
    eligible = [(float(rec.val_metric), rate) for rate, rec in trials if selectable(rec)]  # type: ignore[arg-type]
    if not eligible:
        states = ", ".join(
            f"{rate:.3g}: {'collapsed' if rec.val_collapsed else rec.status}" for rate, rec in trials
        )
        return Choice(method, None, None, f"no usable rate ({states or 'no runs'})")
    sign = 1.0 if higher_is_better else -1.0
    best = max(eligible, key=lambda vl: (sign * vl[0], -vl[1]))
    edge = ""
    ordered = sorted(rate for rate, _ in trials)
    if len(ordered) > 1 and best[1] in (ordered[0], ordered[-1]):
        edge = " (at the edge of the grid: widen it)"
    return Choice(method, best[1], best[0], f"best validation metric of {len(eligible)} usable rates{edge}")


# -- the selection stage of a study ----------------------------------------------------------


def selection_dir(out: Path, cfg: RunConfig) -> Path:
    """``out/select/<run>-lr<rate>``: one selection run of ``cfg`` at its rate (head rate for the
    head-only control)."""
    rate = cfg.head_lr if cfg.method == HEAD_ONLY else cfg.lr
    return Path(out) / "select" / f"{cfg.run_name()}-lr{rate:.3g}"


def select_rates(
    runner: Any,
    base: RunConfig,
    methods: Sequence[str],
    grid: dict[str, list[float]],
    seed: int | Sequence[int],
    out: Path,
) -> tuple[dict[str, Choice], float]:
    """The selection protocol of this module's docstring, on ``runner`` (the study's run loop:
    ``runner.run(configs, dir_of, desc, score_dev=False)`` and ``runner.spec``); returns each
    method's choice and the head rate. Writes ``selection.csv`` and ``figures/lr_selection.png``.

    ``seed`` may be several selection seeds (issue 30, point 11): every rate then runs on each, and
    a rate is scored by the mean of their validation metrics (:func:`pooled`), so one lucky seed
    does not pick the rate the verdicts are judged at."""
    seeds = (int(seed),) if isinstance(seed, int) else tuple(int(s) for s in seed)
    if not seeds:
        raise ValueError("--selection-seeds needs at least one seed")
    spec = runner.spec
    rows: list[dict[str, Any]] = []
    head_lr = base.resolved_head_lr()
    choices: dict[str, Choice] = {}

    def select(grids: dict[str, tuple[list[float], Callable[[float], RunConfig], str]]) -> None:
        """Every method's grid as one batch of runs, then each round of extensions (one step beyond
        an edge that holds the best rate: :func:`extension`) of all methods still at an edge as one
        batch, so processes sharing the study share each round. A method's choice depends on its own
        runs only, so the batching changes no choice."""
        tried: dict[str, list[RunConfig]] = {m: [] for m in grids}
        recs: dict[str, list[RunRecord]] = {m: [] for m in grids}
        todo = {m: list(rates) for m, (rates, _, _) in grids.items()}
        for _ in range(MAX_EXTENSIONS + 1):
            batch = [(m, r, replace(grids[m][1](r), seed=sd)) for m in grids for r in todo[m] for sd in seeds]
            if not batch:
                break
            names = ", ".join(m for m in grids if todo[m])
            got, _ = runner.run(
                [c for _, _, c in batch],
                lambda c: selection_dir(out, c),
                f"{spec.name} select rates: {names}",
                score_dev=False,
            )
            by_rate: dict[tuple[str, float], list[RunRecord]] = {}
            for (m, r, _), rec in zip(batch, got, strict=True):
                by_rate.setdefault((m, r), []).append(rec)
            for m in grids:
                for r in todo[m]:
                    tried[m].append(grids[m][1](r))
                    recs[m].append(pooled(by_rate[(m, r)]))
            for m in grids:
                if not todo[m]:
                    continue
                rates = [float(getattr(c, grids[m][2])) for c in tried[m]]
                choices[m] = choose(m, rates, recs[m], higher_is_better=spec.higher_is_better)
                pairs = zip(rates, recs[m], strict=True)
                scores = {r: (rec.val_metric if selectable(rec) else None) for r, rec in pairs}
                nxt = extension(scores, choices[m].lr, higher_is_better=spec.higher_is_better)
                todo[m] = [] if nxt is None else [nxt]
        for m, (_, _, which) in grids.items():
            rates = [float(getattr(c, which)) for c in tried[m]]
            if m not in choices:  # an empty grid: nothing ran, nothing to choose
                choices[m] = choose(m, [], [], higher_is_better=spec.higher_is_better)
            rows.extend(_rows(m, which, tried[m], rates, recs[m], choices[m]))

    if spec.kind != "causal-lm" and base.head_lr is None:
        # A new head trains: its rate first, with the head-only control (a --head-lr given with
        # --lr-grid is taken as already selected, e.g. by the study's rank-8 runs).
        select(
            {
                HEAD_ONLY: (
                    grid_for(HEAD_ONLY, spec.name, spec.kind, grid),
                    lambda r: replace(base, method=HEAD_ONLY, seed=seeds[0], head_lr=r, save_merged=False),
                    "head_lr",
                )
            }
        )
        choice = choices[HEAD_ONLY]
        if choice.lr is None:
            write_selection(out, rows, choices)
            raise ValueError(
                f"no head learning rate trains the head-only control ({choice.reason}); see "
                f"{Path(out) / 'selection.csv'} and widen the head grid, e.g. --lr-grid head=1e-3,1e-2,1e-1"
            )
        head_lr = choice.lr
    else:
        choices[HEAD_ONLY] = Choice(HEAD_ONLY, head_lr, None, "given (--head-lr), not selected here")
    select(
        {
            m: (
                grid_for(m, spec.name, spec.kind, grid),
                lambda r, m=m: replace(
                    base, method=m, seed=seeds[0], lr=r, head_lr=head_lr, save_merged=False
                ),
                "lr",
            )
            for m in methods
            if m != HEAD_ONLY
        }
    )
    write_selection(out, rows, choices)
    return choices, head_lr


def _rows(
    method: str,
    which: str,
    cfgs: Sequence[RunConfig],
    rates: Sequence[float],
    recs: Sequence[RunRecord],
    choice: Choice,
) -> list[dict[str, Any]]:
    """selection.csv's rows of one method: each rate tried, its validation result, the chosen one."""
    return [
        {
            "method": method,
            "rank": cfg.rank,
            "rate_of": which,
            "lr": rate,
            "val_metric": rec.val_metric,
            "status": rec.status,
            "collapsed": rec.val_collapsed,
            "steps_done": rec.steps_done,
            "chosen": choice.lr is not None and rate == choice.lr,
            "seeds": ",".join(str(s) for s in rec.meta.get("seeds", [rec.seed])),
            "val_sd": _sd(rec.meta.get("val_metrics")),
        }
        for cfg, rate, rec in zip(cfgs, rates, recs, strict=True)
    ]


def _sd(values: Sequence[float | None] | None) -> float | None:
    """Sample standard deviation of the selection seeds' validation metrics (None for one seed)."""
    if not values or len(values) < 2 or any(v is None for v in values):
        return None
    mean = sum(values) / len(values)  # type: ignore[arg-type]
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))  # type: ignore[operator]


def write_selection(out: Path, rows: list[dict[str, Any]], choices: dict[str, Choice]) -> Path:
    """``selection.csv`` (one row per method and rate) and ``figures/lr_selection.png``."""
    import pandas as pd

    path = Path(out) / "selection.csv"
    # another call's selections (other methods or ranks, or another stream's) stay
    frame = update_table(path, pd.DataFrame(rows, columns=SELECTION_COLUMNS), SELECTION_KEY)
    _draw_selection(out, frame)
    return path


def redraw_selection_figure(out: str | Path) -> Path | None:
    """``figures/lr_selection.png`` again from ``out/selection.csv`` (``finetune --summary-only``
    rebuilds every figure); None where the study has no selection."""
    import pandas as pd

    path = Path(out) / "selection.csv"
    return _draw_selection(out, pd.read_csv(path)) if path.is_file() else None


def _draw_selection(out: str | Path, frame: Any) -> Path | None:
    if frame.empty:
        return None
    from .claims import read_baselines, reference_levels
    from .figures import lr_selection  # matplotlib only where a figure is drawn

    references = reference_levels(read_baselines(out), "validation")
    return lr_selection(frame, Path(out) / "figures" / "lr_selection.png", references=references)


SELECTION_COLUMNS = [
    "method",
    "rank",
    "rate_of",
    "lr",
    "val_metric",
    "status",
    "collapsed",
    "steps_done",
    "chosen",
    "seeds",
    "val_sd",
]
SELECTION_KEY = ["method", "rank", "rate_of", "lr"]


def selection_line(out: Path) -> str | None:
    """The chosen rate per method from ``selection.csv`` (None without one), for summary.md."""
    import pandas as pd

    path = Path(out) / "selection.csv"
    if not path.is_file():
        return None
    sel = pd.read_csv(path)
    if sel.empty:
        return None
    tried = sel.groupby(["method", "rank"], sort=False).size()
    rank = common_rank(zip(sel["method"], sel["rank"], strict=True))
    chosen = sel[sel["chosen"].fillna(False).astype(bool)]
    picked = ", ".join(
        f"{method_label(r.method, r.rank, rank)} {r.lr:g} (of {tried[(r.method, r.rank)]})"
        for r in chosen.itertuples()
    )
    have = set(zip(chosen["method"], chosen["rank"], strict=True))
    none = [method_label(m, r, rank) for m, r in tried.index if (m, r) not in have]
    text = (
        "selected per method on the validation split (selection.csv, figures/lr_selection.png), "
        f"chosen rate (of the rates tried): {picked}"
    )
    return text + (f"; no usable rate: {', '.join(none)}" if none else "")
