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
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from lowrank_lab.utils.files import atomic_path

#: Seconds a rank waits at a barrier or count exchange for the other ranks before it gives up with a
#: message (:func:`barrier_timeout`); the process group's own timeout is 10 s longer.
BARRIER_TIMEOUT_ENV = "LOWRANK_LAB_BARRIER_TIMEOUT"

#: The default wait. Ranks that finish their share early wait at the final barrier for the slowest;
#: the cost-balanced split (:func:`balanced_partition`) keeps that to a fraction of the run, and a
#: peer that was stopped or hangs should not hold the others for long (it held them 12 hours, the
#: former process-group timeout, with no message). Raise it for runs whose shares take longer.
BARRIER_TIMEOUT = timedelta(hours=1)

#: A waiting rank says what it waits for after this many seconds, then again at this interval.
WAIT_NOTE_SECONDS = 60.0


class BarrierTimeoutError(TimeoutError):
    """The other ranks did not reach a barrier in time (one line, exit status 2)."""


class PeerLostError(ConnectionError):
    """A rank died while the others waited for it at a barrier (one line, exit status 2)."""


def barrier_timeout() -> timedelta:
    """``$LOWRANK_LAB_BARRIER_TIMEOUT`` (seconds, > 0) or :data:`BARRIER_TIMEOUT`."""
    text = os.environ.get(BARRIER_TIMEOUT_ENV, "").strip()
    if not text:
        return BARRIER_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"${BARRIER_TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return timedelta(seconds=seconds)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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

    def barrier(self, what: str = "every rank to finish its share") -> None:
        """Wait until every rank gets here; ``what`` says what for, in the waiting notes and the
        timeout error (:meth:`wait`)."""
        if self.enabled:
            self.wait(dist.barrier(async_op=True), what)

    def sum(self, values: Sequence[int], what: str = "the other ranks' counts") -> list[int]:
        """Element-wise sum of ``values`` over all ranks (the values themselves when alone)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.int64)
        # gloo reduces CPU tensors; an NCCL group would need them on the GPU
        self.wait(dist.all_reduce(t, async_op=True), what)
        return t.tolist()

    def wait(self, work, what: str, *, poll: float = 0.2) -> None:
        """Wait for a collective ``work`` (``async_op=True``) to complete, bounded by
        :func:`barrier_timeout`: after :data:`WAIT_NOTE_SECONDS` and at that interval a line on
        stderr says what this rank waits for; past the timeout :class:`BarrierTimeoutError` says the
        same, where a stopped peer used to hold the others silently for 12 hours. A failure of the
        collective itself (a peer that died) is raised as it comes."""
        limit = barrier_timeout().total_seconds()
        start = time.monotonic()
        note_at = start + WAIT_NOTE_SECONDS
        who = f"rank {self.rank} of {self.world_size}"
        while not work.is_completed():
            now = time.monotonic()
            if now - start >= limit:
                raise BarrierTimeoutError(
                    f"{who} waited {_duration(now - start)} for {what} and gives up: another rank was "
                    f"stopped, hangs or is still working (see its output); ${BARRIER_TIMEOUT_ENV} sets "
                    "the wait in seconds, and --resume keeps every finished row"
                )
            if now >= note_at:
                print(f"{who}: waiting for {what} ({_duration(now - start)} so far; gives up after "
                      f"{_duration(limit)}, ${BARRIER_TIMEOUT_ENV})", file=sys.stderr, flush=True)
                note_at = now + WAIT_NOTE_SECONDS
            time.sleep(poll)
        try:
            work.wait()
        except RuntimeError as exc:  # gloo: "Connection closed by peer ...", a rank died meanwhile
            first = " ".join(str(exc).split())[:200]
            raise PeerLostError(
                f"{who}: another rank left while this one waited for {what} ({first}); see that rank's "
                "output, then rerun with --resume, which keeps every finished row"
            ) from exc

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
        # the group's own timeout 10 s past ours: DistContext.wait's message comes first, and a process
        # that gave up ends once gloo drops the collective it left pending (a stopped peer never ends it)
        dist.init_process_group(backend="gloo", timeout=barrier_timeout() + timedelta(seconds=10))
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
