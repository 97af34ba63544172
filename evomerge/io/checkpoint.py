"""Reading model directories lazily, one tensor at a time.

A ``Checkpoint`` opens an HF model directory (``config.json`` plus a single or
sharded safetensors checkpoint) and memory-maps its files; tensors are read
only when asked for. Pickle checkpoints (``.bin``, ``.pt``) can run code when
loaded, so they are refused unless the caller allows them, and then loaded
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open

from evomerge.errors import CheckpointError
from evomerge.io.compat import check_finite_tensor

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_PICKLE_NAMES = ("pytorch_model.bin.index.json", "pytorch_model.bin", "model.pt", "model.bin")


class TensorSource(Protocol):
    """What the merge planner needs to know about a model, without reading weights."""

    name: str
    config: dict[str, Any]

    def tensor_names(self) -> list[str]: ...
    def __contains__(self, tensor: str) -> bool: ...
    def shape(self, tensor: str) -> tuple[int, ...]: ...
    def dtype(self, tensor: str) -> torch.dtype: ...
    def get(self, tensor: str) -> torch.Tensor: ...


def tensor_bytes(src: TensorSource, dtype: torch.dtype | None = None) -> int:
    """Bytes of a source's tensors, as stored or (``dtype``) converted."""
    return sum(math.prod(src.shape(n)) * (dtype or src.dtype(n)).itemsize for n in src.tensor_names())


def read_config(path: Path) -> dict[str, Any]:
    config_path = path / "config.json"
    if not path.is_dir():
        raise CheckpointError(
            f"Model {path} is not a directory. Point the recipe at a Hugging Face model directory."
        )
    try:
        return json.loads(config_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"Model directory {path} has no config.json. Point the recipe at a Hugging Face model directory "
            "(config.json plus safetensors weights)."
        ) from None
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{config_path} is not valid JSON ({err}); fix or regenerate it."
        ) from err


