"""The fine-tuned side of an intruder comparison, however it was saved, and its pairing with the base.

* a checkpoint (anything :func:`lowrank_lab.weights.open_source` reads);
* a fine-tuning run directory holding ``merged/`` (written by :mod:`lowrank_lab.training`);
* the base plus a PEFT LoRA adapter (read by :func:`lowrank_lab.adapters.io.read_peft_lora`,
  merged on the fly as ``W0 + (lora_alpha/r)·B·A``);
* the base plus a lowrank_lab adapter (loaded on the base HF model and merged).

A llama2.c base is compared in its Hugging Face layout (:class:`lowrank_lab.weights.llama2c.Llama2cAsHF`)
when the tuned weights are in that layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lowrank_lab.adapters.io import (
    CONFIG_NAME,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    WEIGHTS_NAME,
    AdapterFilesError,
    AdapterFormatError,
    adapter_kind,
    match_modules,
    read_peft_lora,
)
from lowrank_lab.analysis.intruders import find_intruders
from lowrank_lab.utils.files import read_text
from lowrank_lab.weights.llama2c import Llama2cAsHF, hf_layout


class ArchitectureMismatchError(ValueError):
    """Base and tuned weights do not have the same target matrices; the message names the first one."""


class TunedWeights:
    """The fine-tuned side: a weight source, optionally with per-tensor updates applied on load.

    ``targets()`` and ``weight(info)`` mirror :class:`lowrank_lab.weights.WeightSource` so the
    comparison loop reads one matrix at a time whatever the tuned weights are made of. ``base`` is
    the base source in the same layout (see :class:`Llama2cAsHF`): compare against it.
    """

    def __init__(
        self, source, *, overlay: dict | None = None, description: dict | None = None, base=None
    ) -> None:
        self.source = source
        self.overlay = overlay or {}  # tensor name -> callable(W) -> tuned W
        self.description = description or {}
        self.base = base

    @property
    def family(self):
        return getattr(self.source, "family", None)

    def targets(self):
        return self.source.targets()

    def weight(self, info) -> torch.Tensor:
        part = getattr(info, "part", "")
        parent = info.tensor[: -len(f"[{part}]")] if part else None
        if parent in self.overlay and info.tensor not in self.overlay:
            # A part of a fused matrix (--split-fused): the update is to the whole; apply it, then slice.
            whole = next(t for t in self.source.targets() if t.tensor == parent)
            rows = self.source.part_rows(info)
            W = self.overlay[parent](self.source.load(whole).weight)
            return W[rows] if isinstance(rows, slice) else W[torch.as_tensor(rows)]
        W = self.source.load(info).weight
        fn = self.overlay.get(info.tensor)
        return W if fn is None else fn(W)



def _peft_overlay(adapter: Path, *, tensors: Sequence[str]) -> tuple[dict, dict]:
    deltas, config = read_peft_lora(adapter)
    matched = match_modules(list(deltas), tensors, what="PEFT adapter")
    unmatched = [m for m in deltas if m not in matched]
    overlay = {}
    for mod, tensor in matched.items():
        d = deltas[mod]

        def apply(W, d=d, tensor=tensor):
            if tuple(W.shape) != d.shape:
                raise AdapterFormatError(
                    f"PEFT module {d.module!r} gives a {d.shape} update but base tensor {tensor!r} is "
                    f"{tuple(W.shape)}; was the adapter trained on this base?"
                )
            cdt = torch.promote_types(W.dtype, torch.float32)
            return W.to(cdt) + d.delta(cdt).to(W.device)

        overlay[tensor] = apply
    init = config.get("init_lora_weights")
    desc = {
        "adapter": str(adapter),
        "adapter_format": "peft",
        "r": config.get("r"),
        "lora_alpha": config.get("lora_alpha"),
        "use_rslora": bool(config.get("use_rslora", False)),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out", False)),
        "modules": len(deltas),
        "modules_matched": len(matched),
        "modules_not_analysed": unmatched,
        "init_lora_weights": init,
    }
    residual_inits = {"pissa", "olora", "corda", "eva", "loftq", "astra"}
    if isinstance(init, str) and init.split("_")[0].lower() in residual_inits:
        desc["warning"] = (
            f"adapter was initialised with init_lora_weights={init!r}: unless it was saved with "
            "path_initial_model_for_weight_conversion it applies to the *residual* base, not the original"
        )
    return overlay, desc


def _toolkit_weights(adapter: Path, base: str | Path) -> tuple[dict, dict]:
    """Load the base HF model, put the lowrank_lab adapter on it, merge, and keep the merged targets."""
    import json

    from lowrank_lab.adapters import load_adapter, merge
    from lowrank_lab.weights import load_hf_model

    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (adapter / n).is_file()]
    if missing:
        raise AdapterFilesError(
            f"lowrank_lab adapter {str(adapter)!r} is missing {' and '.join(missing)} "
            "(save_adapter writes both)"
        )
    config = json.loads(read_text(adapter / CONFIG_NAME))
    errors = []
    for head in ("base", "sequence-classification", "causal-lm"):
        try:
            model = load_hf_model(base, head=head)
        except Exception as exc:  # this head does not exist for this family
            errors.append(f"{head}: {exc}")
            continue
        try:
            load_adapter(model, adapter)
        except ValueError as exc:  # module names of another head
            errors.append(f"{head}: {exc}")
            continue
        merge(model)
        weights = {}
        for name, info in config["modules"].items():
            W = model.get_submodule(name).weight.detach()
            if list(W.shape) != list(info["shape"]):
                W = W.T  # Conv1D stores (in, out)
            weights[name] = W.contiguous()
        desc = {
            "adapter": str(adapter),
            "adapter_format": "lowrank_lab",
            "method": config.get("method"),
            "rank": config.get("rank"),
            "alpha": config.get("alpha"),
            "head": head,
            "modules": len(weights),
        }
        return weights, desc
    raise AdapterFormatError(
        f"lowrank_lab adapter {str(adapter)!r} fits no head of base {str(base)!r}: " + "; ".join(errors)
    )


def resolve_tuned_path(tuned: str | Path) -> tuple[Path, str]:
    """What a ``--tuned`` path holds: an adapter, a fine-tuning run, or a checkpoint.

    Returns ``(path, kind)`` with kind ``"adapter"``, ``"run"`` (a fine-tuning run directory whose
    ``merged/`` holds the weights) or ``"checkpoint"`` (anything :func:`lowrank_lab.weights.open_source`
    reads: an HF directory, a ``.safetensors`` file, a llama2.c ``.bin``, a registry name).
    """
    p = Path(tuned)
    if p.is_dir():
        if adapter_kind(p):
            return p, "adapter"
        if (p / "merged").is_dir():
            return p / "merged", "run"
        if not any(p.glob("*.safetensors")) and not (p / "config.json").is_file():
            for sub in ("adapter", "adapters"):
                if adapter_kind(p / sub):
                    return p / sub, "adapter"
    return p, "checkpoint"


def open_tuned(
    tuned: str | Path | None,
    *,
    base: str | Path,
    base_source,
    adapter: str | Path | None = None,
    source_options: dict | None = None,
) -> TunedWeights:
    """The fine-tuned weights, however they were saved.

    ``source_options`` (``selection=WeightSelection(experts=..., split_fused=...)``, or those keywords)
    are passed to ``open_source`` for a tuned checkpoint, so that it lists the same matrices as the base.

    * ``tuned`` a checkpoint (HF directory, ``model.safetensors``, anything ``open_source`` reads);
    * ``tuned`` a fine-tuning run directory holding ``merged/`` (written by lowrank_lab.training);
    * ``tuned`` or ``adapter`` a PEFT LoRA directory (``adapter_config.json`` +
      ``adapter_model.safetensors``): merged on the fly as ``W0 + (lora_alpha/r)·B·A``;
    * ``tuned`` or ``adapter`` a lowrank_lab adapter (``lowrank_adapter.json`` + ``.safetensors``):
      loaded on the base HF model with :func:`lowrank_lab.adapters.load_adapter` and merged.

    With both a checkpoint ``tuned`` and an ``adapter``, the adapter is merged on top of ``tuned``.
    """
    from lowrank_lab.weights import open_source

    adapter_path = Path(adapter) if adapter is not None else None
    if tuned is None and adapter_path is None:
        raise ValueError("give the fine-tuned weights with --tuned PATH, or the base plus --adapter PATH")
    desc: dict = {}
    # Adapters are trained on the Hugging Face form of a model (load_hf_model, PEFT), so a llama2.c
    # base is compared in that layout unless the tuned weights are a llama2.c checkpoint too.
    hf_base = hf_layout(base_source)
    if tuned is not None:
        path, kind = resolve_tuned_path(tuned)
        if kind == "adapter":
            if adapter_path is not None:
                raise ValueError(
                    f"--tuned {str(tuned)!r} is an adapter directory and --adapter was given too; "
                    "pass one adapter (its base is --base)"
                )
            adapter_path = path
            inner = hf_base
            desc["tuned"] = "base + adapter"
        else:
            inner = open_source(str(path), **(source_options or {}))
            desc["tuned"] = str(path)
            desc["tuned_kind"] = kind
            if adapter_path is not None:
                inner = hf_layout(inner)
    else:
        inner = hf_base
        desc["tuned"] = "base + adapter"
    native = getattr(inner, "family", None) == "llama2c" and not isinstance(inner, Llama2cAsHF)
    base_view = base_source if native else hf_base
    if base_view is not base_source:
        desc["base_layout"] = "llama2.c converted to Hugging Face Llama (wq/wk rows permuted)"
    if adapter_path is None:
        return TunedWeights(inner, description=desc, base=base_view)

    kind = adapter_kind(adapter_path)
    if kind is None:
        if not adapter_path.exists():
            raise AdapterFilesError(f"--adapter {str(adapter_path)!r} does not exist")
        raise AdapterFilesError(
            f"--adapter {str(adapter_path)!r} has none of {PEFT_CONFIG}, {PEFT_WEIGHTS[0]} (PEFT) or "
            f"{CONFIG_NAME}, {WEIGHTS_NAME} (lowrank_lab save_adapter)"
        )
    tensors = [i.tensor for i in inner.targets()]
    if kind == "peft":
        overlay, adesc = _peft_overlay(adapter_path, tensors=tensors)
    else:
        if inner is not hf_base:
            raise ValueError(
                "a lowrank_lab adapter is merged onto --base; it cannot be combined with a --tuned checkpoint"
            )
        merged, adesc = _toolkit_weights(adapter_path, base)
        matched = match_modules(list(merged), tensors, what="lowrank_lab adapter")
        overlay = {t: (lambda W, M=merged[m]: M.to(W.device)) for m, t in matched.items()}
        adesc["modules_not_analysed"] = [m for m in merged if m not in matched]
    desc["tuned"] = f"{desc['tuned'] if 'tuned_kind' in desc else base} + {kind} adapter {adapter_path}"
    if not overlay:
        raise AdapterFormatError(
            f"no module of adapter {str(adapter_path)!r} matches a target matrix of {str(base)!r} "
            f"(targets look like {tensors[:2]}); was it trained on this base?"
        )
    desc.update(adesc)
    return TunedWeights(inner, overlay=overlay, description=desc, base=base_view)


@dataclass(frozen=True)
class MatrixPair:
    """One target matrix on both sides (tensor names may differ by a prefix such as ``bert.``)."""

    base: object  # TargetInfo
    tuned: object  # TargetInfo


def pair_targets(
    base_infos: Sequence,
    tuned_infos: Sequence,
    *,
    base_name: str = "base",
    tuned_name: str = "tuned",
    base_family: str | None = None,
    tuned_family: str | None = None,
):
    """Pair target matrices by (layer, module), checking shapes, in the base's order.

    Modules are compared through their Hugging Face suffix (:func:`lowrank_lab.weights.hf_module_suffixes`)
    when the families are given, so llama2.c's ``wq`` pairs with Llama's ``q_proj``.

    Raises
    ------
    ArchitectureMismatchError
        Naming the first base tensor that has no counterpart or another shape in the tuned weights,
        or the first tuned tensor that the base lacks.
    """

    def keyer(family):
        # Experts and fused parts share (layer, module): their index and part name tell them apart.
        def extra(info):
            return (getattr(info, "expert", None), getattr(info, "part", ""))

        if family is None:
            return lambda info: (info.layer, info.module, *extra(info))
        from lowrank_lab.weights import hf_module_suffixes

        suffixes = hf_module_suffixes(family)
        return lambda info: (info.layer, suffixes.get(info.module, info.module), *extra(info))

    base_key, tuned_key = keyer(base_family), keyer(tuned_family)
    by_key = {}
    for info in tuned_infos:
        by_key.setdefault(tuned_key(info), info)
    pairs = []
    for info in base_infos:
        other = by_key.pop(base_key(info), None)
        if other is None:
            raise ArchitectureMismatchError(
                f"base tensor {info.tensor!r} (layer {info.layer}, {info.module}, {tuple(info.shape)}) "
                f"has no counterpart in {tuned_name}; are base and tuned the same architecture?"
            )
        if tuple(other.shape) != tuple(info.shape):
            raise ArchitectureMismatchError(
                f"tensor {info.tensor!r} is {tuple(info.shape)} in {base_name} but {other.tensor!r} is "
                f"{tuple(other.shape)} in {tuned_name}; compare a fine-tune against the base it was "
                "trained from"
            )
        pairs.append(MatrixPair(info, other))
    if by_key:
        extra = next(iter(by_key.values()))
        raise ArchitectureMismatchError(
            f"{tuned_name} tensor {extra.tensor!r} (layer {extra.layer}, {extra.module}) has no "
            f"counterpart in {base_name}; are base and tuned the same architecture?"
        )
    return pairs


def iter_records(
    base_source,
    tuned: TunedWeights,
    pairs: Sequence[MatrixPair],
    *,
    skip=None,
    device: torch.device | str | None = None,
    **kw,
):
    """Yield ``(pair, {side: IntruderRecord})`` one matrix at a time (base and tuned read lazily).

    ``skip(pair) -> bool`` leaves out matrices already done (``--resume``); ``kw`` goes to
    :func:`find_intruders`.
    """
    for pair in pairs:
        if skip is not None and skip(pair):
            continue
        W0 = base_source.load(pair.base).weight
        W = tuned.weight(pair.tuned)
        if device is not None:
            W0, W = W0.to(device), W.to(device)
        yield pair, find_intruders(W0, W, name=pair.base.tensor, **kw)
