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

from .layer import LowRankLinear, is_adaptable


class TargetError(ValueError):
    """A target name that matches no adaptable module of the model."""


# Used only when lowrank_lab.weights does not (yet) provide the family: canonical name -> suffix.
_FALLBACK_SUFFIXES: dict[str, dict[str, str]] = {
    "llama": {
        "q_proj": "self_attn.q_proj",
        "k_proj": "self_attn.k_proj",
        "v_proj": "self_attn.v_proj",
        "o_proj": "self_attn.o_proj",
        "gate_proj": "mlp.gate_proj",
        "up_proj": "mlp.up_proj",
        "down_proj": "mlp.down_proj",
    },
    "bert": {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attention-output": "attention.output.dense",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
    },
    "deberta": {
        "query": "attention.self.query_proj",
        "key": "attention.self.key_proj",
        "value": "attention.self.value_proj",
        "attention-output": "attention.output.dense",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
    },
}
_FAMILY_ALIASES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "llama2.c": "llama",
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "deberta": "deberta",
    "deberta-v2": "deberta",
}

# A module inside an indexed ModuleList: the repeated transformer blocks ("encoder.layer.3.…",
# "model.layers.0.…", "transformer.h.11.…"). "all-linear" means every Linear/Conv1D there, which
# leaves out task heads (classifier, lm_head, pooler) that fine-tuning recipes handle on their own.
_IN_BLOCK = re.compile(r"(^|\.)\d+\.")


def model_family(model: nn.Module) -> str | None:
    """``model.config.model_type`` (``"bert"``, ``"llama"``, ...) or None for a plain module."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def family_suffixes(family: str | None) -> dict[str, str]:
    """Canonical module name -> Hugging Face module-name suffix for ``family`` ({} when unknown)."""
    if family is None:
        return {}
    try:
        from lowrank_lab.weights import hf_module_suffixes  # the weights area owns the mapping
    except ImportError:
        hf_module_suffixes = None
    if hf_module_suffixes is not None:
        try:
            table = hf_module_suffixes(family)
        except (KeyError, ValueError):
            table = None
        if table:
            return dict(table)
    return dict(_FALLBACK_SUFFIXES.get(_FAMILY_ALIASES.get(family, family), {}))


def _canonical_of(name: str, table: dict[str, str]) -> str | None:
    # The canonical module whose suffix matches with the longest suffix: "attention.output.dense"
    # ends with both "output.dense" and "attention.output.dense" and is the latter.
    best, best_len = None, -1
    for canon, suffix in table.items():
        if (name == suffix or name.endswith("." + suffix)) and len(suffix) > best_len:
            best, best_len = canon, len(suffix)
    return best


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
    table = family_suffixes(model_family(model))
    tokens = _split(targets) if targets is not None else (list(table) if table else ["all-linear"])
    if not tokens:
        raise TargetError("targets is empty; pass None, 'all-linear' or module names such as 'q_proj,v_proj'")
    chosen: set[str] = set()
    for tok in tokens:
        if tok == "all-linear":
            hits = [n for n, _ in linear if _IN_BLOCK.search(n)]
        elif tok in table:
            hits = [n for n, _ in linear if _canonical_of(n, table) == tok]
        else:
            hits = [n for n, _ in linear if n == tok or n.endswith("." + tok)]
        if not hits:
            canon = ", ".join(table) if table else "(no canonical names for this model family)"
            examples = ", ".join(n for n, _ in linear[:4]) or "(the model has no Linear/Conv1D modules)"
            raise TargetError(
                f"target {tok!r} matches no Linear/Conv1D module of this {model_family(model) or 'model'}. "
                f"Use 'all-linear', a canonical name ({canon}), or a module-name suffix such as: {examples}"
            )
        chosen.update(hits)
    return [n for n, _ in linear if n in chosen]
