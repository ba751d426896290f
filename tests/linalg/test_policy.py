"""Bad input and the dtype/device policy, checked through every registered method."""

from __future__ import annotations

import re

import pytest
import torch

from lowrank_lab.linalg import (
    FACTORIZATIONS,
    compute_dtype,
    make_generator,
    resolve_device,
    singular_values,
    unfactorizable_reason,
    validate_matrix,
    validate_rank,
)

METHODS = sorted(FACTORIZATIONS)


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _tensors(f):
    return [t for t in (f.left, f.right, f.core) if t is not None]


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rank", [0, -2, 7, 100])
def test_rank_out_of_range_names_both_numbers(method, rank):
    with pytest.raises(ValueError) as err:
        FACTORIZATIONS[method](_randn(9, 6), rank)
    msg = str(err.value)
    assert f"rank={rank}" in msg and "9x6" in msg and "1 <= rank <= 6" in msg


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rank", [2.5, "3", None, True])
def test_rank_must_be_an_integer(method, rank):
    with pytest.raises(TypeError, match="rank must be an integer"):
        FACTORIZATIONS[method](_randn(5, 4), rank)


def test_integral_rank_types_are_accepted():
    assert validate_rank(3.0, (5, 4)) == 3
    assert validate_rank(torch.tensor(2), (5, 4)) == 2
    assert isinstance(validate_rank(torch.tensor(2), (5, 4)), int)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(6,), (2, 3, 4), ()])
def test_not_2d_is_a_value_error(method, shape):
    W = torch.randn(shape) if shape else torch.tensor(1.0)
    with pytest.raises(
        ValueError, match=re.escape(f"must be a 2-D matrix, got shape {tuple(shape)} ({len(shape)}-D)")
    ):
        FACTORIZATIONS[method](W, 1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.complex64])
def test_integer_bool_complex_dtypes_are_type_errors(method, dtype):
    W = torch.ones(4, 3, dtype=dtype)
    with pytest.raises(TypeError, match=rf"has dtype {dtype}.*Cast it first"):
        FACTORIZATIONS[method](W, 1)


