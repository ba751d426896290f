"""``python -m lowrank_lab.params``: trainable parameters of every adapter method, from shapes alone.

The command line of :mod:`lowrank_lab.analysis.params`: argv becomes a
:class:`~lowrank_lab.analysis.params.ParamsConfig` (its parser generated from the config's fields,
:mod:`lowrank_lab.utils.options`), :func:`~lowrank_lab.analysis.params.run` makes the table, and the
table is printed as markdown (or CSV with ``--csv``), one row per (method, rank), long format.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lowrank_lab.adapters import ADAPTERS
from lowrank_lab.analysis.params import COLUMNS, ParamsConfig, parameter_table, run
from lowrank_lab.utils import options
from lowrank_lab.utils.cli import guarded_main
from lowrank_lab.weights import MODELS

__all__ = ["COLUMNS", "PROG", "build_parser", "main", "parameter_table"]

PROG = "python -m lowrank_lab.params"
DESCRIPTION = (
    "Trainable parameters of every adapter initialisation (LoRA, PiSSA, MiLoRA, LoRA-XS, NLoRA, "
    "IntTune, LoLDU, ...) on a registry model, in total and as % of the base model, computed "
    "from the architecture alone (no weights are read)."
)
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


def build_parser() -> argparse.ArgumentParser:
    return options.build_parser(ParamsConfig, PROG, DESCRIPTION, EPILOG)


def main(argv: Sequence[str] | None = None) -> int:
    config = options.parse_config(ParamsConfig, build_parser(), argv)

    def body() -> int:
        result = run(config)
        if result.path is None:
            sys.stdout.write(result.text)
        return 0

    status = guarded_main(PROG, body)
    if status:  # params has always ended a user error as argparse does, by SystemExit(2)
        raise SystemExit(status)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
