"""Shape-true synthetic stand-ins: registry shapes, a power-law spectrum, exact singular values.

They exist to measure scale (7B, 70B shapes) on a machine that does not have those weights, and
are labelled ``synthetic`` everywhere (``WeightSource.synthetic``, ``WeightMatrix.synthetic``, and
tensor names ``synthetic:<name>``).

Spectrum: ``σ_k = σ_1 · k^slope`` for ``k = 1 .. min(m, n)``. Real LLM weights have slowly
decaying spectra, a log-log slope of about −0.3 to −0.5 (REFERENCE.md, "Randomized linear
algebra"), hence the default −0.4. ``σ_1`` is set so that ``‖W‖_F = std · sqrt(m n)`` with
``std = 0.02``, the ``initializer_range`` of Llama and BERT configs, so entries have the scale of
real weights.

Construction (for ``m >= n``; a wide matrix is built transposed): ``W = U R diag(σ) T`` with

* ``T`` (n × n) = ``P_a (C_2 ⊗ D_2) P_b (C_1 ⊗ D_1)`` — two rounds of a Kronecker product of two
  small Haar-random orthogonal matrices with random row permutations between them;
* ``R`` (n × n) = ``P_c (E ⊗ F)``, one more such round, mixing the left side;
* ``U`` (m × n) = ``A[:, :n/b] ⊗ B``, the first columns of a Kronecker product of Haar matrices
  of sizes ``m/b`` and ``b`` (``b`` divides both m and n), so ``U`` has orthonormal columns.

Every factor is orthogonal (or has orthonormal columns), so the singular values of ``W`` are
exactly ``σ`` up to floating-point rounding (relative 1e-6 in float32, tested against
``torch.linalg.svdvals``). Applying a Kronecker factor to a matrix is two small matrix products
(``Y = B · X`` per block, then ``A · Y``), ``O(m n (a + b))`` flops instead of the ``O(m n²)`` of a
dense random orthogonal basis, so an 11008 × 4096 llama-7b matrix takes well under a second
instead of the tens of seconds of a QR of a dense Gaussian. Singular vectors are dense
(delocalised), as in trained weights; they are not Haar-distributed, which no analysis here
relies on. The Haar factors come from the QR of a Gaussian with the signs of R's diagonal
folded in (Mezzadri 2007, "How to generate random matrices from the classical compact groups").

Seeding: each matrix has its own generator seeded from ``(seed, layer, module index)``
(``numpy.random.SeedSequence``), so a matrix is the same whatever layers or modules are selected.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .registry import ModelSpec
from .source import TargetInfo, WeightMatrix, WeightSelection, WeightSource

DEFAULT_SLOPE = -0.4
DEFAULT_STD = 0.02


def power_law_spectrum(
    k: int, slope: float = DEFAULT_SLOPE, *, shape: tuple[int, int] | None = None, std: float = DEFAULT_STD
) -> torch.Tensor:
    """``σ_i = σ_1 i^slope`` (float64, descending), scaled so ``‖W‖_F = std · sqrt(m n)``.

    Without ``shape`` the scale is ``σ_1 = 1``.
    """
    if slope > 0:
        raise ValueError(
            f"slope {slope} > 0 would make the spectrum increase; use a value <= 0 (real weights: about -0.4)"
        )
    sigma = torch.arange(1, k + 1, dtype=torch.float64) ** float(slope)
    if shape is not None:
        m, n = shape
        sigma *= std * math.sqrt(m * n) / float(torch.linalg.vector_norm(sigma))
    return sigma


def _haar(n: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Haar-random orthogonal ``n × n`` (QR of a Gaussian, signs of diag(R) folded in; Mezzadri 2007)."""
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (Q * torch.sign(torch.diagonal(R))).to(dtype)


def _split(n: int, divides: int) -> int:
    """A divisor ``b`` of ``gcd(n, divides)`` closest to ``sqrt(n)`` (the cheapest Kronecker split)."""
    g = math.gcd(n, divides)
    divisors = [d for d in range(1, g + 1) if g % d == 0]
    return min(divisors, key=lambda d: (abs(math.log(d) - 0.5 * math.log(n)), d))


