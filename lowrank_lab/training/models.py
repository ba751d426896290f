"""Model, tokenizer and head for a fine-tuning task, through :mod:`lowrank_lab.weights`.

GLUE tasks get a classification (or, with ``num_labels == 1``, regression) head on a pooled
sentence vector; GSM8K gets ``load_hf_model(name, head="causal-lm")``. The head's weights are drawn
from torch's global RNG, which the loop seeds first, so every method of one seed starts from the
same head.

A study resolves its ``--model`` once (:func:`resolve_model`: registry, paths and hub cache asked
once) into a :class:`ResolvedModel` that :func:`load_tokenizer` and :func:`load_model` take in place
of the name; given a name, they resolve it themselves, as other callers need.

Pooling (:data:`POOLINGS`)
--------------------------
``mean``
    The average of the last hidden states over the non-padding tokens: how sentence-transformers
    encoders such as all-MiniLM-L6-v2 were trained (its ``1_Pooling/config.json`` says
    ``pooling_mode_mean_tokens: true``; Reimers & Gurevych 2019, arXiv 1908.10084).
``cls`` / ``max``
    The first token's hidden state / the per-dimension maximum over non-padding tokens (the other
    two sentence-transformers modes).
``pooler``
    BERT's pooler, tanh(W·h_[CLS] + b), what ``BertForSequenceClassification`` reads. MiniLM's
    pooler was never trained for its sentence task: its outputs vary little (per-dimension sd about
    0.035, ../shared/REFERENCE.md "Study protocol"), which is why it is no longer the default.
``native``
    The architecture's own sequence-classification head from ``transformers``
    (``AutoModelForSequenceClassification``; for BERT the pooler), as every run before issue 15.
``None`` (the default, "auto")
    The checkpoint's own sentence-transformers pooling when it ships a ``1_Pooling/config.json``
    (:func:`sentence_transformers_pooling`), else ``native``.

The head on a pooled vector is dropout (the encoder's ``hidden_dropout_prob``, 0.1 for BERT) then
one linear map initialised N(0, initializer_range²) with zero bias, as ``transformers`` initialises
``BertForSequenceClassification.classifier``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowrank_lab.utils.files import read_text
from lowrank_lab.weights.api import ModelLocation, load_hf_model, locate
from lowrank_lab.weights.registry import ModelSpec

from .tasks import TaskSpec

#: Parameter-name prefixes of a freshly initialised task head that trains with every method
#: (PEFT's ``modules_to_save`` for SEQ_CLS lists ``classifier`` and ``score``).
HEAD_PREFIXES = ("classifier.", "score.")


#: Sentence poolings of :class:`PooledClassifier` (see the module docstring).
POOLINGS = ("mean", "cls", "max", "pooler")
#: ``--pooling native``: the architecture's own sequence-classification head from transformers (what
#: every run made before issue 15 used; for BERT, the pooler's output).
NATIVE = "native"

#: sentence-transformers ``1_Pooling/config.json`` flag -> our pooling name.
_ST_FLAGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


class ModelLoadError(ValueError):
    """The model named by ``--model`` cannot be loaded for this task."""


class PooledOutput:
    """What :class:`PooledClassifier` returns, as a transformers output: ``logits`` (B, num_labels)
    and, when labels were given, ``loss``."""

    def __init__(self, logits: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        self.logits, self.loss = logits, loss


class PooledClassifier(nn.Module):
    """An encoder (``transformers.AutoModel``) with a linear head on a pooled sentence vector.

    Parameters
    ----------
    backbone : nn.Module
        The encoder; its forward returns ``last_hidden_state`` (and ``pooler_output`` for
        ``pooling="pooler"``).
    num_labels : int
        Classes (1: a regression score, as STS-B).
    pooling : {"mean", "cls", "max", "pooler"}

    The head is ``classifier`` (a name :data:`HEAD_PREFIXES` knows, so it trains with every
    method); :meth:`save_pretrained` writes the backbone as a plain checkpoint of the base model's
    own tensor names (what ``lowrank_lab.intruders`` compares against the base) and the head beside it.
    """

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        self.backbone = backbone
        self.config = backbone.config
        self.pooling = pooling
        hidden = int(self.config.hidden_size)
        self.dropout = nn.Dropout(float(getattr(self.config, "hidden_dropout_prob", 0.1) or 0.0))
        self.classifier = nn.Linear(hidden, num_labels)
        nn.init.normal_(self.classifier.weight, std=float(getattr(self.config, "initializer_range", 0.02)))
        nn.init.zeros_(self.classifier.bias)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **inputs: Any):
        """The pooled sentence vectors (B, hidden) of a batch."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **inputs)
        if self.pooling == "pooler":
            return out.pooler_output
        h = out.last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            return h[:, 0]
        mask = (
            torch.ones(h.shape[:2], dtype=h.dtype, device=h.device)
            if attention_mask is None
            else attention_mask.to(h.dtype)
        ).unsqueeze(-1)  # (B, T, 1)
        if self.pooling == "max":
            return h.masked_fill(mask == 0, torch.finfo(h.dtype).min).amax(dim=1)
        return (h * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **inputs: Any,
    ):
        """Logits of a batch; with ``labels`` also the loss ``BertForSequenceClassification`` would
        give (mean squared error for one output, as STS-B; cross-entropy otherwise)."""
        logits = self.classifier(self.dropout(self.pool(input_ids, attention_mask, **inputs)))  # (B, C)
        loss = None
        if labels is not None:
            if logits.shape[-1] == 1:
                loss = nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits.float(), labels)
        return PooledOutput(logits, loss)

    def save_pretrained(self, path: str | Path, **kwargs: Any) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        self.backbone.save_pretrained(path, **kwargs)
        head = {k: v.detach().contiguous().cpu() for k, v in self.classifier.state_dict().items()}
        save_file(head, str(path / "classifier.safetensors"), metadata={"pooling": self.pooling})


