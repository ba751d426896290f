"""``python -m lowrank_lab.intruders``: intruder dimensions of a fine-tune relative to its base.

Shuttleworth et al. 2024 ("LoRA vs Full Fine-tuning: An Illusion of Equivalence", arXiv 2410.21228):
a top-k singular vector of the fine-tuned weight whose best |cos| with every singular vector of the
base weight is below ε is an *intruder dimension*. The command line of
:mod:`lowrank_lab.analysis.intruders_run`: argv becomes an
:class:`~lowrank_lab.analysis.intruders_run.IntrudersConfig` (its parser generated from the config's
fields, :mod:`lowrank_lab.utils.options`), :func:`~lowrank_lab.analysis.intruders_run.run` walks the
matrices and writes the CSV, the summary, the figures and ``run.json``, and errors become one line and
exit status 2 (:func:`lowrank_lab.utils.cli.guarded_main`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lowrank_lab.analysis.intruders_run import PROG, IntrudersConfig, IntrudersResult, run
from lowrank_lab.utils import options
from lowrank_lab.utils.cli import guarded_main

# PairWork, pair_cost and SKIPPED_COLUMNS, once defined here, live in lowrank_lab.analysis.intruders_run
__all__ = ["PROG", "IntrudersConfig", "IntrudersResult", "build_parser", "main", "run"]

DESCRIPTION = (
    "Count intruder dimensions (Shuttleworth et al. 2024, arXiv 2410.21228) of fine-tuned weights: "
    "top-k singular vectors of each tuned matrix whose best |cos| with ALL singular vectors of the "
    "base matrix is below ε. Base SVDs are cached on disk by tensor content."
)

EPILOG = """\
examples:
  # a full fine-tune saved as a Hugging Face directory, against the registry's MiniLM
  python -m lowrank_lab.intruders --base minilm --tuned runs/full-ft/merged --out out/full

  # a fine-tuning run directory of lowrank_lab.training (its merged/ is read)
  python -m lowrank_lab.intruders --base minilm --tuned runs/lora-r8 --sweep --out out/lora-r8

  # the base plus a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors), merged on the fly
  python -m lowrank_lab.intruders --base minilm --adapter runs/lora-r8/peft --epsilon 0.5 --top-k 10

  # a lowrank_lab adapter (save_adapter), right singular vectors too, query/value of layers 0-2 only
  python -m lowrank_lab.intruders --base minilm --adapter runs/pissa/adapter --side both \\
      --targets query,value --layers 0-2 --out out/pissa

  # large models: randomized SVD for the tuned top-k, base SVDs cached in a shared directory
  python -m lowrank_lab.intruders --base llama-7b --tuned ckpt/ --tuned-svd randomized \\
      --cache-dir /scratch/svd-cache --resume --out out/llama

  # the same on the 8 GPUs of one node: matrices split across ranks by SVD cost, rank 0 writes the
  # files one process would (add --nnodes/--rdzv-* for several nodes; --out on a shared file system)
  torchrun --standalone --nproc-per-node 8 -m lowrank_lab.intruders --base llama-7b --tuned ckpt/ \\
      --device cuda --cache-dir /scratch/svd-cache --resume --out out/llama

  # intruder mitigation (PEFT 0.22 reduce_intruder_dimension, top 10, eps 0.5) at several lambda; for a
  # fine-tuning run also its task metric and forgetting at each lambda (mitigation.csv, figure)
  python -m lowrank_lab.intruders --base minilm --tuned reports/study/sst2/runs/lora-r8-seed0 \
      --mitigate 0,0.25,0.5,0.75 --data-dir ../shared/data --out out/lora-r8-seed0

  # spectra of each adapter update dW and of W + dW (WeightWatcher's PEFT mode, whole spectra)
  python -m lowrank_lab.intruders --base minilm --adapter runs/lora-r8/peft --update-spectra

outputs (in --out):
  intruders.csv   long format, one row per (tensor, side, rank) for the top-k tuned singular vectors:
                  tensor, layer, module, side, rows, cols, rank (1..k, tuned spectrum),
                  singular_value (tuned σ), similarity (best |cos| with any base vector),
                  similarity_bound (its error bound: 0 for the full SVD), base_rank /
                  base_singular_value (the best-matching base vector), intruder (0/1 at --epsilon),
                  count (intruders of that matrix and side), epsilon, top_k, tuned_svd (full,
                  randomized, or randomized-fallback: not certifiable, recomputed with the full SVD).
                  pandas: df = pd.read_csv(...); per matrix: df.groupby(["tensor","side"]).intruder.sum();
                  count at any ε: (df.similarity < eps).groupby(df.module).sum().
  summary.md      totals per module type; with --sweep the count for ε = 0.1 ... 0.9
  sweep.csv       (with --sweep) side, module, epsilon, count — long format, one row per module
                  type (no total rows: df.groupby("epsilon")["count"].sum() gives the totals)
  skipped.csv     matrices that could not be compared (NaN/Inf or all-zero weights, float32 overflow), with
                  the reason; the run goes on without them (--resume --retry-skipped tries them again)
  count_vs_epsilon.png, similarity_<tensor>.png (the matrix with most intruders)
  run.json        command, versions, device, git commit, cache hits, timings
  mitigation.csv  (--mitigate) one row per lambda, lambda = 1 the tuned weights: run, method, rank, seed,
                  task, metric, lambda, top_k, epsilon, matrices, mitigated_matrices, intruders,
                  task_metric (dev, as the run scored it), task_loss, recorded_metric (the run's own),
                  base_spearman, tuned_spearman, forgetting (STS-B Spearman drop), adapter
  mitigation_matrices.csv, mitigated/lambda-<l>/ (a PEFT LoRA adapter per lambda < 1),
  mitigation_tradeoff.png (task metric vs forgetting over lambda)
  update_spectra.csv  (--update-spectra) per matrix two rows, matrix = delta (dW) and tuned (W + dW),
                  with adapter_rank, scaling and the columns of analyze's spectra.csv

Exit status 2 with a one-line message for bad input (no traceback).
"""



def build_parser() -> argparse.ArgumentParser:
    return options.build_parser(IntrudersConfig, PROG, DESCRIPTION, EPILOG)


def main(argv: Sequence[str] | None = None) -> int:
    """The command: ``argv`` (default ``sys.argv[1:]``) -> exit status (0, 2 for user errors, 130)."""
    namespace = build_parser().parse_args(argv)
    argv_list = options.argv_of(argv)

    def body() -> int:
        config = options.from_args(IntrudersConfig, namespace)  # a refused value: one line, status 2
        return _report(config, run(config, argv=argv_list))

    return guarded_main(
        PROG,
        body,
        interrupted=f"the rows written so far are in {namespace.out}/intruders.csv; rerun with --resume",
    )


def _report(config: IntrudersConfig, result: IntrudersResult) -> int:
    if result.rank != 0:  # a rank other than 0 of a torchrun job: rank 0 reports
        return 0
    from lowrank_lab.utils.sweep import warn_skipped

    record = result.record
    counts = ", ".join(f"{s}: {n}" for s, n in record["intruders"].items())
    print(f"{record['matrices']} matrices, intruders at ε={config.epsilon} ({counts}); wrote {config.out}/")
    warn_skipped(PROG, Path(config.out), record["skipped_new"], record["skipped_examples"], verb="compared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
