"""Model, tokenizer and head for a fine-tuning task, through :mod:`lowrank_lab.weights`.

GLUE tasks get ``load_hf_model(name, head="sequence-classification", num_labels=...)`` (a
regression head when ``num_labels == 1``); GSM8K gets ``head="causal-lm"``. The head's weights
are drawn from torch's global RNG, which the loop seeds first, so every method of one seed starts
from the same head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .tasks import TaskSpec

#: Parameter-name prefixes of a freshly initialised task head that trains with every method
#: (PEFT's ``modules_to_save`` for SEQ_CLS lists ``classifier`` and ``score``).
HEAD_PREFIXES = ("classifier.", "score.")


class ModelLoadError(ValueError):
    """The model named by ``--model`` cannot be loaded for this task."""


def load_model(name: str, spec: TaskSpec) -> nn.Module:
    """The pre-trained model ``name`` with the head ``spec`` needs, in float32, in train mode."""
    from lowrank_lab.weights import load_hf_model

    try:
        if spec.kind == "causal-lm":
            model = load_hf_model(name, head="causal-lm")
        else:
            model = load_hf_model(name, head="sequence-classification", num_labels=spec.num_labels)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"--model {name!r} cannot be loaded for task {spec.name}: {exc}") from exc
    if spec.kind == "regression":
        model.config.problem_type = "regression"
    model.float()
    model.train()
    return model


def _llama2c_checkpoint(name: str) -> tuple[Path, int | None] | None:
    """(.bin path, vocab size) when ``name`` is a llama2.c checkpoint (registry name or file)."""
    from lowrank_lab.weights import get_spec
    from lowrank_lab.weights.api import stories260k_path

    try:
        spec = get_spec(name)
    except ValueError:
        spec = None
    if spec is not None and spec.family == "llama2c":
        return stories260k_path(), spec.vocab_size
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".bin":
        return path, None
    return None


def load_tokenizer(name: str, spec: TaskSpec) -> Any:
    """The tokenizer of model ``name``: llama2.c's ``tok512.bin`` (beside the checkpoint) for
    llama2.c models such as stories260K, else the Hugging Face tokenizer of its directory."""
    from lowrank_lab.weights import model_dir

    try:
        ckpt = _llama2c_checkpoint(name)
        if ckpt is not None:
            from lowrank_lab.weights.llama2c import Llama2cTokenizer

            path, vocab = ckpt
            tok_path = path.parent / (
                "tok512.bin" if (path.parent / "tok512.bin").is_file() else "tokenizer.bin"
            )
            return Llama2cTokenizer.from_file(tok_path, vocab_size=vocab)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(model_dir(name)), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"no tokenizer for --model {name!r}: {exc}") from exc


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
