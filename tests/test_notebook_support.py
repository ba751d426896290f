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


def test_analyze_runs_also_get_their_figures_folder(calls, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_LAB_SMALL", "1")
    out = nbs.cli_outputs("analyze", name="99_demo", small_argv=["--model", "minilm"])
    assert calls[0][-3:] == [
        "--resume",
        "--figures",
        str(tmp_path / "figures" / "notebooks" / "99_demo-small"),
    ]
    assert out.is_dir()


def test_an_unknown_cli_is_refused(calls):
    with pytest.raises(ValueError, match="unknown command-line module 'train'"):
        nbs.cli_outputs("train", name="x", small_argv=[])
    assert calls == []
