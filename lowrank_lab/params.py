"""``python -m lowrank_lab.params``: trainable parameters of every adapter method, from shapes alone.

Reads the architecture from the model registry (:func:`lowrank_lab.weights.get_spec`: target
shapes per block, number of blocks, base parameter count), or from the ``config.json`` of a local
directory (nothing else need be there), and the closed forms from the adapter registry
(:data:`lowrank_lab.adapters.ADAPTERS`); no weights are read, so llama-70b costs nothing. Every
family of :mod:`lowrank_lab.weights.families` is counted: each expert of a mixture-of-experts block
is one target matrix (Mixtral: 8 a block), a fused projection is one matrix as an adapter sees it.
Prints a markdown table (or CSV with ``--csv``), one row per (method, rank), long format.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lowrank_lab.adapters import ADAPTERS, closed_form_trainable, get_adapter
from lowrank_lab.utils.files import atomic_write_text
from lowrank_lab.utils.tables import to_markdown
from lowrank_lab.weights import MODELS, ModelSpec, get_spec, select_modules
from lowrank_lab.weights.hf import read_config
from lowrank_lab.weights.registry import spec_from_hf_config

PROG = "python -m lowrank_lab.params"
COLUMNS = [
    "model", "method", "rank", "targets", "layers", "trainable", "pct_of_base", "base_parameters",
    "per_matrix", "trains",
]  # fmt: skip

EPILOG = f"""\
examples:
  # the NLoRA/PiSSA setting: r = 128 on all seven projections of Llama-2-7B (LoRA: 319,815,680)
  {PROG} --model llama-7b --rank 128

  # LoRA's original q,v targets at several ranks, as CSV for pandas
  {PROG} --model llama-7b --rank 8,16,64 --targets q_proj,v_proj --csv > params.csv

  # only the three-matrix methods on all-MiniLM-L6-v2, written to a file
  {PROG} --model minilm --rank 8 --methods slora,nlora,inttune,lora-xs --out minilm.md

  # any Hugging Face model from its config.json alone (a folder holding just that file is enough)
  {PROG} --model ./Qwen2.5-7B --rank 16 --targets q,v

known models: {", ".join(MODELS)}
methods: {", ".join(ADAPTERS)}
"""


def _ranks(text: str) -> list[int]:
    try:
        ranks = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--rank takes integers separated by commas, e.g. 8,128; got {text!r}"
        ) from None
    if not ranks or any(r < 1 for r in ranks):
        raise argparse.ArgumentTypeError(f"--rank values must be positive integers, got {text!r}")
    return ranks


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Trainable parameters of every adapter initialisation (LoRA, PiSSA, MiLoRA, LoRA-XS, NLoRA, "
            "IntTune, LoLDU, ...) on a registry model, in total and as %% of the base model, computed "
            "from the architecture alone (no weights are read)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default="llama-7b",
        help="registry name or its hub id (default llama-7b), e.g. minilm, llama-13b, qwen2.5-7b, "
        "mixtral-8x7b, meta-llama/Llama-2-7b-hf; or a local Hugging Face directory (only its config.json "
        "is read, so a folder holding just config.json is enough)",
    )
    parser.add_argument(
        "--rank",
        type=_ranks,
        default=[128],
        help="adapter rank r, or several separated by commas (default 128, the PiSSA/NLoRA setting)",
    )
    parser.add_argument(
        "--targets",
        default=None,
        help="target modules: canonical names, roles (q, k, v, o, gate, up, down, qkv, gate_up, "
        "router, expert_down...) or HF suffixes separated by commas, or all-linear "
        "(default: every target matrix of a block, e.g. the seven projections of a Llama)",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help=f"adapter methods separated by commas (default: all {len(ADAPTERS)} of them)",
    )
    parser.add_argument("--csv", action="store_true", help="print CSV (with a header) instead of markdown")
    parser.add_argument(
        "--out", type=Path, default=None, help="write the table to this file instead of stdout"
    )
    return parser


def _spec(model: str) -> ModelSpec:
    # A local HF directory: the architecture from its config.json, no weights read.
    config = Path(model) / "config.json"
    if config.is_file():  # read_config: a clear error for bad JSON or JSON that is not an object
        return spec_from_hf_config(read_config(Path(model)), name=Path(model).name, where=str(config))
    return get_spec(model)


def parameter_table(
    model: str = "llama-7b",
    ranks: Sequence[int] = (128,),
    targets: str | Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    try:
        table = parameter_table(args.model, args.rank, args.targets, methods)
    except ValueError as exc:  # unknown model, target or method: the message says what is valid
        parser.error(str(exc))
    if args.csv:
        text = table.to_csv(index=False)
    else:
        shown = table.drop(columns=["model", "targets", "layers", "base_parameters"]).copy()
        shown["trainable"] = shown["trainable"].map("{:,}".format)
        shown["pct_of_base"] = shown["pct_of_base"].map("{:.4f}".format)
        first = table.iloc[0]
        text = (
            f"Trainable parameters on {first.model} ({first.layers} layers, targets {first.targets}; "
            f"base model {first.base_parameters:,} parameters)\n\n" + to_markdown(shown)
        )
    if args.out is not None:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out, text)
        except OSError as exc:
            parser.error(f"--out {str(args.out)!r} cannot be written ({exc.strerror or exc})")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
