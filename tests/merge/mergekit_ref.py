"""Run the reference implementation (mergekit) in-process on a config, for parity tests."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file


def run_mergekit(config: dict, out: Path) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    logging.getLogger("mergekit").setLevel(logging.ERROR)
    cfg = MergeConfiguration.model_validate(config)
    run_merge(
        cfg,
        str(out),
        MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False, device="cpu"),
    )
    state: dict[str, torch.Tensor] = {}
    for f in sorted(out.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def load_dir(out: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in sorted(out.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state
