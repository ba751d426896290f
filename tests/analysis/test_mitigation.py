"""Intruder mitigation (Shuttleworth et al. 2024; PEFT 0.22 ``reduce_intruder_dimension``): parity with
PEFT, the invariants of λ, bad input, and ``intruders --mitigate`` end to end."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers.tiny_models import tiny_bert

from lowrank_lab.analysis.intruders import find_intruders
from lowrank_lab.analysis.mitigation import (
    MitigationInputError,
    check_lambda,
    lambdas_with_reference,
    mitigate_update,
    parse_lambdas,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: The tiny BERT under the adapters here: 64 wide (128 intermediate), 2 heads, a 100-token vocabulary.
BERT = dict(hidden=64, heads=2, intermediate=128, vocab=100)


def _peft_bert(rank: int = 4, alpha: int = 8, seed: int = 0, scale: float = 0.5):
    """A tiny random BERT under a PEFT LoRA adapter on query/value with random B and A (as after
    training: both non-zero), large enough to plant intruders in most matrices."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    lora = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["query", "value"])
    model = get_peft_model(tiny_bert(seed, **BERT).train(), lora)
    g = torch.Generator().manual_seed(seed + 1)
    for _, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            for part in (layer.lora_A["default"], layer.lora_B["default"]):
                part.weight.data = torch.randn(part.weight.shape, generator=g) * scale
    return model


def _layers(model):
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


@pytest.mark.parametrize(
    ("lam", "dtype"),
    [(0.0, torch.float64), (0.5, torch.float64), (0.75, torch.float64), (1.0, torch.float64),
     (0.75, torch.float32), (0.5, torch.float32)],
)
def test_mitigated_weights_match_peft_reduce_intruder_dimension(lam, dtype):
    # float64 compares the arithmetic itself. In float32 both implementations sit about 2e-4 from the
    # float64 result at λ = 0 on this adapter (removing the intruders leaves a small, ill-conditioned
    # ΔW_mit, whose rank-r truncation amplifies rounding), so float32 parity is checked where the
    # problem is well conditioned, PEFT's default λ = 0.75 and 0.5.
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    model = _peft_bert().to(dtype)
    ours, counts = {}, []
    for name, layer in _layers(model):
        W0 = layer.get_base_layer().weight.detach().clone()
        B = layer.lora_B["default"].weight.detach().clone()
        A = layer.lora_A["default"].weight.detach().clone()
        s = layer.scaling["default"]
        ours[name] = mitigate_update(W0, s * B @ A, rank=4, scaling=s, lam=lam, factors=(B, A))
        counts.append(ours[name].count)
    assert sum(counts) > 0  # the random factors plant intruders: the comparison tests the arithmetic
    reduce_intruder_dimension(model, mitigation_lambda=lam, logging_sink=None)
    for name, layer in _layers(model):
        theirs = layer.get_delta_weight("intruder_reduced").detach()
        mine = ours[name].delta(dtype)
        assert float((mine - theirs).norm() / theirs.norm()) <= 1e-5, name
        if not ours[name].changed:
            continue  # λ = 1 keeps the factors; PEFT re-factors the same product (equal above)
        # the factors themselves, up to the sign of each rank-one term (an SVD's sign is free)
        B_p = layer.lora_B["intruder_reduced"].weight.detach()
        A_p = layer.lora_A["intruder_reduced"].weight.detach()
        sign = torch.sign((ours[name].B * B_p).sum(0))
        assert float((ours[name].B * sign - B_p).norm() / B_p.norm()) <= 1e-5
        assert float((ours[name].A * sign[:, None] - A_p).norm() / A_p.norm()) <= 1e-5


