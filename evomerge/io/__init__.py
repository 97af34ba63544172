"""Checkpoint I/O: lazy reading of HF model directories, atomic streaming writing, loading a model.

Names are resolved on first use, so ``evomerge.io.prefill`` imports without torch.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Checkpoint": "evomerge.io.checkpoint",
    "StateDictSource": "evomerge.io.checkpoint",
    "TensorSource": "evomerge.io.checkpoint",
    "CheckpointWriter": "evomerge.io.writer",
    "TensorSpec": "evomerge.io.writer",
    "load_causal_lm": "evomerge.io.hf",
    "load_model": "evomerge.io.hf",
}

__all__ = [
    "Checkpoint",
    "CheckpointWriter",
    "StateDictSource",
    "TensorSource",
    "TensorSpec",
    "load_causal_lm",
    "load_model",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
