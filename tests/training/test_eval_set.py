"""--eval-set dev+test (issue 30's cheap lever): SST-2's labelled test sentences join the scored set."""

from __future__ import annotations

import pytest

from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.tasks import TaskDataError, load_examples, load_scored

from .test_study import _run


def _with_test_file(glue_dir, n=9):
    lines = (glue_dir / "glue" / "sst2" / "train.tsv").read_text().splitlines()
    test = "\n".join(lines[:1] + lines[30 : 30 + n]) + "\n"  # the header, then n sentences
    (glue_dir / "glue" / "sst2" / "test-labeled.tsv").write_text(test)
    return n


def test_dev_plus_test_is_dev_followed_by_the_labelled_test_file(glue_dir):
    n = _with_test_file(glue_dir)
    dev = load_examples("sst2", glue_dir, "eval")
    both = load_scored("sst2", glue_dir, "dev+test")
    assert len(both) == len(dev) + n and both[: len(dev)] == dev
    assert both[len(dev) :] == load_examples("sst2", glue_dir, "test")
    assert load_scored("sst2", glue_dir) == dev


def test_a_task_without_labelled_test_files_says_so(glue_dir):
    with pytest.raises(TaskDataError, match="cola has no labelled test set here: use --eval-set dev"):
        load_scored("cola", glue_dir, "dev+test")
    with pytest.raises(ValueError, match="--eval-set must be one of dev, dev\\+test, got 'test'"):
        load_scored("sst2", glue_dir, "test")
    with pytest.raises(ValueError, match="--eval-set must be dev or dev\\+test"):
        RunConfig(task="sst2", method="lora", eval_set="all")


def test_a_study_judged_on_dev_plus_test_scores_both(glue_dir, tmp_path, bert_tokenizer, tiny_bert):
    n = _with_test_file(glue_dir)
    dev_n = len(load_examples("sst2", glue_dir, "eval"))
    base = {"steps": 2, "eval_every": 1, "eval_set": "dev+test"}
    res = _run(glue_dir, tmp_path / "s", bert_tokenizer, tiny_bert(2), methods=("lora",), base=base)
    rec = res["records"][0]
    assert rec.dev.n == dev_n + n and rec.config.eval_set == "dev+test"
    # resume refuses the same runs judged on another set
    with pytest.raises(Exception, match="eval_set"):
        _run(glue_dir, tmp_path / "s", bert_tokenizer, tiny_bert(2), methods=("lora",), resume=True,
             base={**base, "eval_set": "dev"})
