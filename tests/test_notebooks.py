"""Every study notebook runs top to bottom in small mode (issue 8), without touching the checkout.

Each notebook is executed in memory with nbclient (kernel ``python3``, cwd ``notebooks/``) with
``LOWRANK_LAB_SMALL=1`` and ``MPLBACKEND=Agg``; its figures and tables go to a temporary
``LOWRANK_LAB_OUTPUT_ROOT`` and ``LOWRANK_LAB_FRESH=1`` makes it compute rather than read whatever
results the checkout holds. The committed ``.ipynb`` is never written: the executed copy is saved
under the test's tmp_path for inspection.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
# The same rule as tests/conftest.py and lowrank_lab.notebook_support.shared_data().
SHARED_DATA = Path(os.environ.get("LOWRANK_LAB_SHARED_DATA", REPO.parent / "shared" / "data"))
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
#: Notebooks with nothing to show without ../shared/data (they fine-tune on GLUE SST-2).
NEED_DATA = {"05", "06"}
#: Per-cell limit. Small mode aims at <= 30 s per notebook on 2 cores; a cell hitting this is a bug.
CELL_TIMEOUT = 180


def _snapshot(*dirs: Path) -> dict[str, float]:
    """Modification times of the generated files a notebook could write, and of the notebooks."""
    # Left out: reports/benchmarks and reports/finetune (written by the benchmark scripts and by
    # `python -m lowrank_lab.finetune`'s default --out, which may run while this test does; a
    # notebook always passes its own --out) and the hand-kept reports/README.md.
    skip = {"benchmarks", "finetune"}
    files = {
        str(p): p.stat().st_mtime
        for d in dirs if d.exists() for p in d.rglob("*")
        if p.is_file() and not skip & set(p.relative_to(d).parts[:1]) and p.name != "README.md"
    }
    return {**files, **{str(p): p.stat().st_mtime for p in NOTEBOOKS}}


def test_there_are_notebooks():
    names = [p.stem[:2] for p in NOTEBOOKS]
    assert names == ["01", "02", "03", "04", "05", "06", "07"], names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_with_outputs_cleared(path: Path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; run python notebooks/build_notebooks.py"


def test_notebooks_match_their_source():
    # The .ipynb files are generated from notebooks/build_notebooks.py; an edit to one but not the
    # other would make the reviewed source lie about the committed notebook.
    proc = subprocess.run([sys.executable, str(NOTEBOOK_DIR / "build_notebooks.py"), "--check"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("py", sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py")), ids=lambda p: p.stem)
def test_percent_notebooks_match_their_ipynb(py: Path):
    # Notebooks written as jupytext percent files (# %% cells) are the source; the .ipynb beside each
    # is generated with `jupytext --to ipynb` and must hold the same cells.
    jupytext = pytest.importorskip("jupytext")
    source = jupytext.read(py)
    committed = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
    cells = [(c.cell_type, c.source) for c in source.cells]
    assert cells == [(c.cell_type, c.source) for c in committed.cells], (
        f"{py.name} and its .ipynb differ: run jupytext --to ipynb {py.name}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_small_mode(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # The kernel is a child process: it inherits these.
    monkeypatch.setenv("LOWRANK_LAB_SMALL", "1")
    monkeypatch.setenv("LOWRANK_LAB_FRESH", "1")
    monkeypatch.setenv("LOWRANK_LAB_OUTPUT_ROOT", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    # Small mode factors tiny matrices: one BLAS thread avoids oversubscription (10x faster on a loaded box).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("LOWRANK_LAB_CACHE", str(tmp_path / "cache"))  # intruders' base-SVD cache
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    before = _snapshot(REPO / "figures", REPO / "reports")

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    t0 = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{path.name} failed in small mode:\n{exc}", pytrace=False)
    finally:
        nbformat.write(nb, tmp_path / path.name)  # the executed copy, never the committed file
    wall = time.perf_counter() - t0
    print(f"{path.name}: {wall:.1f} s in small mode")

    written = list((tmp_path / "out").rglob("*.png"))
    if path.stem[:2] in NEED_DATA and not (SHARED_DATA / "MANIFEST.md").exists():
        # Nothing to train on: the notebook must say so (and still run), not draw empty figures.
        text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        assert "../shared/data not found" in text, f"{path.name} did not say why it showed nothing"
    else:
        assert written, f"{path.name} saved no figure under LOWRANK_LAB_OUTPUT_ROOT"
    after = _snapshot(REPO / "figures", REPO / "reports")
    changed = sorted(k for k, v in after.items() if before.get(k) != v)
    assert not changed, f"{path.name} wrote into the checkout under test: {changed[:5]}"
