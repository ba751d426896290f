"""The one registry of adapter initialisations: what each paper puts in A, M, B and the base weight.

Every method writes the adapted weight as ``W_base + s · B · [M] · A`` with ``B`` (m × r), an optional
core ``M`` (an r × r matrix, or an r-vector meaning a diagonal), ``A`` (r × n) and ``s = alpha / r``
(conventions of ../shared/REFERENCE.md, "Adapter initialisations"). A method is a row of that table:
its factorization (always from :mod:`lowrank_lab.linalg`, never a second copy), which parts train,
and whether the base becomes the residual ``W − s·B·[M]·A``.

Init functions here are pure: ``init(W, rank, *, scaling, generator, **options) -> AdapterInit`` on
an ``(m, n)`` tensor in ``torch.nn.Linear`` layout. They know nothing of models; the layer type
(:mod:`.layer`) builds the residual base and the injection code (:mod:`.inject`) finds the matrices.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lowrank_lab.linalg import (
    FACTORIZATIONS,
    compute_dtype,
    exact_svd,
    ldu,
    make_generator,
    nystrom_pinv,
    nystrom_released,
    nystrom_sketch,
    randomized_svd,
    truncated_svd,
    validate_rank,
)
from lowrank_lab.linalg.policy import gaussian, prepare


class UnknownAdapterError(ValueError):
    """An adapter method name that is not in :data:`ADAPTERS`."""


class AdapterOptionError(ValueError):
    """An option that the chosen adapter method does not take, or a bad value for one."""


@dataclass
class AdapterInit:
    """Initial factors of one matrix, in the dtype and on the device of ``W``.

    ``B`` (m, r), ``M`` None | (r,) | (r, r), ``A`` (r, n); ``info`` holds method extras
    (e.g. the sketch size of a randomized SVD). ``base``: a new frozen base weight (m, n) that
    replaces W (LoftQ's dequantised Q), None for every other method.
    """

    B: torch.Tensor
    A: torch.Tensor
    M: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    base: torch.Tensor | None = None


@dataclass(frozen=True)
class AdapterMethod:
    """One adapter initialisation, as its paper (and released code) defines it.

    Attributes
    ----------
    name : str
        Registry key, used by :func:`~lowrank_lab.adapters.inject`, the CLIs and the reports.
    summary : str
        One line: what goes in A, M, B.
    paper : str
        Citation (authors, year, arXiv id) and the code followed where it differs from the text.
    factorization : str or None
        Name in :data:`lowrank_lab.linalg.FACTORIZATIONS` of the factorization the init uses
        (None for random or data-free inits).
    core : {None, "dense", "diag"}
        Whether the adapter has a core M, and its shape: ``"dense"`` r × r, ``"diag"`` an r-vector.
    trains : frozenset of {"A", "M", "B", "W"}
        The parts that receive gradients (``"W"``: the target weight itself, full fine-tuning).
    residual : bool
        The frozen base becomes ``W − s·B·[M]·A`` so that the output is unchanged at init.
    output_at_init : str
        What the adapted model computes before any training, in words (tested in tests/adapters).
    closed_form : str
        Trainable parameters per (m × n) matrix at rank r, as a formula.
    options : dict
        Options the init accepts, with their defaults: read from the init's signature by
        :func:`init_options` (each documented in the init's docstring), never written twice.
    calibration : {None, "gradient", "activations", "corda", "outputs"}
        What the init needs from the task's data (:mod:`.calibration`): the mean gradient of the
        task loss w.r.t. W (LoRA-SB, LoRA-GA, LoRA-One), the running mean/scatter of the layer's
        inputs (EVA, LoRA-Null), CorDA's per-call normalised covariance of the inputs, or the same
        covariance of the layer's outputs (Astra); None for data-free inits.
    peft_exportable : bool
        Can be written as a plain PEFT LoRA adapter (see :func:`~lowrank_lab.adapters.export_peft`).
    drawn : frozenset of {"A", "M", "B"}
        Parts whose initial values are drawn from the generator (LoRA's A, SLoRA's A and M), not
        computed from W or the data. A randomized sketch of a deterministic factorization
        (pissa-fast, lora-ga) does not count: its factors estimate fixed ones.
    replaces_base : bool
        The frozen base becomes a new matrix that is not ``W − s·B·[M]·A`` (LoftQ's dequantised
        weight, KaSA's truncated SVD); :attr:`AdapterInit.base` carries it.
    """

    name: str
    summary: str
    paper: str
    init: Callable[..., AdapterInit] | None
    factorization: str | None
    core: str | None
    trains: frozenset[str]
    residual: bool
    output_at_init: str
    closed_form: str
    options: dict[str, Any] = field(default_factory=dict)
    calibration: str | None = None
    peft_exportable: bool = True
    drawn: frozenset[str] = frozenset()
    replaces_base: bool = False

    @property
    def needs_calibration(self) -> bool:
        """The init needs calibration data (gradients or activation statistics)."""
        return self.calibration is not None

    @property
    def computed_input_subspace(self) -> bool:
        """A is computed from W or the task data (a factorization or calibration), not drawn at
        random, so the initial input subspaces of two such inits can be compared: the methods
        diagnose measures the angles of (issue 17; ``analysis.diagnose.ANGLE_METHODS``)."""
        return (
            self.init is not None
            and "A" not in self.drawn
            and (self.factorization is not None or self.calibration is not None)
        )

    @property
    def base_from_weight_alone(self) -> bool:
        """The frozen base is a deterministic function of W alone, so quantising it measures the
        init, not a draw (``analysis.quantization.QUANT_METHODS``): a residual (or base-replacing,
        LoftQ) init with a non-randomized factorization, no calibration data (CorDA, LoRA-GA,
        Astra) and no random draws (Init[AB], KaSA's A)."""
        return (
            (self.residual or self.replaces_base)
            and not self.needs_calibration
            and not self.drawn
            and self.factorization is not None
            and not FACTORIZATIONS[self.factorization].randomized
        )

    @property
    def rank_bounded(self) -> bool:
        """The init factors W, its gradient or its inputs, so ``rank <= min(m, n)`` is enforced."""
        return self.factorization is not None or self.core is not None or self.calibration is not None

    def trainable_count(self, m: int, n: int, rank: int) -> int:
        """Trainable parameters of one (m × n) target at rank r, from the declared trainable parts."""
        sizes = {
            "A": rank * n,
            "B": m * rank,
            "M": 0 if self.core is None else (rank if self.core == "diag" else rank * rank),
            "W": m * n,
        }
        return sum(sizes[p] for p in self.trains)

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` merged over the defaults; an unknown name raises, listing the valid ones."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(f"{k}={v!r}" for k, v in self.options.items()) or "none"
            raise AdapterOptionError(
                f"adapter method {self.name!r} does not take option(s) {', '.join(unknown)}; "
                f"its options (with defaults) are: {valid}"
            )
        return {**self.options, **options}


# --------------------------------------------------------------------------------------------------
# helpers


def _work_dtype(W: torch.Tensor) -> torch.dtype:
    # Factors are formed in the policy's compute dtype (float32 for bf16/fp16 weights) and cast to
    # the weight's dtype once, at the end, so the sqrt/scale arithmetic does not round twice.
    return compute_dtype(W.dtype)


def _finish(W: torch.Tensor, B: torch.Tensor, A: torch.Tensor, M: torch.Tensor | None = None, **info: Any):
    cast = {"dtype": W.dtype, "device": W.device}
    return AdapterInit(
        B=B.to(**cast).contiguous(),
        A=A.to(**cast).contiguous(),
        M=None if M is None else M.to(**cast).contiguous(),
        info=info,
    )


def _kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    # nn.init.kaiming_uniform_(a=√5), the default init of nn.Linear and of PEFT's lora_A
    # (bound 1/sqrt(fan_in)); drawn on the generator's device in float32 so a seed gives the same
    # matrix whatever the weight's dtype and device.
    t = torch.empty(shape, dtype=torch.float32, device=generator.device)
    nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=generator)
    return t


def _split_sqrt(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, scaling: float):
    # PiSSA's split (PEFT pissa_init): B = U·diag(√(S/s)), A = diag(√(S/s))·Vh, so s·B·A = U·S·Vh.
    root = torch.sqrt(torch.clamp(S / scaling, min=0))
    return U * root, root[:, None] * Vh


# --------------------------------------------------------------------------------------------------
# init functions: (W (m, n), rank, *, scaling, generator, **options) -> AdapterInit


def init_lora(
    W: torch.Tensor, rank: int, *, scaling: float, generator: torch.Generator, **_: Any
) -> AdapterInit:
    """LoRA (Hu et al. 2021, arXiv 2106.09685; PEFT default ``init_lora_weights=True``).

    ``A`` Kaiming-uniform with a = √5 (bound 1/√n), ``B = 0``, so ``ΔW = 0`` exactly at init.
    """
    m, n = W.shape
    A = _kaiming_uniform((rank, n), generator)
    return _finish(W, torch.zeros(m, rank), A)


def _pissa_from(F, W: torch.Tensor, scaling: float) -> AdapterInit:
    B, A = _split_sqrt(F.left, F.core, F.right, scaling)
    return _finish(W, B, A, **{k: v for k, v in F.info.items() if k != "singular_values"})


def init_pissa(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    reference: bool = False,
    driver: str | None = None,
    **_: Any,
) -> AdapterInit:
    """PiSSA (Meng et al. 2024, arXiv 2404.02948; PEFT ``init_lora_weights="pissa"``).

    Exact truncated SVD ``W ≈ U_r S_r Vh_r`` (:func:`lowrank_lab.linalg.truncated_svd`);
    ``B = U_r·diag(√(S_r/s))``, ``A = diag(√(S_r/s))·Vh_r``; the base becomes ``W − s·B·A``.

    Parameters
    ----------
    reference : bool, default False
        Compute the SVD in float64 (the factors are still returned in the weight's dtype).
    driver : str, optional
        CUDA SVD driver (``"gesvd"`` most accurate); see :func:`~lowrank_lab.linalg.truncated_svd`.
    """
    F = truncated_svd(W, rank, reference=reference, driver=driver, out_dtype=_work_dtype(W))
    return _pissa_from(F, W, scaling)


def init_pissa_fast(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    n_iter: int = 4,
    oversample: int = 0,
    normalizer: str = "qr",
    reference: bool = False,
    **_: Any,
) -> AdapterInit:
    """Fast PiSSA: PiSSA's split of a randomized SVD (PEFT ``init_lora_weights="pissa_niter_N"``).

    :func:`lowrank_lab.linalg.randomized_svd` (Halko, Martinsson & Tropp 2011, Alg. 4.4 + 5.1).

    Parameters
    ----------
    n_iter : int, default 4
        Power iterations. 4 is the ``pissa_niter_4`` that PEFT's LoRA docs show for fast PiSSA;
        PiSSA's Appendix B (Table 6) reports niter 1–16 reaching the full-SVD training loss.
    oversample : int, default 0
        Extra sketch columns. 0 reproduces PEFT, which calls ``torch.svd_lowrank(W, q=r, niter)``
        with no oversampling (REFERENCE.md). Halko et al. recommend p = 5–10: with ``oversample=10``
        fewer power iterations reach the same error (benchmarks/adapter_init.py measures it).
    normalizer : {"qr", "lu", "none"}, default "qr"
        Re-normalisation between power-iteration products: QR as ``torch.svd_lowrank``, LU as
        scikit-learn (cheaper, same span).
    reference : bool, default False
        Compute in float64.

    Notes
    -----
    The base is ``W − s·B·A`` whatever the SVD's accuracy, so the output is unchanged at init
    even when the sketch is poor; only how much of W moves into the adapter depends on it.
    """
    F = randomized_svd(
        W,
        rank,
        generator=generator,
        oversample=oversample,
        n_iter=n_iter,
        normalizer=normalizer,
        reference=reference,
        out_dtype=_work_dtype(W),
    )
    return _pissa_from(F, W, scaling)


def init_milora(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    reference: bool = False,
    driver: str | None = None,
    **_: Any,
) -> AdapterInit:
    """MiLoRA (Wang et al. 2024, arXiv 2406.09044): PiSSA's split of the r *smallest* singular triplets.

    :func:`lowrank_lab.linalg.truncated_svd` with ``which="smallest"``; the base becomes ``W − s·B·A``
    (the top of the spectrum stays frozen, the minor components train).
    """
    F = truncated_svd(W, rank, which="smallest", reference=reference, driver=driver, out_dtype=_work_dtype(W))
    return _pissa_from(F, W, scaling)


def init_olora(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    reference: bool = False,
    **_: Any,
) -> AdapterInit:
    """OLoRA (Büyükakyüz 2024, arXiv 2406.01775; PEFT ``init_lora_weights="olora"``).

    Thin QR ``W = Q R`` (:func:`lowrank_lab.linalg.thin_qr`): ``B = Q[:, :r]``, ``A = R[:r]`` with
    no rescaling by s (as PEFT's ``olora_init``); the base becomes ``W − s·B·A``.

    Only those blocks are formed: Householder QR (LAPACK geqrf) builds reflector j from column j
    after reflectors 1..j−1, so the first r reflectors, ``Q[:, :r]`` and ``R[:r, :r]``, are those of
    the QR of the first r columns ``W[:, :r]``, and ``R[:r, r:] = Q[:, :r]ᵀ·W[:, r:]`` (Golub & Van
    Loan, *Matrix Computations*, 4th ed., §5.2.2). That costs O(m·n·r) instead of the full QR's
    O(m·n·min(m, n)) — 20–100× less on MiniLM's 384 × 1536 maps at r = 16 — and agrees with the
    full QR's blocks to rounding (issue 32: ours was no faster than PEFT's full QR).
    """
    Wc, _ = prepare(W, reference=reference)  # validates W (2-D, finite), in its compute dtype
    r = validate_rank(rank, Wc.shape)
    Q, R = torch.linalg.qr(Wc[:, :r])  # (m, r), (r, r): the full QR's first r reflectors
    A = Q.mT @ Wc  # (r, n) = R[:r, :]
    A[:, :r] = R  # the triangle as geqrf gives it (exact zeros below the diagonal)
    out = _work_dtype(W)
    return _finish(W, Q.to(out), A.to(out))


def init_lora_xs(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    core_std: float = 1e-5,
    reference: bool = False,
    driver: str | None = None,
    **_: Any,
) -> AdapterInit:
    """LoRA-XS (Bałazy et al. 2024, arXiv 2405.17604; MohammadrezaBanaei/LoRA-XS).

    Frozen ``B = U_r``, ``A = diag(S_r)·Vh_r`` from the truncated SVD of W; trainable r × r core
    ``M ~ N(0, core_std²)``; the base stays W.

    Parameters
    ----------
    core_std : float, default 1e-5
        Standard deviation of the core, ``init_module_weights(..., sigma=0.00001)`` in LoRA-XS's
        code. So ``ΔW = s·U_r·M·S_r·Vh_r`` is not exactly zero at init, only of relative size
        ~``core_std·√r``; ``core_std=0`` makes it exactly zero (M still receives gradients,
        ``Bᵀ·G·Aᵀ``, because B and A are non-zero).
    """
    if core_std < 0:
        raise AdapterOptionError(f"lora-xs option core_std must be >= 0, got {core_std}")
    F = truncated_svd(W, rank, reference=reference, driver=driver, out_dtype=_work_dtype(W))
    A = F.core[:, None] * F.right
    M = gaussian((rank, rank), generator=generator, dtype=A.dtype, device=A.device) * core_std
    return _finish(W, F.left, A, M)


def init_lora_sb(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    grad: torch.Tensor | None = None,
    lr: float = 1e-4,
    reference: bool = False,
    **_: Any,
) -> AdapterInit:
    """LoRA-SB (Ponkshe et al. 2024, arXiv 2411.19557; RaghavSinghal10/lora-sb).

    The approximate first update of full fine-tuning ``ΔŴ = −lr·sign(G)``, with G the gradient of
    a calibration loss w.r.t. W summed over the calibration samples (``estimate_and_process_grads``
    in the released code, 50 samples), is factored by the truncated SVD
    ``ΔŴ ≈ U_r S_r Vh_r`` (:func:`lowrank_lab.linalg.truncated_svd`): frozen ``B = U_r``,
    ``A = Vh_r`` and a trainable dense r × r core initialised to ``M = diag(S_r) / s``. The base
    stays W, so at init the adapted weight is ``W + [ΔŴ]_r``: the model starts one rank-r
    sign-gradient step away from the pre-trained one (the output changes, by design).

    Parameters
    ----------
    grad : Tensor (m, n)
        Summed calibration gradient; :func:`~lowrank_lab.adapters.inject` computes it from its
        ``calibration`` argument.
    lr : float, default 1e-4
        η of ``ΔŴ = −η·sign(G)``. The released code passes the learning rate of the first warm-up
        step, ``lr / (warmup_ratio · total_steps)`` with ``--lr 1e-4`` by default; pass the value of
        your own schedule.
    """
    if grad is None:
        raise AdapterOptionError(
            "lora-sb needs the calibration gradient of each target; pass calibration=loss_fn to inject()"
        )
    if tuple(grad.shape) != tuple(W.shape):
        raise AdapterOptionError(
            f"lora-sb gradient has shape {tuple(grad.shape)} but the weight is {tuple(W.shape)}"
        )
    delta = -lr * torch.sign(grad.to(device=W.device, dtype=_work_dtype(W)))
    F = truncated_svd(delta, rank, reference=reference, out_dtype=_work_dtype(W))
    return _finish(W, F.left, F.right, torch.diag(F.core / scaling))


def init_slora(
    W: torch.Tensor, rank: int, *, scaling: float, generator: torch.Generator, **_: Any
) -> AdapterInit:
    """SLoRA (Guo et al. 2025, arXiv 2502.14482; TracyGuo2001/NLoRA ``slora_init``).

    LoRA with an r × r core between A and B: ``A`` and ``M`` Kaiming-uniform (a = √5, fan-in n and
    r), ``B = 0``, so ``ΔW = 0`` exactly at init; all three train.
    """
    m, n = W.shape
    A = _kaiming_uniform((rank, n), generator)
    M = _kaiming_uniform((rank, rank), generator)
    return _finish(W, torch.zeros(m, rank), A, M)


def init_nlora(
    W: torch.Tensor, rank: int, *, scaling: float, generator: torch.Generator, **_: Any
) -> AdapterInit:
    """NLoRA as released (Guo et al. 2025, arXiv 2502.14482; TracyGuo2001/NLoRA ``nlora_init``).

    :func:`lowrank_lab.linalg.nystrom_released`: ``B = W[:, :r]``, ``M = W[:r, :r]`` (the raw core
    block, no pseudo-inverse), ``A = W[:r, :]``; the base stays W.

    **ΔW ≠ 0 at init**: the adapter adds ``s·W[:, :r]·W[:r, :r]·W[:r, :]`` — not an approximation of
    W, its scale is that of ‖W‖³ — so the model's output changes before any training. That is
    what the released code does (REFERENCE.md, "NLoRA, as released"); ``nlora-pinv`` is the
    textbook Nyström form the paper's figure draws.
    """
    F = nystrom_released(W, rank, out_dtype=_work_dtype(W))
    return _finish(W, F.left, F.right, F.dense_core())


def init_nlora_pinv(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    rtol: float | None = None,
    **_: Any,
) -> AdapterInit:
    """NLoRA with the textbook Nyström core: ``M = W[:r, :r]⁺`` (:func:`lowrank_lab.linalg.nystrom_pinv`).

    ``B = W[:, :r]``, ``A = W[:r, :]``, SLoRA structure (A, M, B train). Registered twice: as
    ``nlora-pinv`` the base becomes the residual ``W − s·B·M·A`` (as PiSSA does with its SVD
    factors; issue 15), so the output is unchanged at init; as ``nlora-pinv-additive`` the base
    stays W and the adapter adds the CUR–Nyström approximation of W itself, as NLoRA's released
    code adds its factors, which roughly doubles the part of W in the chosen rows and columns.

    Parameters
    ----------
    rtol : float, optional
        Pseudo-inverse cut-off relative to the core's largest singular value; default r·eps
        (``torch.linalg.pinv``'s default), so a singular core gives no inf.
    """
    F = nystrom_pinv(W, rank, rtol=rtol, out_dtype=_work_dtype(W))
    return _finish(W, F.left, F.right, F.dense_core())


def init_nlora_sketch(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    oversample: int | None = None,
    n_iter: int = 2,
    eps: float | None = None,
    reference: bool = False,
    **_: Any,
) -> AdapterInit:
    """NLoRA with the sketched, stabilised generalised Nyström (Nakatsukasa 2020, arXiv 2009.11392).

    :func:`lowrank_lab.linalg.nystrom_sketch`: ``B = W X V``, ``M = diag(1/s_k)`` (stored as a
    dense r × r core so it trains like SLoRA's), ``A = Uᵀ Qᵀ Yᵀ W``; A, M and B train. As
    ``nlora-sketch`` the base becomes the residual ``W − s·B·M·A`` (issue 15), as PiSSA's does;
    as ``nlora-sketch-additive`` the base stays W and the adapter adds a near-optimal rank-r
    approximation of W on top of it (the output changes, as in ``nlora``).

    Parameters
    ----------
    oversample, n_iter, eps :
        Passed to :func:`~lowrank_lab.linalg.nystrom_sketch` (defaults ℓ = ⌈r/2⌉, 2 power
        iterations, unit-roundoff truncation; reasons there).
    """
    F = nystrom_sketch(
        W,
        rank,
        generator=generator,
        oversample=oversample,
        n_iter=n_iter,
        eps=eps,
        reference=reference,
        out_dtype=_work_dtype(W),
    )
    return _finish(W, F.left, F.right, F.dense_core(), kept=F.info.get("kept"))


def init_loldu(
    W: torch.Tensor, rank: int, *, scaling: float, generator: torch.Generator, **_: Any
) -> AdapterInit:
    """LoLDU (Shi et al. 2024, arXiv 2410.13618; SKDDJ/LoLDU).

    Truncated ``P·L·D·U`` from LU with partial pivoting (:func:`lowrank_lab.linalg.ldu`):
    frozen ``B = P·L[:, :r]``, ``A = U[:r] / diag(U)[:r]``, trainable diagonal ``M = z = d / s``
    (r numbers per matrix); the base becomes ``W − s·B·diag(z)·A``. Zero pivots are guarded in
    the linalg core (LoLDU's code would divide by zero).
    """
    F = ldu(W, rank, out_dtype=_work_dtype(W))
    return _finish(W, F.left, F.right, F.core / scaling, tiny_pivots=F.info.get("tiny_pivots", 0))


# --------------------------------------------------------------------------------------------------
# initialisations beyond PiSSA and OLoRA (REFERENCE.md, "Initialisations beyond PiSSA and OLoRA")


def init_gaussian(
    W: torch.Tensor, rank: int, *, scaling: float, generator: torch.Generator, **_: Any
) -> AdapterInit:
    """Gaussian LoRA (PEFT ``init_lora_weights="gaussian"``): ``A ~ N(0, (1/r)²)``, ``B = 0``.

    The standard deviation 1/r is PEFT's ``nn.init.normal_(lora_A, std=1 / r)``; ΔW = 0 exactly at init.
    """
    m, n = W.shape
    A = gaussian((rank, n), generator=generator, dtype=torch.float32, device=generator.device) / rank
    return _finish(W, torch.zeros(m, rank), A)


def init_orthogonal(
    W: torch.Tensor, rank: int, *, scaling: float, generator: torch.Generator, **_: Any
) -> AdapterInit:
    """Orthogonal LoRA (PEFT ``init_lora_weights="orthogonal"``, after datta0's "rethink LoRA init").

    ``Q`` = QR of an r × r Gaussian; ``A = (G₁·Q[0::2])ᵀ / 10`` with ``G₁ ~ N(0, 1)`` of shape n × r/2,
    ``B = G₂ᵀ·Q[1::2] / 10`` with ``G₂`` of shape r/2 × m. Both factors are non-zero yet
    ``B·A = G₂ᵀ·Q[1::2]·Q[0::2]ᵀ·G₁ᵀ / 100 = 0`` because Q's odd and even rows are orthogonal, so the
    output is unchanged at init (to rounding). The 1/10 is PEFT's. r must be even. Draws come from
    ``generator`` (PEFT uses the global RNG, in the same order: Q's matrix, G₁, G₂).
    """
    if rank % 2:
        raise AdapterOptionError(
            f"orthogonal init needs an even rank (Q's rows are split in pairs), got {rank}"
        )
    m, n = W.shape
    kw = {"generator": generator, "dtype": torch.float32, "device": generator.device}
    Q, _ = torch.linalg.qr(gaussian((rank, rank), **kw))
    A = (gaussian((n, rank // 2), **kw) @ Q[0::2]).T / 10.0
    B = gaussian((rank // 2, m), **kw).T @ Q[1::2] / 10.0
    return _finish(W, B, A)


def init_mica(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    reference: bool = False,
    driver: str | None = None,
    **_: Any,
) -> AdapterInit:
    """MiCA, minor component adaptation (arXiv 2604.01694; PEFT ``init_lora_weights="mica"``).

    Frozen ``B = U[:, −r:]``, the left singular vectors of the r smallest singular values of W
    (fp32 SVD, :func:`~lowrank_lab.linalg.truncated_svd` with ``which="smallest"``); ``A = 0``
    trains (r·n parameters). ΔW = 0 at init and the base stays W.
    """
    F = truncated_svd(W, rank, which="smallest", reference=reference, driver=driver, out_dtype=_work_dtype(W))
    return _finish(W, F.left, torch.zeros(rank, W.shape[1]))


def _need_stats(name: str, stats: Any, kind: str, W: torch.Tensor) -> Any:
    if stats is None:
        raise AdapterOptionError(
            f"{name} needs the calibration statistics of each target's inputs; pass calibration=loss_fn "
            "(or a list of them, one per training batch) to inject()"
        )
    if stats.kind != kind:
        raise AdapterOptionError(f"{name} needs {kind!r} statistics, got {stats.kind!r}")
    if stats.scatter.shape[0] != W.shape[1]:
        raise AdapterOptionError(
            f"{name}: input statistics are {tuple(stats.scatter.shape)} "
            f"but the weight takes {W.shape[1]} inputs"
        )
    return stats


def init_eva(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    stats: Any = None,
    whiten: bool = False,
    rho: float = 1.0,
    reference: bool = False,
    **_: Any,
) -> AdapterInit:
    """EVA, explained-variance adaptation (Paischer et al. 2024, arXiv 2410.07170; PEFT ``"eva"``).

    ``A`` = the top r principal components (rows, r × n) of the layer's **mean-centred** input
    activations over the calibration tokens (attention mask applied), ``B = 0``; the base stays W
    and ΔW = 0 at init. Components are the leading eigenvectors of the exact centred scatter
    ``Σ(x − μ)(x − μ)ᵀ`` streamed by :func:`~lowrank_lab.adapters.calibration.activation_statistics`
    — the PCA that PEFT's incremental PCA approximates (``svd_lowrank`` q = 2k, niter 4 per batch,
    keeping only k components between batches, the data cycled until every component's cosine to
    its previous value is ≥ τ = 0.99). On one batch the two agree (tests/adapters/test_peft_parity.py);
    streamed over many small batches PEFT's truncation drifts (first-component cosine 0.94 over
    eight 16-token batches of a tiny model). Signs as scikit-learn's
    ``svd_flip(u_based_decision=False)``: each row's largest entry is positive.

    Parameters
    ----------
    whiten : bool, default False
        Divide each component by √(its singular value) (PEFT ``EvaConfig.whiten``, default False).
    rho : float, default 1.0
        Only 1.0 is supported. PEFT's default ρ = 2 computes round(ρ·r) components per layer and
        redistributes the ranks globally by explained variance (r′ ∈ [0, ρr]); the authors ran
        ρ ∈ {1, 2}. With ρ = 1 every layer keeps r — no redistribution, so every method here
        has the same rank and parameter count (``adjust_scaling_factors`` is then a no-op).
    reference : bool, default False
        Eigendecomposition in float64 (default float32; the scatter is always centred in float64).
    """
    if rho != 1.0:
        raise AdapterOptionError(
            f"eva option rho={rho} is not supported: only rho=1 (no rank redistribution across layers; the "
            "authors' ρ ∈ {1, 2}). PEFT's default rho=2 gives each layer its own rank."
        )
    st = _need_stats("eva", stats, "activations", W)
    if st.tokens <= rank:
        raise AdapterOptionError(
            f"eva needs more calibration tokens than the rank ({rank}); this layer saw {st.tokens}: "
            "give more calibration samples"
        )
    dt = torch.float64 if reference else torch.float32
    key = ("eigh-top", dt, rank)
    if key not in st.extra:  # targets reading the same input (q, k, v) share one decomposition
        # The centring cancels in float64 (calibration.py); the eigensolver then runs in float32,
        # 2x faster than float64 at n = 1536 and accurate to ~1e-6 in the leading components.
        st.extra[key] = _top_eigh(st.centred_scatter().to(dt), rank)  # (r,), (n, r) ascending
    evals, evecs = (t.double() for t in st.extra[key])
    order = torch.arange(rank - 1, -1, -1)
    comps = evecs[:, order].T  # (r, n), leading component first
    big = comps.abs().argmax(dim=1)
    comps = comps * torch.sign(comps[torch.arange(rank), big])[:, None]
    sv = evals[order].clamp_min(0).sqrt()  # singular values of the centred token matrix
    if whiten:
        comps = comps / sv.clamp_min(torch.finfo(torch.float64).tiny).sqrt()[:, None]
    A = comps.to(device=W.device, dtype=_work_dtype(W))
    return _finish(W, torch.zeros(W.shape[0], rank), A, tokens=st.tokens, singular_values=sv.tolist())


def _top_eigh(C: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``rank`` largest eigenpairs of the symmetric ``C`` (n, n), ascending: ``(r,)``, ``(n, r)``.

    On the CPU only they are computed: LAPACK ``syevr`` (``scipy.linalg.eigh(subset_by_index=...)``,
    MRRR, Dhillon & Parlett 2004) after the same tridiagonal reduction as ``torch.linalg.eigh``'s
    ``syevd``, without forming the other n − r eigenvectors; the pairs agree with ``syevd``'s to
    rounding (issue 32: EVA's 24 full eigendecompositions were 6.9 s of its 8.8 s on MiniLM).
    Elsewhere ``torch.linalg.eigh`` (a GPU solver has no subset driver in torch).

    scipy's OpenBLAS runs on one thread here (threadpoolctl, when installed): its own thread pool
    beside torch's fought for a loaded 2-core machine — 3.5–8.7 s for MiniLM's 24 covariances with
    two threads against 0.9–1.3 s with one, measured back to back.
    """
    import contextlib

    n = C.shape[0]
    if C.device.type != "cpu":
        evals, evecs = torch.linalg.eigh(C)
        return evals[n - rank :], evecs[:, n - rank :]
    import scipy.linalg

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn's dependency, not this package's
        one_thread = contextlib.nullcontext()
    else:
        one_thread = threadpool_limits(limits=1, user_api="blas")
    with one_thread:
        w, V = scipy.linalg.eigh(
            C.numpy(), subset_by_index=[n - rank, n - 1], driver="evr", check_finite=False
        )
    return torch.from_numpy(w), torch.from_numpy(V)


def _damped_inverse(C: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    # CorDA's damping (PEFT collect_eigens_for_layer): C_d = C + δ·mean(diag C)·I, δ from 0.01
    # doubling until ‖C_d·C_d⁻¹ − I‖_F < 0.05. C_d is symmetric positive definite, so its inverse
    # comes from the Cholesky factor (about half the flops of PEFT's LU-based inv, the same matrix
    # to rounding); a failed factorisation counts as a failed check.
    eye = torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    damp, mean_diag = 0.01, torch.diagonal(C).mean()
    for _ in range(64):
        Cd = C + (damp * mean_diag) * eye
        L, info = torch.linalg.cholesky_ex(Cd)
        if int(info) == 0:
            Cinv = torch.cholesky_inverse(L)
            if float(torch.dist(Cd @ Cinv, eye)) < 0.05:
                return Cd, Cinv, damp
        damp *= 2
    raise AdapterOptionError(  # pragma: no cover - only a covariance with NaN gets here
        f"{name}: the input covariance could not be damped into an invertible matrix"
    )


def _corda(
    W: torch.Tensor, rank: int, scaling: float, stats: Any, which: str, name: str, reference: bool
) -> AdapterInit:
    # CorDA (PEFT corda.py collect_eigens_for_layer): damp C until its inverse is accurate, SVD of
    # W·C_d, V = (Vh·C_d⁻¹)ᵀ so that W = U·S·Vᵀ exactly with V not orthonormal.
    st = _need_stats(name, stats, "corda", W)
    dt = torch.float64 if reference else torch.float32  # PEFT works in float32
    key = ("corda", dt, str(W.device))
    if key not in st.extra:  # targets reading the same input (q, k, v) share the damped inverse
        st.extra[key] = _damped_inverse(st.covariance().to(device=W.device, dtype=dt), name)
    Cd, Cinv, damp = st.extra[key]
    U, S, Vh = exact_svd(W.to(dt) @ Cd)  # a wide W·C_d through its transpose (issue 31)
    sl = slice(0, rank) if which == "largest" else slice(S.shape[0] - rank, S.shape[0])
    root = torch.sqrt(S[sl] / scaling)
    A = root[:, None] * (Vh[sl] @ Cinv)
    B = U[:, sl] * root
    return _finish(W, B, A, damping=damp, tokens=st.tokens)


def init_corda_ipm(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    stats: Any = None,
    reference: bool = False,
    **_: Any,
) -> AdapterInit:
    """CorDA, instruction-previewed mode (Yang et al. 2024, arXiv 2406.05223; PEFT ``"corda"``, ``ipm``).

    With C the covariance of the layer's inputs on task data (CorDA's hook: per call
    ``X̃ = X/|max X|``, ``C = mean over calls of X̃ᵀX̃``), damped as ``C + δ·mean(diag C)·I`` with δ
    from 0.01 doubling until ``‖C_d C_d⁻¹ − I‖_F < 0.05``: ``W·C_d = U S Vhᵀ``, ``V = (Vh·C_d⁻¹)ᵀ``;
    keep the **top** r: ``A = diag(√(S/s))·Vᵀ``, ``B = U·diag(√(S/s))``; the base becomes
    ``W − s·B·A`` (residual, output unchanged).

    Parameters
    ----------
    reference : bool, default False
        Damping, inverse and SVD in float64 (PEFT: float32).
    """
    return _corda(W, rank, scaling, stats, "largest", "corda-ipm", reference)


def init_corda_kpm(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    stats: Any = None,
    reference: bool = False,
    **_: Any,
) -> AdapterInit:
    """CorDA, knowledge-preserved mode (arXiv 2406.05223; PEFT ``corda_method="kpm"``).

    As :func:`init_corda_ipm` but keeps the **bottom** r triplets of ``W·C_d``: the directions the
    calibration data (in the paper, questions of the knowledge to keep: NQ, TriviaQA) excites least
    train, the rest stays frozen in the residual.
    """
    return _corda(W, rank, scaling, stats, "smallest", "corda-kpm", reference)


def _need_grad(name: str, grad: torch.Tensor | None, W: torch.Tensor) -> torch.Tensor:
    if grad is None:
        raise AdapterOptionError(
            f"{name} needs the calibration gradient of each target; pass calibration=loss_fn to inject()"
        )
    if tuple(grad.shape) != tuple(W.shape):
        raise AdapterOptionError(
            f"{name} gradient has shape {tuple(grad.shape)} but the weight is {tuple(W.shape)}"
        )
    return grad.to(device=W.device, dtype=torch.float32)


LORA_GA_DIRECTIONS = ("ArB2r", "A2rBr", "ArBr", "random")
LORA_GA_SCALES = ("stable", "weight_svd", "gd_scale", "unit")


def init_lora_ga(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    grad: torch.Tensor | None = None,
    direction: str = "ArB2r",
    scale: str = "stable",
    stable_gamma: float = 16.0,
    n_iter: int = 4,
    **_: Any,
) -> AdapterInit:
    """LoRA-GA, gradient approximation (Wang et al. 2024, arXiv 2407.05000; PEFT ``"lora_ga"``, PR #2926).

    G = the mean gradient of the task loss w.r.t. W over the calibration batches. Its rank-2r SVD
    from a randomized sketch of ``q = min(4r, min(m, n))`` columns and ``n_iter`` power iterations
    (PEFT: ``torch.svd_lowrank(G, q, niter=4)``, unseeded; here :func:`~lowrank_lab.linalg.randomized_svd`
    on ``generator``) gives ``A`` and ``B`` by ``direction``; ``B`` is rescaled by ``scale``; the base
    becomes ``W − s·B·A`` (residual: output unchanged; the first step moves along G's subspace).

    Parameters
    ----------
    direction : {"ArB2r", "A2rBr", "ArBr", "random"}, default "ArB2r"
        PEFT's ``LoraGAConfig.direction``: ArB2r takes ``A = Vhᵀ[:r]``, ``B = U[:, r:2r]·diag(S[r:2r])``;
        A2rBr the reverse halves; ArBr odd rows for A and even columns for B; random r of 2r.
    scale : {"stable", "weight_svd", "gd_scale", "unit"}, default "stable"
        ``stable``: ``B ×= m^¼/√γ`` (PEFT; the authors' code scales both A and B and puts no singular
        values in B — REFERENCE.md); ``weight_svd``: ``B ×= σ₁(W)/S_B[0]``; ``gd_scale``: A, B ÷ s;
        ``unit``: none.
    stable_gamma : float, default 16
        γ of the stable scale (PEFT ``stable_gamma``).
    n_iter : int, default 4
        Power iterations of the sketch (PEFT's niter).
    """
    if direction not in LORA_GA_DIRECTIONS:
        raise AdapterOptionError(f"lora-ga direction must be one of {LORA_GA_DIRECTIONS}, got {direction!r}")
    if scale not in LORA_GA_SCALES:
        raise AdapterOptionError(f"lora-ga scale must be one of {LORA_GA_SCALES}, got {scale!r}")
    G = _need_grad("lora-ga", grad, W)
    m, n = W.shape
    if 2 * rank > min(m, n):
        raise AdapterOptionError(
            f"lora-ga needs 2*rank <= min(m, n) = {min(m, n)} (A and B take different halves of G's top 2r "
            f"singular vectors), got rank={rank}"
        )
    q = min(4 * rank, min(m, n))
    # LU re-normalisation between power iterations (same span as PEFT's QR, cheaper; rsvd.py).
    F = randomized_svd(
        G, 2 * rank, generator=generator, oversample=q - 2 * rank, n_iter=n_iter, normalizer="lu"
    )
    U, S, Vh = F.left, F.core, F.right  # (m, 2r), (2r,), (2r, n)
    r = rank
    if direction == "ArB2r":
        ia, ib = torch.arange(0, r), torch.arange(r, 2 * r)
    elif direction == "A2rBr":
        ia, ib = torch.arange(r, 2 * r), torch.arange(0, r)
    elif direction == "ArBr":
        ia, ib = torch.arange(1, 2 * r, 2), torch.arange(0, 2 * r, 2)
    else:
        ia = torch.randperm(2 * r, generator=generator, device=generator.device)[:r].cpu()
        ib = ia
    A, B, S_B = Vh[ia], U[:, ib] * S[ib], S[ib]
    if scale == "stable":
        B = B * (m**0.25 / stable_gamma**0.5)
    elif scale == "weight_svd":
        top = float(torch.linalg.matrix_norm(W.float(), ord=2))
        if float(S_B[0]) > 0:
            B = B * (top / float(S_B[0]))
    elif scale == "gd_scale":
        A, B = A / scaling, B / scaling
    return _finish(W, B, A)


def init_lora_one(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    grad: torch.Tensor | None = None,
    gamma: float = 128.0,
    reference: bool = False,
    **_: Any,
) -> AdapterInit:
    """LoRA-One (Zhang et al. 2025, arXiv 2502.01235; YuanheZ/LoRA-One; not in PEFT).

    With ``−G = U S Vᵀ`` (G the mean calibration gradient; the code's ``svd_lowrank(−G, q=512,
    niter=16)``, here the exact :func:`~lowrank_lab.linalg.truncated_svd`, its limit):
    ``B = U_r·√S_r / √(σ₁γ)``, ``A = √S_r·V_rᵀ / √(σ₁γ)``. **The base is not modified**: at init the
    model is already one rank-r gradient step of size ``s/(γσ₁)`` along −G away from W (the code is
    authoritative where the README swaps A/B).

    Parameters
    ----------
    gamma : float, default 128
        γ of the released code. Its recipe also uses rsLoRA scaling, α = 16, r = 8 (``--scaling rslora``).
    """
    G = _need_grad("lora-one", grad, W)
    F = truncated_svd(-G, rank, reference=reference, out_dtype=torch.float32)
    denom = math.sqrt(float(F.core[0]) * gamma)
    if denom == 0:
        raise AdapterOptionError("lora-one: the calibration gradient of this layer is zero")
    root = torch.sqrt(F.core)
    return _finish(W, F.left * root / denom, root[:, None] * F.right / denom)


def init_loftq(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    bits: int = 4,
    iters: int = 1,
    block: int = 64,
    divide_by_scaling: bool = False,
    reference: bool = False,
    **_: Any,
) -> AdapterInit:
    """LoftQ (Li et al. 2023, arXiv 2310.08659; PEFT ``init_lora_weights="loftq"``, ``LoftQConfig``).

    Alternate ``Q = deq(quant(W − L·R))`` and ``L, R = U_r√S_r, √S_r Vh_r`` of ``svd(W − Q)``, from
    L = R = 0, ``iters`` times; the frozen base **becomes deq(Q)** (the quantised weight, as a model
    loaded in 4 bits computes with) and ``B = L``, ``A = R``. Quantisers from
    :mod:`lowrank_lab.linalg.quant`: NF4 blocks of 64 without double quantisation (bitsandbytes'
    ``Params4bit`` as LoftQ calls it), or row-wise absmax int8.

    Parameters
    ----------
    bits : {4, 8}, default 4
        PEFT ``loftq_bits``.
    iters : int, default 1
        PEFT ``loftq_iter`` default; the authors' example uses 5.
    block : int, default 64
        NF4 block size.
    divide_by_scaling : bool, default False
        PEFT puts ``L`` in B with no division by s, so ``W ≈ deq(Q) + s·B·A`` holds only when s = 1
        (PEFT #1982). True divides B by s, making the init exact for every alpha.
    reference : bool
        SVDs in float64.
    """
    from lowrank_lab.linalg.quant import int8_rowwise_roundtrip, nf4_roundtrip

    if bits not in (4, 8):
        raise AdapterOptionError(f"loftq bits must be 4 (NF4) or 8 (int8), got {bits}")
    if iters < 1:
        raise AdapterOptionError(f"loftq iters must be >= 1, got {iters}")
    Wf = W.to(compute_dtype(W.dtype, reference=reference))
    res = Wf
    for i in range(iters):
        Q = nf4_roundtrip(res, block=block) if bits == 4 else int8_rowwise_roundtrip(res)
        F = truncated_svd(Wf - Q, rank, reference=reference)
        L, R = _split_sqrt(F.left, F.core, F.right, 1.0)
        if i + 1 < iters:
            res = Wf - L @ R
    if divide_by_scaling:
        L = L / scaling
    out = _finish(W, L, R)
    out.base = Q.to(W.dtype)
    return out


# --------------------------------------------------------------------------------------------------
# the newest initialisations (REFERENCE.md, "PEFT 0.22 and the newest inits"; issue 32)


def _too_few_tokens(name: str, st: Any, rank: int, where: str) -> None:
    # Fewer calibration rows than r leave directions that the data never touched (an eigenvalue 0 of
    # multiplicity > 0 among the r kept), so the init would be decided by rounding, not by the data.
    if st.tokens < rank:
        raise AdapterOptionError(
            f"{name} needs at least rank={rank} calibration tokens at each target's {where}; this layer "
            f"saw {st.tokens}: give more calibration samples or lower the rank"
        )


ASTRA_WHICH = ("largest", "smallest")


def init_astra(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    stats: Any = None,
    which: str = "largest",
    reference: bool = False,
    **_: Any,
) -> AdapterInit:
    """Astra (arXiv 2602.19111; LyoAI/Astra; PEFT 0.22 ``init_lora_weights="astra"``, ``preprocess_astra``).

    With C the covariance of the layer's **output** activations on task data (PEFT's hook: per call
    ``Ỹ = Y/|max Y|`` over the output rows, bias included; ``C = mean over calls of ỸᵀỸ``, m × m,
    collected by :func:`~lowrank_lab.adapters.calibration.activation_statistics` with
    ``kind="outputs"``), ``C = V Λ Vᵀ`` (``torch.linalg.eigh``, float32 as PEFT): ``B = V_r``
    (m × r), ``A = V_rᵀ·W`` (r × n), so ``B·A`` is the projection of W onto the kept output
    directions; the base becomes ``W − s·B·A`` (residual, output unchanged). No division by s, as
    PEFT's ``astra_init``. V_r's columns are in eigh's ascending order, as PEFT keeps them.

    Parameters
    ----------
    which : {"largest", "smallest"}, default "largest"
        Which eigenvalues of C the r directions belong to. PEFT 0.22 keeps ``V[:, -r:]`` of
        ``torch.linalg.eigh`` (ascending), i.e. the **largest** eigenvalues, although the method's
        name ("tail eigenvectors") and REFERENCE.md speak of the smallest; the default follows the
        code (tests/adapters/test_new_inits.py checks parity), ``"smallest"`` takes ``V[:, :r]``.
    reference : bool, default False
        Eigendecomposition in float64 (PEFT: float32).
    """
    if which not in ASTRA_WHICH:
        raise AdapterOptionError(f"astra option which must be one of {ASTRA_WHICH}, got {which!r}")
    if stats is None:
        raise AdapterOptionError(
            "astra needs the calibration statistics of each target's outputs; pass calibration=loss_fn "
            "(or a list of them, one per training batch) to inject()"
        )
    if stats.kind != "outputs":
        raise AdapterOptionError(f"astra needs 'outputs' statistics, got {stats.kind!r}")
    m = W.shape[0]
    if stats.scatter.shape[0] != m:
        raise AdapterOptionError(
            f"astra: output statistics are {tuple(stats.scatter.shape)} but the weight has {m} outputs"
        )
    _too_few_tokens("astra", stats, rank, "output")
    dt = torch.float64 if reference else torch.float32
    _, V = torch.linalg.eigh(stats.covariance().to(device=W.device, dtype=dt))  # ascending eigenvalues
    V = V[:, m - rank :] if which == "largest" else V[:, :rank]  # (m, r)
    Wf = W.to(dt)
    return _finish(W, V, V.T @ Wf, tokens=stats.tokens)


def init_nora(
    W: torch.Tensor, rank: int, *, scaling: float, generator: torch.Generator, **_: Any
) -> AdapterInit:
    """NoRA, normalised LoRA (arXiv 2608.31036; PEFT 0.22 ``init_lora_weights="nora"``, ``nora_init``).

    ``A`` drawn as LoRA's (Kaiming-uniform, a = √5), then each **column** of A (r entries, one per
    input feature) divided by its norm, clamped at 1e-6 (PEFT's ``A.norm(dim=0).clamp_min(1e-6)``);
    ``B = 0``, so ΔW = 0 at init and the base stays W. PEFT recommends ``alpha = r`` (s = 1) without
    rsLoRA.
    """
    m, n = W.shape
    A = _kaiming_uniform((rank, n), generator)
    A = A / torch.linalg.vector_norm(A, dim=0, keepdim=True).clamp_min(1e-6)
    return _finish(W, torch.zeros(m, rank), A)


def init_kasa(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    beta: float = 1e-4,
    gamma: float = 1e-3,
    reference: bool = False,
    driver: str | None = None,
    **_: Any,
) -> AdapterInit:
    """KaSA, knowledge-aware singular-value adaptation (Wang et al. 2024, arXiv 2412.06071;
    juyongjiang/KaSA; PEFT 0.22 ``LoraConfig(kasa_config=KasaConfig())``).

    One SVD of W (float32, :func:`~lowrank_lab.linalg.truncated_svd` with ``which="smallest"``)
    drops its r **smallest** singular triplets from the frozen base for good: the base **becomes**
    ``W − U_d·S_d·Vh_d``, the rank-(k − r) truncation (k = min(m, n)), so the output changes at init
    by that tail. The adapter is ``s·B·diag(M)·A`` with ``A`` Kaiming-uniform (LoRA's), ``B = 0`` and
    a trainable diagonal ``M ~ N(0, 1)`` (r numbers; PEFT's ``lora_diag = randn(r)``); A, M and B
    all train, and ΔW = 0 at init because B = 0. r must be below k so that one component survives.

    Parameters
    ----------
    beta : float, default 1e-4
        Weight β of the singular-value penalty ``Σ M²`` (paper Eq. 9–10; PEFT ``KasaConfig.beta``,
        the reference GLUE value).
    gamma : float, default 1e-3
        Weight γ of the orthogonality penalty ``‖BᵀB − I‖_F + ‖AAᵀ − I‖_F`` (paper Eq. 11; PEFT
        ``KasaConfig.gamma``, the reference GLUE value).
    reference : bool, default False
        SVD in float64 (PEFT: float32).
    driver : str, optional
        CUDA SVD driver; see :func:`~lowrank_lab.linalg.truncated_svd`.

    Notes
    -----
    The two penalties act only where a training loop adds them: :func:`~lowrank_lab.adapters.kasa_loss`
    computes ``β·Σ M² + γ·(‖BᵀB − I‖_F + ‖AAᵀ − I‖_F)`` over a model's KaSA layers with the β, γ given
    here, as PEFT's ``LoraModel._get_kasa_loss``. The fine-tuning harness has no hook for extra
    losses and does not add it, so there, as in PEFT unless the user adds ``_get_kasa_loss``, KaSA
    trains without its regularisers.
    """
    if beta < 0 or gamma < 0:
        raise AdapterOptionError(f"kasa options beta and gamma must be >= 0, got beta={beta}, gamma={gamma}")
    m, n = W.shape
    if rank >= min(m, n):
        raise AdapterOptionError(
            f"kasa needs rank < min(m, n) = {min(m, n)} so that one singular component of the base "
            f"survives the truncation, got rank={rank}"
        )
    F = truncated_svd(W, rank, which="smallest", reference=reference, driver=driver, out_dtype=torch.float32)
    acc = torch.float64 if W.dtype == torch.float64 else torch.float32
    dropped = (F.left * F.core).to(acc) @ F.right.to(acc)
    A = _kaiming_uniform((rank, n), generator)
    M = torch.randn(rank, generator=generator, dtype=torch.float32, device=generator.device)
    out = _finish(
        W, torch.zeros(m, rank), A, M, dropped_singular_values=F.core.tolist(), beta=beta, gamma=gamma
    )
    out.base = (W.to(acc) - dropped).to(W.dtype)
    return out


def init_lora_null(
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float,
    generator: torch.Generator,
    stats: Any = None,
    reference: bool = False,
    **_: Any,
) -> AdapterInit:
    """LoRA-Null (Tang et al. 2025, arXiv 2503.02659): the adapter starts in the null space of the
    calibration activations.

    With X the layer's input rows on the calibration data (unmasked tokens) and ``XᵀX = U Λ Uᵀ``
    (the uncentred scatter streamed by :func:`~lowrank_lab.adapters.calibration.activation_statistics`,
    float64), ``N = U[:, :r]`` spans the r input directions the data excites least — the null space
    of X when the tokens leave one. W's projection onto it, ``W·N·Nᵀ = P Σ Qᵀ`` (its exact rank-r
    SVD, from :func:`~lowrank_lab.linalg.truncated_svd` of the m × r matrix ``W·N``), gives
    PiSSA's split ``B = P·√(Σ/s)``, ``A = √(Σ/s)·(N·Q)ᵀ``; the base becomes ``W − s·B·A = W(I − NNᵀ)``
    (residual: output unchanged). So ``A·x = 0`` for every calibration input x in the span the
    data fills, and training starts by moving only what those inputs do not read (the paper's
    knowledge preservation); MiLoRA does the same with W's own bottom singular space instead.

    Parameters
    ----------
    reference : bool, default False
        Eigendecomposition in float64 (default float32 from the float64 scatter, as EVA here).

    Notes
    -----
    Followed from the paper's description (REFERENCE.md); the released code was not read. The
    paper's variant that also freezes A ("LoRA-Null v2") is not registered.
    """
    st = _need_stats("lora-null", stats, "activations", W)
    _too_few_tokens("lora-null", st, rank, "input")
    dt = torch.float64 if reference else torch.float32
    key = ("eigh-uncentred", dt)
    if key not in st.extra:  # targets reading the same input (q, k, v) share one decomposition
        st.extra[key] = torch.linalg.eigh(st.scatter.to(dt))
    _, U = st.extra[key]
    N = U[:, :rank].to(device=W.device, dtype=_work_dtype(W))  # (n, r), smallest eigenvalues first
    F = truncated_svd(W.to(N.dtype) @ N, rank, reference=reference, out_dtype=_work_dtype(W))  # W·N = P Σ Qᵀ
    B, A_null = _split_sqrt(F.left, F.core, F.right, scaling)
    return _finish(W, B, A_null @ N.T, tokens=st.tokens)


def init_ab(
    W: torch.Tensor, rank: int, *, scaling: float, generator: torch.Generator, **_: Any
) -> AdapterInit:
    """Init[AB]: both factors non-zero, the product subtracted from the base (arXiv 2602.04998's
    learning-rate study; Init[A]/Init[B] of Hayou et al. 2024, arXiv 2406.08447, set one factor to 0).

    ``A`` (r × n) and ``B`` (m × r) each drawn as ``nn.Linear``'s default weight (Kaiming-uniform,
    a = √5: bounds 1/√n for A, whose fan-in is n, and 1/√r for B, whose fan-in is r — the draws PEFT's
    ``lora_A``/``lora_B`` layers get before LoRA zeroes B); the base becomes ``W − s·B·A``, so the
    output is unchanged at init while both factors receive gradients from the first step.
    REFERENCE.md says only "uniform"; the bounds are our reading (nn.Linear's defaults).
    """
    m, n = W.shape
    A = _kaiming_uniform((rank, n), generator)
    B = _kaiming_uniform((m, rank), generator)
    return _finish(W, B, A)


# --------------------------------------------------------------------------------------------------
# the registry

_AB = frozenset({"A", "B"})
_AMB = frozenset({"A", "M", "B"})
_M = frozenset({"M"})


#: Keyword arguments every init receives from :func:`initialize` itself: not user options.
_CALL_ARGUMENTS = frozenset({"scaling", "generator", "grad", "stats"})


def init_options(init: Callable[..., AdapterInit] | None) -> dict[str, Any]:
    """The options of an init function and their defaults, read from its signature.

    Every keyword-only parameter with a default, except those :func:`initialize` passes itself
    (``scaling``, ``generator``, and the calibration data ``grad`` / ``stats``). The signature is the
    one place a default is written (and documented, in the init's docstring), so the registry cannot
    disagree with it.
    """
    if init is None:
        return {}
    return {
        name: p.default
        for name, p in inspect.signature(init).parameters.items()
        if p.kind is p.KEYWORD_ONLY and p.default is not p.empty and name not in _CALL_ARGUMENTS
    }


def _method(name: str, **fields: Any) -> AdapterMethod:
    fields.setdefault("options", init_options(fields.get("init")))
    return AdapterMethod(name=name, **fields)

ADAPTERS: dict[str, AdapterMethod] = {
    m.name: m
    for m in [
        _method(
            "lora",
            summary="A Kaiming-uniform, B = 0",
            paper="Hu et al. 2021, arXiv 2106.09685; PEFT default init",
            init=init_lora,
            factorization=None,
            core=None,
            trains=_AB,
            residual=False,
            output_at_init="unchanged (ΔW = 0: B = 0)",
            closed_form="r·(m+n)",
            drawn=frozenset({"A"}),
        ),
        _method(
            "pissa",
            summary="B, A = U_r·√(S_r/s), √(S_r/s)·Vh_r of the exact SVD; base W − s·BA",
            paper="Meng et al. 2024, arXiv 2404.02948; PEFT init_lora_weights='pissa'",
            init=init_pissa,
            factorization="svd",
            core=None,
            trains=_AB,
            residual=True,
            output_at_init="unchanged (residual base)",
            closed_form="r·(m+n)",
        ),
        _method(
            "pissa-fast",
            summary="PiSSA from a randomized SVD (default as PEFT pissa_niter_4: q = r, no oversampling)",
            paper="Meng et al. 2024, arXiv 2404.02948 (App. B); PEFT init_lora_weights='pissa_niter_4'",
            init=init_pissa_fast,
            factorization="rsvd",
            core=None,
            trains=_AB,
            residual=True,
            output_at_init="unchanged (residual base)",
            closed_form="r·(m+n)",
        ),
        _method(
            "milora",
            summary="PiSSA's split of the r smallest singular triplets; base W − s·BA",
            paper="Wang et al. 2024, arXiv 2406.09044",
            init=init_milora,
            factorization="svd",
            core=None,
            trains=_AB,
            residual=True,
            output_at_init="unchanged (residual base)",
            closed_form="r·(m+n)",
        ),
        _method(
            "olora",
            summary="B = Q[:, :r], A = R[:r] of the thin QR; base W − s·BA",
            paper="Büyükakyüz 2024, arXiv 2406.01775; PEFT init_lora_weights='olora'",
            init=init_olora,
            factorization="qr",
            core=None,
            trains=_AB,
            residual=True,
            output_at_init="unchanged (residual base)",
            closed_form="r·(m+n)",
        ),
        _method(
            "lora-xs",
            summary="frozen B = U_r, A = S_r·Vh_r; trainable r×r core M ~ N(0, 1e-5²)",
            paper="Bałazy et al. 2024, arXiv 2405.17604; MohammadrezaBanaei/LoRA-XS",
            init=init_lora_xs,
            factorization="svd",
            core="dense",
            trains=_M,
            residual=False,
            output_at_init="≈ unchanged (ΔW = s·U_r·M·S_r·Vh_r, M ~ N(0, 1e-5²); exactly 0 with core_std=0)",
            closed_form="r²",
            drawn=frozenset({"M"}),
        ),
        _method(
            "lora-sb",
            summary="SVD of ΔŴ = −η·sign(Σ calibration grads): frozen B = U_r, A = Vh_r; core M = S_r/s",
            paper="Ponkshe et al. 2024, arXiv 2411.19557; RaghavSinghal10/lora-sb",
            init=init_lora_sb,
            factorization="svd",
            core="dense",
            trains=_M,
            residual=False,
            output_at_init="changes: W + [−η·sign(G)]_r (one rank-r sign-gradient step)",
            closed_form="r²",
            calibration="gradient",
        ),
        _method(
            "slora",
            summary="A, M Kaiming-uniform, B = 0 (LoRA with an r×r core)",
            paper="Guo et al. 2025, arXiv 2502.14482; TracyGuo2001/NLoRA slora_init",
            init=init_slora,
            factorization=None,
            core="dense",
            trains=_AMB,
            residual=False,
            output_at_init="unchanged (ΔW = 0: B = 0)",
            closed_form="r·(m+n) + r²",
            drawn=frozenset({"A", "M"}),
        ),
        _method(
            "nlora",
            summary="B = W[:, :r], M = W[:r, :r] (raw, no pinv), A = W[:r, :]; base W (as released)",
            paper="Guo et al. 2025, arXiv 2502.14482; TracyGuo2001/NLoRA nlora_init",
            init=init_nlora,
            factorization="nystrom-released",
            core="dense",
            trains=_AMB,
            residual=False,
            output_at_init="changes (ΔW = s·W[:, :r]·W[:r, :r]·W[:r, :] ≠ 0)",
            closed_form="r·(m+n) + r²",
        ),
        _method(
            "nlora-pinv",
            summary="B = W[:, :r], M = W[:r, :r]⁺, A = W[:r, :] (textbook CUR–Nyström); base W − s·B·M·A",
            paper="Guo et al. 2025 (the paper's figure); Williams & Seeger 2001; residual as PiSSA",
            init=init_nlora_pinv,
            factorization="nystrom-pinv",
            core="dense",
            trains=_AMB,
            residual=True,
            output_at_init="unchanged (residual base)",
            closed_form="r·(m+n) + r²",
        ),
        _method(
            "nlora-sketch",
            summary="B, M, A of the sketched, stabilised generalised Nyström; base W − s·B·M·A",
            paper="Nakatsukasa 2020, arXiv 2009.11392, in NLoRA's three-matrix form; residual as PiSSA",
            init=init_nlora_sketch,
            factorization="nystrom",
            core="dense",
            trains=_AMB,
            residual=True,
            output_at_init="unchanged (residual base)",
            closed_form="r·(m+n) + r²",
        ),
        _method(
            "nlora-pinv-additive",
            summary="nlora-pinv's factors added on top of W (base W): the pre-issue-15 form, labelled",
            paper="Guo et al. 2025 (the paper's figure) with NLoRA's released additive form",
            init=init_nlora_pinv,
            factorization="nystrom-pinv",
            core="dense",
            trains=_AMB,
            residual=False,
            output_at_init="changes (ΔW = the Nyström approximation of W, added to W: about 2W there)",
            closed_form="r·(m+n) + r²",
        ),
        _method(
            "nlora-sketch-additive",
            summary="nlora-sketch's factors added on top of W (base W): the pre-issue-15 form, labelled",
            paper="Nakatsukasa 2020 with NLoRA's released additive form",
            init=init_nlora_sketch,
            factorization="nystrom",
            core="dense",
            trains=_AMB,
            residual=False,
            output_at_init="changes (ΔW ≈ the best rank-r approximation of W, added to W)",
            closed_form="r·(m+n) + r²",
        ),
        _method(
            "inttune",
            summary="NLoRA's init with A and B frozen: only the r×r core trains",
            paper="Guo et al. 2025, arXiv 2502.14482 (IntTune); TracyGuo2001/NLoRA inttune.py",
            init=init_nlora,
            factorization="nystrom-released",
            core="dense",
            trains=_M,
            residual=False,
            output_at_init="changes (as nlora: ΔW = s·W[:, :r]·W[:r, :r]·W[:r, :] ≠ 0)",
            closed_form="r²",
        ),
        _method(
            "loldu",
            summary="B = P·L[:, :r], diagonal M = z = diag(U)[:r]/s, A = U[:r]/diag(U)[:r]; base W_res",
            paper="Shi et al. 2024, arXiv 2410.13618; SKDDJ/LoLDU",
            init=init_loldu,
            factorization="ldu",
            core="diag",
            trains=_M,
            residual=True,
            output_at_init="unchanged (residual base)",
            closed_form="r",
        ),
        _method(
            "full",
            summary="full fine-tuning of the target weights (no adapter; the baseline)",
            paper="full fine-tuning baseline (e.g. PiSSA Table 2, MiLoRA README)",
            init=None,
            factorization=None,
            core=None,
            trains=frozenset({"W"}),
            residual=False,
            output_at_init="unchanged (nothing added)",
            closed_form="m·n",
            peft_exportable=False,
        ),
        _method(
            "gaussian",
            summary="A ~ N(0, (1/r)²), B = 0",
            paper="PEFT init_lora_weights='gaussian'",
            init=init_gaussian,
            factorization=None,
            core=None,
            trains=_AB,
            residual=False,
            output_at_init="unchanged (ΔW = 0: B = 0)",
            closed_form="r·(m+n)",
            drawn=frozenset({"A"}),
        ),
        _method(
            "orthogonal",
            summary="A, B Gaussian times the even/odd rows of an orthogonal Q (÷10), so B·A = 0",
            paper="PEFT init_lora_weights='orthogonal' (datta0, 'rethink LoRA init')",
            init=init_orthogonal,
            factorization=None,
            core=None,
            trains=_AB,
            residual=False,
            output_at_init="unchanged to rounding (B·A = 0 by orthogonality)",
            closed_form="r·(m+n)",
            drawn=frozenset({"A", "B"}),
        ),
        _method(
            "mica",
            summary="frozen B = U[:, −r:] (r smallest singular directions), A = 0 trains",
            paper="MiCA, arXiv 2604.01694; PEFT init_lora_weights='mica'",
            init=init_mica,
            factorization="svd",
            core=None,
            trains=frozenset({"A"}),
            residual=False,
            output_at_init="unchanged (ΔW = 0: A = 0)",
            closed_form="r·n",
        ),
        _method(
            "eva",
            summary="A = top-r principal components of the layer's centred inputs on task data, B = 0",
            paper="Paischer et al. 2024, arXiv 2410.07170; ml-jku/EVA; PEFT init_lora_weights='eva' (rho=1)",
            init=init_eva,
            factorization=None,
            core=None,
            trains=_AB,
            residual=False,
            output_at_init="unchanged (ΔW = 0: B = 0)",
            closed_form="r·(m+n)",
            calibration="activations",
        ),
        _method(
            "corda-ipm",
            summary="top r of SVD(W·C) with C the input covariance, V = (Vh·C⁻¹)ᵀ; base W − s·BA",
            paper="Yang et al. 2024, arXiv 2406.05223; iboing/CorDA; PEFT init_lora_weights='corda' (ipm)",
            init=init_corda_ipm,
            factorization="svd",
            core=None,
            trains=_AB,
            residual=True,
            output_at_init="unchanged (residual base)",
            closed_form="r·(m+n)",
            calibration="corda",
        ),
        _method(
            "corda-kpm",
            summary="bottom r of SVD(W·C) with C the input covariance, V = (Vh·C⁻¹)ᵀ; base W − s·BA",
            paper="Yang et al. 2024, arXiv 2406.05223; PEFT CordaConfig(corda_method='kpm')",
            init=init_corda_kpm,
            factorization="svd",
            core=None,
            trains=_AB,
            residual=True,
            output_at_init="unchanged (residual base)",
            closed_form="r·(m+n)",
            calibration="corda",
        ),
        _method(
            "lora-ga",
            summary="A = Vhᵀ[:r], B = U[:, r:2r]·S[r:2r]·m^¼/√γ from the rank-2r SVD of the task gradient; "
            "base W − s·BA",
            paper="Wang et al. 2024, arXiv 2407.05000; PEFT init_lora_weights='lora_ga' (PR #2926)",
            init=init_lora_ga,
            factorization="rsvd",
            core=None,
            trains=_AB,
            residual=True,
            output_at_init="unchanged (residual base)",
            closed_form="r·(m+n)",
            calibration="gradient",
        ),
        _method(
            "lora-one",
            summary="B, A = U_r√S_r, √S_r·V_rᵀ of −G, each ÷ √(σ₁γ); base W (one gradient step at init)",
            paper="Zhang et al. 2025, arXiv 2502.01235; YuanheZ/LoRA-One (not in PEFT)",
            init=init_lora_one,
            factorization="svd",
            core=None,
            trains=_AB,
            residual=False,
            output_at_init="changes: W + s/(γσ₁)·[−G]_r (one rank-r gradient step)",
            closed_form="r·(m+n)",
            calibration="gradient",
        ),
        _method(
            "loftq",
            summary="alternate Q = NF4(W − BA), B, A = SVD_r(W − Q); base becomes deq(Q)",
            paper="Li et al. 2023, arXiv 2310.08659; PEFT init_lora_weights='loftq' (LoftQConfig)",
            init=init_loftq,
            factorization="svd",
            core=None,
            trains=_AB,
            residual=False,
            output_at_init="≈ unchanged: deq(Q) + s·B·A ≈ W (quantisation error left; exact only if s = 1)",
            closed_form="r·(m+n)",
            peft_exportable=False,
            replaces_base=True,
        ),
        _method(
            "astra",
            summary="B = V_r, A = V_rᵀ·W with V_r eigenvectors of the output activations' covariance; "
            "base W − s·BA",
            paper="arXiv 2602.19111; LyoAI/Astra; PEFT 0.22 init_lora_weights='astra' (preprocess_astra)",
            init=init_astra,
            factorization=None,
            core=None,
            trains=_AB,
            residual=True,
            output_at_init="unchanged (residual base)",
            closed_form="r·(m+n)",
            calibration="outputs",
        ),
        _method(
            "nora",
            summary="A Kaiming-uniform with each column normalised to unit norm, B = 0",
            paper="arXiv 2608.31036; PEFT 0.22 init_lora_weights='nora'",
            init=init_nora,
            factorization=None,
            core=None,
            trains=_AB,
            residual=False,
            output_at_init="unchanged (ΔW = 0: B = 0)",
            closed_form="r·(m+n)",
            drawn=frozenset({"A"}),
        ),
        _method(
            "kasa",
            summary="base loses its r smallest singular triplets; A Kaiming-uniform, diagonal M ~ N(0, 1), "
            "B = 0",
            paper="Wang et al. 2024, arXiv 2412.06071; juyongjiang/KaSA; PEFT 0.22 kasa_config",
            init=init_kasa,
            factorization="svd",
            core="diag",
            trains=_AMB,
            residual=False,
            output_at_init="changes: the base drops W's r smallest singular triplets (ΔW = 0: B = 0)",
            closed_form="r·(m+n) + r",
            peft_exportable=False,
            drawn=frozenset({"A", "M"}),
            replaces_base=True,
        ),
        _method(
            "lora-null",
            summary="PiSSA's split of W projected on the r least-excited input directions of the task "
            "data; base W − s·BA",
            paper="Tang et al. 2025, arXiv 2503.02659 (LoRA-Null; not in PEFT)",
            init=init_lora_null,
            factorization="svd",
            core=None,
            trains=_AB,
            residual=True,
            output_at_init="unchanged (residual base)",
            closed_form="r·(m+n)",
            calibration="activations",
        ),
        _method(
            "init-ab",
            summary="A and B both Kaiming-uniform (nn.Linear's defaults); base W − s·BA",
            paper="arXiv 2602.04998 (Init[AB] of its learning-rate study); after Hayou et al. 2024, "
            "arXiv 2406.08447",
            init=init_ab,
            factorization=None,
            core=None,
            trains=_AB,
            residual=True,
            output_at_init="unchanged (residual base)",
            closed_form="r·(m+n)",
            drawn=frozenset({"A", "B"}),
        ),
    ]
}


def get_adapter(name: str) -> AdapterMethod:
    """Look a method up by name; an unknown name lists the valid ones and the closest matches."""
    if isinstance(name, AdapterMethod):
        return name
    try:
        return ADAPTERS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), ADAPTERS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownAdapterError(
            f"unknown adapter method {name!r}.{hint} Valid methods: {', '.join(ADAPTERS)}"
        ) from None


def closed_form_trainable(
    method: str | AdapterMethod,
    shapes: Iterable[tuple[int, int]] | Mapping[str, tuple[int, int]],
    rank: int,
    *,
    repeat: int = 1,
    dora: bool = False,
) -> int:
    """Trainable parameters of ``method`` at ``rank`` on targets of the given ``(m, n)`` shapes.

    Parameters
    ----------
    method : str or AdapterMethod
    shapes : iterable of (m, n), or a mapping name -> (m, n)
        One entry per target matrix (``(out, in)`` as ``torch.nn.Linear``), e.g.
        ``get_spec("llama-7b").target_shapes()`` for one layer.
    rank : int
    repeat : int, default 1
        Multiplier, e.g. the number of layers when ``shapes`` describes one layer.
    dora : bool, default False
        Add DoRA's trainable magnitude, m per matrix (arXiv 2402.09353).

    Examples
    --------
    LoRA at r = 128 on the seven projections of Llama-2-7B's 32 layers (REFERENCE.md: 319,815,680):

    >>> shapes = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]
    >>> closed_form_trainable("lora", shapes, 128, repeat=32)
    319815680
    """
    am = get_adapter(method)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AdapterOptionError(f"rank must be a positive integer, got {rank!r}")
    items = shapes.values() if isinstance(shapes, Mapping) else shapes
    extra = (lambda m: int(m)) if dora and am.name != "full" else (lambda m: 0)
    return repeat * sum(am.trainable_count(int(m), int(n), rank) + extra(m) for m, n in items)


def initialize(
    method: str | AdapterMethod,
    W: torch.Tensor,
    rank: int,
    *,
    scaling: float = 1.0,
    generator: torch.Generator | int | None = None,
    **options: Any,
) -> AdapterInit:
    """Run ``method``'s init on one ``(m, n)`` matrix (``torch.nn.Linear`` layout); no model needed."""
    am = get_adapter(method)
    if am.init is None:
        raise AdapterOptionError(f"adapter method {am.name!r} has no low-rank factors to initialise")
    grad = options.pop("grad", None)
    stats = options.pop("stats", None)
    opts = am.check_options(options)
    if am.rank_bounded:
        validate_rank(rank, W.shape)
    return am.init(
        W, rank, scaling=scaling, generator=make_generator(generator), grad=grad, stats=stats, **opts
    )
