"""Task readers: GLUE TSVs with quoting off, CoLA's headerless raw release, RTE/STS-B labels, GSM8K."""

from __future__ import annotations

import re
import sys
import types

import pytest

from lowrank_lab.training.tasks import (
    TASKS,
    HubDataset,
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
    every = "sst2, cola, rte, stsb, mrpc, qqp, mnli, qnli, wnli, gsm8k"
    with pytest.raises(ValueError, match=f"unknown task 'ax'; choose one of {every}"):
        get_task("ax")
    assert get_task("STS-B").name == "stsb"
    with pytest.raises(ValueError, match="split must be"):
        load_examples("sst2", ".", "dev")


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
    # MRPC, QQP, MNLI, QNLI and WNLI are not in ../shared/data: their readers are tested on generated
    # files in the GLUE layout (test_every_glue_task_reads_its_glue_layout)
    assert set(TASKS) - {t for t, _ in expected} == {"mrpc", "qqp", "mnli", "qnli", "wnli"}


# --- Hub source (``datasets``): a stand-in module serves the fixture files in the Hub's schema ----------


def _hub_rows(spec, examples):
    """``examples`` as ``datasets`` rows of the Hub's GLUE / GSM8K schema (integer class labels)."""
    fa, fb, fl = spec.hub_fields
    rows = []
    for i, ex in enumerate(examples):
        row = {fa: ex.text_a, "idx": i}
        if fb is not None:
            row[fb] = ex.text_b
        if fl is not None:
            row[fl] = ex.label
        rows.append(row)
    return rows


@pytest.fixture
def fake_hub(monkeypatch, glue_dir):
    """A ``datasets`` module whose ``load_dataset`` serves glue_dir's files; records each call."""
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        task = "gsm8k" if name == "openai/gsm8k" else config
        ours = "train" if split == "train" else "eval"
        return _hub_rows(TASKS[task], load_examples(task, glue_dir, ours))

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("split", ["train", "eval"])
def test_hub_source_gives_the_same_examples_as_the_files(fake_hub, glue_dir, task, split):
    spec = TASKS[task]
    from_hub = load_examples(task, HubDataset.default_for(spec), split)
    assert from_hub == load_examples(task, glue_dir, split)
    hub_split = "train" if split == "train" else {"gsm8k": "test", "mnli": "validation_matched"}.get(
        task, "validation"
    )
    name, config = ("openai/gsm8k", "main") if task == "gsm8k" else ("nyu-mll/glue", task)
    assert fake_hub == [(name, config, hub_split)]


def test_hub_config_defaults_to_the_task_name(fake_hub):
    load_examples("rte", HubDataset("nyu-mll/glue"), "eval")
    assert fake_hub == [("nyu-mll/glue", "rte", "validation")]


def test_hub_dataset_parse():
    assert HubDataset.parse("nyu-mll/glue:rte") == HubDataset("nyu-mll/glue", "rte")
    assert HubDataset.parse(" glue ") == HubDataset("glue", None)
    assert str(HubDataset("nyu-mll/glue", "rte")) == "nyu-mll/glue:rte"
    for bad in ("", ":rte", "glue:"):
        with pytest.raises(ValueError, match="expected NAME or NAME:CONFIG"):
            HubDataset.parse(bad)


def test_hub_without_datasets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    want = r"--dataset nyu-mll/glue:sst2: .*pip install datasets.*--data-dir"
    with pytest.raises(TaskDataError, match=want):
        load_examples("sst2", HubDataset("nyu-mll/glue", "sst2"), "train")


def test_hub_offline_names_dataset_split_and_the_way_out(monkeypatch):
    def load_dataset(name, config, split):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(TaskDataError) as info:
        load_examples("rte", HubDataset("nyu-mll/glue"), "eval")
    msg = str(info.value)
    assert "nyu-mll/glue:rte split 'validation' for task rte" in msg
    assert "ConnectionError: Couldn't reach" in msg and "offline use --data-dir" in msg
    assert isinstance(info.value.__cause__, ConnectionError)


@pytest.mark.parametrize(
    ("rows", "why"),
    [
        ([{"sentence": "a test row", "label": -1, "idx": 0}], "label -1 is not a class in 0..1"),
        ([{"text": "wrong schema", "label": 0}], "'sentence'"),
        ([], "holds no sst2 examples"),
    ],
)
def test_hub_rows_are_checked(monkeypatch, rows, why):
    # GLUE's test splits carry label -1; another dataset's columns; an empty split.
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: rows))
    with pytest.raises(TaskFormatError, match=re.escape(why)) as info:
        load_examples("sst2", HubDataset("some/dataset", "x"), "train")
    assert "some/dataset:x split 'train'" in str(info.value)


