"""benchmarks/finetune_step.py runs end to end on the real SST-2 files: the trainer it times is the
one the CLI trains with (a record attribute renamed in the trainer must not break it unseen)."""

from __future__ import annotations

import pytest


@pytest.mark.slow  # runs the benchmark on real SST-2, ~15 s
def test_step_benchmark_small_run_writes_its_report(benchmark_script, shared_data, tmp_path):
    bench = benchmark_script("finetune_step")
    out = tmp_path / "finetune_step.md"
    argv = ["--small", "--methods", "lora,peft-lora", "--measure", "2", "--whole-run", "", "--threads", "1",
            "--data-dir", str(shared_data), "--out", str(out)]
    assert bench.main(argv) == 0
    text = out.read_text()
    assert "peft-lora" in text and "lora" in text
