"""Adapters on disk: our own format (bit-exact round trip) and plain PEFT LoRA directories.

``save_adapter``/``load_adapter`` write ``lowrank_adapter.safetensors`` (A, M, B of every module,
and for residual methods the initial A₀, M₀, B₀ from which the residual base is rebuilt) beside
``lowrank_adapter.json`` (method, rank, alpha, trainable parts, module shapes).

``export_peft`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` that
``peft.PeftModel.from_pretrained`` loads on the *original* base model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lowrank_lab import __version__
from lowrank_lab.utils.files import TextDecodeError, atomic_path, atomic_write_text, read_text

from .inject import FULL_TARGETS_ATTR, InjectedModule, InjectionReport, lowrank_modules, trainable_parameters
from .layer import LowRankLinear, is_adaptable, is_conv1d, weight_matrix
from .methods import closed_form_trainable, get_adapter
from .targets import model_family

CONFIG_NAME = "lowrank_adapter.json"
WEIGHTS_NAME = "lowrank_adapter.safetensors"
FORMAT = "lowrank_lab.adapter/1"


class AdapterFileError(ValueError):
    """An adapter directory that is missing, malformed, or does not fit the model."""


class AdapterExportError(ValueError):
    """An adapter that cannot be written in the requested format."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _full_targets(model: nn.Module) -> dict[str, nn.Module]:
    # inject(model, "full") wraps nothing; it records the target names on the model instead.
    names = getattr(model, FULL_TARGETS_ATTR, None) or []
    return {n: model.get_submodule(n) for n in names}


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write the model's adapters to the directory ``path`` (created if needed); returns it.

    For ``full`` fine-tuning (no wrappers) the trainable target weights themselves are written.
    Residual layers must have been injected with ``keep_init=True`` (the default).

    Raises
    ------
    AdapterFileError
        No adapters on the model, a merged layer, or a residual layer without its initial factors.
    """
    path = Path(path)
    layers = lowrank_modules(model)
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, Any] = {}
    if layers:
        first = next(iter(layers.values()))
        meta = {"method": first.method, "rank": first.rank, "scaling": first.scaling}
        for name, layer in layers.items():
            if (layer.method, layer.rank, layer.scaling) != (meta["method"], meta["rank"], meta["scaling"]):
                raise AdapterFileError(
                    f"module {name!r} holds a {layer.method} r={layer.rank} adapter, unlike the first "
                    f"({meta['method']} r={meta['rank']}); save_adapter writes one method at a time"
                )
            if layer.merged:
                raise AdapterFileError(f"module {name!r} is merged; call unmerge(model) before save_adapter")
            if layer.dora or layer.replaced_base:
                what = "a DoRA magnitude" if layer.dora else "a replaced (quantised) base weight"
                raise AdapterFileError(
                    f"module {name!r} carries {what}, which save_adapter does not write yet; "
                    "save the merged model instead (merge(model) then save_pretrained)"
                )
            parts = {"A": layer.A, "B": layer.B, "M": layer.M}
            if layer.residual:
                if layer.A0 is None:
                    raise AdapterFileError(
                        f"residual layer {name!r} was injected with keep_init=False, so the base it was "
                        "built from cannot be rebuilt on load; inject again with keep_init=True"
                    )
                parts.update(A0=layer.A0, B0=layer.B0, M0=layer.M0)
            for key, t in parts.items():
                if t is not None:
                    tensors[f"{name}.{key}"] = t.detach().contiguous().cpu()
            modules[name] = {
                "shape": [layer.out_features, layer.in_features],
                "fan_in_fan_out": layer.fan_in_fan_out,
            }
        am = get_adapter(meta["method"])
        config = {
            "format": FORMAT,
            "method": am.name,
            "rank": meta["rank"],
            "alpha": meta["scaling"] * meta["rank"],
            "scaling": meta["scaling"],
            "residual": am.residual,
            "core": am.core,
            "trainable": sorted(am.trains),
            "dropout": getattr(first.dropout, "p", 0.0),
            "dtype": _dtype_name(first.A.dtype),
        }
    else:
        targets = _full_targets(model)
        if not targets:
            raise AdapterFileError(
                "the model carries no adapters (no LowRankLinear layers, no trainable targets)"
            )
        for name, module in targets.items():
            tensors[f"{name}.weight"] = module.weight.detach().contiguous().cpu()
            modules[name] = {"shape": list(weight_matrix(module).shape), "fan_in_fan_out": is_conv1d(module)}
        config = {
            "format": FORMAT,
            "method": "full",
            "rank": None,
            "alpha": None,
            "scaling": None,
            "residual": False,
            "core": None,
            "trainable": ["W"],
            "dropout": 0.0,
            "dtype": _dtype_name(next(iter(targets.values())).weight.dtype),
        }
    config.update(family=model_family(model), lowrank_lab_version=__version__, modules=modules)
    path.mkdir(parents=True, exist_ok=True)
    # the weights first, each file whole or not at all: a config beside them means they are complete
    with atomic_path(path / WEIGHTS_NAME, option="adapter path") as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    atomic_write_text(path / CONFIG_NAME, json.dumps(config, indent=2) + "\n", option="adapter path")
    return path


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """The JSON config of an adapter directory written by :func:`save_adapter`."""
    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file() or not (path / WEIGHTS_NAME).is_file():
        raise AdapterFileError(
            f"{str(path)!r} is not a lowrank_lab adapter directory: it needs {CONFIG_NAME} and "
            f"{WEIGHTS_NAME} "
            "(write one with save_adapter; PEFT directories load with peft.PeftModel.from_pretrained)"
        )
    try:
        config = json.loads(read_text(cfg_file))
    except json.JSONDecodeError as exc:
        raise AdapterFileError(f"{cfg_file} is not valid JSON: {exc}") from None
    if config.get("format") != FORMAT:
        raise AdapterFileError(f"{cfg_file} has format {config.get('format')!r}, expected {FORMAT!r}")
    return config


def load_adapter(model: nn.Module, path: str | Path) -> InjectionReport:
    """Put the adapter saved in ``path`` on ``model`` (the original base model), in place.

    The factors come back bit for bit; residual methods rebuild ``W − s·B₀·[M₀]·A₀`` from the
    model's weight and the saved initial factors with the same arithmetic as :func:`inject`, so
    on the same machine the loaded model equals the saved one exactly (tested). Every parameter
    is frozen except the method's trainable parts, as after :func:`inject`.
    """
    config = read_adapter_config(path)
    tensors = load_file(str(Path(path) / WEIGHTS_NAME))
    am = get_adapter(config["method"])
    report = InjectionReport(
        method=am.name,
        rank=config["rank"] or 0,
        alpha=config["alpha"] or 0.0,
        scaling=config["scaling"] or 0.0,
        base_parameters=sum(p.numel() for p in model.parameters()),
    )
    if lowrank_modules(model):
        raise AdapterFileError("the model already carries adapters; load onto a fresh base model")
    resolved = {}
    for name, info in config["modules"].items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise AdapterFileError(
                f"adapter module {name!r} is not in this model; load it on the model class it was saved from"
            ) from None
        if not is_adaptable(module) or list(weight_matrix(module).shape) != list(info["shape"]):
            got = tuple(weight_matrix(module).shape) if is_adaptable(module) else type(module).__name__
            raise AdapterFileError(
                f"adapter module {name!r} expects a {tuple(info['shape'])} weight, the model has {got}"
            )
        resolved[name] = module
    for p in model.parameters():
        p.requires_grad_(False)
    shapes = []
    for name, module in resolved.items():
        t0 = time.perf_counter()
        shape = tuple(weight_matrix(module).shape)
        shapes.append(shape)
        if am.name == "full":
            with torch.no_grad():
                module.weight.copy_(tensors[f"{name}.weight"])
            module.weight.requires_grad_(True)
            report.modules.append(
                InjectedModule(name, shape, time.perf_counter() - t0, module.weight.numel())
            )
            setattr(model, FULL_TARGETS_ATTR, [*getattr(model, FULL_TARGETS_ATTR, []), name])
            continue

        def get(key: str, required: bool = True, name: str = name) -> torch.Tensor | None:
            t = tensors.get(f"{name}.{key}")
            if t is None and required:
                raise AdapterFileError(f"{WEIGHTS_NAME} has no tensor {name}.{key}")
            return t

        init = (get("A0"), get("M0", required=False), get("B0")) if am.residual else None
        layer = LowRankLinear(
            module,
            get("A"),
            get("B"),
            get("M", required=am.core is not None),
            scaling=config["scaling"],
            trainable=am.trains,
            method=am.name,
            residual=am.residual,
            init_factors=init,
            dropout=config.get("dropout", 0.0),
        )
        layer.init_seconds = time.perf_counter() - t0
        model.set_submodule(name, layer)
        report.modules.append(InjectedModule(name, shape, layer.init_seconds, layer.trainable_count()))
    report.trainable = trainable_parameters(model)
    report.closed_form = closed_form_trainable(am, shapes, config["rank"] or 1)
    return report


def export_peft(model: nn.Module, out_dir: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write the model's adapters as a plain PEFT LoRA adapter directory; returns it.

    ``peft.PeftModel.from_pretrained(original_base, out_dir)`` then computes what ``model`` does
    (tested to float32 roundoff). Each module's update relative to the *original* weight W is
    written as ``s·B'·A'``:

    * two-matrix methods (lora): ``B' = B``, ``A' = A``;
    * three-matrix methods (slora, nlora*, inttune, lora-xs, lora-sb): the core folded into A,
      ``A' = M·A``, rank r;
    * residual methods (pissa, pissa-fast, milora, olora, loldu): the base is ``W − s·B₀M₀A₀``, so
      the update is ``s·(B·M·A − B₀·M₀·A₀) = s·[B, −B₀]·[M·A; M₀·A₀]``, rank 2r with
      ``lora_alpha = 2·alpha`` — PEFT's own conversion of PiSSA (``subtract_mutated_init``).

    Factors are written in float32 (float64 layers: float64); PEFT casts them on load.

    Raises
    ------
    AdapterExportError
        ``full`` fine-tuning (not low-rank: save the model with ``save_pretrained``), a merged
        layer, mixed methods or ranks, or a residual layer injected with ``keep_init=False``.
    """
    layers = lowrank_modules(model)
    if not layers:
        if _full_targets(model):
            raise AdapterExportError(
                "full fine-tuning changes whole weight matrices and has no LoRA form; "
                "save the fine-tuned model with model.save_pretrained(...) instead"
            )
        raise AdapterExportError("the model carries no adapters to export")
    first = next(iter(layers.values()))
    tensors: dict[str, torch.Tensor] = {}
    export_rank = None
    for name, layer in layers.items():
        if (layer.method, layer.rank, layer.scaling) != (first.method, first.rank, first.scaling):
            raise AdapterExportError(f"module {name!r} holds a different method/rank/alpha from the others")
        if layer.merged:
            raise AdapterExportError(f"module {name!r} is merged; call unmerge(model) before export_peft")
        if layer.dora or layer.replaced_base:
            raise AdapterExportError(
                f"module {name!r} carries {'a DoRA magnitude' if layer.dora else 'a replaced base weight'}, "
                "which a plain PEFT LoRA adapter cannot hold"
            )
        acc = torch.float64 if layer.A.dtype == torch.float64 else torch.float32

        def fold(A: torch.Tensor, M: torch.Tensor | None, acc: torch.dtype = acc) -> torch.Tensor:
            A = A.detach().to(acc)
            if M is None:
                return A
            M = M.detach().to(acc)
            return M[:, None] * A if M.ndim == 1 else M @ A

        A_exp, B_exp = fold(layer.A, layer.M), layer.B.detach().to(acc)
        if layer.residual:
            if layer.A0 is None:
                raise AdapterExportError(
                    f"residual layer {name!r} was injected with keep_init=False: its update relative to the "
                    "original weight is unknown; inject with keep_init=True to export"
                )
            A_exp = torch.cat([A_exp, fold(layer.A0, layer.M0)], dim=0)  # (2r, n)
            B_exp = torch.cat([B_exp, -layer.B0.detach().to(acc)], dim=1)  # (m, 2r)
        export_rank = A_exp.shape[0]
        tensors[f"base_model.model.{name}.lora_A.weight"] = A_exp.contiguous().cpu()
        tensors[f"base_model.model.{name}.lora_B.weight"] = B_exp.contiguous().cpu()
    # scaling = lora_alpha / r must stay s when r doubles.
    lora_alpha = first.scaling * export_rank
    if float(lora_alpha).is_integer():
        lora_alpha = int(lora_alpha)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": export_rank,
        "lora_alpha": lora_alpha,
        "lora_dropout": 0.0,
        "target_modules": list(layers),
        "fan_in_fan_out": bool(first.fan_in_fan_out),
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