class Checkpoint:
    """A model directory on disk, opened lazily (memory-mapped)."""

    def __init__(
        self, path: str | Path, *, allow_pickle: bool = False, check_finite: bool = False
    ) -> None:
        """``check_finite``: ``get`` refuses a tensor holding NaN or inf, naming it and this
        directory (one reduction per tensor read; a merge's output would be broken anyway)."""
        self.path = Path(path)
        self.name = str(path)
        self.allow_pickle = allow_pickle
        self.check_finite = check_finite
        self.config = read_config(self.path)
        self._files: dict[str, Path] = {}  # tensor name -> file
        self._handles: dict[Path, Any] = {}
        self._pickled: dict[str, torch.Tensor] | None = None
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self._index()

    # -- discovery -------------------------------------------------------------

    def _index(self) -> None:
        index = self.path / "model.safetensors.index.json"
        single = self.path / "model.safetensors"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CheckpointError(
                    f"{index} is not a valid safetensors index (it needs a `weight_map` of tensor "
                    "name to shard file); re-download the checkpoint or regenerate the index."
                ) from err
            for tensor, file in weight_map.items():
                self._files[tensor] = self.path / file
            missing = sorted({str(f) for f in self._files.values() if not f.exists()})
            if missing:
                raise CheckpointError(
                    f"{index} lists shard files that do not exist: {', '.join(missing)}. The "
                    "download is incomplete: re-download the checkpoint (every shard the index names)."
                )
        elif single.exists():
            self._add_safetensors(single)
        elif shards := sorted(self.path.glob("*.safetensors")):
            for file in shards:
                self._add_safetensors(file)
        else:
            self._load_pickle()
            return
        for file in sorted(set(self._files.values())):
            handle = self._open(file)
            for tensor in handle.keys():  # noqa: SIM118 (safe_open, not a dict)
                if self._files.get(tensor) == file:
                    sl = handle.get_slice(tensor)
                    self._meta[tensor] = (tuple(sl.get_shape()), SAFETENSORS_DTYPES[sl.get_dtype()])
        absent = [t for t in self._files if t not in self._meta]
        if absent:
            shown = ", ".join(f"{t} (in {self._files[t].name})" for t in absent[:5])
            more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
            raise CheckpointError(
                f"{self.path / 'model.safetensors.index.json'} names tensors its shards do not "
                f"contain: {shown}{more}. The index and the shards come from different versions; "
                "re-download the checkpoint (index and shards together)."
            )

    def _open(self, file: Path):
        if file not in self._handles:
            try:
                self._handles[file] = safe_open(str(file), framework="pt", device="cpu")
            except Exception as err:  # safetensors raises its own error types
                raise CheckpointError(
                    f"Cannot read {file}: {_one_line(err)}. The file is truncated, corrupt or not "
                    "safetensors; re-download or re-export the checkpoint."
                ) from err
        return self._handles[file]

    def _add_safetensors(self, file: Path) -> None:
        for tensor in self._open(file).keys():  # noqa: SIM118 (safe_open, not a dict)
            self._files[tensor] = file

    def _load_pickle(self) -> None:
        found = [self.path / n for n in _PICKLE_NAMES if (self.path / n).exists()]
        found += sorted(p for p in self.path.glob("*.bin") if p not in found)
        if not found:
            raise CheckpointError(
                f"Model directory {self.path} has no weights: expected model.safetensors (or "
                "model.safetensors.index.json with its shards). Copy or download the weights into "
                "it, or point the recipe at the directory that holds them."
            )
        if not self.allow_pickle:
            raise CheckpointError(
                f"Model directory {self.path} holds only pickle checkpoints ({found[0].name}); loading pickle can run "
                "arbitrary code. Convert it to safetensors, or pass --allow-pickle to load it with "
                "torch.load(weights_only=True)."
            )
        files = found
        if found[0].name.endswith(".index.json"):
            weight_map = json.loads(found[0].read_text())["weight_map"]
            files = [self.path / f for f in sorted(set(weight_map.values()))]
        self._pickled = {}
        for file in files:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:
                raise CheckpointError(
                    f"Cannot load {file} with torch.load(weights_only=True), which loads tensors "
                    f"only and runs no code: {_one_line(err)[:300]}. Convert the checkpoint to "
                    "safetensors where you trust it, or use a safetensors copy of the model."
                ) from err
            self._pickled.update({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
        self._meta = {k: (tuple(v.shape), v.dtype) for k, v in self._pickled.items()}

    # -- TensorSource ----------------------------------------------------------

    def tensor_names(self) -> list[str]:
        return list(self._meta)

    def __contains__(self, tensor: str) -> bool:
        return tensor in self._meta

    def shape(self, tensor: str) -> tuple[int, ...]:
        return self._meta[tensor][0]

    def dtype(self, tensor: str) -> torch.dtype:
        return self._meta[tensor][1]

    def get(self, tensor: str) -> torch.Tensor:
        if tensor not in self._meta:
            raise CheckpointError(f"Tensor {tensor!r} is not in model {self.path}.")
        if self._pickled is not None:
            value = self._pickled[tensor]
        else:
            value = self._open(self._files[tensor]).get_tensor(tensor)
        if self.check_finite:
            check_finite_tensor(self.path, tensor, value)
        return value

    def close(self) -> None:
        self._handles.clear()
        self._pickled = None

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self._meta)} tensors)"


def _one_line(err: BaseException) -> str:
    """A library's error as one line (messages must stay one paragraph)."""
    return " ".join(str(err).split()).rstrip(".")


class StateDictSource:
    """An in-memory model (a state dict and its config) seen as a TensorSource."""

    def __init__(
        self, name: str, tensors: Mapping[str, torch.Tensor], config: dict[str, Any]
    ) -> None:
        self.name = name
        self.config = config
        self.tensors = dict(tensors)

    def tensor_names(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, tensor: str) -> bool:
        return tensor in self.tensors

    def shape(self, tensor: str) -> tuple[int, ...]:
        return tuple(self.tensors[tensor].shape)

    def dtype(self, tensor: str) -> torch.dtype:
        return self.tensors[tensor].dtype

    def get(self, tensor: str) -> torch.Tensor:
        return self.tensors[tensor]

    def resident_tensors(self) -> list[torch.Tensor]:
        """The tensors this source holds (an in-memory merger never merges into them)."""
        return list(self.tensors.values())
