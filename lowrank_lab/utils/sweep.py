"""The resumable, distributed per-matrix sweep behind ``analyze`` and ``intruders``.

Both commands do the same thing around different mathematics: walk a list of items (weight
matrices) one at a time, turn each into rows of a few CSV tables, and keep those files valid
whatever happens. :class:`Sweep` owns that part, once:

* **the lock** — :class:`~lowrank_lab.utils.lock.OutputLock` on the output folder, taken by rank 0
  and shared by the other ranks of a ``torchrun`` job (they learn through one all-reduce whether
  rank 0 got it, so a refused job stops on every rank);
* **resume** — with ``resume`` the rows already written are kept and every table's header is
  checked before anything changes; the items whose rows are all there are not even read
  (``finished``); without it the tables and any part files are removed first;
* **the split** — a distributed run hands each rank a cost-balanced share of the unfinished items
  (:func:`~lowrank_lab.utils.distributed.balanced_partition`, longest-processing-time first);
* **part files** — each rank appends to ``parts/<table>.rank<N>.csv``, so an interrupted rank
  loses nothing and a later ``--resume`` (of any world size) sees everything finished;
* **merge and row order** — rank 0 folds the parts into the tables a single process writes, in
  the same row order (``order``), byte for byte;
* **bad matrices** — a work function that raises :class:`SkipItem` gets its item recorded by the
  caller's ``on_skip`` rows (skipped.csv) and the sweep goes on; :attr:`Sweep.skipped` lists them;
* **prompt interrupts** — the work runs in a worker thread and the main thread only writes the rows
  it hands over, so Ctrl-C or SIGTERM (which Python delivers to the main thread, between bytecodes)
  acts within a second even while one factorization runs for minutes inside LAPACK: the finished
  rows are closed and the lock released at once, and the abandoned computation dies with the process;
* **progress** — a tqdm bar on a terminal (the tensor name cut to fit from the left, so its informative
  right end shows), and without one a line on stderr at least every 30 s with done, total and ETA.

A command is then: parse its options, build a :class:`Sweep` with its tables, call :meth:`Sweep.run`
with a per-item function, and write its report from the merged files.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lowrank_lab.utils.distributed import (
    DistContext,
    balanced_partition,
    existing_parts,
    merge_csv_parts,
    part_path,
)
from lowrank_lab.utils.files import atomic_write_text, refuse_symlink
from lowrank_lab.utils.lock import OutputLock, OutputLockedError
from lowrank_lab.utils.tables import RowWriter, key_text, read_keys

Row = Mapping[str, Any]

#: Seconds between progress lines when stderr is not a terminal (issue 31: at least every 30 s).
PROGRESS_EVERY = 30.0


@dataclass(frozen=True)
class Table:
    """One CSV file of a sweep: its path, columns (in order) and the columns that key a row."""

    path: Path
    columns: Sequence[str]
    key: Sequence[str]


class SkipItem(Exception):
    """Raised by a work function for an item that cannot be computed (NaN weights, ...).

    The sweep records it (the caller's ``on_skip`` rows) and goes on with the next item.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = " ".join(str(reason).split())


class Sweep:
    """A resumable sweep over items, writing rows into ``tables`` inside ``out``.

    Parameters
    ----------
    out : Path
        The output folder (exists and is writable).
    tables : mapping
        ``name -> Table``; every table lives directly in ``out``.
    order : callable
        ``DataFrame -> DataFrame`` sorting rows of any table into single-process order (used when
        part files are merged).
    ctx : DistContext
        This process's place in a (possibly one-process) run.
    resume : bool
        Keep rows already written (``--resume``).
    command : str
        Shown by a refused second process.
    retry_tables : sequence of str
        Tables emptied (header kept) before a resumed run starts, so the items they list are
        computed again (``--retry-skipped`` empties skipped.csv).
    check_resume : callable, optional
        Run by rank 0 under the lock before a resumed run changes anything; raises ValueError when
        the files were made with other settings (its message reaches every rank's exit status).
    on_open : callable, optional
        Run by rank 0 under the lock once the tables are ready (the caller's own files: a folder
        to check, a first run.json); an error there stops every rank like a refused lock.

    Use as a context manager: entering takes the lock and prepares the tables, leaving closes the
    writers and releases the lock (also on an exception or Ctrl-C, keeping every finished row).
    """

    def __init__(
        self,
        out: Path,
        tables: Mapping[str, Table],
        *,
        order: Callable[[pd.DataFrame], pd.DataFrame],
        ctx: DistContext | None = None,
        resume: bool = False,
        command: str = "",
        retry_tables: Sequence[str] = (),
        check_resume: Callable[[], None] | None = None,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self.out = Path(out)
        self.tables = dict(tables)
        self.order = order
        self.ctx = ctx or DistContext()
        self.resume = resume
        self.retry_tables = tuple(retry_tables)
        self.check_resume = check_resume
        self.on_open = on_open
        self.lock = OutputLock(self.out, command=command)
        self.writers: dict[str, RowWriter] = {}
        self.finished: dict[str, set[tuple[str, ...]]] = {}
        self.counts: dict[str, int] = dict.fromkeys(self.tables, 0)
        #: ``(label, reason)`` of every item skipped by this process.
        self.skipped: list[tuple[str, str]] = []

    # -- setting up -------------------------------------------------------------------------------
    def __enter__(self) -> Sweep:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def parts_dir(self) -> Path:
        return self.out / "parts"

    def open(self) -> None:
        ctx = self.ctx
        error: Exception | None = None
        if ctx.is_main:
            try:
                self.lock.acquire()
                note = self.lock.note()
                if note:
                    print(note, file=sys.stderr)
                self._prepare()
                if self.on_open is not None:
                    self.on_open()
            except (OSError, ValueError) as exc:
                error = exc
        # One collective either way: every rank learns whether rank 0 holds the folder.
        (failed,) = ctx.sum([1 if error is not None else 0], f"rank 0 to lock and prepare {self.out}")
        if error is not None:
            self.lock.release()
            raise error
        if failed:
            raise OutputLockedError(f"rank 0 could not prepare {self.out}; see its message")
        if ctx.enabled:
            # What earlier runs finished is read-only; each rank appends to its own part files.
            self.finished = {n: read_keys(t.path, t.key) for n, t in self.tables.items()}
            self.parts_dir.mkdir(exist_ok=True)
            self.writers = {n: RowWriter(part_path(t.path, ctx.rank), t.columns, t.key)
                            for n, t in self.tables.items()}
        else:
            self.finished = {n: set() for n in self.tables}
            self.writers = {n: RowWriter(t.path, t.columns, t.key, resume=self.resume)
                            for n, t in self.tables.items()}

    def _prepare(self) -> None:
        """Rank 0, before any rank starts. Resumed: check every header, then fold in the parts an
        interrupted distributed run left. Fresh: remove the tables and their parts."""
        for t in self.tables.values():
            refuse_symlink(t.path)
            for p in existing_parts(t.path):
                refuse_symlink(p)
        if self.resume:
            if self.check_resume is not None:
                self.check_resume()
            for t in self.tables.values():  # raises on another layout, before anything changes
                read_keys(t.path, t.key, columns=t.columns)
                for p in existing_parts(t.path):
                    read_keys(p, t.key, columns=t.columns)
            self._merge()
            for name in self.retry_tables:
                t = self.tables[name]
                if t.path.exists():
                    atomic_write_text(t.path, ",".join(t.columns) + "\r\n")
            return
        for t in self.tables.values():
            for p in existing_parts(t.path):
                p.unlink()
            t.path.unlink(missing_ok=True)
        self._remove_parts_dir()

    # -- the rows -----------------------------------------------------------------------------------
    def done(self, table: str, key: Sequence[Any]) -> bool:
        """Whether a row with ``key`` is in ``table`` (written by this run or an earlier one)."""
        return self.writers[table].done(key) or tuple(key_text(k) for k in key) in self.finished[table]

    def write(self, table: str, row: Row) -> None:
        """Append one row to ``table`` unless a row with its key is already there."""
        writer = self.writers[table]
        key = [row[k] for k in writer.key_columns]
        if self.done(table, key):
            return
        writer.write(row)
        self.counts[table] += 1

    # -- the work -------------------------------------------------------------------------------------
    def share(
        self, items: Sequence[Any], *, finished: Callable[[Any], bool], cost: Callable[[Any], float]
    ) -> list[Any]:
        """This rank's unfinished items: all of them alone, a cost-balanced share under torchrun."""
        todo = [item for item in items if not finished(item)]
        if not self.ctx.enabled:
            return todo
        split = balanced_partition([cost(item) for item in todo], self.ctx.world_size)
        return [todo[j] for j in split[self.ctx.rank]]

    def run(
        self,
        items: Sequence[Any],
        work: Callable[[Any], Iterable[tuple[str, Row]]],
        *,
        finished: Callable[[Any], bool],
        cost: Callable[[Any], float],
        label: Callable[[Any], str] = str,
        on_skip: Callable[[Any, str], Iterable[tuple[str, Row]]] | None = None,
        desc: str = "",
        prog: str = "",
        seconds: Callable[[Any], float] | None = None,
        progress_every: float | None = None,
    ) -> list[Any]:
        """Run ``work`` on this rank's share of ``items``, writing the ``(table, row)`` pairs it yields.

        ``work`` may raise :class:`SkipItem`: the rows of ``on_skip(item, reason)`` are written and
        the sweep continues. ``work`` runs in a worker thread (see the module docstring: interrupts);
        any other exception it raises is raised here. ``seconds(item)``, when given, is an estimate of
        each item's time (a calibrated cost model) for the ETA before the first item finishes; the ETA
        otherwise scales the time so far by ``cost``. Progress lines, when stderr is not a terminal,
        start with ``prog`` and come every ``progress_every`` seconds (default
        :data:`PROGRESS_EVERY`). Returns the items this process worked on.
        """
        from tqdm.auto import tqdm

        mine = self.share(items, finished=finished, cost=cost)
        ctx = self.ctx
        bar_desc = f"{desc} [rank {ctx.rank}/{ctx.world_size}]" if ctx.enabled else desc
        costs = [float(cost(item)) for item in mine]
        where = f" [rank {ctx.rank}/{ctx.world_size}]" if ctx.enabled else ""
        progress = Progress(
            len(mine), costs, prog=f"{prog or desc or 'lowrank_lab'}{where}",
            estimate=None if seconds is None else sum(float(seconds(item)) for item in mine),
            every=PROGRESS_EVERY if progress_every is None else progress_every,
            enabled=bool(mine) and not _isatty(sys.stderr),
        )
        stop = threading.Event()
        events: queue.SimpleQueue = queue.SimpleQueue()
        inherit = _thread_state()

        def produce() -> None:
            # The worker: computes, hands every row to the main thread, never writes a file itself.
            try:
                inherit()
                for i, item in enumerate(mine):
                    if stop.is_set():
                        return
                    events.put(("start", i, label(item)))
                    try:
                        for table, row in work(item):
                            if stop.is_set():
                                return
                            events.put(("row", i, (table, row)))
                    except SkipItem as exc:
                        events.put(("skip", i, exc.reason))
                    events.put(("done", i, None))
                events.put(("end", -1, None))
            except BaseException as exc:  # handed to the main thread and raised there
                events.put(("error", -1, exc))

        worker = threading.Thread(target=produce, name="lowrank_lab-sweep", daemon=True)
        with tqdm(total=len(mine), desc=bar_desc, unit="matrix", disable=None, position=ctx.rank) as bar:
            worker.start()
            try:
                while True:
                    try:
                        kind, i, payload = events.get(timeout=0.5)  # wakes for signals and progress
                    except queue.Empty:
                        progress.tick()
                        continue
                    if kind == "row":
                        self.write(*payload)
                    elif kind == "start":
                        bar.set_postfix_str(tail_label(payload, _label_width(bar_desc)), refresh=True)
                    elif kind == "skip":
                        self.skipped.append((label(mine[i]), payload))
                        for table, row in (on_skip(mine[i], payload) if on_skip else ()):
                            self.write(table, row)
                    elif kind == "done":
                        bar.update(1)
                        progress.finished(i)
                    elif kind == "error":
                        raise payload
                    else:  # "end"
                        break
                    progress.tick()
            except BaseException as exc:
                if worker.is_alive():  # abandoned mid-computation: see exit_process
                    _abandon(worker, exc)
                raise
            finally:
                stop.set()  # an interrupt or error: the worker stops at its next row, or dies with us
        return mine

    # -- the end -----------------------------------------------------------------------------------
    def finish(self, extra: Sequence[int] = ()) -> tuple[dict[str, int], list[int]]:
        """Close the writers, wait for every rank, merge the parts (rank 0).

        Returns the row counts of the whole run per table and the element-wise sum of ``extra``
        over ranks (counters of the caller's own, e.g. cache hits), plus the skipped-item count
        under ``"skipped_items"``.
        """
        self._close_writers()
        ctx = self.ctx
        ctx.barrier("every rank to finish its share of the matrices")  # every part file is complete
        names = list(self.tables)
        totals = ctx.sum([self.counts[n] for n in names] + [len(self.skipped)] + list(extra))
        counts = dict(zip(names, totals[: len(names)], strict=True))
        counts["skipped_items"] = totals[len(names)]
        if ctx.is_main and ctx.enabled:
            self._merge()
        return counts, totals[len(names) + 1:]

    def close(self) -> None:
        """Close the writers and release the lock (idempotent)."""
        self._close_writers()
        if self.ctx.is_main:
            with contextlib.suppress(OSError):
                self._remove_parts_dir()
        self.lock.release()

    def _close_writers(self) -> None:
        for w in self.writers.values():
            w.close()

    def _merge(self) -> None:
        """Fold every rank's part files into the tables in single-process row order; remove them."""
        for t in self.tables.values():
            parts = existing_parts(t.path)
            if parts:
                merge_csv_parts(t.path, parts, order=self.order, key=t.key)
                for p in parts:
                    p.unlink()
        self._remove_parts_dir()

    def _remove_parts_dir(self) -> None:
        if self.parts_dir.is_dir() and not self.parts_dir.is_symlink() and not any(self.parts_dir.iterdir()):
            self.parts_dir.rmdir()





def _thread_state() -> Callable[[], None]:
    """What torch keeps per thread (grad mode, the current CUDA device), read in the calling thread;
    the returned function sets the same in the worker thread that calls it."""
    import torch

    grad = torch.is_grad_enabled()
    cuda = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def apply() -> None:
        torch.set_grad_enabled(grad)
        if cuda is not None:
            torch.cuda.set_device(cuda)

    return apply


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def tail_label(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters from the left, marked with ``…``: tensor names differ at
    their right end (``...layers.31.mlp.down_proj.weight``), which a terminal cut would lose."""
    width = max(int(width), 2)
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _label_width(desc: str) -> int:
    """Room for the label on one terminal line beside tqdm's own ~60 characters and the description."""
    columns = shutil.get_terminal_size((100, 24)).columns
    return max(16, columns - len(desc) - 62)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``: the precision an estimate deserves."""
    if seconds != seconds or seconds < 0:  # NaN
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Progress lines for a sweep whose stderr is not a terminal (a log file, a batch job).

    ``tick()`` prints ``<prog>: progress: 12/224 matrices done, 5.4% of the work, 3.2 min elapsed,
    ETA 56 min`` when ``every`` seconds have passed since the last line; ``finished(i)`` records item
    ``i``. The ETA scales the elapsed time by the remaining share of ``costs``; before the first item
    finishes it is ``estimate`` minus the time so far (when an estimate was given).
    """

    def __init__(
        self, total: int, costs: Sequence[float], *, prog: str = "", estimate: float | None = None,
        every: float = PROGRESS_EVERY, enabled: bool = True, stream: Any = None,
    ) -> None:
        self.total, self.costs, self.prog = total, list(costs), prog
        self.estimate, self.every, self.enabled = estimate, float(every), enabled
        self.stream = stream
        self.done = 0
        self.done_cost = 0.0
        self.t0 = self.last = time.monotonic()

    def finished(self, i: int) -> None:
        self.done += 1
        self.done_cost += self.costs[i] if i < len(self.costs) else 0.0

    def eta(self, elapsed: float) -> float:
        total_cost = sum(self.costs)
        if self.done_cost > 0 and total_cost > 0:
            return elapsed * (total_cost - self.done_cost) / self.done_cost
        if self.estimate is not None:
            return max(self.estimate - elapsed, 0.0)
        return float("nan")

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        total_cost = sum(self.costs)
        share = f", {100 * self.done_cost / total_cost:.1f}% of the work" if total_cost > 0 else ""
        return (f"{self.prog}: progress: {self.done}/{self.total} matrices done{share}, "
                f"{format_duration(elapsed)} elapsed, ETA {format_duration(self.eta(elapsed))}")

    def tick(self) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            print(self.line(), file=self.stream or sys.stderr, flush=True)


#: Worker threads of sweeps the main thread left mid-computation (an interrupt, an error), and the
#: exit status their process ends with unless :func:`exit_process` is given another.
_ABANDONED: list[threading.Thread] = []
_ABANDONED_STATUS = [1]


def _abandon(worker: threading.Thread, exc: BaseException) -> None:
    # 130 as guarded_main answers Ctrl-C/SIGTERM; 2 for the user errors it reports (a full disk).
    status = 130 if isinstance(exc, KeyboardInterrupt) else 2 if isinstance(exc, (OSError, ValueError)) else 1
    if not _ABANDONED:
        atexit.register(_exit_if_abandoned)
    _ABANDONED.append(worker)
    _ABANDONED_STATUS[0] = status


def _exit_if_abandoned(status: int | None = None) -> None:
    """End the process now when a sweep worker is still computing.

    A thread cannot be stopped inside LAPACK, and letting the interpreter finalise around it is
    worse than waiting: the thread is killed when it next takes the GIL, which unwinds through
    torch's C++ frames and aborts the process (``terminate called without an active exception``,
    status -6) after the computation ends — minutes for a 7B matrix. Every row is already closed and
    the lock released when this runs, so flushing the standard streams and ``os._exit`` loses nothing.
    """
    if any(t.is_alive() for t in _ABANDONED):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(_ABANDONED_STATUS[0] if status is None else int(status))


def exit_process(status: int) -> None:
    """``sys.exit(status)`` for a command's ``__main__``, ending at once (``os._exit``) when a sweep
    worker was abandoned mid-computation (see :func:`_exit_if_abandoned`). Commands that call
    ``sys.exit`` instead still end promptly, through an ``atexit`` hook, with 130 after an interrupt."""
    _exit_if_abandoned(status)
    sys.exit(status)


def warn_skipped(prog: str, out: Path, count: int, examples: Sequence[tuple[str, str]], *, verb: str) -> None:
    """The warning line of a run that skipped ``count`` items (exit status stays 0): how many, where
    the reasons are, how to retry, and the first one with its reason when this process saw it."""
    if not count:
        return
    example = f"; first: {examples[0][0]}: {examples[0][1]}" if examples else ""
    print(f"{prog}: warning: {count} matrices could not be {verb} and were skipped (reasons in "
          f"{out}/skipped.csv; --resume --retry-skipped tries them again){example}", file=sys.stderr)
