"""The registry (one name per method, one calling convention) and the Factorization result type."""

from __future__ import annotations

import pytest
import torch

from lowrank_lab.linalg import (
    FACTORIZATIONS,
    Factorization,
    FactorizationMethod,
    factorize,
    get_factorization,
)

EXPECTED = {"svd", "rsvd", "nystrom", "nystrom-pinv", "nystrom-released", "ldu", "rlu", "qr"}


def test_the_registry_names_every_method_once():
    assert set(FACTORIZATIONS) == EXPECTED
    for name, m in FACTORIZATIONS.items():
        assert isinstance(m, FactorizationMethod) and m.name == name
        assert m.summary and m.reference  # the CLI and reports print these
        assert callable(m.fn) and m.fn.__doc__  # numpydoc naming the paper


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("shape", [(11, 7), (7, 11)])
def test_every_method_takes_the_common_convention(name, shape):
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    m = FACTORIZATIONS[name]
    g = torch.Generator().manual_seed(1)
    f = m(W, 3, generator=g)
    assert isinstance(f, Factorization)
    assert f.method == name
    assert f.left.shape == (shape[0], 3) and f.right.shape == (3, shape[1])
    assert f.rank == 3 and f.shape == shape and f.dtype == W.dtype
    assert f.reconstruct().shape == shape
    # positional rank, int seed, None seed, and the registry-level factorize() all agree
    a = factorize(W, 3, name, generator=5)
    b = m(W, 3, generator=5)
    assert torch.equal(a.reconstruct(), b.reconstruct())
    m(W, rank=3, generator=None)
    assert m.randomized == (name in {"rsvd", "nystrom", "rlu"})


def test_factorize_defaults_to_the_exact_svd():
    W = torch.randn(6, 5)
    assert factorize(W, 2).method == "svd"


def test_registry_options_are_defaults_that_calls_override():
    W = torch.randn(20, 15, generator=torch.Generator().manual_seed(2))
    m = FactorizationMethod("rsvd-q4", FACTORIZATIONS["rsvd"].fn, "test", "test", True, True, {"n_iter": 4})
    assert m(W, 3).info["n_iter"] == 4
    assert m(W, 3, n_iter=1).info["n_iter"] == 1


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        get_factorization("svdd")
    msg = str(err.value)
    assert "unknown factorization method 'svdd'" in msg and "Did you mean svd" in msg
    for name in EXPECTED:
        assert name in msg
    with pytest.raises(ValueError, match="Valid methods: svd, rsvd"):
        factorize(torch.randn(3, 3), 1, "cholesky")


# --- Factorization --------------------------------------------------------------------------------


def test_factorization_checks_shapes():
    with pytest.raises(ValueError, match=r"left is \(4, 2\) but right is \(3, 5\)"):
        Factorization(left=torch.zeros(4, 2), right=torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"core must be \(2,\) or \(2, 2\), got \(3,\)"):
        Factorization(left=torch.zeros(4, 2), right=torch.zeros(2, 5), core=torch.zeros(3))


def test_reconstruct_and_dense_core_for_every_kind_of_core():
    g = torch.Generator().manual_seed(3)
    left, right = torch.randn(5, 2, generator=g), torch.randn(2, 4, generator=g)
    d = torch.tensor([2.0, -3.0])
    M = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    none, diag, full = (
        Factorization(left, right),
        Factorization(left, right, d),
        Factorization(left, right, M),
    )
    torch.testing.assert_close(none.reconstruct(), left @ right)
    torch.testing.assert_close(diag.reconstruct(), left @ torch.diag(d) @ right)
    torch.testing.assert_close(full.reconstruct(), left @ M @ right)
    assert torch.equal(none.dense_core(), torch.eye(2))
    assert torch.equal(diag.dense_core(), torch.diag(d))
    assert torch.equal(full.dense_core(), M)


def test_to_casts_every_tensor_and_keeps_info():
    f = FACTORIZATIONS["svd"](torch.randn(6, 4), 2)
    h = f.to(torch.bfloat16)
    assert h.left.dtype == h.right.dtype == h.core.dtype == torch.bfloat16
    assert h.info is f.info and h.method == f.method
    q = FACTORIZATIONS["qr"](torch.randn(6, 4), 2).to(torch.float64)
    assert q.core is None and q.left.dtype == torch.float64
