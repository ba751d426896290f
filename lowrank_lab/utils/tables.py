"""CSV rows that survive interruption, output-directory checks, and dependency-free table rendering."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lowrank_lab.utils.files import (  # noqa: F401 - ensure_writable_dir/OutputDirError are used from here
    OutputDirError,
    atomic_write_text,
    ensure_writable_dir,
    open_append,
    read_text_nofollow,
    update_lock,
    write_frame,
)


class RowWriter:
    """Append rows to a CSV file one at a time, flushed and fsynced, so an interrupted run leaves a
    valid file (every complete line is a complete row).

    With ``resume=True`` an existing file is kept: its header is checked against ``columns`` first
    (a file of another layout is refused before anything in it changes), a torn last line (from a
    kill mid-write) is dropped, and :meth:`done` tells whether a key was already written. Without it
    the file is started afresh. A symbolic link at ``path`` is refused, never written through
    (:mod:`lowrank_lab.utils.files`).
    """

    def __init__(
        self, path: str | Path, columns: Sequence[str], key_columns: Sequence[str], *, resume: bool = False
    ) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.key_columns = list(key_columns)
        unknown = [k for k in self.key_columns if k not in self.columns]
        if unknown:
            raise ValueError(f"key columns {unknown} are not among the columns {self.columns}")
        self._done: set[tuple[str, ...]] = set()
        if resume and (self.path.is_symlink() or self.path.exists()) and self._load_existing():
            self._fh = open_append(self.path)
        else:
            header = io.StringIO(newline="")
            csv.writer(header).writerow(self.columns)
            atomic_write_text(self.path, header.getvalue())
            self._fh = open_append(self.path)
        self._writer = csv.DictWriter(self._fh, fieldnames=self.columns, extrasaction="raise")

    def _load_existing(self) -> bool:
        """Read the rows of the file being resumed; False when it holds not even a header."""
        text = read_text_nofollow(self.path)
        if "\n" not in text:  # empty, or a header torn mid-write: nothing to keep
            return False
        self._done = keys_of_text(text, self.key_columns, columns=self.columns, path=self.path)
        if not text.endswith("\n"):  # torn last line from an interrupted write; header checked above
            atomic_write_text(self.path, text[: text.rfind("\n") + 1])
        return True

    def _key(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(key_text(row[k]) for k in self.key_columns)

    def done(self, key: Mapping[str, Any] | Sequence[Any]) -> bool:
        """Whether a row with these key values is already in the file."""
        if isinstance(key, Mapping):
            return self._key(key) in self._done
        return tuple(key_text(k) for k in key) in self._done

    @property
    def n_done(self) -> int:
        return len(self._done)

    def write(self, row: Mapping[str, Any], *, sync: bool = True) -> None:
        """Append one row; with ``sync`` (the default) it is on disk when this returns."""
        self._writer.writerow({k: row.get(k) for k in self.columns})
        if sync:
            self._sync()
        self._done.add(self._key(row))

    def write_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows and sync once: an fsync per row cost 1.6 s of a 10 s MiniLM intruders run."""
        for row in rows:
            self.write(row, sync=False)
        self._sync()

    def _sync(self) -> None:
        self._fh.sync()  # a full disk names this file (files.AppendFile)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_keys(
    path: str | Path, key_columns: Sequence[str], *, columns: Sequence[str] | None = None
) -> set[tuple[str, ...]]:
    """The key tuples (as text, as :meth:`RowWriter.done` compares them) of the complete rows of a
    CSV file, without opening it for writing; an absent or empty file has none.

    ``columns``, when given, must equal the file's header (else ValueError: resuming into a file
    of another layout would mix rows).
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return set()
    return keys_of_text(read_text_nofollow(path), key_columns, columns=columns, path=path)


def keys_of_text(
    text: str,
    key_columns: Sequence[str],
    *,
    columns: Sequence[str] | None = None,
    path: str | Path = "the file",
) -> set[tuple[str, ...]]:
    """:func:`read_keys` on the text of a CSV file (a torn last line is not a row).

    Every row is checked by :func:`complete_rows`: a file that cannot be parsed, or holds a row of
    another width, is refused (ValueError naming the file and line) instead of read in part.
    """
    header, rows = complete_rows(text, columns=columns, path=path)
    if not header:
        return set()
    missing = [k for k in key_columns if k not in header]
    if missing:
        raise ValueError(f"cannot read the rows of {path}: its header lacks the key columns {missing}")
    where = [header.index(k) for k in key_columns]
    return {tuple(row[i] for i in where) for _, row in rows}


def complete_rows(
    text: str, *, columns: Sequence[str] | None = None, path: str | Path = "the file"
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the complete rows (with the line each starts on) of the text of a CSV file.

    The rows this package appends (:class:`RowWriter`) end with a newline, so a last line without
    one is a row torn by a kill mid-write and is left out. Everything else must parse: an unclosed
    or stray quote (``csv`` strict mode) or a row with more or fewer fields than the header raises
    ValueError naming ``path`` and the line. ``--resume`` reads its tables through here before it
    computes or appends anything, so a damaged file stops the run instead of being read only up to
    the damage (which made resume compute and append the unread rows again on every try). Blank
    lines are skipped, as ``csv.DictReader`` and pandas skip them. ``columns``, when given, must
    equal the header.
    """
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a torn last row is not a row (and no newline: no header)
    if not text:
        return [], []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    start = 1
    try:
        for record in reader:
            if header is None:
                header = record
                if columns is not None and header != list(columns):
                    raise ValueError(
                        f"cannot resume {path}: its columns {header} differ from {list(columns)}; "
                        "use a new --out or delete the file"
                    )
            elif record and len(record) != len(header):
                raise _bad_line(path, start, f"has {len(record)} fields where the header has {len(header)}")
            elif record:
                rows.append((start, record))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise _bad_line(path, start, f"cannot be parsed as CSV ({exc}; an unclosed quote?)") from None
    return header or [], rows


