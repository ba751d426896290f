"""``python -m lowrank_lab.diagnose``: what each initialisation makes the first optimiser step do.

The command line of :mod:`lowrank_lab.analysis.diagnose`: argv becomes a
:class:`~lowrank_lab.analysis.diagnose.DiagnoseConfig` (its parser generated from the config's fields,
:mod:`lowrank_lab.utils.options`), :func:`~lowrank_lab.analysis.diagnose.run` measures and writes the
tables, summary and figures, and errors become one line and exit status 2
(:func:`lowrank_lab.utils.cli.guarded_main`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from lowrank_lab.analysis import diagnose as _lib
from lowrank_lab.analysis.diagnose import ANGLE_METHODS, COLUMNS, PROG, DiagnoseConfig, run
from lowrank_lab.utils import options
from lowrank_lab.utils.cli import guarded_main, quiet_transformers

__all__ = ["ANGLE_METHODS", "COLUMNS", "DEFAULT_METHODS", "build_parser", "main", "run"]

#: The default --methods as the command line writes it (the notebooks extend this text).
DEFAULT_METHODS = ",".join(_lib.DEFAULT_METHODS)
DESCRIPTION = (
    "Step-0 diagnostics of adapter initialisations on a task: alignment of the first update with the "
    "full fine-tuning gradient, norms, output change, subspace angles."
)

EPILOG = """\
examples:
  # the step-0 picture of nine inits on SST-2 with MiniLM, compared with the committed study
  python -m lowrank_lab.diagnose --model minilm --task sst2 --data-dir ../shared/data \\
      --methods lora,pissa,milora,eva,corda-ipm,lora-ga,lora-one,nlora,full --rank 8 \\
      --out reports/diagnose/sst2

  # plain SGD instead of Adam's first step, 256 calibration examples (CorDA's advice: plenty)
  python -m lowrank_lab.diagnose --task sst2 --methods pissa,corda-ipm --optimizer sgd \\
      --calibration-samples 256 --out /tmp/diag

outputs (in --out):
  diagnostics.csv  one row per method and matrix: method, tensor, rows, cols, rank, lr, optimizer,
                   alignment (share of ΔW in the top-r singular subspaces of the full-FT gradient),
                   cos_neg_grad, update_norm (‖ΔW‖_F), grad_norm (‖G‖_F), weight_change
                   (‖W_init − W‖/‖W‖), output_change (model-level ‖logits_init − logits_base‖/‖·‖),
                   init_seconds
  angles.csv       method_a, method_b, tensor, mean_cos2 (‖Q_aᵀQ_b‖²_F / r), min_cos
  summary.md       per-method means, the angle matrix, and alignment against the study's loss AUC
  alignment.png, angles.png, alignment_vs_convergence.png (with a study), run.json

Exit status 2 with a one-line message for bad input (no traceback).
"""


def build_parser() -> argparse.ArgumentParser:
    return options.build_parser(DiagnoseConfig, PROG, DESCRIPTION, EPILOG)


def main(argv: Sequence[str] | None = None) -> int:
    namespace = build_parser().parse_args(argv)
    argv_list = options.argv_of(argv)

    def body() -> int:
        config = options.from_args(DiagnoseConfig, namespace)  # a refused value: one line, status 2
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        quiet_transformers()
        out = run(config, argv=argv_list)
        done = "summary.md" if config.summary_only else "diagnostics.csv, angles.csv, summary.md"
        print(f"wrote {out}/{done}")
        return 0

    # the one error path of every command: "python -m lowrank_lab.diagnose: error: ...", exit 2
    return guarded_main(PROG, body, interrupted="nothing written beyond what is in --out")


if __name__ == "__main__":
    sys.exit(main())