# --------------------------------------------------------------------------------------------------
# Reading PEFT LoRA adapters (the counterpart of export_peft; PEFT itself is not needed)

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class AdapterFilesError(FileNotFoundError):
    """An adapter directory lacks the files its format needs; the message names them."""


class AdapterFormatError(ValueError):
    """An adapter that cannot be merged: a non-LoRA PEFT type, DoRA, unmatched modules, bad shapes,
    an unreadable or truncated weights file, or one that would need pickle to load."""


def adapter_kind(path: str | Path) -> str | None:
    """``"peft"``, ``"lowrank_lab"`` or None, from the files in the directory ``path``."""
    p = Path(path)
    if not p.is_dir():
        return None
    if (p / PEFT_CONFIG).is_file() or any((p / w).is_file() for w in PEFT_WEIGHTS):
        return "peft"
    if (p / CONFIG_NAME).is_file() or (p / WEIGHTS_NAME).is_file():
        return "lowrank_lab"
    return None


@dataclass(frozen=True)
class LoraDelta:
    """One module's LoRA update ``ΔW = scale · B · A`` in ``nn.Linear`` (out, in) layout.

    ``fan_in_fan_out`` modules (GPT-2 ``Conv1D``) store their weight as (in, out); PEFT then returns
    ``(B·A)ᵀ`` from ``get_delta_weight``. The weight sources of lowrank_lab always hand out (out, in),
    so the update in that layout is ``B·A`` either way; the flag is kept for the record.
    """

    module: str
    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    scale: float
    fan_in_fan_out: bool = False

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.B.shape[0]), int(self.A.shape[1])

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``scale · B · A`` in ``dtype`` (float32 at least, as PEFT's CPU merge)."""
        return self.scale * (self.B.to(dtype) @ self.A.to(dtype))


def _peft_rank_alpha(config: dict, module: str, r_from_shape: int) -> tuple[int, float]:
    # PEFT's get_pattern_key: a pattern key matches the module name, or a dotted suffix of it.
    import re

    def lookup(pattern: dict, default):
        for key, value in (pattern or {}).items():
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        return default

    r = int(lookup(config.get("rank_pattern"), config.get("r", r_from_shape)))
    alpha = float(lookup(config.get("alpha_pattern"), config.get("lora_alpha", r)))
    return r, alpha


def read_peft_lora(path: str | Path) -> tuple[dict[str, LoraDelta], dict]:
    """The LoRA updates of a PEFT adapter directory, read with safetensors (PEFT is not needed).

    ``adapter_config.json`` gives ``r``, ``lora_alpha``, ``use_rslora``, ``rank_pattern``,
    ``alpha_pattern`` and ``fan_in_fan_out``; ``adapter_model.safetensors`` (or the older
    ``adapter_model.bin``) holds ``<prefix>.<module>.lora_A.weight`` (r, in) and ``...lora_B.weight``
    (out, r). The prefix ``base_model.model.`` and an adapter name before ``.weight`` are stripped.
    The scale is ``lora_alpha / r`` (``lora_alpha / √r`` with rsLoRA), exactly as
    ``peft.tuners.lora.layer.LoraLayer.update_layer``.

    Returns
    -------
    deltas : dict
        ``{module path: LoraDelta}``, module paths relative to the model PEFT wrapped.
    config : dict
        The adapter config.

    Raises
    ------
    AdapterFilesError
        ``adapter_config.json`` or the weights file is missing (both names are given).
    AdapterFormatError
        Not a LoRA adapter, DoRA or KaSA, a lora_A without its lora_B, or inconsistent shapes.
    """
    import json
    import math
    import re

    path = Path(path)
    if not path.is_dir():
        raise AdapterFilesError(f"adapter directory {str(path)!r} does not exist")
    weights = next((path / w for w in PEFT_WEIGHTS if (path / w).is_file()), None)
    missing = [
        n for n, ok in ((PEFT_CONFIG, (path / PEFT_CONFIG).is_file()), (PEFT_WEIGHTS[0], weights)) if not ok
    ]
    if missing:
        raise AdapterFilesError(
            f"PEFT adapter {str(path)!r} is missing {' and '.join(missing)} "
            f"(a PEFT LoRA directory holds {PEFT_CONFIG} and {PEFT_WEIGHTS[0]}, "
            "as written by save_pretrained)"
        )
    try:
        config = json.loads(read_text(path / PEFT_CONFIG))
    except (UnicodeDecodeError, TextDecodeError) as exc:
        raise AdapterFormatError(f"{path / PEFT_CONFIG} is not valid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise AdapterFormatError(f"{path / PEFT_CONFIG} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{path / PEFT_CONFIG} holds a JSON {type(config).__name__}, not an object")
    ptype = str(config.get("peft_type", "LORA")).upper()
    if ptype != "LORA":
        raise AdapterFormatError(
            f"{path / PEFT_CONFIG}: peft_type {ptype} is not LoRA; only LoRA adapters can be merged"
        )
    if config.get("use_dora"):
        raise AdapterFormatError(
            f"{path / PEFT_CONFIG}: DoRA adapters rescale the weight's columns and are not B·A updates; "
            "merge it with PEFT (merge_and_unload), save the model and pass it as --tuned"
        )
    if config.get("kasa_config"):
        raise AdapterFormatError(
            f"{path / PEFT_CONFIG}: KaSA adapters scale B·A by a trained diagonal (lora_diag) and apply to "
            "an SVD-truncated base, so they are not B·A updates of the original weight; merge it with PEFT "
            "(merge_and_unload), save the model and pass it as --tuned"
        )
    state = _load_adapter_state(weights)

    pat = re.compile(r"^(?P<module>.+?)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = pat.match(key)
        if m is None:
            continue  # biases (lora_bias), modules_to_save copies, embeddings' lora_embedding_A/B
        module = m["module"].removeprefix("base_model.model.")
        parts.setdefault(module, {})[m["part"]] = tensor
    if not parts:
        raise AdapterFormatError(f"{weights} holds no lora_A/lora_B weights (keys: {sorted(state)[:5]} ...)")
    deltas = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            have = "lora_A" if "A" in ab else "lora_B"
            raise AdapterFormatError(f"{weights}: module {module!r} has {have} but not its partner")
        A, B = ab["A"], ab["B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise AdapterFormatError(
                f"{weights}: module {module!r} has lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)}; "
                "expected (r, in) and (out, r) (convolutional LoRA is not supported)"
            )
        _, alpha = _peft_rank_alpha(config, module, int(A.shape[0]))
        r = int(A.shape[0])  # the stored factor is the truth; rank_pattern only set its size
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        deltas[module] = LoraDelta(module, A, B, scale, bool(config.get("fan_in_fan_out", False)))
    return deltas, config


def match_modules(modules: Sequence[str], tensors: Sequence[str], *, what: str = "adapter") -> dict[str, str]:
    """Map module paths (``bert.encoder.layer.0.attention.self.query``) to weight tensor names.

    A module matches the tensor ``<module>.weight`` when one name is a dotted suffix of the other,
    so adapters saved on a model with a head (``bert.``, ``model.`` prefixes) match the bare
    checkpoint and vice versa. Returns ``{module: tensor}`` for the modules that match one tensor.

    Raises
    ------
    AdapterFormatError
        A module matches more than one tensor (the candidates are listed).
    """
    stems = {t.removesuffix(".weight"): t for t in tensors}
    out = {}
    for mod in modules:
        hits = [t for s, t in stems.items() if s == mod or s.endswith("." + mod) or mod.endswith("." + s)]
        if len(hits) > 1:
            exact = [t for t in hits if t.removesuffix(".weight") == mod]
            if len(exact) != 1:
                raise AdapterFormatError(f"{what} module {mod!r} matches several base tensors: {hits}")
            hits = exact
        if hits:
            out[mod] = hits[0]
    return out




def _load_adapter_state(weights: Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter weights file; a damaged or unsafe file raises AdapterFormatError.

    ``.safetensors`` is read with safetensors; the older ``adapter_model.bin`` with
    ``torch.load(weights_only=True)``, which refuses any pickled object that is not a tensor or a
    plain container (so a file carrying code is rejected, not run).
    """
    import pickle

    if weights.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(weights))
        except (SafetensorError, ValueError) as exc:  # truncated, bad header
            raise AdapterFormatError(
                f"{weights} is not a readable safetensors file ({' '.join(str(exc).split())}); "
                "is it truncated? save the adapter again"
            ) from None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdapterFormatError(
            f"{weights} cannot be loaded safely (weights_only): {first[:200]}; only tensors are accepted, "
            "convert it to adapter_model.safetensors"
        ) from None
    except (RuntimeError, EOFError) as exc:  # a truncated zip or pickle stream
        raise AdapterFormatError(
            f"{weights} is not a readable torch file ({' '.join(str(exc).split())[:200]}); is it truncated?"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdapterFormatError(f"{weights} does not hold a dict of tensors")
    return state
