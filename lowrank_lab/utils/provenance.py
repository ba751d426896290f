"""What made a generated file: command, versions, device, threads, seed, git commit, time."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from lowrank_lab.utils.files import atomic_write_text

_PACKAGES = ("lowrank_lab", "torch", "numpy", "scipy", "pandas", "transformers", "safetensors", "peft")


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that shape the numbers (None when absent)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the checkout holding ``path`` (this package by default), with ``-dirty`` if modified."""
    here = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``) and its widest x86
    vector extension: what decides torch's CPU kernels, hence the last bits of float results."""
    name, flags = "", set()
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and not name:
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    isa = next((f for f in ("avx512f", "avx2", "avx", "sve", "asimd") if f in flags), None)
    return f"{name} ({isa})" if isa else name


def device_description(device: torch.device | str | None = None) -> str:
    """``"cpu (2 threads, x86_64)"`` or ``"cuda:0 (NVIDIA H100 80GB HBM3)"``."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"


def command_argv(argv: list[str] | None = None) -> list[str]:
    """``argv`` (default ``sys.argv``) as it was typed: ``python -m lowrank_lab.intruders`` leaves the
    module's file path in ``sys.argv[0]`` (``/.../lowrank_lab/intruders.py``), given back here as
    ``-m lowrank_lab.intruders``, so a recorded command replays from any folder."""
    argv = [str(a) for a in (sys.argv if argv is None else argv)]
    if not argv or not argv[0].endswith(".py"):
        return argv
    package = Path(__file__).resolve().parents[1]  # .../lowrank_lab
    try:
        parts = Path(argv[0]).resolve().with_suffix("").relative_to(package.parent).parts
    except ValueError:  # a script outside the package: keep its path
        return argv
    if parts[-1] == "__main__":
        parts = parts[:-1]
    return ["-m", ".".join(parts), *argv[1:]]


def command_line(argv: list[str] | None = None) -> str:
    """The command that made a run, shell-quoted (``shlex.join``): ``python -m lowrank_lab.analyze
    --out 'my runs/a'`` pasted into a shell runs it again, where words joined by spaces split a path
    with a space in two."""
    return shlex.join([Path(sys.executable).name, *command_argv(argv)])


def run_metadata(
    argv: list[str] | None = None,
    *,
    seed: int | None = None,
    device: torch.device | str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON-ready record of how a run was made; pair with :func:`write_run_json` at the end."""
    argv = list(sys.argv if argv is None else argv)
    return {
        "command": command_line(argv) if argv else None,
        "argv": argv,
        "versions": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device_description(device),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "seed": seed,
        "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }


def write_run_json(path: str | Path, meta: dict[str, Any], wall_seconds: float | None = None) -> Path:
    """Write ``meta`` (plus ``wall_seconds``) atomically: a crash never leaves half a JSON file, and a
    symbolic link at ``path`` is refused (:func:`lowrank_lab.utils.files.atomic_write_text`)."""
    path = Path(path)
    record = dict(meta)
    if wall_seconds is not None:
        record["wall_seconds"] = round(float(wall_seconds), 3)
    return atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
