"""llama2.c checkpoints (Karpathy's ``run.c`` format): reader, tokenizer, conversion to Hugging Face.

Format (version 0, "legacy" export of llama2.c's ``export.py``; ../shared/data/MANIFEST.md): a
header of 7 little-endian int32 — dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
seq_len, a negative vocab_size meaning the classifier is *not* tied to the token embedding — then
float32 arrays: token embedding [V, dim]; attention RMSNorm [L, dim]; wq [L, dim, dim];
wk [L, kv, dim]; wv [L, kv, dim]; wo [L, dim, dim]; FFN RMSNorm [L, dim]; w1 [L, hidden, dim];
w2 [L, dim, hidden]; w3 [L, hidden, dim]; final RMSNorm [dim]; freq_cis_real and freq_cis_imag
[seq_len, head_size/2]; the classifier [V, dim] only when untied. Matrices are ``(out, in)``.

llama2.c rotates *interleaved* pairs (2i, 2i+1) of each head; Hugging Face's Llama rotates the
two *halves* (i, i + head_size/2). :func:`permute_rotary` reorders the rows of wq and wk so the
converted model computes the same function — the permutation of ``convert_llama_weights_to_hf``
in ``transformers`` (and of llama2.c's own ``export.py --hf``).
"""

from __future__ import annotations

import heapq
import io
import math
import pickletools
import struct
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointNotFoundError, CorruptCheckpointError, WeightsError
from .families import FAMILIES
from .registry import ModelSpec, hf_module_suffixes
from .source import TargetInfo, WeightMatrix, WeightSelection, WeightSource

_HEADER = struct.Struct("<7i")
_MAGIC_V1 = 0x616B3432  # "ak42": llama2.c export.py --version 1/2 files start with it
_BOS, _EOS = 1, 2


@dataclass(frozen=True)
class Llama2cConfig:
    """The header of a llama2.c checkpoint."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size

    def layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """Arrays in file order with their shapes."""
        L, d, h, kv, V, hs = (
            self.n_layers,
            self.dim,
            self.hidden_dim,
            self.kv_dim,
            self.vocab_size,
            self.head_size,
        )
        arrays = [
            ("tok_embeddings", (V, d)),
            ("attention_norm", (L, d)),
            ("wq", (L, d, d)),
            ("wk", (L, kv, d)),
            ("wv", (L, kv, d)),
            ("wo", (L, d, d)),
            ("ffn_norm", (L, d)),
            ("w1", (L, h, d)),
            ("w2", (L, d, h)),
            ("w3", (L, h, d)),
            ("norm", (d,)),
            ("freq_cis_real", (self.seq_len, hs // 2)),
            ("freq_cis_imag", (self.seq_len, hs // 2)),
        ]
        if not self.shared_classifier:
            arrays.append(("output", (V, d)))
        return arrays

    def file_size(self) -> int:
        return _HEADER.size + 4 * sum(math.prod(shape) for _, shape in self.layout())

    def spec(self, name: str) -> ModelSpec:
        return ModelSpec(
            name=name,
            hub_id=None,
            family="llama2c",
            hidden_size=self.dim,
            intermediate_size=self.hidden_dim,
            num_layers=self.n_layers,
            num_heads=self.n_heads,
            num_kv_heads=self.n_kv_heads,
            vocab_size=self.vocab_size,
            tied_embeddings=self.shared_classifier,
            max_position_embeddings=self.seq_len,
            norm_eps=1e-5,
            notes="llama2.c checkpoint",
        )


def _pytorch_kind(path: Path) -> str | None:
    """``"zip archive"`` or ``"pickle stream"`` when ``path`` is laid out as a ``torch.save`` file, else None.

    A zip archive has its end-of-central-directory record (:func:`zipfile.is_zipfile`); a pickle
    stream opens with the PROTO opcode (0x80, protocol 2-5) followed by valid opcodes. A llama2.c
    header never parses as both: its second byte is the high byte of ``dim``.
    """
    if zipfile.is_zipfile(path):
        return "zip archive"
    with path.open("rb") as f:
        head = f.read(64)
    if len(head) < 3 or head[0] != 0x80 or not 2 <= head[1] <= 5:
        return None
    try:
        ops = pickletools.genops(io.BytesIO(head))
        for _ in range(3):  # PROTO and the two opcodes after it must all be valid
            next(ops)
    except StopIteration:
        return "pickle stream"
    except (ValueError, EOFError, struct.error):
        return None
    return "pickle stream"


def _size_mismatch(path: Path, size: int, config: Llama2cConfig, header: str) -> str:
    """Which numbers disagree: the file's length against the one the header implies."""
    expected = config.file_size()
    diff = size - expected
    floats = (expected - _HEADER.size) // 4
    classifier = 4 * config.vocab_size * config.dim
    if diff == classifier and config.shared_classifier:
        why = (
            f"the extra {diff} bytes are exactly one [vocab_size, dim] classifier, so vocab_size should be "
            f"negative (-{config.vocab_size}, classifier not shared)"
        )
    elif diff == -classifier and not config.shared_classifier:
        why = (
            f"the missing {-diff} bytes are exactly one [vocab_size, dim] classifier, so vocab_size should "
            f"be positive ({config.vocab_size}, classifier shared)"
        )
    elif diff < 0:
        why = f"the file is truncated ({-diff} bytes short); download it again"
    else:
        why = f"the file is {diff} bytes longer than a version-0 export; download it again"
    return (
        f"{path} is {size} bytes, but its header ({header}) needs {expected} bytes "
        f"({_HEADER.size} of header + 4 x {floats} float32 values): {why}"
    )


