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
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lowrank_lab import __version__

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
    save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": FORMAT})
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
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
        config = json.loads(cfg_file.read_text())
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
