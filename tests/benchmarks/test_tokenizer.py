"""benchmarks/tokenizer.py on real GSM8K texts: both merges give the same tokens, the report says so."""

from __future__ import annotations


def test_tokenizer_benchmark_checks_identity_and_writes_its_report(benchmark_script, shared_data, tmp_path):
    bench = benchmark_script("tokenizer")
    out = tmp_path / "tokenizer.md"
    assert bench.main(["--texts", "6", "--data-dir", str(shared_data), "--out", str(out)]) == 0
    text = out.read_text()
    assert "- Texts: 6 GSM8K questions and answers" in text
    assert "the tokens are identical for every text" in text
    assert "| heap (`Llama2cTokenizer._merge`) |" in text and "Speed-up: **" in text


def test_tokenizer_benchmark_names_a_missing_data_folder(benchmark_script, tmp_path, capsys):
    bench = benchmark_script("tokenizer")
    assert bench.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "t.md")]) == 2
    assert "tok512.bin not found; pass --data-dir" in capsys.readouterr().err