class Llama2cCheckpoint:
    """A llama2.c ``.bin`` file, read array by array (``seek`` + read; nothing kept in memory).

    Raises
    ------
    CheckpointNotFoundError
        The file does not exist.
    CorruptCheckpointError
        The header is not a llama2.c version-0 header, or the file size disagrees with it
        (truncated download, or a version 1/2 export).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointNotFoundError(f"llama2.c checkpoint {self.path} does not exist")
        size = self.path.stat().st_size
        with self.path.open("rb") as f:
            raw = f.read(_HEADER.size)
        if len(raw) < _HEADER.size:
            raise CorruptCheckpointError(
                f"{self.path} is {size} bytes, too short for a llama2.c header (28 bytes); the file is "
                "truncated"
            )
        if struct.unpack("<I", raw[:4])[0] == _MAGIC_V1:
            raise CorruptCheckpointError(
                f"{self.path} is a llama2.c version-1/2 export (magic 'ak42'); lowrank_lab reads the legacy "
                "version-0 format: re-export with `python export.py out.bin --version 0 --checkpoint ckpt.pt`"
            )
        dim, hidden, layers, heads, kv_heads, vocab, seq_len = _HEADER.unpack(raw)
        header = (
            f"dim={dim}, hidden_dim={hidden}, n_layers={layers}, n_heads={heads}, n_kv_heads={kv_heads}, "
            f"vocab_size={vocab}, seq_len={seq_len}"
        )
        sane = (
            dim > 0
            and hidden > 0
            and layers > 0
            and heads > 0
            and kv_heads > 0
            and seq_len > 0
            and vocab != 0
            and dim % heads == 0
            and heads % kv_heads == 0
            and (dim // heads) % 2 == 0
        )
        config = (
            Llama2cConfig(dim, hidden, layers, heads, kv_heads, abs(vocab), seq_len, vocab > 0)
            if sane
            else None
        )
        # A header whose sizes add up to the file's length is a llama2.c file, whatever its first byte
        # (dim 128, 384, 640, ... starts with 0x80, the first byte of a pickle). Only a file that is not
        # one is told apart by its structure: a zip archive (torch.save) or a pickle stream (legacy).
        if config is None or size != config.file_size():
            kind = _pytorch_kind(self.path)
            if kind is not None:
                raise CorruptCheckpointError(
                    f"{self.path} is a PyTorch checkpoint ({kind}), not a llama2.c .bin; for a Hugging Face "
                    "model pass the directory holding it and its config.json"
                )
        if config is None:
            raise CorruptCheckpointError(
                f"{self.path}: header ({header}) is not a llama2.c checkpoint header"
            )
        self.config = config
        expected = config.file_size()
        if size != expected:
            raise CorruptCheckpointError(_size_mismatch(self.path, size, config, header))
        self._offsets: dict[str, tuple[int, tuple[int, ...]]] = {}
        offset = _HEADER.size
        for name, shape in self.config.layout():
            self._offsets[name] = (offset, shape)
            offset += 4 * math.prod(shape)

    def _read(self, offset: int, count: int) -> torch.Tensor:
        with self.path.open("rb") as f:
            f.seek(offset)
            data = np.fromfile(f, dtype="<f4", count=count)
        if data.size != count:
            raise CorruptCheckpointError(
                f"{self.path}: short read at byte {offset}; the file changed or is truncated"
            )
        return torch.from_numpy(data.astype(np.float32, copy=False))

    def array(self, name: str) -> torch.Tensor:
        """A whole array of the file by its layout name (``"wq"`` is ``[L, dim, dim]``)."""
        if name == "output" and self.config.shared_classifier:
            name = "tok_embeddings"
        offset, shape = self._offsets[name]
        return self._read(offset, math.prod(shape)).reshape(shape)

    def layer_weight(self, module: str, layer: int) -> torch.Tensor:
        """One layer's slice of a per-layer array (``layer_weight("wk", 0)`` is ``(kv, dim)``)."""
        offset, shape = self._offsets[module]
        if not 0 <= layer < shape[0]:
            raise WeightsError(f"{self.path}: layer {layer} out of range 0-{shape[0] - 1}")
        inner = shape[1:]
        count = math.prod(inner)
        return self._read(offset + 4 * layer * count, count).reshape(inner)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight under llama2.c ``model.py`` names (``layers.0.attention.wq.weight``)."""
        c = self.config
        sd = {
            "tok_embeddings.weight": self.array("tok_embeddings"),
            "norm.weight": self.array("norm"),
            "output.weight": self.array("output"),
        }
        native = {m.name: m.native for m in FAMILIES["llama2c"].modules}
        per_layer = {"attention_norm": "attention_norm", "ffn_norm": "ffn_norm", **native}
        for key, prefix in per_layer.items():
            stacked = self.array(key)
            for i in range(c.n_layers):
                sd[f"layers.{i}.{prefix}.weight"] = stacked[i]
        return sd


class Llama2cSource(WeightSource):
    """Target matrices ``wq wk wv wo w1 w2 w3`` of a llama2.c checkpoint, each ``(out, in)``."""

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        spec: ModelSpec | None = None,
        selection: WeightSelection | None = None,
    ) -> None:
        self.checkpoint = Llama2cCheckpoint(path)
        header_spec = self.checkpoint.config.spec(name or (spec.name if spec else Path(path).stem))
        if spec is not None and spec.target_shapes() != header_spec.target_shapes():
            raise WeightsError(
                f"{path}: its header describes dim={header_spec.hidden_size}, "
                f"hidden_dim={header_spec.intermediate_size}, "
                f"n_heads={header_spec.num_heads}, n_kv_heads={header_spec.num_kv_heads}, not the registry's "
                f"{spec.name}; pass the file path alone to read it as its own model"
            )
        super().__init__(
            header_spec.name,
            header_spec,
            origin=str(self.checkpoint.path),
            selection=selection,
        )

    def _list_targets(self) -> list[TargetInfo]:
        return [
            TargetInfo(self.spec.hf_tensor_name(layer, m.name), layer, m.name, m.shape(self.spec), m.role)
            for layer in range(self.spec.num_layers)
            for m in self.family_info.modules
        ]

    def _read(self, info: TargetInfo) -> WeightMatrix:
        return WeightMatrix(info, self.checkpoint.layer_weight(info.module, info.layer), synthetic=False)


# -- tokenizer ---------------------------------------------------------------------------------
class Llama2cTokenizer:
    """The llama2.c tokenizer (``tokenizer.bin`` / ``tok512.bin``): SentencePiece-style BPE.

    File: int32 ``max_token_length``, then per token a float32 merge score, an int32 byte length
    and the bytes. :meth:`encode` follows ``run.c``'s ``encode``: optional BOS (id 1), a dummy
    prefix space, one token per UTF-8 code point (bytes ``<0xXX>`` when the code point is not in
    the vocabulary), then repeatedly merge the adjacent pair whose concatenation is the
    highest-scoring vocabulary entry. :meth:`decode` drops the space that follows BOS and maps
    ``<0xXX>`` tokens back to their byte.
    """

    bos_id = _BOS
    eos_id = _EOS

    def __init__(self, vocab: list[bytes], scores: list[float], max_token_length: int) -> None:
        self.vocab = list(vocab)
        self.scores = list(scores)
        self.max_token_length = int(max_token_length)
        self._lookup = {piece: i for i, piece in enumerate(self.vocab)}
        self._byte_ids = {}
        for b in range(256):
            tid = self._lookup.get(f"<0x{b:02X}>".encode())
            self._byte_ids[b] = tid if tid is not None else b + 3  # run.c's fixed offset
        self._byte_of = {tid: b for b, tid in self._byte_ids.items() if tid < len(self.vocab)}

    @classmethod
    def from_file(cls, path: str | Path, vocab_size: int | None = None) -> Llama2cTokenizer:
        """Read a tokenizer ``.bin``; ``vocab_size`` (from the model header) reads that many tokens."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointNotFoundError(f"llama2.c tokenizer {path} does not exist")
        data = path.read_bytes()
        try:
            (max_len,) = struct.unpack_from("<i", data, 0)
            pos = 4
            vocab, scores = [], []
            while pos < len(data) and (vocab_size is None or len(vocab) < vocab_size):
                score, n = struct.unpack_from("<fi", data, pos)
                pos += 8
                if n < 0 or pos + n > len(data):
                    raise struct.error(f"token {len(vocab)} claims {n} bytes")
                vocab.append(data[pos : pos + n])
                scores.append(score)
                pos += n
        except struct.error as exc:
            raise CorruptCheckpointError(
                f"{path} is not a llama2.c tokenizer file ({exc}); it is truncated or corrupt"
            ) from exc
        if vocab_size is not None and len(vocab) != vocab_size:
            raise CorruptCheckpointError(f"{path} holds {len(vocab)} tokens, the model needs {vocab_size}")
        return cls(vocab, scores, max_len)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, *, bos: bool = True, eos: bool = False) -> list[int]:
        tokens = [self.bos_id] if bos else []
        tokens += self._merge(self._pieces(text))
        if eos:
            tokens.append(self.eos_id)
        return tokens

    def _pieces(self, text: str) -> list[int]:
        """The tokens run.c's ``encode`` merges: the dummy-prefix space (when the vocabulary has one
        and the text is not empty), then one token per UTF-8 code point, or its byte tokens when the
        code point is not in the vocabulary."""
        tokens: list[int] = []
        if text and (dummy := self._lookup.get(b" ")) is not None:
            tokens.append(dummy)
        for ch in text:
            piece = ch.encode("utf-8")
            tid = self._lookup.get(piece)
            if tid is not None:
                tokens.append(tid)
            else:
                tokens.extend(self._byte_ids[b] for b in piece)
        return tokens

    def _merge(self, body: list[int]) -> list[int]:
        """run.c's greedy BPE: merge the adjacent pair whose concatenation is the best-scoring
        vocabulary entry (the leftmost of equal scores; none scoring -1e10 or less) until no pair
        merges. run.c rescans the whole sequence for every merge, O(n²) in the text's length; here
        the candidate pairs wait in a heap ordered by (-score, position) over a linked list of the
        tokens, O(n log n), and a popped pair whose tokens have changed since is passed over. The
        merges, and so the tokens, are the same (tests: against the rescanning loop)."""
        n = len(body)
        if n < 2:
            return list(body)
        vocab, scores, lookup = self.vocab, self.scores, self._lookup
        tok = list(body)
        nxt = [*range(1, n), -1]
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap: list[tuple[float, int, int, int, int]] = []

        def offer(i: int) -> None:  # the pair that starts at token i, if it merges
            j = nxt[i]
            tid = lookup.get(vocab[tok[i]] + vocab[tok[j]]) if j >= 0 else None
            if tid is not None and scores[tid] > -1e10:
                heapq.heappush(heap, (-scores[tid], i, tok[i], tok[j], tid))

        for i in range(n - 1):
            offer(i)
        while heap:
            _, i, left, right, tid = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or j < 0 or tok[i] != left or tok[j] != right:
                continue  # stale: one of its tokens merged with another neighbour first
            tok[i], alive[j] = tid, False
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prv[nxt[j]] = i
            if prv[i] >= 0:
                offer(prv[i])
            offer(i)
        return [t for t, keep in zip(tok, alive, strict=True) if keep]

    def decode_piece(self, prev: int, token: int) -> bytes:
        if token in self._byte_of:
            return bytes([self._byte_of[token]])
        piece = self.vocab[token]
        if prev == self.bos_id and piece.startswith(b" "):
            piece = piece[1:]
        return piece

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of ``ids``; BOS/EOS are dropped, invalid UTF-8 becomes U+FFFD."""
        ids = [int(i) for i in ids]
        out = bytearray()
        prev = self.bos_id  # text decoded without a BOS still loses its dummy-prefix space
        for tid in ids:
            if tid in (self.bos_id, self.eos_id):
                prev = tid
                continue
            out += self.decode_piece(prev, tid)
            prev = tid
        return out.decode("utf-8", errors="replace")


# -- conversion --------------------------------------------------------------------------------
def permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of wq (or wk, with ``n_kv_heads``) from llama2.c's interleaved rotary layout to HF's halves.

    ``w.reshape(n_heads, hs // 2, 2, dim).transpose(1, 2).reshape(out, dim)``: within each head,
    row ``2i`` goes to ``i`` and row ``2i + 1`` to ``i + hs/2``.
    """
    out, dim = w.shape
    hs = out // n_heads
    return w.reshape(n_heads, hs // 2, 2, dim).transpose(1, 2).reshape(out, dim).contiguous()


def hf_state_dict(checkpoint: Llama2cCheckpoint) -> dict[str, torch.Tensor]:
    """The ``LlamaForCausalLM`` state dict of a llama2.c checkpoint (rotary rows permuted)."""
    c = checkpoint.config
    sd = {
        "model.embed_tokens.weight": checkpoint.array("tok_embeddings"),
        "model.norm.weight": checkpoint.array("norm"),
        "lm_head.weight": checkpoint.array("output"),
    }
    arrays = {
        k: checkpoint.array(k)
        for k in ("attention_norm", "ffn_norm", "wq", "wk", "wv", "wo", "w1", "w2", "w3")
    }
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = arrays["attention_norm"][i]
        sd[p + "post_attention_layernorm.weight"] = arrays["ffn_norm"][i]
        sd[p + "self_attn.q_proj.weight"] = permute_rotary(arrays["wq"][i], c.n_heads)
        sd[p + "self_attn.k_proj.weight"] = permute_rotary(arrays["wk"][i], c.n_kv_heads)
        sd[p + "self_attn.v_proj.weight"] = arrays["wv"][i]
        sd[p + "self_attn.o_proj.weight"] = arrays["wo"][i]
        sd[p + "mlp.gate_proj.weight"] = arrays["w1"][i]
        sd[p + "mlp.down_proj.weight"] = arrays["w2"][i]
        sd[p + "mlp.up_proj.weight"] = arrays["w3"][i]
    return sd


HEADS = ("base", "causal-lm", "sequence-classification")


def to_hf_model(
    checkpoint: Llama2cCheckpoint | str | Path,
    *,
    head: str = "causal-lm",
    num_labels: int = 2,
    dtype: torch.dtype | None = None,
):
    """A ``transformers`` Llama model computing what llama2.c's ``run.c`` computes.

    Parameters
    ----------
    checkpoint : Llama2cCheckpoint or path
    head : {"causal-lm", "base", "sequence-classification"}
        ``LlamaForCausalLM``, ``LlamaModel``, or ``LlamaForSequenceClassification`` (its ``score``
        head newly initialised; ``pad_token_id`` 0, llama2.c's ``<unk>``, which encoding never emits).
    num_labels : int
        For the classification head.
    dtype : torch.dtype, optional
        Default float32, the file's dtype.

    Config: RMSNorm eps 1e-5, rope theta 10000, SiLU, BOS 1, EOS 2 (MANIFEST.md; llama2.c ``run.c``).
    """
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel

    if not isinstance(checkpoint, Llama2cCheckpoint):
        checkpoint = Llama2cCheckpoint(checkpoint)
    if head not in HEADS:
        raise ValueError(f"head {head!r} is not one of {', '.join(HEADS)}")
    cfg = checkpoint.config.spec("llama2c").hf_config_dict()
    cfg.pop("model_type")
    config = LlamaConfig(**cfg, pad_token_id=0, num_labels=num_labels)
    sd = hf_state_dict(checkpoint)
    if head == "causal-lm":
        model = LlamaForCausalLM(config)
        model.load_state_dict(sd, strict=True)
    elif head == "base":
        model = LlamaModel(config)
        model.load_state_dict(
            {k.removeprefix("model."): v for k, v in sd.items() if k.startswith("model.")}, strict=True
        )
    else:
        model = LlamaForSequenceClassification(config)
        sd.pop("lm_head.weight")
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if unexpected or set(missing) != {"score.weight"}:
            raise WeightsError(f"conversion of {checkpoint.path}: missing {missing}, unexpected {unexpected}")
    model.eval()
    return model.to(dtype) if dtype is not None else model


def convert_to_hf(checkpoint: Llama2cCheckpoint | str | Path, out_dir: str | Path) -> Path:
    """Write the converted ``LlamaForCausalLM`` (config.json + model.safetensors) to ``out_dir``."""
    model = to_hf_model(checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return out


# --------------------------------------------------------------------------------------------------
# A llama2.c checkpoint seen in Hugging Face Llama layout


class Llama2cAsHF:
    """A llama2.c weight source seen as the ``LlamaForCausalLM`` it converts to.

    llama2.c rotates interleaved row pairs of wq/wk, Hugging Face's Llama rotates halves, so the
    conversion (:func:`lowrank_lab.weights.llama2c.permute_rotary`, as ``hf_state_dict`` and
    ``load_hf_model`` apply it) permutes the rows of wq and wk. A row permutation P permutes the
    left singular vectors (``PW = (PU) Σ Vᵀ``), so comparing a fine-tune of the converted model with
    the native checkpoint would pair rows that are not the same output: every q/k vector would look
    like an intruder. This view hands out the converted matrices under their HF tensor names
    (``model.layers.<i>.self_attn.q_proj.weight``), keeping the canonical module names (wq...).
    """

    def __init__(self, source) -> None:
        self.source = source
        self.name = getattr(source, "name", "llama2c")
        self.family = source.family
        self.spec = source.spec
        suffixes = hf_module_suffixes(source.family)
        self._native = {}
        self._targets = []
        for info in source.targets():
            # Same matrix under its HF name (role and the other fields of the family table kept).
            hf = replace(info, tensor=f"model.layers.{info.layer}.{suffixes[info.module]}.weight")
            self._native[hf.tensor] = info
            self._targets.append(hf)

    def targets(self):
        return list(self._targets)

    def load(self, info):
        wm = self.source.load(self._native[info.tensor])
        W = wm.weight
        if info.module == "wq":
            W = permute_rotary(W, self.spec.num_heads)
        elif info.module == "wk":
            W = permute_rotary(W, self.spec.num_kv_heads)
        return WeightMatrix(info, W, wm.synthetic, wm.singular_values)


def hf_layout(source):
    """``source`` in Hugging Face layout: :class:`Llama2cAsHF` for llama2.c, else itself."""
    if getattr(source, "family", None) == "llama2c" and not isinstance(source, Llama2cAsHF):
        return Llama2cAsHF(source)
    return source
