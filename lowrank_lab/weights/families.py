"""One description per architecture family: names, roles, fused layouts, shapes, parameter count.

Everything this toolkit knows about a model family lives in one :class:`Family` record of
:data:`FAMILIES`: the ``config.json`` ``model_type`` values it covers, the names of its target
matrices inside a repeated block (as the Hugging Face checkpoints of ``transformers`` 5 store them,
plus older layouts), the role of each matrix, how fused projections are laid out, the ``(out, in)``
shape of each from the architecture numbers, and what the rest of the model holds so that the
parameter count follows in closed form. Adding a family means adding one record here.

The description is data plus small functions of a spec (shapes, ``config.json`` read and written,
parameter count) named in each record; it imports neither ``torch`` nor ``transformers`` and knows
nothing of files (the weight sources read headers and call :func:`match` on each tensor name;
``adapters.inject`` calls :func:`match` and :func:`select` on module names).

Roles (:data:`ROLES`): attention ``q k v o``, fused ``qkv``; MLP ``gate up down``, fused
``gate_up``; MoE ``router`` and the experts' ``expert_gate expert_up expert_down expert_gate_up``;
cross-attention ``cross_q cross_k cross_v cross_o`` (T5's decoder); ``generic`` for a weight of a
model type without a table.

Where the names come from: the module names of the ``transformers`` 5 modelling files
(``modeling_llama.py``, ``modeling_phi3.py``, ``modeling_mixtral.py``, ...), which are also the
names PEFT's ``target_modules`` matches (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import UnsupportedArchitectureError

#: Every role a target matrix can have.
ROLES = (
    "q",
    "k",
    "v",
    "o",
    "qkv",
    "gate",
    "up",
    "down",
    "gate_up",
    "router",
    "expert_gate",
    "expert_up",
    "expert_down",
    "expert_gate_up",
    "cross_q",
    "cross_k",
    "cross_v",
    "cross_o",
    "generic",
)

Shape = Callable[[Any], tuple[int, int]]


# -- shapes, as functions of a ModelSpec (only its numeric fields are read) ------------------------
def _q(s) -> int:
    return s.num_heads * s.attention_head_dim


def _kv(s) -> int:
    return s.num_kv_heads * s.attention_head_dim


Q: Shape = lambda s: (_q(s), s.hidden_size)  # noqa: E731
KV: Shape = lambda s: (_kv(s), s.hidden_size)  # noqa: E731
O: Shape = lambda s: (s.hidden_size, _q(s))  # noqa: E731
QKV: Shape = lambda s: (_q(s) + 2 * _kv(s), s.hidden_size)  # noqa: E731
UP: Shape = lambda s: (s.intermediate_size, s.hidden_size)  # noqa: E731
DOWN: Shape = lambda s: (s.hidden_size, s.intermediate_size)  # noqa: E731
GATE_UP: Shape = lambda s: (2 * s.intermediate_size, s.hidden_size)  # noqa: E731
ROUTER: Shape = lambda s: (s.num_experts, s.hidden_size)  # noqa: E731
E_UP: Shape = lambda s: (s.expert_intermediate_size, s.hidden_size)  # noqa: E731
E_DOWN: Shape = lambda s: (s.hidden_size, s.expert_intermediate_size)  # noqa: E731
E_GATE_UP: Shape = lambda s: (2 * s.expert_intermediate_size, s.hidden_size)  # noqa: E731
S_UP: Shape = lambda s: (s.shared_expert_intermediate_size, s.hidden_size)  # noqa: E731
S_DOWN: Shape = lambda s: (s.hidden_size, s.shared_expert_intermediate_size)  # noqa: E731
S_GATE: Shape = lambda s: (1, s.hidden_size)  # noqa: E731
SQUARE: Shape = lambda s: (s.hidden_size, s.hidden_size)  # noqa: E731


@dataclass(frozen=True)
class Part:
    """One projection inside a fused matrix: its name, role and number of rows (from a spec)."""

    name: str
    role: str
    rows: Callable[[Any], int]


QKV_PARTS = (Part("q", "q", _q), Part("k", "k", _kv), Part("v", "v", _kv))
GATE_UP_PARTS = (
    Part("gate", "gate", lambda s: s.intermediate_size),
    Part("up", "up", lambda s: s.intermediate_size),
)
E_GATE_UP_PARTS = (
    Part("gate", "expert_gate", lambda s: s.expert_intermediate_size),
    Part("up", "expert_up", lambda s: s.expert_intermediate_size),
)


@dataclass(frozen=True)
class Module:
    """One target matrix of a block.

    Attributes
    ----------
    name : str
        Canonical name, unique in the family (``q_proj``, ``attention-output``, ``enc.q``).
    path : str
        Hugging Face name after the block index, without ``.weight`` (``self_attn.q_proj``); an
        expert written one Linear per expert has ``{e}`` where the expert index goes
        (``block_sparse_moe.experts.{e}.w1``).
    role : str
        One of :data:`ROLES`.
    shape : callable
        ``spec -> (out, in)`` of one matrix (one expert's, for experts).
    bias : str
        ``"always"``, ``"never"``, or the spec flag that says (``"attention_bias"``, ``"mlp_bias"``);
        only the parameter count reads it.
    parts : tuple of Part
        A fused matrix: its row blocks (``--split-fused`` analyses each).
    layout : str
        How the parts lie in the rows: ``"blocks"`` (one after the other: Phi-3, GPT-2, Falcon with
        multi-query attention), ``"heads"`` (GPT-NeoX: per head, its q, k, v rows), ``"groups"``
        (per KV group, its query heads then one k and one v), ``"falcon"`` (``"groups"`` in Falcon's
        new decoder architecture, ``"blocks"`` otherwise).
    experts : str
        ``""`` (a dense matrix), ``"stacked"`` (one 3-D tensor ``(experts, out, in)``, the
        ``transformers`` 5 layout) or ``"linear"`` (one Linear per expert, ``{e}`` in ``path``).
    transposed : bool
        Stored ``(in, out)`` (GPT-2's ``Conv1D``); sources hand it out transposed.
    stack : str
        For encoder-decoder models: the stack (``"encoder"``, ``"decoder"``) the block is in.
    native : str
        llama2.c's own name of the matrix (``attention.wq``), for its ``.bin`` files.
    """

    name: str
    path: str
    role: str
    shape: Shape
    bias: str = "never"
    parts: tuple[Part, ...] = ()
    layout: str = "blocks"
    experts: str = ""
    transposed: bool = False
    stack: str = ""
    native: str = ""

    @property
    def fused(self) -> bool:
        return bool(self.parts)

    def has_bias(self, spec) -> bool:
        if self.bias in ("always", "never"):
            return self.bias == "always"
        return bool(getattr(spec, self.bias))

    def part_rows(self, spec) -> list[tuple[Part, list[int] | slice]]:
        """Each part with the rows of the fused ``(out, in)`` matrix it owns (a slice when contiguous)."""
        sizes = [p.rows(spec) for p in self.parts]
        layout = self.layout
        if layout == "falcon":  # FalconAttention._split_heads: grouped in the new architecture only
            layout = "groups" if spec.new_decoder_architecture else "blocks"
        if layout == "blocks":
            out, start = [], 0
            for p, n in zip(self.parts, sizes, strict=True):
                out.append((p, slice(start, start + n)))
                start += n
            return out
        hd = spec.attention_head_dim
        if layout == "heads":  # GPT-NeoX: view (heads, 3, head_dim)
            rows: dict[str, list[int]] = {p.name: [] for p in self.parts}
            for h in range(spec.num_heads):
                for j, p in enumerate(self.parts):
                    base = (3 * h + j) * hd
                    rows[p.name].extend(range(base, base + hd))
            return [(p, rows[p.name]) for p in self.parts]
        if layout == "groups":  # Falcon new arch: (kv, q_per_kv + 2, head_dim)
            per = spec.num_heads // spec.num_kv_heads
            rows = {"q": [], "k": [], "v": []}
            for g in range(spec.num_kv_heads):
                base = g * (per + 2) * hd
                rows["q"].extend(range(base, base + per * hd))
                rows["k"].extend(range(base + per * hd, base + (per + 1) * hd))
                rows["v"].extend(range(base + (per + 1) * hd, base + (per + 2) * hd))
            return [(p, rows[p.name]) for p in self.parts]
        raise ValueError(f"unknown fused layout {self.layout!r} of {self.name}")


def _m(name, path, role, shape, **kw) -> Module:
    return Module(name=name, path=path, role=role, shape=shape, **kw)


@dataclass(frozen=True)
class Family:
    """Everything known about one architecture family.

    Attributes
    ----------
    name : str
        Key of :data:`FAMILIES` (``"llama"``).
    model_types : tuple of str
        ``config.json`` ``model_type`` values read as this family; the first is written back.
    modules : tuple of Module
        Target matrices of one block in the order they run (``transformers`` 5 layout).
    alt_modules : tuple of tuple of Module
        Other layouts of the same family seen in older checkpoints (one Linear per expert);
        discovery takes whichever layout the checkpoint's tensor names match best.
    blocks : tuple of str
        Names of the block lists (``layers``, ``h``, ``block``), followed by the block index.
    prefix : str
        The block list's full name in a checkpoint saved from the usual head class (names synthetic
        tensors and the tensor a missing-weight error expects); ``{stack}`` for T5's two stacks.
        Real checkpoints may put any prefix before the block list (``bert.``, none for ``AutoModel``).
    kind : str
        ``"decoder"`` (counted and fine-tuned as a causal LM), ``"encoder"`` (``AutoModel``) or
        ``"seq2seq"`` (T5: ``AutoModelForSeq2SeqLM``).
    norm : str
        ``"rms"`` (a weight vector per norm) or ``"layer"`` (weight and bias).
    norms_per_block : int or callable
        Normalisation layers in one block (Gemma-2: 4; Falcon's depend on its layout).
    qk_norm : bool
        Per-head RMSNorm of queries and keys (Qwen3, Gemma-3): ``2 * head_dim`` weights a block.
    tied_default : bool
        ``tie_word_embeddings`` when ``config.json`` does not say (the config class's default).
    norm_eps_key, norm_eps_default
        Where ``config.json`` keeps the normalisation epsilon and the config class's default.
    intermediate_key : str
        Where ``config.json`` keeps the MLP width (Falcon ``ffn_hidden_size``, OPT ``ffn_dim``;
        GPT-2 and T5 are read by their own branches of ``spec_from_hf_config``).
    arch : str
        ``architectures[0]`` written into a config (what ``from_pretrained`` instantiates).
    read : tuple of callables
        ``config.json`` → :class:`~lowrank_lab.weights.registry.ModelSpec` numbers, applied in
        order (``(config, family, where, numbers so far) -> dict``); default Llama's names.
    write : tuple of callables
        The way back, ``(spec, family, layers, decoder layers) -> dict`` of ``config.json`` keys.
    count : callable
        ``(spec, family) -> int``, the parameter count in closed form; default a causal LM.
    notes : str
        Where the table comes from.
    """

    name: str
    model_types: tuple[str, ...]
    modules: tuple[Module, ...]
    alt_modules: tuple[tuple[Module, ...], ...] = ()
    blocks: tuple[str, ...] = ("layers",)
    prefix: str = "model.layers"
    kind: str = "decoder"
    norm: str = "rms"
    norms_per_block: int | Callable[[Any], int] = 2
    qk_norm: bool = False
    tied_default: bool = False
    norm_eps_key: str = "rms_norm_eps"
    norm_eps_default: float = 1e-6
    intermediate_key: str = "intermediate_size"
    arch: str = ""
    read: tuple[Callable, ...] | None = None
    write: tuple[Callable, ...] | None = None
    count: Callable | None = None
    notes: str = ""

    @property
    def readers(self) -> tuple[Callable, ...]:
        return (_read_decoder,) if self.read is None else self.read

    @property
    def writers(self) -> tuple[Callable, ...]:
        return (_write_decoder,) if self.write is None else self.write

    @property
    def counter(self) -> Callable:
        return _count_decoder if self.count is None else self.count

    @property
    def module_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modules)

    def module(self, name: str) -> Module:
        for layout in (self.modules, *self.alt_modules):
            for m in layout:
                if m.name == name:
                    return m
        raise KeyError(f"{self.name} has no module {name!r}; its modules: {', '.join(self.module_names)}")

    @property
    def stacks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.stack for m in self.modules if m.stack))

    def block_prefix(self, stack: str = "") -> str:
        """Where the blocks sit in a checkpoint saved from the usual head class (``model.layers``)."""
        return self.prefix.format(stack=stack)


# -- parameter count --------------------------------------------------------------------------------
def target_parameters(spec, module: Module) -> int:
    """Weight entries of one module in one block (all experts of an expert module)."""
    out, inp = module.shape(spec)
    return out * inp * (spec.num_experts if module.experts else 1)


def _bias_parameters(spec, module: Module) -> int:
    if not module.has_bias(spec):
        return 0
    return module.shape(spec)[0] * (spec.num_experts if module.experts else 1)


def block_parameters(spec, family: Family, stack: str = "", norms: int | None = None) -> int:
    """Parameters of one block: target weights and biases, norms, q/k norms."""
    mods = [m for m in family.modules if m.stack == stack]
    total = sum(target_parameters(spec, m) + _bias_parameters(spec, m) for m in mods)
    if norms is None:
        norms = family.norms_per_block(spec) if callable(family.norms_per_block) else family.norms_per_block
    total += norms * spec.hidden_size * (2 if family.norm == "layer" else 1)
    if family.qk_norm:
        total += 2 * spec.attention_head_dim
    return total


def _falcon_norms(spec) -> int:
    # FalconDecoderLayer: ln_attn and ln_mlp in the new architecture; one input_layernorm when
    # attention and MLP run in parallel (Falcon-7B); else input and post-attention norms.
    return 2 if spec.new_decoder_architecture or not spec.parallel_attn else 1


def _count_decoder(spec, family: Family) -> int:
    """Causal LM: embeddings (and learned positions: OPT), blocks, final norm, untied head."""
    h, V = spec.hidden_size, spec.vocab_size
    final_norm = h * (2 if family.norm == "layer" else 1)
    head = 0 if spec.tied_embeddings else V * h
    return (
        V * h
        + spec.learned_positions * h
        + spec.num_layers * block_parameters(spec, family)
        + final_norm
        + head
    )


def _count_encoder(spec, family: Family) -> int:
    """``AutoModel`` of BERT/RoBERTa/DeBERTa: embeddings with their LayerNorm, blocks, DeBERTa's
    relative-position embeddings and their LayerNorm, BERT's pooler."""
    h = spec.hidden_size
    embeddings = (spec.vocab_size + spec.learned_positions + spec.type_vocab_size) * h + 2 * h
    total = embeddings + spec.num_layers * block_parameters(spec, family)
    if spec.relative_positions:
        total += spec.relative_positions * h + 2 * h
    if spec.pooler:
        total += h * h + h
    return total


def _count_gpt2(spec, family: Family) -> int:
    """``GPT2Model``: token and learned position embeddings, blocks, final LayerNorm (the head is tied)."""
    h = spec.hidden_size
    return (
        (spec.vocab_size + spec.learned_positions) * h
        + spec.num_layers * block_parameters(spec, family)
        + 2 * h
    )


def _count_t5(spec, family: Family) -> int:
    """``T5ForConditionalGeneration``: shared embedding, encoder blocks (2 norms each), decoder blocks
    (3 norms), a relative-position bias in the first block of each stack, two final norms."""
    h, V = spec.hidden_size, spec.vocab_size
    encoder = spec.num_layers * block_parameters(spec, family, "encoder", norms=2)
    decoder = (spec.num_decoder_layers or spec.num_layers) * block_parameters(
        spec, family, "decoder", norms=3
    )
    relative = 2 * spec.relative_attention_buckets * spec.num_heads
    return V * h + encoder + decoder + relative + 2 * h + (0 if spec.tied_embeddings else V * h)


def _count_none(spec, family: Family) -> int:
    raise ValueError(
        f"{spec.name}: its model type has no family table, so its parameter count has no closed form "
        "here; add a Family to lowrank_lab.weights.families"
    )


# -- config.json → spec numbers (each returns ModelSpec keyword arguments) -------------------------
def _first(config, *keys, default=None):
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    return default


def _need(config, where: str, *keys: str) -> int:
    value = _first(config, *keys)
    if value is None:
        raise UnsupportedArchitectureError(
            f"{where}: no {' or '.join(keys)}; cannot tell the shapes of this model"
        )
    return int(value)


def _unsupported(where: str, family: Family, what: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(f"{where}: {what} is not described by the {family.name} table")


def _read_decoder(c, fam: Family, where: str, numbers: dict) -> dict:
    """Llama's ``config.json`` names, with the family's defaults (``LlamaConfig``, ``Qwen2Config``...)."""
    h, heads = _need(c, where, "hidden_size"), _need(c, where, "num_attention_heads")
    head_dim = c.get("head_dim")
    rope = c.get("rope_parameters") or {}
    return dict(
        hidden_size=h,
        intermediate_size=int(_first(c, fam.intermediate_key, "intermediate_size", default=0) or 4 * h),
        num_layers=_need(c, where, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=int(_first(c, "num_key_value_heads", default=heads)),
        vocab_size=_need(c, where, "vocab_size"),
        tied_embeddings=bool(c.get("tie_word_embeddings", fam.tied_default)),
        max_position_embeddings=int(c.get("max_position_embeddings") or 2048),
        head_dim=None if head_dim in (None, h // heads) else int(head_dim),
        rope_theta=float(c.get("rope_theta", rope.get("rope_theta", 10000.0))),
        norm_eps=float(c.get(fam.norm_eps_key, fam.norm_eps_default)),
    )


def _read_llama_biases(c, fam, where, numbers) -> dict:
    return dict(attention_bias=bool(c.get("attention_bias", False)), mlp_bias=bool(c.get("mlp_bias", False)))


def _read_mixtral(c, fam, where, numbers) -> dict:
    # Mixtral's experts are as wide as its intermediate_size; there is no dense MLP.
    return dict(
        num_experts=_need(c, where, "num_local_experts", "num_experts"),
        expert_intermediate_size=numbers["intermediate_size"],
    )


def _read_qwen_moe(c, fam, where, numbers) -> dict:
    if c.get("mlp_only_layers") or int(c.get("decoder_sparse_step", 1)) != 1:
        raise _unsupported(
            where, fam, "mlp_only_layers / decoder_sparse_step (dense blocks between sparse ones)"
        )
    return dict(
        num_experts=_need(c, where, "num_experts", "num_local_experts"),
        expert_intermediate_size=_need(c, where, "moe_intermediate_size"),
    )


def _read_shared_expert(c, fam, where, numbers) -> dict:
    return dict(shared_expert_intermediate_size=_need(c, where, "shared_expert_intermediate_size"))


def _read_falcon(c, fam, where, numbers) -> dict:
    # FalconConfig: grouped KV heads in the new decoder architecture, else one (multi-query) or all.
    new = bool(c.get("new_decoder_architecture", False))
    if new and c.get("num_ln_in_parallel_attn") not in (None, 2):
        raise _unsupported(where, fam, "num_ln_in_parallel_attn other than 2")
    heads = numbers["num_heads"]
    kv = (
        int(_first(c, "num_kv_heads", default=heads)) if new else (1 if c.get("multi_query", True) else heads)
    )
    return dict(
        num_kv_heads=kv,
        new_decoder_architecture=new,
        parallel_attn=bool(c.get("parallel_attn", True)),
        attention_bias=bool(c.get("bias", False)),
    )


def _read_opt(c, fam, where, numbers) -> dict:
    if int(c.get("word_embed_proj_dim") or numbers["hidden_size"]) != numbers["hidden_size"] or not c.get(
        "do_layer_norm_before", True
    ):
        raise _unsupported(
            where, fam, "word_embed_proj_dim != hidden_size or do_layer_norm_before=false (OPT-350m)"
        )
    return dict(learned_positions=int(c.get("max_position_embeddings", 2048)) + 2)  # OPT's offset of 2


def _read_encoder(c, fam, where, numbers) -> dict:
    """BERT/RoBERTa (``BertConfig`` defaults: 2 token types, a pooler, learned positions)."""
    h, heads = _need(c, where, "hidden_size"), _need(c, where, "num_attention_heads")
    max_pos = int(c.get("max_position_embeddings", 512))
    return dict(
        hidden_size=h,
        intermediate_size=int(c.get("intermediate_size") or 4 * h),
        num_layers=_need(c, where, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=heads,
        vocab_size=_need(c, where, "vocab_size"),
        tied_embeddings=bool(c.get("tie_word_embeddings", True)),
        max_position_embeddings=max_pos,
        learned_positions=max_pos,
        type_vocab_size=int(c.get("type_vocab_size", 2)),
        pooler=True,
        norm_eps=float(c.get(fam.norm_eps_key, fam.norm_eps_default)),
    )


def _read_deberta(c, fam, where, numbers) -> dict:
    """DeBERTa-v2/v3 (``DebertaV2Config``): relative positions, no pooler in ``AutoModel``."""
    max_pos = numbers["max_position_embeddings"]
    relative = 0
    if c.get("relative_attention", False):
        buckets = int(c.get("position_buckets", -1))
        max_rel = int(c.get("max_relative_positions", -1))
        relative = 2 * (buckets if buckets > 0 else (max_rel if max_rel > 0 else max_pos))
    return dict(
        learned_positions=max_pos if c.get("position_biased_input", True) else 0,
        type_vocab_size=int(c.get("type_vocab_size", 0)),
        relative_positions=relative,
        pooler=False,
    )


def _read_gpt2(c, fam, where, numbers) -> dict:
    h = _need(c, where, "n_embd", "hidden_size")
    heads = _need(c, where, "n_head", "num_attention_heads")
    positions = _need(c, where, "n_positions", "max_position_embeddings")
    return dict(
        hidden_size=h,
        intermediate_size=int(c.get("n_inner") or 4 * h),
        num_layers=_need(c, where, "n_layer", "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=heads,
        vocab_size=_need(c, where, "vocab_size"),
        tied_embeddings=True,
        max_position_embeddings=positions,
        learned_positions=positions,
        norm_eps=float(c.get("layer_norm_epsilon", 1e-5)),
    )


def _read_t5(c, fam, where, numbers) -> dict:
    if c.get("feed_forward_proj", "relu") not in ("relu", "gelu"):
        raise _unsupported(
            where, fam, f"feed_forward_proj={c.get('feed_forward_proj')!r} (gated wi_0/wi_1 FFN)"
        )
    heads, layers = _need(c, where, "num_heads"), _need(c, where, "num_layers")
    return dict(
        hidden_size=_need(c, where, "d_model"),
        intermediate_size=_need(c, where, "d_ff"),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=heads,
        vocab_size=_need(c, where, "vocab_size"),
        tied_embeddings=bool(c.get("tie_word_embeddings", True)),
        head_dim=_need(c, where, "d_kv"),
        num_decoder_layers=int(c.get("num_decoder_layers") or layers),
        relative_attention_buckets=int(c.get("relative_attention_num_buckets", 32)),
        norm_eps=float(c.get("layer_norm_epsilon", 1e-6)),
    )


# -- spec numbers → config.json (each returns keys to add; L, Ld: encoder and decoder depth) -------
def _write_decoder(s, fam: Family, L: int, Ld: int) -> dict:
    cfg = {
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_hidden_layers": L,
        "num_attention_heads": s.num_heads,
        "num_key_value_heads": s.num_kv_heads,
        "vocab_size": s.vocab_size,
        "tie_word_embeddings": s.tied_embeddings,
        "max_position_embeddings": s.max_position_embeddings or 2048,
        fam.norm_eps_key: s.norm_eps,
        "rope_theta": s.rope_theta,
    }
    if s.head_dim is not None:
        cfg["head_dim"] = s.head_dim
    return cfg


def _write_llama(s, fam, L, Ld) -> dict:
    return dict(hidden_act="silu", bos_token_id=1, eos_token_id=2)


def _write_llama_biases(s, fam, L, Ld) -> dict:
    return dict(attention_bias=s.attention_bias, mlp_bias=s.mlp_bias)


def _write_llama2c(s, fam, L, Ld) -> dict:
    return dict(model_type="llama", architectures=["LlamaForCausalLM"])  # what it converts to


def _write_mixtral(s, fam, L, Ld) -> dict:
    return dict(num_local_experts=s.num_experts, intermediate_size=s.expert_intermediate_size)


def _write_qwen_moe(s, fam, L, Ld) -> dict:
    return dict(
        num_experts=s.num_experts,
        moe_intermediate_size=s.expert_intermediate_size,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )


def _write_shared_expert(s, fam, L, Ld) -> dict:
    return dict(shared_expert_intermediate_size=s.shared_expert_intermediate_size)


def _write_opt(s, fam, L, Ld) -> dict:
    return dict(
        ffn_dim=s.intermediate_size,
        word_embed_proj_dim=s.hidden_size,
        enable_bias=True,
        do_layer_norm_before=True,
        max_position_embeddings=s.learned_positions - 2,
    )


def _write_falcon(s, fam, L, Ld) -> dict:
    return dict(
        ffn_hidden_size=s.intermediate_size,
        num_kv_heads=s.num_kv_heads,
        new_decoder_architecture=s.new_decoder_architecture,
        multi_query=not s.new_decoder_architecture and s.num_kv_heads == 1,
        parallel_attn=s.parallel_attn,
        bias=s.attention_bias,
    )


def _write_encoder(s, fam, L, Ld) -> dict:
    return {
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_hidden_layers": L,
        "num_attention_heads": s.num_heads,
        "vocab_size": s.vocab_size,
        "max_position_embeddings": s.max_position_embeddings or 512,
        "type_vocab_size": s.type_vocab_size,
        "hidden_act": "gelu",
        "layer_norm_eps": s.norm_eps,
    }


def _write_roberta(s, fam, L, Ld) -> dict:
    return dict(pad_token_id=1, bos_token_id=0, eos_token_id=2)


def _write_deberta(s, fam, L, Ld) -> dict:
    return dict(
        relative_attention=s.relative_positions > 0,
        position_buckets=s.relative_positions // 2 if s.relative_positions else -1,
        max_relative_positions=-1,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=s.learned_positions > 0,
    )


def _write_gpt2(s, fam, L, Ld) -> dict:
    return {
        "n_embd": s.hidden_size,
        "n_inner": s.intermediate_size,
        "n_layer": L,
        "n_head": s.num_heads,
        "vocab_size": s.vocab_size,
        "n_positions": s.learned_positions or s.max_position_embeddings or 1024,
    }


def _write_t5(s, fam, L, Ld) -> dict:
    return {
        "d_model": s.hidden_size,
        "d_ff": s.intermediate_size,
        "d_kv": s.attention_head_dim,
        "num_layers": L,
        "num_decoder_layers": Ld,
        "num_heads": s.num_heads,
        "vocab_size": s.vocab_size,
        "relative_attention_num_buckets": s.relative_attention_buckets,
        "tie_word_embeddings": s.tied_embeddings,
        "feed_forward_proj": "relu",
        "layer_norm_epsilon": s.norm_eps,
    }


# -- the tables -------------------------------------------------------------------------------------
def _llama_like(o="o_proj", attn="self_attn", mlp="mlp", qkv_bias="attention_bias", o_bias="attention_bias"):
    return (
        _m("q_proj", f"{attn}.q_proj", "q", Q, bias=qkv_bias),
        _m("k_proj", f"{attn}.k_proj", "k", KV, bias=qkv_bias),
        _m("v_proj", f"{attn}.v_proj", "v", KV, bias=qkv_bias),
        _m(o, f"{attn}.{o}", "o", O, bias=o_bias),
        _m("gate_proj", f"{mlp}.gate_proj", "gate", UP, bias="mlp_bias"),
        _m("up_proj", f"{mlp}.up_proj", "up", UP, bias="mlp_bias"),
        _m("down_proj", f"{mlp}.down_proj", "down", DOWN, bias="mlp_bias"),
    )


_LLAMA = _llama_like()
_QWEN2 = _llama_like(qkv_bias="always", o_bias="never")
_ATTN = _LLAMA[:4]
_QWEN2_ATTN = _QWEN2[:4]


def _stacked_experts() -> tuple[Module, ...]:
    return (
        _m("router", "mlp.gate", "router", ROUTER),
        _m(
            "experts.gate_up_proj",
            "mlp.experts.gate_up_proj",
            "expert_gate_up",
            E_GATE_UP,
            parts=E_GATE_UP_PARTS,
            experts="stacked",
        ),
        _m("experts.down_proj", "mlp.experts.down_proj", "expert_down", E_DOWN, experts="stacked"),
    )


def _linear_experts(moe="mlp", router="gate", w=("gate_proj", "up_proj", "down_proj")) -> tuple[Module, ...]:
    return (
        _m("router", f"{moe}.{router}", "router", ROUTER),
        _m(f"experts.{w[0]}", f"{moe}.experts.{{e}}.{w[0]}", "expert_gate", E_UP, experts="linear"),
        _m(f"experts.{w[1]}", f"{moe}.experts.{{e}}.{w[1]}", "expert_up", E_UP, experts="linear"),
        _m(f"experts.{w[2]}", f"{moe}.experts.{{e}}.{w[2]}", "expert_down", E_DOWN, experts="linear"),
    )


_SHARED_EXPERT = (
    _m("shared_expert.gate_proj", "mlp.shared_expert.gate_proj", "gate", S_UP),
    _m("shared_expert.up_proj", "mlp.shared_expert.up_proj", "up", S_UP),
    _m("shared_expert.down_proj", "mlp.shared_expert.down_proj", "down", S_DOWN),
    _m("shared_expert_gate", "mlp.shared_expert_gate", "router", S_GATE),
)

_ENCODER = (
    _m("query", "attention.self.query", "q", SQUARE, bias="always"),
    _m("key", "attention.self.key", "k", SQUARE, bias="always"),
    _m("value", "attention.self.value", "v", SQUARE, bias="always"),
    _m("attention-output", "attention.output.dense", "o", SQUARE, bias="always"),
    _m("intermediate", "intermediate.dense", "up", UP, bias="always"),
    _m("output", "output.dense", "down", DOWN, bias="always"),
)
_DEBERTA = (
    _m("query", "attention.self.query_proj", "q", SQUARE, bias="always"),
    _m("key", "attention.self.key_proj", "k", SQUARE, bias="always"),
    _m("value", "attention.self.value_proj", "v", SQUARE, bias="always"),
    *_ENCODER[3:],
)
_ENCODER_KW = dict(
    read=(_read_encoder,),
    write=(_write_encoder,),
    count=_count_encoder,
    blocks=("layer",),
    prefix="encoder.layer",
    kind="encoder",
    norm="layer",
    tied_default=True,
    norm_eps_key="layer_norm_eps",
    norm_eps_default=1e-12,
)

# llama2.c's checkpoint has no Hugging Face names: ``path`` is the module of the LlamaForCausalLM
# it converts to (w1 = gate, w2 = down, w3 = up), ``native`` the name in llama2.c's model.py.
_LLAMA2C = tuple(
    _m(n, p, role, shape, native=native)
    for n, p, role, shape, native in [
        ("wq", "self_attn.q_proj", "q", Q, "attention.wq"),
        ("wk", "self_attn.k_proj", "k", KV, "attention.wk"),
        ("wv", "self_attn.v_proj", "v", KV, "attention.wv"),
        ("wo", "self_attn.o_proj", "o", O, "attention.wo"),
        ("w1", "mlp.gate_proj", "gate", UP, "feed_forward.w1"),
        ("w2", "mlp.down_proj", "down", DOWN, "feed_forward.w2"),
        ("w3", "mlp.up_proj", "up", UP, "feed_forward.w3"),
    ]
)


def _t5_modules() -> tuple[Module, ...]:
    def attn(stack, prefix, layer, kind, roles):
        return [
            _m(f"{prefix}.{x}", f"layer.{layer}.{kind}.{x}", r, SQUARE_T5[x], stack=stack)
            for x, r in zip("qkvo", roles, strict=True)
        ]

    def ffn(stack, prefix, layer):
        return [
            _m(f"{prefix}.wi", f"layer.{layer}.DenseReluDense.wi", "up", UP, stack=stack),
            _m(f"{prefix}.wo", f"layer.{layer}.DenseReluDense.wo", "down", DOWN, stack=stack),
        ]

    return (
        *attn("encoder", "enc", 0, "SelfAttention", "qkvo"),
        *ffn("encoder", "enc", 1),
        *attn("decoder", "dec", 0, "SelfAttention", "qkvo"),
        *attn("decoder", "dec.cross", 1, "EncDecAttention", ("cross_q", "cross_k", "cross_v", "cross_o")),
        *ffn("decoder", "dec", 2),
    )


SQUARE_T5 = {"q": Q, "k": Q, "v": Q, "o": O}  # T5: inner = num_heads * d_kv for q, k and v alike


_MISTRAL_NOTE = "modeling_mistral.py: Llama's names and shapes, sliding-window attention"

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            name="llama",
            read=(_read_decoder, _read_llama_biases),
            write=(_write_decoder, _write_llama, _write_llama_biases),
            model_types=("llama",),
            modules=_LLAMA,
            arch="LlamaForCausalLM",
            norm_eps_default=1e-6,
            notes="Llama-2 and Llama-3 (grouped-query attention); modeling_llama.py",
        ),
        Family(
            name="mistral",
            write=(_write_decoder, _write_llama),
            model_types=("mistral",),
            modules=_LLAMA,
            arch="MistralForCausalLM",
            notes=_MISTRAL_NOTE,
        ),
        Family(
            name="mixtral",
            read=(_read_decoder, _read_mixtral),
            write=(_write_decoder, _write_mixtral),
            model_types=("mixtral",),
            modules=(*_ATTN, *_stacked_experts()),
            alt_modules=((*_ATTN, *_linear_experts("block_sparse_moe", "gate", ("w1", "w3", "w2"))),),
            arch="MixtralForCausalLM",
            norm_eps_default=1e-5,
            notes="Mixtral sparse MoE; transformers 5 stacks experts as (experts, out, in), "
            "transformers 4 wrote block_sparse_moe.experts.<e>.w1/w2/w3",
        ),
        Family(
            name="qwen2",
            model_types=("qwen2",),
            modules=_QWEN2,
            arch="Qwen2ForCausalLM",
            notes="Qwen2 / Qwen2.5: Llama's names, biases on q, k, v",
        ),
        Family(
            name="qwen2_moe",
            read=(_read_decoder, _read_qwen_moe, _read_shared_expert),
            write=(_write_decoder, _write_qwen_moe, _write_shared_expert),
            model_types=("qwen2_moe",),
            modules=(*_QWEN2_ATTN, *_stacked_experts(), *_SHARED_EXPERT),
            alt_modules=((*_QWEN2_ATTN, *_linear_experts(), *_SHARED_EXPERT),),
            arch="Qwen2MoeForCausalLM",
            notes="Qwen1.5-MoE / Qwen2-MoE: routed experts plus one shared expert",
        ),
        Family(
            name="qwen3",
            model_types=("qwen3",),
            modules=_LLAMA,
            qk_norm=True,
            arch="Qwen3ForCausalLM",
            notes="Qwen3: Llama's names, q/k RMSNorm, explicit head_dim",
        ),
        Family(
            name="qwen3_moe",
            read=(_read_decoder, _read_qwen_moe),
            write=(_write_decoder, _write_qwen_moe),
            model_types=("qwen3_moe",),
            modules=(*_ATTN, *_stacked_experts()),
            alt_modules=((*_ATTN, *_linear_experts()),),
            qk_norm=True,
            arch="Qwen3MoeForCausalLM",
            notes="Qwen3-MoE: routed experts, no shared expert",
        ),
        Family(
            name="gemma",
            model_types=("gemma",),
            modules=_LLAMA,
            tied_default=True,
            arch="GemmaForCausalLM",
            notes="Gemma: Llama's names, tied embeddings, head_dim 256",
        ),
        Family(
            name="gemma2",
            model_types=("gemma2",),
            modules=_LLAMA,
            tied_default=True,
            norms_per_block=4,
            arch="Gemma2ForCausalLM",
            notes="Gemma-2: four RMSNorms a block",
        ),
        Family(
            name="gemma3",
            model_types=("gemma3_text",),
            modules=_LLAMA,
            tied_default=True,
            norms_per_block=4,
            qk_norm=True,
            arch="Gemma3ForCausalLM",
            notes="Gemma-3 text model: four norms, q/k norms",
        ),
        Family(
            name="phi3",
            model_types=("phi3",),
            modules=(
                _m("qkv_proj", "self_attn.qkv_proj", "qkv", QKV, parts=QKV_PARTS),
                _m("o_proj", "self_attn.o_proj", "o", O),
                _m("gate_up_proj", "mlp.gate_up_proj", "gate_up", GATE_UP, parts=GATE_UP_PARTS),
                _m("down_proj", "mlp.down_proj", "down", DOWN),
            ),
            arch="Phi3ForCausalLM",
            norm_eps_default=1e-5,
            notes="Phi-3: fused qkv_proj [q; k; v] and gate_up_proj [gate; up] (modeling_phi3.py)",
        ),
        Family(
            name="gpt_neox",
            prefix="gpt_neox.layers",
            model_types=("gpt_neox",),
            modules=(
                _m(
                    "query_key_value",
                    "attention.query_key_value",
                    "qkv",
                    QKV,
                    bias="always",
                    parts=QKV_PARTS,
                    layout="heads",
                ),
                _m("dense", "attention.dense", "o", O, bias="always"),
                _m("dense_h_to_4h", "mlp.dense_h_to_4h", "up", UP, bias="always"),
                _m("dense_4h_to_h", "mlp.dense_4h_to_h", "down", DOWN, bias="always"),
            ),
            norm="layer",
            norm_eps_key="layer_norm_eps",
            norm_eps_default=1e-5,
            arch="GPTNeoXForCausalLM",
            notes="GPT-NeoX / Pythia: query_key_value fused per head as (heads, 3, head_dim)",
        ),
        Family(
            name="falcon",
            read=(_read_decoder, _read_falcon),
            write=(_write_decoder, _write_falcon),
            prefix="transformer.h",
            model_types=("falcon",),
            modules=(
                _m(
                    "query_key_value",
                    "self_attention.query_key_value",
                    "qkv",
                    QKV,
                    bias="attention_bias",
                    parts=QKV_PARTS,
                    layout="falcon",
                ),
                _m("dense", "self_attention.dense", "o", O, bias="attention_bias"),
                _m("dense_h_to_4h", "mlp.dense_h_to_4h", "up", UP, bias="attention_bias"),
                _m("dense_4h_to_h", "mlp.dense_4h_to_h", "down", DOWN, bias="attention_bias"),
            ),
            blocks=("h",),
            norm="layer",
            norms_per_block=_falcon_norms,
            tied_default=True,
            norm_eps_key="layer_norm_epsilon",
            norm_eps_default=1e-5,
            arch="FalconForCausalLM",
            intermediate_key="ffn_hidden_size",
            notes="Falcon: fused query_key_value; [q; k; v] with multi-query attention, per KV group "
            "(queries, k, v) in the new decoder architecture (Falcon-40B/180B)",
        ),
        Family(
            name="opt",
            read=(_read_decoder, _read_opt),
            write=(_write_decoder, _write_opt),
            prefix="model.decoder.layers",
            model_types=("opt",),
            modules=(
                _m("q_proj", "self_attn.q_proj", "q", SQUARE, bias="always"),
                _m("k_proj", "self_attn.k_proj", "k", SQUARE, bias="always"),
                _m("v_proj", "self_attn.v_proj", "v", SQUARE, bias="always"),
                _m("out_proj", "self_attn.out_proj", "o", SQUARE, bias="always"),
                _m("fc1", "fc1", "up", UP, bias="always"),
                _m("fc2", "fc2", "down", DOWN, bias="always"),
            ),
            norm="layer",
            tied_default=True,
            norm_eps_key="layer_norm_eps",
            norm_eps_default=1e-5,
            arch="OPTForCausalLM",
            intermediate_key="ffn_dim",
            notes="OPT: learned positions (offset 2), biases everywhere",
        ),
        Family(
            name="gpt2",
            read=(_read_gpt2,),
            write=(_write_gpt2,),
            count=_count_gpt2,
            prefix="h",
            model_types=("gpt2",),
            modules=tuple(
                _m(n, n, r, s, bias="always", transposed=True, **kw)
                for n, r, s, kw in [
                    (
                        "attn.c_attn",
                        "qkv",
                        lambda s: (3 * s.hidden_size, s.hidden_size),
                        {"parts": QKV_PARTS},
                    ),
                    ("attn.c_proj", "o", SQUARE, {}),
                    ("mlp.c_fc", "up", UP, {}),
                    ("mlp.c_proj", "down", DOWN, {}),
                ]
            ),
            blocks=("h",),
            norm="layer",
            tied_default=True,
            norm_eps_key="layer_norm_epsilon",
            norm_eps_default=1e-5,
            arch="GPT2LMHeadModel",
            notes="GPT-2: Conv1D weights stored (in, out); c_attn is [q; k; v]",
        ),
        Family(
            name="bert",
            model_types=("bert",),
            modules=_ENCODER,
            **_ENCODER_KW,
            notes="BERT (and all-MiniLM); the last three are all *.dense in HF",
        ),
        Family(
            name="roberta",
            model_types=("roberta", "xlm-roberta"),
            modules=_ENCODER,
            **{**_ENCODER_KW, "write": (_write_encoder, _write_roberta)},
            notes="RoBERTa and XLM-RoBERTa: BERT's names",
        ),
        Family(
            name="deberta",
            model_types=("deberta-v2",),
            modules=_DEBERTA,
            **{
                **_ENCODER_KW,
                "read": (_read_encoder, _read_deberta),
                "write": (_write_encoder, _write_deberta),
                "norm_eps_default": 1e-7,
            },
            notes="DeBERTa-v2/v3: query_proj, key_proj, value_proj",
        ),
        Family(
            name="t5",
            read=(_read_t5,),
            write=(_write_t5,),
            count=_count_t5,
            prefix="{stack}.block",
            model_types=("t5",),
            modules=_t5_modules(),
            blocks=("block",),
            kind="seq2seq",
            norms_per_block=0,
            tied_default=True,
            norm_eps_key="layer_norm_epsilon",
            norm_eps_default=1e-6,
            arch="T5ForConditionalGeneration",
            notes="T5: encoder self-attention and FFN; decoder self-, cross-attention and FFN",
        ),
        # A model type without a table: its modules are found in the checkpoint (role "generic").
        Family(
            name="generic",
            model_types=(),
            modules=(),
            read=(),
            count=_count_none,
            notes="every 2-D weight of the repeated blocks",
        ),
        Family(
            name="llama2c",
            write=(_write_decoder, _write_llama, _write_llama2c),
            prefix="layers",
            model_types=(),
            modules=_LLAMA2C,
            tied_default=True,
            norm_eps_default=1e-5,
            notes="llama2.c (Karpathy's run.c); converts to LlamaForCausalLM",
        ),
    ]
}

#: ``config.json`` ``model_type`` → family name.
MODEL_TYPES: dict[str, str] = {t: f.name for f in FAMILIES.values() for t in f.model_types}

#: Name of the family of a model type without a table: every 2-D block weight, role ``generic``.
GENERIC = "generic"


def generic_family(modules: tuple[Module, ...]) -> Family:
    """The family of a checkpoint without a table, with the modules discovery found in it."""
    return Family(name=GENERIC, model_types=(), modules=modules, notes=FAMILIES[GENERIC].notes)


def get_family(name: str) -> Family:
    """The :class:`Family` called ``name``; ValueError naming the known ones otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


# -- names → modules --------------------------------------------------------------------------------
_BLOCK_RE = re.compile(
    r"^(?P<prefix>(?:.*?\.)?)(?P<blocks>layers|layer|h|block|blocks)\.(?P<i>\d+)\.(?P<rest>.+)$"
)


@dataclass(frozen=True)
class Match:
    """Where a tensor or module name sits: block index, module (None for generic), expert index."""

    layer: int
    module: Module | None
    expert: int | None
    rest: str
    prefix: str


def split_block_name(name: str) -> tuple[str, int, str] | None:
    """``(prefix, block index, rest without .weight)`` of a name inside a block list, else None."""
    m = _BLOCK_RE.match(name)
    if m is None:
        return None
    rest = m.group("rest")
    rest = rest[: -len(".weight")] if rest.endswith(".weight") else rest
    return m.group("prefix"), int(m.group("i")), rest


@dataclass(frozen=True)
class _Index:
    plain: dict[tuple[str, str], Module]
    per_expert: list[tuple[str, re.Pattern, Module]]


_INDEX: dict[tuple[str, int], _Index] = {}


def _index(family: Family, layout: int) -> _Index:
    key = (family.name, layout)
    if key not in _INDEX:
        modules = (family.modules, *family.alt_modules)[layout]
        plain, per_expert = {}, []
        for mod in modules:
            paths = [mod.path] + ([mod.native] if mod.native else [])
            for path in paths:
                if mod.experts == "linear":
                    pattern = re.compile("^" + re.escape(path).replace(r"\{e\}", r"(\d+)") + "$")
                    per_expert.append((mod.stack, pattern, mod))
                else:
                    plain[(mod.stack, path)] = mod
        _INDEX[key] = _Index(plain, per_expert)
    return _INDEX[key]


def match(name: str, family: Family | str, layout: int = 0) -> Match | None:
    """The module of ``family`` (in layout ``layout``) that a tensor or module name belongs to, or None.

    ``match("bert.encoder.layer.3.attention.output.dense.weight", "bert")`` is layer 3,
    ``attention-output``: the whole name after the block index must equal the module's path, so
    BERT's ``output.dense`` never matches ``attention.output.dense``. Biases, norms, embeddings and
    heads give None.
    """
    fam = get_family(family) if isinstance(family, str) else family
    split = split_block_name(name)
    if split is None or _BLOCK_RE.match(name).group("blocks") not in fam.blocks:
        return None
    prefix, layer, rest = split
    stack = ""
    if fam.stacks:
        stack = next((s for s in fam.stacks if prefix.endswith(s + ".") or prefix == s + "."), "")
        if not stack:
            return None
    idx = _index(fam, layout)
    mod = idx.plain.get((stack, rest))
    if mod is not None:
        return Match(layer, mod, None, rest, prefix)
    for s, pattern, mod in idx.per_expert:
        if s == stack and (hit := pattern.match(rest)):
            return Match(layer, mod, int(hit.group(1)), rest, prefix)
    return None


# -- selection: the one target resolver -------------------------------------------------------------
def select(family: Family | str, targets=None, *, modules: tuple[Module, ...] | None = None) -> list[Module]:
    """Modules of ``family`` that ``targets`` chooses, in block order.

    Parameters
    ----------
    targets : None, "all-linear", or names (a comma-separated string or a list)
        ``None``, ``"all"`` or ``"all-linear"`` (PEFT's name for it) choose every module. Each other
        item is a canonical name (``q_proj``), a role (``q``, ``gate_up``, ``expert_down``: every
        module with that role), a Hugging Face path (``attention.self.query``), or a dotted tail that
        belongs to one path only (``c_attn``). LoRA's original choice is ``q_proj,v_proj``
        (Hu et al. 2021).
    modules : tuple of Module, optional
        The layout to choose from (default the family's first).

    Raises
    ------
    ValueError
        Naming the item that matches nothing (or a tail that matches several) and the valid names.
    """
    fam = get_family(family) if isinstance(family, str) else family
    pool = fam.modules if modules is None else modules
    if targets is None:
        return list(pool)
    items = targets.split(",") if isinstance(targets, str) else [str(t) for t in targets]
    items = [t.strip() for t in items if t and t.strip()]
    if not items or items in (["all-linear"], ["all"]):
        return list(pool)
    chosen: set[str] = set()
    for item in items:
        hits = [m.name for m in pool if item in (m.name, m.path, m.native, m.role)]
        if not hits:
            tails = sorted({m.name for m in pool if m.path.endswith("." + item)})
            if len(tails) > 1:
                raise ValueError(
                    f"target module {item!r} for a {fam.name} model: it is ambiguous ({', '.join(tails)}). "
                    f"Valid names: {', '.join(m.name for m in pool)} (or 'all-linear')"
                )
            hits = tails
        if not hits:
            inside = [m.name for m in pool for p in m.parts if p.role == item]
            why = (
                f"in a {fam.name} model {item} is part of the fused {', '.join(inside)}; target that "
                "(--split-fused analyses the parts)"
                if inside
                else "it is not a module of this family"
            )
            names = [m.name for m in pool]
            raise ValueError(
                f"target module {item!r} for a {fam.name} model: {why}. Valid names: {', '.join(names)} "
                f"(or 'all-linear', or a role: {', '.join(dict.fromkeys(m.role for m in pool))}), "
                f"e.g. --targets {names[0]},{names[min(2, len(names) - 1)]}"
            )
        chosen.update(hits)
    return [m for m in pool if m.name in chosen]


def num_parameters(spec, family: Family) -> int:
    """Parameter count of the base model in closed form (see :meth:`ModelSpec.num_parameters`)."""
    return family.counter(spec, family)
