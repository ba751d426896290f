"""The packaged all-MiniLM-L6-v2: the offline default model."""

from __future__ import annotations

import math

import torch

from lowrank_lab.weights import get_spec, load_hf_model, model_dir, open_source

MODULES = ["query", "key", "value", "attention-output", "intermediate", "output"]


def test_minilm_has_36_target_matrices_in_order():
    src = open_source("minilm")
    infos = src.targets()
    assert src.name == "minilm" and src.family == "bert" and not src.synthetic
    assert src.spec.hub_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(infos) == 36
    assert [(i.layer, i.module) for i in infos] == [(lay, m) for lay in range(6) for m in MODULES]
    assert infos[0].tensor == "encoder.layer.0.attention.self.query.weight"
    assert {i.module: i.shape for i in infos[:6]} == get_spec("minilm").target_shapes()


def test_minilm_weights_are_real_and_float32():
    wm = next(iter(open_source("minilm", targets="intermediate", layers="5")))
    assert wm.weight.dtype == torch.float32 and wm.shape == (1536, 384)
    # Trained weights, not an init: a random N(0, 0.02²) matrix would have ‖W‖_F ≈ 0.02·sqrt(m n) ≈ 15.3.
    assert abs(float(torch.linalg.matrix_norm(wm.weight)) - 15.3) > 1.0


def test_minilm_parameter_count_equals_the_file():
    from safetensors import safe_open

    path = model_dir("minilm") / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        total = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if k != "embeddings.position_ids")
    assert get_spec("minilm").num_parameters() == total == 22_713_216


def test_load_hf_model_heads_share_the_source_weights():
    model = load_hf_model("minilm", head="sequence-classification", num_labels=3)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.classifier.out_features == 3 and not model.training
    wm = next(iter(open_source("minilm", targets="query", layers="0")))
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, wm.weight)
    base = load_hf_model("minilm")
    assert type(base).__name__ == "BertModel"
