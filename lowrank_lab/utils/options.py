"""A command's options written once: a frozen dataclass whose fields carry default, help and reason.

The convention is Hugging Face PEFT's ``LoraConfig`` (each option a dataclass field,
``field(default=8, metadata={"help": ...})``, checks in ``__post_init__``) with the reason for each
default beside it, as scikit-learn's docstrings give one (``randomized_svd``: why
``n_oversamples=10``). From such a class this module builds the ``argparse`` parser
(:func:`build_parser`: every option's ``--help`` shows its default and its reason), turns the parsed
namespace into the config (:func:`from_args`, :func:`parse_config`), writes and reads it for
``run.json`` (:func:`to_dict`, :func:`from_dict`), compares it with a stored one for ``--resume``
(:func:`differences`, generalising :meth:`lowrank_lab.training.config.RunConfig.differences`) and
writes it back as the command line that makes it (:func:`to_argv`). Written for this project; no code
is taken from PEFT or scikit-learn.

:func:`option` writes such a field. Metadata keys of a field: ``help`` and ``why`` (required: what
the option does, why its default), ``flag`` (default ``--`` + the name with ``-`` for ``_``),
``type`` (text to value, argparse's ``type=``; a tuple-valued field's type returns the whole tuple
unless ``nargs`` is given), ``choices``, ``metavar``, ``nargs``, ``const`` (the value of a flag given
without one, with ``nargs="?"``), ``action`` (``"append"``: an option given several times, its values
a tuple in the order given), ``aliases`` (further flags of the option), ``group`` (options of one
group name exclude each other, argparse's mutually exclusive group), ``shown`` (the default as the
help names it, when its ``repr`` would not say it) and ``resume`` (False for an option that does not
change what a run computes, e.g. ``--threads`` or ``--resume`` itself: :func:`check_resume` lets it
differ). A ``bool`` field defaulting to False is a
``store_true`` flag; a field without a default is a required option.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

C = TypeVar("C")

_ARGPARSE_KEYS = ("type", "choices", "metavar", "nargs", "const")
_KEYS = frozenset(("flag", "shown", "resume", "action", "aliases", "group", *_ARGPARSE_KEYS))


def option(default: Any = dataclasses.MISSING, *, help: str, why: str, **extras: Any) -> Any:
    """One option of a config: ``field(default=default, metadata={"help": help, "why": why, ...})``,
    with ``extras`` among ``flag``, ``shown``, ``type``, ``choices``, ``metavar``, ``nargs``; no
    ``default`` makes a required option. A misspelt key is refused here, not silently ignored."""
    unknown = sorted(set(extras) - _KEYS)
    if unknown:
        raise TypeError(f"option(): unknown metadata {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}")
    return dataclasses.field(default=default, metadata={"help": help, "why": why, **extras})


class _Append(argparse.Action):
    """argparse's ``append`` for a frozen config: the values so far are a tuple (the default, ``()``
    or None, is never mutated), each use of the flag adds one."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None):
        setattr(namespace, self.dest, (*(getattr(namespace, self.dest) or ()), values))


class OptionParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``<prog>: error: <message>``, exit status 2),
    as every other user error of the project: the usage is in ``--help``, not repeated on each error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def flag(f: dataclasses.Field) -> str:
    """The command-line flag of field ``f`` (``--calibration-samples`` for ``calibration_samples``)."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a config class that are command-line options (all of them but ``init=False``)."""
    return [f for f in dataclasses.fields(cls) if f.init]


def _shown(f: dataclasses.Field) -> str:
    if "shown" in f.metadata:
        return str(f.metadata["shown"])
    value = f.default
    if value is False:
        return "off"
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def build_parser(
    cls: type, prog: str, description: str, epilog: str = "", **kwargs: Any
) -> argparse.ArgumentParser:
    """The argparse parser of config class ``cls``: one option per field, its default the field's,
    its help ``<help> (default: <default>; <why>)`` (``required`` for a field without a default)."""
    parser = OptionParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )
    groups: dict[str, Any] = {}
    for f in option_fields(cls):
        meta = f.metadata
        if "help" not in meta or "why" not in meta:
            raise TypeError(f"{cls.__name__}.{f.name}: an option needs metadata 'help' and 'why'")
        extras = {k: meta[k] for k in _ARGPARSE_KEYS if k in meta}
        if meta.get("action") == "append":
            extras["action"] = _Append
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        when = "required" if required else f"default: {_shown(f)}"
        text = f"{meta['help']} ({when}; {meta['why']})".replace("%", "%%")
        where = parser
        if "group" in meta:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group()
            where = groups[meta["group"]]
        flags = (flag(f), *meta.get("aliases", ()))
        if f.default is False:
            where.add_argument(*flags, dest=f.name, action="store_true", help=text)
        elif required:
            where.add_argument(*flags, dest=f.name, required=True, help=text, **extras)
        else:
            where.add_argument(*flags, dest=f.name, default=f.default, help=text, **extras)
    return parser


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def from_args(cls: type[C], namespace: argparse.Namespace) -> C:
    """The config of a parsed namespace (lists become tuples: a frozen config holds no mutable value);
    the class's ``__post_init__`` checks it and raises ValueError naming the option at fault."""
    return cls(**{f.name: _frozen(getattr(namespace, f.name)) for f in option_fields(cls)})


