"""Synthetic stand-ins: exact registry shapes, exactly the attached power-law singular values, seeded."""

from __future__ import annotations

import math
import time

import pytest
import torch

from lowrank_lab.weights import MODELS, ModelSpec, get_spec, open_source
from lowrank_lab.weights.synthetic import power_law_spectrum, synthetic_matrix

# Every shape kind a block has: square, GQA-narrow (24 x 48), tall FFN (120 x 48), wide (48 x 120).
TINY = ModelSpec("tiny", None, "llama", 48, 120, 3, 4, 2, 100, False)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_targets_have_registry_shapes(name):
    spec = get_spec(name)
    src = open_source(name, synthetic=True)
    infos = src.targets()
    # One matrix per module and block, and per expert of a mixture-of-experts module.
    assert len(infos) == spec.num_layers * len(spec.target_matrices())
    shapes = spec.target_shapes()
    assert all(i.shape == shapes[i.module] for i in infos)
    assert src.synthetic and src.origin == "synthetic"
    assert all(i.tensor.startswith("synthetic:") for i in infos)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 2e-5), (torch.float64, 1e-11)])
def test_singular_values_are_exactly_the_attached_ones(dtype, rtol):
    for wm in open_source(TINY, synthetic=True, layers="0", dtype=dtype):
        assert wm.weight.dtype == dtype and wm.weight.shape == wm.shape
        assert wm.synthetic and wm.singular_values.dtype == torch.float64
        s = torch.linalg.svdvals(wm.weight.double())
        torch.testing.assert_close(s, wm.singular_values, rtol=rtol, atol=0)


@pytest.mark.parametrize("shape", [(97, 89), (89, 97), (172, 64), (64, 172), (1, 7), (30, 30)])
def test_any_shape_including_coprime_dimensions(shape):
    sigma = power_law_spectrum(min(shape), -0.3, shape=shape)
    W = synthetic_matrix(shape, sigma, torch.Generator().manual_seed(0), torch.float64)
    assert W.shape == shape
    torch.testing.assert_close(torch.linalg.svdvals(W), sigma, rtol=1e-11, atol=0)


@pytest.mark.parametrize("slope", [-0.25, -0.4, -1.0])
def test_power_law_slope_and_entry_scale(slope):
    wm = next(iter(open_source(TINY, synthetic=True, targets="gate_proj", layers="1", slope=slope)))
    s = wm.singular_values
    k = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    fitted = torch.linalg.lstsq(torch.stack([k.log(), torch.ones_like(k)], 1), s.log()[:, None]).solution[
        0, 0
    ]
    assert float(fitted) == pytest.approx(slope, abs=1e-12)
    m, n = wm.shape
    assert float(torch.linalg.matrix_norm(wm.weight.double())) == pytest.approx(
        0.02 * math.sqrt(m * n), rel=1e-5
    )


def test_dense_delocalised_entries():
    W = next(iter(open_source(TINY, synthetic=True, targets="up_proj", layers="0"))).weight
    assert float((W == 0).float().mean()) < 1e-3
    # No entry dominates: like a Gaussian matrix of the same Frobenius norm (max |z| over 5760 draws ≈ 4σ).
    assert float(W.abs().max()) < 7 * float(W.std())


def test_seeded_and_independent_of_the_selection():
    full = {wm.tensor: wm.weight for wm in open_source(TINY, synthetic=True, seed=3)}
    again = {
        wm.tensor: wm.weight for wm in open_source(TINY, synthetic=True, seed=3, layers="2", targets="k_proj")
    }
    assert len(full) == 21 and len(again) == 1
    ((name, w),) = again.items()
    assert torch.equal(w, full[name])
    other = open_source(TINY, synthetic=True, seed=4, layers="2", targets="k_proj")
    assert not torch.equal(next(iter(other)).weight, w)
    # Different matrices of one shape differ.
    assert not torch.equal(
        full["synthetic:model.layers.0.self_attn.q_proj.weight"],
        full["synthetic:model.layers.1.self_attn.q_proj.weight"],
    )


def test_bf16_and_labels():
    src = open_source("stories260K", synthetic=True, dtype="bfloat16", layers="4", targets="w2")
    wm = next(iter(src))
    assert wm.weight.dtype == torch.bfloat16 and wm.shape == (64, 172)
    assert src.describe()["synthetic"] is True and src.describe()["slope"] == -0.4


def test_positive_slope_is_refused():
    with pytest.raises(ValueError, match="slope"):
        open_source("minilm", synthetic=True, slope=0.5)


@pytest.mark.slow
def test_llama_7b_ffn_matrix_is_cheap():
    # The brief: an 11008 x 4096 matrix in about a second on 2 cores. CPU time, because the wall
    # clock of a shared machine measures the neighbours; a dense QR of an 11008 x 4096 Gaussian alone
    # takes tens of seconds.
    src = open_source("llama-7b", synthetic=True, layers="0", targets="gate_proj")
    info = src.targets()[0]
    src.load(info)  # warm-up: allocator and BLAS initialisation
    cpu, wall = time.process_time(), time.perf_counter()
    wm = src.load(info)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert wm.weight.shape == (11008, 4096)
    assert cpu < 2.0, f"{cpu:.2f} s CPU ({wall:.2f} s wall)"
