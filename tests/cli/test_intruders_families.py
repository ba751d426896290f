"""``intruders`` on a mixture of experts (one matrix per expert, ``--experts``) and on fused
projections (``--split-fused``): base and tuned of one family, saved by ``transformers``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from lowrank_lab import intruders as cli

SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, vocab_size=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _plant(W: torch.Tensor, strength: float = 5.0, bottom: int = 8) -> torch.Tensor:
    """W + σ·u·vᵀ with u, v spread over W's bottom singular vectors: an intruder by construction."""
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    p = S.shape[0]
    u = U[:, p - bottom :].sum(1) / bottom**0.5
    v = Vh[p - bottom :].sum(0) / bottom**0.5
    return (W.double() + strength * torch.outer(u, v)).to(W.dtype)


def _pair(root: Path, model_type: str, plant, **kwargs) -> tuple[Path, Path]:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **SMALL, **kwargs)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config)
    base.save_pretrained(root / f"{model_type}-base")
    with torch.no_grad():
        plant(base)
    base.save_pretrained(root / f"{model_type}-tuned")
    return root / f"{model_type}-base", root / f"{model_type}-tuned"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("intruder_families")

    def phi3(model):
        w = model.model.layers[0].self_attn.qkv_proj.weight
        w.copy_(_plant(w))

    def mixtral(model):
        down = model.model.layers[0].mlp.experts.down_proj  # (experts, hidden, inner)
        down[1].copy_(_plant(down[1]))

    return {
        "phi3": _pair(
            root, "phi3", phi3, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=1
        ),
        "mixtral": _pair(root, "mixtral", mixtral, num_key_value_heads=2, num_local_experts=3),
    }


def _run(tmp_path: Path, base: Path, tuned: Path, *args: str) -> pd.DataFrame:
    out = tmp_path / "out"
    argv = ["--base", str(base), "--tuned", str(tuned), "--top-k", "4", "--out", str(out)]
    code = cli.main([*argv, "--cache-dir", str(tmp_path / "cache"), "--no-figures", *args])
    assert code == 0
    return pd.read_csv(out / "intruders.csv", keep_default_na=False)


def test_each_expert_is_compared_with_its_own_base(tmp_path, models):
    rows = _run(tmp_path, *models["mixtral"], "--experts", "1", "--side", "left")
    experts = rows[rows.expert != ""]
    assert set(experts.expert.astype(int)) == {1}  # --experts 1: no row of experts 0 and 2
    counts = experts.groupby("module")["count"].max()
    assert counts["experts.w2"] >= 1  # the planted intruder, in expert 1's down projection
    assert counts["experts.w1"] == 0 and counts["experts.w3"] == 0


def test_fused_projection_and_its_parts(tmp_path, models):
    rows = _run(tmp_path, *models["phi3"], "--split-fused", "--side", "left")
    modules = list(dict.fromkeys(rows.module))
    assert modules[:4] == ["qkv_proj", "qkv_proj[q]", "qkv_proj[k]", "qkv_proj[v]"]
    count = rows.groupby("module")["count"].max()
    assert count["qkv_proj"] >= 1 and count["o_proj"] == 0 and count["down_proj"] == 0
    assert set(rows[rows.module == "qkv_proj[k]"].rows) == {16}  # 2 KV heads x head_dim 8