def _planted(m: int = 48, n: int = 32, strength: float = 6.0, seed: int = 0):
    """A base W0 and a rank-1 update along W0's bottom singular directions: one intruder."""
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(m, n, generator=g, dtype=torch.float64) / n**0.5
    U, S, Vh = torch.linalg.svd(W0, full_matrices=False)
    signs = torch.ones(12, dtype=torch.float64)
    signs[::2] = -1
    u = U[:, -12:] @ signs / 12**0.5
    v = Vh[-12:].T @ signs.flip(0) / 12**0.5
    return W0.float(), (strength * torch.outer(u, v)).float()


def test_lambda_zero_removes_the_intruder_and_one_keeps_the_update():
    W0, delta = _planted()
    before = find_intruders(W0, W0 + delta)["left"]
    assert before.count == 1 and before.intruder_ranks == [1]
    removed = mitigate_update(W0, delta, rank=1, lam=0.0)
    assert removed.changed and removed.intruder_ranks == [1]
    assert find_intruders(W0, W0 + removed.delta())["left"].count == 0
    B, A = torch.randn(48, 1), torch.randn(1, 32)
    kept = mitigate_update(W0, delta, rank=1, lam=1.0, factors=(B, A))
    assert not kept.changed and kept.B is B and kept.A is A  # λ = 1: the adapter as it was (as PEFT)
    # λ in between keeps part of the intruder component: a smaller update than the tuned one
    half = mitigate_update(W0, delta, rank=1, lam=0.5)
    assert float(removed.delta().norm()) < float(half.delta().norm()) < float(delta.norm())


def test_no_intruder_keeps_the_factors_and_the_split_is_even():
    W0, _ = _planted()
    B, A = 1e-3 * torch.randn(48, 2), torch.randn(2, 32)  # too small to change W0's top directions
    out = mitigate_update(W0, B @ A, rank=2, lam=0.0, factors=(B, A))
    assert out.count == 0 and not out.changed and out.B is B
    W0, delta = _planted(strength=8.0)
    m = mitigate_update(W0, delta + 0.05 * torch.randn(48, 32) @ torch.eye(32), rank=3, scaling=2.0, lam=0.3)
    assert m.B.shape == (48, 3) and m.A.shape == (3, 32)
    # √S on both sides: column i of B and row i of A have the same norm
    torch.testing.assert_close(m.B.norm(dim=0), m.A.norm(dim=1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "x"])
def test_lambda_outside_unit_interval_is_named(bad):
    with pytest.raises(MitigationInputError, match=r"lambda must be (in \[0, 1\]|a number)"):
        check_lambda(bad)
    with pytest.raises(MitigationInputError, match=r"--mitigate must be"):
        parse_lambdas(f"0.5,{bad}")
    W0, delta = _planted()
    with pytest.raises(MitigationInputError, match=r"\[0, 1\]|a number"):
        mitigate_update(W0, delta, rank=1, lam=bad)


def test_lambda_list_and_its_reference():
    assert parse_lambdas(" 0, 0.25,0.25 ,1") == [0.0, 0.25, 1.0]
    assert lambdas_with_reference([0.5, 1.0, 0.0]) == [1.0, 0.5, 0.0]
    with pytest.raises(MitigationInputError, match="comma list"):
        parse_lambdas(" , ")


def test_update_of_another_shape_is_named():
    W0, delta = _planted()
    with pytest.raises(MitigationInputError, match=r"query: the update is \(32, 48\) but the base weight"):
        mitigate_update(W0, delta.T, rank=1, name="query")


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peft_dirs(tmp_path_factory):
    """base/ (a tiny BERT), peft/ (a LoRA adapter with intruders on it), other/ (a wider BERT)."""
    root = tmp_path_factory.mktemp("mitigate")
    model = _peft_bert()
    model.save_pretrained(root / "peft")
    # the base _peft_bert drew, rebuilt plainly (under PEFT it saves base_layer names)
    tiny_bert(0, **BERT).save_pretrained(root / "base")
    tiny_bert(0, **{**BERT, "hidden": 96}).save_pretrained(root / "other")
    return root


