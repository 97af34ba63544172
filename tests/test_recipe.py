"""Recipe: validation, YAML round trip, stable hash, mergekit export."""

from __future__ import annotations

import pytest
import yaml

from evomerge.errors import RecipeError
from evomerge.mergekit_compat import MergekitExportError, to_mergekit
from evomerge.recipe import Recipe

TIES = """
merge_method: ties
base_model: base
models:
  - model: a
    parameters: {weight: 1, density: 0.5}
  - model: b
    parameters:
      weight: [{filter: self_attn, value: [0.1, 0.9]}, {value: 0.5}]
      density: 0.7
parameters: {normalize: true}
dtype: bf16
"""


def test_yaml_round_trip_is_identity():
    r = Recipe.from_yaml(TIES)
    assert Recipe.from_yaml(r.to_yaml()) == r
    assert r.dtype == "bfloat16"


def test_hash_ignores_key_order_and_int_vs_float():
    r = Recipe.from_yaml(TIES)
    data = yaml.safe_load(TIES)
    reordered = {k: data[k] for k in reversed(list(data))}
    reordered["models"][0]["parameters"] = {"density": 0.5, "weight": 1.0}
    assert Recipe.from_dict(reordered).content_hash() == r.content_hash()
    changed = Recipe.from_dict({**data, "dtype": "float32"})
    assert changed.content_hash() != r.content_hash()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("merge_method: tie\nmodels: [{model: a}]", "Did you mean: ties"),
        ("merge_method: karcer\nmodels: [{model: a}]", "Did you mean: karcher"),
        (
            "merge_method: ties\nmodules: {x: {}}\nmodels: [{model: a}]",
            "'modules' is not supported",
        ),
        (
            "merge_method: ties\nmodels: [{model: a}]\nslices: [{sources: [{model: a, layer_range: [0, 1]}]}]",
            "exactly one of",
        ),
        (
            "merge_method: ties\nslices: [{sources: [{model: a, layer_range: [2, 1]}]}]",
            "slices.0.sources.0",
        ),
        (
            "merge_method: ties\nslices: [{sources: [{model: a, layer_range: [0, 2]}, {model: b, layer_range: [0, 3]}]}]",
            "same number of layers",
        ),
        ("merge_method: ties\nmodels: [{model: a, weigth: 1}]", "models.0.weigth"),
        ("merge_method: ties\nmodels: [{model: a}]\ndtype: int4", "dtype 'int4'"),
        ("merge_method: ties\nmodels: [{model: a}]\ntokenizer_source: base\ntokenizer: {source: union}", "not both"),
        ("merge_method: ties\nslices: [{sources: [{model: a, layer_range: [0, 1]}], residual_weight: 0.5}]", "never reads it"),
        ("merge_method: ties\nmodels: [{model: a}]\ntokenizer: {pad_to_multiple_of: 0}", "tokenizer.pad_to_multiple_of"),
        ("[1, 2]", "must be a mapping"),
        ("merge_method: [", "not valid YAML"),
    ],
)
def test_bad_recipes_name_the_problem(text, needle):
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml(text, "r.yaml")
    assert needle in str(info.value)
    assert str(info.value).startswith("r.yaml")


def test_a_mergekit_method_evomerge_lacks_is_named_as_such(monkeypatch):
    # None today (every mergekit 0.1.5 method is implemented); a newer mergekit's would be.
    import evomerge.recipe

    monkeypatch.setattr(evomerge.recipe, "MERGEKIT_ONLY_METHODS", ("future_method",))
    with pytest.raises(RecipeError, match="'future_method' is a mergekit method evomerge does not implement"):
        Recipe.from_yaml("merge_method: future_method\nmodels: [{model: a}]", "r.yaml")


def test_referenced_models_in_first_mention_order():
    r = Recipe.from_yaml(TIES)
    assert r.referenced_models() == ["base", "a", "b"]


def test_export_layer_space_scale_as_passthrough_parameter():
    r = Recipe.from_dict(
        {
            "merge_method": "passthrough",
            "seed": 3,
            "slices": [
                {"sources": [{"model": "a", "layer_range": [0, 2]}]},
                {"sources": [{"model": "b", "layer_range": [1, 3]}], "scale": 0.5},
            ],
        }
    )
    out = to_mergekit(r)
    assert "seed" not in out
    params = out["slices"][1]["parameters"]["scale"]
    assert {"filter": "o_proj", "value": 0.5} in params and {
        "filter": "down_proj",
        "value": 0.5,
    } in params


def test_export_refuses_what_mergekit_cannot_express():
    r = Recipe.from_dict(
        {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": "a", "layer_range": [0, 2]}]},
                {
                    "sources": [
                        {"model": "a", "layer_range": [2, 3]},
                        {"model": "b", "layer_range": [2, 3]},
                    ],
                    "merge_method": "linear",
                },
            ],
        }
    )
    with pytest.raises(MergekitExportError, match="one method per config"):
        to_mergekit(r)
