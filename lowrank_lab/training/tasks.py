"""Fine-tuning tasks: the nine GLUE tasks and GSM8K, read from local files or the Hub.

Each task is one :class:`TaskSpec` in :data:`TASKS` (the CLI, tests and reports use the same
registry), holding every fact about it once: files, Hub columns, its reader, its metric and LoRA's
published learning rate for it. :func:`load_examples` turns a data directory, or a
:class:`HubDataset` (a Hugging Face ``datasets`` name, online only), into a list of :class:`Example`.

File formats follow ``../shared/data/MANIFEST.md`` and the GLUE release (Wang et al. 2019,
arXiv 1804.07461):

* GLUE ``.tsv`` files contain bare quote characters, so they are read with quoting off
  (``csv.QUOTE_NONE``); reading them with the default quoting silently merges rows.
* SST-2: header ``sentence, label``; the train file is ``train.tsv`` (GLUE) or ``train_full.tsv``
  (the AutoPrompt copy in ``../shared/data``).
* CoLA: no header, columns ``source, label, original label, sentence``; GLUE's dev set is
  ``in_domain_dev`` + ``out_of_domain_dev`` (1,043 rows) when the raw CoLA release is given.
* RTE: header ``index, sentence1, sentence2, label`` with labels ``entailment`` (0) and
  ``not_entailment`` (1), the label order of GLUE's ``RteProcessor`` in Hugging Face transformers.
* STS-B: header with ``sentence1``, ``sentence2`` and the score (0–5) in the last column.
* MRPC: header ``Quality, #1 ID, #2 ID, #1 String, #2 String`` (Quality 1 = paraphrase).
* QQP: header ``id, qid1, qid2, question1, question2, is_duplicate``.
* MNLI: the matched dev set ``dev_matched.tsv``; text in ``sentence1``/``sentence2``, label in
  ``gold_label`` (``entailment`` 0, ``neutral`` 1, ``contradiction`` 2, GLUE's order).
* QNLI: header ``index, question, sentence, label`` (``entailment`` 0, ``not_entailment`` 1).
* WNLI: header ``index, sentence1, sentence2, label`` (0/1).
* GSM8K (Cobbe et al. 2021, arXiv 2110.14168): ``.jsonl`` with ``{"question", "answer"}``; the
  held-out split is ``test.jsonl``.

On the Hub the same data is ``nyu-mll/glue`` (configs ``sst2``, ``cola``, ``rte``, ``stsb``; splits
``train`` and ``validation``, whose label encodings match the files above) and ``openai/gsm8k``
(config ``main``; splits ``train`` and ``test``). ``datasets`` is imported only when a Hub source is
asked for (``pip install datasets``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from lowrank_lab.utils.data import DATA_DIR_ENV, shared_data_dir
from lowrank_lab.utils.files import TextDecodeError, read_text


class TaskDataError(FileNotFoundError):
    """A task's files are missing under the data directory (the message lists where it looked)."""


class TaskFormatError(ValueError):
    """A task file exists but a row cannot be parsed (the message names the file and line)."""


