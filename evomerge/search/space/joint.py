"""Joint PS + layer-space search: one genome, a parameter-space merge and a path that uses it.

``parameter:`` is a parameter space; ``layer:`` a layer (default) or slices
space whose ``models`` include ``merged``: layer ``i`` of the merge the
parameter genes decode to. The genome is the parameter genes followed by the
path genes. A ``merged`` layer becomes a one-layer slice with the merge's
method, base model and per-model parameters for that layer
(``layer_of_recipe``), so the path can mix merged layers with layers copied
from the experts. The recipe's ``dtype`` and ``seed`` are the parameter part's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Tag, ValidationInfo, model_validator

from evomerge.recipe import Recipe
from evomerge.search.space.base import (
    UNION_TAGS,
    Gene,
    Space,
    load_context,
    read_depth,
    register_space,
)
from evomerge.search.space.layer import LayerSpace
from evomerge.search.space.parameter import ParameterSpace
from evomerge.search.space.slices import SlicesSpace
from evomerge.search.space.sources import MERGED, entry_models


def _path_tag(v: Any) -> str:
    kind = v.get("kind", "layer") if isinstance(v, dict) else getattr(v, "kind", "layer")
    return "slices-space" if kind == "slices" else "layer-space"


UNION_TAGS.update({"layer-space", "slices-space"})


@register_space
class JointSpace(Space):
    """A parameter space and a path space over its ``merged`` layers and other sources."""

    kind: Literal["joint"] = "joint"
    parameter: ParameterSpace
    layer: Annotated[
        Union[Annotated[LayerSpace, Tag("layer-space")], Annotated[SlicesSpace, Tag("slices-space")]],
        Discriminator(_path_tag),
    ]

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> JointSpace:
        path = self.layer
        if MERGED not in path.models:
            raise ValueError(
                "layer.models: a joint space's path must use 'merged' (the parameter-space merge) "
                "among its models; without it the parameter genes do nothing"
            )
        fixed = sorted({"dtype", "seed"} & path.model_fields_set)
        if fixed:
            raise ValueError(
                f"layer.{fixed[0]}: a joint recipe takes dtype and seed from `parameter:`; set them there"
            )
        depth = self.parameter.num_layers
        ctx = load_context(info)
        if depth is None and ctx.resolve:
            try:
                depth = read_depth(self.parameter.base_model, ctx.dirs)
            except ValueError as e:
                raise ValueError(f"parameter.num_layers: {e}") from None
        if depth is not None and path.num_layers is not None and depth != path.num_layers:
            raise ValueError(
                f"layer.num_layers: the path's sources have {path.num_layers} layers but the "
                f"parameter-space merge has {depth}; they must have one depth"
            )
        if path.num_layers is None and depth is not None:
            path.num_layers = depth
            path._check()  # the checks that needed the depth
        return self

    def genes(self) -> list[Gene]:
        return [*self.parameter.genes(), *self.layer.genes()]

    def decode(self, x) -> Recipe:
        n = self.parameter.dimension
        u = self.unit(x)
        merged = self.parameter.decode(u[:n])
        return self.layer.recipe_of(
            self.layer.runs(u[n:]), merged=merged, dtype=self.parameter.dtype, seed=self.parameter.seed
        )

    def source_models(self) -> list[str]:
        refs = self.parameter.source_models()
        refs += [m for e in self.layer.models for m in entry_models(e)]
        return list(dict.fromkeys(refs))
