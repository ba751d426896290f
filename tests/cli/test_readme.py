"""The README's two commands are the ones CI runs: a drift between them would make CI test something else."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _fenced_after(heading: str, text: str) -> list[str]:
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_has_exactly_one_install_and_one_test_command() -> None:
    text = (REPO / "README.md").read_text()
    assert len(_fenced_after("Install", text)) == 1
    assert len(_fenced_after("Test", text)) == 1


def test_ci_runs_the_readme_commands() -> None:
    text = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    (install,) = _fenced_after("Install", text)
    (test,) = _fenced_after("Test", text)
    # CI spells pip as `python -m pip` and adds --quiet; the arguments must be the same.
    install_args = install.split("pip install", 1)[1].strip()
    assert f"pip install --quiet {install_args}" in ci
    assert test in ci
    before_install = ci.split(install_args)[0]
    assert "torch==2.13.0" in before_install, "CI must install the pinned CPU torch before the README install"