@dataclass(frozen=True)
class TaskSpec:
    """One fine-tuning task.

    Attributes
    ----------
    name : str
        Registry name (``sst2``).
    kind : {"classification", "regression", "causal-lm"}
        Which head and loss the model gets.
    num_labels : int
        Output size of the classification/regression head (1 for regression; 0 for causal LM).
    metric : str
        Name in :data:`lowrank_lab.training.metrics.METRICS` of the evaluation metric.
    higher_is_better : bool
        Direction of ``metric``.
    default_model : str
        Model the CLI uses when ``--model`` is not given.
    default_max_length : int
        Token budget per example: 64 for GLUE (issue 7's SST-2 setting), 512 for GSM8K (the
        stories260K context length, ``seq_len`` in its llama2.c header).
    default_eval_samples : int
        Held-out examples scored when ``--eval-samples`` is not given (0: all).
    dirs : tuple of str
        Directory names tried under the data directory, in order.
    train_files, eval_files : tuple of tuple of str
        Alternatives, tried in order; each alternative is a tuple of files concatenated.
    hub_name, hub_config, hub_eval_split : str
        The task's Hugging Face ``datasets`` name, config (None: the task's name) and held-out split.
    hub_fields : (str, str or None, str or None)
        Columns of a Hub row that become ``text_a``, ``text_b`` and ``label`` of an :class:`Example`.
    reader : callable
        ``reader(path) -> list[Example]``: how one of the task's local files is read.
    lora_paper_lr : float or None
        LoRA's learning rate for the task (Hu et al. 2021, Table 9, RoBERTa-base), the centre of the
        LoRA family's default grid (:func:`~.selection.paper_rate`); None where the paper gives none.
    """

    name: str
    kind: str
    num_labels: int
    metric: str
    higher_is_better: bool
    default_model: str
    default_max_length: int
    dirs: tuple[str, ...]
    train_files: tuple[tuple[str, ...], ...]
    eval_files: tuple[tuple[str, ...], ...]
    description: str = ""
    default_eval_samples: int = 0  # 0: the whole eval split
    hub_name: str = "nyu-mll/glue"
    hub_config: str | None = None  # None: the task's name (GLUE's config names are the task names)
    hub_eval_split: str = "validation"
    hub_fields: tuple[str, str | None, str | None] = ("sentence", None, "label")
    #: Labelled test files beside the dev set, which ``--eval-set dev+test`` adds to the scored set
    #: (empty: the task has none; GLUE's own test labels are hidden).
    test_files: tuple[str, ...] = ()
    reader: Callable[[Path], list[Example]] | None = field(default=None, repr=False)
    lora_paper_lr: float | None = None

    def __post_init__(self) -> None:
        if self.reader is None:  # a default only because the fields before it have defaults
            raise TypeError(f"TaskSpec {self.name!r}: give reader=, the function that reads its files")


@dataclass(frozen=True)
class Example:
    """One example: ``text_a`` (sentence, premise or question), optional ``text_b`` (second
    sentence, or the GSM8K answer), ``label`` (int class, float score, or None for causal LM)."""

    text_a: str
    text_b: str | None
    label: int | float | None


def _glue(
    name: str,
    glue_dir: str,
    description: str,
    *,
    kind: str = "classification",
    num_labels: int = 2,
    metric: str = "accuracy",
    max_length: int = 128,
    train_files: tuple[tuple[str, ...], ...] = (("train.tsv",),),
    eval_files: tuple[tuple[str, ...], ...] = (("dev.tsv",),),
    hub_fields: tuple[str, str | None, str | None] = ("sentence1", "sentence2", "label"),
    reader: Callable[[Path], list[Example]],
    lora_lr: float,
    **more: str,
) -> TaskSpec:
    """A GLUE task: its folder under either name (``sst2`` or GLUE's own ``SST-2``, bare or under
    ``glue/``), MiniLM as the model, and the columns of ``nyu-mll/glue`` on the Hub."""
    return TaskSpec(
        name=name,
        kind=kind,
        num_labels=num_labels,
        metric=metric,
        higher_is_better=True,
        default_model="minilm",
        default_max_length=max_length,
        dirs=(f"glue/{name}", name, glue_dir, f"glue/{glue_dir}"),
        train_files=train_files,
        eval_files=eval_files,
        description=description,
        hub_fields=hub_fields,
        reader=reader,
        lora_paper_lr=lora_lr,
        **more,
    )


_RTE_LABELS = {"entailment": 0, "not_entailment": 1}
#: GLUE's MNLI label order (transformers' ``MnliProcessor``; ``nyu-mll/glue`` mnli on the Hub).
_MNLI_LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}
_BINARY = {"0": 0, "1": 1}