def test_cli_mitigates_a_peft_adapter_as_peft_does(peft_dirs, tmp_path):
    from peft import PeftModel
    from peft.tuners.lora.intruders import reduce_intruder_dimension
    from transformers import BertModel

    from lowrank_lab import intruders

    out = tmp_path / "out"
    code = intruders.main(["--base", str(peft_dirs / "base"), "--adapter", str(peft_dirs / "peft"),
                           "--mitigate", "0.5", "--no-cache", "--no-figures", "--out", str(out)])
    assert code == 0
    table = pd.read_csv(out / "mitigation.csv")
    assert list(table["lambda"]) == [1.0, 0.5] and table["task_metric"].isna().all()  # no task: no score
    per = pd.read_csv(out / "mitigation_matrices.csv")
    assert len(per) == 2 * 4
    assert per.loc[per["lambda"] == 0.5, "intruders"].sum() == table["intruders"].iloc[1]
    base = peft_dirs / "base"
    ours = PeftModel.from_pretrained(BertModel.from_pretrained(base), out / "mitigated" / "lambda-0.5")
    theirs = PeftModel.from_pretrained(BertModel.from_pretrained(base), peft_dirs / "peft")
    reduce_intruder_dimension(theirs, mitigation_lambda=0.5, logging_sink=None)
    mine = {n: m.get_delta_weight("default") for n, m in _layers(ours)}
    for name, layer in _layers(theirs):
        ref = layer.get_delta_weight("intruder_reduced").detach()
        assert float((mine[name].detach() - ref).norm() / ref.norm()) <= 1e-5, name


