"""lowrank_lab.notebook_support: where a notebook's CLI runs go and how an interrupted one continues."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowrank_lab import notebook_support as nbs


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    monkeypatch.setenv("LOWRANK_LAB_OUTPUT_ROOT", str(tmp_path))
    monkeypatch.setenv("LOWRANK_LAB_FRESH", "1")
    seen: list[list[str]] = []
    monkeypatch.setattr(nbs, "run_cli", lambda main, argv: seen.append(list(argv)))
    return seen


@pytest.mark.parametrize(
    ("small", "suffix", "argv"), [("1", "-small", ["--steps", "8"]), ("", "", ["--steps", "300"])]
)
def test_a_cli_run_goes_to_the_notebooks_folder_and_resumes(
    calls, tmp_path, monkeypatch, small, suffix, argv
):
    monkeypatch.setenv("LOWRANK_LAB_SMALL", small)
    out = nbs.cli_outputs(
        "finetune", name="99_demo", small_argv=["--steps", "8"], full_argv=["--steps", "300"]
    )
    assert out == tmp_path / "reports" / "notebooks" / f"99_demo{suffix}"
    # a second execution after an interruption must continue, not start the runs over
    assert calls == [[*argv, "--out", str(out), "--resume"]]


@pytest.mark.parametrize("small", ["1", ""])
def test_analyze_runs_get_their_figures_folder_at_full_size_only(calls, tmp_path, monkeypatch, small):
    # small mode (the notebook tests) skips the CLI's figures: the notebooks draw their own
    monkeypatch.setenv("LOWRANK_LAB_SMALL", small)
    out = nbs.cli_outputs("analyze", name="99_demo", small_argv=["--model", "minilm"])
    want = ["--no-figures"] if small else ["--figures", str(tmp_path / "figures" / "notebooks" / "99_demo")]
    assert calls[0][-1 - len(want):] == ["--resume", *want]
    assert out.is_dir()


def test_an_unknown_cli_is_refused(calls):
    with pytest.raises(ValueError, match="unknown command-line module 'train'"):
        nbs.cli_outputs("train", name="x", small_argv=[])
    assert calls == []


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
