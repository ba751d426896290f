"""Put an adapter on a model, take it off: ``inject``, ``merge``, ``unmerge``, parameter counts."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from lowrank_lab.linalg import make_generator
from lowrank_lab.utils.timing import Stopwatch

from .calibration import Calibration, CalibrationError, calibrate
from .layer import LowRankLinear, weight_matrix
from .methods import (
    ADAPTERS,
    AdapterMethod,
    AdapterOptionError,
    closed_form_trainable,
    get_adapter,
    initialize,
)
from .targets import resolve_targets

# inject(model, "full") wraps nothing: the names of the unfrozen targets are kept on the model
# under this attribute, so that save_adapter knows what to write.
FULL_TARGETS_ATTR = "_lowrank_lab_full_targets"


@dataclass(frozen=True)
class InjectedModule:
    """One adapted matrix: its module name, (out, in) shape, init wall time and trainable count."""

    module: str
    shape: tuple[int, int]
    init_seconds: float
    trainable: int


@dataclass
class InjectionReport:
    """What :func:`inject` did: per-module rows and totals.

    ``trainable`` counts every parameter of the model with ``requires_grad`` after injection;
    ``closed_form`` is :func:`closed_form_trainable` on the same shapes — they agree (tested).
    ``init_seconds`` sums the per-matrix init times (CUDA-synchronised); ``wall_seconds`` includes
    target resolution and, for LoRA-SB, the calibration gradients (``calibration_seconds``).
    """

    method: str
    rank: int
    alpha: float
    scaling: float
    modules: list[InjectedModule] = field(default_factory=list)
    trainable: int = 0
    closed_form: int = 0
    base_parameters: int = 0
    calibration_seconds: float = 0.0
    wall_seconds: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    scaling_rule: str = "lora"
    dora: bool = False

    @property
    def init_seconds(self) -> float:
        return float(sum(m.init_seconds for m in self.modules))

    def to_frame(self) -> pd.DataFrame:
        """One row per adapted matrix (long format, ready for pandas/CSV)."""
        rows = [
            {
                "method": self.method,
                "rank": self.rank,
                "module": m.module,
                "out": m.shape[0],
                "in": m.shape[1],
                "init_seconds": m.init_seconds,
                "trainable": m.trainable,
            }
            for m in self.modules
        ]
        return pd.DataFrame(
            rows, columns=["method", "rank", "module", "out", "in", "init_seconds", "trainable"]
        )

    def __str__(self) -> str:
        pct = 100.0 * self.trainable / self.base_parameters if self.base_parameters else float("nan")
        return (
            f"{self.method} r={self.rank} (s={self.scaling:g}) on {len(self.modules)} matrices: "
            f"{self.trainable:,} trainable ({pct:.3f}% of {self.base_parameters:,}), "
            f"init {self.init_seconds:.3f} s"
        )


SCALING_RULES = ("lora", "rslora")


def scaling_factor(alpha: float, rank: int, rule: str = "lora") -> float:
    """``s = alpha / r`` (LoRA, Hu et al. 2021) or ``alpha / √r`` (rsLoRA, arXiv 2312.03732)."""
    if rule == "lora":
        return alpha / rank
    if rule == "rslora":
        return alpha / math.sqrt(rank)
    raise AdapterOptionError(f"scaling must be one of {', '.join(SCALING_RULES)}, got {rule!r}")


def lowrank_modules(model: nn.Module) -> dict[str, LowRankLinear]:
    """Every :class:`LowRankLinear` of ``model`` by module name (model order)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _total_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def inject(
    model: nn.Module,
    method: str | AdapterMethod,
    rank: int = 8,
    alpha: float | None = None,
    targets: str | Sequence[str] | None = None,
    generator: torch.Generator | int | None = 0,
    calibration: Calibration | None = None,
    *,
    dropout: float = 0.0,
    keep_init: bool = True,
    progress: bool | None = None,
    scaling_rule: str = "lora",
    dora: bool = False,
    calibration_group: int | None = None,
    **options: Any,
) -> InjectionReport:
    """Wrap the target modules of ``model`` in :class:`LowRankLinear` layers initialised by ``method``.

    Works in place. Every parameter of the model is frozen first, then the method's trainable
    parts are enabled (for ``"full"``: the target weights themselves, and nothing is wrapped).

    Parameters
    ----------
    model : nn.Module
        A Hugging Face model (its ``config.model_type`` selects the canonical target names) or any
        module holding ``nn.Linear``/Conv1D layers.
    method : str
        A key of :data:`~lowrank_lab.adapters.ADAPTERS`.
    rank : int, default 8
        r. PiSSA and NLoRA use 128 on Llama-2-7B (REFERENCE.md); 8 is PEFT's default.
    alpha : float, optional
        Scaling numerator, ``s = alpha / r``. Default ``alpha = r`` (s = 1): what PiSSA, NLoRA and
        LoRA-SB's scripts use (r = alpha = 128 / 96) and what makes PiSSA's and LoLDU's factors
        the plain SVD/LDU ones.
    targets : None, "all-linear", or names
        See :func:`~lowrank_lab.adapters.targets.resolve_targets`. None: the family's canonical
        modules (all seven projections of a Llama, all six linear maps of a BERT layer).
    generator : torch.Generator or int, default 0
        Seed (or generator) of every random draw (LoRA's A, SLoRA's A and M, LoRA-XS's core, the
        sketches of pissa-fast and nlora-sketch), consumed in module order: the same seed gives
        the same adapter.
    calibration : callable or list of callables, optional
        Data-driven inits only (registry ``calibration`` set: lora-sb, lora-ga, lora-one, eva,
        corda-ipm, corda-kpm, astra, lora-null): ``loss_fn(model) -> scalar loss`` on a calibration
        batch of the task's training data, or one callable per batch; see
        :mod:`lowrank_lab.adapters.calibration`.
    dropout : float, default 0.0
        Adapter-input dropout (PiSSA/NLoRA scripts: 0).
    keep_init : bool, default True
        Residual methods keep the initial factors (needed by ``export_peft`` and ``save_adapter``
        relative to the original base); False saves one adapter-sized copy.
    progress : bool, optional
        tqdm bar over modules; None shows it only on a terminal.
    scaling_rule : {"lora", "rslora"}, default "lora"
        ``s = alpha / r`` (LoRA) or ``s = alpha / √r`` (rsLoRA, Kalajdzievski 2023, arXiv 2312.03732;
        PEFT ``use_rslora``), so that learning does not stall as r grows.
    dora : bool, default False
        Weight-decomposed adaptation on top of the method's init (DoRA, arXiv 2402.09353; PEFT
        ``use_dora``): adds a trainable magnitude vector (m per matrix); see :class:`LowRankLinear`.
    calibration_group : int, optional
        Calibrate and initialise the targets this many at a time, so that at most this many
        gradients (or input covariances) are held: 1 means one layer's gradient at a time, at the
        cost of one pass over the calibration data per group. Only for inits that leave the model's
        output unchanged (lora-ga, eva, corda-*): each group is calibrated on the model with the
        earlier groups already injected, which computes the same function. Default: all at once.
    **options
        Method options (e.g. ``n_iter=2, oversample=10`` for pissa-fast); an unknown option raises
        and lists the valid ones. Weights keep their dtype: factorizations run in the dtype policy's
        compute dtype (float32 for bf16/fp16, :mod:`lowrank_lab.linalg.policy`) and the factors
        and residual base are cast back to the weight's dtype.

    Returns
    -------
    InjectionReport
    """
    t_start = time.perf_counter()
    am = get_adapter(method)
    opts = am.check_options(options)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AdapterOptionError(f"rank must be a positive integer, got {rank!r}")
    alpha = float(rank if alpha is None else alpha)
    if alpha == 0:
        raise AdapterOptionError("alpha must be non-zero (s = alpha / rank multiplies the adapter)")
    scaling = scaling_factor(alpha, rank, scaling_rule)
    if dora and am.name == "full":
        raise AdapterOptionError("dora decomposes a low-rank adapter; it does not apply to full fine-tuning")
    if calibration is not None and not am.needs_calibration:
        data_driven = ", ".join(n for n, m in ADAPTERS.items() if m.needs_calibration)
        raise CalibrationError(
            f"calibration is only used by data-driven inits ({data_driven}), not by {am.name!r}"
        )
    if calibration_group is not None:
        if (
            isinstance(calibration_group, bool)
            or not isinstance(calibration_group, int)
            or calibration_group < 1
        ):
            raise AdapterOptionError(
                f"calibration_group must be a positive integer, got {calibration_group!r}"
            )
        if not am.needs_calibration:
            raise AdapterOptionError(f"calibration_group applies to data-driven inits, not to {am.name!r}")
        if not am.output_at_init.startswith("unchanged"):
            raise AdapterOptionError(
                f"calibration_group: {am.name} changes the model's output at init, so later groups would be "
                "calibrated on a different model; calibrate all targets at once (calibration_group=None)"
            )
    names = resolve_targets(model, targets)
    shapes = [tuple(weight_matrix(model.get_submodule(n)).shape) for n in names]
    if am.rank_bounded:  # checked before the model is touched
        for n, (m_, n_) in zip(names, shapes, strict=True):
            if rank > min(m_, n_):
                raise AdapterOptionError(
                    f"{am.name} init of {n!r} ({m_}x{n_}): rank={rank} is out of range, need "
                    f"1 <= rank <= {min(m_, n_)}; lower the rank or leave this module out of targets"
                )
    base_parameters = _total_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)

    report = InjectionReport(
        method=am.name,
        rank=rank,
        alpha=alpha,
        scaling=scaling,
        base_parameters=base_parameters,
        options=opts,
        scaling_rule=scaling_rule,
        dora=dora,
    )

    if am.name == "full":
        for n, shape in zip(names, shapes, strict=True):
            w = model.get_submodule(n).weight
            w.requires_grad_(True)
            report.modules.append(InjectedModule(n, shape, 0.0, w.numel()))
        setattr(model, FULL_TARGETS_ATTR, list(names))
    else:
        data: dict[str, Any] = {}
        group = len(names) if calibration_group is None else calibration_group
        key = "grad" if am.calibration == "gradient" else "stats"
        gen = make_generator(generator)
        for i, name in enumerate(
            tqdm(names, desc=f"{am.name} r={rank}", disable=(None if progress is None else not progress))
        ):
            if am.needs_calibration and name not in data:
                t0 = time.perf_counter()
                data = calibrate(
                    model, names[i : i + group], calibration, kind=am.calibration, method=am.name
                )
                report.calibration_seconds += time.perf_counter() - t0
            module = model.get_submodule(name)
            W = weight_matrix(module).detach()
            device = W.device
            with Stopwatch(device) as sw:
                try:
                    fac = initialize(
                        am, W, rank, scaling=scaling, generator=gen, **{key: data.get(name)}, **opts
                    )
                except (ValueError, TypeError) as exc:
                    raise type(exc)(f"{am.name} init of {name!r} ({tuple(W.shape)}): {exc}") from None
                layer = LowRankLinear(
                    module,
                    fac.A,
                    fac.B,
                    fac.M,
                    scaling=scaling,
                    trainable=am.trains,
                    method=am.name,
                    residual=am.residual,
                    keep_init=keep_init,
                    dropout=dropout,
                    base_weight=fac.base,
                    dora=dora,
                )
            data.pop(name, None)  # one gradient or covariance less held while the rest initialise
            layer.init_seconds = sw.seconds
            layer.init_options = dict(opts)  # e.g. KaSA's β and γ, read back by kasa_loss
            model.set_submodule(name, layer)
            report.modules.append(InjectedModule(name, tuple(W.shape), sw.seconds, layer.trainable_count()))
    report.trainable = trainable_parameters(model)
    report.closed_form = closed_form_trainable(am, shapes, rank, dora=dora)
    report.wall_seconds = time.perf_counter() - t_start
    return report


