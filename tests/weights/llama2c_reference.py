"""A llama2.c forward pass written straight from the format, for checking the HF conversion only.

It follows Karpathy's ``run.c`` ``forward()``: RMSNorm (eps 1e-5), rotary embeddings on
*interleaved* pairs ``(2i, 2i+1)`` with frequency ``10000^(-2i/head_size)``, grouped-query
attention (query head ``h`` reads KV head ``h // (n_heads / n_kv_heads)``), SwiGLU FFN
``w2(silu(w1 x) * w3 x)``, final RMSNorm, classifier. Nothing here is shared with
``lowrank_lab.weights.llama2c`` except the file reader, so a wrong permutation there shows up.
Also a writer of random llama2.c files for tests that need no data.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import torch

from lowrank_lab.weights.llama2c import Llama2cCheckpoint


def _rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def reference_logits(ckpt: Llama2cCheckpoint, tokens: list[int], dtype=torch.float64) -> torch.Tensor:
    """Logits ``(T, vocab)`` of every position of ``tokens`` (causal), computed in ``dtype``."""
    c = ckpt.config
    A = {
        k: ckpt.array(k).to(dtype)
        for k in (
            "tok_embeddings",
            "attention_norm",
            "wq",
            "wk",
            "wv",
            "wo",
            "ffn_norm",
            "w1",
            "w2",
            "w3",
            "norm",
            "output",
        )
    }
    T, H, KV, hs = len(tokens), c.n_heads, c.n_kv_heads, c.head_size
    x = A["tok_embeddings"][torch.tensor(tokens)]  # (T, dim)
    pos = torch.arange(T, dtype=dtype)
    freqs = 1.0 / (10000.0 ** (torch.arange(0, hs, 2, dtype=dtype) / hs))  # (hs/2,)
    angle = pos[:, None] * freqs[None, :]  # (T, hs/2)
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]

    def rope(v: torch.Tensor, n: int) -> torch.Tensor:  # (T, n*hs), pairs (2i, 2i+1) within each head
        v = v.reshape(T, n, hs // 2, 2)
        a, b = v[..., 0], v[..., 1]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).reshape(T, n * hs)

    mask = torch.full((T, T), float("-inf"), dtype=dtype).triu(1)
    for layer in range(c.n_layers):
        xb = _rmsnorm(x, A["attention_norm"][layer])
        q = rope(xb @ A["wq"][layer].T, H).reshape(T, H, hs).transpose(0, 1)  # (H, T, hs)
        k = rope(xb @ A["wk"][layer].T, KV).reshape(T, KV, hs).transpose(0, 1)  # (KV, T, hs)
        v = (xb @ A["wv"][layer].T).reshape(T, KV, hs).transpose(0, 1)
        k = k.repeat_interleave(H // KV, dim=0)
        v = v.repeat_interleave(H // KV, dim=0)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hs) + mask, dim=-1)  # (H, T, T)
        out = (att @ v).transpose(0, 1).reshape(T, H * hs)
        x = x + out @ A["wo"][layer].T
        xb = _rmsnorm(x, A["ffn_norm"][layer])
        hidden = torch.nn.functional.silu(xb @ A["w1"][layer].T) * (xb @ A["w3"][layer].T)
        x = x + hidden @ A["w2"][layer].T
    return _rmsnorm(x, A["norm"]) @ A["output"].T


def greedy(logits_fn, n_tokens: int, bos: int = 1) -> list[int]:
    """Greedy decoding from BOS: ``logits_fn(tokens) -> (T, vocab)``."""
    tokens = [bos]
    for _ in range(n_tokens):
        tokens.append(int(logits_fn(tokens)[-1].argmax()))
    return tokens


def write_random_llama2c(
    path: Path,
    *,
    dim=32,
    hidden=48,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    vocab=40,
    seq_len=16,
    shared=True,
    seed=0,
) -> dict[str, torch.Tensor]:
    """Write a random version-0 llama2.c checkpoint; return its arrays by layout name."""
    g = torch.Generator().manual_seed(seed)
    hs = dim // n_heads
    kv = n_kv_heads * hs

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    arrays = {
        "tok_embeddings": rnd(vocab, dim, scale=1.0),
        "attention_norm": 1 + rnd(n_layers, dim, scale=0.1),
        "wq": rnd(n_layers, dim, dim),
        "wk": rnd(n_layers, kv, dim),
        "wv": rnd(n_layers, kv, dim),
        "wo": rnd(n_layers, dim, dim),
        "ffn_norm": 1 + rnd(n_layers, dim, scale=0.1),
        "w1": rnd(n_layers, hidden, dim),
        "w2": rnd(n_layers, dim, hidden),
        "w3": rnd(n_layers, hidden, dim),
        "norm": 1 + rnd(dim, scale=0.1),
    }
    freqs = 1.0 / (10000.0 ** (torch.arange(0, hs, 2).float() / hs))
    angle = torch.arange(seq_len).float()[:, None] * freqs[None, :]
    arrays["freq_cis_real"], arrays["freq_cis_imag"] = angle.cos(), angle.sin()
    if not shared:
        arrays["output"] = rnd(vocab, dim)
    header = struct.pack(
        "<7i", dim, hidden, n_layers, n_heads, n_kv_heads, vocab if shared else -vocab, seq_len
    )
    order = [
        "tok_embeddings",
        "attention_norm",
        "wq",
        "wk",
        "wv",
        "wo",
        "ffn_norm",
        "w1",
        "w2",
        "w3",
        "norm",
        "freq_cis_real",
        "freq_cis_imag",
    ] + ([] if shared else ["output"])
    with open(path, "wb") as f:
        f.write(header)
        for name in order:
            f.write(arrays[name].contiguous().numpy().astype("<f4").tobytes())
    return arrays


def write_tokenizer(path: Path, pieces: list[tuple[bytes, float]]) -> None:
    """Write a llama2.c tokenizer file from ``(bytes, score)`` pairs."""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(len(p) for p, _ in pieces)))
        for piece, score in pieces:
            f.write(struct.pack("<fi", score, len(piece)))
            f.write(piece)
