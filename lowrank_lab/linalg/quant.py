"""Weight quantisation simulated in pure torch: NF4 (quantise, dequantise, round trip) and int8.

QLoRA's data type (Dettmers et al. 2023, arXiv 2305.14314, Sec. 3): 16 levels at quantiles of a
standard normal, rescaled to [−1, 1], applied per block of 64 consecutive entries (row-major) with
the block's absmax as its scale; optional double quantisation of those absmax scales to 8 bits in
blocks of 256. Levels and the 8-bit dynamic map follow bitsandbytes (REFERENCE.md, "NF4 in pure
torch"), so ``nf4_roundtrip(W)`` is what ``bnb.nn.Params4bit(W, quant_type="nf4")`` dequantises to,
without bitsandbytes or a GPU. Knows nothing of models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# bitsandbytes' fp32 NF4 table (functional.py, get_4bit_type("nf4")). Hard-coded rather than
# recomputed from Φ⁻¹: a float64 recomputation differs by ~1e-7 (REFERENCE.md).
NF4_LEVELS = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
BLOCK = 64  # QLoRA / bitsandbytes blocksize for 4-bit weights
DQ_BLOCK = 256  # bitsandbytes blocksize of the second quantisation of the absmax scales


def dynamic_map_8bit() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic map (``create_dynamic_map(signed=True)``), 256 sorted values.

    For i = 0…6, the midpoints of ``linspace(0.1, 1, 2**i + 1)`` times ``10**(i − 6)``, both signs,
    plus 0 and 1 (REFERENCE.md).
    """
    values: list[float] = []
    for i in range(7):
        edges = torch.linspace(0.1, 1.0, 2**i + 1, dtype=torch.float64)
        mids = ((edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - 6)).tolist()
        values += mids + [-v for v in mids]
    values += [0.0, 1.0]
    out = torch.tensor(sorted(values), dtype=torch.float32)
    return out


@dataclass
class NF4Tensor:
    """A quantised matrix: 4-bit codes, per-block scales, and what it takes to rebuild the scales."""

    codes: torch.Tensor  # uint8 (numel,) level indices 0..15
    absmax: torch.Tensor  # float32 (blocks,): the scales (already dequantised when double-quantised)
    shape: tuple[int, ...]
    dtype: torch.dtype
    block: int
    double_quant: bool

    def bits_per_parameter(self) -> float:
        """4 bits per entry plus the scales: 32/64 = 0.5 bit, or ≈ 0.127 bit double-quantised."""
        scale_bits = (8 / self.block + 32 / (self.block * DQ_BLOCK)) if self.double_quant else 32 / self.block
        return 4.0 + scale_bits


def _nearest(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    # Index of the nearest entry of a sorted table: bucketize against the midpoints between levels.
    mids = (table[1:] + table[:-1]) / 2
    return torch.bucketize(values, mids)


def _quantize_absmax(absmax: torch.Tensor) -> torch.Tensor:
    # Double quantisation (QLoRA Sec. 3): subtract the mean scale, quantise the rest blockwise (256)
    # to the 8-bit dynamic map with each block's absmax, dequantise as map[idx]·a₂ + c.
    c = absmax.mean()
    centred = absmax - c
    pad = (-centred.numel()) % DQ_BLOCK
    blocks = torch.nn.functional.pad(centred, (0, pad)).reshape(-1, DQ_BLOCK)
    a2 = blocks.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    table = dynamic_map_8bit().to(absmax.device)
    idx = _nearest(blocks / a2, table)
    return (table[idx] * a2).reshape(-1)[: centred.numel()] + c


def nf4_quantize(W: torch.Tensor, *, block: int = BLOCK, double_quant: bool = False) -> NF4Tensor:
    """Quantise ``W`` to NF4: flatten row-major, blocks of ``block`` entries, absmax scale per block.

    Parameters
    ----------
    W : Tensor
        Any floating tensor (a weight matrix); computed in float32.
    block : int, default 64
        Entries per scale (QLoRA's and bitsandbytes' 4-bit default).
    double_quant : bool, default False
        Quantise the scales themselves (QLoRA's double quantisation). False is what LoftQ and
        PiSSA's ``calculate_quantization_error.py`` use (REFERENCE.md, sections 6 and 8).
    """
    if not W.dtype.is_floating_point:
        raise TypeError(f"nf4_quantize takes a floating-point tensor, got {W.dtype}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    flat = W.detach().reshape(-1).float()
    pad = (-flat.numel()) % block
    blocks = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, block)  # (blocks, block)
    absmax = blocks.abs().amax(dim=1)  # (blocks,)
    if double_quant:
        absmax = _quantize_absmax(absmax)
    table = torch.tensor(NF4_LEVELS, dtype=torch.float32, device=flat.device)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # an all-zero block codes to 0
    codes = _nearest(blocks / safe[:, None], table).reshape(-1)[: flat.numel()].to(torch.uint8)
    return NF4Tensor(codes, absmax, tuple(W.shape), W.dtype, block, double_quant)


def nf4_dequantize(q: NF4Tensor) -> torch.Tensor:
    """``ŵ = level[code] · absmax`` of each block, reshaped and cast back to the original dtype."""
    table = torch.tensor(NF4_LEVELS, dtype=torch.float32, device=q.codes.device)
    n = q.codes.numel()
    scales = q.absmax.repeat_interleave(q.block)[:n]
    return (table[q.codes.long()] * scales).reshape(q.shape).to(q.dtype)


def nf4_roundtrip(W: torch.Tensor, *, block: int = BLOCK, double_quant: bool = False) -> torch.Tensor:
    """``deq(quant(W))``: the weight a 4-bit NF4 model computes with, in ``W``'s dtype."""
    return nf4_dequantize(nf4_quantize(W, block=block, double_quant=double_quant))


def int8_rowwise_roundtrip(W: torch.Tensor) -> torch.Tensor:
    """Row-wise absmax int8 (bitsandbytes ``Int8Params``, LoftQ's 8-bit quantiser): ``round(127·w/a)·a/127``.

    ``a`` = max|w| of each row (output channel); an all-zero row stays zero. Returns W's dtype.
    """
    Wf = W.detach().float()
    a = Wf.abs().amax(dim=-1, keepdim=True)
    safe = torch.where(a > 0, a, torch.ones_like(a))
    return (torch.round(Wf * 127.0 / safe) * safe / 127.0).to(W.dtype)