def kasa_loss(model: nn.Module) -> torch.Tensor | float:
    """KaSA's auxiliary regulariser summed over the model's ``kasa`` layers (0.0 if there are none).

    Per layer ``β·Σ M² + γ·(‖BᵀB − I‖_F + ‖AAᵀ − I‖_F)`` in float32 (KaSA, arXiv 2412.06071, Eq. 9–11;
    PEFT 0.22's ``LoraModel._get_kasa_loss``), with the ``beta`` and ``gamma`` each layer was injected
    with (defaults 1e-4 and 1e-3 from :func:`~lowrank_lab.adapters.methods.init_kasa`). Add it to the
    task loss to train KaSA as its paper does; the fine-tuning harness does not (it has no hook for
    extra losses), as PEFT leaves it to the user.
    """
    defaults = get_adapter("kasa").options
    total: torch.Tensor | float = 0.0
    for layer in lowrank_modules(model).values():
        if layer.method != "kasa":
            continue
        opts = {**defaults, **getattr(layer, "init_options", {})}
        A, B, M = layer.A.float(), layer.B.float(), layer.M.float()
        eye = torch.eye(layer.rank, dtype=torch.float32, device=A.device)
        l2 = (M**2).sum()
        ortho = torch.linalg.matrix_norm(B.T @ B - eye) + torch.linalg.matrix_norm(A @ A.T - eye)
        total = total + opts["beta"] * l2 + opts["gamma"] * ortho
    return total


def merge(model: nn.Module, *, unload: bool = True) -> nn.Module:
    """Fold every adapter into its base weight, in place; returns ``model``.

    ``unload=True`` (default) also puts the plain base module (``nn.Linear``/Conv1D, now holding
    ``W_base + s·B·[M]·A``) back in place of each :class:`LowRankLinear`: the model is an ordinary
    HF model again. ``unload=False`` keeps the wrappers (forward then uses the merged weight
    alone) so that :func:`unmerge` can take the adapters out again.
    """
    for name, layer in lowrank_modules(model).items():
        layer.merge()
        if unload:
            model.set_submodule(name, layer.base)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo ``merge(model, unload=False)``: every base weight comes back to dtype roundoff."""
    layers = lowrank_modules(model)
    if not layers:
        raise ValueError(
            "the model holds no LowRankLinear layers: merge(model) unloads them by default; "
            "call merge(model, unload=False) if you want to unmerge later"
        )
    for layer in layers.values():
        layer.unmerge()
    return model