def _kron_apply(
    A: torch.Tensor,
    B: torch.Tensor,
    X: torch.Tensor,
    *,
    work: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(A ⊗ B) X`` for ``A`` (a × ka), ``B`` (b × b), ``X`` (ka·b × n): two small products.

    ``work`` (ka·b × n) and ``out`` (a·b × n) are optional preallocated buffers; reusing them
    avoids the page faults of fresh 100 MB allocations, which cost as much as the arithmetic.
    """
    a, ka = A.shape
    b = B.shape[0]
    n = X.shape[1]
    Y = torch.matmul(
        B, X.reshape(ka, b, n), out=None if work is None else work.view(ka, b, n)
    )  # B on each block
    Z = torch.matmul(A, Y.reshape(ka, b * n), out=None if out is None else out.view(a, b * n))
    return Z.reshape(a * b, n)


def _permuted_kron(C: torch.Tensor, D: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``P (C ⊗ D)`` written out: row ``r`` is ``C[perm[r] // d] ⊗ D[perm[r] % d]``."""
    c, d = C.shape[0], D.shape[0]
    return (C[perm // d][:, :, None] * D[perm % d][:, None, :]).reshape(c * d, c * d)


def synthetic_matrix(
    shape: tuple[int, int],
    sigma: torch.Tensor,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """An ``(m, n)`` matrix with singular values exactly ``sigma`` (length ``min(m, n)``, descending).

    See the module docstring for the construction. Computed in ``dtype`` (float64 stays float64,
    half precision is computed in float32 and rounded at the end).
    """
    m, n = int(shape[0]), int(shape[1])
    if m < n:
        return synthetic_matrix((n, m), sigma, generator, dtype).T.contiguous()
    k = n
    if sigma.numel() != k:
        raise ValueError(f"need {k} singular values for a {m}x{n} matrix, got {sigma.numel()}")
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    e = _split(k, k)
    f = k // e

    def haar(size: int) -> torch.Tensor:
        return _haar(size, generator, cdt)

    def perm() -> torch.Tensor:
        return torch.randperm(k, generator=generator)

    # T = P_a (C2 ⊗ D2) P_b (C1 ⊗ D1), built row-wise in two ping-pong buffers.
    X = _permuted_kron(haar(e), haar(f), perm())  # P_b (C1 ⊗ D1)
    work = torch.empty_like(X)
    X = _kron_apply(haar(e), haar(f), X, work=work, out=X)
    torch.index_select(X, 0, perm(), out=work)  # P_a
    X, work = work, X
    X.mul_(sigma.to(cdt)[:, None])  # diag(σ) T
    X = _kron_apply(haar(e), haar(f), X, work=work, out=X)  # (E ⊗ F) ...
    torch.index_select(X, 0, perm(), out=work)  # R = P_c (E ⊗ F)
    X, work = work, X
    b = _split(m, k)
    A = haar(m // b)[:, : k // b]
    W = _kron_apply(A, haar(b), X, work=work)  # U = A[:, :k/b] ⊗ B
    return W if W.dtype == dtype else W.to(dtype)


def matrix_seed(seed: int, layer: int, module_index: int, expert: int | None = None) -> int:
    """The seed of one synthetic matrix, independent of which others are generated.

    Experts add their index to the entropy; dense matrices keep the seeds they always had.
    """
    entropy = [int(seed), int(layer), int(module_index)] + ([] if expert is None else [int(expert)])
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF)


class SyntheticSource(WeightSource):
    """Matrices with a registry model's exact shapes and a power-law spectrum, one at a time.

    Parameters
    ----------
    spec : ModelSpec
    seed : int
        Base seed (default 0).
    slope : float
        Log-log slope of the spectrum (default −0.4; real weights: −0.3 to −0.5).
    std : float
        Entry scale: ``‖W‖_F = std · sqrt(m n)`` (default 0.02, Llama/BERT ``initializer_range``).
    selection : WeightSelection, optional
        Targets, layers, dtype, device, experts and split_fused (:class:`~.source.WeightSelection`);
        dtype default float32. Each expert of a mixture-of-experts block is its own matrix (its seed
        adds the expert index).
    """

    synthetic = True

    def __init__(
        self,
        spec: ModelSpec,
        *,
        seed: int = 0,
        slope: float = DEFAULT_SLOPE,
        std: float = DEFAULT_STD,
        selection: WeightSelection | None = None,
    ) -> None:
        if slope > 0:
            raise ValueError(
                f"--slope {slope} > 0 would make singular values grow; use a value <= 0, e.g. -0.4"
            )
        super().__init__(
            spec.name,
            spec,
            origin="synthetic",
            selection=selection,
        )
        self.seed = int(seed)
        self.slope = float(slope)
        self.std = float(std)

    def _list_targets(self) -> list[TargetInfo]:
        spec = self.spec
        infos = []
        for layer in range(spec.layer_count):
            for mod in self.family_info.modules:
                if layer >= spec.module_layers(mod):
                    continue
                shape = mod.shape(spec)
                experts = range(spec.num_experts) if mod.experts == "linear" else [None]
                for e in experts:
                    tensor = f"synthetic:{spec.hf_tensor_name(layer, mod.name, e)}"
                    whole = TargetInfo(tensor, layer, mod.name, shape, mod.role, mod.fused, e)
                    infos += self.expand(whole, mod, spec.num_experts)
        return infos

    def _read(self, info: TargetInfo) -> WeightMatrix:
        base = info.module.split("[", 1)[0]
        module_index = self.family_info.module_names.index(base)
        gen = torch.Generator().manual_seed(matrix_seed(self.seed, info.layer, module_index, info.expert))
        shape = self.family_info.module(base).shape(self.spec)
        sigma = power_law_spectrum(min(shape), self.slope, shape=shape, std=self.std)
        dtype = self.dtype or torch.float32
        W = synthetic_matrix(shape, sigma, gen, dtype)
        rows = self.part_rows(info)
        if rows is None:
            return WeightMatrix(info, W, synthetic=True, singular_values=sigma)
        # A part of a fused matrix: its rows of the fused stand-in; its spectrum is not known exactly.
        part = W[rows] if isinstance(rows, slice) else W.index_select(0, torch.tensor(rows, dtype=torch.long))
        return WeightMatrix(info, part.contiguous(), synthetic=True, singular_values=None)

    def describe(self) -> dict:
        d = super().describe()
        d.update(seed=self.seed, slope=self.slope, std=self.std)
        return d
