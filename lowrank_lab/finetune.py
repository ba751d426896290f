"""``python -m lowrank_lab.finetune``: train adapter methods on a real task and record everything.

Every method of ``--methods`` is trained with every seed of ``--seeds`` on the same data order and
schedule; each run writes a JSON record and its merged fine-tuned model, and the study ends with
``summary.md`` (metric mean ± sd over seeds, convergence, paper-claim verdicts) and figures. The
command line of :mod:`lowrank_lab.training.finetune_run`: argv becomes a
:class:`~lowrank_lab.training.finetune_run.FinetuneConfig` (its parser generated from the config's
fields, :mod:`lowrank_lab.utils.options`), :func:`~lowrank_lab.training.finetune_run.run` does the work,
and errors become one line and exit status 2 (:func:`lowrank_lab.utils.cli.guarded_main`).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence

import torch

from lowrank_lab.adapters import ADAPTERS
from lowrank_lab.training.config import DEFAULT_HEAD_LR, DEFAULT_LR, HEAD_ONLY, LR_SOURCES
from lowrank_lab.training.finetune_run import DEFAULT_METHODS as _DEFAULT_METHODS
from lowrank_lab.training.finetune_run import PROG, FinetuneConfig, how_to_resume, run
from lowrank_lab.training.tasks import TASKS
from lowrank_lab.utils import options
from lowrank_lab.utils.cli import guarded_main, quiet_transformers

__all__ = ["DEFAULT_METHODS", "EPILOG", "PROG", "FinetuneConfig", "build_parser", "main", "run"]

#: The default --methods as the command line writes it.
DEFAULT_METHODS = ",".join(_DEFAULT_METHODS)
DESCRIPTION = (
    "Fine-tune a model with several adapter methods and seeds on one task; record loss curves, eval "
    "metric, time, memory, trainable parameters and merged weights; summarise the papers' claims."
)
# the registry names the methods once; the help lists them from it
_METHOD_LIST = "\n  ".join(textwrap.wrap(", ".join(ADAPTERS), 90, break_on_hyphens=False))

EPILOG = f"""
examples:
  # issue 15's protocol: each method's rate selected on a validation split carved from the training
  # data (five rates, 0.1x-10x the published one; the head's first), then 5 paired seeds judged on dev
  python -m lowrank_lab.finetune --task sst2 --methods lora,full,head,pissa --steps 600 --eval-every 120 \
      --lr-grid --seeds 0,1,2,3,4 --out reports/study/sst2 --resume
  # every run of the study: the encoder's STS-B skill lost (forgetting.csv), for the intruders claim
  python -m lowrank_lab.finetune --task sst2 --out reports/study/sst2 --forgetting
  # issue 7's study: SST-2 with MiniLM, five methods, three seeds
  python -m lowrank_lab.finetune --task sst2 --model minilm --methods lora,pissa,nlora,inttune,full \\
      --rank 8 --steps 300 --seeds 0,1,2 --data-dir ../shared/data --out reports/finetune/sst2
  # GSM8K loss curves with stories260K (causal LM on "Question: ... Answer: ...")
  python -m lowrank_lab.finetune --task gsm8k --methods lora,pissa,nlora,inttune,full --steps 300 \\
      --out reports/finetune/gsm8k
  # a quick look: 20 steps, 200 eval examples, resume whatever is already done
  python -m lowrank_lab.finetune --task rte --methods lora,full --steps 20 --eval-samples 200 --resume
  # online: GLUE RTE from the Hugging Face Hub (nyu-mll/glue, config rte) instead of local files
  python -m lowrank_lab.finetune --task rte --methods lora --dataset --out /tmp/rte-hub
  # merged/ weights gone (not committed, or --no-save-merged)? replay the runs, checked bit for bit
  python -m lowrank_lab.finetune --task rte --out reports/finetune/rte --rebuild-merged lora-r8-seed1
  # rebuild summary.md and the figures from the runs already in --out
  python -m lowrank_lab.finetune --task sst2 --out reports/finetune/sst2 --summary-only
  # where a long study stands: each run finished, training (which process), interrupted (at which step)
  python -m lowrank_lab.finetune --task stsb --out reports/study/stsb --status

tasks: {", ".join(f"{k} ({v.metric})" for k, v in TASKS.items())}
methods: every name of lowrank_lab.adapters.ADAPTERS ({_METHOD_LIST}) plus '{HEAD_ONLY}'
  (no adapter: only the task head trains — the control that shows what the head alone reaches).
default learning rates (--lr overrides): {", ".join(f"{f}/{k}: {v:g}" for (f, k), v in DEFAULT_LR.items())};
  the GLUE task head: {DEFAULT_HEAD_LR:g} for every method (--head-lr)
  sources — {"; ".join(f"{k}: {v}" for k, v in LR_SOURCES.items())}
default learning rates apply without --lr-grid; with it each method's rate is selected (selection.csv).
outputs in --out: runs/<run>/run.json (config, per-step loss, validation evals, dev at the end, wall
  time, peak memory, trainable params, init time), runs/<run>/merged/ (merged model, safetensors, for
  `python -m lowrank_lab.intruders`), runs.csv, curves.csv (long format), baselines.json, summary.md,
  figures/*.png; with --lr-grid also select/<run>-lr<rate>/ and selection.csv.
one claims table over study folders: python -m lowrank_lab.claims --studies DIR [DIR ...] --out reports
"""


def build_parser() -> argparse.ArgumentParser:
    return options.build_parser(FinetuneConfig, PROG, DESCRIPTION, EPILOG)


def main(argv: Sequence[str] | None = None) -> int:
    namespace = build_parser().parse_args(argv)
    quiet_transformers()
    if namespace.threads is not None:
        torch.set_num_threads(namespace.threads)
    argv_list = options.argv_of(argv)

    def body() -> int:
        config = options.from_args(FinetuneConfig, namespace)  # a refused value: one line, status 2
        return run(config, argv=argv_list)

    return guarded_main(PROG, body, interrupted=lambda exc: how_to_resume(namespace, exc))


if __name__ == "__main__":
    sys.exit(main())
