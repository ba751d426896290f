"""Hugging Face checkpoint directories: single or sharded safetensors, ``pytorch_model*.bin`` fallback.

Tensors are read one at a time. Safetensors files are opened with ``safetensors.safe_open`` for
each tensor and closed right after, so the memory map (whose touched pages count in the process
RSS) never covers more than the tensor being read; ``.bin`` files are opened with
``torch.load(mmap=True, weights_only=True)`` (no pickle code runs, no full read) and the one
tensor is copied out. Iterating a checkpoint therefore holds about one target matrix in memory,
plus its cast copy when a ``dtype`` is asked for: benchmarks/weights_memory.py measured +91 MiB
(bf16) and +263 MiB (cast to float32) over the post-import RSS on a 4-shard llama-7b-shaped
checkpoint whose largest target matrix is 86 MiB, where ``from_pretrained`` took +925 MiB.

Which files: ``model.safetensors.index.json`` (its ``weight_map``), else ``model.safetensors``,
else ``pytorch_model.bin.index.json``, else ``pytorch_model.bin``, else every ``*.safetensors``
in the directory — the order ``transformers.PreTrainedModel.from_pretrained`` prefers. A shard
index may only name files inside the checkpoint directory.

Which tensors (discovery, from names and header shapes only; no model is built): the family table
of ``config.json``'s ``model_type`` (:mod:`lowrank_lab.weights.families`) says which names inside
the repeated blocks are targets and what role each has; where a family has several layouts (MoE
experts stacked in one 3-D tensor, as ``transformers`` 5 saves them, or one Linear per expert, as
older checkpoints hold them) the one the names match is used. A model type without a table, or a
directory without ``config.json``, is still read: every 2-D (or stacked 3-D) weight inside a
repeated block is a target with role ``generic``, and :attr:`WeightSource.notes` says so.
"""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lowrank_lab.utils.files import TextDecodeError, read_text

from .errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    MissingShardError,
    MissingTensorError,
    ShapeMismatchError,
    UnsupportedArchitectureError,
    WeightsError,
)
from .families import GENERIC, Family, Match, Module, generic_family, match, split_block_name
from .registry import ModelSpec, spec_from_hf_config
from .source import TargetInfo, WeightMatrix, WeightSelection, WeightSource

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"


def _redownload_hint(hub_id: str | None) -> str:
    if hub_id:
        return f"re-download it (hf download {hub_id} --force-download)"
    return "re-save or re-download the checkpoint"


