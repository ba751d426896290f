"""A study resolves its model once (issue 29 point 4), and the resolved model loads what the name loads."""

from __future__ import annotations

import pytest
import torch
from weights.llama2c_reference import write_random_llama2c, write_tokenizer

from lowrank_lab.training import models
from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.models import ResolvedModel, load_model, load_tokenizer, resolve_model
from lowrank_lab.training.study import run_study
from lowrank_lab.training.tasks import get_task
from lowrank_lab.weights import ModelLocation
from lowrank_lab.weights import api as weights_api


def _count(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` by a wrapper that records each call's first argument."""
    calls, real = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args[0] if args else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


@pytest.fixture()
def bert_dir(tmp_path, tiny_bert, bert_tokenizer):
    """A tiny random BERT saved with MiniLM's tokenizer: a ``--model DIR`` as a user passes it."""
    path = tmp_path / "my-bert"
    torch.manual_seed(0)
    tiny_bert(2)().save_pretrained(path)
    bert_tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow  # trains one run and writes the study's summary and figures (~6 s)
def test_a_study_resolves_its_model_once(glue_dir, tmp_path, bert_dir, monkeypatch):
    # the registry as the weights layer asks it (the summary's claim gate reads the recorded name
    # through weights.registry itself, from run.json: that is no resolution of the model)
    lookups = _count(monkeypatch, weights_api, "lookup")
    located = _count(monkeypatch, weights_api, "locate")
    dirs = _count(monkeypatch, weights_api, "model_dir")
    pooled = _count(monkeypatch, models, "sentence_transformers_pooling")
    loaded = _count(monkeypatch, weights_api, "load_hf_model")
    monkeypatch.setattr(models, "locate", weights_api.locate)  # models imported the name itself
    monkeypatch.setattr(models, "load_hf_model", weights_api.load_hf_model)
    base = RunConfig(task="sst2", method="lora", model=str(bert_dir), steps=2, batch_size=4, eval_every=0,
                     rank=2, save_merged=False)  # fmt: skip
    res = run_study(base, ["lora"], [0], data_dir=glue_dir, out=tmp_path / "s", progress=False,
                    log=lambda m: None)  # fmt: skip
    (rec,) = res["records"]
    assert rec.status == "finished", rec.message
    assert located == [str(bert_dir)] and lookups == [str(bert_dir)]
    assert dirs == [] and pooled == [bert_dir]
    # the run's model came from the resolved location, not from the name again
    assert len(loaded) == 1 and isinstance(loaded[0], ModelLocation)
    # the record is as before: the name as given, the pooling the run used (no 1_Pooling: native)
    assert rec.config.model == str(bert_dir) and rec.config.pooling == "native"


@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_a_resolved_directory_loads_what_its_name_loads(bert_dir, task):
    spec = get_task(task)
    resolved = resolve_model(str(bert_dir), spec)
    assert isinstance(resolved, ResolvedModel)
    assert resolved.name == str(bert_dir) and resolved.spec is None and resolved.family is None
    assert resolved.directory == bert_dir and resolved.tokenizer == bert_dir and resolved.pooling is None
    by_name, by_resolved = load_tokenizer(str(bert_dir), spec), load_tokenizer(resolved, spec)
    assert by_name.get_vocab() == by_resolved.get_vocab()
    assert by_name("a film")["input_ids"] == by_resolved("a film")["input_ids"]
    torch.manual_seed(3)
    a = load_model(str(bert_dir), spec)
    torch.manual_seed(3)
    b = load_model(resolved, spec)
    assert type(a) is type(b) and b.config.num_labels == spec.num_labels
    _same_weights(a, b)  # the head too: both draw it from the same seed


def test_minilm_resolves_to_its_package_directory_and_mean_pooling():
    spec = get_task("sst2")
    resolved = resolve_model("minilm", spec)
    assert resolved.spec is not None and resolved.spec.name == "minilm" and resolved.family == "bert"
    assert resolved.pooling == "mean" and resolved.tokenizer == weights_api.minilm_dir()
    assert resolve_model("minilm", spec, "native").pooling is None
    assert resolve_model("minilm", get_task("gsm8k")).pooling is None  # a causal LM has no sentence head
    torch.manual_seed(0)
    a = load_model("minilm", spec)
    torch.manual_seed(0)
    b = load_model(resolved, spec)
    assert isinstance(b, models.PooledClassifier) and b.pooling == a.pooling == "mean"
    _same_weights(a, b)
    # a pooling given with a resolved model replaces its own, as it would for the name
    assert load_model(resolved, spec, "cls").pooling == "cls"


def test_a_llama2c_file_keeps_its_own_tokenizer_vocabulary(tmp_path):
    # A .bin path gives the tokenizer the size its file says (vocab None), as the name path did; only
    # the registry's stories260K is cut to the registry's 512.
    ckpt = tmp_path / "tiny.bin"
    write_random_llama2c(ckpt, vocab=40)
    pieces = [(bytes([65 + i % 26]) * (1 + i // 26), float(i)) for i in range(40)]
    write_tokenizer(tmp_path / "tokenizer.bin", pieces)
    spec = get_task("gsm8k")
    resolved = resolve_model(str(ckpt), spec)
    assert resolved.location.llama2c_file == ckpt and resolved.directory is None
    assert resolved.family == "llama2c" and resolved.tokenizer == tmp_path / "tokenizer.bin"
    assert resolved.tokenizer_vocab is None and resolved.pooling is None
    assert load_tokenizer(resolved).vocab == load_tokenizer(str(ckpt)).vocab == [p for p, _ in pieces]
    _same_weights(load_model(str(ckpt), spec), load_model(resolved, spec))


@pytest.mark.data
def test_stories260k_resolves_to_the_shared_checkpoint_and_tok512(stories260k):
    resolved = resolve_model("stories260K", get_task("gsm8k"))
    assert resolved.location.llama2c_file == stories260k
    assert resolved.tokenizer == stories260k.parent / "tok512.bin" and resolved.tokenizer_vocab == 512
    assert load_tokenizer(resolved).vocab == load_tokenizer("stories260K").vocab
    assert len(load_tokenizer(resolved)) == 512
    # the same file by path: its tokenizer keeps the file's own size, as before
    assert resolve_model(str(stories260k)).tokenizer_vocab is None


def test_an_unknown_model_is_named_once(tmp_path):
    with pytest.raises(models.ModelLoadError, match=r"--model 'llama7b' cannot be loaded: .*Did you mean"):
        resolve_model("llama7b", get_task("sst2"))
    with pytest.raises(models.ModelLoadError, match=r"no tokenizer for --model 'llama7b'"):
        load_tokenizer("llama7b")
