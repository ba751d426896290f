"""Writing into an output folder safely: atomic replacement, no symbolic links followed.

Every generated file (CSV, JSON, markdown, ``.npy``, PNG) is written to a uniquely named temporary
file beside its destination and moved into place with ``os.replace``, so a crash, a full disk or a
concurrent reader never sees half a file, and two writers never share a temporary name. A
destination that is a symbolic link is refused rather than followed: a link planted in ``--out``
would otherwise let a run overwrite its target (``os.replace`` itself replaces the link, not the
target, but a program that *appends* or *truncates* would write through it). Appends open with
``O_NOFOLLOW`` for the same reason.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class OutputDirError(ValueError):
    """An output directory or file cannot be created or written (one line, exit status 2)."""


class SymlinkError(OutputDirError):
    """A destination in an output folder is a symbolic link; it is not written through."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Permissions of a new file as ``open`` would give it (``mkstemp`` makes 0600).
_FILE_MODE = 0o666 & ~_umask()


def refuse_symlink(path: str | Path, option: str = "--out") -> Path:
    """Raise :class:`SymlinkError` when ``path`` is a symbolic link (dangling or not); return it."""
    path = Path(path)
    if path.is_symlink():
        raise SymlinkError(
            f"{path} is a symbolic link (to {os.readlink(path)!r}); lowrank_lab does not write through "
            f"links in {option}: remove the link or pass another {option}"
        )
    return path


#: ``(folder, topmost folder created with it)`` for every folder :func:`ensure_writable_dir` created in
#: this process, so a command that fails before it writes anything can take them away again
#: (:func:`remove_created_dirs`, called by :func:`lowrank_lab.utils.cli.guarded_main`).
_CREATED_DIRS: list[tuple[Path, Path]] = []


def ensure_writable_dir(path: str | Path, option: str = "--out") -> Path:
    """Create ``path`` if needed and prove it is writable, before any expensive work starts.

    A folder created here is remembered: :func:`remove_created_dirs` removes it again if the command
    then fails with nothing written into it (a failed start used to leave an empty ``--out``).
    """
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not (p.exists() or p.is_symlink())]
    try:
        path.mkdir(parents=True, exist_ok=True)
        if missing:
            _CREATED_DIRS.append((path, missing[-1]))
        # A unique probe: distributed ranks check the same directory at the same moment.
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputDirError(
            f"{option} {str(path)!r} is not a writable directory ({exc.strerror or exc}); "
            f"pass a different {option}"
        ) from None
    return path


def created_dirs_mark() -> int:
    """A mark for :func:`remove_created_dirs`: the folders created after it are the ones it removes."""
    return len(_CREATED_DIRS)


def remove_created_dirs(mark: int, *, keep: bool = False) -> list[Path]:
    """Forget the folders :func:`ensure_writable_dir` created since ``mark``; unless ``keep``, first
    remove each of them that is still empty, with the empty parents created along with it (a failed
    start: nothing of it is worth keeping). A folder holding anything (a row, a lock another process
    took, a file of the user's) stays, and so do its parents. Returns the folders removed."""
    created, _CREATED_DIRS[mark:] = _CREATED_DIRS[mark:], []
    removed: list[Path] = []
    for leaf, top in reversed(created) if not keep else ():
        for folder in [leaf, *leaf.parents]:
            try:
                if folder.is_symlink() or not folder.is_dir() or any(folder.iterdir()):
                    break
                folder.rmdir()
            except OSError:
                break
            removed.append(folder)
            if folder == top:
                break
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path, option: str = "--out") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; moved onto ``path`` when the block ends.

    The temporary name is unique (``mkstemp``) and keeps the suffix, so writers that choose a format
    by it (matplotlib, ``np.save``) behave as with the real name. On an exception the temporary file
    is removed and ``path`` is left as it was.
    """
    path = refuse_symlink(path, option)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    except OSError as exc:  # name the file meant, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, _FILE_MODE)
        yield tmp
        with open(tmp, "rb") as fh:  # durable before it takes the real name
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        # A full disk or I/O error on the temporary file: ``write`` and ``fsync`` raise it with no
        # file name at all ("[Errno 28] No space left on device"); name the file meant instead.
        if exc.errno is not None and exc.filename in (None, str(tmp), tmp):
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str, option: str = "--out") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`), as UTF-8 whatever the locale."""
    with atomic_path(path, option) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_frame(frame: Any, path: str | Path, option: str = "--out") -> Path:
    """``frame.to_csv(path, index=False)`` atomically (see :func:`atomic_path`): a pandas table that
    is rewritten whole (a study's selection.csv, forgetting.csv)."""
    with atomic_path(path, option) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


