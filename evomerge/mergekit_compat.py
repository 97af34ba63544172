"""Export of evomerge recipes as mergekit configurations.

A mergekit YAML is already a valid evomerge recipe (``Recipe.load`` reads it
unchanged). The other way round, a recipe that uses only what mergekit can
express exports as an equivalent mergekit config. A slice ``scale`` on a
passthrough slice becomes mergekit's passthrough ``scale`` parameter filtered
to the residual-writing projections. The ``seed`` is dropped: mergekit draws
DARE/DELLA masks from its global RNG (``--random-seed``), so the masks differ
from evomerge's anyway.
"""

from __future__ import annotations

from typing import Any

import yaml

from evomerge.errors import EvomergeError
from evomerge.methods import EVOMERGE_ONLY_METHODS
from evomerge.recipe import RESIDUAL_WRITERS, Recipe


class MergekitExportError(EvomergeError):
    """The recipe uses a feature mergekit cannot express."""


def to_mergekit(recipe: Recipe) -> dict[str, Any]:
    used = {recipe.merge_method, *(s.merge_method for s in recipe.slices or [] if s.merge_method)}
    if only := sorted(used & set(EVOMERGE_ONLY_METHODS)):
        raise MergekitExportError(
            f"merge_method {only[0]!r} is evomerge's own; mergekit has no such method. The "
            "recipe (evomerge_recipe.yaml) is the record; run it with `evomerge merge`."
        )
    data = recipe.to_dict()
    data.pop("seed", None)
    for i, s in enumerate(data.get("slices") or []):
        method = s.pop("merge_method", None) or recipe.merge_method
        if method != recipe.merge_method:
            raise MergekitExportError(
                f"slices[{i}] uses merge_method {method!r} but the recipe uses {recipe.merge_method!r}; mergekit has "
                "one method per config. Export each stage as its own config (merge the parameter-space part first)."
            )
        scale = s.pop("scale", None)
        if scale is not None:
            if method != "passthrough":
                raise MergekitExportError(
                    f"slices[{i}] has scale {scale} under method {method!r}; mergekit can scale only passthrough slices."
                )
            params = s.setdefault("parameters", {})
            if "scale" in params:
                raise MergekitExportError(
                    f"slices[{i}] sets both `scale` and a `scale` parameter; keep one."
                )
            params["scale"] = [{"filter": w, "value": scale} for w in RESIDUAL_WRITERS]
    return data


def to_mergekit_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(to_mergekit(recipe), sort_keys=False, default_flow_style=None)
