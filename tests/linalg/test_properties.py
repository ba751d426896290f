"""Property tests (hypothesis): every registered method on random shapes, ranks, dtypes and matrices.

Shapes run from 1×1 to 12×12 (tall, wide, square, 1×n, n×1); matrices are Gaussian, zero, rank-1,
with zero leading columns (what the Nyström and LDU variants look at first), or with a power-law
spectrum; dtypes cover the three precisions the policy distinguishes.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lowrank_lab.linalg import FACTORIZATIONS

METHODS = sorted(FACTORIZATIONS)
# Exact at rank = min(m, n) for every matrix, singular or not (the Nyström forms need an
# invertible core block, so they are left out).
EXACT_AT_FULL_RANK = {"svd", "rsvd", "ldu", "rlu", "qr"}
# Methods whose factors hold quotients, which may exceed float16's range (policy.to_output).
QUOTIENTS = {"nystrom", "nystrom-pinv", "ldu", "rlu"}
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
KINDS = ["gaussian", "zero", "rank-1", "zero-columns", "power-law"]

# ~150 examples per test (≈ 5 s) keep tests/linalg well inside its time budget; deadline=None because the
# first call of a LAPACK routine is slow on a shared machine and is not what is being tested.
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)


def _matrix(kind: str, m: int, n: int, seed: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "zero":
        W = torch.zeros(m, n, dtype=torch.float64)
    elif kind == "rank-1":
        W = torch.outer(
            torch.randn(m, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
        )
    elif kind == "power-law":
        k = min(m, n)
        U = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64)).Q
        V = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64)).Q
        W = (U * torch.arange(1, k + 1, dtype=torch.float64) ** -0.4) @ V.T
    else:
        W = torch.randn(m, n, generator=g, dtype=torch.float64)
        if kind == "zero-columns":
            W[:, : max(1, n // 2)] = 0.0
    return (scale * W).to(dtype)


@st.composite
def problems(draw):
    m = draw(st.integers(1, 12))
    n = draw(st.integers(1, 12))
    rank = draw(st.integers(1, min(m, n)))
    return {
        "m": m,
        "n": n,
        "rank": rank,
        "dtype": draw(st.sampled_from(DTYPES)),
        "kind": draw(st.sampled_from(KINDS)),
        "seed": draw(st.integers(0, 2**16)),
        "method": draw(st.sampled_from(METHODS)),
        # 0.02: the entry scale of real weights (initializer_range); 50: far from 1 the other way
        "scale": draw(st.sampled_from([1.0, 0.02, 50.0])),
    }


def _dense(f) -> torch.Tensor:
    """The approximation in float64 from the factors as returned: exactly rank <= r."""
    left = f.left.double()
    if f.core is not None:
        core = f.core.double()
        left = left * core if core.ndim == 1 else left @ core
    return left @ f.right.double()


def _tensors(f):
    return [t for t in (f.left, f.right, f.core) if t is not None]


@pytest.mark.slow  # hypothesis over every method
@PROPERTY_SETTINGS
@given(problems())
@example(
    {
        "m": 1,
        "n": 9,
        "rank": 1,
        "dtype": torch.float32,
        "kind": "gaussian",
        "seed": 0,
        "method": "ldu",
        "scale": 1.0,
    }
)
@example(
    {
        "m": 9,
        "n": 1,
        "rank": 1,
        "dtype": torch.bfloat16,
        "kind": "gaussian",
        "seed": 0,
        "method": "nystrom",
        "scale": 0.02,
    }
)
@example(
    {
        "m": 1,
        "n": 1,
        "rank": 1,
        "dtype": torch.float64,
        "kind": "zero",
        "seed": 0,
        "method": "rlu",
        "scale": 1.0,
    }
)
def test_every_method_is_finite_shaped_and_never_beats_eckart_young(p):
    W = _matrix(p["kind"], p["m"], p["n"], p["seed"], p["dtype"], p["scale"])
    r = p["rank"]
    try:
        f = FACTORIZATIONS[p["method"]](W, r, generator=p["seed"])
    except ValueError as err:
        # The one refusal allowed: a quotient (1/s_k, a pseudo-inverse, U/d) beyond float16's 65504,
        # reported instead of returned as inf. Other dtypes and quotient-free methods never refuse.
        assert p["dtype"] == torch.float16 and p["method"] in QUOTIENTS, err
        assert "out_dtype=torch.float32" in str(err)
        return
    assert f.left.shape == (p["m"], r) and f.right.shape == (r, p["n"])
    assert f.core is None or tuple(f.core.shape) in {(r,), (r, r)}
    for t in _tensors(f):
        assert t.dtype == p["dtype"] and t.device == W.device
        assert bool(torch.isfinite(t).all())
    assert f.reconstruct().shape == (p["m"], p["n"])
    W64 = W.double()
    S = torch.linalg.svdvals(W64)
    optimum = float(torch.sqrt(torch.sum(S[r:] ** 2)))
    err = float(torch.linalg.matrix_norm(W64 - _dense(f)))
    assert err >= optimum - 1e-9 * (1.0 + float(S[0]))


@PROPERTY_SETTINGS
@given(problems().filter(lambda p: p["method"] in EXACT_AT_FULL_RANK))
def test_exact_methods_reconstruct_at_full_rank(p):
    W = _matrix(p["kind"], p["m"], p["n"], p["seed"], p["dtype"], p["scale"])
    f = FACTORIZATIONS[p["method"]](W, min(p["m"], p["n"]), generator=p["seed"])
    W64 = W.double()
    # float64/float32: roundoff of the computation; half precision: the final rounding of the
    # factors (2^-8 for bf16, 2^-11 for fp16) amplified by at most the size of the factors.
    unit = {torch.float64: 1e-13, torch.float32: 1e-5, torch.bfloat16: 2**-8, torch.float16: 2**-11}[
        p["dtype"]
    ]
    scale = float(torch.linalg.matrix_norm(W64)) * math.sqrt(min(p["m"], p["n"]))
    assert float(torch.linalg.matrix_norm(W64 - _dense(f))) <= 20 * unit * (scale + 1e-30)


@pytest.mark.parametrize("method", METHODS)
def test_one_by_n_and_n_by_one(method):
    for shape in [(1, 1), (1, 9), (9, 1)]:
        W = _matrix("gaussian", *shape, seed=1, dtype=torch.float32)
        f = FACTORIZATIONS[method](W, 1)
        assert f.reconstruct().shape == shape
        assert all(bool(torch.isfinite(t).all()) for t in _tensors(f))