@contextlib.contextmanager
def update_lock(path: str | Path, option: str = "--out") -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``<path>.lock`` while a table is read, merged with new rows and
    rewritten (:func:`write_frame`): two processes updating one table (two streams of a study on one
    ``--out``, each with its own methods) then keep each other's rows, where a read-modify-write
    without it would let the later writer drop the rows the other added in between. Yields ``path``.
    The kernel drops the lock with its process, so a killed writer never leaves it held."""
    import fcntl

    path = refuse_symlink(path, option)
    lock = refuse_symlink(path.with_name(f".{path.name}.lock"), option)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, _FILE_MODE | 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def naming_path(path: str | Path) -> Iterator[None]:
    """Within the block, an ``OSError`` that names no file (``write``, ``flush`` and ``fsync`` on a
    full disk raise ``[Errno 28] No space left on device`` alone) is raised again naming ``path``,
    so the one-line error of :func:`lowrank_lab.utils.cli.guarded_main` says which file it was."""
    try:
        yield
    except OSError as exc:
        if exc.errno is not None and exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


class AppendFile:
    """A text file opened for appending whose write errors name it (:func:`naming_path`).

    What :func:`open_append` returns: ``write``, ``flush``, ``fileno``, ``close`` and :meth:`sync`
    as on a file object, enough for ``csv.writer``.
    """

    def __init__(self, fh: IO[str], path: Path) -> None:
        self._fh = fh
        self.path = path

    def write(self, text: str) -> int:
        with naming_path(self.path):
            return self._fh.write(text)

    def flush(self) -> None:
        with naming_path(self.path):
            self._fh.flush()

    def sync(self) -> None:
        """Flush and ``fsync``: on disk when this returns."""
        with naming_path(self.path):
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def fileno(self) -> int:
        return self._fh.fileno()

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def close(self) -> None:
        with naming_path(self.path):
            self._fh.close()

    def __enter__(self) -> AppendFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_append(path: str | Path, option: str = "--out") -> AppendFile:
    """``open(path, "a", newline="", encoding="utf-8")`` that refuses a symbolic link
    (``O_NOFOLLOW``) and names ``path`` in its write errors (:class:`AppendFile`)."""
    path = refuse_symlink(path, option)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, _FILE_MODE | 0o600)
    except OSError as exc:
        if path.is_symlink():  # created between the check and the open
            refuse_symlink(path, option)
        raise exc
    return AppendFile(os.fdopen(fd, "a", newline="", encoding="utf-8"), path)


class TextDecodeError(ValueError):
    """A text file that is not UTF-8 (one line naming the file and line, exit status 2)."""


def decode_text(raw: bytes, path: str | Path) -> str:
    """``raw`` as UTF-8 text, a leading byte-order mark dropped (``utf-8-sig``: Windows tools and the
    official GLUE MRPC files start with one, which would otherwise stick to the first column's name).

    Undecodable bytes raise :class:`TextDecodeError` naming ``path``, the line and the byte, where
    the codec's own message names neither file nor line.
    """
    body = raw[len(codecs.BOM_UTF8):] if raw.startswith(codecs.BOM_UTF8) else raw
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        raise TextDecodeError(
            f"{path}: line {line} is not UTF-8 text (byte 0x{body[exc.start]:02x}); repair the file "
            "or save it as UTF-8"
        ) from None


def read_text(path: str | Path) -> str:
    """The text of ``path`` as :func:`decode_text` reads it (UTF-8, a byte-order mark dropped, a
    bad byte named by line); line endings are kept as they are."""
    return decode_text(Path(path).read_bytes(), path)


def read_json_or_empty(path: str | Path) -> dict:
    """The JSON object in ``path`` as :func:`read_text` reads it, or ``{}`` when the file is missing
    or not JSON (optional side files of a study: baselines.json, untuned.json)."""
    import json

    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError:
        return {}


def read_text_nofollow(path: str | Path, option: str = "--out") -> str:
    """The text of ``path`` (:func:`decode_text`), refusing a symbolic link (a resumed file is read
    before it is changed)."""
    path = refuse_symlink(path, option)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        return decode_text(fh.read(), path)


def describe_os_error(exc: OSError) -> str:
    """One line naming the file and the cause of an ``OSError`` (full disk, read-only folder...)."""
    what = exc.strerror or " ".join(str(exc).split())
    if exc.filename is None:
        return what
    hint = {
        errno.ENOSPC: "free some space or pass another --out",
        errno.EROFS: "pass an --out on a writable file system",
        errno.EACCES: "check its permissions",
        errno.EPERM: "check its permissions",
    }.get(exc.errno)
    return f"{exc.filename}: {what}" + (f"; {hint}" if hint else "")
