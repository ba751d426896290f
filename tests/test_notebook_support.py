"""lowrank_lab.notebook_support: where a notebook's library runs go and how an interrupted one continues."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowrank_lab import notebook_support as nbs


@pytest.fixture
def library_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    monkeypatch.setenv("LOWRANK_LAB_OUTPUT_ROOT", str(tmp_path))
    monkeypatch.setenv("LOWRANK_LAB_FRESH", "1")
    seen: list = []
    monkeypatch.setattr(nbs, "run_library", seen.append)
    return seen


@pytest.mark.parametrize("small", ["1", ""])
def test_a_library_run_gets_out_resume_and_figures_by_mode(library_calls, tmp_path, monkeypatch, small):
    from lowrank_lab.analysis.analyze_run import AnalyzeConfig

    monkeypatch.setenv("LOWRANK_LAB_SMALL", small)
    out = nbs.analysis_dir("minilm", name="99_demo", small=dict(ranks="8"), full=dict(ranks="8,64"),
                           saved="none")
    (config,) = library_calls
    assert isinstance(config, AnalyzeConfig) and config.resume and config.out == str(out)
    assert config.ranks == ((8,) if small else (8, 64))
    if small:  # the notebooks draw their own figures in small mode
        assert config.no_figures and config.figures is None
    else:
        assert not config.no_figures and config.figures == str(tmp_path / "figures" / "none")


def test_run_library_calls_the_run_of_the_configs_own_module(monkeypatch):
    import lowrank_lab.analysis.params as params_lib
    from lowrank_lab.analysis.params import ParamsConfig

    result = nbs.run_library(ParamsConfig(model="minilm", rank=(8,), methods=("lora",)))
    assert list(result.table["trainable"]) == [8 * (384 + 384) * 4 * 6 + 8 * (384 + 1536) * 2 * 6]
    assert params_lib.run.__module__ == type(ParamsConfig()).__module__
    with pytest.raises(TypeError, match="has no run"):
        nbs.run_library(Path("x"))


def test_notebook_support_imports_no_command_module():
    import ast

    tree = ast.parse(Path(nbs.__file__).read_text())
    commands = {"analyze", "intruders", "finetune", "diagnose", "params", "claims"}
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {f"{n.module}.{a.name}" if n.module else a.name
              for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}  # fmt: skip
    assert not {x for x in names if x in {f"lowrank_lab.{c}" for c in commands}}
    assert "lowrank_lab.{" not in Path(nbs.__file__).read_text()  # no module built from a command name


def test_a_nonzero_status_from_a_library_run_is_an_error(monkeypatch):
    from lowrank_lab.training.finetune_run import FinetuneConfig

    monkeypatch.setattr("lowrank_lab.training.finetune_run.run", lambda config: 2)
    with pytest.raises(RuntimeError, match="ended with status 2"):
        nbs.run_library(FinetuneConfig(task="sst2"))
