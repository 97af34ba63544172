"""Reading a model's ``config.json`` settings that evomerge needs (imports nothing heavy)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Where configs keep the number of decoder layers, in the order they are looked up.
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def layer_count(config: Mapping[str, Any] | Any) -> tuple[str, int] | None:
    """``(key, count)``: the number of decoder layers a model config gives and where.

    ``config`` is a ``config.json`` mapping or a transformers config object. The
    count is the first of ``LAYER_COUNT_KEYS`` that holds an integer; a
    multimodal config without one keeps its decoder's under ``text_config``,
    and then the key reads ``text_config.<key>``. ``None`` when there is none.
    """
    for key in LAYER_COUNT_KEYS:
        value = _get(config, key)
        if isinstance(value, int) and not isinstance(value, bool):
            return key, value
    text = _get(config, "text_config")
    if text is not None and text is not config:
        found = layer_count(text)
        if found is not None and "." not in found[0]:
            return f"text_config.{found[0]}", found[1]
    return None


def _get(config: Mapping[str, Any] | Any, key: str) -> Any:
    return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
