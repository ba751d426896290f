"""The types every weight source hands out: one target matrix at a time, never the whole model.

A :class:`WeightSource` lists its :class:`TargetInfo` records without reading any tensor data
(only file headers), in the model's layer order (layer index, then the block order of
:data:`~lowrank_lab.weights.registry.FAMILY_MODULES`), and :meth:`WeightSource.load` reads one
matrix as a :class:`WeightMatrix` with its weight ``(out, in)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .registry import ModelSpec, parse_layers, select_modules

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
        Canonical module name (``q_proj``, ``attention-output``, ``wq``...).
    shape : tuple[int, int]
        ``(out, in)``, after any transpose of a GPT-2 ``Conv1D`` weight.
    """

    tensor: str
    layer: int
    module: str
    shape: tuple[int, int]


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


class WeightSource:
    """Base class: a checkpoint (or a synthetic stand-in) seen as a sequence of target matrices.

    Subclasses implement :meth:`_list_targets` (every target, no data read) and :meth:`_read`
    (one weight, ``(out, in)``, stored dtype, CPU). Selection, ordering, dtype and device
    handling live here once.

    Attributes
    ----------
    name : str
        What the user asked for (registry name, directory name, hub id).
    spec : ModelSpec
        Architecture; shapes are checked against it.
    synthetic : bool
    family : str
    origin : str
        Where the weights come from: a path, or ``"synthetic"``.
    modules : list[str]
        Canonical modules chosen by ``targets`` (:func:`~lowrank_lab.weights.registry.select_modules`).
    layers : list[int] or None
        Layers chosen by ``layers`` (:func:`~lowrank_lab.weights.registry.parse_layers`), None for all.
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
        targets: str | Sequence[str] | None = None,
        layers: str | Sequence[int] | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.family = spec.family
        self.origin = origin
        self.modules = select_modules(spec.family, targets)
        self.layers = parse_layers(layers, spec.num_layers)
        self.dtype = resolve_dtype(dtype)
        self.device = resolve_load_device(device)
        self._targets: list[TargetInfo] | None = None

    # -- to implement ------------------------------------------------------------------------
    def _list_targets(self) -> list[TargetInfo]:
        raise NotImplementedError

    def _read(self, info: TargetInfo) -> WeightMatrix:
        raise NotImplementedError

    # -- public ------------------------------------------------------------------------------
    def targets(self) -> list[TargetInfo]:
        """The selected target matrices in model order (layer, then block order); no data read."""
        if self._targets is None:
            order = {m: i for i, m in enumerate(self.spec.modules)}
            wanted_layers = None if self.layers is None else set(self.layers)
            chosen = [
                t
                for t in self._list_targets()
                if t.module in self.modules and (wanted_layers is None or t.layer in wanted_layers)
            ]
            self._targets = sorted(chosen, key=lambda t: (t.layer, order[t.module]))
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
            "targets": len(self.targets()),
        }

    def __repr__(self) -> str:
        label = " synthetic" if self.synthetic else ""
        return f"<{type(self).__name__}{label} {self.name!r} family={self.family} origin={self.origin!r}>"
