"""Each init puts what its paper says in A, M, B — checked on single matrices with known structure."""

from __future__ import annotations

import math

import pytest
import torch

from lowrank_lab.adapters import ADAPTERS, AdapterOptionError, LowRankLinear, get_adapter, initialize
from lowrank_lab.linalg import ldu, optimal_error, relative_errors, singular_values, truncated_svd
from lowrank_lab.linalg.result import Factorization


def power_law(m: int, n: int, slope: float = -0.4, seed: int = 0) -> torch.Tensor:
    """``U diag(k^slope) Vᵀ``: the slowly decaying spectrum of real LLM weights (REFERENCE.md)."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64)).Q
    S = torch.arange(1, k + 1, dtype=torch.float64) ** slope
    return ((U * S) @ V.T).float()


def _product(f) -> torch.Tensor:
    B = f.B.double()
    if f.M is not None:
        B = B * f.M.double() if f.M.ndim == 1 else B @ f.M.double()
    return B @ f.A.double()


W = power_law(40, 24)


@pytest.mark.parametrize("scaling", [1.0, 0.25])
def test_pissa_is_the_svd_split_evenly_and_divided_by_s(scaling):
    r = 5
    f = initialize("pissa", W, r, scaling=scaling)
    svd = truncated_svd(W.double(), r)
    assert torch.allclose(scaling * _product(f), svd.reconstruct(), atol=1e-5)
    # B = U·√(S/s), A = √(S/s)·Vh: column norms of B equal row norms of A (PEFT's pissa_init).
    assert torch.allclose(f.B.norm(dim=0), f.A.norm(dim=1), rtol=1e-5)
    assert torch.allclose(f.B.norm(dim=0) ** 2, svd.core.float() / scaling, rtol=1e-4)


def test_milora_takes_the_smallest_triplets():
    r = 4
    f = initialize("milora", W, r)
    svd = truncated_svd(W.double(), r, which="smallest")
    assert torch.allclose(_product(f), svd.reconstruct(), atol=1e-6)
    S = singular_values(W.double())
    assert torch.allclose(torch.linalg.svdvals(_product(f))[:r], S[-r:], rtol=1e-4)


def test_pissa_fast_reproduces_pissa_with_enough_power_iterations():
    r = 4
    exact = _product(initialize("pissa", W, r))
    # Gap σ_{r+p+1}/σ_r ≈ 0.7 on this slow spectrum: with p = 6, 20 iterations converge to ~1e-6.
    fast = _product(initialize("pissa-fast", W, r, n_iter=20, oversample=6, generator=0))
    assert torch.allclose(fast, exact, atol=1e-4 * float(exact.abs().max()))
    assert get_adapter("pissa-fast").options == {
        "n_iter": 4,
        "oversample": 0,
        "normalizer": "qr",
        "reference": False,
    }
    f = initialize("pissa-fast", W, r, oversample=3, n_iter=1, normalizer="lu")
    assert f.info["sketch"] == r + 3 and f.info["n_iter"] == 1


def test_pissa_fast_defaults_match_peft_pissa_niter_4_error():
    # Same algorithm as torch.svd_lowrank(W, q=r, niter=4) (PEFT's pissa_niter_4): no oversampling,
    # QR re-orthonormalisation. Different random draws, so compare errors, not factors.
    r = 6
    ours = _product(initialize("pissa-fast", W, r, generator=0)).float()
    err_ours = relative_errors(W, Factorization(ours, torch.eye(W.shape[1])), spectral=False)[0]
    torch.manual_seed(0)
    U, S, V = torch.svd_lowrank(W, q=r, niter=4)
    err_peft = relative_errors(W, Factorization(U * S, V.T), spectral=False)[0]
    opt = optimal_error(singular_values(W), r)[0]
    assert err_ours / opt < 1.05 and abs(err_ours - err_peft) / opt < 0.02


def test_olora_is_the_thin_qr():
    f = initialize("olora", W, 5, scaling=0.5)
    Q, R = torch.linalg.qr(W)
    assert torch.allclose(f.B.T @ f.B, torch.eye(5), atol=1e-5)
    assert torch.allclose(f.B.abs(), Q[:, :5].abs(), atol=1e-5)  # no rescaling by s (PEFT olora_init)
    assert torch.allclose(f.A.abs(), R[:5].abs(), atol=1e-5)


def test_lora_xs_freezes_the_svd_and_draws_a_1e5_core():
    f = initialize("lora-xs", W, 5, generator=0)
    svd = truncated_svd(W, 5)
    assert torch.allclose(f.B, svd.left) and torch.allclose(f.A, svd.core[:, None] * svd.right)
    assert f.M.shape == (5, 5) and 0.3e-5 < float(f.M.std()) < 3e-5
    assert torch.equal(initialize("lora-xs", W, 5, core_std=0.0).M, torch.zeros(5, 5))
    with pytest.raises(AdapterOptionError, match="core_std"):
        initialize("lora-xs", W, 5, core_std=-1.0)


def test_lora_and_slora_are_kaiming_uniform_like_peft():
    f = initialize("slora", W, 6, generator=0)
    n = W.shape[1]
    assert torch.count_nonzero(f.B) == 0
    assert float(f.A.abs().max()) <= 1 / math.sqrt(n) and float(f.A.abs().max()) > 0.8 / math.sqrt(n)
    assert float(f.M.abs().max()) <= 1 / math.sqrt(6)
    again = initialize("slora", W, 6, generator=0)
    assert torch.equal(f.A, again.A) and torch.equal(f.M, again.M)  # the seed fixes the init
    assert not torch.equal(f.A, initialize("slora", W, 6, generator=1).A)
    lora = initialize("lora", W, 6, generator=0)
    assert torch.count_nonzero(lora.B) == 0 and lora.M is None


def test_nystrom_variants_differ_only_in_their_core():
    r = 4
    released, pinv = initialize("nlora", W, r), initialize("nlora-pinv", W, r)
    for f in (released, pinv):
        assert torch.equal(f.B, W[:, :r]) and torch.equal(f.A, W[:r, :])
    assert torch.equal(released.M, W[:r, :r])
    assert torch.allclose(pinv.M, torch.linalg.pinv(W[:r, :r]), rtol=1e-4, atol=1e-4)
    # The textbook core reproduces the chosen rows and columns; the raw one does not.
    assert torch.allclose(_product(pinv)[:, :r], W[:, :r].double(), atol=1e-4)
    sketch = initialize("nlora-sketch", W, r, generator=0)
    assert (
        sketch.M.shape == (r, r) and torch.count_nonzero(sketch.M - torch.diag(torch.diagonal(sketch.M))) == 0
    )
    opt = optimal_error(singular_values(W), r)[0]
    err = float((W.double() - _product(sketch)).norm() / W.double().norm())
    assert err < 1.3 * opt  # near the Eckart–Young optimum (nystrom_sketch, 2 power iterations)


def test_inttune_uses_nloras_init_and_trains_only_the_core():
    a, b = initialize("inttune", W, 3), initialize("nlora", W, 3)
    assert all(torch.equal(x, y) for x, y in [(a.A, b.A), (a.B, b.B), (a.M, b.M)])
    assert ADAPTERS["inttune"].trains == {"M"} and ADAPTERS["nlora"].trains == {"A", "M", "B"}


def test_loldu_is_the_truncated_ldu_with_z_over_s():
    r, s = 5, 0.5
    f = initialize("loldu", W, r, scaling=s)
    ref = ldu(W, r)
    assert f.M.shape == (r,)
    assert torch.allclose(s * _product(f), ref.reconstruct().double(), atol=1e-5)
    assert torch.allclose(f.M * s, ref.core)


def test_loldu_zero_pivots_stay_finite():
    Z = torch.zeros(12, 8)
    Z[:, 0] = torch.arange(12.0)
    f = initialize("loldu", Z, 3)
    assert all(torch.isfinite(t).all() for t in (f.A, f.B, f.M))


def test_bf16_weights_get_bf16_factors_computed_in_float32():
    Wb = W.to(torch.bfloat16)
    f = initialize("pissa", Wb, 4)
    assert f.A.dtype == f.B.dtype == torch.bfloat16
    exact = truncated_svd(Wb.float(), 4).reconstruct()
    assert torch.allclose(_product(f).float(), exact, atol=2e-2 * float(exact.abs().max()))


def test_rank_out_of_range_names_the_numbers():
    with pytest.raises(ValueError, match="rank=30 is out of range for a 40x24"):
        initialize("pissa", W, 30)


def test_layer_forward_is_base_plus_s_b_m_a_and_never_forms_delta_w(monkeypatch):
    torch.manual_seed(0)
    base = torch.nn.Linear(24, 40)
    f = initialize("slora", base.weight.detach(), 4)
    f.B.normal_()
    layer = LowRankLinear(base, f.A, f.B, f.M, scaling=0.5, trainable="AMB")
    x = torch.randn(3, 7, 24)
    expected = base(x) + 0.5 * x @ (f.B @ f.M @ f.A).T
    assert torch.allclose(layer(x), expected, atol=1e-5)
    # The forward only multiplies activations by thin factors: no (40, 24) product is formed.
    shapes = []
    real = torch.nn.functional.linear

    def spy(inp, weight, bias=None):
        shapes.append(tuple(weight.shape))
        return real(inp, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    layer(x)
    assert shapes == [(40, 24), (4, 24), (4, 4), (40, 4)]  # base, then A, M, B


def test_layer_rejects_factors_that_do_not_fit():
    base = torch.nn.Linear(24, 40)
    with pytest.raises(ValueError, match=r"A is \(4, 40\) \(want \(4, 24\)\)"):
        LowRankLinear(base, torch.zeros(4, 40), torch.zeros(40, 4), scaling=1.0, trainable="AB")
    with pytest.raises(TypeError, match="wraps nn.Linear"):
        LowRankLinear(
            torch.nn.Conv2d(1, 1, 1), torch.zeros(1, 1), torch.zeros(1, 1), scaling=1.0, trainable="A"
        )
