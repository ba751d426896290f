"""``python -m lowrank_lab.claims``: one claims table over the study folders of ``finetune``.

The command line of :mod:`lowrank_lab.training.claims_report`: argv becomes a
:class:`~lowrank_lab.training.claims_report.ClaimsConfig` (its parser generated from the config's
fields, :mod:`lowrank_lab.utils.options`), :func:`~lowrank_lab.training.claims_report.run` writes
``claims.csv`` and ``claims.md`` (and README's section with ``--readme``), and errors become one line
and exit status 2 (:func:`lowrank_lab.utils.cli.guarded_main`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lowrank_lab.training.claims_report import (
    PROG,
    README_HEADING,
    ClaimsConfig,
    descriptive_lines,
    readme_section,
    render,
    replace_readme_section,
    run,
    summary_table,
    table,
)
from lowrank_lab.utils import options
from lowrank_lab.utils.cli import guarded_main

__all__ = [
    "PROG", "README_HEADING", "build_parser", "descriptive_lines", "main", "readme_section", "render",
    "replace_readme_section", "summary_table", "table",
]  # fmt: skip

DESCRIPTION = (
    "Test the papers' claims on finished fine-tuning studies: gates (the untuned model, the base's "
    "training data), seed-paired t intervals, Holm-Bonferroni per paper, minimum effects; writes "
    "claims.csv and claims.md."
)
EPILOG = """
examples:
  # the committed study (benchmarks/claims_study.sh writes these folders), README's section with it
  python -m lowrank_lab.claims --studies reports/study/sst2 reports/study/stsb reports/study/gsm8k \\
      --out reports --readme README.md
  # one study, tables elsewhere
  python -m lowrank_lab.claims --studies /tmp/my-sst2 --out /tmp/claims
"""


def build_parser() -> argparse.ArgumentParser:
    return options.build_parser(ClaimsConfig, PROG, DESCRIPTION, EPILOG)


def main(argv: Sequence[str] | None = None) -> int:
    namespace = build_parser().parse_args(argv)
    argv_list = options.argv_of(argv)

    def body() -> int:
        result = run(options.from_args(ClaimsConfig, namespace), argv=argv_list)
        counts = result.frame["verdict"].value_counts().to_dict()
        print(f"wrote {result.out / 'claims.csv'} and claims.md: {len(result.frame)} claims, {counts}")
        return 0

    return guarded_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
