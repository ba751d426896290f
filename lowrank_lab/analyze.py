"""``python -m lowrank_lab.analyze``: approximation error, init time and spectra of a model's weights.

The command line of :mod:`lowrank_lab.analysis.analyze_run`: argv becomes an
:class:`~lowrank_lab.analysis.analyze_run.AnalyzeConfig` (its parser generated from the config's
fields, :mod:`lowrank_lab.utils.options`), :func:`~lowrank_lab.analysis.analyze_run.run` factors every
target matrix at every rank and writes the tables, summaries, run.json and figures, and errors become
one line and exit status 2 (:func:`lowrank_lab.utils.cli.guarded_main`); Ctrl-C or SIGTERM stops with
130, the finished rows kept for ``--resume``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lowrank_lab.analysis.analyze_run import (
    DTYPES,
    LARGE_EXCLUDED_METHODS,
    LARGE_RANKS,
    PROG,
    SMALL_HIDDEN,
    SMALL_RANKS,
    AnalyzeConfig,
    AnalyzeResult,
    MatrixWork,
    load_singular_values,
    make_figures,
    run,
)
from lowrank_lab.analysis.factorization_cost import CostModel, matrix_cost
from lowrank_lab.utils import options
from lowrank_lab.utils.cli import guarded_main
from lowrank_lab.utils.sweep import exit_process, warn_skipped

# What other modules (notebook_support, benchmarks/distributed.py) import from here.
__all__ = [
    "DTYPES", "LARGE_EXCLUDED_METHODS", "LARGE_RANKS", "PROG", "SMALL_HIDDEN", "SMALL_RANKS",
    "AnalyzeConfig", "AnalyzeResult", "CostModel", "MatrixWork", "build_parser", "load_singular_values",
    "main", "make_figures", "matrix_cost", "report", "run",
]  # fmt: skip

DESCRIPTION = (
    "Factor every target weight matrix of a model with every requested method and rank; "
    "measure the error against the Eckart–Young optimum (err_ratio), the init time, and the "
    "spectrum of each matrix (norms, stable/effective/numerical rank, WeightWatcher alpha)."
)

EPILOG = """\
examples:
  # the default: every method at ranks 8,32,64 on the real all-MiniLM-L6-v2 (36 matrices, < 2 min on 2 cores),
  # into runs/minilm and runs/minilm/figures (ignored by git)
  python -m lowrank_lab.analyze

  # what a run would do and cost on this machine, computing nothing (matrices, methods, ranks, time)
  python -m lowrank_lab.analyze --model llama-7b --synthetic --plan

  # a quick look at one layer, two methods
  python -m lowrank_lab.analyze --layers 0 --ranks 4,8 --methods svd,rsvd --out /tmp/minilm-l0

  # all 224 projections of a llama-7b-shaped model with power-law spectra (no download needed;
  # 13.5 min on 2 quiet cores, about 1 h on a shared machine: --plan first)
  python -m lowrank_lab.analyze --model llama-7b --synthetic --ranks 128 --methods rsvd,nystrom,ldu

  # real Llama weights on a GPU, bf16, attention only, first four layers
  python -m lowrank_lab.analyze --model meta-llama/Llama-2-7b-hf --device cuda --dtype bfloat16 \\
      --targets q_proj,k_proj,v_proj,o_proj --layers 0-3

  # finish an interrupted run (same options plus --resume)
  python -m lowrank_lab.analyze --model llama-7b --synthetic --ranks 128 --resume

outputs (in --out): factorization.csv, spectra.csv, skipped.csv, singular_values/, summary.md,
summary.tex, run.json; figures (in --figures): spectra.png, error_ratio.png, init_time.png.
"""



def build_parser() -> argparse.ArgumentParser:
    return options.build_parser(AnalyzeConfig, PROG, DESCRIPTION, EPILOG)


def report(result: AnalyzeResult) -> None:
    """What the command prints of a run: the plan, or one line of counts and a warning for each
    skipped matrix (rank 0 only: the other torchrun ranks say nothing)."""
    if not result.is_main:
        return
    print(result.message())
    if result.plan is None:
        warn_skipped(PROG, result.out, result.skipped_matrices, result.skipped_examples, verb="factored")


def main(argv: Sequence[str] | None = None) -> int:
    """The command: ``argv`` (default ``sys.argv[1:]``) -> exit status (0, 2 for user errors, 130)."""
    namespace = build_parser().parse_args(argv)
    argv_list = options.argv_of(argv)

    def body() -> int:
        config = options.from_args(AnalyzeConfig, namespace)  # a refused value: one line, status 2
        report(run(config, argv=argv_list))
        return 0

    return guarded_main(PROG, body, interrupted="rerun the same command with --resume to finish")


if __name__ == "__main__":
    exit_process(main())  # sys.exit, or at once when Ctrl-C left a factorization running
