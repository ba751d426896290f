"""Hugging Face checkpoint directories: single or sharded safetensors, ``pytorch_model*.bin`` fallback.

Tensors are read one at a time. Safetensors files are opened with ``safetensors.safe_open`` for
each tensor and closed right after, so the memory map (whose touched pages count in the process
RSS) never covers more than the tensor being read; ``.bin`` files are opened with
``torch.load(mmap=True, weights_only=True)`` (no pickle code runs, no full read) and the one
tensor is copied out. Iterating a checkpoint therefore holds about one target matrix in memory,
plus its cast copy when a ``dtype`` is asked for: benchmarks/weights_memory.py measured +91 MiB
(bf16) and +264 MiB (cast to float32) over the post-import RSS on a 4-shard llama-7b-shaped
checkpoint whose largest target matrix is 86 MiB, where ``from_pretrained`` took +925 MiB.

Which files: ``model.safetensors.index.json`` (its ``weight_map``), else ``model.safetensors``,
else ``pytorch_model.bin.index.json``, else ``pytorch_model.bin``, else every ``*.safetensors``
in the directory — the order ``transformers.PreTrainedModel.from_pretrained`` prefers.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    MissingShardError,
    MissingTensorError,
    ShapeMismatchError,
    UnsupportedArchitectureError,
    WeightsError,
)
from .registry import TRANSPOSED_FAMILIES, ModelSpec, canonical_module, spec_from_hf_config
from .source import TargetInfo, WeightMatrix, WeightSource

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"


def _redownload_hint(hub_id: str | None) -> str:
    if hub_id:
        return f"re-download it (huggingface-cli download {hub_id} --force-download)"
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
        text = path.read_text()
    except OSError as exc:  # exists but cannot be read: say so, not "invalid JSON"
        raise CorruptCheckpointError(
            f"cannot read {path}: {exc.strerror or exc}; check its permissions"
        ) from exc
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(
            f"{path} is not valid JSON ({exc}); restore it from the original checkpoint"
        ) from exc


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
    try:
        index = json.loads(path.read_text())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CorruptCheckpointError(
            f"{path} is not a valid shard index (need a JSON object with a 'weight_map' of tensor → "
            f"file): {exc}"
        ) from exc
    return {str(k): str(v) for k, v in weight_map.items()}


def _safetensors_error():
    from safetensors import SafetensorError

    return SafetensorError


class HFCheckpointSource(WeightSource):
    """Target matrices of a local Hugging Face checkpoint directory.

    Parameters
    ----------
    path : Path
        Directory holding ``config.json`` and the weights.
    name : str, optional
        Display name; default the directory name.
    spec : ModelSpec, optional
        A registry spec to name the model after (its name, hub id and notes are kept); the
        shapes always come from ``config.json``.
    hub_id : str, optional
        Where the directory came from, so error messages can give the download command.
    targets, layers, dtype, device
        As in :func:`lowrank_lab.weights.open_source`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        spec: ModelSpec | None = None,
        hub_id: str | None = None,
        targets=None,
        layers=None,
        dtype=None,
        device=None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointNotFoundError(f"checkpoint directory {self.path} does not exist")
        self.config = read_config(self.path)
        self.hub_id = hub_id or (spec.hub_id if spec is not None else None)
        cfg_spec = spec_from_hf_config(
            self.config, name=name or self.path.name, hub_id=self.hub_id, where=str(self.path / "config.json")
        )
        if spec is not None:
            cfg_spec = replace(cfg_spec, name=spec.name, hub_id=spec.hub_id, notes=spec.notes)
        super().__init__(
            name or cfg_spec.name,
            cfg_spec,
            origin=str(self.path),
            targets=targets,
            layers=layers,
            dtype=dtype,
            device=device,
        )
        self.transposed = self.family in TRANSPOSED_FAMILIES
        self.format, self._files = self._discover_files()
        # tensor name → (file, stored shape); filled by _list_targets from the headers.
        self._meta: dict[str, tuple[Path, tuple[int, ...]]] = {}

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
            return f"fetch it with: huggingface-cli download {self.hub_id}{include}"
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

    # -- WeightSource ------------------------------------------------------------------------
    def _list_targets(self) -> list[TargetInfo]:
        if isinstance(self._files, dict):  # sharded: tensor → file from the index
            by_file: dict[Path, list[str]] = {}
            for tensor, file in self._files.items():
                if canonical_module(tensor, self.family) is not None:
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
                    self._meta[tensor] = (file, header[tensor])
        else:
            for file in self._files:
                for tensor, shape in self._header(file).items():
                    if canonical_module(tensor, self.family) is not None:
                        self._meta[tensor] = (file, shape)

        expected = self.spec.target_shapes()
        found: dict[tuple[int, str], TargetInfo] = {}
        for tensor, (file, shape) in self._meta.items():
            layer, module = canonical_module(tensor, self.family)  # type: ignore[misc]
            if layer >= self.spec.num_layers:
                raise ShapeMismatchError(
                    f"{file}: tensor {tensor} is in layer {layer}, but {self.path / 'config.json'} says "
                    f"num_hidden_layers={self.spec.num_layers}; the config and the weights disagree: "
                    f"{_redownload_hint(self.hub_id)}"
                )
            out_in = expected[module]
            stored_expected = out_in[::-1] if self.transposed else out_in
            if tuple(shape) != tuple(stored_expected):
                raise ShapeMismatchError(
                    f"{file}: tensor {tensor} has shape {tuple(shape)}, but {self.path / 'config.json'} "
                    f"(hidden_size={self.spec.hidden_size}, intermediate_size={self.spec.intermediate_size}, "
                    f"heads={self.spec.num_heads}, kv_heads={self.spec.num_kv_heads}) implies "
                    f"{tuple(stored_expected)} for {module}; the config and the weights come from different "
                    f"models: {_redownload_hint(self.hub_id)}, or fix config.json"
                )
            key = (layer, module)
            if key in found:
                raise UnsupportedArchitectureError(
                    f"{self.path}: both {found[key].tensor} and {tensor} look like layer {layer} {module}; "
                    "this checkpoint holds more than one stack of blocks, which lowrank_lab does not read"
                )
            found[key] = TargetInfo(tensor, layer, module, out_in)

        layers = range(self.spec.num_layers) if self.layers is None else self.layers
        missing = [(lay, m) for lay in layers for m in self.modules if (lay, m) not in found]
        if missing:
            lay, m = missing[0]
            raise MissingTensorError(
                f"{self.path}: no weight for layer {lay} {m} (expected a tensor named like "
                f"{self.spec.hf_tensor_name(lay, m)}); {len(missing)} target matrices are missing in all. "
                f"The checkpoint is incomplete or not a {self.family} model: {_redownload_hint(self.hub_id)}"
            )
        return list(found.values())

    def _read(self, info: TargetInfo) -> WeightMatrix:
        if info.tensor not in self._meta:
            self.targets()
        if info.tensor not in self._meta:
            raise WeightsError(
                f"{info.tensor} is not a target of {self.path}; pass a TargetInfo from targets()"
            )
        file, _ = self._meta[info.tensor]
        if self.format == "safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(file), framework="pt", device="cpu") as f:
                    weight = f.get_tensor(info.tensor)
            except _safetensors_error() as exc:
                raise CorruptCheckpointError(
                    f"{file}: cannot read tensor {info.tensor} ({exc}): {_redownload_hint(self.hub_id)}"
                ) from exc
            except OSError as exc:
                raise CorruptCheckpointError(f"cannot read {file}: {exc}") from exc
        else:
            state = self._torch_load(file)
            try:
                weight = state[info.tensor].clone()
            except KeyError as exc:
                raise CorruptCheckpointError(f"{file} no longer contains {info.tensor}") from exc
            finally:
                del state
        if self.transposed:
            weight = weight.T.contiguous()
        if tuple(weight.shape) != tuple(info.shape):
            raise ShapeMismatchError(
                f"{file}: tensor {info.tensor} has shape {tuple(weight.shape)}, expected {info.shape}"
            )
        return WeightMatrix(info, weight, synthetic=False, singular_values=None)
