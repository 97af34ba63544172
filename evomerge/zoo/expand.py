"""Block expansion (LLaMA Pro, arXiv 2401.02415): append decoder blocks that start as the identity.

A new block is a copy of the model's last block with its two output projections (attention
``o_proj`` and MLP ``down_proj``) set to zero, so it adds nothing to the residual stream: the
expanded model computes exactly what the original did. Fine-tuning only the new blocks gives
experts whose whole difference from their shared base sits in those blocks. Merging such experts
in parameter space averages blocks that learned different things; a layer path can keep each
block as trained and run them one after another (the zoo's ``blocks`` family).
"""

from __future__ import annotations

import copy


def append_identity_blocks(model, n: int) -> list[str]:
    """Append ``n`` identity-initialised blocks to a Llama-style causal LM, in place.

    Returns the parameter-name prefixes of the new blocks (what an expert trains).
    """
    layers = model.model.layers
    depth = len(layers)
    for k in range(n):
        block = copy.deepcopy(layers[depth - 1])
        block.self_attn.o_proj.weight.data.zero_()
        block.mlp.down_proj.weight.data.zero_()
        block.self_attn.layer_idx = depth + k  # the KV cache indexes layers by it
        layers.append(block)
    model.config.num_hidden_layers = depth + n
    if getattr(model.config, "layer_types", None):  # one entry per layer where the config has it
        model.config.layer_types = list(model.config.layer_types) + [model.config.layer_types[-1]] * n
    return [f"model.layers.{depth + k}." for k in range(n)]
