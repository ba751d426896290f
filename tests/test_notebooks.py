"""Every study notebook runs top to bottom in small mode (issue 8), without touching the checkout.

The notebooks' sources are the jupytext percent-format files ``notebooks/NN_*.py`` (every one is
picked up, no list to keep); each is executed in memory with nbclient (kernel ``python3``, cwd
``notebooks/``) with ``LOWRANK_LAB_SMALL=1`` and ``MPLBACKEND=Agg``; its figures and tables go to a
temporary ``LOWRANK_LAB_OUTPUT_ROOT`` and ``LOWRANK_LAB_FRESH=1`` makes it compute rather than read
whatever results the checkout holds. Neither the ``.py`` nor the committed ``.ipynb`` is written: the
executed copy is saved under the test's tmp_path for inspection. The committed ``.ipynb`` must be
what ``notebooks/sync_notebooks.py`` makes of its source.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
# The same rule as tests/conftest.py and lowrank_lab.notebook_support.shared_data().
SHARED_DATA = Path(os.environ.get("LOWRANK_LAB_SHARED_DATA", REPO.parent / "shared" / "data"))
NOTEBOOK_DIR = REPO / "notebooks"
sys.path.insert(0, str(NOTEBOOK_DIR))
import sync_notebooks  # noqa: E402 - the script beside the notebooks, not a package module

NOTEBOOKS = sync_notebooks.sources(NOTEBOOK_DIR)
#: Notebooks with nothing to show without ../shared/data (they fine-tune on GLUE SST-2).
NEED_DATA = {"05", "06"}
#: Per-cell limit. Small mode aims at <= 30 s per notebook on 2 cores; a cell hitting this is a bug.
CELL_TIMEOUT = 180


def _snapshot(*dirs: Path) -> dict[str, float]:
    """Modification times of the generated files a notebook could write, and of the notebooks."""
    # Left out: reports/benchmarks, reports/finetune and reports/study (written by the benchmark
    # scripts, by `python -m lowrank_lab.finetune`'s default --out and by benchmarks/claims_study.sh,
    # which may run for hours while this test does; a notebook always passes its own --out) and
    # the hand-kept reports/README.md.
    skip = {"benchmarks", "finetune", "study"}
    files = {
        str(p): p.stat().st_mtime
        for d in dirs if d.exists() for p in d.rglob("*")
        if p.is_file() and not skip & set(p.relative_to(d).parts[:1]) and p.name != "README.md"
    }
    notebooks = [p for src in NOTEBOOKS for p in (src, src.with_suffix(".ipynb")) if p.exists()]
    return {**files, **{str(p): p.stat().st_mtime for p in notebooks}}


def test_there_are_notebooks():
    names = [p.stem[:2] for p in NOTEBOOKS]
    assert names[:7] == ["01", "02", "03", "04", "05", "06", "07"], names
    assert len(set(names)) == len(names), f"two notebooks share a number: {names}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_with_outputs_cleared(path: Path):
    nb = nbformat.read(path.with_suffix(".ipynb"), as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; run python notebooks/sync_notebooks.py"


@pytest.mark.slow  # a subprocess (jupytext on every notebook)
def test_notebooks_match_their_source():
    # The .ipynb files are generated from their percent-format .py; an edit to one but not the
    # other would make the reviewed source lie about the committed notebook.
    proc = subprocess.run([sys.executable, str(NOTEBOOK_DIR / "sync_notebooks.py"), "--check"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_source_is_a_paired_percent_notebook(path: Path):
    text = path.read_text()
    assert "formats: ipynb,py:percent" in text and "# %%" in text, f"{path.name} is not a paired percent file"
    code = [c for c in sync_notebooks.notebook(path).cells if c.cell_type == "code"]
    assert code and all(c.source.strip() for c in code), f"{path.name} has an empty code cell"


def test_small_mode_writes_to_a_temporary_folder_by_default(monkeypatch):
    from lowrank_lab import notebook_support as nbs

    monkeypatch.delenv("LOWRANK_LAB_OUTPUT_ROOT", raising=False)
    monkeypatch.setenv("LOWRANK_LAB_SMALL", "1")
    root = nbs.output_root()
    assert REPO not in root.parents and root != REPO
    assert str(root).startswith(tempfile.gettempdir())
    monkeypatch.setenv("LOWRANK_LAB_SMALL", "0")
    assert nbs.output_root() == REPO  # the full-size run writes the committed reports/ and figures/


@pytest.mark.slow  # a Jupyter kernel per notebook, 7-31 s each
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

    nb = sync_notebooks.notebook(path)
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
        nbformat.write(nb, tmp_path / f"{path.stem}.ipynb")  # the executed copy, never the committed file
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
