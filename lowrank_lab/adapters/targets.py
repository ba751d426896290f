"""Which modules of a Hugging Face model an adapter goes on: canonical names, raw suffixes, "all-linear".

Canonical module names are the ones the whole toolkit uses (CONTRACT.md): llama/mistral
``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``; bert/roberta/deberta
``query key value attention-output intermediate output``. They map to Hugging Face module-name
suffixes through :func:`lowrank_lab.weights.hf_module_suffixes`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from lowrank_lab.weights import FAMILY_MODULES, canonical_module, hf_module_suffixes
from lowrank_lab.weights.registry import MODEL_TYPES

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
    return hf_module_suffixes(family) if family in FAMILY_MODULES else {}


def _canonical_of(name: str, family: str | None) -> str | None:
    # lowrank_lab.weights.canonical_module matches the whole suffix after the block index, so
    # "encoder.layer.0.attention.output.dense" is "attention-output", never "output".
    if family not in FAMILY_MODULES:
        return None
    found = canonical_module(name, family)
    return None if found is None else found[1]


def _split(targets: str | Sequence[str]) -> list[str]:
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    return [t.strip() for t in items if t and t.strip()]


def resolve_targets(model: nn.Module, targets: str | Sequence[str] | None = None) -> list[str]:
    """Full module names (model order) that ``targets`` selects.

    Parameters
    ----------
    targets : None, "all-linear", or names (a comma-separated string or a list)
        ``None`` selects every canonical module of the model's family (the seven projections of a
        Llama, the six linear maps of a BERT layer), or "all-linear" when the family is unknown.
        ``"all-linear"`` is every ``nn.Linear``/Conv1D inside the repeated transformer blocks
        (task heads and poolers excluded). Each other name is a canonical name of the family
        (``q_proj``, ``attention-output``), or a raw Hugging Face suffix (``attn.c_attn``,
        ``output.dense``) or full module name, matched on whole dotted components.

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
    family = model_family(model)
    table = family_suffixes(family)
    tokens = _split(targets) if targets is not None else (list(table) if table else ["all-linear"])
    if not tokens:
        raise TargetError("targets is empty; pass None, 'all-linear' or module names such as 'q_proj,v_proj'")
    chosen: set[str] = set()
    for tok in tokens:
        if tok == "all-linear":
            hits = [n for n, _ in linear if _IN_BLOCK.search(n)]
        elif tok in table:
            hits = [n for n, _ in linear if _canonical_of(n, family) == tok]
        else:
            hits = [n for n, _ in linear if n == tok or n.endswith("." + tok)]
        if not hits:
            canon = ", ".join(table) if table else "(no canonical names for this model family)"
            examples = ", ".join(n for n, _ in linear[:4]) or "(the model has no Linear/Conv1D modules)"
            raise TargetError(
                f"target {tok!r} matches no Linear/Conv1D module of this {family or 'model'}. "
                f"Use 'all-linear', a canonical name ({canon}), or a module-name suffix such as: {examples}"
            )
        chosen.update(hits)
    return [n for n, _ in linear if n in chosen]
