"""Task readers: GLUE TSVs with quoting off, CoLA's headerless raw release, RTE/STS-B labels, GSM8K."""

from __future__ import annotations

import pytest

from lowrank_lab.training.tasks import (
    TASKS,
    TaskDataError,
    TaskFormatError,
    default_data_dir,
    get_task,
    gsm8k_prompt,
    load_examples,
    task_dir,
)


def test_sst2_keeps_bare_quotes_and_every_row(glue_dir):
    ex = load_examples("sst2", glue_dir, "train")
    assert len(ex) == 60  # QUOTE_NONE: a bare '"' does not swallow the following rows
    assert any('"wonderful"' in e.text_a for e in ex)
    assert {e.label for e in ex} <= {0, 1}
    assert all(e.text_b is None for e in ex)


def test_cola_dev_is_in_domain_plus_out_of_domain(glue_dir):
    dev = load_examples("cola", glue_dir, "eval")
    assert len(dev) == 8 + 4
    assert dev[0].label == 0 and dev[1].label == 1
    assert dev[-1].text_a.endswith("11")  # the last line has no trailing newline


def test_rte_labels_follow_glue_order(glue_dir):
    ex = load_examples("rte", glue_dir, "eval")
    assert len(ex) == 10
    assert ex[0].label == 1 and "sells" in ex[0].text_b  # not_entailment -> 1
    assert ex[1].label == 0  # entailment -> 0


def test_stsb_reads_float_scores_from_last_column(glue_dir):
    ex = load_examples("stsb", glue_dir, "train")
    assert len(ex) == 30
    assert ex[1].label == pytest.approx(0.8)
    assert all(isinstance(e.label, float) for e in ex)


def test_gsm8k_question_answer(glue_dir):
    ex = load_examples("gsm8k", glue_dir, "eval")
    assert len(ex) == 6
    assert ex[0].text_b.endswith("#### 2")
    assert gsm8k_prompt(" What? ") == "Question: What?\nAnswer:"


def test_task_dir_accepts_the_folder_itself(glue_dir):
    assert task_dir(get_task("rte"), glue_dir / "glue" / "rte") == glue_dir / "glue" / "rte"
    assert len(load_examples("rte", glue_dir / "glue" / "rte", "train")) == 30


def test_missing_data_names_where_it_looked(tmp_path):
    with pytest.raises(TaskDataError, match=r"no sst2 data under --data-dir .*train_full.tsv"):
        load_examples("sst2", tmp_path, "train")
    with pytest.raises(TaskDataError, match="is not a directory"):
        load_examples("sst2", tmp_path / "nope", "train")


def test_bad_row_names_file_and_line(tmp_path):
    d = tmp_path / "glue" / "sst2"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad row without label\n")
    with pytest.raises(TaskFormatError, match=r"train.tsv:3: expected 'sentence<TAB>label'"):
        load_examples("sst2", tmp_path, "train")


def test_unknown_task_and_split():
    with pytest.raises(ValueError, match="unknown task 'mnli'; choose one of sst2, cola, rte, stsb, gsm8k"):
        get_task("mnli")
    assert get_task("STS-B").name == "stsb"
    with pytest.raises(ValueError, match="split must be"):
        load_examples("sst2", ".", "test")


def test_default_data_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWRANK_LAB_SHARED_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("LOWRANK_LAB_SHARED_DATA")
    assert default_data_dir().parts[-2:] == ("shared", "data")


@pytest.mark.data
def test_real_glue_and_gsm8k_counts(shared_data):
    # Row counts from ../shared/data/MANIFEST.md.
    expected = {
        ("sst2", "train"): 67349,
        ("sst2", "eval"): 872,
        ("cola", "train"): 8551,
        ("cola", "eval"): 1043,
        ("rte", "train"): 2490,
        ("rte", "eval"): 277,
        ("stsb", "train"): 5749,
        ("stsb", "eval"): 1500,
        ("gsm8k", "train"): 7473,
        ("gsm8k", "eval"): 1319,
    }
    for (task, split), n in expected.items():
        assert len(load_examples(task, shared_data, split)) == n, (task, split)
    assert set(TASKS) == {t for t, _ in expected}
