from __future__ import annotations

import random

import pytest
import torch
import yaml
from space_helpers import ps_data
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.merge.in_memory import InMemoryMerger
from evomerge.search.space import ParameterSpace, SearchSpaceError


def _space(family, **over) -> ParameterSpace:
    data = ps_data(family, **over)
    return ParameterSpace.model_validate(data)


def test_gene_count_follows_granularity(untied_family):
    assert _space(untied_family).dimension == 1 + 2 * 2  # method + 2 models x (weight, density)
    grouped = _space(untied_family, granularity={"layers_per_group": 2, "filters": ["self_attn", "mlp"]})
    assert grouped.groups() == [(0, 2), (2, 3)]
    assert grouped.dimension == 1 + 2 * 2 * 2 * 3  # groups x models x params x slots


def test_decode_scales_ranges_and_picks_methods(untied_family):
    space = _space(untied_family)
    names = [g.name for g in space.genes()]
    x = [0.0] * space.dimension
    x[names.index("expert0.weight")] = 0.25
    x[names.index("expert1.density")] = 1.0
    r = space.decode(x)
    assert r.merge_method == "task_arithmetic"
    assert r.models[0].parameters == {"weight": 0.25}  # TA takes no density
    x[names.index("method")] = 0.99
    r = space.decode(x)
    assert r.merge_method == "ties"
    assert r.models[1].parameters == {"weight": 0.0, "density": 1.0}
    # Same point, same recipe; out-of-cube values are clipped, not extrapolated.
    assert space.decode(x).content_hash() == r.content_hash()
    x[names.index("expert0.weight")] = 7.0
    assert space.decode(x).models[0].parameters["weight"] == 1.0


def test_every_decoded_point_merges(untied_family):
    space = _space(untied_family, granularity={"layers_per_group": 2, "filters": ["self_attn"]})
    merger = InMemoryMerger({str(p): p for p in untied_family.values()})
    rng = random.Random(0)
    for _ in range(5):
        recipe = space.decode([rng.random() for _ in range(space.dimension)])
        out = merger.merge(recipe)
        assert all(torch.isfinite(t).all() for t in out.values())
        assert out["model.embed_tokens.weight"].shape[0] > 0


def test_per_group_values_reach_the_right_layers(untied_family):
    space = _space(untied_family, methods=["linear"], parameters={"weight": {"low": 0.0, "high": 1.0}},
                   granularity={"layers_per_group": 1})
    names = [g.name for g in space.genes()]
    x = [0.0] * space.dimension
    x[names.index("expert0.weight[g1]")] = 1.0  # layer 1 is expert0 alone
    x[names.index("expert1.weight[g0]")] = 1.0  # layer 0 is expert1 alone
    x[names.index("expert0.weight[g2]")] = 1.0
    out = InMemoryMerger({str(p): p for p in untied_family.values()}).merge(space.decode(x))
    from safetensors.torch import load_file

    e0 = load_file(str(untied_family["expert0"] / "model.safetensors"))
    e1 = load_file(str(untied_family["expert1"] / "model.safetensors"))
    k = "model.layers.{}.mlp.down_proj.weight"
    assert torch.equal(out[k.format(1)], e0[k.format(1)])
    assert torch.equal(out[k.format(0)], e1[k.format(0)])


def test_invalid_spaces_name_the_problem(untied_family, tmp_path):
    with pytest.raises(ValueError, match=r"none of the methods \['linear'\] takes a parameter 'density'"):
        _space(untied_family, methods=["linear"])
    with pytest.raises(ValueError, match="'slerp' merges exactly 1 model"):
        _space(untied_family, methods=["slerp"], parameters={"t": {"low": 0, "high": 1}})
    with pytest.raises(ValueError, match="low .* must be below high"):
        _space(untied_family, parameters={"weight": {"low": 1.0, "high": 0.0}})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base_model": str(untied_family["base"]), "models": ["x"], "methods": ["ties"],
                                    "parameters": {"weight": {"low": 0, "high": 1}}, "colour": 1}))
    with pytest.raises(SearchSpaceError, match=r"s\.yaml.*colour"):
        ParameterSpace.load(path)


def test_num_layers_is_read_from_the_base_model(untied_family, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "base_model": str(untied_family["base"]), "models": [str(untied_family["expert0"])],
        "methods": ["ties"], "parameters": {"weight": {"low": 0, "high": 1}, "density": {"low": 0.1, "high": 1}},
        "granularity": {"layers_per_group": 2},
    }))
    space = ParameterSpace.load(path)
    assert space.num_layers == 3 and len(space.groups()) == 2


def test_space_show_cli(untied_family, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "base_model": str(untied_family["base"]), "models": [str(untied_family["expert0"])],
        "methods": ["dare_ties"], "parameters": {"weight": {"low": 0, "high": 1}, "density": {"low": 0.1, "high": 1}},
    }))
    res = CliRunner().invoke(app, ["space", "show", str(path), "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "expert0.density" in res.output and "merge_method: dare_ties" in res.output
    res = CliRunner().invoke(app, ["space", "show", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2


def test_shipped_spaces_load_and_decode():
    from pathlib import Path

    from evomerge.search.space import JointSpace, LayerSpace, RecipeSource, SlicesSpace, load_space

    spaces = {p.name: p for p in (Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml")}
    kinds = {"zoo_ps.yaml": ParameterSpace, "zoo_dfs.yaml": LayerSpace, "zoo_slices.yaml": SlicesSpace,
             "zoo_joint.yaml": JointSpace, "zoo_seq.yaml": LayerSpace, "llama3_8b_ps.yaml": ParameterSpace,
             "mistral_7b_dfs.yaml": LayerSpace, "qwen2_7b_joint.yaml": JointSpace}
    assert kinds.keys() <= spaces.keys()
    for name, path in sorted(spaces.items()):
        space = load_space(path, resolve=False)  # validates without the models
        assert isinstance(space, kinds.get(name, object)), name
        names = [g.name for g in space.genes()]
        assert len(set(names)) == len(names), name
        if name.startswith("zoo_"):
            assert space.dimension < 40, name
        if any(isinstance(e, RecipeSource) for e in getattr(space, "models", [])):
            continue  # the exported recipe it names is read when the space is loaded with resolve=True
        refs = space.source_models()
        for u in (0.0, 0.5, 1.0):
            recipe = space.decode([u] * space.dimension)
            assert set(recipe.referenced_models()) <= set(refs), name


def test_space_show_cli_for_a_layer_space(untied_family, tmp_path):
    path = tmp_path / "l.yaml"
    path.write_text(yaml.safe_dump({
        "kind": "layer", "models": [str(untied_family["expert0"]), str(untied_family["expert1"])],
        "repeats": 2, "scale": {"low": 0.5, "high": 1.5},
    }))
    res = CliRunner().invoke(app, ["space", "show", str(path), "--seed", "0"])
    assert res.exit_code == 0, res.output
    assert "layer space" in res.output and "scale[r1.l2.expert1]" in res.output
    assert "merge_method: passthrough" in res.output and "layer_range" in res.output
    path.write_text(yaml.safe_dump({"kind": "layer", "models": ["merged"], "num_layers": 2}))
    res = CliRunner().invoke(app, ["space", "show", str(path)])
    assert res.exit_code == 2 and "kind: joint" in res.output
