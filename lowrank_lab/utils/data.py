"""Where the real task data and checkpoints live: one rule for the library, the harness and notebooks."""

from __future__ import annotations

import os
from pathlib import Path

#: Overrides the default location of the shared data (GLUE, GSM8K, stories260K).
DATA_DIR_ENV = "LOWRANK_LAB_SHARED_DATA"


def shared_data_dir() -> Path:
    """``$LOWRANK_LAB_SHARED_DATA`` if set, else ``../shared/data`` beside the repository clone.

    The data is read from there and never copied into the repository (see its MANIFEST.md).
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"