def parse_config(cls: type[C], parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> C:
    """``argv`` parsed into a config; a value its checks refuse ends the command as argparse's own
    errors do (one line naming the option, exit status 2)."""
    namespace = parser.parse_args(argv)
    try:
        return from_args(cls, namespace)
    except ValueError as exc:
        parser.error(str(exc))


def _plain(value: Any) -> Any:
    """A value as JSON holds it: tuples as lists, paths as text."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """The config as a JSON-ready dict (for run.json), one key per field."""
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def from_dict(cls: type[C], stored: dict[str, Any]) -> C:
    """The config a :func:`to_dict` record describes; keys the class no longer has are ignored, fields
    the record lacks take their defaults (a record written before the field existed)."""
    names = {f.name for f in option_fields(cls)}
    return cls(**{k: _frozen(v) for k, v in stored.items() if k in names})


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def differences(config: Any, stored: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields whose value in ``stored`` (a :func:`to_dict` record) differs from ``config``'s, as
    ``{name: (stored, current)}`` in JSON form; a field ``stored`` lacks counts as its default."""
    mine = to_dict(config)
    changed = {}
    for f in dataclasses.fields(config):
        before = _plain(stored.get(f.name, _default(f)))
        if before != mine[f.name]:
            changed[f.name] = (before, mine[f.name])
    return changed


def describe_differences(changed: dict[str, tuple[Any, Any]], cls: type) -> str:
    """``--rank 8 (stored 16), --seed 1 (stored 0)``: the options of :func:`differences`, by flag."""
    flags = {f.name: flag(f) for f in dataclasses.fields(cls)}
    return ", ".join(f"{flags.get(k, k)} {now} (stored {was})" for k, (was, now) in changed.items())


def check_resume(config: Any, run_json: str | Path, *, key: str = "config") -> None:
    """Refuse to resume into a folder whose ``run.json`` was written with other options.

    ``run_json``'s ``key`` entry (the :func:`to_dict` record a command writes) is compared with
    ``config`` by :func:`differences`, fields whose metadata says ``resume=False`` left out; any
    difference raises ValueError naming each option by flag with its stored and current value. A
    missing ``run.json`` (nothing to resume) passes; one that cannot be read or parsed is refused,
    named, rather than guessed at.
    """
    import json

    from lowrank_lab.utils.files import read_text

    path = Path(run_json)
    if not path.exists():
        return
    try:
        stored = json.loads(read_text(path))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot resume from {path}: it cannot be read ({exc}); use a new --out") from None
    record = stored.get(key) if isinstance(stored, dict) else None
    if not isinstance(record, dict):
        raise ValueError(f"cannot resume from {path}: it holds no {key!r} record; use a new --out")
    ignored = {f.name for f in dataclasses.fields(config) if f.metadata.get("resume") is False}
    changed = {k: v for k, v in differences(config, record).items() if k not in ignored}
    if changed:
        raise ValueError(
            f"cannot resume in {path.parent}: options differ from the stored run "
            f"({describe_differences(changed, type(config))}); "
            "rerun with the stored options or use a new --out"
        )


def to_argv(config: Any) -> list[str]:
    """The command-line arguments that make ``config``: every field not at its default, in field
    order (a required one always), as text; a sequence without ``nargs`` is written comma-separated,
    an ``append`` option's values one flag each."""
    argv: list[str] = []
    for f in option_fields(type(config)):
        value = getattr(config, f.name)
        if f.default is not dataclasses.MISSING and _plain(value) == _plain(f.default):
            continue
        if value is True and f.default is False:
            argv.append(flag(f))
        elif f.metadata.get("action") == "append":  # the flag once per value; the bare flag for const
            for v in value or ():
                argv += [flag(f)] if "const" in f.metadata and v == f.metadata["const"] else [flag(f), str(v)]
        elif isinstance(value, (tuple, list)):
            items = [str(_plain(v)) for v in value]
            argv += [flag(f), *items] if "nargs" in f.metadata else [flag(f), ",".join(items)]
        else:
            argv += [flag(f), str(_plain(value))]
    return argv


def argv_of(argv: Sequence[str] | None) -> list[str]:
    """The arguments a command was given: ``argv`` when called in-process, else ``sys.argv[1:]``."""
    return list(sys.argv[1:] if argv is None else argv)
