"""Intruder dimensions (Shuttleworth et al. 2024): the fast path against the definition written out,
planted cases with a known answer, PEFT parity, randomized tuned SVD, and the base-SVD disk cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank_lab.analysis import intruders as I

# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def brute_force(W0: torch.Tensor, W: torch.Tensor, k: int, eps: float, side: str = "left"):
    """The definition, literally: float64 full SVDs, every |cos| by a loop, a strict '<'."""
    A0 = W0.double().numpy()
    A = W.double().numpy()
    if side == "right":
        A0, A = A0.T, A.T  # right singular vectors of W are the left ones of Wᵀ
    U0 = np.linalg.svd(A0, full_matrices=False)[0]
    U = np.linalg.svd(A, full_matrices=False)[0]
    best = []
    for i in range(min(k, U.shape[1])):
        sims = [abs(float(np.dot(U[:, i], U0[:, j]))) for j in range(U0.shape[1])]
        best.append(max(sims))
    best = np.array(best)
    return int(np.sum(best < eps)), best


def known_spectrum(m: int, n: int, seed: int, decay: float = 0.8):
    """W0 = U diag(s) Vᵀ with geometric, well-separated singular values; returns W0, U, s, V."""
    g = torch.Generator().manual_seed(seed)
    p = min(m, n)
    U = torch.linalg.qr(torch.randn(m, p, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, p, generator=g, dtype=torch.float64)).Q
    s = 10.0 * decay ** torch.arange(p, dtype=torch.float64) + 0.05
    return (U * s) @ V.T, U, s, V


def planted_rank1(m: int, n: int, seed: int, strength: float = 50.0, bottom: int = 32):
    """Base with known spectrum plus σ·u·vᵀ, u and v spread evenly over the base's bottom ``bottom``
    singular vectors: orthogonal to every top direction, |cos| = 1/√bottom with each base vector."""
    W0, U, s, V = known_spectrum(m, n, seed)
    p = min(m, n)
    g = torch.Generator().manual_seed(seed + 1)
    signs = torch.where(torch.rand(bottom, generator=g) < 0.5, -1.0, 1.0).double()
    u = U[:, p - bottom :] @ signs / bottom**0.5
    v = V[:, p - bottom :] @ signs.flip(0) / bottom**0.5
    return W0.float(), (W0 + strength * torch.outer(u, v)).float()


# --------------------------------------------------------------------------------------------------
# Fast path vs the brute-force definition
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(48, 48), (64, 40), (40, 64)])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_path_matches_brute_force_on_random_updates(shape, side, seed):
    g = torch.Generator().manual_seed(100 * seed + shape[0])
    m, n = shape
    W0 = torch.randn(m, n, generator=g)
    r = 1 + seed * 3
    # Low-rank update of random scale: some matrices get intruders, some do not.
    dW = (1.0 + 3 * seed) * torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g) / n**0.5
    W = W0 + dW
    for eps in (0.3, 0.5, 0.7):
        rec = I.find_intruders(W0, W, top_k=10, epsilon=eps, side=side)[side]
        count, best = brute_force(W0, W, 10, eps, side)
        np.testing.assert_allclose(rec.similarities.numpy(), best, atol=2e-4)
        ties = np.abs(best - eps) < 2e-4
        assert not ties.any(), "a best match sits on ε: pick another seed"
        assert rec.count == count
        assert rec.sweep[round(eps, 1)] == count


def test_record_contents_are_consistent():
    W0, W = planted_rank1(64, 48, seed=3)
    rec = I.find_intruders(W0, W, top_k=10, keep_matrix=True)["left"]
    assert rec.top_k == 10 and rec.ranks == list(range(1, 11))
    assert rec.similarity_matrix.shape == (10, 48)
    best, idx = rec.similarity_matrix.max(dim=1)
    torch.testing.assert_close(best.double(), rec.similarities)
    assert torch.equal(rec.base_ranks, idx + 1)
    assert torch.all(rec.singular_values[:-1] >= rec.singular_values[1:])
    assert rec.sweep == {e: int((rec.similarities < e).sum()) for e in I.EPSILON_GRID}
    counts = list(rec.sweep.values())
    assert counts == sorted(counts), "the count can only grow with ε"
    assert rec.intruder_ranks == [1]


def test_top_k_is_clipped_to_the_matrix_rank():
    W0, W = planted_rank1(12, 40, seed=0, bottom=4)
    rec = I.find_intruders(W0, W, top_k=50)["left"]
    assert rec.top_k == 12


# --------------------------------------------------------------------------------------------------
# Planted cases
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 64), (96, 48), (48, 96)])
@pytest.mark.parametrize("side", ["left", "right"])
def test_planted_rank1_update_gives_exactly_one_intruder(shape, side):
    W0, W = planted_rank1(*shape, seed=7)
    rec = I.find_intruders(W0, W, top_k=10, epsilon=0.5, side=side)[side]
    assert rec.count == 1
    assert rec.intruder_ranks == [1]  # the planted direction dominates the spectrum
    assert rec.similarities[0] < 0.3  # 1/√32 ≈ 0.18 plus the coupling with W0
    assert torch.all(rec.similarities[1:] > 0.99)  # the base's top pairs are still singular pairs of W


def test_small_random_perturbation_gives_no_intruder():
    W0, *_ = known_spectrum(80, 64, seed=5)
    g = torch.Generator().manual_seed(5)
    W = W0 + 1e-3 * torch.randn(80, 64, generator=g, dtype=torch.float64)
    recs = I.find_intruders(W0.float(), W.float(), side="both")
    assert recs["left"].count == 0 and recs["right"].count == 0
    assert all(c == 0 for c in recs["left"].sweep.values())
    assert torch.all(recs["left"].similarities > 0.99)


# --------------------------------------------------------------------------------------------------
# Randomized tuned-side SVD
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 64), (96, 48)])
def test_randomized_tuned_svd_gives_full_svd_counts_on_planted_cases(shape):
    W0, W = planted_rank1(*shape, seed=11)
    full = I.find_intruders(W0, W, side="both", tuned_svd="full")
    rand = I.find_intruders(W0, W, side="both", tuned_svd="randomized")
    for side in ("left", "right"):
        assert rand[side].tuned_svd == "randomized"
        assert rand[side].count == full[side].count == 1
        assert rand[side].sweep == full[side].sweep
        np.testing.assert_allclose(rand[side].similarities, full[side].similarities, atol=1e-3)


# --------------------------------------------------------------------------------------------------
# Disk cache
# --------------------------------------------------------------------------------------------------


def test_cache_hit_on_second_run_computes_no_base_svd(tmp_path, monkeypatch):
    W0, W = planted_rank1(64, 48, seed=2)
    calls = []
    real = I.truncated_svd

    def counting(M, rank, **kw):
        calls.append((tuple(M.shape), rank))
        return real(M, rank, **kw)

    monkeypatch.setattr(I, "truncated_svd", counting)
    cache = I.SVDCache(tmp_path / "svd")
    cold = I.find_intruders(W0, W, side="both", cache=cache, tuned_svd="randomized")
    assert calls == [((64, 48), 48)]  # one full base SVD serves both sides
    assert cache.misses == 2 and cache.hits == 0
    assert len(list((tmp_path / "svd").rglob("*.safetensors"))) == 2
    assert not list((tmp_path / "svd").rglob("*.tmp"))

    calls.clear()
    cache2 = I.SVDCache(tmp_path / "svd")  # a new process: only the disk is shared
    warm = I.find_intruders(W0.clone(), W, side="both", cache=cache2, tuned_svd="randomized")
    assert calls == []
    assert cache2.hits == 2 and cache2.misses == 0
    assert warm["left"].cache_hit and not cold["left"].cache_hit
    for side in ("left", "right"):
        torch.testing.assert_close(warm[side].similarities, cold[side].similarities)
        assert warm[side].count == cold[side].count == 1


def test_cache_key_depends_on_content_shape_dtype_and_side(tmp_path):
    cache = I.SVDCache(tmp_path)
    W = torch.randn(8, 6)
    k = cache.key(W, "left")
    assert k == cache.key(W.clone(), "left")
    assert k != cache.key(W, "right")
    assert k != cache.key(W.double(), "left")
    assert k != cache.key(W.reshape(6, 8), "left")
    W2 = W.clone()
    W2[3, 2] = torch.nextafter(W2[3, 2], torch.tensor(1e9))  # one bit
    assert k != cache.key(W2, "left")
    assert cache.key(W.bfloat16(), "left") != cache.key(W.half(), "left")


def test_torn_cache_entry_is_a_miss_and_is_rewritten(tmp_path):
    W0, W = planted_rank1(40, 40, seed=4, bottom=16)
    cache = I.SVDCache(tmp_path)
    I.find_intruders(W0, W, cache=cache)
    (entry,) = list(tmp_path.rglob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:100])
    cache2 = I.SVDCache(tmp_path)
    rec = I.find_intruders(W0, W, cache=cache2)["left"]
    assert cache2.misses == 1 and rec.count == 1
    cache3 = I.SVDCache(tmp_path)
    I.find_intruders(W0, W, cache=cache3)
    assert cache3.hits == 1


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def test_shape_mismatch_names_the_tensor():
    with pytest.raises(I.IntruderInputError, match=r"layer\.3\.q.*\(8, 6\).*\(6, 8\)"):
        I.find_intruders(torch.randn(8, 6), torch.randn(6, 8), name="layer.3.q")


@pytest.mark.parametrize(
    ("kw", "msg"),
    [({"epsilon": 0.0}, "epsilon"), ({"epsilon": 1.5}, "epsilon"), ({"top_k": 0}, "top_k"),
     ({"side": "up"}, "side"), ({"tuned_svd": "lanczos"}, "tuned_svd")],
)
def test_bad_options_are_named(kw, msg):
    with pytest.raises(I.IntruderInputError, match=msg):
        I.find_intruders(torch.randn(8, 6), torch.randn(8, 6), **kw)


def test_non_finite_weight_is_named():
    W = torch.randn(8, 6)
    W[1, 1] = float("nan")
    with pytest.raises(I.IntruderInputError, match="tuned q_proj.*NaN"):
        I.find_intruders(torch.randn(8, 6), W, name="q_proj")
