"""Checkpoint I/O: real and synthetic weight matrices, one at a time, plus the model registry.

>>> from lowrank_lab.weights import open_source, get_spec
>>> get_spec("llama-7b").num_parameters()
6738415616
>>> src = open_source("llama-7b", synthetic=True, targets="q_proj,v_proj", layers="0")
>>> [(wm.module, tuple(wm.weight.shape)) for wm in src]
[('q_proj', (4096, 4096)), ('v_proj', (4096, 4096))]

Sources: local Hugging Face directories (sharded safetensors, ``.bin`` fallback), hub ids in the
local cache, llama2.c ``.bin`` files, the packaged all-MiniLM-L6-v2 (``minilm``), and synthetic
stand-ins with registry shapes. What each architecture's blocks hold (names, roles, fused layouts,
experts, shapes, parameter count) is one :class:`~lowrank_lab.weights.families.Family` record of
:data:`FAMILIES`. Depends on :mod:`lowrank_lab.linalg` only for the device policy;
``transformers`` is imported only where a model object is built.
"""

from .api import ModelLocation, load_hf_model, locate, model_dir, open_source
from .errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    MissingShardError,
    MissingTensorError,
    NotInCacheError,
    ShapeMismatchError,
    UnknownModelError,
    UnsupportedArchitectureError,
    WeightsError,
)
from .families import FAMILIES, ROLES, Family
from .registry import (
    FAMILY_MODULES,
    MODELS,
    ModelSpec,
    canonical_module,
    get_spec,
    hf_module_suffixes,
    parse_layers,
    select_modules,
)
from .source import TargetInfo, WeightMatrix, WeightSelection, WeightSource

__all__ = [
    "FAMILIES",
    "FAMILY_MODULES",
    "MODELS",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "Family",
    "MissingShardError",
    "MissingTensorError",
    "ModelLocation",
    "ModelSpec",
    "NotInCacheError",
    "ROLES",
    "ShapeMismatchError",
    "TargetInfo",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "WeightMatrix",
    "WeightSelection",
    "WeightSource",
    "WeightsError",
    "canonical_module",
    "get_spec",
    "hf_module_suffixes",
    "load_hf_model",
    "locate",
    "model_dir",
    "open_source",
    "parse_layers",
    "select_modules",
]
