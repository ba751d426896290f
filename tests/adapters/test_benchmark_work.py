"""The product-work bound in benchmarks/adapter_init.py, the basis of its speed-target argument."""

from __future__ import annotations

import math

import pytest


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("adapter_init")


@pytest.mark.parametrize(
    ("source", "method", "rank", "work"),
    [
        ("peft", "pissa_niter_4", 16, 1.0),  # 10 products at l = r
        ("ours", "pissa-fast", 16, 1.0),  # its default is PEFT's algorithm
        ("ours", "pissa-fast p=0 q=2 lu", 128, 0.6),  # 6 products at l = r
        ("ours", "pissa-fast p=10 q=2 lu", 16, 6 * 26 / 160),
        ("ours", "pissa-fast p=10 q=1 lu", 128, 4 * 138 / 1280),
    ],
)
def test_product_work_counts_the_columns_pushed_through_w(bench, source, method, rank, work):
    assert bench.product_work(source, method, rank) == pytest.approx(work)


@pytest.mark.parametrize(("source", "method"), [("ours", "pissa"), ("ours", "lora"), ("peft", "pissa")])
def test_product_work_is_blank_for_inits_that_are_not_randomized(bench, source, method):
    assert math.isnan(bench.product_work(source, method, 16))
