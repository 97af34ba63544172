"""Loading a Hugging Face causal LM: the one place evomerge calls ``from_pretrained``.

Weights are read from safetensors only (pickle checkpoints can run code when
loaded), a model's own code runs only when asked for (a config with ``auto_map``
is refused without ``trust_remote_code``), a directory without a tokenizer is
refused before any weight is read, and the model comes back in eval mode on the
device it is wanted on.
"""

from __future__ import annotations

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
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model.to(device).eval()


def _check_weights(path: Path) -> None:
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(
            f"{path} has no .safetensors weights; evomerge loads models from safetensors only "
            f"(convert the checkpoint, or merge it with `evomerge merge --allow-pickle`)."
        )
