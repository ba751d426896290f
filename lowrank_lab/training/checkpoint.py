"""Mid-run checkpoints: an interrupted fine-tuning run continues from its last finished step.

A 300-step GSM8K run with stories260K takes 8–16 minutes on a 2-core CPU; ``--resume`` used to redo
such a run from step 0 after Ctrl-C, a SIGTERM from a batch system, or a crash. Now the training loop
saves, every ``checkpoint_seconds`` of wall time and when it is interrupted between updates:

- the trainable parameters, by name (the frozen weights, including PiSSA's residual ``W − BA``,
  are rebuilt bit-identically by the seeded init, so they are not stored),
- the AdamW and learning-rate schedule state,
- torch's global RNG state (dropout masks) as it was at the start of the next step,
- the record so far: per-step losses, evaluations, timings, peak memory.

The data order depends only on the seed and the step (:func:`~.batching.batch_order`), so a run
resumed from step k computes exactly what the uninterrupted run would have computed from step k +
1: the loss curve is bit-identical on the same machine and thread count (tested).

Files, in the run's directory: ``checkpoint.pt`` (``torch.save``; read back with
``weights_only=True``, so it holds tensors and plain Python values only) and ``checkpoint.json``
(config, learning rates and step, small enough for ``--resume``'s settings check before any
training). Both are written to a temporary name and renamed, and the study deletes them once
``run.json`` records the run as finished or diverged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from lowrank_lab.utils.files import read_text

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_META = "checkpoint.json"
SCHEMA = "lowrank_lab.finetune.checkpoint/1"


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """torch's global CPU RNG state, and the CUDA one of ``device`` when it is a GPU."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, torch.Tensor | None], device: torch.device) -> None:
    """Put back what :func:`rng_state` took. The states are CPU byte tensors whatever the device:
    ``load_checkpoint(..., device)`` maps every tensor to the run's device, so they come back."""
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(run_dir: str | Path, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``state`` (tensors and plain values) to ``run_dir/checkpoint.pt`` and ``meta``
    (JSON-able: config, lr, head_lr, step, seconds) to ``checkpoint.json``, each atomically;
    returns the .pt."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pt = run_dir / CHECKPOINT
    _atomic(pt, lambda p: torch.save({"schema": SCHEMA, **state}, p))
    text = json.dumps({"schema": SCHEMA, **meta}, indent=1)
    _atomic(run_dir / CHECKPOINT_META, lambda p: p.write_text(text))
    return pt


def read_checkpoint_meta(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``checkpoint.json`` of ``run_dir`` (config, lr, head_lr, step and, from checkpoints
    written since it was added, ``seconds``: train, eval and run so far), or None if there is none."""
    path = Path(run_dir) / CHECKPOINT_META
    if not path.is_file() or not (Path(run_dir) / CHECKPOINT).is_file():
        return None
    try:
        meta = json.loads(read_text(path))
    except json.JSONDecodeError:
        return None
    return meta if meta.get("schema") == SCHEMA else None


def load_checkpoint(run_dir: str | Path, device: torch.device) -> dict[str, Any]:
    """Read ``run_dir/checkpoint.pt`` onto ``device``; ValueError naming the file if it is unreadable."""
    path = Path(run_dir) / CHECKPOINT
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors have many types; name the file
        raise ValueError(
            f"cannot read the checkpoint {path} ({type(exc).__name__}: the file is damaged or was not "
            f"written by lowrank_lab); delete it (and {CHECKPOINT_META}) to restart that run from step 0"
        ) from exc
    if state.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a {SCHEMA} checkpoint (schema {state.get('schema')!r})")
    return state


def remove_checkpoint(run_dir: str | Path) -> None:
    for name in (CHECKPOINT, CHECKPOINT_META):
        (Path(run_dir) / name).unlink(missing_ok=True)
