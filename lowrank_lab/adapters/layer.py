"""One layer type for every method: a frozen (possibly residual) base plus ``s · B · [M] · A``."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

PARTS = ("A", "M", "B")


def is_conv1d(module: nn.Module) -> bool:
    """A ``transformers`` Conv1D (GPT-2 style: weight stored (in, out), i.e. ``fan_in_fan_out``)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is a dependency, but the layer itself needs none
        return False
    return isinstance(module, Conv1D)


def is_adaptable(module: nn.Module) -> bool:
    """Modules the adapters can wrap: ``nn.Linear`` and ``transformers`` Conv1D."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The base weight as an ``(out, in)`` matrix (a transposed view for Conv1D)."""
    return module.weight.T if is_conv1d(module) else module.weight


def low_rank_product(
    B: torch.Tensor, M: torch.Tensor | None, A: torch.Tensor, *, scaling: float, dtype: torch.dtype
) -> torch.Tensor:
    """``scaling · B · [M] · A`` as an ``(m, n)`` matrix computed in ``dtype``."""
    B, A = B.to(dtype), A.to(dtype)
    if M is not None:
        M = M.to(dtype)
        B = B * M if M.ndim == 1 else B @ M
    return (B @ A).mul_(scaling)


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    # Merges and residuals are summed in float32 at least (float64 stays float64), then cast once.
    return torch.float64 if dtype == torch.float64 else torch.float32


