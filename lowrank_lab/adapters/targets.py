"""Which modules of a Hugging Face model an adapter goes on: names, roles, raw suffixes, "all-linear".

The names and roles are those of the family tables (:mod:`lowrank_lab.weights.families`), and a
target is resolved by the same two functions the weight sources use: :func:`~lowrank_lab.weights.
families.select` (what a token such as ``q_proj``, ``q`` or ``attention.self.query`` chooses) and
:func:`~lowrank_lab.weights.families.match` (which module of the family a module name is). So
``--targets`` means the same in ``analyze`` and in ``finetune``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from lowrank_lab.weights import hf_module_suffixes
from lowrank_lab.weights.families import FAMILIES, MODEL_TYPES, Family, Module, match, select

from .layer import LowRankLinear, is_adaptable


class TargetError(ValueError):
    """A target name that matches no adaptable module of the model."""


# A module inside an indexed ModuleList: the repeated transformer blocks ("encoder.layer.3.…",
# "model.layers.0.…", "transformer.h.11.…"). "all-linear" means every Linear/Conv1D there, which
# leaves out task heads (classifier, lm_head, pooler) that fine-tuning recipes handle on their own.
_IN_BLOCK = re.compile(r"(^|\.)\d+\.")


def model_family(model: nn.Module) -> str | None:
    """The lowrank_lab family of a Hugging Face model (``"bert"``, ``"llama"``, ...), None if unknown."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return MODEL_TYPES.get(model_type)


def family_suffixes(family: str | None) -> dict[str, str]:
    """Canonical module name -> Hugging Face module-name suffix for ``family`` ({} when unknown).

    The table is :func:`lowrank_lab.weights.hf_module_suffixes` (the weights area owns it).
    """
    return hf_module_suffixes(family) if family in FAMILIES else {}


def _layout(family: Family, names: list[str]) -> tuple[Module, ...]:
    """The layout of ``family`` that the model's module names match most (as discovery does)."""
    layouts = (family.modules, *family.alt_modules)
    counts = [sum(match(n, family, i) is not None for n in names) for i in range(len(layouts))]
    return layouts[counts.index(max(counts))]


def _split(targets: str | Sequence[str]) -> list[str]:
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    return [t.strip() for t in items if t and t.strip()]


def resolve_targets(model: nn.Module, targets: str | Sequence[str] | None = None) -> list[str]:
    """Full module names (model order) that ``targets`` selects.

    Parameters
    ----------
    targets : None, "all-linear", or names (a comma-separated string or a list)
        ``None`` selects every module of the model's family table that is a Linear/Conv1D here
        (the seven projections of a Llama, the six linear maps of a BERT layer, Phi-3's fused
        ``qkv_proj``; experts stored as one 3-D tensor are not modules and are left out), or
        "all-linear" when the family is unknown. ``"all-linear"`` is every ``nn.Linear``/Conv1D
        inside the repeated transformer blocks (task heads and poolers excluded). Each other name is
        a canonical name (``q_proj``, ``attention-output``) or a role (``q``, ``gate_up``), resolved
        as the weight sources resolve it (:func:`lowrank_lab.weights.families.select`), or else a
        raw module-name suffix (``output.dense``, ``c_proj``) or full module name, matched on whole
        dotted components as PEFT's ``target_modules`` does.

    Raises
    ------
    TargetError
        A name matches no Linear/Conv1D module; the message lists the canonical names and a few
        module names of the model.
    """
    linear = [(n, m) for n, m in model.named_modules() if is_adaptable(m) and n]
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LowRankLinear)]
    if wrapped:
        raise TargetError(
            f"the model already carries adapters on {len(wrapped)} module(s) (e.g. {wrapped[0]!r}); "
            "call merge(model) first, or start from a fresh model"
        )
    family_name = model_family(model)
    family = FAMILIES.get(family_name) if family_name else None
    layout = _layout(family, [n for n, _ in linear]) if family is not None else ()
    layout_index = (family.modules, *family.alt_modules).index(layout) if family is not None else 0
    module_of = {}
    if family is not None:
        for n, _ in linear:
            found = match(n, family, layout_index)
            if found is not None:
                module_of[n] = found.module.name
    tokens = _split(targets) if targets is not None else ([None] if family is not None else ["all-linear"])
    if not tokens:
        raise TargetError("targets is empty; pass None, 'all-linear' or module names such as 'q_proj,v_proj'")
    chosen: set[str] = set()
    for tok in tokens:
        if tok == "all-linear":
            hits = [n for n, _ in linear if _IN_BLOCK.search(n)]
        else:
            wanted = None
            # Canonical names and roles go through the table; any other token is a raw module-name
            # suffix, as in PEFT ("output.dense" is both BERT output projections).
            if family is not None and (tok is None or any(tok in (m.name, m.role) for m in layout)):
                wanted = {m.name for m in select(family, tok, modules=layout)}
            if wanted is not None:
                hits = [n for n, _ in linear if module_of.get(n) in wanted]
            else:
                hits = [n for n, _ in linear if n == tok or n.endswith("." + tok)]
        if not hits:
            canon = (
                ", ".join(m.name for m in layout) if layout else "(no canonical names for this model family)"
            )
            examples = ", ".join(n for n, _ in linear[:4]) or "(the model has no Linear/Conv1D modules)"
            label = tok if tok is not None else "the default targets"
            raise TargetError(
                f"target {label!r} matches no Linear/Conv1D module of this {family_name or 'model'} "
                "(a mixture-of-experts tensor is not a module an adapter can wrap). "
                f"Use 'all-linear', a canonical name ({canon}), or a module-name suffix such as: {examples}"
            )
        chosen.update(hits)
    return [n for n, _ in linear if n in chosen]
