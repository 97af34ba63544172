"""Run the reference implementation (mergekit) in-process on a config, for parity tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from evomerge.testing import run_mergekit  # noqa: F401  (re-exported for the parity tests)


def load_dir(out: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in sorted(out.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state
