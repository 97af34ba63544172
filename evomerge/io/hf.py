"""Loading a Hugging Face causal LM: the one place evomerge calls ``from_pretrained``.

Weights are read from safetensors only (pickle checkpoints can run code when
loaded), a model's own code runs only when asked for (a config with ``auto_map``
is refused without ``trust_remote_code``), a directory without a tokenizer is
refused before any weight is read, and the model comes back in eval mode on the
device it is wanted on.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import CheckpointError
from evomerge.io.compat import check_remote_code, check_tokenizer


def load_causal_lm(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the model directory ``path`` (the model as ``load_model`` gives it)."""
    from transformers import AutoTokenizer

    _check_weights(Path(path))
    check_tokenizer(path)  # before the weights load: a missing tokenizer is found at once
    model = load_model(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    return model, tokenizer


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> Any:
    """The causal LM in the model directory ``path`` without its tokenizer: safetensors
    weights in ``dtype``, in eval mode (``model.train()`` to fine-tune it), on ``device``."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    check_remote_code(path, trust_remote_code)
    _check_weights(path)
    with _no_progress_bar():
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    return model.to(device).eval()


@contextmanager
def _no_progress_bar():
    """transformers draws a "Loading weights" bar per load: noise in `evomerge eval` and one
    bar per worker at the start of every search."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _check_weights(path: Path) -> None:
    """Safetensors weights whose headers and lengths hold (truncated, corrupt or missing shards
    are refused naming the file, as a merge refuses them, before Transformers reads a byte)."""
    from evomerge.io.checkpoint import Checkpoint

    if not any(path.glob("*.safetensors")):
        raise CheckpointError(
            f"{path} has no .safetensors weights; evomerge loads models from safetensors only "
            f"(convert the checkpoint, or merge it with `evomerge merge --allow-pickle`)."
        )
    Checkpoint(path).close()