@dataclass(frozen=True)
class HubDataset:
    """A Hugging Face ``datasets`` name as a task's data source (needs network and ``datasets``).

    ``HubDataset("nyu-mll/glue")`` reads the config named after the task (``sst2``, ``rte``, ...);
    ``config`` picks another. Pass it where a data directory goes (:func:`load_examples`,
    :func:`~lowrank_lab.training.study.run_study`, ``--dataset`` on the command line).
    """

    name: str
    config: str | None = None

    @classmethod
    def parse(cls, text: str) -> HubDataset:
        """``"NAME"`` or ``"NAME:CONFIG"`` (``nyu-mll/glue:rte``)."""
        name, sep, config = text.strip().partition(":")
        if not name or (sep and not config):
            raise ValueError(f"--dataset {text!r}: expected NAME or NAME:CONFIG, e.g. nyu-mll/glue:rte")
        return cls(name, config or None)

    @classmethod
    def default_for(cls, spec: TaskSpec) -> HubDataset:
        """Where ``spec``'s data lives on the Hub (``nyu-mll/glue:<task>``, ``openai/gsm8k:main``)."""
        return cls(spec.hub_name, spec.hub_config or spec.name)

    def __str__(self) -> str:
        return self.name if self.config is None else f"{self.name}:{self.config}"


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` called ``name`` (case-insensitive); the error lists the valid names."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)} (e.g. --task sst2)")
    return TASKS[key]


def default_data_dir() -> Path:
    """``$LOWRANK_LAB_SHARED_DATA`` if set, else ``../shared/data`` beside the repository clone."""
    return shared_data_dir()


def task_dir(spec: TaskSpec, data_dir: str | Path) -> Path:
    """The directory holding ``spec``'s files: ``data_dir/glue/sst2``, ``data_dir/SST-2``, ... or
    ``data_dir`` itself when the files are directly there (any GLUE-format directory)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise TaskDataError(
            f"--data-dir {str(data_dir)!r} is not a directory; pass the folder holding glue/ and gsm8k/ "
            f"(e.g. ../shared/data) or set ${DATA_DIR_ENV}"
        )
    tried = []
    for cand in [*(data_dir / d for d in spec.dirs), data_dir]:
        tried.append(cand)
        if cand.is_dir() and _first_existing(cand, spec.train_files) is not None:
            return cand
    wanted = " or ".join("+".join(alt) for alt in spec.train_files)
    raise TaskDataError(
        f"no {spec.name} data under --data-dir {str(data_dir)!r}: looked for {wanted} in "
        + ", ".join(str(t) for t in tried)
        + f"; pass the folder that holds it (e.g. --data-dir ../shared/data) or set ${DATA_DIR_ENV}"
    )


def _first_existing(folder: Path, alternatives: tuple[tuple[str, ...], ...]) -> tuple[Path, ...] | None:
    for alt in alternatives:
        paths = tuple(folder / f for f in alt)
        if all(p.is_file() for p in paths):
            return paths
    return None


def load_examples(task: str | TaskSpec, data_dir: str | Path | HubDataset, split: str) -> list[Example]:
    """Read the ``"train"`` or ``"eval"`` split of ``task`` from ``data_dir``.

    Parameters
    ----------
    task : str or TaskSpec
        A name in :data:`TASKS`.
    data_dir : path or HubDataset
        The folder holding ``glue/<task>/`` and ``gsm8k/`` (e.g. ``../shared/data``), or a folder
        that directly holds the task's files; or a Hugging Face ``datasets`` name.
    split : {"train", "eval", "test"}
        ``"eval"`` is GLUE's dev set (the labelled held-out set of GLUE; ``validation`` on the Hub)
        and GSM8K's test set; ``"test"`` a task's labelled test files (``TaskSpec.test_files``).

    Returns
    -------
    list of Example, in file (or Hub row) order.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if split not in ("train", "eval", "test"):
        raise ValueError(f"split must be 'train', 'eval' or 'test', got {split!r}")
    if split == "test" and not spec.test_files:
        raise TaskDataError(f"task {spec.name} has no labelled test set here: use --eval-set dev")
    if isinstance(data_dir, HubDataset):
        if split == "test":
            raise TaskDataError(
                f"--eval-set dev+test reads {spec.name}'s labelled test file: give --data-dir"
            )
        return _load_hub(spec, data_dir, split)
    folder = task_dir(spec, data_dir)
    alternatives = {"train": spec.train_files, "eval": spec.eval_files, "test": (spec.test_files,)}[split]
    paths = _first_existing(folder, alternatives)
    if paths is None:
        wanted = " or ".join("+".join(alt) for alt in alternatives)
        raise TaskDataError(f"no {spec.name} {split} file in {folder}: expected {wanted}")
    out: list[Example] = []
    for path in paths:
        out.extend(spec.reader(path))
    if not out:
        raise TaskFormatError(f"{', '.join(map(str, paths))} holds no {spec.name} examples")
    return out


#: What ``--eval-set`` may name: the held-out examples a study's runs are judged on.
EVAL_SETS = ("dev", "dev+test")


def load_scored(
    task: str | TaskSpec, data_dir: str | Path | HubDataset, eval_set: str = "dev"
) -> list[Example]:
    """The examples a run is judged on: the ``"eval"`` split (``eval_set="dev"``), or it followed by
    the task's labelled test files (``"dev+test"``: more scored examples, a narrower interval)."""
    if eval_set not in EVAL_SETS:
        raise ValueError(f"--eval-set must be one of {', '.join(EVAL_SETS)}, got {eval_set!r}")
    out = load_examples(task, data_dir, "eval")
    if eval_set == "dev+test":
        out = out + load_examples(task, data_dir, "test")
    return out


def _load_hub(spec: TaskSpec, source: HubDataset, split: str) -> list[Example]:
    """``datasets.load_dataset(name, config, split=...)`` rows as Examples, checked like file rows."""
    try:
        import datasets
    except ImportError:
        raise TaskDataError(
            f"--dataset {source}: the Hugging Face 'datasets' package is not installed "
            "(pip install datasets), or read local files with --data-dir"
        ) from None
    config = source.config or spec.hub_config or spec.name
    hub_split = "train" if split == "train" else spec.hub_eval_split
    where = f"{source.name}:{config} split {hub_split!r}"
    try:
        rows = datasets.load_dataset(source.name, config, split=hub_split)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name or config: all end the same way
        raise TaskDataError(
            f"--dataset {source}: cannot load {where} for task {spec.name} "
            f"({type(exc).__name__}: {exc}); the Hub needs network access, offline use --data-dir"
        ) from exc
    fa, fb, fl = spec.hub_fields
    out = []
    for i, row in enumerate(rows):
        try:
            label = None if fl is None else row[fl]
            text_b = None if fb is None else str(row[fb])
            out.append(Example(str(row[fa]), text_b, _hub_label(spec, label)))
        except (KeyError, TypeError, ValueError) as exc:
            fields = [f for f in spec.hub_fields if f is not None]
            raise TaskFormatError(
                f"{where}, row {i}: expected columns {fields} with a {spec.kind} label ({exc}); "
                f"is this {spec.name}'s data? (columns: {sorted(row) if hasattr(row, 'keys') else '?'})"
            ) from None
    if not out:
        raise TaskFormatError(f"{where} holds no {spec.name} examples")
    return out


def _hub_label(spec: TaskSpec, label) -> int | float | None:
    if spec.kind == "causal-lm":
        return None
    if spec.kind == "regression":
        return float(label)
    if isinstance(label, bool) or int(label) != label or not 0 <= int(label) < spec.num_labels:
        # GLUE's test splits carry label -1: no labels to train or score on.
        raise ValueError(f"label {label!r} is not a class in 0..{spec.num_labels - 1}")
    return int(label)


def _text(path: Path) -> str:
    """The file as UTF-8 text with a leading byte-order mark dropped (the official MRPC files start
    with one, which stuck to the first column's name: "lacks one of the columns"); a byte that is not
    UTF-8 is a TaskFormatError naming the file and line."""
    try:
        return read_text(path)
    except TextDecodeError as exc:
        raise TaskFormatError(str(exc)) from None


def _tsv_rows(path: Path):
    # GLUE text has bare quotes: QUOTE_NONE keeps every row a row (see module docstring).
    fh = io.StringIO(_text(path), newline="")
    for lineno, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
        if row:
            yield lineno, row


def _header_index(path: Path, header: list[str], names: tuple[str, ...]) -> list[int]:
    try:
        return [header.index(n) for n in names]
    except ValueError:
        raise TaskFormatError(
            f"{path}: header {header} lacks one of the columns {list(names)}; is this the right GLUE task?"
        ) from None


def _bad_row(path: Path, lineno: int, row: list[str], why: str) -> TaskFormatError:
    shown = "\\t".join(row)[:120]
    return TaskFormatError(f"{path}:{lineno}: {why} (row: {shown!r})")


def _read_sst2(path: Path) -> list[Example]:
    rows = _tsv_rows(path)
    _, header = next(rows, (0, []))
    (i_s, i_l) = _header_index(path, header, ("sentence", "label"))
    out = []
    for lineno, row in rows:
        try:
            out.append(Example(row[i_s], None, int(row[i_l])))
        except (IndexError, ValueError):
            raise _bad_row(path, lineno, row, "expected 'sentence<TAB>label' with label 0 or 1") from None
    return out


def _read_cola(path: Path) -> list[Example]:
    out = []
    for lineno, row in _tsv_rows(path):
        if lineno == 1 and row[0] == "sentence_source":  # a headered copy
            continue
        try:
            out.append(Example(row[3], None, int(row[1])))
        except (IndexError, ValueError):
            raise _bad_row(
                path, lineno, row, "expected 4 columns source, label, original label, sentence"
            ) from None
    return out


def _read_columns(
    path: Path, text_a: str, text_b: str | None, label: str, labels: dict[str, int]
) -> list[Example]:
    """Rows of a headered GLUE TSV: the columns named ``text_a``, ``text_b`` and ``label`` (mapped
    through ``labels``). The error names the file, the line and the labels it expected."""
    rows = _tsv_rows(path)
    _, header = next(rows, (0, []))
    names = (text_a, *((text_b,) if text_b else ()), label)
    idx = _header_index(path, header, names)
    i_a, i_l = idx[0], idx[-1]
    i_b = idx[1] if text_b else None
    out = []
    for lineno, row in rows:
        try:
            out.append(Example(row[i_a], None if i_b is None else row[i_b], labels[row[i_l]]))
        except (IndexError, KeyError):
            want = " or ".join(repr(k) for k in labels)
            raise _bad_row(path, lineno, row, f"expected {len(header)} columns with {label} {want}") from None
    return out


# The headered GLUE TSVs: _read_columns with each task's column names and label map.
_read_rte = partial(_read_columns, text_a="sentence1", text_b="sentence2", label="label", labels=_RTE_LABELS)
# GLUE's MRPC header: Quality, #1 ID, #2 ID, #1 String, #2 String (Quality 1 = paraphrase).
_read_mrpc = partial(_read_columns, text_a="#1 String", text_b="#2 String", label="Quality", labels=_BINARY)
_read_qqp = partial(
    _read_columns, text_a="question1", text_b="question2", label="is_duplicate", labels=_BINARY
)
_read_mnli = partial(
    _read_columns, text_a="sentence1", text_b="sentence2", label="gold_label", labels=_MNLI_LABELS
)
_read_qnli = partial(_read_columns, text_a="question", text_b="sentence", label="label", labels=_RTE_LABELS)
_read_wnli = partial(_read_columns, text_a="sentence1", text_b="sentence2", label="label", labels=_BINARY)


def _read_stsb(path: Path) -> list[Example]:
    rows = _tsv_rows(path)
    _, header = next(rows, (0, []))
    i1, i2 = _header_index(path, header, ("sentence1", "sentence2"))
    if header[-1] != "score":
        raise TaskFormatError(
            f"{path}: last column is {header[-1]!r}, not 'score' (test files have no labels)"
        )
    out = []
    for lineno, row in rows:
        try:
            out.append(Example(row[i1], row[i2], float(row[-1])))
        except (IndexError, ValueError):
            raise _bad_row(path, lineno, row, "expected a numeric score in the last column") from None
    return out


def _read_gsm8k(path: Path) -> list[Example]:
    out = []
    for lineno, line in enumerate(io.StringIO(_text(path)), start=1):  # io: lines split at \n only
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out.append(Example(rec["question"], rec["answer"], None))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise TaskFormatError(
                f"{path}:{lineno}: expected a JSON object with 'question' and 'answer'"
            ) from None
    return out


_SINGLE = ("sentence", None, "label")  # the single-sentence tasks' Hub columns

#: Every task, one record each: files, Hub columns, reader, metric and LoRA's published rate
#: (``lora_lr``: Hu et al. 2021, Table 9, RoBERTa-base).
TASKS: dict[str, TaskSpec] = {
    "sst2": _glue(
        "sst2",
        "SST-2",
        "GLUE SST-2 sentiment (binary), metric accuracy on dev",
        max_length=64,
        train_files=(("train.tsv",), ("train_full.tsv",)),
        hub_fields=_SINGLE,
        # SST-2's test sentences with their labels, as AutoPrompt released them (../shared/data's
        # MANIFEST.md): 1,821 more scored sentences, where dev has 872 (issue 30's cheap lever).
        test_files=("test-labeled.tsv",),
        reader=_read_sst2,
        lora_lr=5e-4,
    ),
    "cola": _glue(
        "cola",
        "CoLA",
        "GLUE CoLA acceptability (binary), metric Matthews correlation on dev",
        metric="matthews",
        max_length=64,
        train_files=(("train.tsv",), ("in_domain_train.tsv",)),
        eval_files=(("dev.tsv",), ("in_domain_dev.tsv", "out_of_domain_dev.tsv")),
        hub_fields=_SINGLE,
        reader=_read_cola,
        lora_lr=4e-4,
    ),
    "rte": _glue(
        "rte",
        "RTE",
        "GLUE RTE entailment (sentence pairs, binary), metric accuracy on dev",
        max_length=256,  # at 64 tokens about a third of RTE's pairs were cut (issue 15)
        reader=_read_rte,
        lora_lr=5e-4,
    ),
    "stsb": _glue(
        "stsb",
        "STS-B",
        "GLUE STS-B similarity (regression on 0-5), metric Spearman correlation on dev",
        kind="regression",
        num_labels=1,
        metric="spearman",
        reader=_read_stsb,
        lora_lr=4e-4,
    ),
    "mrpc": _glue(
        "mrpc",
        "MRPC",
        "GLUE MRPC paraphrase (sentence pairs, binary), metric accuracy on dev",
        reader=_read_mrpc,
        lora_lr=4e-4,
    ),
    "qqp": _glue(
        "qqp",
        "QQP",
        "GLUE QQP duplicate questions (pairs, binary), metric accuracy on dev",
        hub_fields=("question1", "question2", "label"),
        reader=_read_qqp,
        lora_lr=5e-4,
    ),
    "mnli": _glue(
        "mnli",
        "MNLI",
        "GLUE MNLI entailment (pairs, 3 classes), metric accuracy on dev_matched",
        num_labels=3,
        eval_files=(("dev_matched.tsv",),),
        hub_eval_split="validation_matched",
        hub_fields=("premise", "hypothesis", "label"),
        reader=_read_mnli,
        lora_lr=5e-4,
    ),
    "qnli": _glue(
        "qnli",
        "QNLI",
        "GLUE QNLI question answering as entailment (pairs, binary), metric accuracy on dev",
        hub_fields=("question", "sentence", "label"),
        reader=_read_qnli,
        lora_lr=4e-4,
    ),
    "wnli": _glue(
        "wnli",
        "WNLI",
        "GLUE WNLI coreference as entailment (pairs, binary), metric accuracy on dev",
        reader=_read_wnli,
        lora_lr=4e-4,  # not in Table 9: the rate set when WNLI was added (3e4b9c9), no source given
    ),
    "gsm8k": TaskSpec(
        "gsm8k",
        "causal-lm",
        0,
        "answer_loss",
        False,
        "stories260K",
        512,
        ("gsm8k", "GSM8K"),
        (("train.jsonl",),),
        (("test.jsonl",),),
        "GSM8K 'Question: ... Answer: ...' as causal LM, metric cross-entropy on answer tokens",
        # 256 of the 1,319 test problems: at ~380 tokens each a full pass costs as much as ~40
        # training steps on 2 CPU cores; the subset is fixed, so every run scores the same problems.
        default_eval_samples=256,
        hub_name="openai/gsm8k",
        hub_config="main",
        hub_eval_split="test",
        hub_fields=("question", "answer", None),
        reader=_read_gsm8k,
    ),
}


def gsm8k_prompt(question: str) -> str:
    """The prompt half of a GSM8K example: ``"Question: {question}\\nAnswer:"``; the answer text
    follows after one space. The same template is used for training and held-out evaluation."""
    return f"Question: {question.strip()}\nAnswer:"
