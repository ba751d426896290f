"""NF4 and int8 simulated in pure torch: the level table, the blockwise error bound, double quantisation."""

from __future__ import annotations

import math

import pytest
import torch

from lowrank_lab.linalg.quant import (
    NF4_LEVELS,
    dynamic_map_8bit,
    int8_rowwise_roundtrip,
    nf4_dequantize,
    nf4_quantize,
    nf4_roundtrip,
)


def test_levels_are_the_normal_quantiles_of_qlora():
    # REFERENCE.md: δ = 1 − ½(1/32 + 1/30); positives Φ⁻¹ at linspace(δ, .5, 9)[:8], negatives
    # −Φ⁻¹ at linspace(δ, .5, 8)[:7], plus 0, normalised by Φ⁻¹(δ). The hard-coded fp32 table of
    # bitsandbytes agrees with that float64 recomputation to ~1e-7.
    from scipy import stats

    delta = 1 - 0.5 * (1 / 32 + 1 / 30)
    pos = stats.norm.ppf(torch.linspace(delta, 0.5, 9, dtype=torch.float64)[:8].numpy())
    neg = -stats.norm.ppf(torch.linspace(delta, 0.5, 8, dtype=torch.float64)[:7].numpy())
    levels = sorted([*pos, *neg, 0.0])
    levels = [v / stats.norm.ppf(delta) for v in levels]
    assert len(NF4_LEVELS) == 16 and NF4_LEVELS[0] == -1.0 and NF4_LEVELS[-1] == 1.0 and 0.0 in NF4_LEVELS
    assert max(abs(a - b) for a, b in zip(levels, NF4_LEVELS, strict=True)) < 1e-6


def test_dynamic_map_has_256_sorted_entries_with_zero_and_one():
    table = dynamic_map_8bit()
    assert table.shape == (256,) and bool((table[1:] > table[:-1]).all())
    assert (
        float(table[-1]) == 1.0
        and 0.0 in table.tolist()
        and math.isclose(float(table[0]), -0.9929687, rel_tol=1e-5)
    )


@pytest.mark.parametrize("shape", [(64, 64), (37, 50), (3, 5)])
def test_roundtrip_error_is_within_half_the_widest_level_gap_of_each_block(shape):
    torch.manual_seed(0)
    W = torch.randn(shape) * 0.02
    q = nf4_quantize(W)
    What = nf4_dequantize(q)
    assert What.shape == W.shape and What.dtype == W.dtype
    gap = max(b - a for a, b in zip(NF4_LEVELS[:-1], NF4_LEVELS[1:], strict=True))
    scales = q.absmax.repeat_interleave(64)[: W.numel()].reshape(shape)
    assert bool(((W - What).abs() <= scales * gap / 2 + 1e-8).all())
    # the largest entry of every block is represented exactly (level ±1 times its absmax)
    flat = W.flatten()
    blocks = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 64)).reshape(-1, 64)
    idx = blocks.abs().argmax(1) + 64 * torch.arange(blocks.shape[0])
    assert torch.allclose(What.flatten()[idx], flat[idx], rtol=1e-6)
    # idempotent: a dequantised weight quantises to itself
    torch.testing.assert_close(nf4_roundtrip(What), What, rtol=1e-6, atol=1e-9)


def test_double_quantisation_costs_little_error_and_saves_scale_bits():
    torch.manual_seed(1)
    W = torch.randn(256, 512) * 0.02
    plain, dq = nf4_quantize(W), nf4_quantize(W, double_quant=True)
    assert plain.bits_per_parameter() == 4.5
    assert math.isclose(dq.bits_per_parameter(), 4.127, abs_tol=1e-3)
    e_plain = float((W - nf4_dequantize(plain)).norm())
    e_dq = float((W - nf4_dequantize(dq)).norm())
    assert abs(e_dq / e_plain - 1) < 0.01  # 8-bit scales move the error by well under 1%
    # NF4's relative error on Gaussian weights, about 0.09 of ‖W‖ (blocks of 64).
    assert 0.07 < e_plain / float(W.norm()) < 0.11


def test_zero_blocks_and_dtypes():
    W = torch.zeros(4, 64, dtype=torch.bfloat16)
    W[0, 0] = 1.0
    out = nf4_roundtrip(W)
    assert out.dtype == torch.bfloat16 and torch.equal(out, W)
    with pytest.raises(TypeError, match="floating-point"):
        nf4_quantize(torch.ones(3, dtype=torch.int64))


def test_int8_rowwise_error_is_within_half_a_step():
    torch.manual_seed(2)
    W = torch.randn(16, 40)
    out = int8_rowwise_roundtrip(W)
    step = W.abs().amax(1, keepdim=True) / 127
    assert bool(((W - out).abs() <= step / 2 + 1e-7).all())
