"""Issue 31, point 8, at the command level: each bad input is one line on stderr naming the file or
option, exit status 2, no traceback, and nothing computed or appended first."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import tiny_bert

import lowrank_lab.analysis.factorization as fz
from lowrank_lab import analyze, intruders, params
from lowrank_lab.weights.registry import parse_experts, parse_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--layers", "0", "--targets", "query,key", "--ranks", "4,8", "--methods", "svd", "--device", "cpu",
        "--repeats", "1", "--warmup", "0", "--no-figures"]


def _one_line_error(capsys, prog: str, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"python -m lowrank_lab.{prog}: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def _tiny_bert(path: Path, seed: int) -> Path:
    tiny_bert(seed).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def berts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("berts31")
    return {"base": _tiny_bert(root / "base", 0), "tuned": _tiny_bert(root / "tuned", 1)}


# -- case 1: resume refuses an unparseable CSV before computing anything, naming file and line -----------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("analyze31") / "out"
    assert analyze.main([*FAST, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    ("damage", "line", "what"),
    [
        (lambda text: text.replace("\nminilm,", '\n"minilm,', 1), 2, "cannot be parsed as CSV"),
        (lambda text: text + "minilm,x,0\r\n", 6, "has 3 fields where the header has 20"),
    ],
    ids=["unclosed-quote", "short-row"],
)
def test_analyze_resume_refuses_a_damaged_csv_and_appends_nothing(
    finished_run, tmp_path, capsys, monkeypatch, damage, line, what
):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    table = out / "factorization.csv"
    bad = damage(table.read_text(encoding="utf-8"))
    table.write_bytes(bad.encode())
    calls = []
    monkeypatch.setattr(fz, "factorize", lambda *a, **k: calls.append(a))  # nothing may be computed
    for _ in range(2):  # each further --resume used to append the rows again
        capsys.readouterr()
        assert analyze.main([*FAST, "--out", str(out), "--resume"]) == 2
        _one_line_error(capsys, "analyze", str(table), f"line {line} {what}")
    assert table.read_bytes() == bad.encode()
    assert calls == []


def test_analyze_resume_names_the_file_and_line_of_undecodable_bytes(finished_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    table = out / "factorization.csv"
    raw = table.read_bytes() + b"minilm,\xff\xfe,0\r\n"
    table.write_bytes(raw)
    assert analyze.main([*FAST, "--out", str(out), "--resume"]) == 2
    _one_line_error(capsys, "analyze", f"{table}: line 6 is not UTF-8 text (byte 0xff)")
    assert table.read_bytes() == raw


def test_intruders_resume_refuses_an_unparseable_csv(berts, tmp_path, capsys):
    argv = ["--base", str(berts["base"]), "--tuned", str(berts["tuned"]), "--targets", "query",
            "--no-figures", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert intruders.main(argv) == 0
    table = tmp_path / "out" / "intruders.csv"
    lines = table.read_bytes().split(b"\r\n")
    lines[2] = b'"' + lines[2]
    bad = b"\r\n".join(lines)
    table.write_bytes(bad)
    capsys.readouterr()
    assert intruders.main([*argv, "--resume"]) == 2
    _one_line_error(capsys, "intruders", str(table), "line 3 cannot be parsed as CSV")
    assert table.read_bytes() == bad


# -- case 3: ranges are bounds-checked before they are built ------------------------------------------
@pytest.fixture
def memory_cap():
    """Address space capped near what the process uses now: building a 10^9-element range fails."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as fh:
        used = int(fh.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_parse_layers_refuses_a_huge_range_without_building_it(memory_cap):
    with pytest.raises(ValueError, match="'0-1000000000' out of range for a model with 6 layers; valid"):
        parse_layers("0-1000000000", 6)
    with pytest.raises(ValueError, match="out of range for a model with 8 experts; valid experts are 0-7"):
        parse_experts("3,0-100000000", 8)
    assert parse_layers("0-2,5", 6) == [0, 1, 2, 5]


@pytest.mark.parametrize("extra", [["--layers", "0-1000000000"], ["--layers", "1,2-999999999999"]])
def test_analyze_refuses_a_huge_layer_range(tmp_path, capsys, memory_cap, extra):
    out = tmp_path / "out"
    assert analyze.main(["--out", str(out), "--no-figures", *extra]) == 2
    _one_line_error(capsys, "analyze", "out of range for a model with 6 layers", "valid layers are 0-5")


def test_analyze_refuses_a_huge_expert_range(tmp_path, capsys, memory_cap):
    argv = ["--model", "mixtral-8x7b", "--synthetic", "--layers", "0", "--experts", "0-100000000"]
    assert analyze.main([*argv, "--out", str(tmp_path / "o"), "--no-figures"]) == 2
    _one_line_error(capsys, "analyze", "'0-100000000' out of range for a model with 8 experts")


def test_intruders_refuses_a_huge_layer_range(berts, tmp_path, capsys, memory_cap):
    argv = ["--base", str(berts["base"]), "--tuned", str(berts["tuned"]), "--layers", "0-1000000000",
            "--no-figures", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert intruders.main(argv) == 2
    _one_line_error(capsys, "intruders", "out of range for a model with 2 layers")


def _config_dir(tmp_path: Path, config) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    return d


LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "vocab_size": 100}


@pytest.mark.parametrize(
    ("change", "layers"),
    [({"num_hidden_layers": 1_000_000_000}, 1_000_000_000),
     ({"model_type": "mixtral", "num_local_experts": 100_000_000}, 2)],
    ids=["layers", "experts"],
)
def test_params_counts_huge_configs_without_listing_every_matrix(tmp_path, memory_cap, change, layers):
    d = _config_dir(tmp_path, {**LLAMA, **change})
    table = params.parameter_table(str(d), [4], "q_proj", ["lora"])
    # LoRA r = 4 on a 64 x 64 q_proj: 4 * (64 + 64) per layer
    assert table.trainable.item() == layers * 4 * (64 + 64)


# -- case 4: config.json must be an object ----------------------------------------------------------
@pytest.mark.parametrize("config", [[1, 2], "llama", 3])
def test_a_config_json_that_is_not_an_object_is_named(tmp_path, capsys, config):
    d = _config_dir(tmp_path, config)
    from safetensors.torch import save_file

    weights = {"encoder.layer.0.attention.self.query.weight": torch.zeros(4, 4)}
    save_file(weights, str(d / "model.safetensors"))
    kind = type(config).__name__
    assert analyze.main(["--model", str(d), "--out", str(tmp_path / "o"), "--no-figures"]) == 2
    _one_line_error(capsys, "analyze", f"{d / 'config.json'} holds a JSON {kind}, not an object")
    with pytest.raises(SystemExit) as exit_:
        params.main(["--model", str(d)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {d / 'config.json'} holds a JSON {kind}, not an object" in err
    assert "Traceback" not in err


def test_a_config_json_with_a_byte_order_mark_is_read(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(LLAMA).encode())
    table = params.parameter_table(str(d), [4], "q_proj", ["lora"])
    assert table.trainable.item() == 2 * 4 * (64 + 64)


# -- case 2: a base-SVD cache entry rewritten as valid zeros is recomputed, the counts unchanged ----------
def test_intruders_recomputes_a_zeroed_cache_entry_and_counts_as_without_it(berts, tmp_path, capsys):
    import pandas as pd
    from safetensors.torch import load_file, save_file

    cache = tmp_path / "cache"
    argv = ["--base", str(berts["base"]), "--tuned", str(berts["tuned"]), "--targets", "query",
            "--layers", "0", "--no-figures", "--cache-dir", str(cache)]
    assert intruders.main([*argv, "--out", str(tmp_path / "a")]) == 0
    entries = sorted(cache.rglob("*.safetensors"))
    assert len(entries) == 1
    for entry in entries:
        save_file({k: torch.zeros_like(v) for k, v in load_file(str(entry)).items()}, str(entry))
    capsys.readouterr()
    assert intruders.main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert "does not match its source matrix" in capsys.readouterr().err
    a, b = (pd.read_csv(tmp_path / d / "intruders.csv") for d in "ab")
    assert a["intruder"].sum() > 0  # the comparison has something to count
    exact = ["tensor", "side", "rank", "intruder", "count", "epsilon"]
    pd.testing.assert_frame_equal(a[exact], b[exact])
    pd.testing.assert_series_equal(a["similarity"], b["similarity"], atol=1e-5, rtol=0)


# -- case 6: finetune's seeds share analyze's range and are checked before anything is written ----------
@pytest.mark.parametrize(("option", "value", "shown"), [
    ("--seeds", "0,18446744073709551616", "18446744073709551616"),
    ("--seeds", "-1", "-1"),
    ("--seeds", "1,9223372036854775808", "9223372036854775808"),
])
def test_finetune_refuses_a_seed_outside_analyzes_range(tmp_path, capsys, option, value, shown):
    from lowrank_lab import finetune

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        finetune.main(["--task", "sst2", option, value, "--out", str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"every seed must be in 0 .. 2**63-1 (9223372036854775807), as analyze's --seed; got {shown}" in (
        " ".join(err.split()))
    assert "Traceback" not in err and not out.exists()


def test_finetune_keeps_the_largest_seed(capsys):
    from lowrank_lab.finetune import build_parser

    args = build_parser().parse_args(["--task", "sst2", "--seeds", f"0,{2**63 - 1}"])
    assert args.seeds == [0, 2**63 - 1]


# -- cosmetic: a failed start removes the --out it created, keeps one it did not -----------------------
def test_a_failed_start_removes_the_out_folders_it_created(tmp_path, capsys):
    out, figures = tmp_path / "new" / "deep" / "out", tmp_path / "figs"
    assert analyze.main(["--layers", "9", "--out", str(out), "--figures", str(figures)]) == 2
    _one_line_error(capsys, "analyze", "out of range for a model with 6 layers")
    assert not (tmp_path / "new").exists() and not figures.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert analyze.main(["--layers", "9", "--out", str(kept), "--no-figures"]) == 2
    assert kept.is_dir()  # not made by this run: left alone


def test_a_failed_intruders_start_removes_its_empty_out_and_cache(berts, tmp_path, capsys):
    argv = ["--base", str(berts["base"]), "--tuned", str(berts["tuned"]), "--layers", "5", "--no-figures",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert intruders.main(argv) == 2
    assert sorted(tmp_path.iterdir()) == []


def test_diagnose_errors_carry_the_command_prefix(tmp_path, capsys):
    from lowrank_lab import diagnose

    out = tmp_path / "out"
    argv = ["--task", "sst2", "--data-dir", str(tmp_path / "absent"), "--study", "none", "--out", str(out)]
    assert diagnose.main(argv) == 2
    _one_line_error(capsys, "diagnose", f"--data-dir '{tmp_path / 'absent'}' is not a directory")
    assert not out.exists()


# -- cosmetic: recorded commands are shell-quoted and name the module, not its file ---------------------
def test_run_json_records_a_shell_quoted_command_that_replays(tmp_path):
    import shlex

    out = tmp_path / "my runs" / "a b"
    assert analyze.main(["--layers", "0", "--targets", "query", "--ranks", "4", "--methods", "svd",
                         "--repeats", "1", "--warmup", "0", "--no-figures", "--out", str(out)]) == 0
    command = json.loads((out / "run.json").read_text())["command"]
    words = shlex.split(command)
    assert words[1:3] == ["-m", "lowrank_lab.analyze"]
    assert words[words.index("--out") + 1] == str(out)
