"""Layer, slices, joint and sequential search spaces: genomes, decoding, loading and validation."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import yaml
from space_helpers import ps_data

from evomerge.merge.in_memory import InMemoryMerger
from evomerge.merge.resident import fit_layers
from evomerge.recipe import Recipe
from evomerge.search.space import (
    JointSpace,
    LayerSpace,
    ParameterSpace,
    SearchSpaceError,
    SlicesSpace,
    layer_of_recipe,
    load_space,
)


def _names(space) -> list[str]:
    return [g.name for g in space.genes()]


def _path(recipe: Recipe) -> list[tuple[str, int, int, float | None]]:
    """(model name, start, end, scale) per slice of a passthrough path."""
    return [(Path(s.sources[0].model).name, *s.sources[0].layer_range, s.scale) for s in recipe.slices]


def _layer(family, **over) -> LayerSpace:
    data = {"models": [str(family["expert0"]), str(family["expert1"])], "num_layers": 3, "repeats": 2}
    data.update(over)
    return LayerSpace.model_validate(data)


def _at(space, values: dict[str, float], default: float = 0.0) -> list[float]:
    names = _names(space)
    x = [default] * len(names)
    for name, v in values.items():
        x[names.index(name)] = v
    return x


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# --- layer space ------------------------------------------------------------------------------


def test_slots_are_repeat_major_then_layer_then_model(untied_family):
    space = _layer(untied_family, scale={"low": 0.5, "high": 1.5})
    names = _names(space)
    assert space.dimension == 2 * 3 * 2 * 2  # repeats x layers x models x (inclusion, scale)
    assert names[:5] == ["r0.l0.expert0.in", "r0.l0.expert1.in", "r0.l1.expert0.in", "r0.l1.expert1.in", "r0.l2.expert0.in"]
    assert names[6] == "r1.l0.expert0.in" and names[12] == "scale[r0.l0.expert0]"
    assert len(set(names)) == len(names)
    # A0 B0 A1 B1: interleaving the models layer by layer is reachable.
    x = _at(space, {"r0.l0.expert0.in": 1, "r0.l0.expert1.in": 1, "r0.l1.expert0.in": 1, "r0.l1.expert1.in": 1})
    assert [(m, s) for m, s, _, _ in _path(space.decode(x))] == [("expert0", 0), ("expert1", 0), ("expert0", 1), ("expert1", 1)]


def test_inclusion_threshold_scales_and_determinism(untied_family):
    space = _layer(untied_family, scale={"low": 0.5, "high": 1.5})
    x = _at(space, {
        "r0.l2.expert1.in": 0.51, "scale[r0.l2.expert1]": 0.25,
        "r1.l0.expert0.in": 0.9, "scale[r1.l0.expert0]": 1.0,
        "r1.l1.expert0.in": 0.5,  # not above 0.5: left out
    })
    recipe = space.decode(x)
    assert recipe.merge_method == "passthrough"
    assert _path(recipe) == [("expert1", 2, 3, 0.75), ("expert0", 0, 1, 1.5)]
    assert space.decode(list(x)).content_hash() == recipe.content_hash()
    x[_names(space).index("r1.l1.expert0.in")] = 0.7
    assert len(space.decode(x).slices) == 3
    # Scale off: no scale genes, no scales on the path; consecutive layers of a model are one slice.
    plain = _layer(untied_family, repeats=1)
    assert plain.dimension == 6
    r = plain.decode(_at(plain, {"r0.l0.expert0.in": 1, "r0.l1.expert0.in": 1, "r0.l2.expert1.in": 1}))
    assert _path(r) == [("expert0", 0, 2, None), ("expert1", 2, 3, None)]


def test_scale_per_layer_and_per_transition(untied_family):
    per_layer = _layer(untied_family, scale={"low": 0.0, "high": 2.0, "per": "layer"})
    assert per_layer.dimension == 12 + 6
    r = per_layer.decode(_at(per_layer, {"r0.l1.expert0.in": 1, "r1.l1.expert0.in": 1, "scale[l1.expert0]": 0.75}))
    assert [s for *_, s in _path(r)] == [1.5, 1.5]  # both repeats share the layer's gene

    trans = _layer(untied_family, repeats=1, scale={"low": 0.0, "high": 2.0, "per": "transition"})
    assert trans.dimension == 6 + 6 * 6
    x = _at(trans, {
        "r0.l0.expert1.in": 1, "r0.l2.expert0.in": 1,
        "scale[expert1.l0->expert0.l2]": 0.25, "scale[expert0.l0->expert0.l2]": 0.9,
    })
    assert _path(trans.decode(x)) == [("expert1", 0, 1, None), ("expert0", 2, 3, 0.5)]
    x[_names(trans).index("r0.l0.expert1.in")] = 0.0
    x[_names(trans).index("r0.l0.expert0.in")] = 1.0  # now the path comes from expert0.l0
    assert _path(trans.decode(x))[-1] == ("expert0", 2, 3, 1.8)


def test_pinned_first_and_last_layers(untied_family):
    e0, e1 = str(untied_family["expert0"]), str(untied_family["expert1"])
    space = _layer(untied_family, repeats=1, layer_range=[1, 2], first_layer_from=e1, last_layer_from=e0,
                   scale={"low": 0.5, "high": 1.5})
    assert _names(space) == ["r0.l1.expert0.in", "r0.l1.expert1.in", "scale[r0.l1.expert0]", "scale[r0.l1.expert1]"]
    assert _path(space.decode([0.0] * 4)) == [("expert1", 0, 1, None), ("expert0", 2, 3, None)]
    r = space.decode([1.0, 0.0, 0.0, 0.0])
    assert _path(r) == [("expert1", 0, 1, None), ("expert0", 1, 2, 0.5), ("expert0", 2, 3, None)]
    assert space.source_models()[0] == e1  # the first layer's model: build the resident model from it


def test_first_layers_pins_a_trunk_and_the_search_builds_on_it(untied_family):
    e1 = str(untied_family["expert1"])
    space = _layer(untied_family, first_layer_from=e1, first_layers=2, layer_range=[2, 3],
                   scale={"low": 0.5, "high": 1.5, "per": "transition"}, max_layers=4)
    # Transitions start from the trunk's last layer, not from layer 0.
    assert _names(space)[:4] == ["r0.l2.expert0.in", "r0.l2.expert1.in", "r1.l2.expert0.in", "r1.l2.expert1.in"]
    assert "scale[expert1.l1->expert0.l2]" in _names(space) and "scale[expert1.l0->expert0.l2]" not in _names(space)
    x = _at(space, {"r0.l2.expert1.in": 1, "r1.l2.expert0.in": 1, "r1.l2.expert1.in": 0.9,
                    "scale[expert1.l1->expert1.l2]": 1.0})
    # Two trunk layers leave room for two of the three included slots (the most included ones).
    assert _path(space.decode(x)) == [("expert1", 0, 2, None), ("expert1", 2, 3, 1.5), ("expert0", 2, 3, 0.5)]


def test_empty_path_falls_back_to_the_most_nearly_included_slot(untied_family):
    space = _layer(untied_family)
    x = [0.1] * space.dimension
    x[_names(space).index("r1.l2.expert1.in")] = 0.4
    x[_names(space).index("r0.l1.expert0.in")] = 0.4  # a tie goes to the earlier slot
    assert _path(space.decode(x)) == [("expert0", 1, 2, None)]
    assert len(space.decode([0.0] * space.dimension).slices) == 1


def test_max_layers_keeps_the_most_included_slots_in_path_order(untied_family):
    space = _layer(untied_family, max_layers=3)
    x = [0.6] * space.dimension
    for name, v in {"r1.l2.expert1.in": 0.99, "r0.l0.expert1.in": 0.95, "r1.l0.expert0.in": 0.97}.items():
        x[_names(space).index(name)] = v
    r = space.decode(x)
    assert [(m, s) for m, s, _, _ in _path(r)] == [("expert1", 0), ("expert0", 0), ("expert1", 2)]


def test_every_decoded_path_merges_into_a_resident_model(untied_family):
    from transformers import AutoModelForCausalLM

    space = _layer(untied_family, repeats=1, scale={"low": 0.5, "high": 1.5}, max_layers=5)
    merger = InMemoryMerger({r: r for r in space.source_models()})
    model = AutoModelForCausalLM.from_pretrained(str(untied_family["expert0"]), dtype=torch.float32)
    rng = random.Random(0)
    depths = set()
    for _ in range(6):
        recipe = space.decode([rng.random() for _ in range(space.dimension)])
        n = merger.plan(recipe).num_layers
        depths.add(n)
        fit_layers(model, n)
        merger.merge(recipe, into=model)
        with torch.no_grad():
            assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    assert len(depths) > 1 and max(depths) <= 5


# --- slices space -----------------------------------------------------------------------------


def test_slices_space_decodes_contiguous_runs(untied_family):
    space = SlicesSpace.model_validate({
        "models": [str(untied_family["expert0"]), str(untied_family["expert1"])], "num_layers": 3,
        "slices": 2, "length": {"low": 1, "high": 3}, "scale": {"low": 0.5, "high": 1.5},
    })
    assert _names(space) == [
        "s0.model", "s0.length", "s0.position", "s0.scale", "s1.model", "s1.length", "s1.position", "s1.scale",
    ]
    # s0: expert1, 2 layers at the end; s1: expert0, 1 layer at the start
    x = [0.9, 0.5, 1.0, 0.0, 0.2, 0.0, 0.0, 1.0]
    assert _path(space.decode(x)) == [("expert1", 1, 3, 0.5), ("expert0", 0, 1, 1.5)]
    for _ in range(20):  # every run fits in the model
        r = space.decode([random.random() for _ in range(space.dimension)])
        assert all(0 <= s < e <= 3 for _, s, e, _ in _path(r))


def test_optional_slices_and_max_layers(untied_family):
    space = SlicesSpace.model_validate({
        "models": [str(untied_family["expert0"])], "num_layers": 3, "slices": 3, "optional": True,
        "max_layers": 4,
    })
    assert _names(space) == [f"s{j}.{g}" for j in range(3) for g in ("in", "length", "position")]
    x = [0.2, 1.0, 0.0, 0.3, 0.0, 0.0, 0.1, 0.0, 0.0]  # nothing included: the largest s1.in is kept
    assert _path(space.decode(x)) == [("expert0", 0, 1, None)]
    x = [0.9, 1.0, 0.0, 0.9, 1.0, 0.0, 0.9, 1.0, 0.0]  # 3 + 3 + 3 layers, capped at 4
    assert [e - s for _, s, e, _ in _path(space.decode(x))] == [3, 1]


# --- joint and sequential ---------------------------------------------------------------------


def _ps(family, **over) -> dict:
    return ps_data(family, **over)


@pytest.mark.parametrize("granularity", [{}, {"layers_per_group": 2, "filters": ["mlp"]}])
def test_joint_merged_layers_are_the_parameter_merge(untied_family, granularity):
    joint = JointSpace.model_validate({
        "parameter": _ps(untied_family, granularity=granularity),
        "layer": {"models": ["merged", str(untied_family["expert2"])], "repeats": 1},
    })
    assert joint.layer.num_layers == 3  # from the parameter part
    ps = joint.parameter
    rng = random.Random(1)
    u = [rng.random() for _ in range(ps.dimension)]
    on = {f"r0.l{i}.merged.in": 1.0 for i in range(3)}
    recipe = joint.decode(u + _at(joint.layer, on))
    merged = ps.decode(u)
    assert recipe.dtype == ps.dtype and recipe.seed == ps.seed
    assert [s.model_dump(exclude_none=True) for s in recipe.slices] == [
        Recipe.from_dict({"merge_method": "passthrough", "slices": [layer_of_recipe(merged, i)]}).slices[0].model_dump(exclude_none=True)
        for i in range(3)
    ]
    assert recipe.slices[1].merge_method == merged.merge_method
    assert recipe.slices[1].base_model == str(untied_family["base"])
    # The path merged layer by layer is the parameter-space merge, tensor for tensor.
    merger = InMemoryMerger({r: r for r in joint.source_models()})
    a, b = merger.merge(recipe), merger.merge(merged)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_layer_of_recipe_evaluates_gradients_and_global_parameters(untied_family):
    base, e0 = str(untied_family["base"]), str(untied_family["expert0"])
    recipe = Recipe.from_dict({
        "merge_method": "ties", "base_model": base,
        "models": [{"model": e0, "parameters": {"weight": [0.0, 1.0], "density": [{"filter": "mlp", "value": 0.5}]}}],
        "parameters": {"density": 0.9},
    })
    s = layer_of_recipe(recipe, 1, num_layers=3)
    assert s["sources"][0] == {"model": base, "layer_range": [1, 2]}
    assert s["sources"][1]["parameters"] == {"weight": 0.5, "density": [{"filter": "mlp", "value": 0.5}]}
    assert s["parameters"] == {"density": 0.9} and s["merge_method"] == "ties"
    with pytest.raises(SearchSpaceError, match="gradient"):
        layer_of_recipe(recipe, 1)
    path = Recipe.from_dict({"merge_method": "passthrough", "slices": [
        {"sources": [{"model": e0, "layer_range": [0, 2]}], "scale": 0.5},
        {"sources": [{"model": base, "layer_range": [2, 3]}, {"model": e0, "layer_range": [0, 1]}],
         "merge_method": "linear", "parameters": {"weight": [{"filter": "mlp", "value": 2.0}]}},
    ], "parameters": {"weight": 1.0}})
    assert layer_of_recipe(path, 1) == {
        "sources": [{"model": e0, "layer_range": [1, 2]}], "merge_method": "passthrough",
        "parameters": {"weight": 1.0}, "scale": 0.5,
    }
    last = layer_of_recipe(path, 2)
    assert [s["layer_range"] for s in last["sources"]] == [[2, 3], [0, 1]]
    # the slice's filter list falls through to the recipe's value, as in the plan
    assert last["parameters"] == {"weight": [{"filter": "mlp", "value": 2.0}, {"value": 1.0}]}
    with pytest.raises(SearchSpaceError, match="outside"):
        layer_of_recipe(path, 3)


def test_sequential_recipe_source(untied_family, tmp_path):
    # Stage 1: a parameter-space recipe, exported with references relative to another folder.
    ps = ParameterSpace.model_validate(_ps(untied_family, methods=["ties"], granularity={"layers_per_group": 2}))
    recipe = ps.decode([0.3] * ps.dimension)
    exported = tmp_path / "stage1" / "best"
    exported.mkdir(parents=True)
    family_dir = untied_family["base"].parent
    rel = recipe.to_yaml().replace(str(family_dir), "../../family")  # resolves from stage1/best only
    (exported / "evomerge_recipe.yaml").write_text(rel)
    (tmp_path / "family").symlink_to(family_dir)
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    space_path = _write(spaces / "seq.yaml", {
        "kind": "layer", "repeats": 1, "scale": {"low": 0.5, "high": 1.5},
        "models": [{"recipe": "../stage1/best/evomerge_recipe.yaml"}, str(untied_family["expert2"])],
    })
    space = load_space(space_path)
    assert isinstance(space, LayerSpace) and space.num_layers == 3  # read from the models
    sources = space.source_models()
    assert sources[0] == "../family/base" and str(untied_family["expert2"]) in sources  # rebased to the space's folder
    x = _at(space, {"r0.l0.best.in": 1, "r0.l1.best.in": 1, "r0.l2.best.in": 1, "scale[r0.l2.best]": 0.5})
    seq = space.decode(x)
    assert len(seq.slices) == 3 and seq.slices[2].scale == 1.0 and seq.slices[0].scale == 0.5
    assert seq.slices[1].merge_method == "ties" and seq.slices[1].sources[0].model == "../family/base"
    merger = InMemoryMerger({r: spaces / r if r.startswith("..") else r for r in sources})
    out, ref = merger.merge(seq), InMemoryMerger({str(p): p for p in untied_family.values()}).merge(recipe)
    k = "model.layers.2.mlp.down_proj.weight"
    assert torch.equal(out[k], ref[k])  # an unscaled layer is the stage-1 merge's layer
    k = "model.layers.0.self_attn.o_proj.weight"
    assert torch.allclose(out[k], 0.5 * ref[k])
    # Without resolving, the file is only validated; decoding needs the recipe.
    lazy = load_space(space_path, resolve=False)
    with pytest.raises(SearchSpaceError, match="num_layers is unknown"):
        lazy.decode([0.0] * 6)


def test_a_layer_recipe_of_another_depth_is_a_source(untied_family):
    # Stage 2 of a sequential search: a 4-layer path (itself searched) next to a 3-layer model.
    e0, e1 = str(untied_family["expert0"]), str(untied_family["expert1"])
    stage1 = {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": e0, "layer_range": [0, 2]}]},
        {"sources": [{"model": e1, "layer_range": [1, 3]}], "scale": 0.5},
    ]}
    space = LayerSpace.model_validate({"models": [{"recipe": stage1}, e1], "num_layers": 3,
                                       "last_layer_from": "recipe"})
    assert space.models[0].num_layers == 4
    assert len(_names(space)) == 4 + 3  # the recipe's 4 layers and the model's 3
    assert _names(space)[-1] == "r0.l3.recipe.in"
    r = space.decode(_at(space, {"r0.l0.expert1.in": 1, "r0.l2.recipe.in": 1}))
    assert [(s.sources[0].model, list(s.sources[0].layer_range), s.scale) for s in r.slices] == [
        (e1, [0, 1], None), (e1, [1, 2], 0.5), (e1, [2, 3], 0.5),  # the last is pinned: layer 3 of the recipe
    ]
    slices = SlicesSpace.model_validate({"models": [{"recipe": stage1}, e1], "num_layers": 3, "slices": 1})
    assert _names(slices) == ["s0.model", "s0.length", "s0.position"]
    assert _path(slices.decode([0.9, 1.0, 0.0])) == [("expert1", 0, 3, None)]  # 4 layers cut to the model's 3


# --- loading and validation -------------------------------------------------------------------


def test_load_space_dispatches_on_kind(untied_family, tmp_path):
    ps = load_space(_write(tmp_path / "ps.yaml", _ps(untied_family)))
    assert isinstance(ps, ParameterSpace) and ps.source_models()[0] == str(untied_family["base"])
    path = _write(tmp_path / "l.yaml", {"kind": "layer", "models": [str(untied_family["expert0"])]})
    assert load_space(path).num_layers == 3
    joint = load_space(_write(tmp_path / "j.yaml", {
        "kind": "joint", "parameter": _ps(untied_family, num_layers=None),
        "layer": {"kind": "slices", "models": ["merged", str(untied_family["expert2"])], "slices": 2},
    }))
    assert isinstance(joint.layer, SlicesSpace) and joint.layer.num_layers == 3
    assert joint.source_models() == [str(untied_family[k]) for k in ("base", "expert0", "expert1", "expert2")]
    assert joint.dimension == joint.parameter.dimension + 2 * 3  # per slice: model, length, position


@pytest.mark.parametrize("data, message", [
    ({"kind": "dfs"}, r"kind: Unknown search space kind 'dfs'.* Available: joint, layer, parameter, slices"),
    ({"kind": "layer", "models": ["A", "B"], "num_layers": 4, "first_layer_from": "C"},
     r"first_layer_from: 'C' is not one of models \(A, B\)"),
    ({"kind": "layer", "models": ["A"], "num_layers": 4, "layer_range": [2, 6]}, r"layer_range: \[2, 6\] must be"),
    ({"kind": "layer", "models": ["A"], "num_layers": 4, "first_layers": 2}, r"first_layers: pins layers of first_layer_from"),
    ({"kind": "layer", "models": ["A"], "num_layers": 4, "first_layer_from": "A", "first_layers": 5},
     r"first_layers: 5 is more than A's 4 layers"),
    ({"kind": "layer", "models": ["A", "merged"], "num_layers": 4}, r"models: 'merged' is the parameter-space merge"),
    ({"kind": "layer", "models": ["A", "A"], "num_layers": 4}, r"models: \['A'\] appear more than once"),
    ({"kind": "layer", "models": ["A"], "num_layers": 4, "scale": {"low": 2, "high": 1}}, r"scale: low \(2.0\) must be below"),
    ({"kind": "layer", "models": ["A"], "num_layers": 4, "repeats": 0}, r"repeats: Input should be greater than or equal to 1"),
    ({"kind": "layer", "models": [{"recipe": "none.yaml"}], "num_layers": 4}, r"models\.0: Cannot read recipe .*none\.yaml"),
    ({"kind": "layer", "models": [{"recipie": "x.yaml"}], "num_layers": 4}, r"models\.0\.recipie: unknown field"),
    ({"kind": "slices", "models": ["A"], "num_layers": 4, "slices": 2, "length": {"low": 1, "high": 5}},
     r"length: high \(5\) is above the sources' 4 layers"),
    ({"kind": "joint", "parameter": {"base_model": "B", "models": ["A"], "methods": ["ties"], "num_layers": 4,
      "parameters": {"weight": {"low": 0, "high": 1}, "density": {"low": 0, "high": 1}}},
      "layer": {"models": ["A"], "num_layers": 4}}, r"layer\.models: a joint space's path must use 'merged'"),
    ({"kind": "joint", "parameter": {"base_model": "B", "models": ["A"], "methods": ["ties"], "num_layers": 4,
      "parameters": {"weight": {"low": 0, "high": 1}, "density": {"low": 0, "high": 1}}},
      "layer": {"models": ["merged"], "seed": 3}}, r"layer\.seed: a joint recipe takes dtype and seed from `parameter:`"),
    ({"kind": "joint", "parameter": {"base_model": "B", "models": ["A"], "methods": ["ties"], "num_layers": 4,
      "parameters": {"weight": {"low": 0, "high": 1}, "density": {"low": 0, "high": 1}}},
      "layer": {"kind": "slices", "models": ["merged"], "slices": 1, "colour": 1}}, r"layer\.colour: unknown field"),
])
def test_invalid_spaces_name_the_file_and_field(tmp_path, data, message):
    path = _write(tmp_path / "bad.yaml", data)
    with pytest.raises(SearchSpaceError, match=r"bad\.yaml: .*" + message):
        load_space(path)


def test_sources_of_different_depths_are_refused(tmp_path, untied_family):
    from evomerge.testing import make_family

    deep = make_family(tmp_path / "deep", tied=False, n_experts=0, layers=4)["base"]
    path = _write(tmp_path / "l.yaml", {"kind": "layer", "models": [str(untied_family["expert0"]), str(deep)]})
    with pytest.raises(SearchSpaceError, match=r"models: every model must have num_layers = 3 layers, but .*: 4"):
        load_space(path)
    path = _write(tmp_path / "l2.yaml", {"kind": "layer", "models": ["no/such/model"]})
    with pytest.raises(SearchSpaceError, match="could not read the depth of 'no/such/model'.*set num_layers"):
        load_space(path)


def test_genes_encode_what_they_decode():
    from evomerge.search.space import Gene

    for gene, value in [(Gene("w", 0.0, 1.2), 0.9), (Gene("m", choices=("ties", "dare")), "dare"),
                        (Gene("n", 1, 4, integer=True), 3)]:
        assert gene.value(gene.encode(value)) == pytest.approx(value)
    with pytest.raises(ValueError, match="outside"):
        Gene("w", 0.0, 1.2).encode(2.0)
    with pytest.raises(ValueError, match="not one of"):
        Gene("m", choices=("ties",)).encode("slerp")
