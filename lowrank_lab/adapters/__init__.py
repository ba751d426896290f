"""Adapter zoo: every initialisation of the seed papers as one injectable low-rank layer.

``ADAPTERS`` names each method once (paper, factorization, trainable parts, residual or not, closed
form of its trainable count); :class:`LowRankLinear` is the one layer type
(``base(x) + s·((x Aᵀ) Mᵀ) Bᵀ``); :func:`inject` puts it on a Hugging Face model by target names;
:func:`merge`/:func:`unmerge` fold it in and out; :func:`save_adapter`/:func:`load_adapter` round-trip
it bit-exactly; :func:`export_peft` writes a PEFT LoRA directory. Factorizations come only from
:mod:`lowrank_lab.linalg`.
"""

from .calibration import (
    ActivationStats,
    CalibrationError,
    activation_statistics,
    batch_losses,
    calibrate,
    calibration_gradients,
)
from .inject import (
    InjectedModule,
    InjectionReport,
    inject,
    kasa_loss,
    lowrank_modules,
    merge,
    trainable_parameters,
    unmerge,
)
from .io import (
    AdapterExportError,
    AdapterFileError,
    export_peft,
    load_adapter,
    read_adapter_config,
    save_adapter,
)
from .layer import LowRankLinear
from .methods import (
    ADAPTERS,
    AdapterInit,
    AdapterMethod,
    AdapterOptionError,
    UnknownAdapterError,
    closed_form_trainable,
    get_adapter,
    initialize,
)
from .targets import TargetError, family_suffixes, model_family, resolve_targets

__all__ = [
    "ADAPTERS",
    "ActivationStats",
    "AdapterExportError",
    "AdapterFileError",
    "AdapterInit",
    "AdapterMethod",
    "AdapterOptionError",
    "CalibrationError",
    "InjectedModule",
    "InjectionReport",
    "LowRankLinear",
    "TargetError",
    "UnknownAdapterError",
    "activation_statistics",
    "batch_losses",
    "calibrate",
    "calibration_gradients",
    "closed_form_trainable",
    "export_peft",
    "family_suffixes",
    "get_adapter",
    "initialize",
    "inject",
    "kasa_loss",
    "load_adapter",
    "lowrank_modules",
    "merge",
    "model_family",
    "read_adapter_config",
    "resolve_targets",
    "save_adapter",
    "trainable_parameters",
    "unmerge",
]