def read_config(directory: Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory, with clear errors when absent or unreadable."""
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"{directory} has no config.json, so it is not a Hugging Face checkpoint directory "
            "(expected config.json beside model.safetensors or its shards). For a llama2.c model pass "
            "the .bin file itself; for a hub model pass its id (e.g. meta-llama/Llama-2-7b-hf)."
        )
    try:
        text = path.read_text(encoding="utf-8-sig")  # UTF-8, a byte-order mark allowed
    except OSError as exc:  # exists but cannot be read: say so, not "invalid JSON"
        raise CorruptCheckpointError(
            f"cannot read {path}: {exc.strerror or exc}; check its permissions"
        ) from exc
    except UnicodeDecodeError as exc:
        raise CorruptCheckpointError(
            f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "restore it from the original checkpoint"
        ) from exc
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptCheckpointError(
            f"{path} is not valid JSON ({exc}); restore it from the original checkpoint"
        ) from exc
    if not isinstance(config, dict):  # valid JSON, but every reader of it looks keys up
        raise CorruptCheckpointError(
            f"{path} holds a JSON {type(config).__name__}, not an object of settings "
            '({"model_type": ..., ...}); restore it from the original checkpoint'
        )
    return config


def _unreadable(path: Path) -> str | None:
    """Why an existing file cannot be read (permissions, not a file), or None (readable or absent:
    absence is reported as a missing shard)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def _read_index(path: Path) -> dict[str, str]:
    """The ``weight_map`` of a shard index; every file it names must lie inside the index's folder."""
    try:
        index = json.loads(read_text(path))  # UTF-8, a byte-order mark allowed
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, TextDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CorruptCheckpointError(
            f"{path} is not a valid shard index (need a JSON object with a 'weight_map' of tensor → "
            f"file): {exc}"
        ) from exc
    folder = path.parent.resolve()
    for tensor, file in weight_map.items():
        # An absolute path or a "../" entry would make reading the checkpoint read any file the user can.
        target = (folder / str(file)).resolve()
        if Path(str(file)).is_absolute() or target.parent != folder:
            raise CorruptCheckpointError(
                f"{path}: tensor {tensor} is mapped to {file!r}, which is not a file name inside "
                f"{folder}; a shard index may only name shards in the checkpoint folder. Fix the "
                "index or re-download the checkpoint"
            )
    return {str(k): str(v) for k, v in weight_map.items()}


def _safetensors_error():
    from safetensors import SafetensorError

    return SafetensorError


class HFCheckpointSource(WeightSource):
    """Target matrices of a local Hugging Face checkpoint directory.

    Parameters
    ----------
    path : Path
        Directory holding the weights and, usually, ``config.json``.
    name : str, optional
        Display name; default the directory name.
    spec : ModelSpec, optional
        A registry spec to name the model after (its name, hub id and notes are kept); the
        shapes always come from ``config.json``.
    hub_id : str, optional
        Where the directory came from, so error messages can give the download command.
    selection : WeightSelection, optional
        Targets, layers, dtype, device, experts and split_fused (:class:`~.source.WeightSelection`);
        None: every matrix, stored dtype, CPU.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        spec: ModelSpec | None = None,
        hub_id: str | None = None,
        selection: WeightSelection | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointNotFoundError(f"checkpoint directory {self.path} does not exist")
        self.hub_id = hub_id or (spec.hub_id if spec is not None else None)
        has_config = (self.path / "config.json").is_file()
        if not has_config and not any(self.path.glob("*.safetensors")):
            read_config(self.path)  # the error that says what a checkpoint directory holds
        self.config = read_config(self.path) if has_config else {}
        self.format, self._files = self._discover_files()
        display = name or (spec.name if spec is not None else self.path.name)
        notes: list[str] = []
        cfg_spec: ModelSpec | None = None
        generic_why = f"{self.path} has no config.json"
        if has_config:
            try:
                cfg_spec = spec_from_hf_config(
                    self.config, name=display, hub_id=self.hub_id, where=str(self.path / "config.json")
                )
            except UnsupportedArchitectureError as exc:
                generic_why = str(exc)
        # tensor name → (file, stored shape) of every target found; filled below from the headers.
        self._meta: dict[str, tuple[Path, tuple[int, ...]]] = {}
        self._matches: dict[str, Match] = {}
        if cfg_spec is not None:
            family = self._discover_family(cfg_spec.family_info)
        else:
            cfg_spec, family = self._discover_generic(display)
            notes.append(
                f"{generic_why}: every 2-D weight of its repeated blocks ({len(family.modules)} kinds) is "
                "analysed with role 'generic'"
            )
        if spec is not None:
            cfg_spec = replace(cfg_spec, name=spec.name, hub_id=spec.hub_id, notes=spec.notes)
        super().__init__(
            display,
            cfg_spec,
            origin=str(self.path),
            selection=selection,
            family_info=family,
        )
        self.notes = notes
        self.transposed = any(m.transposed for m in family.modules)
        # expanded target tensor name → (stored tensor, file, module, index into a stacked tensor)
        self._where: dict[str, tuple[str, Path, Module, int | None]] = {}

    # -- files -------------------------------------------------------------------------------
    def _discover_files(self) -> tuple[str, dict[str, Path] | list[Path]]:
        """``("safetensors"|"bin", weight_map or file list)``; missing shards raise here."""
        d = self.path
        for index_name, fmt in ((SAFE_INDEX, "safetensors"), (BIN_INDEX, "bin")):
            index_path = d / index_name
            if index_path.is_file():
                weight_map = _read_index(index_path)
                unreadable = {f: why for f in sorted(set(weight_map.values())) if (why := _unreadable(d / f))}
                if unreadable:
                    name, why = next(iter(unreadable.items()))
                    raise CorruptCheckpointError(
                        f"{index_path} names shard {name}, which cannot be read ({why})"
                        + (f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else "")
                        + "; check its permissions or copy it again"
                    )
                missing = sorted({f for f in weight_map.values() if not (d / f).is_file()})
                if missing:
                    raise MissingShardError(
                        f"{index_path} names {len(missing)} shard(s) that are not in {d}: "
                        f"{', '.join(missing)}. "
                        f"The download is incomplete: {self._fetch_hint(missing)}"
                    )
                return fmt, {k: d / v for k, v in weight_map.items()}
            single = d / (SAFE_SINGLE if fmt == "safetensors" else BIN_SINGLE)
            if single.is_file():
                return fmt, [single]
        others = sorted(d.glob("*.safetensors"))
        if others:
            return "safetensors", others
        raise CheckpointNotFoundError(
            f"{d} has a config.json but no weights: looked for {SAFE_INDEX}, {SAFE_SINGLE}, {BIN_INDEX}, "
            f"{BIN_SINGLE} and *.safetensors. {self._fetch_hint([])}"
        )

    def _fetch_hint(self, files: list[str]) -> str:
        if self.hub_id:
            include = "".join(f" --include {f}" for f in files)
            return f"fetch it with: hf download {self.hub_id}{include}"
        return "copy the missing files into the directory, or save the model again with save_pretrained"

    def _header(self, file: Path) -> dict[str, tuple[int, ...]]:
        """Tensor name → stored shape, from one weight file's header (no tensor data read)."""
        if self.format == "safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(file), framework="pt", device="cpu") as f:
                    return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            except _safetensors_error() as exc:
                raise CorruptCheckpointError(
                    f"{file} is not a readable safetensors file ({exc}); it is probably truncated or "
                    f"corrupt: {_redownload_hint(self.hub_id)}"
                ) from exc
            except OSError as exc:
                raise CorruptCheckpointError(f"cannot read {file}: {exc}") from exc
        state = self._torch_load(file)
        try:
            return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
        finally:
            del state

    def _torch_load(self, file: Path) -> dict[str, Any]:
        try:
            try:
                state = torch.load(str(file), map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                # Files written with the legacy (pre-1.6, non-zip) serialisation cannot be mapped.
                state = torch.load(str(file), map_location="cpu", weights_only=True)
        except (
            Exception
        ) as exc:  # torch.load raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
            raise CorruptCheckpointError(
                f"{file} cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc}); it is "
                "truncated, "
                "corrupt or needs pickled code (weights_only=True refuses that): "
                f"{_redownload_hint(self.hub_id)}"
            ) from exc
        if not isinstance(state, dict):
            raise CorruptCheckpointError(
                f"{file} holds a {type(state).__name__}, not a state dict of tensors"
            )
        return state

    def _shapes(self, names: list[str] | None) -> dict[str, tuple[Path, tuple[int, ...]]]:
        """``tensor → (file, stored shape)`` for ``names`` (None: every tensor), reading only the
        headers of the files that hold them."""
        out: dict[str, tuple[Path, tuple[int, ...]]] = {}
        if isinstance(self._files, dict):  # sharded: tensor → file from the index
            by_file: dict[Path, list[str]] = {}
            for tensor, file in self._files.items():
                if names is None or tensor in names:
                    by_file.setdefault(file, []).append(tensor)
            index = self.path / (SAFE_INDEX if self.format == "safetensors" else BIN_INDEX)
            for file, tensors in by_file.items():
                header = self._header(file)
                for tensor in tensors:
                    if tensor not in header:
                        raise CorruptCheckpointError(
                            f"{index} says tensor {tensor} is in {file.name}, but that file does not "
                            "contain it; the index and the shards come from different saves: "
                            f"{_redownload_hint(self.hub_id)}"
                        )
                    out[tensor] = (file, header[tensor])
        else:
            wanted = None if names is None else set(names)
            for file in self._files:
                for tensor, shape in self._header(file).items():
                    if wanted is None or tensor in wanted:
                        out[tensor] = (file, shape)
        return out

    def _all_names(self) -> list[str]:
        if isinstance(self._files, dict):
            return list(self._files)
        return list(self._shapes(None))

    # -- discovery ---------------------------------------------------------------------------
    def _discover_family(self, family: Family) -> Family:
        """Match every tensor name against the family's layouts; keep the layout matched most."""
        names = self._all_names()
        layouts = (family.modules, *family.alt_modules)
        best: dict[str, Match] = {}
        best_layout = 0
        for i in range(len(layouts)):
            found = {n: m for n in names if (m := match(n, family, i)) is not None}
            if len(found) > len(best):
                best, best_layout = found, i
        self._matches = best  # shapes are read from the headers when targets are listed
        return replace(family, modules=layouts[best_layout]) if best_layout else family

    def _discover_generic(self, display: str) -> tuple[ModelSpec, Family]:
        """Every 2-D weight (and stacked 3-D expert tensor) inside a repeated block, role generic."""
        shapes = self._shapes(None)
        block_lists = {s[0] for n in shapes if (s := split_block_name(n))}
        modules: dict[str, Module] = {}
        for tensor, (_, shape) in shapes.items():
            split = split_block_name(tensor)
            if (
                split is None
                or len(shape) not in (2, 3)
                or (len(shape) == 2 and not tensor.endswith(".weight"))
            ):
                continue
            prefix, layer, rest = split
            key = rest if len(block_lists) == 1 else f"{prefix}*.{rest}"
            if key not in modules:
                stored = tuple(shape[-2:])
                modules[key] = Module(
                    name=key,
                    path=rest,
                    role="generic",
                    shape=lambda s, stored=stored: stored,
                    experts="stacked" if len(shape) == 3 else "",
                )
            self._matches[tensor] = Match(layer, modules[key], None, rest, prefix)
            self._meta[tensor] = shapes[tensor]
        if not modules:
            ranks = Counter(len(shape) for _, shape in shapes.values())
            inside = sum(1 for n in shapes if split_block_name(n))
            examples = ", ".join(list(shapes)[:4])
            counts = ", ".join(f"{c} of rank {r}" for r, c in sorted(ranks.items()))
            raise UnsupportedArchitectureError(
                f"{self.path}: no 2-D weight inside a repeated block (names like "
                f"model.layers.<i>.<name>.weight), so there is nothing to analyse. Found {len(shapes)} "
                f"tensors ({counts}; {inside} inside blocks), e.g. {examples}"
            )
        family = generic_family(tuple(modules[k] for k in sorted(modules)))  # no table, so name order
        cfg = self.config
        dims = Counter(d for _, shape in self._meta.values() for d in shape[-2:])
        hidden = int(next((cfg[k] for k in ("hidden_size", "n_embd", "d_model") if cfg.get(k)), 0))
        hidden = hidden or dims.most_common(1)[0][0]
        heads = int(next((cfg[k] for k in ("num_attention_heads", "n_head", "num_heads") if cfg.get(k)), 1))
        heads = heads if hidden % heads == 0 else 1
        layers = 1 + max(m.layer for m in self._matches.values())
        experts = max((shape[0] for _, shape in self._meta.values() if len(shape) == 3), default=0)
        spec = ModelSpec(
            name=display,
            hub_id=self.hub_id,
            family=GENERIC,
            hidden_size=hidden,
            intermediate_size=int(cfg.get("intermediate_size") or hidden),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=heads,
            vocab_size=int(cfg.get("vocab_size") or 1),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            num_experts=experts,
            model_type=str(cfg.get("model_type") or ""),
            notes="generic discovery: no family table",
        )
        return spec, family

    # -- WeightSource ------------------------------------------------------------------------
    def _expected(self, module: Module, stored: tuple[int, ...]) -> tuple[int, ...]:
        out_in = module.shape(self.spec)
        out_in = out_in[::-1] if module.transposed else out_in
        if module.experts == "stacked":
            return (self.spec.num_experts, *out_in)
        return tuple(out_in) if self.family != GENERIC else stored

    def _list_targets(self) -> list[TargetInfo]:
        if not self._meta:
            self._meta = self._shapes(list(self._matches))
        found: dict[tuple[int, str, int | None], str] = {}
        infos: list[TargetInfo] = []
        config_path = self.path / "config.json"
        for tensor, m in self._matches.items():
            module = m.module
            file, shape = self._meta[tensor]
            if m.layer >= self.spec.module_layers(module) and self.family != GENERIC:
                raise ShapeMismatchError(
                    f"{file}: tensor {tensor} is in layer {m.layer}, but {config_path} says "
                    f"num_hidden_layers={self.spec.module_layers(module)}; the config and the weights "
                    f"disagree: {_redownload_hint(self.hub_id)}"
                )
            expected = self._expected(module, shape)
            if tuple(shape) != tuple(expected):
                raise ShapeMismatchError(
                    f"{file}: tensor {tensor} has shape {tuple(shape)}, but {config_path} "
                    f"(hidden_size={self.spec.hidden_size}, intermediate_size={self.spec.intermediate_size}, "
                    f"heads={self.spec.num_heads}, kv_heads={self.spec.num_kv_heads}"
                    + (f", experts={self.spec.num_experts}" if module.experts else "")
                    + f") implies {tuple(expected)} for {module.name}; the config and the weights come from "
                    f"different models: {_redownload_hint(self.hub_id)}, or fix config.json"
                )
            if m.expert is not None and m.expert >= self.spec.num_experts:
                raise ShapeMismatchError(
                    f"{file}: tensor {tensor} is expert {m.expert}, but {config_path} says "
                    f"{self.spec.num_experts} experts; the config and the weights disagree"
                )
            key = (m.layer, module.name, m.expert)
            if key in found:
                raise UnsupportedArchitectureError(
                    f"{self.path}: both {found[key]} and {tensor} look like layer {m.layer} {module.name}; "
                    "this checkpoint holds more than one stack of blocks, which lowrank_lab does not read"
                )
            found[key] = tensor
            out_in = tuple(shape[-2:])[::-1] if module.transposed else tuple(shape[-2:])
            whole = TargetInfo(tensor, m.layer, module.name, out_in, module.role, module.fused, m.expert)
            n_experts = shape[0] if module.experts == "stacked" else 0
            for info in self.expand(whole, module, n_experts):
                stacked = info.expert if module.experts == "stacked" else None
                self._where[info.tensor] = (tensor, file, module, stacked)
                infos.append(info)

        if self.family != GENERIC:
            layers = range(self.spec.layer_count) if self.layers is None else self.layers
            missing = []
            for module in self.module_info:
                experts = range(self.spec.num_experts) if module.experts == "linear" else [None]
                missing += [
                    (lay, module.name, e)
                    for lay in layers
                    if lay < self.spec.module_layers(module)
                    for e in experts
                    if (lay, module.name, e) not in found
                ]
            if missing:
                lay, mod, e = missing[0]
                what = f"layer {lay} {mod}" + ("" if e is None else f" expert {e}")
                raise MissingTensorError(
                    f"{self.path}: no weight for {what} (expected a tensor named like "
                    f"{self.spec.hf_tensor_name(lay, mod, e)}); {len(missing)} target matrices are missing "
                    f"in all. The checkpoint is incomplete or not a {self.family} model: "
                    f"{_redownload_hint(self.hub_id)}"
                )
        return infos

    def _read(self, info: TargetInfo) -> WeightMatrix:
        if info.tensor not in self._where:
            self.targets()
        if info.tensor not in self._where:
            raise WeightsError(
                f"{info.tensor} is not a target of {self.path}; pass a TargetInfo from targets()"
            )
        stored, file, module, index = self._where[info.tensor]
        if self.format == "safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(file), framework="pt", device="cpu") as f:
                    # One expert of a stacked tensor is read alone: memory holds one matrix, not all.
                    weight = f.get_tensor(stored) if index is None else f.get_slice(stored)[index]
            except _safetensors_error() as exc:
                raise CorruptCheckpointError(
                    f"{file}: cannot read tensor {stored} ({exc}): {_redownload_hint(self.hub_id)}"
                ) from exc
            except OSError as exc:
                raise CorruptCheckpointError(f"cannot read {file}: {exc}") from exc
        else:
            state = self._torch_load(file)
            try:
                weight = (state[stored] if index is None else state[stored][index]).clone()
            except KeyError as exc:
                raise CorruptCheckpointError(f"{file} no longer contains {stored}") from exc
            finally:
                del state
        if module.transposed:
            weight = weight.T.contiguous()
        rows = self.part_rows(info)
        if isinstance(rows, slice):
            weight = weight[rows].contiguous()
        elif rows is not None:
            weight = weight.index_select(0, torch.tensor(rows, dtype=torch.long))
        if tuple(weight.shape) != tuple(info.shape):
            raise ShapeMismatchError(
                f"{file}: tensor {info.tensor} has shape {tuple(weight.shape)}, expected {info.shape}"
            )
        return WeightMatrix(info, weight, synthetic=False, singular_values=None)