def sentence_transformers_pooling(directory: str | Path) -> str | None:
    """The pooling a sentence-transformers checkpoint was trained with, from its ``modules.json`` /
    ``1_Pooling/config.json``; None when the folder has no such config (not a sentence encoder)."""
    directory = Path(directory)
    pooling_dir = directory / "1_Pooling"
    modules = directory / "modules.json"
    if modules.is_file():
        try:
            for module in json.loads(read_text(modules)):
                if str(module.get("type", "")).endswith("Pooling"):
                    pooling_dir = directory / str(module.get("path", "1_Pooling"))
        except (json.JSONDecodeError, AttributeError, TypeError) as exc:
            raise ModelLoadError(f"{modules} is not a sentence-transformers modules list: {exc}") from exc
    config = pooling_dir / "config.json"
    if not config.is_file():
        return None
    try:
        flags = json.loads(read_text(config))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{config} is not valid JSON ({exc}); fix it or pass --pooling") from exc
    chosen = [name for flag, name in _ST_FLAGS.items() if flags.get(flag)]
    if len(chosen) != 1:
        raise ModelLoadError(
            f"{config} asks for {chosen or 'no'} pooling mode(s); lowrank_lab supports one of "
            f"{', '.join(_ST_FLAGS.values())}: pass --pooling explicitly"
        )
    return chosen[0]


def resolve_pooling(name: str, pooling: str | None) -> str | None:
    """The pooling a run of model ``name`` uses: ``pooling`` when given, else the checkpoint's
    sentence-transformers pooling, else None (the architecture's own classification head)."""
    try:
        where = locate(name) if pooling is None else None
    except (OSError, ValueError):
        return None
    return _pooling(pooling, where)


def _pooling(pooling: str | None, where: ModelLocation | None) -> str | None:
    """:func:`resolve_pooling` of the model found at ``where`` (needed only when ``pooling`` is None)."""
    if pooling == NATIVE:
        return None
    if pooling is not None:
        if pooling not in POOLINGS:
            raise ModelLoadError(f"--pooling {pooling!r} is not one of {', '.join((*POOLINGS, NATIVE))}")
        return pooling
    if where is None or where.directory is None:  # llama2.c: no sentence-transformers config
        return None
    return sentence_transformers_pooling(where.directory)


@dataclass(frozen=True)
class ResolvedModel:
    """A ``--model`` argument resolved once, as a study sets up (:meth:`.StudyData.load`, right after
    the task's examples are read, so bad data is still reported first), and handed to everything that
    needs the model: the tokenizer (:func:`load_tokenizer`), the model of each run (:func:`load_model`,
    the study's factory), replays and the untuned measurements (:mod:`.untuned`). Make it with
    :func:`resolve_model`; what it loads is exactly what the name loads.

    Attributes
    ----------
    location : ModelLocation
        The name as given, the registry spec (None for a path or an unregistered hub id), the
        Hugging Face directory or the llama2.c ``.bin`` (:func:`lowrank_lab.weights.locate`).
    tokenizer : Path or None
        Where the tokenizer is read: llama2.c's ``tok512.bin`` (else ``tokenizer.bin``) beside the
        ``.bin``, or the Hugging Face directory; None for a file that is no ``.bin``.
    tokenizer_vocab : int or None
        llama2.c tokenizers only: the registry's vocabulary size (stories260K: 512); None for a
        ``.bin`` path, whose tokenizer file says its own.
    pooling : str or None
        The pooling the runs use (:func:`resolve_pooling`: one of :data:`POOLINGS`, None for the
        architecture's own head); None for a causal LM, which has no sentence head.
    """

    location: ModelLocation
    tokenizer: Path | None
    tokenizer_vocab: int | None
    pooling: str | None

    @property
    def name(self) -> str:
        """The ``--model`` argument as given (what ``RunConfig.model`` records)."""
        return self.location.name

    @property
    def spec(self) -> ModelSpec | None:
        return self.location.spec

    @property
    def directory(self) -> Path | None:
        return self.location.directory

    @property
    def family(self) -> str | None:
        return self.location.family