def test_non_tensor_and_empty_input():
    with pytest.raises(TypeError, match="must be a torch.Tensor, got list"):
        validate_matrix([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"is empty, shape \(0, 3\)"):
        validate_matrix(torch.zeros(0, 3))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_nan_and_inf_are_counted(method, dtype):
    W = _randn(6, 5, dtype=dtype)
    W[0, 0] = float("nan")
    W[1, 2] = float("nan")
    W[3, 3] = float("inf")
    W[4, 1] = -float("inf")
    with pytest.raises(ValueError, match="W has 2 NaN and 2 Inf entries out of 30"):
        FACTORIZATIONS[method](W, 2)


def test_a_sum_that_overflows_is_not_mistaken_for_inf():
    # validate_matrix's fast path sums W; an overflowing sum must fall back to the exact count.
    W = torch.full((4, 4), 3e38)
    validate_matrix(W)
    validate_matrix(torch.full((300, 300), 60000.0, dtype=torch.float16))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["zero", "rank-1", "zero-columns"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_zero_and_rank_deficient_matrices_give_finite_factors(method, kind, dtype):
    if kind == "zero":
        W = torch.zeros(8, 6)
    elif kind == "rank-1":
        W = torch.outer(torch.arange(1.0, 9.0), torch.linspace(-1, 1, 6))
    else:
        W = _randn(8, 6)
        W[:, :3] = 0.0  # the first columns, the ones the Nyström and LDU variants start from
    W = W.to(dtype)
    for rank in (1, 3, 6):
        f = FACTORIZATIONS[method](W, rank)
        for t in _tensors(f):
            assert bool(torch.isfinite(t).all()), (method, kind, rank)
        assert bool(torch.isfinite(f.reconstruct()).all())


# --- dtype policy ---------------------------------------------------------------------------------


def test_compute_dtype_table():
    assert compute_dtype(torch.bfloat16) == torch.float32
    assert compute_dtype(torch.float16) == torch.float32
    assert compute_dtype(torch.float32) == torch.float32
    assert compute_dtype(torch.float64) == torch.float64
    for dt in (torch.bfloat16, torch.float32, torch.float64):
        assert compute_dtype(dt, reference=True) == torch.float64


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_in_half_precision_out_computed_in_float32(method, dtype):
    W = _randn(12, 9, seed=1, dtype=dtype)
    f = FACTORIZATIONS[method](W, 4, generator=3)
    assert all(t.dtype == dtype for t in _tensors(f))
    # Computed in float32 and rounded once at the end: the same factors as from W.float().
    ref = FACTORIZATIONS[method](W.float(), 4, generator=3, out_dtype=dtype)
    for a, b in zip(_tensors(f), _tensors(ref), strict=True):
        assert torch.equal(a, b), method
    wide = FACTORIZATIONS[method](W, 4, generator=3, out_dtype=torch.float32)
    assert all(t.dtype == torch.float32 for t in _tensors(wide))
    for a, b in zip(_tensors(wide), _tensors(ref), strict=True):
        torch.testing.assert_close(a.to(dtype), b, rtol=0, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_reference_mode_computes_in_float64(method):
    W = _randn(12, 9, seed=2)
    f = FACTORIZATIONS[method](W, 4, generator=3, reference=True)
    assert all(t.dtype == torch.float32 for t in _tensors(f))  # returned in the input dtype...
    ref = FACTORIZATIONS[method](W.double(), 4, generator=3)  # ...from a float64 computation
    for a, b in zip(_tensors(f), _tensors(ref), strict=True):
        assert torch.equal(a, b.float()), method
    g = FACTORIZATIONS[method](W, 4, generator=3, reference=True, out_dtype=torch.float64)
    for a, b in zip(_tensors(g), _tensors(ref), strict=True):
        assert torch.equal(a, b), method


@pytest.mark.parametrize("method", METHODS)
def test_float64_stays_float64(method):
    f = FACTORIZATIONS[method](_randn(10, 7, dtype=torch.float64), 3)
    assert all(t.dtype == torch.float64 for t in _tensors(f))


def test_singular_values_in_info_are_in_the_compute_dtype():
    W = _randn(10, 7, dtype=torch.bfloat16)
    for name in ("svd", "rsvd"):
        assert FACTORIZATIONS[name](W, 3).info["singular_values"].dtype == torch.float32
        assert FACTORIZATIONS[name](W, 3, reference=True).info["singular_values"].dtype == torch.float64
    assert singular_values(W).dtype == torch.float32


def test_half_precision_results_are_close_to_float32_results():
    # Not computed in bf16: a bf16 SVD (if it existed) would lose ~2^-8 of every singular value;
    # here only the final rounding of the factors is visible.
    W = _randn(40, 30, seed=4)
    f16 = FACTORIZATIONS["svd"](W.bfloat16(), 5)
    f32 = FACTORIZATIONS["svd"](W.bfloat16().float(), 5)
    torch.testing.assert_close(f16.core.float(), f32.core, rtol=2**-8, atol=0)


# --- device and generator helpers -----------------------------------------------------------------


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device; use --device cpu"):
            resolve_device("cuda")


def test_make_generator():
    g = torch.Generator().manual_seed(5)
    assert make_generator(g) is g
    a = torch.randn(3, generator=make_generator(None))
    assert torch.equal(a, torch.randn(3, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(
        torch.randn(3, generator=make_generator(7)),
        torch.randn(3, generator=torch.Generator().manual_seed(7)),
    )
    assert make_generator(7).device.type == "cpu"


@pytest.mark.parametrize(
    ("scale", "reason"),
    [(1.0, None), (0.0, "all entries are zero"), (1e30, "overflows torch.float32 when squared"),
     (1e-25, "underflows torch.float32 when squared")],
)
def test_unfactorizable_reason_names_what_a_sweep_cannot_factor(scale, reason):
    W = torch.randn(12, 8, generator=torch.Generator().manual_seed(0)) * scale
    got = unfactorizable_reason(W)
    assert got is None if reason is None else reason in got
    # float16 weights are judged in float32 (their compute dtype), float64 in float64.
    assert unfactorizable_reason(W.double()) == (None if scale != 0.0 else got)


def test_unfactorizable_reason_counts_nan_and_inf():
    W = torch.ones(4, 4)
    W[0, 0], W[1, 1], W[2, 2] = float("nan"), float("inf"), float("-inf")
    assert "1 NaN and 2 Inf" in unfactorizable_reason(W)
