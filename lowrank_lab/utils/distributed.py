"""Splitting per-matrix work across ``torchrun`` processes and putting the results back together.

lowrank_lab does not run its own launcher: ``torchrun --nproc-per-node N -m lowrank_lab.analyze ...``
(or with ``--nnodes``/``--rdzv-*`` for several nodes) sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``, and :func:`init_from_env` joins the process group torch.distributed creates from
them (gloo: only barriers and counts cross between ranks). Work is split ahead of time by
:func:`balanced_partition`; each process
writes its rows to its own part files (so an interrupted rank loses nothing and ``--resume`` knows
what every rank finished), and rank 0 merges the parts into the same files a single process writes,
in the same row order (:func:`merge_csv_parts`).
"""

from __future__ import annotations

import heapq
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from lowrank_lab.utils.files import atomic_path

#: Ranks that finish early wait at the final barrier for the slowest; a 70B run can be hours.
BARRIER_TIMEOUT = timedelta(hours=12)


def launch_command(module: str, nproc: int = 1) -> list[str]:
    """The argv that runs ``python -m <module>`` in ``nproc`` local processes.

    One process: this interpreter directly. Several: ``torch.distributed.run --standalone
    --nproc-per-node N`` (the ``torchrun`` launcher, run through this interpreter so the same
    environment is used), which sets the variables :func:`init_from_env` reads. Append the
    module's own options to the list.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if nproc == 1:
        return [sys.executable, "-m", module]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    return [sys.executable, *launcher, "-m", module]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: Sequence[int]) -> list[int]:
        """Element-wise sum of ``values`` over all ranks (the values themselves when alone)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.int64)
        dist.all_reduce(t)  # gloo reduces CPU tensors; an NCCL group would need them on the GPU
        return t.tolist()

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per local rank: ``cuda`` becomes ``cuda:<LOCAL_RANK>``; CPU stays CPU."""
        if requested.type == "cuda" and requested.index is None and self.enabled:
            return torch.device("cuda", self.local_rank)
        return requested

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_from_env(device: torch.device | str = "cpu") -> DistContext:
    """Join the process group described by torchrun's environment, or run alone without it.

    The backend is gloo on CPU and GPU alike: ranks exchange only a barrier and a few counts (each
    reads its own tensors and writes its own part files), which gloo does on CPU tensors.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    ctx = DistContext(
        rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )
    if not dist.is_initialized():
        # gloo for CPU tensors (and the small bookkeeping all-reduces); NCCL groups would need those
        # on the GPU, and the matrices themselves never travel between ranks, so gloo serves GPUs too.
        if torch.device(device).type == "cuda":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend="gloo", timeout=BARRIER_TIMEOUT)
    return ctx


def balanced_partition(costs: Sequence[float], parts: int) -> list[list[int]]:
    """Split item indices into ``parts`` lists of nearly equal total cost.

    Longest-processing-time-first greedy (Graham 1969): items in decreasing cost go to the least
    loaded part, which is within 4/3 of the optimal makespan. Ties break by index so every process
    computes the same split; each part lists its items in their original order.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    heap = [(0.0, p) for p in range(parts)]
    assignment: list[list[int]] = [[] for _ in range(parts)]
    for idx in sorted(range(len(costs)), key=lambda i: (-float(costs[i]), i)):
        load, p = heapq.heappop(heap)
        assignment[p].append(idx)
        heapq.heappush(heap, (load + float(costs[idx]), p))
    return [sorted(a) for a in assignment]


def part_path(path: Path, rank: int) -> Path:
    """``out/factorization.csv`` → ``out/parts/factorization.rank3.csv``."""
    return path.parent / "parts" / f"{path.stem}.rank{rank}{path.suffix}"


def existing_parts(path: Path) -> list[Path]:
    """Every part file of ``path`` left by any rank of any earlier run (for ``--resume``)."""
    folder = path.parent / "parts"
    return sorted(folder.glob(f"{path.stem}.rank*{path.suffix}")) if folder.exists() else []


def merge_csv_parts(
    path: Path, parts: Sequence[Path], *, order: Callable[[pd.DataFrame], pd.DataFrame], key: Sequence[str]
) -> pd.DataFrame:
    """Concatenate ``path`` (if present) and the part files, drop duplicate keys, sort with ``order``,
    and write ``path`` atomically. Returns the merged frame.

    Cells are read and written as text, so every value keeps the exact spelling its writer gave it
    (no ``3`` → ``3.0`` from a column pandas would read as float): a merged file is byte-for-byte
    the rows a single process would have written, in the order ``order`` gives.
    """
    frames = [
        pd.read_csv(p, dtype=str, keep_default_na=False)
        for p in [path, *parts]
        if p.exists() and p.stat().st_size > 0
    ]
    frames = [f for f in frames if not f.empty] or frames[:1]
    merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not merged.empty:
        merged = order(merged.drop_duplicates(subset=list(key), keep="last")).reset_index(drop=True)
    with atomic_path(path) as tmp:
        merged.to_csv(tmp, index=False, lineterminator="\r\n")  # as RowWriter (the csv module) ends rows
    return merged
