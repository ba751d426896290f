from __future__ import annotations

import itertools

import pandas as pd
import pytest

from lowrank_lab.utils.distributed import (
    DistContext,
    balanced_partition,
    existing_parts,
    init_from_env,
    merge_csv_parts,
    part_path,
)


def test_partition_covers_every_item_once_and_keeps_order() -> None:
    costs = [5, 1, 9, 3, 3, 7, 2]
    parts = balanced_partition(costs, 3)
    assert sorted(itertools.chain.from_iterable(parts)) == list(range(len(costs)))
    assert all(p == sorted(p) for p in parts)


@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_partition_within_list_scheduling_bound(parts: int) -> None:
    # Greedy list scheduling (Graham 1966): makespan <= total/p + (1 - 1/p) * largest item.
    costs = [float((7 * i) % 13 + 1) for i in range(40)]
    loads = [sum(costs[i] for i in p) for p in balanced_partition(costs, parts)]
    assert max(loads) <= sum(costs) / parts + (1 - 1 / parts) * max(costs) + 1e-9


def test_partition_is_deterministic_and_handles_more_parts_than_items() -> None:
    assert balanced_partition([1, 1], 4) == balanced_partition([1, 1], 4)
    assert sum(len(p) for p in balanced_partition([1, 1], 4)) == 2
    with pytest.raises(ValueError, match="parts must be >= 1"):
        balanced_partition([1], 0)


def test_llama_shapes_balance_on_two_ranks() -> None:
    # 7 projections x 4 layers of llama-7b, cost m*n*min(m, n): the two halves differ by < 10%.
    shapes = [(4096, 4096)] * 4 + [(11008, 4096), (11008, 4096), (4096, 11008)]
    costs = [m * n * min(m, n) for m, n in shapes] * 4
    loads = [sum(costs[i] for i in p) for p in balanced_partition(costs, 2)]
    assert max(loads) / min(loads) < 1.1


def test_merge_orders_rows_and_drops_duplicate_keys(tmp_path) -> None:
    final = tmp_path / "rows.csv"
    pd.DataFrame({"tensor": ["a"], "rank": [8], "v": [1.0]}).to_csv(final, index=False)
    p0, p1 = part_path(final, 0), part_path(final, 1)
    p0.parent.mkdir()
    pd.DataFrame({"tensor": ["c", "a"], "rank": [8, 8], "v": [3.0, 1.5]}).to_csv(p0, index=False)
    pd.DataFrame({"tensor": ["b"], "rank": [8], "v": [2.0]}).to_csv(p1, index=False)
    assert existing_parts(final) == [p0, p1]
    merged = merge_csv_parts(final, existing_parts(final), order=lambda df: df.sort_values("tensor"),
                             key=["tensor", "rank"])
    assert merged["tensor"].tolist() == ["a", "b", "c"]
    assert merged.loc[0, "v"] == "1.5"  # a part's row wins over the stale final row; cells stay text
    assert pd.read_csv(final, dtype=str).equals(merged)
    assert final.read_bytes().count(b"\r\n") == 4  # RowWriter's line ends, so --resume appends alike


def test_without_torchrun_environment_the_run_is_single_process(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_from_env("cpu")
    assert ctx == DistContext() and ctx.is_main and not ctx.enabled


def test_launch_command_runs_the_module_alone_or_under_torchrun():
    import sys

    from lowrank_lab.utils.distributed import launch_command

    assert launch_command("lowrank_lab.analyze") == [sys.executable, "-m", "lowrank_lab.analyze"]
    assert launch_command("lowrank_lab.intruders", 3) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
        "-m", "lowrank_lab.intruders",
    ]
    with pytest.raises(ValueError, match="nproc must be >= 1, got 0"):
        launch_command("lowrank_lab.analyze", 0)
