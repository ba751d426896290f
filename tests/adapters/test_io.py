"""Adapters on disk: our format round-trips bit for bit; PEFT loads the export on the original base."""

from __future__ import annotations

import json

import pytest
import torch

from lowrank_lab.adapters import (
    AdapterExportError,
    AdapterFileError,
    export_peft,
    inject,
    load_adapter,
    lowrank_modules,
    merge,
    save_adapter,
    trainable_parameters,
)


def _train_a_little(model, seed: int = 3) -> None:
    # Stand-in for training: perturb every trainable tensor so that nothing is at its init value.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype) * (p.abs().mean() + 1e-3))


@pytest.mark.parametrize("method", ["pissa", "slora", "loldu", "lora-xs", "full"])
def test_save_then_load_is_bit_exact(tiny, ids, tmp_path, method):
    model = tiny.make("llama")
    inject(model, method, rank=4, alpha=8)
    _train_a_little(model)
    out = tiny.run(model, ids)
    save_adapter(model, tmp_path / "ad")
    config = json.loads((tmp_path / "ad" / "lowrank_adapter.json").read_text())
    assert config["method"] == method and len(config["modules"]) == 14

    fresh = tiny.make("llama")
    report = load_adapter(fresh, tmp_path / "ad")
    assert (
        report.trainable == trainable_parameters(fresh) == trainable_parameters(model) == report.closed_form
    )
    saved, loaded = model.state_dict(), fresh.state_dict()
    assert saved.keys() == loaded.keys()
    for key in saved:
        assert torch.equal(saved[key], loaded[key]), key
    for name, layer in lowrank_modules(fresh).items():
        assert layer.trainable_parts == lowrank_modules(model)[name].trainable_parts
    assert torch.equal(tiny.run(fresh, ids), out)


def test_bf16_adapter_round_trips_in_bf16(tiny, tmp_path):
    model = tiny.make("bert", torch.bfloat16)
    inject(model, "milora", rank=3)
    save_adapter(model, tmp_path)
    fresh = tiny.make("bert", torch.bfloat16)
    load_adapter(fresh, tmp_path)
    for key, value in model.state_dict().items():
        assert value.dtype == fresh.state_dict()[key].dtype
        assert torch.equal(value, fresh.state_dict()[key]), key


def test_load_errors_name_the_problem(tiny, tmp_path):
    with pytest.raises(AdapterFileError, match="not a lowrank_lab adapter directory"):
        load_adapter(tiny.make("llama"), tmp_path)
    model = tiny.make("llama")
    inject(model, "lora", rank=2)
    save_adapter(model, tmp_path)
    with pytest.raises(AdapterFileError, match="is not in this model"):
        load_adapter(tiny.make("bert"), tmp_path)
    with pytest.raises(AdapterFileError, match="already carries adapters"):
        load_adapter(model, tmp_path)
    residual = tiny.make("llama")
    inject(residual, "pissa", rank=2, keep_init=False)
    with pytest.raises(AdapterFileError, match="keep_init=False"):
        save_adapter(residual, tmp_path / "x")
    with pytest.raises(AdapterFileError, match="carries no adapters"):
        save_adapter(tiny.make("llama"), tmp_path / "y")


# --- PEFT export ---------------------------------------------------------------------------------


def _peft_model(tiny, family, out_dir, base_dir):
    peft = pytest.importorskip("peft")
    base = type(tiny.make(family)).from_pretrained(base_dir).eval()
    return peft.PeftModel.from_pretrained(base, out_dir).eval()


@pytest.mark.parametrize(
    ("family", "method", "export_rank"),
    [
        ("llama", "lora", 4),
        ("llama", "pissa", 8),  # residual: [B, −B₀]·[A; A₀], rank 2r
        ("bert", "milora", 8),
        ("bert", "olora", 8),
        ("llama", "loldu", 8),  # residual with a diagonal core folded into A
        ("bert", "slora", 4),  # three matrices, M folded into A
        ("llama", "nlora", 4),
        ("llama", "lora-xs", 4),
    ],
)
def test_peft_loads_the_export_on_the_original_base_and_agrees(
    tiny, ids, tmp_path, family, method, export_rank
):
    original = tiny.make(family)
    original.save_pretrained(tmp_path / "base")
    model = tiny.make(family)
    inject(model, method, rank=4, alpha=8)  # s = 2, so a lost scaling would show
    _train_a_little(model)
    ours = tiny.run(model, ids)
    export_peft(model, tmp_path / "peft", base_model_name_or_path=str(tmp_path / "base"))
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["r"] == export_rank and config["lora_alpha"] / config["r"] == 2.0
    peft_model = _peft_model(tiny, family, tmp_path / "peft", tmp_path / "base")
    theirs = tiny.run(peft_model, ids)
    assert torch.allclose(theirs, ours, rtol=1e-4, atol=1e-4 * float(ours.abs().max()))
    # ... and PEFT's merge_and_unload gives the weights our merge gives.
    theirs_merged = peft_model.merge_and_unload().state_dict()
    for key, value in merge(model).state_dict().items():
        assert torch.allclose(theirs_merged[key], value, rtol=1e-5, atol=1e-5 * float(value.abs().max())), key


def test_gpt2_conv1d_layers_inject_merge_and_export(tiny, ids, tmp_path):
    peft = pytest.importorskip("peft")
    original = tiny.gpt2()
    original.save_pretrained(tmp_path / "base")
    model = tiny.gpt2()
    ref = tiny.run(model, ids)
    report = inject(model, "pissa", rank=3, targets="attn.c_attn,mlp.c_fc")
    assert [m.shape for m in report.modules[:2]] == [
        (96, 32),
        (128, 32),
    ]  # (out, in) although stored (in, out)
    assert torch.allclose(tiny.run(model, ids), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    _train_a_little(model)
    ours = tiny.run(model, ids)
    export_peft(model, tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    base = type(original).from_pretrained(tmp_path / "base").eval()
    theirs = tiny.run(peft.PeftModel.from_pretrained(base, tmp_path / "peft").eval(), ids)
    assert torch.allclose(theirs, ours, rtol=1e-4, atol=1e-4 * float(ours.abs().max()))
    merge(model)
    assert torch.allclose(tiny.run(model, ids), ours, rtol=1e-4, atol=1e-4 * float(ours.abs().max()))


def test_export_refuses_what_is_not_a_lora(tiny, tmp_path):
    model = tiny.make("llama")
    inject(model, "full")
    with pytest.raises(AdapterExportError, match="save_pretrained"):
        export_peft(model, tmp_path)
    residual = tiny.make("llama")
    inject(residual, "olora", rank=2, keep_init=False)
    with pytest.raises(AdapterExportError, match="keep_init=False"):
        export_peft(residual, tmp_path)
