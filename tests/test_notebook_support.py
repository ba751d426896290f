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
