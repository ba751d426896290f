"""Bad input: every mistake is one of our errors, naming the file or tensor and what to do."""

from __future__ import annotations

import json
import struct

import pytest

from lowrank_lab.weights import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    MissingShardError,
    MissingTensorError,
    NotInCacheError,
    ShapeMismatchError,
    UnknownModelError,
    UnsupportedArchitectureError,
    WeightsError,
    model_dir,
    open_source,
)

from .llama2c_reference import write_random_llama2c


def _first_shard(directory):
    return sorted(directory.glob("model-*.safetensors"))[0]


def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointNotFoundError) as err:
        open_source(str(missing))
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)
    assert str(missing) in str(err.value)
    with pytest.raises(CheckpointNotFoundError, match="no such file"):
        open_source("./does/not/exist")


def test_unknown_name_suggests():
    with pytest.raises(UnknownModelError) as err:
        open_source("lama-7b")
    assert "llama-7b" in err.value.suggestions
    assert "Did you mean" in str(err.value)


def test_truncated_shard(llama_copy):
    shard = _first_shard(llama_copy)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    src = open_source(llama_copy)  # the index is fine; the header read finds the damage
    with pytest.raises(CorruptCheckpointError) as err:
        src.targets()
    assert shard.name in str(err.value) and "truncated" in str(err.value)
    assert "SafetensorError" not in type(err.value).__name__


def test_corrupt_header_single_file(bert_copy):
    (bert_copy / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CorruptCheckpointError, match="model.safetensors"):
        open_source(bert_copy).targets()


def test_shard_missing_from_disk(llama_copy):
    shard = _first_shard(llama_copy)
    shard.unlink()
    with pytest.raises(MissingShardError) as err:
        open_source(llama_copy)
    msg = str(err.value)
    assert shard.name in msg and "model.safetensors.index.json" in msg and "incomplete" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_index_names_a_tensor_its_shard_lacks(llama_copy):
    index_path = llama_copy / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = "model.layers.3.self_attn.q_proj.weight"
    other = next(f for f in sorted(set(index["weight_map"].values())) if f != index["weight_map"][name])
    index["weight_map"][name] = other
    index_path.write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError, match="different saves") as err:
        open_source(llama_copy).targets()
    assert name in str(err.value) and other in str(err.value)


def test_tensor_shape_disagrees_with_config(llama_copy):
    cfg_path = llama_copy / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["intermediate_size"] = 32  # the weights say 24
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ShapeMismatchError) as err:
        open_source(llama_copy).targets()
    msg = str(err.value)
    # Whichever FFN weight comes first: stored (24, 16) or (16, 24), the config implies 32 for the 24.
    assert "mlp." in msg and ("(24, 16)" in msg or "(16, 24)" in msg) and "32" in msg
    assert "config.json" in msg and "intermediate_size=32" in msg


def test_config_with_more_layers_than_weights(llama_copy):
    cfg_path = llama_copy / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_hidden_layers"] = 12
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(MissingTensorError, match="layer 11 q_proj") as err:
        open_source(llama_copy).targets()
    assert "model.layers.11.self_attn.q_proj.weight" in str(err.value)


def test_missing_config_reads_every_block_weight_with_a_note(llama_copy, tmp_path):
    (llama_copy / "config.json").unlink()
    src = open_source(llama_copy)
    assert src.family == "generic" and len(src.notes) == 1 and "no config.json" in src.notes[0]
    # The seven projections of each of the 11 layers, under their Hugging Face names.
    assert len(src) == 11 * 7 and {i.role for i in src.targets()} == {"generic"}
    # No table, so no block order: modules come in name order.
    assert [i.module for i in src.targets()[:7]] == sorted(
        ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"] + [f"self_attn.{x}_proj" for x in "qkvo"]
    )
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(CheckpointNotFoundError, match="no config.json"):
        open_source(empty)


def test_bad_config_json(llama_copy):
    (llama_copy / "config.json").write_text("{oops")
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        open_source(llama_copy)


def test_model_type_without_a_table_is_analysed_generically(llama_copy):
    cfg_path = llama_copy / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "model_type": "acme"}))
    src = open_source(llama_copy)
    assert src.family == "generic" and "'acme'" in src.notes[0] and "generic" in src.notes[0]
    assert "llama" in src.notes[0]  # lists the model types that have tables
    shapes = {i.module: i.shape for i in src.targets()}
    assert len(src) == 77 and shapes["self_attn.k_proj"] == (8, 16) and shapes["mlp.down_proj"] == (16, 24)


