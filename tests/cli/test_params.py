"""``python -m lowrank_lab.params``: published parameter counts, formats and errors."""

from __future__ import annotations

import io
import subprocess
import sys
from contextlib import redirect_stdout

import pandas as pd
import pytest

from lowrank_lab.adapters import ADAPTERS
from lowrank_lab.params import COLUMNS, main, parameter_table


def _run(*argv: str) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(list(argv)) == 0
    return buf.getvalue()


def test_llama_7b_rank_128_matches_the_published_counts():
    # REFERENCE.md: LoRA r = 128 on Llama-2-7B, all seven projections, 32 layers = 319,815,680;
    # SLoRA/NLoRA add 7·32·r² = 3,670,016 ("+3.67M"); IntTune trains 7·32·r² = 3,670,016.
    table = pd.read_csv(io.StringIO(_run("--model", "llama-7b", "--rank", "128", "--csv")))
    assert list(table.columns) == COLUMNS
    assert list(table.method) == list(ADAPTERS)
    count = dict(zip(table.method, table.trainable, strict=True))
    assert count["lora"] == count["pissa"] == count["milora"] == count["olora"] == 319_815_680
    assert count["slora"] - count["lora"] == count["nlora"] - count["lora"] == 3_670_016
    assert count["inttune"] == 3_670_016
    assert count["loldu"] == 7 * 32 * 128
    assert set(table.base_parameters) == {6_738_415_616}
    lora = table[table.method == "lora"].iloc[0]
    assert lora.pct_of_base == pytest.approx(100 * 319_815_680 / 6_738_415_616)


def test_markdown_is_the_default_and_names_the_setting():
    text = _run("--model", "llama-7b", "--rank", "128")
    assert "| method | rank | trainable | pct_of_base | per_matrix | trains |" in text
    assert "| lora | 128 | 319,815,680 | 4.7462 | r·(m+n) | A+B |" in text
    assert "| inttune | 128 | 3,670,016 |" in text
    assert "6,738,415,616" in text


def test_targets_ranks_and_methods_select_rows():
    table = parameter_table("llama-7b", [8, 16], "q_proj,v_proj", ["lora", "lora-xs"])
    assert len(table) == 4 and set(table.targets) == {"q_proj,v_proj"}
    # LoRA's original setting: r = 8 on q and v of 32 layers of 4096 x 4096.
    assert table[(table.method == "lora") & (table["rank"] == 8)].trainable.item() == 32 * 2 * 8 * (
        4096 + 4096
    )
    assert table[(table.method == "lora-xs") & (table["rank"] == 16)].trainable.item() == 32 * 2 * 16**2


def test_gqa_shapes_come_from_the_registry():
    # llama-70b: k/v project to 8 kv heads x 128 = 1024 outputs, not 8192.
    table = parameter_table("llama-70b", [16], "k_proj", ["lora"])
    assert table.trainable.item() == 80 * 16 * (1024 + 8192)


def test_out_writes_a_file(tmp_path):
    out = tmp_path / "sub" / "p.csv"
    assert _run("--model", "minilm", "--rank", "8", "--methods", "lora", "--csv", "--out", str(out)) == ""
    assert pd.read_csv(out).trainable.item() == 6 * 8 * (4 * (384 + 384) + 2 * (1536 + 384))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "llama7b"], "Did you mean: llama-7b"),
        (["--targets", "qproj"], "Valid names: q_proj"),
        (["--methods", "pisa"], "Did you mean pissa"),
        (["--rank", "0"], "positive integers"),
        (["--rank", "eight"], "integers separated by commas"),
    ],
)
def test_bad_arguments_exit_2_with_a_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_help_explains_every_option_with_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "319,815,680" in out
    for option in ("--model", "--rank", "--targets", "--methods", "--csv", "--out"):
        assert option in out


