"""The classification head on a pooled sentence vector (issue 15: MiniLM was trained with mean pooling)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lowrank_lab.training.models import (
    ModelLoadError,
    PooledClassifier,
    resolve_pooling,
    sentence_transformers_pooling,
)


def _batch(tok, texts, pad_to=None):
    enc = tok(texts, padding="max_length" if pad_to else True, max_length=pad_to, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def test_mean_pooling_is_the_mean_over_non_padding_tokens(tiny_pooled, bert_tokenizer):
    torch.manual_seed(0)
    model = tiny_pooled(2, "mean")().eval()
    batch = _batch(bert_tokenizer, ["a short one", "a much longer sentence than the first one"])
    pooled = model.pool(**batch)
    hidden = model.backbone(**batch).last_hidden_state
    for b in range(2):
        n = int(batch["attention_mask"][b].sum())
        torch.testing.assert_close(pooled[b], hidden[b, :n].mean(0))


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "pooler"])
def test_padding_does_not_change_the_logits(tiny_pooled, bert_tokenizer, pooling):
    torch.manual_seed(0)
    model = tiny_pooled(3, pooling)().eval()
    tight = model(**_batch(bert_tokenizer, ["the film was fine"])).logits
    padded = model(**_batch(bert_tokenizer, ["the film was fine"], pad_to=24)).logits
    assert tight.shape == (1, 3)
    torch.testing.assert_close(tight, padded, rtol=1e-5, atol=1e-6)


def test_head_init_and_save_keep_the_base_tensor_names(tiny_pooled, tmp_path):
    torch.manual_seed(0)
    model = tiny_pooled(2, "mean")()
    assert model.classifier.bias.abs().sum() == 0
    assert 0.01 < float(model.classifier.weight.std()) < 0.03  # N(0, initializer_range = 0.02)
    model.save_pretrained(tmp_path)
    names = set(load_file(str(tmp_path / "model.safetensors")))
    assert "encoder.layer.0.attention.self.query.weight" in names  # what a BertModel checkpoint has
    assert not any(n.startswith(("backbone.", "classifier.")) for n in names)
    assert set(load_file(str(tmp_path / "classifier.safetensors"))) == {"weight", "bias"}


def _st_dir(tmp_path, flags, modules=True):
    (tmp_path / "1_Pooling").mkdir(parents=True)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 8, **flags}))
    if modules:
        (tmp_path / "modules.json").write_text(
            json.dumps([{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
                        {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])
        )
    return tmp_path


@pytest.mark.parametrize(
    ("flag", "mode"),
    [
        ("pooling_mode_mean_tokens", "mean"),
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_max_tokens", "max"),
    ],
)
def test_sentence_transformers_config_names_the_pooling(tmp_path, flag, mode):
    assert sentence_transformers_pooling(_st_dir(tmp_path, {flag: True})) == mode


def test_no_sentence_transformers_config_means_the_native_head(tmp_path):
    assert sentence_transformers_pooling(tmp_path) is None


def test_ambiguous_or_broken_pooling_configs_are_named(tmp_path):
    both = _st_dir(tmp_path / "a", {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True})
    with pytest.raises(ModelLoadError, match="asks for .* pooling mode.*pass --pooling explicitly"):
        sentence_transformers_pooling(both)
    broken = _st_dir(tmp_path / "b", {}, modules=False)
    (broken / "1_Pooling" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"1_Pooling/config.json is not valid JSON"):
        sentence_transformers_pooling(broken)


def test_minilm_defaults_to_mean_and_native_means_the_transformers_head():
    assert resolve_pooling("minilm", None) == "mean"  # its 1_Pooling/config.json
    assert resolve_pooling("minilm", "native") is None
    assert resolve_pooling("minilm", "cls") == "cls"
    with pytest.raises(ModelLoadError, match="--pooling 'avg' is not one of"):
        resolve_pooling("minilm", "avg")
    with pytest.raises(ValueError, match="pooling 'avg' is not one of"):
        PooledClassifier(torch.nn.Linear(1, 1), 2, "avg")


def test_labels_give_the_loss_transformers_heads_give(tiny_pooled, bert_tokenizer):
    torch.manual_seed(0)
    batch = _batch(bert_tokenizer, ["good", "bad film"])
    clf = tiny_pooled(3, "mean")().eval()
    out = clf(**batch, labels=torch.tensor([0, 2]))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2])))
    reg = tiny_pooled(1, "mean")().eval()
    scores = torch.tensor([1.5, 4.0])
    out = reg(**batch, labels=scores)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), scores))
    assert reg(**batch).loss is None
