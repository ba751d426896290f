"""``python -m lowrank_lab.intruders`` end to end on tiny Hugging Face BERTs saved to tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from lowrank_lab import intruders as cli
from lowrank_lab.analysis import intruder_tables
from lowrank_lab.analysis import intruders as ix

QUERY0 = "encoder.layer.0.attention.self.query.weight"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny matrices: intra-op threads buy nothing, and oversubscribed OpenMP threads on the shared
    # 2-core runner made SVDs ~20x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _bert(seed: int, hidden: int = 48, layers: int = 2):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
    )
    return BertModel(cfg).eval()


def _plant(W: torch.Tensor, strength: float = 5.0, bottom: int = 24) -> torch.Tensor:
    """W + σ·u·vᵀ with u, v spread over W's bottom singular vectors: one intruder, by construction."""
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    p = S.shape[0]
    signs = torch.ones(bottom, dtype=torch.float64)
    signs[::2] = -1
    u = U[:, p - bottom :] @ signs / bottom**0.5
    v = Vh[p - bottom :].T @ signs.flip(0) / bottom**0.5
    return (W.double() + strength * torch.outer(u, v)).to(W.dtype)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """base/, tuned/ (one planted intruder in layer 0's query), run/merged/, peft/ and merged_peft/."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("intruders_models")
    base = _bert(0)
    base.save_pretrained(root / "base")
    tuned = _bert(0)
    with torch.no_grad():
        q = tuned.encoder.layer[0].attention.self.query.weight
        q.copy_(_plant(q))
    tuned.save_pretrained(root / "tuned")
    # A harness run saves the fine-tuned model with its head: tensors are prefixed "bert.".
    from transformers import BertForSequenceClassification

    with_head = BertForSequenceClassification(tuned.config)
    with_head.bert.load_state_dict(tuned.state_dict())
    with_head.save_pretrained(root / "run" / "merged")
    (root / "run" / "metrics.jsonl").write_text("{}\n")

    peft_model = get_peft_model(_bert(0), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, mod in peft_model.named_modules():
            if hasattr(mod, "lora_B") and "default" in getattr(mod, "lora_B", {}):
                scale = 0.3 if "layer.0." in name else 0.002
                mod.lora_B["default"].weight.copy_(
                    scale * torch.randn(mod.lora_B["default"].weight.shape, generator=g)
                )
    peft_model.save_pretrained(root / "peft")
    peft_model.merge_and_unload().save_pretrained(root / "merged_peft")

    small = _bert(0, hidden=32)
    small.save_pretrained(root / "other_arch")
    return {k: root / k for k in ("base", "tuned", "run", "peft", "merged_peft", "other_arch")}


def _run(tmp_path: Path, *args: str, out: str = "out", figures: bool = False) -> tuple[int, Path]:
    out_dir = tmp_path / out
    # Figures cost 1-3 s a run; one test checks them, the others ask for none.
    extra = [] if figures else ["--no-figures"]
    code = cli.main([*args, "--out", str(out_dir), "--cache-dir", str(tmp_path / "cache"), *extra])
    return code, out_dir


def test_planted_intruder_found_and_every_output_written(tmp_path, models):
    code, out = _run(
        tmp_path, "--base", str(models["base"]), "--tuned", str(models["tuned"]), "--sweep", figures=True
    )
    assert code == 0
    df = pd.read_csv(out / "intruders.csv")
    assert list(df.columns) == list(intruder_tables.ROW_COLUMNS)
    assert df.tensor.nunique() == 12  # 2 layers × 6 module types
    assert len(df) == 12 * 10 and sorted(df["rank"].unique()) == list(range(1, 11))
    per = df.groupby("tensor").intruder.sum()
    assert per[QUERY0] == 1 and per.drop(QUERY0).sum() == 0
    q = df[df.tensor == QUERY0].set_index("rank")
    assert q.loc[1, "intruder"] == 1 and q.loc[1, "count"] == 1 and q.loc[1, "similarity"] < 0.5
    assert (df[df.tensor != QUERY0].similarity > 0.999).all()  # untouched matrices: the same vectors

    summary = (out / "summary.md").read_text()
    assert "Totals per module type" in summary and "Count against ε" in summary
    sweep = pd.read_csv(out / "sweep.csv")
    assert sorted(sweep.epsilon.unique()) == pytest.approx([0.1 * i for i in range(1, 10)])
    assert "all" not in set(sweep.module)  # tidy: totals are a groupby away
    total = sweep.groupby("epsilon")["count"].sum()
    assert total.loc[0.5] == 1 and total.is_monotonic_increasing
    assert (out / "count_vs_epsilon.png").stat().st_size > 0
    assert (out / "similarity_encoder.layer.0.attention.self.query.png").stat().st_size > 0
    meta = json.loads((out / "run.json").read_text())
    assert meta["intruders"] == {"left": 1} and meta["matrices"] == 12
    assert meta["cache"]["misses"] == 12 and meta["cache"]["hits"] == 0
    assert meta["git_commit"] is not None or meta["git_commit"] is None  # recorded (None outside git)
    assert "versions" in meta and "wall_seconds" in meta


def test_warm_cache_pays_no_base_svd(tmp_path, models, monkeypatch):
    args = ["--base", str(models["base"]), "--tuned", str(models["tuned"]), "--tuned-svd", "randomized"]
    assert _run(tmp_path, *args, out="cold")[0] == 0
    calls = []
    real = ix.truncated_svd
    monkeypatch.setattr(ix, "truncated_svd", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    code, out = _run(tmp_path, *args, out="warm")
    assert code == 0 and calls == []
    meta = json.loads((out / "run.json").read_text())
    assert meta["cache"] == {"dir": str(tmp_path / "cache"), "hits": 12, "misses": 0}
    cold = pd.read_csv(tmp_path / "cold" / "intruders.csv")
    warm = pd.read_csv(out / "intruders.csv")
    pd.testing.assert_frame_equal(cold, warm)


def test_run_directory_reads_merged_with_a_head(tmp_path, models):
    code, out = _run(tmp_path, "--base", str(models["base"]), "--tuned", str(models["run"]))
    assert code == 0
    df = pd.read_csv(out / "intruders.csv")
    per = df.groupby("tensor").intruder.sum()
    assert per[QUERY0] == 1 and per.sum() == 1 and len(per) == 12  # paired by (layer, module) across "bert."
    meta = json.loads((out / "run.json").read_text())
    assert meta["tuned_weights"]["tuned_kind"] == "run"


def test_peft_adapter_equals_the_merged_checkpoint(tmp_path, models):
    code, out_a = _run(
        tmp_path, "--base", str(models["base"]), "--adapter", str(models["peft"]), "--side", "both", out="a"
    )
    assert code == 0
    code, out_m = _run(
        tmp_path,
        "--base",
        str(models["base"]),
        "--tuned",
        str(models["merged_peft"]),
        "--side",
        "both",
        out="m",
    )
    assert code == 0
    a = pd.read_csv(out_a / "intruders.csv").groupby(["tensor", "side"])["intruder"].sum()
    m = pd.read_csv(out_m / "intruders.csv").groupby(["tensor", "side"])["intruder"].sum()
    pd.testing.assert_series_equal(a, m)
    assert a.sum() > 0
    meta = json.loads((out_a / "run.json").read_text())
    assert meta["tuned_weights"]["adapter_format"] == "peft" and meta["tuned_weights"]["modules_matched"] == 4
    # --tuned pointing at the adapter directory means the same thing
    code, out_t = _run(
        tmp_path, "--base", str(models["base"]), "--tuned", str(models["peft"]), "--side", "both", out="t"
    )
    assert code == 0
    t = pd.read_csv(out_t / "intruders.csv").groupby(["tensor", "side"])["intruder"].sum()
    pd.testing.assert_series_equal(a, t)


def test_targets_and_layers_select_matrices(tmp_path, models):
    code, out = _run(
        tmp_path,
        "--base",
        str(models["base"]),
        "--tuned",
        str(models["tuned"]),
        "--targets",
        "query,value",
        "--layers",
        "0",
    )
    assert code == 0
    df = pd.read_csv(out / "intruders.csv")
    assert sorted(df.tensor.unique()) == [QUERY0, "encoder.layer.0.attention.self.value.weight"]


def test_resume_computes_only_missing_matrices(tmp_path, models):
    args = ["--base", str(models["base"]), "--tuned", str(models["tuned"])]
    assert _run(tmp_path, *args)[0] == 0
    csv = tmp_path / "out" / "intruders.csv"
    full = csv.read_text()
    lines = full.splitlines(keepends=True)
    csv.write_text("".join(lines[: 1 + 35]) + lines[36][:20])  # 3.5 matrices, a torn last line
    code, out = _run(tmp_path, *args, "--resume")
    assert code == 0
    meta = json.loads((out / "run.json").read_text())
    assert meta["computed"] == 9  # 12 − 3 complete ones
    a = pd.read_csv(csv).sort_values(["tensor", "rank"]).reset_index(drop=True)
    b = pd.read_csv(pd.io.common.StringIO(full)).sort_values(["tensor", "rank"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_resume_with_other_settings_is_refused(tmp_path, models, capsys):
    args = ["--base", str(models["base"]), "--tuned", str(models["tuned"]), "--layers", "0"]
    assert _run(tmp_path, *args)[0] == 0
    code, _ = _run(tmp_path, *args, "--resume", "--epsilon", "0.3")
    assert code == 2
    assert "--epsilon 0.5, not 0.3" in capsys.readouterr().err
    code, _ = _run(tmp_path, *args, "--resume", "--top-k", "5")
    assert code == 2 and "--top-k 10, not 5" in capsys.readouterr().err
    code, _ = _run(
        tmp_path, "--base", str(models["base"]), "--tuned", str(models["tuned"]), "--layers", "1", "--resume"
    )
    assert code == 2 and "do not select now" in capsys.readouterr().err
    code, _ = _run(
        tmp_path, "--base", str(models["base"]), "--tuned", str(models["run"]), "--layers", "0", "--resume"
    )
    assert code == 2 and "--tuned" in capsys.readouterr().err
    # widening to both sides keeps the left rows and adds the right ones
    code, out = _run(tmp_path, *args, "--resume", "--side", "both")
    assert code == 0
    assert json.loads((out / "run.json").read_text())["computed"] == 6


def test_resume_with_a_changed_option_is_refused_naming_it(tmp_path, models, capsys):
    # --seed is in no row of intruders.csv: run.json's config record (options.check_resume) catches it
    args = ["--base", str(models["base"]), "--tuned", str(models["tuned"]), "--layers", "0"]
    assert _run(tmp_path, *args)[0] == 0
    csv = tmp_path / "out" / "intruders.csv"
    rows = csv.read_bytes()
    capsys.readouterr()
    code, out = _run(tmp_path, *args, "--resume", "--seed", "1")
    assert code == 2
    err = _one_line_error(capsys)
    assert f"cannot resume in {out}: options differ from the stored run (--seed 1 (stored 0))" in err
    assert csv.read_bytes() == rows
    # options that change no row may differ: threads, figures, the cache's folder, the ε sweep
    code = cli.main([*args, "--out", str(out), "--resume", "--threads", "1", "--sweep", "--no-figures",
                     "--cache-dir", str(tmp_path / "other-cache")])
    assert code == 0 and json.loads((out / "run.json").read_text())["computed"] == 0
    assert csv.read_bytes() == rows and (out / "sweep.csv").exists()


def test_a_run_json_from_before_the_config_record_still_resumes(tmp_path, models, capsys):
    # reports/ holds runs whose run.json has no "config": resumed as before, their weights compared
    args = ["--base", str(models["base"]), "--tuned", str(models["tuned"]), "--layers", "0"]
    assert _run(tmp_path, *args)[0] == 0
    path = tmp_path / "out" / "run.json"
    meta = json.loads(path.read_text())
    del meta["config"]
    path.write_text(json.dumps(meta))
    code, out = _run(tmp_path, *args, "--resume", "--seed", "1")
    assert code == 0 and json.loads(path.read_text())["computed"] == 0
    path.write_text(json.dumps(meta))
    capsys.readouterr()
    code, _ = _run(tmp_path, "--base", str(models["base"]), "--tuned", str(models["run"]), "--layers", "0",
                   "--resume")
    assert code == 2 and f"it was made with --tuned {str(models['tuned'])!r}" in _one_line_error(capsys)


def test_the_library_entry_point_runs_without_the_command_line(tmp_path, models):
    """run(config) from a notebook: the tables as DataFrames, the files as paths, the rows the CLI writes."""
    import dataclasses

    from lowrank_lab.analysis.intruders_run import IntrudersConfig, run
    from lowrank_lab.utils import options

    config = IntrudersConfig(base=str(models["base"]), tuned=str(models["tuned"]), layers="0", sweep=True,
                             no_figures=True, cache_dir=str(tmp_path / "cache"))
    result = run(config, out=tmp_path / "lib")
    assert result.out == tmp_path / "lib" and result.rank == 0
    assert result.paths["intruders.csv"] == tmp_path / "lib" / "intruders.csv"
    assert sorted(result.paths) == ["intruders.csv", "skipped.csv", "summary.md", "sweep.csv"]
    pd.testing.assert_frame_equal(result.intruders, pd.read_csv(result.paths["intruders.csv"]))
    assert result.per_matrix.set_index("tensor")["count"][QUERY0] == 1  # the planted intruder
    assert result.record["intruders"] == {"left": 1} and result.mitigation is None
    stored = json.loads((tmp_path / "lib" / "run.json").read_text())["config"]
    assert stored == options.to_dict(dataclasses.replace(config, out=str(tmp_path / "lib")))
    code, out = _run(tmp_path, *options.to_argv(config), out="cli")
    assert code == 0 and (out / "intruders.csv").read_bytes() == result.paths["intruders.csv"].read_bytes()
    with pytest.raises(ValueError, match="give the fine-tuned weights: --tuned PATH, or --adapter PATH"):
        run(IntrudersConfig(base=str(models["base"])), out=tmp_path / "none")
    with pytest.raises(ValueError, match=r"--epsilon must be in \(0, 1\]"):
        IntrudersConfig(base="minilm", tuned="t", epsilon=1.5)


@pytest.mark.parametrize("method", ["lora", "pissa"])
def test_toolkit_adapter_equals_its_merged_model(tmp_path, models, method):
    """A lowrank_lab adapter (save_adapter) merged on the fly gives the counts of the merged model
    saved as a checkpoint — also for a residual method, whose base is W − s·B₀A₀."""
    from lowrank_lab.adapters import inject, merge, save_adapter
    from lowrank_lab.weights import load_hf_model

    model = load_hf_model(models["base"])
    inject(model, method, rank=4, targets="query,value", generator=0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_((0.5 if "layer.0." in name else 0.01) * torch.randn(p.shape, generator=g))
    save_adapter(model, tmp_path / "adapter")
    merge(model)
    model.save_pretrained(tmp_path / "merged")
    code, out_a = _run(
        tmp_path, "--base", str(models["base"]), "--adapter", str(tmp_path / "adapter"), out="a"
    )
    assert code == 0
    code, out_m = _run(tmp_path, "--base", str(models["base"]), "--tuned", str(tmp_path / "merged"), out="m")
    assert code == 0
    a = pd.read_csv(out_a / "intruders.csv")
    m = pd.read_csv(out_m / "intruders.csv")
    pd.testing.assert_series_equal(a.intruder, m.intruder)
    pd.testing.assert_series_equal(a.similarity, m.similarity, atol=1e-5, rtol=0)
    assert a.intruder.sum() > 0
    meta = json.loads((out_a / "run.json").read_text())
    assert (
        meta["tuned_weights"]["adapter_format"] == "lowrank_lab" and meta["tuned_weights"]["method"] == method
    )


def _minilm_peft_adapter(root: Path, layers: list[int]):
    from peft import LoraConfig, get_peft_model

    from lowrank_lab.weights import load_hf_model

    cfg = LoraConfig(
        r=8, lora_alpha=16, target_modules=["query", "value", "dense"], layers_to_transform=layers
    )
    peft_model = get_peft_model(load_hf_model("minilm"), cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, (_, mod) in enumerate(sorted(peft_model.named_modules(), key=lambda t: t[0])):
            if hasattr(mod, "lora_B") and "default" in getattr(mod, "lora_B", {}):
                B = mod.lora_B["default"].weight
                B.copy_((0.02, 0.2, 1.0)[i % 3] * torch.randn(B.shape, generator=g))
    peft_model.save_pretrained(root / "minilm_lora")
    return peft_model


def _peft_log_counts(peft_model) -> dict[str, int]:
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    lines: list[str] = []
    reduce_intruder_dimension(peft_model, logging_sink=lines.append)
    out = {}
    for line in lines:
        name, _, rest = line.partition(": ")
        if rest == "No intruders":
            out[name.removeprefix("base_model.model.") + ".weight"] = 0
        elif rest.startswith("Intruders: "):
            out[name.removeprefix("base_model.model.") + ".weight"] = int(rest.split(": ")[1])
    return out


@pytest.mark.parametrize(
    "layers",
    [pytest.param([0], id="layer0"), pytest.param(list(range(6)), id="all36", marks=pytest.mark.slow)],
)
def test_real_minilm_with_peft_lora_matches_peft_detection(tmp_path, layers):
    """Real base (all-MiniLM-L6-v2): the CLI's per-matrix counts equal what PEFT's
    reduce_intruder_dimension detects on the same LoRA."""
    peft_model = _minilm_peft_adapter(tmp_path, layers)
    spec = ",".join(map(str, layers))
    code, out = _run(
        tmp_path, "--base", "minilm", "--adapter", str(tmp_path / "minilm_lora"), "--layers", spec
    )
    assert code == 0
    df = pd.read_csv(out / "intruders.csv")
    ours = df.groupby("tensor", sort=False).intruder.sum().to_dict()
    theirs = _peft_log_counts(peft_model)
    assert len(theirs) == 5 * len(layers)  # query, value and the three dense layers; not key
    assert {t: ours[t] for t in theirs} == theirs
    assert sum(theirs.values()) > 0 and min(theirs.values()) == 0
    # the modules PEFT did not touch (key) have the base's own vectors: no intruders
    assert all(ours[t] == 0 for t in ours if t not in theirs)


# --------------------------------------------------------------------------------------------------
# Bad input: exit 2, one line, no traceback
# --------------------------------------------------------------------------------------------------


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("python -m lowrank_lab.intruders: error: ")
    return err


def test_different_architecture_names_first_tensor(tmp_path, models, capsys):
    code, _ = _run(tmp_path, "--base", str(models["base"]), "--tuned", str(models["other_arch"]))
    assert code == 2
    err = _one_line_error(capsys)
    assert "encoder.layer.0.attention.self.query.weight" in err and "(48, 48)" in err and "(32, 32)" in err


def test_missing_adapter_files_are_named(tmp_path, models, capsys):
    import shutil

    broken = tmp_path / "broken_adapter"
    shutil.copytree(models["peft"], broken)
    (broken / "adapter_model.safetensors").unlink()
    code, _ = _run(tmp_path, "--base", str(models["base"]), "--adapter", str(broken))
    assert code == 2
    assert "adapter_model.safetensors" in _one_line_error(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _ = _run(tmp_path, "--base", str(models["base"]), "--adapter", str(empty))
    assert code == 2
    err = _one_line_error(capsys)
    assert "adapter_config.json" in err and "lowrank_adapter.json" in err


def test_missing_tuned_and_bad_options(tmp_path, models, capsys):
    code, _ = _run(tmp_path, "--base", str(models["base"]))
    assert code == 2 and "--tuned" in _one_line_error(capsys)
    code, _ = _run(tmp_path, "--base", str(models["base"]), "--tuned", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere" in _one_line_error(capsys)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--base", "x", "--tuned", "y", "--epsilon", "1.5"])
    assert exc.value.code == 2
    assert "--epsilon must be in (0, 1]" in capsys.readouterr().err


def test_help_has_examples():
    text = cli.build_parser().format_help()
    for needle in ("examples:", "--adapter", "--sweep", "--cache-dir", "intruders.csv", "pd.read_csv"):
        assert needle in text


@pytest.mark.slow  # a subprocess
def test_module_entry_point_runs(tmp_path, models):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lowrank_lab.intruders",
            "--base",
            str(models["base"]),
            "--tuned",
            str(models["other_arch"]),
            "--out",
            str(tmp_path / "o"),
            "--no-cache",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("python -m lowrank_lab.intruders: error: ")


@pytest.mark.data
def test_llama2c_base_against_its_hf_conversion(tmp_path, stories260k, capsys):
    """stories260K (llama2.c) vs fine-tunes of the Hugging Face Llama it converts to: wq/wk rows are
    permuted by the conversion, so the base is compared in HF layout. The unchanged conversion has
    no intruders (similarities 1), and a PEFT LoRA on it gets PEFT's own counts."""
    from peft import LoraConfig, get_peft_model

    from lowrank_lab.weights import load_hf_model

    hf = load_hf_model("stories260K", head="causal-lm")
    hf.save_pretrained(tmp_path / "converted")
    code, out = _run(
        tmp_path, "--base", "stories260K", "--tuned", str(tmp_path / "converted"), "--side", "both"
    )
    assert code == 0
    df = pd.read_csv(out / "intruders.csv")
    assert df.tensor.nunique() == 35 and df.intruder.sum() == 0
    assert (df.similarity > 0.9999).all(), df.groupby("module").similarity.min()

    peft_model = get_peft_model(
        hf, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"])
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, mod in peft_model.named_modules():
            if hasattr(mod, "lora_B") and "default" in getattr(mod, "lora_B", {}):
                scale = 0.5 if ".layers.0." in name or ".layers.1." in name else 0.005
                mod.lora_B["default"].weight.copy_(
                    scale * torch.randn(mod.lora_B["default"].weight.shape, generator=g)
                )
    peft_model.save_pretrained(tmp_path / "lora")
    code, out = _run(tmp_path, "--base", "stories260K", "--adapter", str(tmp_path / "lora"), out="lora_out")
    assert code == 0
    ours = pd.read_csv(out / "intruders.csv").groupby("tensor").intruder.sum().to_dict()
    theirs = _peft_log_counts(peft_model)
    assert len(theirs) == 15 and {t: ours[t] for t in theirs} == theirs
    assert sum(theirs.values()) > 0 and min(theirs.values()) == 0
