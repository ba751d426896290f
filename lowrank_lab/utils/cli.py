"""Argument types shared by the command-line entry points (``analyze``, ``intruders``, ``finetune``).

Each returns a parser for ``argparse``'s ``type=``: it converts the text or raises
``argparse.ArgumentTypeError`` with a message that says what was expected and what was given, so
every CLI rejects a bad number the same way (argparse then exits with status 2, prefixing the
option's name: ``argument --rank: must be > 0, got '0'``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

#: Largest seed: torch.Generator.manual_seed takes a 64-bit integer; numpy and the CSV columns
#: hold it as a signed int64, so the range is 0 .. 2**63 - 1.
MAX_SEED = 2**63 - 1


def csv_list(text: str) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``: comma-separated items, blanks dropped."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _convert(kind: type, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None


def positive(kind: type = int) -> Callable[[str], int | float]:
    """A number of type ``kind`` (int or float) that must be > 0."""

    def parse(text: str):
        value = _convert(kind, text)
        if not value > 0:  # also rejects a float NaN
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def nonnegative_int(text: str) -> int:
    """An integer that must be >= 0 (0 usually meaning "none" or "all", as the option's help says)."""
    value = _convert(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number that must be >= 0."""
    value = _convert(float, text)
    if not 0 <= value < float("inf"):  # also rejects NaN and inf
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def seed(text: str) -> int:
    """A random seed in ``0 .. 2**63 - 1`` (:data:`MAX_SEED`); a larger one would wrap or fail in torch."""
    value = _convert(int, text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0 .. 2**63-1 ({MAX_SEED}), got {text!r}")
    return value


def unit_interval(option: str, why: str = "") -> Callable[[str], float]:
    """A float in (0, 1]; the message names ``option`` and, when given, ``why`` the range is so."""
    reason = f" ({why})" if why else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a number in (0, 1], got {text!r}") from None
        if not 0.0 < value <= 1.0:
            raise argparse.ArgumentTypeError(f"{option} must be in (0, 1]{reason}, got {value}")
        return value

    return parse


def quiet_transformers() -> None:
    """Silence transformers' own bars and reports ("Loading weights", "Writing model shards", the
    expected "classifier MISSING" note for a new head), which would interleave with a command's
    progress bars and output. Without transformers' logging API it does nothing."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt, as Ctrl-C does.

    Batch schedulers (SLURM, Kubernetes) and ``timeout`` stop a job with SIGTERM, whose default
    action ends the process on the spot. The entry points already save their work on
    KeyboardInterrupt (rows flushed, a fine-tuning checkpoint), so routing SIGTERM there lets a
    killed job resume with ``--resume``. Outside the main thread (where signal handlers cannot be
    set) it does nothing; the previous handler comes back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def user_error_message(exc: BaseException) -> str:
    """One line for an error the user can cause: an OSError names its file and cause (full disk,
    read-only folder, unreadable checkpoint), anything else is its message with newlines folded."""
    from lowrank_lab.utils.files import describe_os_error

    if isinstance(exc, OSError) and exc.filename is not None:
        return describe_os_error(exc)
    return " ".join(str(exc).split()) or type(exc).__name__


def guarded_main(
    prog: str,
    body: Callable[[], int],
    *,
    interrupted: str | Callable[[KeyboardInterrupt], str] = "",
) -> int:
    """Run a command's body; its user errors become one line on stderr and exit status 2.

    ``ValueError`` (bad options, bad files: every error class of the package that a user can cause
    derives from it) and ``OSError`` (missing or unreadable files, a full disk, a read-only
    folder) print ``<prog>: error: <message>`` with no traceback and return 2; Ctrl-C or SIGTERM
    (:func:`sigterm_as_interrupt`) prints ``interrupted`` (a string, or a function of the interrupt
    that says where the work stopped and how to resume it) and returns 130. A reader of stdout that
    left (``... --status | head``) stops the command quietly with 141 (128 + SIGPIPE), as Unix tools
    do, instead of an "error: Broken pipe". Anything else is a bug and keeps its traceback.

    A run that stops with 2 or 130 removes the output folders it created
    (:func:`~lowrank_lab.utils.files.ensure_writable_dir`) if they are still empty: a failed start
    leaves no empty ``--out`` behind; a folder holding anything is kept.
    """
    from lowrank_lab.utils.files import created_dirs_mark, remove_created_dirs

    mark = created_dirs_mark()
    status = 1
    try:
        with sigterm_as_interrupt():
            status = body()
            return status
    except KeyboardInterrupt as exc:
        how = interrupted(exc) if callable(interrupted) else interrupted
        print(f"\n{prog}: interrupted" + (f"; {how}" if how else ""), file=sys.stderr)
        status = 130
        return status
    except BrokenPipeError:
        # nobody reads stdout any more: point it at /dev/null so the flush at exit cannot fail again
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (ValueError, OSError) as exc:
        print(f"{prog}: error: {user_error_message(exc)}", file=sys.stderr)
        status = 2
        return status
    finally:
        remove_created_dirs(mark, keep=status not in (2, 130))
