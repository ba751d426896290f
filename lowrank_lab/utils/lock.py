"""One writer per output folder: a lock file that names its holder.

``analyze`` and ``intruders`` append rows to the files of ``--out`` for minutes to hours; a second
process on the same folder (a ``--resume`` started twice, a fresh run beside a running one) would
append duplicate rows or delete files the first still writes to. :class:`OutputLock` makes the
second one stop with a message naming the holder (pid, host, start time). A fine-tuning study
locks each run's folder while it trains that run (:mod:`lowrank_lab.training.study`), so processes
working on one study share its runs instead of training one twice into the same files.

Mechanism: ``<out>/.lowrank_lab.lock`` holds the holder's description as JSON and is locked with
``fcntl.flock`` for the life of the run. The kernel drops a flock when its process dies, so a lock
left by a killed run is free again: the next run takes it over and says so. Where ``flock`` is not
enforced (some network file systems), the description still protects a run on the same host: a
lock naming a live process of this host is never taken over. After locking, the file is checked to
be the one at the path (not one a finishing holder just unlinked), the usual flock-file pattern.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from lowrank_lab.utils.files import OutputDirError, refuse_symlink

LOCK_NAME = ".lowrank_lab.lock"


class OutputLockedError(OutputDirError):
    """Another live process holds the output folder (one line, exit status 2)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class OutputLock:
    """Exclusive use of ``directory`` by this process until :meth:`release` (or exit).

    Parameters
    ----------
    directory : path
        The output folder (created beforehand).
    command : str
        What holds it, shown to a refused process (e.g. ``"python -m lowrank_lab.analyze"``).
    option : str
        The option naming the folder, for messages.
    """

    def __init__(self, directory: str | Path, *, command: str = "", option: str = "--out") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.command = command
        self.option = option
        self._fd: int | None = None
        #: The holder this lock replaced (its process was gone), or None.
        self.took_over: dict[str, Any] | None = None

    # -- acquiring ------------------------------------------------------------------------------
    def acquire(self, *, wait: bool = False, poll: float = 5.0) -> OutputLock:
        """Take the lock or raise :class:`OutputLockedError` naming the holder; with ``wait``, try
        again every ``poll`` seconds until the holder lets go (or dies) instead."""
        while True:
            try:
                return self._acquire_once()
            except OutputLockedError:
                if not wait:
                    raise
            time.sleep(poll)

    def holder(self) -> dict[str, Any]:
        """The description the holder wrote (pid, host, started, command); {} when none can be read."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return {}
        try:
            return self._read(fd)
        finally:
            os.close(fd)

    def _acquire_once(self) -> OutputLock:
        for _ in range(5):  # retried only when a finishing holder unlinks the file under us
            refuse_symlink(self.path, self.option)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(fd)
                os.close(fd)
                raise OutputLockedError(self._refusal(holder)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = self._read(fd)
            pid = previous.get("pid")
            if previous.get("host") == socket.gethostname() and pid != os.getpid():
                if isinstance(pid, int) and _alive(pid):
                    # flock granted, yet the holder lives: a file system that does not enforce flock.
                    os.close(fd)
                    raise OutputLockedError(self._refusal(previous))
            if previous:  # a clean release removes the file: this one was left by a run that died
                self.took_over = previous
            self._fd = fd
            self._write(self._me())
            return self
        raise OutputLockedError(
            f"could not lock {self.path}: it keeps being replaced; is another run finishing?"
        )

    def note(self) -> str | None:
        """One line about a lock taken over from a run that is gone, or None."""
        if self.took_over is None:
            return None
        h = self.took_over
        return (f"note: took over the lock of {self.directory} left by pid {h.get('pid')} on "
                f"{h.get('host')} (started {h.get('started')}), which is no longer running")

    # -- releasing ------------------------------------------------------------------------------
    def release(self) -> None:
        """Drop the lock and remove the lock file (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: no one can lock the old inode
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self if self.held else self.acquire()  # held: taken by acquire() just before

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    # -- the description --------------------------------------------------------------------------
    def _me(self) -> dict[str, Any]:
        from lowrank_lab.utils.provenance import command_line  # shell-quoted, "-m lowrank_lab.<cli>"

        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": self.command or command_line(),
        }

    def _write(self, record: dict[str, Any]) -> None:
        assert self._fd is not None
        data = (json.dumps(record) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            raw = os.pread(fd, 1 << 16, 0)
            record = json.loads(raw.decode() or "{}")
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _refusal(self, holder: dict[str, Any]) -> str:
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
               f"{holder.get('started', '?')}") if holder else "another process"
        cmd = f" ({holder['command']})" if holder.get("command") else ""
        return (f"{self.option} {str(self.directory)!r} is in use by {who}{cmd}; wait for it to finish, "
                f"stop it, or pass another {self.option}")
