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
    compute_dtype,
    ldu,
    make_generator,
    nystrom_pinv,
    nystrom_released,
    nystrom_sketch,
    randomized_svd,
    thin_qr,
    truncated_svd,
    validate_rank,
)
from lowrank_lab.linalg.policy import gaussian


class UnknownAdapterError(ValueError):
    """An adapter method name that is not in :data:`ADAPTERS`."""


class AdapterOptionError(ValueError):
    """An option that the chosen adapter method does not take, or a bad value for one."""


@dataclass
class AdapterInit:
    """Initial factors of one matrix, in the dtype and on the device of ``W``.

    ``B`` (m, r), ``M`` None | (r,) | (r, r), ``A`` (r, n); ``info`` holds method extras
    (e.g. the sketch size of a randomized SVD).
    """

    B: torch.Tensor
    A: torch.Tensor
    M: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


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
    needs_calibration : bool
        The init needs gradients of a calibration loss (LoRA-SB).
    peft_exportable : bool
        Can be written as a plain PEFT LoRA adapter (see :func:`~lowrank_lab.adapters.export_peft`).
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
    needs_calibration: bool = False
    peft_exportable: bool = True

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
    """
    F = thin_qr(W, rank, reference=reference, out_dtype=_work_dtype(W))
    return _finish(W, F.left, F.right)


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
# the registry

_AB = frozenset({"A", "B"})
_AMB = frozenset({"A", "M", "B"})
_M = frozenset({"M"})


#: Keyword arguments every init receives from :func:`initialize` itself: not user options.
_CALL_ARGUMENTS = frozenset({"scaling", "generator", "grad"})


def init_options(init: Callable[..., AdapterInit] | None) -> dict[str, Any]:
    """The options of an init function and their defaults, read from its signature.

    Every keyword-only parameter with a default, except those :func:`initialize` passes itself
    (``scaling``, ``generator``, ``grad``). The signature is the one place a default is written
    (and documented, in the init's docstring), so the registry cannot disagree with it.
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
            needs_calibration=True,
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
    return repeat * sum(am.trainable_count(int(m), int(n), rank) for m, n in items)


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
    opts = am.check_options(options)
    if am.factorization is not None or am.core is not None:
        validate_rank(rank, W.shape)
    return am.init(W, rank, scaling=scaling, generator=make_generator(generator), grad=grad, **opts)
