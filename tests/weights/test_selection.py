"""The six weight-selection options as one record (issue 29, point 4): every source takes a
WeightSelection, open_source takes it or the six keywords (not both), and the package's modules
import each other directly, never through the package's __init__."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

import lowrank_lab.weights as weights
from lowrank_lab.weights import WeightSelection, get_spec, open_source
from lowrank_lab.weights.hf import HFCheckpointSource
from lowrank_lab.weights.llama2c import Llama2cAsHF, Llama2cSource
from lowrank_lab.weights.synthetic import SyntheticSource

from .llama2c_reference import write_random_llama2c

FIELDS = ("targets", "layers", "dtype", "device", "experts", "split_fused")


def _listing(source):
    return [(i.tensor, i.shape) for i in source.targets()]


def test_the_record_holds_the_six_options_with_the_old_defaults():
    assert tuple(f.name for f in dataclasses.fields(WeightSelection)) == FIELDS
    assert WeightSelection() == WeightSelection(None, None, None, None, None, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        WeightSelection().targets = "q_proj"  # type: ignore[misc]


@pytest.mark.parametrize(
    "chosen",
    [
        dict(targets="q_proj,v_proj", layers="0-1"),
        dict(targets=["down_proj"], layers=[1], dtype="float64"),
        dict(experts="none", layers="0"),
        dict(experts="0,2", layers="0", dtype=torch.float64, device="cpu"),
    ],
)
def test_selection_and_keywords_open_the_same_matrices(chosen):
    model = "mixtral-8x7b" if "experts" in chosen else "llama-7b"
    by_keywords = open_source(model, synthetic=True, **chosen)
    by_record = open_source(model, synthetic=True, selection=WeightSelection(**chosen))
    assert _listing(by_record) == _listing(by_keywords) and len(by_record) > 0
    assert by_record.selection == by_keywords.selection == WeightSelection(**chosen)
    for name in ("modules", "layers", "experts", "split_fused", "dtype", "device"):
        assert getattr(by_record, name) == getattr(by_keywords, name), name


def test_split_fused_through_the_record():
    chosen = dict(targets="qkv_proj", layers="0", split_fused=True)
    by_record = open_source("phi-3-mini", synthetic=True, selection=WeightSelection(**chosen))
    assert [i.shape for i in by_record.targets()] == [(9216, 3072), (3072, 3072), (3072, 3072), (3072, 3072)]
    assert _listing(by_record) == _listing(open_source("phi-3-mini", synthetic=True, **chosen))


@pytest.mark.parametrize("name", FIELDS)
def test_selection_with_a_keyword_is_refused_naming_it(name):
    value = {"split_fused": True, "dtype": "float64", "device": "cpu"}.get(name, "0")
    refusal = rf"either selection=WeightSelection\(\.\.\.\) or the keywords {name}, not"
    with pytest.raises(TypeError, match=refusal):
        open_source("llama-7b", synthetic=True, selection=WeightSelection(), **{name: value})


def test_bad_values_in_the_record_raise_as_the_keywords_do():
    for bad in (dict(layers="0-99"), dict(targets="nope"), dict(dtype="int8")):
        with pytest.raises(ValueError) as by_keywords:
            open_source("llama-7b", synthetic=True, **bad)
        with pytest.raises(ValueError) as by_record:
            open_source("llama-7b", synthetic=True, selection=WeightSelection(**bad))
        assert str(by_record.value) == str(by_keywords.value)


def test_each_source_takes_the_record(tiny_llama, tmp_path):
    chosen = WeightSelection(targets="q_proj,down_proj", layers="1", dtype=torch.float64)
    hf = HFCheckpointSource(tiny_llama[0], selection=chosen)
    assert hf.selection is chosen and [i.module for i in hf.targets()] == ["q_proj", "down_proj"]
    assert all(wm.weight.dtype == torch.float64 and wm.layer == 1 for wm in hf)

    synthetic = SyntheticSource(get_spec("llama-7b"), selection=chosen)
    assert [i.module for i in synthetic.targets()] == ["q_proj", "down_proj"]

    path = tmp_path / "m.bin"
    write_random_llama2c(path)
    native = Llama2cSource(path, selection=WeightSelection(targets="wq,w2", layers="0"))
    assert [i.module for i in native.targets()] == ["wq", "w2"]
    assert [i.module for i in Llama2cAsHF(native).targets()] == ["wq", "w2"]  # the view keeps the selection

    everything = SyntheticSource(get_spec("llama-7b"))  # no record: every matrix, stored dtype, CPU
    assert everything.selection == WeightSelection() and everything.layers is None
    assert everything.device == torch.device("cpu") and everything.dtype is None


def _imports_of_the_package_init(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if (node.level == 1 and node.module is None) or (node.level == 0 and node.module == weights.__name__):
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_no_module_of_the_package_imports_its_init():
    # The one upward arrow of issue 29 was llama2c.py reaching WeightMatrix and hf_module_suffixes
    # through lowrank_lab.weights; each module imports the module that defines what it uses.
    folder = Path(weights.__file__).parent
    modules = sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")
    assert len(modules) >= 8
    assert [hit for p in modules for hit in _imports_of_the_package_init(p)] == []
