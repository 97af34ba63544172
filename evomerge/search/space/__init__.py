"""Declarative search spaces (``search_spaces/*.yaml``) and their genome codec.

Every space maps the unit cube ``[0, 1]^d`` an optimiser searches onto merge
recipes: ``genes()`` (the coordinates), ``dimension``, ``decode(x) -> Recipe``
and ``source_models()`` (every model a decoded recipe can read, the one to
build a resident model from first). Kinds:

* ``parameter`` (``ParameterSpace``): a merge of whole models, per layer group
  and module filter;
* ``layer`` (``LayerSpace``): Sakana's data-flow path, inclusion and scale
  genes over ``repeats`` x layers x models;
* ``slices`` (``SlicesSpace``): a frankenmerge of ``k`` contiguous slices;
* ``joint`` (``JointSpace``): a parameter space plus a layer or slices path
  over its ``merged`` layers and other models.

A path may also take a finished recipe as a source (``{recipe: PATH}``): the
sequential PS -> DFS pipeline. ``load_space`` reads a file of any kind.
"""

from evomerge.search.space.base import (
    SPACE_KINDS,
    Gene,
    Range,
    SearchSpaceError,
    Space,
    load_space,
    register_space,
)
from evomerge.search.space.joint import JointSpace
from evomerge.search.space.layer import LayerSpace, PathSpace, ScaleGenes
from evomerge.search.space.parameter import Choice, Granularity, ParameterSpace, method_params
from evomerge.search.space.slices import SlicesSpace
from evomerge.search.space.sources import MERGED, RecipeSource, Run, layer_of_recipe, path_recipe

__all__ = [
    "MERGED",
    "SPACE_KINDS",
    "Choice",
    "Gene",
    "Granularity",
    "JointSpace",
    "LayerSpace",
    "ParameterSpace",
    "PathSpace",
    "Range",
    "RecipeSource",
    "Run",
    "ScaleGenes",
    "SearchSpaceError",
    "SlicesSpace",
    "Space",
    "layer_of_recipe",
    "method_params",
    "load_space",
    "path_recipe",
    "register_space",
]
