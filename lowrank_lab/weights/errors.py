"""Errors of checkpoint I/O: each names the file, tensor or option at fault and says what to do.

Every class subclasses :class:`ValueError` (through :class:`WeightsError`), and the ones about
something absent on disk also subclass :class:`FileNotFoundError`, so callers can catch either the
precise class or the builtin one. Library exceptions (``safetensors``, ``torch.load``,
``huggingface_hub``) are caught at the boundary and re-raised as one of these, with the original
chained as ``__cause__``.
"""

from __future__ import annotations


class WeightsError(ValueError):
    """Base class of every error raised by :mod:`lowrank_lab.weights`."""


class UnknownModelError(WeightsError):
    """A model name that is neither in the registry, nor a path, nor a hub id.

    ``suggestions`` holds the closest known names (``difflib``), best first.
    """

    def __init__(self, message: str, suggestions: list[str] | None = None) -> None:
        super().__init__(message)
        self.suggestions = list(suggestions or [])


class CheckpointNotFoundError(WeightsError, FileNotFoundError):
    """A path, a file inside a checkpoint directory, or a hub snapshot that is not on disk."""


class MissingShardError(CheckpointNotFoundError):
    """A shard named by ``model.safetensors.index.json`` (or the ``.bin`` index) is not on disk."""


class NotInCacheError(CheckpointNotFoundError):
    """A hub id that is not in the local Hugging Face cache, and downloading is off or failed."""


class CorruptCheckpointError(WeightsError):
    """A weight file that cannot be parsed: truncated, corrupt header, wrong format."""


class ShapeMismatchError(WeightsError):
    """A tensor whose shape disagrees with what ``config.json`` (or the llama2.c header) implies."""


class MissingTensorError(WeightsError):
    """A target matrix the architecture must have, absent from every weight file."""


class UnsupportedArchitectureError(WeightsError):
    """A ``config.json`` whose ``model_type`` has no module table here."""
