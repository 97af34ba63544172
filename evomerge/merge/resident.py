"""Reshaping a resident Hugging Face model to the depth a recipe makes.

A layer-space search decodes paths of varying length; each search worker
keeps one model resident and merges every candidate into it. ``fit_layers``
gives that model ``n`` decoder layers in place, reusing the layer modules it
has (a new layer is a deep copy of the last one; the merge then overwrites its
weights) and keeping the config and every layer's index consistent, so the
forward pass and generation with a KV cache see an ``n``-layer model:

    merger = InMemoryMerger(sources)
    fit_layers(model, merger.plan(recipe).num_layers)
    merger.merge(recipe, into=model)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from evomerge.errors import CheckpointError
from evomerge.io.model_config import layer_count

_TYPED_ATTRS = ("layer_type", "attention_type")  # per-layer attention kind on a module


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ``ModuleList`` of a causal LM's decoder layers."""
    config = _text_config(model)
    count = _layer_count(config)[1]
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for owner in (decoder, model):
        for attr in ("layers", "h", "blocks", "layer"):
            found = getattr(owner, attr, None) if owner is not None else None
            if isinstance(found, torch.nn.ModuleList):
                return found
    candidates = [
        m for _, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count
    ]
    if len(candidates) == 1:
        return candidates[0]
    raise CheckpointError(
        f"Cannot find the decoder layers of {type(model).__name__}; fit_layers supports models that "
        "keep them in a `layers` or `h` ModuleList."
    )


def fit_layers(
    model: torch.nn.Module, n: int, *, layer_types: Sequence[str] | None = None
) -> torch.nn.Module:
    """Give ``model`` exactly ``n`` decoder layers, in place; returns ``model``.

    Shrinking drops the last layers; growing appends deep copies of the last
    layer (same device and dtype; their weights are meant to be overwritten by
    a merge). Afterwards the config's layer count is ``n``, every attention's
    ``layer_idx`` is its position, and ``config.layer_types`` (where the model
    has one) has ``n`` entries: ``layer_types`` if given, else the old ones
    truncated or continued periodically (give them when a path mixes layers of
    different attention kinds, e.g. sliding-window and full).
    """
    if n < 1:
        raise ValueError(f"a model needs at least one layer, not {n}")
    config = _text_config(model)
    if getattr(config, "is_heterogeneous", False):
        raise CheckpointError(
            f"{type(model).__name__} has per-layer configs (heterogeneous); fit_layers cannot resize it."
        )
    layers = decoder_layers(model)
    old = len(layers)
    if n < old:
        del layers[n:]
    while len(layers) < n:
        layers.append(copy.deepcopy(layers[-1]))

    key, _ = _layer_count(config)
    setattr(config, key, n)
    types = _layer_types(config, n, old, layer_types)
    if types is not None:
        config.layer_types = types
    for i, layer in enumerate(layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = i
            if types is not None:
                _set_type(module, types[i], config)
    if types is not None:
        for module in model.modules():
            if hasattr(module, "has_sliding_layers"):  # Qwen2-style models decide masks once at init
                module.has_sliding_layers = "sliding_attention" in types
    return model


def _text_config(model: torch.nn.Module):
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    return config


def _layer_count(config) -> tuple[str, int]:
    found = layer_count(config)
    if found is None:
        raise CheckpointError("The model's config gives no layer count (num_hidden_layers).")
    return found


def _layer_types(config, n: int, old: int, given: Sequence[str] | None) -> list[str] | None:
    current = getattr(config, "layer_types", None)
    if given is not None:
        if len(given) != n:
            raise ValueError(f"layer_types has {len(given)} entries for {n} layers")
        if current is None:
            raise ValueError(f"{type(config).__name__} has no layer_types to set")
        return list(given)
    if current is None:
        return None
    current = list(current)[:old] or ["full_attention"]
    return [current[i % len(current)] for i in range(n)]


def _set_type(module: torch.nn.Module, kind: str, config) -> None:
    typed = False
    for attr in _TYPED_ATTRS:
        if isinstance(getattr(module, attr, None), str):
            setattr(module, attr, kind)
            typed = True
    if typed and hasattr(module, "sliding_window"):
        module.sliding_window = getattr(config, "sliding_window", None) if kind == "sliding_attention" else None