class LowRankLinear(nn.Module):
    """``y = base(x) + s · ((x Aᵀ) Mᵀ) Bᵀ`` around a frozen ``nn.Linear`` or Conv1D.

    The adapter path is evaluated as three thin products (never materialising ΔW), so a forward
    costs ``O(r·(m + n))`` extra per token. ``B`` is (m, r), ``M`` None | (r,) diagonal | (r, r),
    ``A`` (r, n), ``s = scaling``; which of them train is declared in ``trainable``.

    Parameters
    ----------
    base : nn.Linear or transformers Conv1D
        The module being adapted. It is kept (with its bias) and, when ``residual``, its weight is
        replaced in place by ``W − s·B₀·[M₀]·A₀``.
    A, B, M : Tensor
        Initial factors (copied into parameters of the base weight's dtype and device).
    scaling : float
        ``alpha / r``.
    trainable : iterable of {"A", "M", "B"}
        Parts that get ``requires_grad=True``; everything else (including the base) is frozen.
    method : str
        Registry name of the init, recorded for save/export.
    residual : bool
        Subtract the initial product from the base weight (PiSSA, MiLoRA, OLoRA, LoLDU), so the
        layer computes the same function as ``base`` at init.
    init_factors : (A₀, M₀, B₀), optional
        The product to subtract when ``residual`` (default: ``A``, ``M``, ``B`` themselves).
        Loading a trained adapter passes the saved initial factors here.
    keep_init : bool, default True
        For residual layers, keep ``A₀, M₀, B₀`` as non-persistent buffers: exporting to PEFT
        relative to the original base (rank 2r) and saving/loading need them. Costs one more
        copy of the adapter.
    dropout : float, default 0.0
        Dropout on the adapter's input (PiSSA and NLoRA train with 0).
    init_seconds : float
        Wall time of this matrix's initialisation, for reports.
    base_weight : Tensor (m, n), optional
        A new frozen base weight that replaces W before anything else (LoftQ's dequantised NF4
        weight). Not combined with ``residual``.
    dora : bool, default False
        Weight-decomposed adaptation (DoRA, Liu et al. 2024, arXiv 2402.09353; PEFT ``use_dora``):
        the layer computes ``mag ⊙ (W + s·B·[M]·A) / ‖W + s·B·[M]·A‖_row`` with a trainable
        magnitude vector ``mag`` (m,) initialised to the row norms of the adapted weight after the
        init, so the output is what it would be without DoRA at init. As in DoRA's Sec. 4.3 and
        PEFT, the norm is detached from the graph (treated as a constant in backward).
    """

    def __init__(
        self,
        base: nn.Module,
        A: torch.Tensor,
        B: torch.Tensor,
        M: torch.Tensor | None = None,
        *,
        scaling: float,
        trainable: Iterable[str],
        method: str = "",
        residual: bool = False,
        init_factors: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None,
        keep_init: bool = True,
        dropout: float = 0.0,
        init_seconds: float = float("nan"),
        base_weight: torch.Tensor | None = None,
        dora: bool = False,
    ) -> None:
        super().__init__()
        if not is_adaptable(base):
            raise TypeError(
                f"LowRankLinear wraps nn.Linear or transformers Conv1D, got {type(base).__name__}"
            )
        W = weight_matrix(base)
        m, n = W.shape
        r = A.shape[0]
        if tuple(A.shape) != (r, n) or tuple(B.shape) != (m, r):
            raise ValueError(
                f"factors do not fit a {m}x{n} weight at rank {r}: A is {tuple(A.shape)} (want ({r}, {n})), "
                f"B is {tuple(B.shape)} (want ({m}, {r}))"
            )
        if M is not None and tuple(M.shape) not in {(r,), (r, r)}:
            raise ValueError(f"core M must be ({r},) or ({r}, {r}), got {tuple(M.shape)}")
        trainable = frozenset(trainable)
        bad = trainable - set(PARTS) - ({"M"} if M is None else set())
        if bad or ("M" in trainable and M is None):
            raise ValueError(
                f"trainable parts must be among {PARTS} (M only with a core), got {sorted(trainable)}"
            )

        self.base = base
        self.fan_in_fan_out = is_conv1d(base)
        self.in_features, self.out_features, self.rank = n, m, r
        self.scaling = float(scaling)
        self.method = method
        self.residual = bool(residual)
        self.trainable_parts = trainable
        self.init_seconds = init_seconds
        self.merged = False
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        # The layer takes ownership of the factors (no copy when dtype and device already match).
        like = {"dtype": W.dtype, "device": W.device}
        self.A = nn.Parameter(A.detach().to(**like), requires_grad="A" in trainable)
        self.B = nn.Parameter(B.detach().to(**like), requires_grad="B" in trainable)
        if M is None:
            self.register_parameter("M", None)
        else:
            self.M = nn.Parameter(M.detach().to(**like), requires_grad="M" in trainable)
        for p in base.parameters():
            p.requires_grad_(False)
        if base_weight is not None:
            if residual:
                raise ValueError("base_weight replaces the base; it cannot be combined with residual")
            if tuple(base_weight.shape) != (m, n):
                raise ValueError(f"base_weight must be ({m}, {n}), got {tuple(base_weight.shape)}")
            with torch.no_grad():
                new = base_weight.detach().to(**like)
                base.weight.data = (new.T if self.fan_in_fan_out else new).contiguous()
        self.replaced_base = base_weight is not None

        for name in ("A0", "M0", "B0"):
            self.register_buffer(name, None, persistent=False)
        if self.residual:
            A0, M0, B0 = init_factors if init_factors is not None else (self.A, self.M, self.B)
            A0, B0 = A0.detach().to(**like), B0.detach().to(**like)
            M0 = None if M0 is None else M0.detach().to(**like)
            self._subtract_from_base(A0, M0, B0)
            if keep_init:
                self.A0, self.B0 = A0.clone(), B0.clone()
                self.M0 = None if M0 is None else M0.clone()
        self.dora = bool(dora)
        self.register_buffer("premerge_weight", None, persistent=False)
        if self.dora:
            # DoRA's magnitude starts as the row norms of the adapted weight (PEFT computes it after
            # the LoRA init, so residual inits and LoRA-One start from their own W + s·B·A).
            self.magnitude = nn.Parameter(self._adapted_row_norm().detach().to(W.dtype), requires_grad=True)
        else:
            self.register_parameter("magnitude", None)

    # -- base weight -------------------------------------------------------------------------------

    @property
    def weight(self) -> torch.Tensor:
        """The base module's weight (residual for residual methods), for code that reads ``.weight``."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @torch.no_grad()
    def _add_product_to_base(
        self, B: torch.Tensor, M: torch.Tensor | None, A: torch.Tensor, sign: float
    ) -> None:
        # W ← W ± s·B·[M]·A in float32 at least (float64 stays float64), from the factors as stored
        # in the model dtype, so that base + adapter reproduces W up to the rounding of W alone.
        # One GEMM into a new tensor that replaces the parameter's data (the Parameter object, and
        # so any tying or optimizer reference, stays the same). Not in place: Hugging Face loads
        # safetensors weights memory-mapped, and the first write to each page of a mapped weight
        # is a copy-on-write fault — MiniLM's 36 matrices took 140 ms in place vs 11 ms here, more
        # than the randomized SVDs. The cost is one (m, n) temporary per module at a time.
        w = self.base.weight
        acc = _accumulate_dtype(w.dtype)
        B, A = B.to(acc), A.to(acc)
        if M is not None:
            M = M.to(acc)
            B = B * M if M.ndim == 1 else B @ M
        left, right = (A.T, B.T) if self.fan_in_fan_out else (B, A)  # Conv1D stores (B A)ᵀ = Aᵀ Bᵀ
        alpha = sign * self.scaling
        w.data = torch.addmm(w.to(acc), left, right, alpha=alpha).to(w.dtype)

    @torch.no_grad()
    def _subtract_from_base(self, A0: torch.Tensor, M0: torch.Tensor | None, B0: torch.Tensor) -> None:
        """``W_res = W − s·B₀·[M₀]·A₀`` (residual methods)."""
        self._add_product_to_base(B0, M0, A0, -1.0)

    # -- adapter -----------------------------------------------------------------------------------

    @torch.no_grad()
    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``s · B · [M] · A`` as a detached (out, in) matrix, float32 (float64 layers: float64)."""
        acc = dtype or _accumulate_dtype(self.A.dtype)
        return low_rank_product(self.B, self.M, self.A, scaling=self.scaling, dtype=acc)

    def _adapted_row_norm(self) -> torch.Tensor:
        # ‖W + s·B·[M]·A‖ of each output row, in float32 at least, differentiable in A, M, B (DoRA
        # detaches it where it is used).
        acc = _accumulate_dtype(self.A.dtype)
        W = weight_matrix(self.base).to(acc)
        B = self.B.to(acc)
        if self.M is not None:
            B = B * self.M.to(acc) if self.M.ndim == 1 else B @ self.M.to(acc)
        return torch.linalg.vector_norm(W + self.scaling * (B @ self.A.to(acc)), dim=1)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base(x, *args, **kwargs)
        if self.merged:
            return out
        h = nn.functional.linear(self.dropout(x).to(self.A.dtype), self.A)  # (..., r)
        if self.M is not None:
            h = h * self.M if self.M.ndim == 1 else nn.functional.linear(h, self.M)  # (..., r)
        h = nn.functional.linear(h, self.B)  # (..., m)
        if not self.dora:
            if h.dtype == out.dtype:  # one fused pass over (..., m) instead of a product, then a sum
                return out.add(h, alpha=self.scaling)
            return out + (h * self.scaling).to(out.dtype)
        # DoRA: mag/‖W + sBA‖ ⊙ (W x + s·BA x) + bias, with the norm detached (DoRA Sec. 4.3).
        factor = (self.magnitude / self._adapted_row_norm().detach()).to(out.dtype)  # (m,)
        bias = self.base.bias
        plain = out if bias is None else out - bias
        return out + (factor - 1) * plain + factor * (h * self.scaling).to(out.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``s·B·[M]·A`` into the base weight (forward then uses the base alone)."""
        if not self.merged:
            if self.dora:
                # W ← mag/‖W + sBA‖ ⊙ (W + sBA); the original is kept for unmerge (not recoverable
                # from the merged weight alone).
                self.premerge_weight = self.base.weight.detach().clone()
                factor = (self.magnitude.float() / self._adapted_row_norm().float())[:, None]
                self._add_product_to_base(self.B, self.M, self.A, +1.0)
                w = self.base.weight
                scaled = weight_matrix(self.base).float() * factor
                w.data = (scaled.T if self.fan_in_fan_out else scaled).to(w.dtype).contiguous()
            else:
                self._add_product_to_base(self.B, self.M, self.A, +1.0)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`: the base weight comes back to dtype roundoff (‖ΔW‖·eps)."""
        if self.merged:
            if self.dora:
                self.base.weight.data = self.premerge_weight
                self.premerge_weight = None
            else:
                self._add_product_to_base(self.B, self.M, self.A, -1.0)
            self.merged = False

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        core = "none" if self.M is None else ("diag" if self.M.ndim == 1 else "dense")
        return (
            f"method={self.method!r}, in={self.in_features}, out={self.out_features}, rank={self.rank}, "
            f"core={core}, scaling={self.scaling:g}, residual={self.residual}, "
            f"trainable={sorted(self.trainable_parts)}, merged={self.merged}"
            + (", dora=True" if self.dora else "")
            + (", replaced_base=True" if self.replaced_base else "")
        )
