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
