"""Write every study notebook ``notebooks/NN_*.ipynb`` from its source ``NN_*.py``, outputs cleared.

The sources are jupytext percent-format files (``# %%`` code cells, ``# %% [markdown]`` text
cells) paired with the ``.ipynb`` (``formats: ipynb,py:percent``): real Python that ruff lints,
diffs read line by line, and ``jupytext --sync`` or Jupyter's jupytext extension keeps in step
while editing. Every ``notebooks/NN_*.py`` is picked up, so a new notebook needs no registration.
This script makes the committed ``.ipynb`` a pure function of its source (stable cell ids, no
outputs, one kernelspec), so a review of the ``.py`` is a review of the notebook:

    python notebooks/sync_notebooks.py            # (re)write every notebook from its .py
    python notebooks/sync_notebooks.py 04 01      # only those whose names start with 04 or 01
    python notebooks/sync_notebooks.py --check    # exit 1 if a committed .ipynb differs from its .py

It is not part of the package and holds no algorithm.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def sources(directory: Path = HERE) -> list[Path]:
    """Every notebook source ``NN_*.py`` in ``directory``, in order."""
    return sorted(directory.glob("[0-9][0-9]_*.py"))


def notebook(source: Path) -> nbformat.NotebookNode:
    """The notebook of a percent-format source, outputs cleared, cell ids stable (``NN-ii``)."""
    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata = {
        "jupytext": {"formats": "ipynb,py:percent"},
        "kernelspec": dict(KERNELSPEC),
        "language_info": {"name": "python"},
    }
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{source.stem[:2]}-{i:02d}"  # regenerating does not churn the diff
        cell["metadata"] = {}
        if cell.cell_type == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return nb


def render(source: Path) -> str:
    """The exact text the committed ``.ipynb`` of ``source`` must have."""
    return nbformat.writes(notebook(source)) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    wanted = [a for a in argv if not a.startswith("--")]
    stale = []
    for source in sources():
        if wanted and not any(source.stem.startswith(w) for w in wanted):
            continue
        path = source.with_suffix(".ipynb")
        text = render(source)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
            continue
        path.write_text(text)
        print("wrote", path.relative_to(HERE.parent))
    orphans = sorted(p.name for p in HERE.glob("[0-9][0-9]_*.ipynb") if not p.with_suffix(".py").exists())
    if orphans:
        print("notebooks without a .py source (convert with jupytext --to py:percent):", ", ".join(orphans))
        return 1
    if stale:
        print("out of date (run python notebooks/sync_notebooks.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