def test_cli_bad_lambda_and_foreign_adapter_are_one_line(peft_dirs, tmp_path, capsys):
    from lowrank_lab import intruders

    base = ["--adapter", str(peft_dirs / "peft"), "--no-cache", "--no-figures"]
    code = intruders.main(["--base", str(peft_dirs / "base"), *base, "--mitigate", "0.5,1.2",
                           "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--mitigate must be in [0, 1]" in err and "1.2" in err
    code = intruders.main(["--base", str(peft_dirs / "other"), *base, "--mitigate", "0.5",
                           "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "was the adapter trained on this base?" in err and "query" in err


def _glue(root):
    """SST-2 and STS-B dev files in GLUE layout (a few lines each)."""
    s = root / "glue" / "sst2"
    s.mkdir(parents=True)
    words = ["a charming journey", "the worst film", "warm and funny", "a dull mess", "a delight", "boring"]
    text = "sentence\tlabel\n" + "".join(f"{words[i % 6]} {i}\t{int(i % 2 == 0)}\n" for i in range(24))
    for name in ("train.tsv", "dev.tsv"):  # the reader looks for a training file first
        s.joinpath(name).write_text(text)
    t = root / "glue" / "stsb"
    t.mkdir(parents=True)
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    sts = head + "".join(
        f"{i}\tmain\tf\t2012\t{i:04d}\tnone\tnone\tA dog runs {i} .\t"
        f"A dog {'runs' if i % 3 else 'sleeps'} .\t{(i % 6) * 0.8:.3f}\n" for i in range(24)
    )
    for name in ("train.tsv", "dev.tsv"):
        t.joinpath(name).write_text(sts)
    return root


@pytest.mark.slow
def test_cli_scores_a_fine_tuning_run_at_each_lambda(tmp_path):
    """A run folder of MiniLM with a rank-1 update planted in layer 0's query and value: λ = 1 scores
    the tuned model as it is; λ = 0 removes the planted intruders, and the forgetting with them."""
    from lowrank_lab import intruders
    from lowrank_lab.training.models import load_model
    from lowrank_lab.training.tasks import get_task

    data = _glue(tmp_path / "data")
    torch.manual_seed(0)
    model = load_model("minilm", get_task("sst2"), "mean")
    layer = model.backbone.encoder.layer[0].attention.self
    with torch.no_grad():
        for lin in (layer.query, layer.value):
            # a rank-one update along the matrix's own bottom singular directions, 3·σ₁ strong
            U, S, Vh = torch.linalg.svd(lin.weight.double(), full_matrices=False)
            u, v = U[:, -12:].sum(1) / 12**0.5, Vh[-12:].sum(0) / 12**0.5
            lin.weight += (3.0 * float(S[0]) * torch.outer(u, v)).float()
    run = tmp_path / "study" / "runs" / "lora-r1-seed0"
    model.save_pretrained(run / "merged")
    cfg = {"task": "sst2", "method": "lora", "model": "minilm", "seed": 0, "rank": 1, "pooling": "mean",
           "max_length": 32, "eval_batch_size": 16}
    record = {"config": cfg, "status": "finished", "final_metric": 0.5}
    run.joinpath("run.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    code = intruders.main(["--base", "minilm", "--tuned", str(run), "--layers", "0", "--targets",
                           "query,value", "--mitigate", "0", "--data-dir", str(data), "--no-cache",
                           "--out", str(out)])
    assert code == 0
    table = pd.read_csv(out / "mitigation.csv").set_index("lambda")
    assert list(table.index) == [1.0, 0.0]
    assert (table["run"] == "lora-r1-seed0").all() and (table["metric"] == "accuracy").all()
    assert table.loc[0.0, "mitigated_matrices"] == 2 and table.loc[0.0, "intruders"] >= 2
    assert table.loc[1.0, "recorded_metric"] == 0.5
    # λ = 0 takes the planted directions out again: the encoder is the base's, so nothing is forgotten
    assert table.loc[0.0, "forgetting"] == pytest.approx(0.0, abs=1e-3)
    assert abs(table.loc[1.0, "forgetting"]) > 1e-2  # the planted update moved the STS-B score
    assert table.loc[1.0, "intruders"] == table.loc[0.0, "intruders"]
    assert table.loc[1.0, "mitigated_matrices"] == 0
    assert (out / "mitigation_tradeoff.png").is_file()
    assert (out / "mitigated" / "lambda-0" / "adapter_model.safetensors").is_file()


def test_collected_tables_give_paired_effects(tmp_path):
    from lowrank_lab.analysis.intruder_tables import (
        MITIGATION_COLUMNS,
        collect_mitigation,
        mitigation_effects,
    )

    def table(run, seed, rows):
        base = {c: "" for c in MITIGATION_COLUMNS}
        frame = pd.DataFrame([{**base, "run": run, "seed": seed, "method": "lora", "metric": "accuracy",
                               "lambda": lam, "task_metric": acc, "forgetting": f} for lam, acc, f in rows])
        (tmp_path / run).mkdir()
        frame.to_csv(tmp_path / run / "mitigation.csv", index=False)

    table("lora-r8-seed0", 0, [(1.0, 0.85, 0.20), (0.5, 0.84, 0.12), (0.0, 0.80, 0.05)])
    table("lora-r8-seed1", 1, [(1.0, 0.86, 0.25), (0.5, 0.86, 0.20)])
    table("lora-r8-seed2", 2, [(0.5, 0.80, 0.10)])  # no λ = 1 reference: no paired effect
    frame = collect_mitigation(sorted(tmp_path.iterdir()))
    assert len(frame) == 6
    eff = mitigation_effects(frame).set_index(["run", "lambda"])
    assert len(eff) == 3 and ("lora-r8-seed2", 0.5) not in eff.index
    assert eff.loc[("lora-r8-seed0", 0.5), "task_cost"] == pytest.approx(0.01)
    assert eff.loc[("lora-r8-seed0", 0.0), "forgetting_reduction"] == pytest.approx(0.15)
    assert eff.loc[("lora-r8-seed1", 0.5), "task_cost"] == pytest.approx(0.0, abs=1e-12)