def resolve_model(
    model: str | ResolvedModel, task: TaskSpec | None = None, pooling: str | None = None
) -> ResolvedModel:
    """``model`` resolved once (:class:`ResolvedModel`): registry, local paths and the hub cache are
    asked here and nowhere after. The pooling is resolved for a ``task`` with a sentence head (a
    classification or regression task) as :func:`resolve_pooling`. A resolved model comes back as it
    is, with ``pooling`` applied when one is given.

    Raises :class:`ModelLoadError` naming ``--model`` when the model cannot be found."""
    try:
        return _resolve(model, task, pooling)
    except ModelLoadError:
        raise
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"--model {_name(model)!r} cannot be loaded: {exc}") from exc


def _name(model: str | ResolvedModel) -> str:
    return model.name if isinstance(model, ResolvedModel) else str(model)


def _resolve(model: str | ResolvedModel, task: TaskSpec | None, pooling: str | None) -> ResolvedModel:
    """:func:`resolve_model`, its errors as the weights raise them."""
    sentence_head = task is not None and task.kind != "causal-lm"
    if isinstance(model, ResolvedModel):
        if pooling is None or not sentence_head:
            return model
        return replace(model, pooling=_pooling(pooling, model.location))
    where = locate(model)
    tokenizer, vocab = where.directory, None
    ckpt = where.llama2c_file
    if ckpt is not None:
        registered = where.spec is not None
        if registered or ckpt.suffix == ".bin":
            beside = ckpt.parent / "tok512.bin"
            tokenizer = beside if beside.is_file() else ckpt.parent / "tokenizer.bin"
            vocab = where.spec.vocab_size if registered else None
    return ResolvedModel(where, tokenizer, vocab, _pooling(pooling, where) if sentence_head else None)


def load_model(model: str | ResolvedModel, spec: TaskSpec, pooling: str | None = None) -> nn.Module:
    """The pre-trained model ``model`` (a name, or a :class:`ResolvedModel`) with the head ``spec``
    needs, in float32, in train mode.

    ``pooling`` (classification and regression tasks only) is as :func:`resolve_pooling`: None
    reads the checkpoint's sentence-transformers pooling when it has one (a resolved model's own).
    """
    try:
        resolved = _resolve(model, spec, pooling)
        where = resolved.location
        if spec.kind == "causal-lm":
            net = load_hf_model(where, head="causal-lm")
        elif resolved.pooling is not None:
            net = PooledClassifier(load_hf_model(where, head="base"), spec.num_labels, resolved.pooling)
        else:
            net = load_hf_model(where, head="sequence-classification", num_labels=spec.num_labels)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        why = f"cannot be loaded for task {spec.name}: {exc}"
        raise ModelLoadError(f"--model {_name(model)!r} {why}") from exc
    if spec.kind == "regression":
        net.config.problem_type = "regression"
    net.float()
    net.train()
    return net


def load_tokenizer(model: str | ResolvedModel, spec: TaskSpec | None = None) -> Any:
    """The tokenizer of ``model`` (a name, or a :class:`ResolvedModel`): llama2.c's ``tok512.bin``
    (beside the checkpoint) for llama2.c models such as stories260K, else the Hugging Face tokenizer
    of its directory."""
    try:
        resolved = _resolve(model, None, None)
        if resolved.tokenizer is None:
            raise ValueError(
                f"{resolved.location.llama2c_file} is a file but no llama2.c .bin; pass a Hugging Face "
                "model directory or a llama2.c .bin"
            )
        if resolved.location.llama2c_file is not None:
            from lowrank_lab.weights.llama2c import Llama2cTokenizer

            return Llama2cTokenizer.from_file(resolved.tokenizer, vocab_size=resolved.tokenizer_vocab)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(resolved.tokenizer), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"no tokenizer for --model {_name(model)!r}: {exc}") from exc


def head_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The task-head parameters (``classifier.*`` / ``score.*``) of a sequence-classification model."""
    return [(n, p) for n, p in model.named_parameters() if n.startswith(HEAD_PREFIXES)]


def count_parameters(model: nn.Module) -> int:
    """All parameters of ``model`` (frozen and trainable), each tensor counted once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
