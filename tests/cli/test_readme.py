"""The README's install and test commands are the ones CI runs: a drift would make CI test something else."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: What CI runs (issue 31): every test a CPU can run, slow ones included.
FULL = 'python -m pytest -m "not gpu"'
#: The quick default: pyproject's addopts leave out `slow` and `gpu`.
QUICK = "python -m pytest"


def _commands(heading: str, text: str) -> list[str]:
    """The command lines of the ```bash blocks of one README section, without trailing comments."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = [line.split(" #", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _ci_commands() -> list[str]:
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_readme_install_is_venv_cpu_torch_then_the_project() -> None:
    venv, torch_line, project = _commands("Install", (REPO / "README.md").read_text())
    assert venv == "python -m venv .venv && . .venv/bin/activate"
    assert shlex.split(torch_line) == [
        "pip", "install", "torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu",
    ]  # fmt: skip
    assert shlex.split(project)[:2] == ["pip", "install"]


def test_readme_test_section_gives_the_quick_and_the_full_command() -> None:
    assert _commands("Test", (REPO / "README.md").read_text()) == [QUICK, FULL]


def test_ci_installs_and_runs_what_the_readme_says() -> None:
    text = (REPO / "README.md").read_text()
    _, torch_line, project = _commands("Install", text)
    ci = _ci_commands()
    # CI spells pip as `python -m pip` and adds --quiet; the arguments must be the same.
    project_args = shlex.split(project)[2:]
    installs = [shlex.split(c) for c in ci if c.startswith("python -m pip install")]
    assert [[a for a in c[4:] if a != "--quiet"] for c in installs] == [["torch==2.13.0"], project_args]
    # The pinned torch comes first, so the project's `torch>=2.3` pulls nothing more; the README pins
    # the same version (its CPU index is what a Linux machine without CUDA needs; CI's pip finds it).
    assert "torch==2.13.0" in shlex.split(torch_line)
    # CI runs the README's full command, and only that one.
    assert [c for c in ci if c.startswith("python -m pytest")] == [FULL]
