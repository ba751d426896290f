"""Glue for the notebooks in ``notebooks/``: where their outputs go, small mode, finding saved results.

Nothing numeric lives here (the notebooks call :mod:`lowrank_lab.linalg`, :mod:`~lowrank_lab.weights`,
:mod:`~lowrank_lab.adapters`, :mod:`~lowrank_lab.analysis` and :mod:`~lowrank_lab.training` for that,
and run a command's work through its library entry point, :func:`run_library`; no command-line
module is imported here).
This module only answers "which size?", "where do I write?" and "is there a saved result to read?",
so that every notebook answers them the same way and a test can redirect all of it.

Environment variables
---------------------
``LOWRANK_LAB_SMALL=1``
    Small mode: each notebook keeps to a subset (fewer layers, ranks, steps) and runs in seconds.
    Used by ``tests/test_notebooks.py``; unset for the full-size run. Its outputs go to a temporary
    folder (:data:`SMALL_OUTPUT_ROOT`) unless ``LOWRANK_LAB_OUTPUT_ROOT`` names one: small-mode
    tables never overwrite the committed full-size ones in ``reports/`` and ``figures/``.
``LOWRANK_LAB_OUTPUT_ROOT=DIR``
    Write figures to ``DIR/figures`` and tables to ``DIR/reports`` instead of the default (the
    repository's ``figures/`` and ``reports/`` at full size, :data:`SMALL_OUTPUT_ROOT` in small mode).
``LOWRANK_LAB_FRESH=1``
    Ignore saved results under ``reports/`` and recompute them (the test sets it, so CI always
    exercises the path that computes, whatever happens to be saved in the checkout).
``LOWRANK_LAB_SHARED_DATA=DIR``
    Where the real task data and stories260K live; default ``../shared/data`` beside the clone
    (the same rule as ``tests/conftest.py``).
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import tempfile

if os.environ.get("LOWRANK_LAB_SMALL", "").strip().lower() in ("1", "true", "yes", "on") and (
    "torch" not in sys.modules
):
    # Small mode factors tiny matrices, where BLAS threads only fight over the cores (10x slower under
    # load); full-size runs keep every thread for the timings they report. It takes effect only
    # before numpy and torch load their BLAS, hence here, ahead of this module's own imports: a
    # notebook imports this module first (lowrank_lab/__init__.py sets OMP_WAIT_POLICY likewise).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pandas as pd  # noqa: E402

from lowrank_lab.utils.data import shared_data_dir  # noqa: E402
from lowrank_lab.utils.files import atomic_path, atomic_write_text, write_frame  # noqa: E402
from lowrank_lab.utils.tables import to_markdown  # noqa: E402

#: The repository root (the folder holding ``lowrank_lab/``, ``notebooks/``, ``reports/``).
REPO_ROOT = Path(__file__).resolve().parents[1]

#: Where small mode writes by default: a folder under the system's temporary directory, so a quick
#: run never replaces the committed full-size tables and figures.
SMALL_OUTPUT_ROOT = Path(tempfile.gettempdir()) / "lowrank_lab-notebooks-small"

#: Sub-folder of ``figures/`` and ``reports/`` that the notebooks' own outputs go to.
NOTEBOOK_SUBDIR = "notebooks"

_TRUE = {"1", "true", "yes", "on"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def small_mode() -> bool:
    """True when ``LOWRANK_LAB_SMALL`` is set to 1/true/yes/on."""
    return _flag("LOWRANK_LAB_SMALL")


def fresh_mode() -> bool:
    """True when ``LOWRANK_LAB_FRESH`` asks to ignore saved results."""
    return _flag("LOWRANK_LAB_FRESH")


def pick(small: Any, full: Any) -> Any:
    """``small`` in small mode, else ``full`` — one line per size-dependent setting in a notebook."""
    return small if small_mode() else full


def output_root() -> Path:
    """``$LOWRANK_LAB_OUTPUT_ROOT``; else :data:`SMALL_OUTPUT_ROOT` in small mode, the repository root
    at full size."""
    env = os.environ.get("LOWRANK_LAB_OUTPUT_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    return SMALL_OUTPUT_ROOT if small_mode() else REPO_ROOT


def figures_dir(sub: str = NOTEBOOK_SUBDIR) -> Path:
    """``<output root>/figures/<sub>``, created."""
    path = output_root() / "figures" / sub
    path.mkdir(parents=True, exist_ok=True)
    return path


def reports_dir(sub: str = NOTEBOOK_SUBDIR) -> Path:
    """``<output root>/reports/<sub>``, created."""
    path = output_root() / "reports" / sub
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data() -> Path | None:
    """``$LOWRANK_LAB_SHARED_DATA`` or ``../shared/data`` beside the clone; None when absent."""
    path = shared_data_dir()
    return path if (path / "MANIFEST.md").exists() else None


def stories260k_path() -> Path | None:
    """The stories260K llama2.c checkpoint in the shared data, or None (with nothing raised)."""
    data = shared_data()
    if data is None:
        return None
    path = data / "models" / "stories260K" / "stories260K.bin"
    return path if path.exists() else None


def saved_result(relative: str | Path, *, marker: str | None = None) -> Path | None:
    """A saved result ``reports/<relative>`` to read instead of recomputing, or None.

    Looks under the output root first, then the repository's ``reports/`` (a test writes to a
    temporary root but may read what the repository holds). ``marker`` names a file that must exist
    inside a directory result (e.g. ``"summary.md"``: a finished study). Always None in fresh mode.
    """
    if fresh_mode():
        return None
    for root in dict.fromkeys([output_root(), REPO_ROOT]):
        path = root / "reports" / relative
        if path.exists() and (marker is None or (path / marker).exists()):
            return path
    return None


def start(notebook: str) -> bool:
    """The first cell of every notebook: pandas display options, then a line each for the mode and
    where figures and tables go. Returns :func:`small_mode` (the notebook's ``SMALL``).

    ``notebook`` is the notebook's path from the repository root, e.g.
    ``"notebooks/04_parameter_counts.ipynb"`` (what its saved tables name as their source).
    """
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 30)
    print(f"{notebook}: {mode_line()}")
    print("figures ->", figures_dir(), "| tables ->", reports_dir())
    return small_mode()


def mode_line() -> str:
    """One line for the top of every saved table: which mode, when."""
    size = "small mode (LOWRANK_LAB_SMALL=1)" if small_mode() else "full size"
    return f"{size}, written {_dt.datetime.now().isoformat(timespec='seconds')}"


def save_figure(fig: Any, name: str) -> Path:
    """Save a matplotlib figure as ``figures/notebooks/<name>.png`` (fixed name every run)."""
    path = figures_dir() / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return path


def save_table(df: pd.DataFrame, name: str, *, title: str, source: str, floatfmt: str = ".4g") -> Path:
    """Write ``reports/notebooks/<name>.csv`` (the data) and ``<name>.md`` (titled, with its source).

    ``source`` says what made it, e.g. ``"notebooks/04_parameter_counts.ipynb"``; the markdown file
    also records the mode (small or full) and the time.
    """
    out = reports_dir()
    write_frame(df, out / f"{name}.csv")
    md = f"# {title}\n\nMade by `{source}` ({mode_line()}).\n\n{to_markdown(df, floatfmt=floatfmt)}\n"
    return atomic_write_text(out / f"{name}.md", md)


def run_library(config: Any) -> Any:
    """Run a command's library entry point on ``config``: ``run(config)`` of the module that defines
    the config's class (``AnalyzeConfig`` -> :func:`lowrank_lab.analysis.analyze_run.run`, and so on
    for every command of issue 29), what the command line calls after parsing. Returns its result."""
    import importlib

    module = importlib.import_module(type(config).__module__)
    entry = getattr(module, "run", None)
    if entry is None:
        raise TypeError(f"{type(config).__name__} is not a command's config: {module.__name__} has no run()")
    result = entry(config)
    if isinstance(result, int) and not isinstance(result, bool) and result != 0:  # finetune's exit status
        raise RuntimeError(f"{module.__name__}.run({type(config).__name__}) ended with status {result}")
    return result


def _fields(config: Any) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(config)}


def outputs(
    *,
    name: str,
    small: Any,
    full: Any | None = None,
    saved: str | None = None,
    full_out: str | None = None,
    marker: str = "summary.md",
) -> Path:
    """The output folder of a command's config: a saved result to read, or a fresh run.

    ``small`` and ``full`` are configs of one command (e.g. two :class:`AnalyzeConfig`); in order:

    1. ``reports/<saved>`` when ``saved`` is given and it holds ``marker`` (a finished full-size
       result made by the documented command). Used in either mode.
    2. This notebook's own earlier run at the same size, when it holds ``marker``:
       ``reports/notebooks/<name>-small`` in small mode, ``reports/<full_out>`` at full size
       (``full_out`` defaults to ``notebooks/<name>``).
    3. Otherwise the library runs now (:func:`run_library`) on ``small`` or ``full`` with ``out`` set
       to that folder and ``resume`` on (what an interrupted run finished is kept; every command
       refuses to resume a folder made with other settings); a config with figure options draws
       them under ``figures/`` at full size and none in small mode, where the notebooks draw their own.

    Steps 1 and 2 are skipped in fresh mode (``LOWRANK_LAB_FRESH=1``).
    """
    import dataclasses

    if saved is not None:
        found = saved_result(saved, marker=marker)
        if found is not None:
            print(f"reading the saved results in {found}")
            return found
    if small_mode():
        rel = Path(NOTEBOOK_SUBDIR) / f"{name}-small"
    else:
        rel = Path(full_out) if full_out else Path(NOTEBOOK_SUBDIR) / name
    own = saved_result(rel, marker=marker)
    if own is not None:
        print(f"reading this notebook's earlier run in {own} (LOWRANK_LAB_FRESH=1 recomputes)")
        return own
    out = output_root() / "reports" / rel
    out.mkdir(parents=True, exist_ok=True)
    config = small if small_mode() or full is None else full
    fields = _fields(config)
    changes: dict[str, Any] = {"out": str(out)}
    if "resume" in fields:
        changes["resume"] = True
    if "figures" in fields:
        changes.update(figures=None, no_figures=True) if small_mode() else changes.update(
            figures=str(output_root() / "figures" / rel), no_figures=False)
    elif "no_figures" in fields:
        changes["no_figures"] = small_mode()
    config = dataclasses.replace(config, **changes)
    print(f"running {type(config).__name__}: {config}")
    run_library(config)
    return out


def analysis_dir(
    model: str, *, name: str, small: dict[str, Any], full: dict[str, Any] | None = None,
    saved: str | None = None,
) -> Path:
    """:func:`outputs` of :class:`~lowrank_lab.analysis.analyze_run.AnalyzeConfig` on ``model``,
    with the options ``small`` and ``full`` (the config's field names, e.g. ``ranks="8,32"``).

    ``saved`` defaults to ``model``: the committed full-size runs live in ``reports/<model>`` and
    ``figures/<model>`` (made with those ``--out``/``--figures``; the command's own defaults are the
    git-ignored ``runs/<model>``), so such a run is read rather than redone, and a full-size run made
    here goes to the same place (``full`` should then be the documented command's options).
    """
    from lowrank_lab.analysis.analyze_run import AnalyzeConfig

    saved = saved if saved is not None else str(model)
    return outputs(
        name=name, saved=saved, full_out=saved,
        small=AnalyzeConfig(model=str(model), **small), full=AnalyzeConfig(model=str(model), **(full or {})),
    )  # fmt: skip


def load_singular_values(out: str | Path, tensors: list[str]) -> dict[str, Any]:
    """The singular values an analysis run saved (``<out>/singular_values/*.npy``), by tensor name.

    Reading files only; the file naming is the library's (:mod:`lowrank_lab.analysis.analyze_run`),
    so it is asked for there rather than repeated here. Tensors without a saved file are left out.
    """
    from lowrank_lab.analysis.analyze_run import load_singular_values as load_one

    sv_dir = Path(out) / "singular_values"
    values = {t: load_one(sv_dir, t) for t in tensors}
    return {t: v for t, v in values.items() if v is not None}
