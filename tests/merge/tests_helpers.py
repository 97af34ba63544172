"""Extra tiny models for error tests."""

from __future__ import annotations

from pathlib import Path

import torch

from evomerge.testing import llama_config, llama_state, save_model


def wide_model(path: Path) -> Path:
    config = llama_config(tied=False, hidden=48)
    return save_model(path, llama_state(config, torch.Generator().manual_seed(9)), config)
