"""PEFT LoRA adapters made in a test, on a model directory (peft is a test-only dependency: it
comes with mergekit in the test extra; evomerge applies adapters without it)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


def make_lora_adapter(base_dir: Path, out: Path, *, seed: int = 7, scale: float = 0.1, **lora) -> Path:
    """A real PEFT LoRA adapter for the model in ``base_dir``, saved to ``out``, with every
    trainable tensor moved by ``scale`` times noise (PEFT starts lora_B at zero, which would make
    the adapter a no-op). ``lora``: ``peft.LoraConfig`` fields (default: r 4, alpha 8, the
    attention and MLP projections)."""
    import peft
    from transformers import AutoModelForCausalLM

    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                        "up_proj", "down_proj", "gate_proj"], **lora}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        wrapped = peft.get_peft_model(model, peft.LoraConfig(**lora))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, p in wrapped.named_parameters():
                if p.requires_grad:
                    p.add_(scale * torch.randn(p.shape, generator=gen))
        wrapped.save_pretrained(str(out))
    return Path(out)
