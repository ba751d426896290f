"""benchmarks/selection_budget.py (plateau study, revision 5): half-epoch selection is allowed only when,
in every whole-budget selection group, the first half's evaluations choose the rate the whole run chose."""

from __future__ import annotations

import json


def _run(study, method, lr, seed, curve, *, steps=100, min_delta=0.002):
    """A finished selection run whose validation metric follows ``curve`` at steps 0, 20, ..., 100, with
    the val_metric the training loop keeps (an evaluation replaces the kept one when it gains > min_delta)."""
    evals = [{"step": 20 * i, "metric": m} for i, m in enumerate(curve)]
    kept = None
    for e in evals:
        if kept is None or e["metric"] - kept > min_delta:
            kept = e["metric"]
    cfg = {"method": method, "rank": 8, "lr": lr, "head_lr": 1e-2, "seed": seed, "steps": steps,
           "min_delta": min_delta}  # fmt: skip
    folder = study / "select" / f"{method}-r8-seed{seed}-lr{lr}"
    folder.mkdir(parents=True)
    rec = {"config": cfg, "status": "finished", "eval": evals, "val_metric": kept}
    (folder / "run.json").write_text(json.dumps(rec))


def test_half_budget_only_when_every_group_chooses_the_same_rate(benchmark_script, tmp_path, capsys):
    bench = benchmark_script("selection_budget")
    a, b = tmp_path / "a", tmp_path / "b"
    for seed in (100, 101):  # a: the slow rate overtakes only after the half, but not by enough to win
        _run(a, "lora", 1e-4, seed, [0.5, 0.60, 0.70, 0.75, 0.80, 0.81])
        _run(a, "lora", 1e-3, seed, [0.5, 0.80, 0.84, 0.85, 0.85, 0.85])
    assert bench.main([str(a), "--out", str(tmp_path / "t.md")]) == 0
    assert capsys.readouterr().out.strip() == "0.5"
    assert "| a | lora | 8 | 2 | 0.001 | 0.001 | yes |" in (tmp_path / "t.md").read_text()
    for seed in (100, 101):  # b: the slow rate wins the whole run but not its first half
        _run(b, "full", 1e-5, seed, [0.5, 0.60, 0.70, 0.80, 0.88, 0.90])
        _run(b, "full", 1e-4, seed, [0.5, 0.80, 0.84, 0.85, 0.85, 0.85])
    assert bench.main([str(a), str(b)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "1" and "| b | full | 8 | 2 | 1e-05 | 0.0001 | NO |" in captured.err


def test_gains_under_min_delta_do_not_move_the_kept_evaluation(benchmark_script):
    bench = benchmark_script("selection_budget")
    evals = [{"step": s, "metric": m} for s, m in ((0, 0.5), (20, 0.80), (40, 0.801), (60, 0.83))]
    assert bench.kept(evals, 0.002, 40) == 0.80  # 0.801 gains 0.001: not kept
    assert bench.kept(evals, 0.002, 100) == 0.83


def test_a_folder_without_selection_runs_is_named(benchmark_script, tmp_path, capsys):
    bench = benchmark_script("selection_budget")
    assert bench.main([str(tmp_path)]) == 2
    assert f"{tmp_path}: no finished select/*/run.json" in capsys.readouterr().err
