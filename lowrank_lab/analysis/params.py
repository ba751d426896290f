"""Trainable parameters of every adapter method on a model, from shapes alone (``params``' library side).

Reads the architecture from the model registry (:func:`lowrank_lab.weights.get_spec`: target
shapes per block, number of blocks, base parameter count), or from the ``config.json`` of a local
directory (nothing else need be there), and the closed forms from the adapter registry
(:data:`lowrank_lab.adapters.ADAPTERS`); no weights are read, so llama-70b costs nothing. Every
family of :mod:`lowrank_lab.weights.families` is counted: each expert of a mixture-of-experts block
is one target matrix (Mixtral: 8 a block), a fused projection is one matrix as an adapter sees it.
:class:`ParamsConfig` holds the options (each default with its reason), :func:`run` makes the table
``python -m lowrank_lab.params`` prints.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lowrank_lab.adapters import ADAPTERS, closed_form_trainable, get_adapter
from lowrank_lab.utils.cli import csv_list
from lowrank_lab.utils.files import atomic_write_text
from lowrank_lab.utils.options import option
from lowrank_lab.utils.tables import to_markdown
from lowrank_lab.weights import ModelSpec, get_spec, select_modules
from lowrank_lab.weights.hf import read_config
from lowrank_lab.weights.registry import spec_from_hf_config

COLUMNS = [
    "model", "method", "rank", "targets", "layers", "trainable", "pct_of_base", "base_parameters",
    "per_matrix", "trains",
]  # fmt: skip


def _ranks(text: str) -> tuple[int, ...]:
    try:
        ranks = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--rank takes integers separated by commas, e.g. 8,128; got {text!r}"
        ) from None
    if not ranks or any(r < 1 for r in ranks):
        raise argparse.ArgumentTypeError(f"--rank values must be positive integers, got {text!r}")
    return ranks


def _names(text: str) -> tuple[str, ...]:
    return tuple(csv_list(text))


@dataclass(frozen=True)
class ParamsConfig:
    """The options of ``python -m lowrank_lab.params``, each default written here only."""

    model: str = option(
        "llama-7b",
        help="registry name or its hub id, e.g. minilm, llama-13b, qwen2.5-7b, mixtral-8x7b, "
        "meta-llama/Llama-2-7b-hf; or a local Hugging Face directory (only its config.json is read, so "
        "a folder holding just config.json is enough)",
        why="Llama-2-7B, the model whose counts the PiSSA and NLoRA papers publish",
    )
    rank: tuple[int, ...] = option(
        (128,), help="adapter rank r, or several separated by commas", why="the PiSSA/NLoRA setting",
        type=_ranks, metavar="RANK",
    )  # fmt: skip
    targets: str | None = option(
        None,
        help="target modules: canonical names, roles (q, k, v, o, gate, up, down, qkv, gate_up, router, "
        "expert_down...) or HF suffixes separated by commas, or all-linear",
        why="what PiSSA and NLoRA count, e.g. the seven projections of a Llama",
        shown="every target matrix of a block",
    )
    methods: tuple[str, ...] | None = option(
        None, help="adapter methods separated by commas", why="one table compares every initialisation",
        shown=f"all {len(ADAPTERS)} of them", type=_names, metavar="METHODS",
    )  # fmt: skip
    csv: bool = option(
        False, help="print CSV (with a header) instead of markdown",
        why="markdown reads on a terminal; CSV is for pandas",
    )  # fmt: skip
    out: Path | None = option(
        None, help="write the table to this file instead of stdout",
        why="a pipe or a redirect takes the table from there", shown="stdout", type=Path,
    )  # fmt: skip

    def __post_init__(self) -> None:
        if not self.rank or any(not isinstance(r, int) or r < 1 for r in self.rank):
            raise ValueError(f"--rank values must be positive integers, got {list(self.rank)}")
        if not self.model:
            raise ValueError("--model must name a model, e.g. --model llama-7b")


@dataclass(frozen=True)
class ParamsResult:
    """What :func:`run` made: the table, its text as printed, and the file written (or None)."""

    table: pd.DataFrame
    text: str
    path: Path | None


def _spec(model: str) -> ModelSpec:
    # A local HF directory: the architecture from its config.json, no weights read.
    config = Path(model) / "config.json"
    if config.is_file():  # read_config: a clear error for bad JSON or JSON that is not an object
        return spec_from_hf_config(read_config(Path(model)), name=Path(model).name, where=str(config))
    return get_spec(model)


def parameter_table(
    model: str = ParamsConfig.model,
    ranks: Sequence[int] = ParamsConfig.rank,
    targets: str | Sequence[str] | None = ParamsConfig.targets,
    methods: Sequence[str] | None = ParamsConfig.methods,
) -> pd.DataFrame:
    """The table the CLI prints, as a DataFrame (one row per method and rank)."""
    spec = _spec(model)
    modules = select_modules(spec.family, targets)
    # Every target matrix of the model as (shape, how many): per block (T5's decoder may be deeper),
    # per expert. Counted, never listed one by one: a config.json claiming 10^9 layers or 10^8
    # experts would otherwise build that many entries (a MemoryError, or minutes) before any check.
    matrices = []
    for name in modules:
        mod = spec.family_info.module(name)
        per_layer = spec.num_experts if mod.experts else 1
        matrices.append((mod.shape(spec), spec.module_layers(name) * per_layer))
    smallest = min(min(shape) for shape, _ in matrices)
    too_big = [r for r in ranks if r > smallest]
    if too_big:  # what finetune's injection refuses (a rank-r factor of an m x n matrix needs r <= min(m, n))
        raise ValueError(
            f"--rank {too_big[0]} is above the smallest target dimension {smallest} of {spec.name} "
            f"(targets {','.join(modules)}); use a rank <= {smallest}"
        )
    base = spec.num_parameters()
    rows = []
    for name in methods or list(ADAPTERS):
        am = get_adapter(name)
        for r in ranks:
            trainable = sum(closed_form_trainable(am, [shape], r, repeat=n) for shape, n in matrices)
            rows.append({
                "model": spec.name,
                "method": am.name,
                "rank": r,
                "targets": ",".join(modules),
                "layers": spec.num_layers,
                "trainable": trainable,
                "pct_of_base": 100.0 * trainable / base,
                "base_parameters": base,
                "per_matrix": am.closed_form,
                "trains": "+".join(p for p in ("A", "M", "B", "W") if p in am.trains),
            })  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def render(table: pd.DataFrame, csv: bool = False) -> str:
    """The table as ``params`` prints it: CSV with a header, or markdown under a line naming the setting."""
    if csv:
        return table.to_csv(index=False)
    shown = table.drop(columns=["model", "targets", "layers", "base_parameters"]).copy()
    shown["trainable"] = shown["trainable"].map("{:,}".format)
    shown["pct_of_base"] = shown["pct_of_base"].map("{:.4f}".format)
    first = table.iloc[0]
    return (
        f"Trainable parameters on {first.model} ({first.layers} layers, targets {first.targets}; "
        f"base model {first.base_parameters:,} parameters)\n\n" + to_markdown(shown)
    )


def run(config: ParamsConfig, out: str | Path | None = None) -> ParamsResult:
    """The parameter table of ``config``, written to ``out`` (else ``config.out``) when one is named.

    Raises ValueError for an unknown model, target or method (the message says what is valid), a
    rank above a target's smaller side, or an ``--out`` that cannot be written.
    """
    table = parameter_table(config.model, config.rank, config.targets, config.methods)
    text = render(table, config.csv)
    path = Path(out) if out is not None else config.out
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
        except OSError as exc:
            raise ValueError(f"--out {str(path)!r} cannot be written ({exc.strerror or exc})") from None
    return ParamsResult(table, text, path)
