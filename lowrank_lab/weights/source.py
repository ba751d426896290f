"""The types every weight source hands out: one target matrix at a time, never the whole model.

A :class:`WeightSource` lists its :class:`TargetInfo` records without reading any tensor data
(only file headers), in the model's layer order (layer index, then the block order of the family
table in :mod:`lowrank_lab.weights.families`, then expert, then fused part), and
:meth:`WeightSource.load` reads one matrix as a :class:`WeightMatrix` with its weight ``(out, in)``.

Which matrices: the modules ``targets`` chooses (:func:`lowrank_lab.weights.families.select`, the
resolver ``adapters.inject`` uses too), in the layers ``layers`` chooses; of a mixture-of-experts
module, each expert is one matrix and ``experts`` chooses which; a fused projection (Phi-3
``qkv_proj``) is one matrix, and with ``split_fused`` its parts (q, k, v at their GQA sizes) follow
it as matrices of their own. Those choices, with the dtype and device of loaded weights, are one
:class:`WeightSelection` that every source takes (issue 29, point 4).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .families import Family, Module, select
from .registry import ModelSpec, parse_experts, parse_layers

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``None`` (keep the stored dtype), a torch floating dtype, or a name such as ``"bf16"``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
            raise ValueError(f"dtype {dtype} is not a floating-point dtype; weights are loaded as float")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(
            f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))} (or None to keep the "
            "stored one)"
        )
    return _DTYPES[key]


def resolve_load_device(device: torch.device | str | None) -> torch.device:
    """``None`` → CPU (loading never moves data unasked); ``"auto"`` → CUDA when available."""
    if device is None:
        return torch.device("cpu")
    from lowrank_lab.linalg.policy import resolve_device

    return resolve_device(device)


@dataclass(frozen=True)
class TargetInfo:
    """One target matrix of a checkpoint, known from its header alone.

    Attributes
    ----------
    tensor : str
        Name of the tensor in its checkpoint (``model.layers.0.self_attn.q_proj.weight``);
        synthetic ones read ``synthetic:<the name a real checkpoint would use>``.
    layer : int
        Block index.
    module : str
        Canonical module name (``q_proj``, ``attention-output``, ``wq``...); a part of a fused
        matrix reads ``<module>[<part>]`` (``qkv_proj[k]``).
    shape : tuple[int, int]
        ``(out, in)``, after any transpose of a GPT-2 ``Conv1D`` weight.
    role : str
        One of :data:`lowrank_lab.weights.families.ROLES` (``q``, ``gate_up``, ``expert_down``...).
    fused : bool
        The matrix is a fused projection as an adapter sees it (``qkv_proj``, ``c_attn``).
    expert : int or None
        Expert index of a mixture-of-experts matrix; its tensor name ends in ``[<expert>]`` when
        the experts are stacked in one 3-D tensor.
    part : str
        For a part of a fused matrix (``--split-fused``): its name (``q``, ``gate``); ``""`` otherwise.
    """

    tensor: str
    layer: int
    module: str
    shape: tuple[int, int]
    role: str = ""
    fused: bool = False
    expert: int | None = None
    part: str = ""


@dataclass(frozen=True)
class WeightMatrix:
    """A loaded target matrix.

    Attributes
    ----------
    info : TargetInfo
    weight : Tensor, shape (out, in)
    synthetic : bool
        True for the stand-ins of :mod:`lowrank_lab.weights.synthetic`; every table or figure
        built from one must say so.
    singular_values : Tensor or None
        The exact singular values (descending, float64) of a synthetic matrix, so analyses need
        no SVD of it; None for real weights.
    """

    info: TargetInfo
    weight: torch.Tensor
    synthetic: bool = False
    singular_values: torch.Tensor | None = None

    @property
    def tensor(self) -> str:
        return self.info.tensor

    @property
    def layer(self) -> int:
        return self.info.layer

    @property
    def module(self) -> str:
        return self.info.module

    @property
    def shape(self) -> tuple[int, int]:
        return self.info.shape

    @property
    def role(self) -> str:
        return self.info.role

    @property
    def expert(self) -> int | None:
        return self.info.expert


@dataclass(frozen=True)
class WeightSelection:
    """Which target matrices a :class:`WeightSource` hands out, and as what: the six options every
    source takes, written once (issue 29, point 4). Values are kept as given and checked against the
    model when a source is built (an unknown module or an out-of-range layer raises there).

    Attributes
    ----------
    targets : str, sequence of str or None
        Modules: ``"q_proj,v_proj"``, ``"all-linear"`` or None (all), resolved by
        :func:`~lowrank_lab.weights.families.select`. None by default: an analysis reads every
        matrix unless asked otherwise.
    layers : str, sequence of int or None
        ``"0-3,7"`` or None (all; :func:`~lowrank_lab.weights.registry.parse_layers`).
    dtype : torch.dtype, str or None
        Dtype of loaded weights; None keeps the stored dtype (synthetic: float32).
    device : torch.device, str or None
        Where loaded weights go; None is the CPU (loading never moves data unasked), ``"auto"``
        CUDA when available.
    experts : str, sequence of int or None
        Mixture-of-experts models: ``"all"``/None (each expert of each block is one matrix),
        ``"none"`` (routers and shared experts only) or indices such as ``"0-3,7"``.
    split_fused : bool
        Also list the parts of fused projections (Phi-3 ``qkv_proj`` as q, k, v at their GQA sizes)
        after the fused matrix an adapter sees. False by default: an adapter sees the fused matrix.
    """

    targets: str | Sequence[str] | None = None
    layers: str | Sequence[int] | None = None
    dtype: torch.dtype | str | None = None
    device: torch.device | str | None = None
    experts: str | Sequence[int] | None = None
    split_fused: bool = False


class WeightSource:
    """Base class: a checkpoint (or a synthetic stand-in) seen as a sequence of target matrices.

    Subclasses implement :meth:`_list_targets` (every target, no data read) and :meth:`_read`
    (one weight, ``(out, in)``, stored dtype, CPU). Selection, ordering, dtype and device
    handling live here once.

    Attributes
    ----------
    selection : WeightSelection
        The options the source was opened with, as given; the attributes below are them resolved
        against the model.
    name : str
        What the user asked for (registry name, directory name, hub id).
    spec : ModelSpec
        Architecture; shapes are checked against it.
    synthetic : bool
    family : str
    origin : str
        Where the weights come from: a path, or ``"synthetic"``.
    modules : list[str]
        Canonical modules chosen by ``targets`` (:func:`~lowrank_lab.weights.families.select`).
    layers : list[int] or None
        Layers chosen by ``layers`` (:func:`~lowrank_lab.weights.registry.parse_layers`), None for all.
    experts : list[int] or None
        Experts chosen by ``experts`` (:func:`~lowrank_lab.weights.registry.parse_experts`): None
        for all, ``[]`` for none (routers and shared experts stay).
    split_fused : bool
        Whether the parts of fused matrices are listed too.
    notes : list[str]
        One-line remarks for the user (a model type read without a table); CLIs print them.
    dtype : torch.dtype or None
        Dtype of loaded weights; None keeps the stored one (synthetic: float32).
    device : torch.device
        Where loaded weights go; CPU unless asked.
    """

    synthetic: bool = False

    def __init__(
        self,
        name: str,
        spec: ModelSpec,
        *,
        origin: str,
        selection: WeightSelection | None = None,
        family_info: Family | None = None,
    ) -> None:
        selection = WeightSelection() if selection is None else selection
        self.selection = selection
        self.name = name
        self.spec = spec
        self.family = spec.family
        self.family_info = family_info or spec.family_info
        self.origin = origin
        self.module_info: list[Module] = select(self.family_info, selection.targets)
        self.modules = [m.name for m in self.module_info]
        self.layers = parse_layers(selection.layers, spec.layer_count)
        self.experts = parse_experts(selection.experts, spec.num_experts)
        self.split_fused = bool(selection.split_fused)
        self.dtype = resolve_dtype(selection.dtype)
        self.device = resolve_load_device(selection.device)
        self.notes: list[str] = []
        self._targets: list[TargetInfo] | None = None

    # -- to implement ------------------------------------------------------------------------
    def _list_targets(self) -> list[TargetInfo]:
        raise NotImplementedError

    def _read(self, info: TargetInfo) -> WeightMatrix:
        raise NotImplementedError

    # -- public ------------------------------------------------------------------------------
    def expand(self, info: TargetInfo, module: Module, num_experts: int = 0) -> list[TargetInfo]:
        """The matrices one stored weight gives: one per selected expert of a stacked tensor, and
        the parts of a fused one when ``split_fused``. ``info`` names the whole stored weight."""
        experts: list[int | None] = [info.expert]
        if module.experts == "stacked":
            experts = [e for e in range(num_experts) if self.experts is None or e in self.experts]
        elif module.experts and self.experts is not None and info.expert not in self.experts:
            return []
        out = []
        for e in experts:
            tensor = info.tensor if module.experts != "stacked" else f"{info.tensor}[{e}]"
            whole = TargetInfo(tensor, info.layer, module.name, info.shape, module.role, module.fused, e)
            out.append(whole)
            if self.split_fused and module.fused:
                for part, rows in module.part_rows(self.spec):
                    n = rows.stop - rows.start if isinstance(rows, slice) else len(rows)
                    out.append(
                        TargetInfo(
                            f"{tensor}[{part.name}]", info.layer, f"{module.name}[{part.name}]",
                            (n, info.shape[1]), part.role, False, e, part.name,
                        )
                    )  # fmt: skip
        return out

    def part_rows(self, info: TargetInfo) -> slice | list[int] | None:
        """Rows of the fused matrix that the part ``info`` owns (None for a whole matrix)."""
        if not info.part:
            return None
        module = self.family_info.module(info.module.split("[", 1)[0])
        return dict((p.name, rows) for p, rows in module.part_rows(self.spec))[info.part]

    def targets(self) -> list[TargetInfo]:
        """The selected target matrices in model order (layer, block order, expert, part); no data read."""
        if self._targets is None:
            order = {m: i for i, m in enumerate(self.family_info.module_names)}
            wanted_layers = None if self.layers is None else set(self.layers)
            chosen = [
                t
                for t in self._list_targets()
                if t.module.split("[", 1)[0] in self.modules
                and (wanted_layers is None or t.layer in wanted_layers)
            ]

            def key(t: TargetInfo):
                module = t.module.split("[", 1)[0]
                parts = [p.name for p in self.family_info.module(module).parts] if t.part else []
                part = parts.index(t.part) if t.part else -1
                return (t.layer, order[module], -1 if t.expert is None else t.expert, part)

            self._targets = sorted(chosen, key=key)
        return list(self._targets)

    def load(self, info: TargetInfo) -> WeightMatrix:
        """Read one target matrix, cast to the source's dtype and moved to its device."""
        wm = self._read(info)
        w = wm.weight
        if self.dtype is not None and w.dtype != self.dtype:
            w = w.to(self.dtype)
        if w.device != self.device:
            w = w.to(self.device)
        if w is wm.weight:
            return wm
        return WeightMatrix(wm.info, w, wm.synthetic, wm.singular_values)

    def __iter__(self) -> Iterator[WeightMatrix]:
        for info in self.targets():
            yield self.load(info)

    def __len__(self) -> int:
        return len(self.targets())

    def describe(self) -> dict[str, Any]:
        """Provenance for run metadata and report headers."""
        return {
            "model": self.name,
            "family": self.family,
            "origin": self.origin,
            "synthetic": self.synthetic,
            "modules": ",".join(self.modules),
            "layers": "all" if self.layers is None else ",".join(map(str, self.layers)),
            "experts": "all" if self.experts is None else ",".join(map(str, self.experts)) or "none",
            "split_fused": self.split_fused,
            "targets": len(self.targets()),
            "notes": list(self.notes),
        }

    def __repr__(self) -> str:
        label = " synthetic" if self.synthetic else ""
        return f"<{type(self).__name__}{label} {self.name!r} family={self.family} origin={self.origin!r}>"
