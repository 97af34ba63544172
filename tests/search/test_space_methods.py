"""Every registered merge method can be searched, also one method per group of layers."""

from __future__ import annotations

import pytest
import torch
from space_helpers import ps_data

from evomerge.merge.in_memory import InMemoryMerger
from evomerge.merge.registry import BasePolicy, Scope, get_method
from evomerge.methods import METHODS
from evomerge.recipe import Recipe
from evomerge.search.space import ParameterSpace


def _space(family, **over) -> ParameterSpace:
    return ParameterSpace.model_validate(ps_data(family, **over))


def _searchable_ranges(method: str) -> dict:
    """A range for every parameter ``method`` takes that changes its result, inside its bounds."""
    out = {}
    for p in get_method(method).params:
        if p.inert:
            continue
        if p.type is bool:
            out[p.name] = {"choices": [True, False]}
            continue
        low = p.low if p.low is not None else (0.0 if p.default in (None,) else float(p.default) - 1)
        if p.type is int:
            out[p.name] = {"low": max(low, p.default // 2), "high": p.default} if p.default else {"low": low, "high": low + 2}
        elif isinstance(p.default, float) and 0 < p.default < 1:  # a small setting (eps, tol, epsilon)
            out[p.name] = {"low": max(low, p.default / 2), "high": p.default}
        elif p.low == 0 and p.high == 1:  # a fraction (density, t)
            out[p.name] = {"low": 0.3, "high": 0.7}
        else:
            out[p.name] = {"low": low, "high": p.high if p.high is not None else low + 1}
    return out


def _n_models(method: str) -> int:
    spec = get_method(method)
    return spec.max_inputs if spec.max_inputs is not None else max(spec.min_inputs, 3)


@pytest.mark.parametrize("method", [m for m in METHODS.names()])
def test_every_registered_method_can_be_searched(method, untied_family):
    """A space offering ``method`` alone, with a range for each of its parameters: every
    parameter becomes genes of its scope, a decoded recipe sets them, and it merges."""
    n = _n_models(method)
    models = [str(untied_family[f"expert{i}"]) for i in range(n)]
    ranges = _searchable_ranges(method)
    space = _space(untied_family, models=models, methods=[method], parameters=ranges)
    spec = get_method(method)
    names = {g.name for g in space.genes()}
    for p in spec.params:
        if p.name not in ranges:
            continue
        if p.scope is Scope.PER_MODEL:
            assert {f"expert{i}.{p.name}" for i in range(n)} <= names, (method, p.name)
        else:
            assert p.name in names, (method, p.name)
    merger = InMemoryMerger({str(p): p for p in untied_family.values()})
    for u in (0.1, 0.7):
        recipe = space.decode([u] * space.dimension)
        assert recipe.merge_method == method
        for p in spec.params:
            if p.name not in ranges:
                continue
            if p.scope is Scope.PER_MODEL:
                assert all(p.name in (m.parameters or {}) for m in recipe.models), (method, p.name)
            else:
                assert p.name in (recipe.parameters or {}), (method, p.name)
        if spec.base is BasePolicy.INPUT:
            assert recipe.base_model is None
        out = merger.merge(recipe)
        assert all(torch.isfinite(t).all() for t in out.values()), method


def test_a_method_that_does_not_fit_the_models_is_refused(untied_family):
    three = [str(untied_family[f"expert{i}"]) for i in range(3)]
    with pytest.raises(ValueError, match=r"'nuslerp' merges exactly 2 model\(s\) onto the base and this space has 3"):
        _space(untied_family, models=three, methods=["ties", "nuslerp"], parameters={"weight": {"low": 0, "high": 1}})
    with pytest.raises(ValueError, match=r"'passthrough' merges exactly 1"):
        _space(untied_family, methods=["passthrough"], parameters={})


def test_a_required_parameter_without_a_range_is_refused(untied_family):
    one = [str(untied_family["expert0"])]
    with pytest.raises(ValueError, match=r"method 'slerp' needs 't'; add a range for it, e.g. `t: \{low: 0, high: 1\}`"):
        _space(untied_family, models=one, methods=["slerp"], parameters={})


def test_ranges_outside_a_methods_bounds_are_refused(untied_family):
    with pytest.raises(ValueError, match=r"parameters.select_topk: the range \[0.5, 1.5\] goes outside \[0, 1\]"):
        _space(untied_family, methods=["sce"], parameters={"select_topk": {"low": 0.5, "high": 1.5}})
    # ties divides by the sum of the weights (normalize is on by default): weights >= 0
    with pytest.raises(ValueError, match=r"parameters.weight: the range \[-1, 1\] goes outside >= 0"):
        _space(untied_family, methods=["ties"], parameters={"weight": {"low": -1, "high": 1}})
    # task arithmetic does not normalise: a negative weight (task negation) is fine
    _space(untied_family, methods=["task_arithmetic"], parameters={"weight": {"low": -1, "high": 1}})
    with pytest.raises(ValueError, match=r"takes normalize as a flag, not a number range.*choices: \[true, false\]"):
        _space(untied_family, methods=["ties"], parameters={"weight": {"low": 0, "high": 1},
                                                              "normalize": {"low": 0, "high": 1}})
    # DELLA keeps entries with probability density +- epsilon: the box must keep that in (0, 1)
    with pytest.raises(ValueError, match=r"'della' refuses some points of the space \(density 0.2 and epsilon 0.3"):
        _space(untied_family, methods=["della"], parameters={"weight": {"low": 0, "high": 1},
               "density": {"low": 0.2, "high": 1.0}, "epsilon": {"low": 0.0, "high": 0.3}})
    _space(untied_family, methods=["della"], parameters={"weight": {"low": 0, "high": 1},
           "density": {"low": 0.4, "high": 0.6}, "epsilon": {"low": 0.0, "high": 0.3}})
    # ... and on whole numbers only for integer parameters (CABS keeps n of every m entries)
    with pytest.raises(ValueError, match=r"'cabs' refuses some points of the space \(n = 300 is more than m = 256"):
        _space(untied_family, methods=["cabs"], parameters={"n": {"low": 32, "high": 300}, "m": {"low": 256, "high": 512}})
    _space(untied_family, methods=["cabs"], parameters={"n": {"low": 32.5, "high": 256.5}, "m": {"low": 256, "high": 512}})
    # density changes nothing in plain task arithmetic, so it is not a gene there
    with pytest.raises(ValueError, match=r"none of the methods \['task_arithmetic'\] takes a parameter 'density'"):
        _space(untied_family, methods=["task_arithmetic"])


def test_shared_and_per_model_parameters_and_choices_decode_to_their_places(untied_family):
    space = _space(untied_family, methods=["ties", "sce"], parameters={
        "weight": {"low": 0, "high": 1}, "density": {"low": 0.2, "high": 1},
        "select_topk": {"low": 0.1, "high": 0.9}, "lambda": {"low": 0.5, "high": 1.5},
        "normalize": {"choices": [True, False]},
    })
    names = [g.name for g in space.genes()]
    # per-model genes first (the order of spaces written before), then the shared ones
    assert names == ["method", "expert0.density", "expert0.weight", "expert1.density", "expert1.weight",
                     "lambda", "normalize", "select_topk"]
    x = [0.0] * len(names)
    x[names.index("select_topk")] = 0.5
    x[names.index("normalize")] = 0.9
    x[names.index("method")] = 0.9  # sce
    r = space.decode(x)
    assert r.merge_method == "sce" and r.parameters == {"select_topk": 0.5}
    assert all(not m.parameters for m in r.models)  # sce takes no per-model parameter
    x[names.index("method")] = 0.1  # ties
    x[names.index("lambda")] = 1.0
    r = space.decode(x)
    assert r.merge_method == "ties" and r.parameters == {"lambda": 1.5, "normalize": False}
    assert r.models[0].parameters == {"density": 0.2, "weight": 0.0}


def test_each_group_of_layers_can_choose_its_method(untied_family):
    """With ``method_per_group`` every group of layers gets a method gene, and the merge of each
    layer equals that layer of the whole-model merge with that group's method."""
    params = {"weight": {"low": 0.0, "high": 1.0}, "t": {"low": 0.0, "high": 1.0}}
    one = [str(untied_family["expert0"])]
    space = _space(untied_family, models=one, methods=["task_arithmetic", "slerp"], parameters=params,
                   granularity={"layers_per_group": 1, "method_per_group": True})
    names = [g.name for g in space.genes()]
    assert names[:3] == ["method[g0]", "method[g1]", "method[g2]"]
    assert names[3:] == ["expert0.weight[g0]", "t[g0]", "expert0.weight[g1]", "t[g1]",
                         "expert0.weight[g2]", "t[g2]"]
    x = [0.5] * len(names)
    x[:3] = [0.9, 0.1, 0.9]  # slerp, task arithmetic, slerp
    recipe = space.decode(x)
    assert [s.merge_method or recipe.merge_method for s in recipe.slices] == ["slerp", "task_arithmetic", "slerp"]
    merger = InMemoryMerger({str(p): p for p in untied_family.values()})
    out = merger.merge(recipe)
    whole = {
        m: merger.merge(Recipe.from_dict({
            "merge_method": m, "base_model": str(untied_family["base"]), "dtype": "float32",
            "models": [{"model": one[0], "parameters": {"weight": 0.5}}], "parameters": {"t": 0.5},
        } if m == "slerp" else {
            "merge_method": m, "base_model": str(untied_family["base"]), "dtype": "float32",
            "models": [{"model": one[0], "parameters": {"weight": 0.5}}],
        }, "test"))
        for m in ("slerp", "task_arithmetic")
    }
    for layer, m in enumerate(["slerp", "task_arithmetic", "slerp"]):
        k = f"model.layers.{layer}.mlp.down_proj.weight"
        assert torch.allclose(out[k], whole[m][k], atol=1e-6), (layer, m)
    assert not torch.allclose(whole["slerp"][k], whole["task_arithmetic"][k], atol=1e-4)
    # the embeddings follow the first group's method, the final norm the last group's
    assert torch.allclose(out["model.embed_tokens.weight"], whole["slerp"]["model.embed_tokens.weight"], atol=1e-6)
    # without method_per_group one method gene serves every group
    space = _space(untied_family, models=one, methods=["task_arithmetic", "slerp"], parameters=params,
                   granularity={"layers_per_group": 1})
    assert [g.name for g in space.genes()].count("method") == 1