def test_no_block_weights_names_what_was_found(tmp_path):
    import torch
    from safetensors.torch import save_file

    d = tmp_path / "flat"
    d.mkdir()
    save_file(
        {"embed.weight": torch.zeros(4, 2), "norm.weight": torch.zeros(2)}, str(d / "model.safetensors")
    )
    with pytest.raises(UnsupportedArchitectureError) as err:
        open_source(d)
    msg = str(err.value)
    assert "no 2-D weight inside a repeated block" in msg and "Found 2 tensors" in msg
    assert "1 of rank 1, 1 of rank 2" in msg and "embed.weight" in msg


def test_shard_outside_the_checkpoint_is_refused(llama_copy, tmp_path):
    index_path = llama_copy / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(_first_shard(llama_copy).read_bytes())
    for bad in ("../elsewhere.safetensors", str(outside)):
        index["weight_map"]["model.layers.0.self_attn.q_proj.weight"] = bad
        index_path.write_text(json.dumps(index))
        with pytest.raises(CorruptCheckpointError, match="inside") as err:
            open_source(llama_copy)
        assert bad in str(err.value) and "model.layers.0.self_attn.q_proj.weight" in str(err.value)


def test_no_weight_files(tmp_path, tiny_llama):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "config.json").write_text((tiny_llama[0] / "config.json").read_text())
    with pytest.raises(CheckpointNotFoundError, match="no weights") as err:
        open_source(d)
    assert "model.safetensors" in str(err.value) and "pytorch_model.bin" in str(err.value)


def test_corrupt_bin(tmp_path, tiny_llama):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((tiny_llama[0] / "config.json").read_text())
    (d / "pytorch_model.bin").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(CorruptCheckpointError, match="pytorch_model.bin"):
        open_source(d).targets()


def test_weight_file_instead_of_directory(tiny_bert):
    with pytest.raises(WeightsError, match="pass its directory"):
        open_source(tiny_bert[0] / "model.safetensors")


def test_hub_id_not_in_cache_offline():
    with pytest.raises(NotInCacheError) as err:
        open_source("acme/not-there")
    msg = str(err.value)
    # the installed huggingface_hub ships `hf` only (issue 31): no `huggingface-cli` in the advice
    assert "hf download acme/not-there" in msg and "huggingface-cli" not in msg
    assert "models--acme--not-there" in msg and "HF_HUB_OFFLINE" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_registry_model_absent_suggests_synthetic():
    with pytest.raises(NotInCacheError) as err:
        open_source("llama-7b")
    assert "meta-llama/Llama-2-7b-hf" in str(err.value) and "--synthetic" in str(err.value)
    with pytest.raises(NotInCacheError):
        model_dir("roberta-base")


def test_llama2c_truncated(tmp_path):
    path = tmp_path / "m.bin"
    write_random_llama2c(path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CorruptCheckpointError, match="truncated") as err:
        open_source(path)
    assert str(path) in str(err.value)


def test_llama2c_bad_header_and_v1_magic(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(struct.pack("<7i", 64, 0, -1, 3, 5, 0, 0) + b"\x00" * 64)
    with pytest.raises(CorruptCheckpointError, match="not a llama2.c checkpoint header"):
        open_source(path)
    path.write_bytes(struct.pack("<Ii", 0x616B3432, 1) + b"\x00" * 300)
    with pytest.raises(CorruptCheckpointError, match="version 0"):
        open_source(path)


def test_bad_selection_names_valid_options(tiny_llama):
    with pytest.raises(ValueError, match="q_proj, k_proj"):
        open_source(tiny_llama[0], targets="query")
    with pytest.raises(ValueError, match="0-10"):
        open_source(tiny_llama[0], layers="11")
    with pytest.raises(ValueError, match="unknown dtype"):
        open_source(tiny_llama[0], dtype="int7")


def test_torch_file_is_not_taken_for_llama2c(tmp_path):
    import torch

    path = tmp_path / "model.bin"
    torch.save({"w": torch.zeros(2, 2)}, path)
    with pytest.raises(CorruptCheckpointError, match="PyTorch checkpoint"):
        open_source(path)


def test_stories260k_absent_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_LAB_SHARED_DATA", str(tmp_path))
    with pytest.raises(CheckpointNotFoundError) as err:
        open_source("stories260K")
    msg = str(err.value)
    assert (
        str(tmp_path / "models" / "stories260K" / "stories260K.bin") in msg
        and "LOWRANK_LAB_SHARED_DATA" in msg
    )
    # Shapes need no weights.
    assert len(open_source("stories260K", synthetic=True)) == 35