@pytest.mark.slow  # a subprocess
def test_runs_as_a_module(tmp_path):
    argv = ["--model", "minilm", "--rank", "4", "--methods", "loldu"]
    done = subprocess.run(
        [sys.executable, "-m", "lowrank_lab.params", *argv],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert "| loldu | 4 | 144 |" in done.stdout


# config.json of the hub checkpoints, as published (only the keys the counts read, and model_type).
BARE_CONFIGS = {
    "Qwen2.5-7B": {
        "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
    "Meta-Llama-3-8B": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "tie_word_embeddings": False,
    },
    "gemma-2-9b": {
        "model_type": "gemma2", "hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 256000,
    },
    "Mixtral-8x7B-v0.1": {
        "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8, "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
}  # fmt: skip


def _by_hand(name: str) -> tuple[int, int]:
    """(base parameters, LoRA r = 8 on every target matrix), written out term by term."""
    if name == "Qwen2.5-7B":  # h 3584, 28 heads x 128, 4 KV heads (512 rows), q/k/v biased, untied head
        h, inter, layers, vocab = 3584, 18944, 28, 152064
        attention = (h * h + h) + 2 * (512 * h + 512) + h * h
        block = attention + 3 * h * inter + 2 * h
        lora = 8 * ((h + h) + 2 * (512 + h) + (h + h) + 2 * (inter + h) + (h + inter))
        return 2 * vocab * h + layers * block + h, layers * lora
    if name == "Meta-Llama-3-8B":  # 8 KV heads x 128 = 1024 rows of k and v
        h, inter, layers, vocab = 4096, 14336, 32, 128256
        block = 2 * h * h + 2 * 1024 * h + 3 * h * inter + 2 * h
        lora = 8 * (2 * (h + h) + 2 * (1024 + h) + 2 * (inter + h) + (h + inter))
        return 2 * vocab * h + layers * block + h, layers * lora
    if name == "gemma-2-9b":  # 16 heads x 256 = 4096 query rows; 8 KV heads = 2048; 4 norms; tied head
        h, inter, layers, vocab = 3584, 14336, 42, 256000
        block = 4096 * h + 2 * 2048 * h + h * 4096 + 3 * h * inter + 4 * h
        lora = 8 * ((4096 + h) + 2 * (2048 + h) + (h + 4096) + 2 * (inter + h) + (h + inter))
        return vocab * h + layers * block + h, layers * lora
    # Mixtral: attention as Llama-3's; a router (8 x 4096) and 8 experts of gate, up, down each.
    h, inter, layers, vocab, experts = 4096, 14336, 32, 32000, 8
    block = 2 * h * h + 2 * 1024 * h + experts * h + experts * 3 * h * inter + 2 * h
    # Each expert: its fused gate_up (2 x 14336 rows, as transformers 5 holds it) and its down projection.
    per_expert = (2 * inter + h) + (h + inter)
    lora = 8 * (2 * (h + h) + 2 * (1024 + h) + (experts + h) + experts * per_expert)
    return 2 * vocab * h + layers * block + h, layers * lora


@pytest.mark.parametrize("name", list(BARE_CONFIGS))
def test_a_folder_with_only_config_json_is_enough(tmp_path, name):
    import json

    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(BARE_CONFIGS[name]))
    base, lora = _by_hand(name)
    published = {
        "Qwen2.5-7B": 7_615_616_512,
        "Meta-Llama-3-8B": 8_030_261_248,
        "gemma-2-9b": 9_241_705_984,
        "Mixtral-8x7B-v0.1": 46_702_792_704,
    }
    assert base == published[name]  # the hand count is the model card's figure
    table = parameter_table(str(folder), [8], None, ["lora"])
    assert table.base_parameters.item() == base and table.trainable.item() == lora
    assert table.model.item() == name


def test_registry_entries_of_the_new_families():
    table = parameter_table("qwen2.5-7b", [8], "q,v", ["lora"])
    assert table.targets.item() == "q_proj,v_proj"  # roles resolve to the family's modules
    assert table.trainable.item() == 28 * 8 * ((3584 + 3584) + (512 + 3584))
    # Phi-3-mini: the fused qkv_proj (9216 x 3072) is one matrix, as an adapter sees it.
    phi = parameter_table("phi-3-mini", [8], "qkv_proj", ["lora"])
    assert phi.trainable.item() == 32 * 8 * (9216 + 3072)
    assert phi.base_parameters.item() == 3_821_079_552


def test_a_role_inside_a_fused_matrix_says_so(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--model", "phi-3-mini", "--targets", "q"])
    assert exc.value.code == 2
    assert "part of the fused qkv_proj" in capsys.readouterr().err
