"""What made a generated file: command, versions, device, threads, seed, git commit, time."""

from __future__ import annotations

import json
import os
import platform
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
        "command": " ".join([Path(sys.executable).name, *argv]) if argv else None,
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
