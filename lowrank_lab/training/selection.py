"""Learning-rate selection on a validation split carved from the training data (issue 15).

Why: the papers tune learning rates per method (LoRA's GLUE rates, LoRA-XS's grid up to 1e-3 for the
core and 5e-3 for the head, MiLoRA's tuned LoRA beating PiSSA; ../shared/REFERENCE.md "Study
protocol"), so a comparison at one borrowed rate per family measures the rate, not the method.

Protocol (what :func:`~lowrank_lab.training.study.run_study` does with ``lr_grid``):

1. the head's rate first: the head-only control at every rate of the ``head`` grid;
2. then every other method at every rate of its grid, with the chosen head rate;
3. each on the selection seed, scored on the validation split (:func:`~.batching.validation_split`)
   at the last step; the best finished, non-collapsed run gives the method's rate;
4. a best rate at either end of the grid means the grid missed the optimum: the grid is extended
   one step further in that direction (the ratio of its two outermost rates), up to
   :data:`MAX_EXTENSIONS` times (:func:`extension`);
5. the study's seeds then run at the chosen rates and are judged on the dev set, which no
   selection run reads.

Default grids (:func:`default_grid`): five rates, the centre rate times 0.1, 0.3, 1, 3 and 10 (a
100x span, log-spaced at about half a decade), around each family's published rate
(:mod:`.config`), with the LoRA family centred on the LoRA paper's rate for the task (Hu et al.
2021, Table 9, RoBERTa-base: 5e-4 SST-2, RTE, MNLI, QQP; 4e-4 CoLA, STS-B, MRPC, QNLI) and the head
on :data:`HEAD_GRID_CENTRE`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import HEAD_ONLY, default_lr, method_family

#: Multipliers of a family's published rate in the default grid.
GRID_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)

#: LoRA's GLUE learning rates (Hu et al. 2021, Table 9, RoBERTa-base).
LORA_PAPER_LR = {
    "sst2": 5e-4,
    "rte": 5e-4,
    "mnli": 5e-4,
    "qqp": 5e-4,
    "cola": 4e-4,
    "stsb": 4e-4,
    "mrpc": 4e-4,
    "qnli": 4e-4,
    "wnli": 4e-4,
}

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
    if method_family(method) == "lora" and task in LORA_PAPER_LR:
        return LORA_PAPER_LR[task]
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


def choose(method: str, records: Sequence[Mapping[str, Any]], *, higher_is_better: bool) -> Choice:
    """The rate whose selection run has the best validation metric at its last step.

    Runs that did not finish, collapsed to a constant predictor or have no finite validation
    metric are not eligible; a tie keeps the smaller rate (the more conservative update). The
    metric read is ``val_metric`` (the last evaluation on the validation split), never the dev set.
    """
    eligible = []
    for rec in records:
        value = rec.get("val_metric")
        usable = rec.get("status") == "finished" and not rec.get("val_collapsed")
        if not usable or value is None or not math.isfinite(value):
            continue
        eligible.append((float(value), float(rec["selection_lr"])))
    if not eligible:
        states = ", ".join(
            f"{rec.get('selection_lr'):.3g}: {'collapsed' if rec.get('val_collapsed') else rec.get('status')}"
            for rec in records
        )
        return Choice(method, None, None, f"no usable rate ({states or 'no runs'})")
    sign = 1.0 if higher_is_better else -1.0
    best = max(eligible, key=lambda vl: (sign * vl[0], -vl[1]))
    edge = ""
    rates = sorted(float(rec["selection_lr"]) for rec in records)
    if len(rates) > 1 and best[1] in (rates[0], rates[-1]):
        edge = " (at the edge of the grid: widen it)"
    return Choice(method, best[1], best[0], f"best validation metric of {len(eligible)} usable rates{edge}")