def _bad_line(path: str | Path, line: int, problem: str) -> ValueError:
    return ValueError(
        f"cannot read the rows of {path}: line {line} {problem}; repair or delete that line, or use a "
        "new --out"
    )


def update_table(path: str | Path, new: pd.DataFrame, key: Sequence[str]) -> pd.DataFrame:
    """Merge the rows of ``new`` into the CSV table at ``path`` and return the table written: the
    file's rows whose ``key`` (compared as text) is not among ``new``'s stay, first, then ``new``'s;
    a file with other columns is replaced. Read, merge and the atomic rewrite happen under
    :func:`~lowrank_lab.utils.files.update_lock`, so processes updating one table (the streams of a
    study: selection.csv, forgetting.csv) keep each other's rows."""
    with update_lock(path) as path:
        frame = new
        if path.is_file():
            old = pd.read_csv(path)
            if list(old.columns) == list(new.columns):
                seen = set(map(tuple, new[list(key)].astype(str).values))
                keep = old[[tuple(k) not in seen for k in old[list(key)].astype(str).values]]
                if len(keep):
                    frame = pd.concat([keep, new], ignore_index=True)
        write_frame(frame, path)
    return frame


def key_text(value: Any) -> str:
    """A key value as the text a CSV file gives back (``3.0`` -> ``"3"``, None -> ``""``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def row_order(*levels: tuple[str, Sequence[Any] | None]) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The row order of a single-process run, as ``DataFrame -> DataFrame`` (the ``order`` of
    :class:`~lowrank_lab.utils.sweep.Sweep`, which merges a distributed run's part files with it).

    Each level is ``(column, values)``: rows sort by the position of their cell among ``values``
    (compared as text, :func:`key_text`, since the part files are read as text), or, with ``values``
    None, by the cell as an integer (a rank 1..k). A level whose column a table lacks is left out
    (a skipped.csv with one row per matrix sorts by its first level only). The sort is stable; a
    cell not among ``values`` goes last. ``row_order(("tensor", names), ("side", sides), ("rank",
    None))`` is intruders.csv's order: matrix in model order, then side, then rank.
    """
    positions = [(column, None if values is None else {key_text(v): i for i, v in enumerate(values)})
                 for column, values in levels]

    def order(df: pd.DataFrame) -> pd.DataFrame:
        keys = {}
        for i, (column, where) in enumerate(positions):
            if column in df:
                cells = df[column]
                keys[f"_order{i}"] = cells.astype(int) if where is None else cells.astype(str).map(where)
        if not keys:
            return df
        keyed = df.assign(**keys)
        return keyed.sort_values(list(keys), kind="stable").drop(columns=list(keys))

    return order


def _cell(value: Any, floatfmt: str) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return format(value, floatfmt)
    return str(value)


def to_markdown(df: pd.DataFrame, *, floatfmt: str = ".4g", index: bool = False) -> str:
    """A GitHub-flavoured markdown table (pandas' own needs the optional ``tabulate``)."""
    frame = df.reset_index() if index else df
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, floatfmt) for v in row) + " |")
    return "\n".join(lines) + "\n"


def to_latex(df: pd.DataFrame, *, floatfmt: str = ".4g", caption: str | None = None) -> str:
    """A booktabs tabular (no jinja2 needed, unlike ``DataFrame.to_latex``)."""

    def esc(s: str) -> str:
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
            s = s.replace(a, b)
        return s

    cols = [esc(str(c)) for c in df.columns]
    out = [r"\begin{table}[ht]", r"\centering", r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule"]
    out.append(" & ".join(cols) + r" \\")
    out.append(r"\midrule")
    for row in df.itertuples(index=False):
        out.append(" & ".join(esc(_cell(v, floatfmt)) for v in row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        out.append(r"\caption{" + esc(caption) + "}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"
