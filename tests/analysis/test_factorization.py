"""Rows of factorization.csv for one matrix: error ratios bounded by the Eckart–Young optimum,
skipped ranks, resume keys, and the use of exact synthetic spectra."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import lowrank_lab.analysis.factorization as fz
from lowrank_lab.analysis.factorization import (
    FACTORIZATION_COLUMNS,
    AnalysisConfig,
    analyze_matrix,
    error_ratio,
    factorization_rows,
    timing_plan,
)
from lowrank_lab.analysis.spectra import spectra_columns
from lowrank_lab.linalg import FACTORIZATIONS, singular_values

# Methods whose error is the optimum up to roundoff, and those only bounded below by it.
EXACT = ["svd"]
ALL = list(FACTORIZATIONS)


def power_law_matrix(m: int, n: int, slope: float = -0.4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A float32 matrix with σ_k = k^slope (the decay of real LLM weights), and its spectrum."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    s = torch.arange(1, k + 1, dtype=torch.float64) ** slope
    U = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64)).Q
    return ((U * s) @ V.T).float(), s


def weight(W, *, s=None, tensor="layers.0.q_proj", module="q_proj", layer=0):
    """A stand-in with the WeightMatrix attributes the analysis reads."""
    info = SimpleNamespace(tensor=tensor, layer=layer, module=module, shape=tuple(W.shape))
    return SimpleNamespace(info=info, weight=W, synthetic=s is not None, singular_values=s)


def rows_of(W, S, config, **kw):
    ident = {"tensor": "t", "layer": 0, "module": "q_proj", "role": "q", "fused": False, "expert": None}
    out = list(factorization_rows(W, S, ident=ident, config=config, synthetic=False, **kw))
    return [r for k, r in out if k == "factorization"], [r for k, r in out if k == "skipped"]


def test_rows_bounded_by_eckart_young_and_svd_is_optimal():
    W, _ = power_law_matrix(64, 48)
    config = AnalysisConfig(model="toy", methods=ALL, ranks=[4, 16], repeats=1, warmup=0)
    rows, skipped = rows_of(W, singular_values(W), config)
    assert not skipped
    assert len(rows) == len(ALL) * 2
    for row in rows:
        assert list(row) == FACTORIZATION_COLUMNS
        # No rank-r matrix beats the truncated SVD; float32 roundoff allows 1e-4 relative.
        assert row["err_ratio"] >= 1 - 1e-4, row
        assert row["rel_err_fro"] == pytest.approx(row["err_ratio"] * row["opt_rel_err_fro"])
        assert row["init_seconds"] > 0 and row["dtype"] == "float32" and row["device"] == "cpu"
        if row["method"] in EXACT:
            assert row["err_ratio"] == pytest.approx(1.0, abs=1e-5)
            # Eckart–Young in the spectral norm too, σ_{r+1}/σ_1. rel_err_spec is a 30-step power
            # iteration, a lower bound that converges slowly when σ_{r+2}/σ_{r+1} ≈ 1 (here ~2% low).
            opt_spec = (row["rank"] + 1) ** -0.4
            assert 0.95 * opt_spec <= row["rel_err_spec"] <= opt_spec * (1 + 1e-5)


def test_rank_above_min_dimension_is_skipped_with_reason():
    W, s = power_law_matrix(20, 12)
    config = AnalysisConfig(model="toy", methods=["svd", "rsvd"], ranks=[4, 13], repeats=1, warmup=0)
    rows, skipped = rows_of(W, s, config)
    assert [(r["method"], r["rank"]) for r in rows] == [("svd", 4), ("rsvd", 4)]
    assert [(r["method"], r["rank"]) for r in skipped] == [("svd", 13), ("rsvd", 13)]
    assert skipped[0]["reason"] == "rank 13 > min(m, n) = 12"
    assert skipped[0]["m"] == 20 and skipped[0]["n"] == 12


def test_full_rank_ratio_is_undefined():
    W, s = power_law_matrix(12, 10)
    config = AnalysisConfig(model="toy", methods=["svd"], ranks=[10], repeats=1, warmup=0)
    (row,), _ = rows_of(W, s, config)
    assert row["opt_rel_err_fro"] == 0.0 and math.isnan(row["err_ratio"])
    assert row["rel_err_fro"] < 1e-5
    assert error_ratio(0.0, 0.0) != error_ratio(0.0, 0.0)  # NaN
    assert error_ratio(0.3, 0.2) == pytest.approx(1.5)


def test_done_rows_are_not_recomputed(monkeypatch):
    W, s = power_law_matrix(16, 16)
    calls = []
    real = fz.factorize
    monkeypatch.setattr(fz, "factorize", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    config = AnalysisConfig(model="toy", methods=["svd", "qr"], ranks=[2], repeats=1, warmup=0)
    rows, _ = rows_of(W, s, config, done=lambda key: key == ("t", "svd", 2))
    assert [r["method"] for r in rows] == ["qr"] and calls == ["qr"]


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="Valid methods: svd, rsvd"):
        AnalysisConfig(model="toy", methods=["svd", "pissa"], ranks=[4])


def test_timing_plan():
    assert timing_plan((384, 1536), "cpu") == (3, 1)
    assert timing_plan((4096, 11008), "cpu") == (1, 0)
    assert timing_plan((4096, 11008), "cpu", repeats=5, warmup=2) == (5, 2)


def test_analyze_matrix_uses_exact_synthetic_spectrum(monkeypatch):
    W, s = power_law_matrix(30, 20)
    monkeypatch.setattr(fz, "singular_values", lambda *_: pytest.fail("SVD run despite an exact spectrum"))
    config = AnalysisConfig(model="toy", methods=["rsvd"], ranks=[4, 8], repeats=1, warmup=0)
    out = list(analyze_matrix(weight(W, s=s), config))
    kinds = [k for k, _ in out]
    assert kinds == ["singular_values", "spectra", "factorization", "factorization"]
    spectra = out[1][1]
    assert list(spectra) == spectra_columns([4, 8])
    assert spectra["spec_norm"] == pytest.approx(1.0) and spectra["n"] == 20
    assert all(r["synthetic"] is True for k, r in out if k == "factorization")


def test_analyze_matrix_in_bfloat16_recomputes_spectrum():
    # A narrowing cast changes the matrix: its own singular values are needed, not the stored ones.
    W, s = power_law_matrix(30, 20)
    config = AnalysisConfig(
        model="toy", methods=["svd"], ranks=[4], dtype=torch.bfloat16, repeats=1, warmup=0
    )
    out = dict(analyze_matrix(weight(W, s=s * 10), config))  # wrong on purpose: must not be used
    assert out["spectra"]["spec_norm"] == pytest.approx(1.0, rel=1e-2)
    assert out["factorization"]["dtype"] == "bfloat16"
    # bf16 factors carry 2^-8 rounding, so SVD is optimal only to that precision.
    assert out["factorization"]["err_ratio"] == pytest.approx(1.0, abs=2e-2)


def test_resume_with_cached_spectrum_yields_only_missing_rows():
    W, s = power_law_matrix(30, 20)
    config = AnalysisConfig(model="toy", methods=["svd", "qr"], ranks=[4], repeats=1, warmup=0)
    out = list(analyze_matrix(weight(W), config, spectra_done=True, singular_values_cache=s.numpy(),
                              done=lambda key: key[1] == "svd"))
    assert [(k, r["method"]) for k, r in out] == [("factorization", "qr")]
