"""``analyze`` on families beyond Llama/BERT: experts, fused projections, generic discovery, bad input.

Tiny random checkpoints that ``transformers`` builds from a config and saves; one rank, one method,
so each run takes a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from lowrank_lab.analyze import main

FAST = ["--ranks", "2", "--methods", "svd", "--device", "cpu", "--repeats", "1", "--warmup", "0"]
SMALL = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, vocab_size=32)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save(tmp_path_factory, model_type: str, **kwargs) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **SMALL, **kwargs))
    path = tmp_path_factory.mktemp(model_type)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory) -> Path:
    return _save(tmp_path_factory, "mixtral", num_key_value_heads=2, num_local_experts=3)


@pytest.fixture(scope="module")
def phi3(tmp_path_factory) -> Path:
    return _save(
        tmp_path_factory, "phi3", num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=1
    )


def _analyze(tmp_path: Path, model: Path, *extra: str) -> Path:
    out = tmp_path / "out"
    argv = ["--model", str(model), *FAST, "--out", str(out), "--no-figures", *extra]
    assert main(argv) == 0
    return out


def test_every_expert_is_a_matrix_with_its_index(tmp_path, mixtral):
    out = _analyze(tmp_path, mixtral, "--layers", "1", "--experts", "0,2")
    spectra = pd.read_csv(out / "spectra.csv")
    experts = spectra.dropna(subset=["expert"])
    # gate, up and down of experts 0 and 2 in layer 1; plus q, k, v, o and the router.
    assert sorted(experts.expert.astype(int)) == [0, 0, 0, 2, 2, 2]
    assert set(experts.role) == {"expert_gate", "expert_up", "expert_down"}
    assert len(spectra) == 6 + 5 and set(spectra.role) - set(experts.role) == {"q", "k", "v", "o", "router"}
    fact = pd.read_csv(out / "factorization.csv")
    assert len(fact) == len(spectra) and fact.expert.notna().sum() == 6
    assert json.loads((out / "run.json").read_text())["config"]["experts"] == "0,2"


def test_an_unknown_expert_exits_2_with_the_valid_range(tmp_path, mixtral, capsys):
    assert main(["--model", str(mixtral), *FAST, "--out", str(tmp_path / "out"), "--experts", "7"]) == 2
    err = capsys.readouterr().err
    assert "valid experts are 0-2" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_fused_matrices_are_labelled_and_split_on_request(tmp_path, phi3):
    out = _analyze(tmp_path, phi3, "--layers", "0", "--split-fused")
    spectra = pd.read_csv(out / "spectra.csv")
    assert list(spectra.module) == [
        "qkv_proj", "qkv_proj[q]", "qkv_proj[k]", "qkv_proj[v]", "o_proj",
        "gate_up_proj", "gate_up_proj[gate]", "gate_up_proj[up]", "down_proj",
    ]  # fmt: skip
    assert list(spectra.fused) == [True, False, False, False, False, True, False, False, False]
    assert list(spectra.m[:4]) == [32, 16, 8, 8]  # q 4 heads x 4, k and v 2 KV heads x 4
    plain = _analyze(tmp_path / "plain", phi3, "--layers", "0")
    assert list(pd.read_csv(plain / "spectra.csv").module) == [
        "qkv_proj",
        "o_proj",
        "gate_up_proj",
        "down_proj",
    ]


def test_no_config_json_is_analysed_generically_with_a_note(tmp_path, phi3, capsys):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(phi3, bare)
    (bare / "config.json").unlink()
    out = _analyze(tmp_path, bare, "--layers", "0")
    assert "note:" in capsys.readouterr().err
    spectra = pd.read_csv(out / "spectra.csv")
    assert set(spectra.role) == {"generic"} and len(spectra) == 4


def test_no_block_weights_exits_2_naming_what_was_found(tmp_path, capsys):
    from safetensors.torch import save_file

    flat = tmp_path / "flat"
    flat.mkdir()
    save_file({"wte.weight": torch.zeros(8, 4)}, str(flat / "model.safetensors"))
    (flat / "config.json").write_text(json.dumps({"model_type": "acme"}))
    assert main(["--model", str(flat), *FAST, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no 2-D weight inside a repeated block" in err and "wte.weight" in err