@pytest.mark.parametrize(
    ("task", "n_train", "n_dev", "labels"),
    [
        ("mrpc", 24, 8, {0, 1}),
        ("qqp", 24, 8, {0, 1}),
        ("mnli", 24, 8, {0, 1, 2}),
        ("qnli", 24, 8, {0, 1}),
        ("wnli", 24, 8, {0, 1}),
    ],
)
def test_every_glue_task_reads_its_glue_layout(glue_dir, task, n_train, n_dev, labels):
    train = load_examples(task, glue_dir, "train")
    dev = load_examples(task, glue_dir, "eval")
    assert (len(train), len(dev)) == (n_train, n_dev)
    assert {ex.label for ex in train} == labels
    assert all(ex.text_a and ex.text_b for ex in train)
    assert TASKS[task].num_labels == len(labels)


def test_mnli_labels_follow_glue_order(glue_dir):
    ex = load_examples("mnli", glue_dir, "train")
    assert [e.label for e in ex[:3]] == [0, 1, 2]  # entailment, neutral, contradiction
    assert ex[0].text_b == "The sky is blue ."


def test_a_glue_file_missing_a_column_names_it(glue_dir):
    path = glue_dir / "glue" / "qnli" / "train.tsv"
    path.write_text("index\tquestion\tlabel\n0\tWho ?\tentailment\n")
    want = r"train.tsv: header .* lacks one of the columns \['question', 'sentence'"
    with pytest.raises(TaskFormatError, match=want):
        load_examples("qnli", glue_dir, "train")


def test_a_glue_folder_missing_its_dev_split_names_the_file(glue_dir):
    (glue_dir / "glue" / "mnli" / "dev_matched.tsv").unlink()
    with pytest.raises(TaskDataError, match=r"no mnli eval file in .*mnli: expected dev_matched.tsv"):
        load_examples("mnli", glue_dir, "eval")


def test_a_bad_label_names_file_line_and_labels(glue_dir):
    path = glue_dir / "glue" / "wnli" / "train.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(TaskFormatError, match=r"train.tsv:2: expected 4 columns with label '0' or '1'"):
        load_examples("wnli", glue_dir, "train")


# -- one record per task (issue 29, point 5): reader, metric and LoRA's rate live in TaskSpec ---------

#: LoRA's rates as training/selection.py wrote them by hand before the task record held them.
LORA_RATES_TODAY = {"sst2": 5e-4, "rte": 5e-4, "mnli": 5e-4, "qqp": 5e-4, "cola": 4e-4, "stsb": 4e-4,
                    "mrpc": 4e-4, "qnli": 4e-4, "wnli": 4e-4}  # fmt: skip


def test_each_task_record_holds_its_reader_metric_and_paper_rate():
    from lowrank_lab.training import tasks
    from lowrank_lab.training.selection import LORA_PAPER_LR
    from lowrank_lab.training.stats import MEASURES

    assert len(TASKS) == 10
    for name, spec in TASKS.items():
        assert spec.name == name and spec.reader is getattr(tasks, f"_read_{name}"), name
        # The metric is a typed measure, and the record's direction is the measure's (written twice
        # today: TaskSpec.higher_is_better and Measure.direction; this keeps them from drifting apart).
        assert spec.higher_is_better == (MEASURES[spec.metric].direction > 0), name
    assert {n: s.lora_paper_lr for n, s in TASKS.items() if s.lora_paper_lr is not None} == LORA_RATES_TODAY
    assert TASKS["gsm8k"].lora_paper_lr is None  # the LoRA paper has no GSM8K rate
    assert LORA_PAPER_LR == LORA_RATES_TODAY  # the old name, now a view of the records
    assert "reader" not in repr(TASKS["sst2"])


def test_paper_rate_reads_the_task_record():
    from lowrank_lab.training.config import default_lr
    from lowrank_lab.training.selection import HEAD_GRID_CENTRE, paper_rate

    for name, spec in TASKS.items():
        expected = LORA_RATES_TODAY.get(name, default_lr("lora", spec.kind))
        assert paper_rate("lora", name, spec.kind) == expected, name
        assert paper_rate("pissa", name, spec.kind) == expected, name  # the LoRA family shares it
        assert paper_rate("lora-xs", name, spec.kind) == default_lr("lora-xs", spec.kind), name
    assert paper_rate("lora", "not-a-task", "classification") == default_lr("lora", "classification")
    assert paper_rate("head", "sst2", "classification") == HEAD_GRID_CENTRE


def test_a_task_record_without_a_reader_is_refused():
    import dataclasses

    with pytest.raises(TypeError, match="TaskSpec 'sst2': give reader="):
        dataclasses.replace(TASKS["sst2"], reader=None)


def test_loading_reads_through_the_records_reader(glue_dir, monkeypatch):
    import dataclasses

    seen = []
    spec = dataclasses.replace(TASKS["sst2"], reader=lambda path: seen.append(path.name) or [])
    with pytest.raises(TaskFormatError, match="holds no sst2 examples"):
        load_examples(spec, glue_dir, "train")
    assert seen == ["train.tsv"]
