"""Applying recipes: streamed to disk and in memory, layer space, errors before compute."""

from __future__ import annotations

import json

import pytest
import torch
from mergekit_ref import load_dir, run_mergekit

from evomerge.errors import CheckpointError, RecipeError
from evomerge.io import Checkpoint
from evomerge.merge.engine import merge_to_disk
from evomerge.merge.in_memory import InMemoryMerger
from evomerge.mergekit_compat import to_mergekit
from evomerge.recipe import Recipe


def dare(m, seed=None):
    return Recipe.from_dict(
        {
            "merge_method": "dare_ties",
            "base_model": str(m["base"]),
            "models": [
                {"model": str(m["expert0"]), "parameters": {"weight": 0.6, "density": 0.5}},
                {"model": str(m["expert1"]), "parameters": {"weight": 0.4, "density": [0.3, 0.9]}},
            ],
            **({"seed": seed} if seed is not None else {}),
        }
    )


def frankenmerge(m):
    return Recipe.from_dict(
        {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": str(m["base"]), "layer_range": [0, 2]}]},
                {
                    "merge_method": "ties",
                    "base_model": str(m["base"]),
                    "sources": [
                        {"model": str(m["base"]), "layer_range": [1, 3]},
                        {
                            "model": str(m["expert0"]),
                            "layer_range": [1, 3],
                            "parameters": {"weight": 1.0, "density": 0.5},
                        },
                        {
                            "model": str(m["expert1"]),
                            "layer_range": [1, 3],
                            "parameters": {"weight": 0.5, "density": 0.5},
                        },
                    ],
                },
                {"sources": [{"model": str(m["expert2"]), "layer_range": [2, 3]}], "scale": 0.5},
            ],
        }
    )


def test_same_seed_same_bytes_other_seed_differs(untied_family, tmp_path):
    a = load_dir(merge_to_disk(dare(untied_family, seed=1), tmp_path / "a").out)
    b = load_dir(merge_to_disk(dare(untied_family, seed=1), tmp_path / "b").out)
    c = load_dir(merge_to_disk(dare(untied_family, seed=2), tmp_path / "c").out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("make", [dare, frankenmerge])
def test_in_memory_equals_disk(family, make, tmp_path):
    recipe = make(family)
    on_disk = load_dir(merge_to_disk(recipe, tmp_path / "out").out)
    merger = InMemoryMerger({ref: ref for ref in recipe.referenced_models()})
    in_memory = merger.merge(recipe)
    assert sorted(in_memory) == sorted(on_disk)
    assert all(torch.equal(in_memory[k], on_disk[k]) for k in on_disk)


def test_in_memory_merges_into_a_resident_model_without_reallocating(untied_family):
    from transformers import LlamaConfig, LlamaForCausalLM

    recipe = dare(untied_family, seed=4)
    merger = InMemoryMerger({ref: ref for ref in recipe.referenced_models()})
    model = LlamaForCausalLM(LlamaConfig(**merger.output_config(recipe)))
    before = {k: v.data_ptr() for k, v in model.state_dict().items()}
    merger.merge(recipe, into=model)
    expected = merger.merge(recipe)
    state = model.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert {k: v.data_ptr() for k, v in state.items()} == before
    # A second candidate lands in the same buffers.
    merger.merge(dare(untied_family, seed=5), into=model)
    assert not torch.equal(
        model.state_dict()["model.layers.0.mlp.up_proj.weight"],
        expected["model.layers.0.mlp.up_proj.weight"],
    )


def test_layer_space_output_loads_in_transformers_and_runs(family, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merge_to_disk(frankenmerge(family), tmp_path / "out").out
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 5
    model = AutoModelForCausalLM.from_pretrained(out)
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 64) and torch.isfinite(logits).all()
    base = Checkpoint(family["base"])
    got = Checkpoint(out)
    # slice 1 copies base layers 0-1; slice 3 is expert2's layer 2 with its residual writers halved
    assert torch.equal(
        got.get("model.layers.1.mlp.up_proj.weight"), base.get("model.layers.1.mlp.up_proj.weight")
    )
    e2 = Checkpoint(family["expert2"])
    assert torch.allclose(
        got.get("model.layers.4.mlp.down_proj.weight"),
        0.5 * e2.get("model.layers.2.mlp.down_proj.weight"),
    )
    assert torch.equal(
        got.get("model.layers.4.mlp.up_proj.weight"), e2.get("model.layers.2.mlp.up_proj.weight")
    )


def test_exported_mergekit_yaml_reproduces_the_merge(untied_family, tmp_path):
    recipe = Recipe.from_dict(
        {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": str(untied_family["expert0"]), "layer_range": [0, 2]}]},
                {
                    "sources": [{"model": str(untied_family["expert1"]), "layer_range": [1, 3]}],
                    "scale": 0.25,
                },
            ],
        }
    )
    ours = load_dir(merge_to_disk(recipe, tmp_path / "ours").out)
    theirs = run_mergekit(to_mergekit(recipe), tmp_path / "mk")
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_incompatible_sources_are_reported_before_compute(untied_family, tmp_path):
    from tests_helpers import wide_model

    other = wide_model(tmp_path / "wide")
    recipe = Recipe.from_dict(
        {
            "merge_method": "linear",
            "models": [
                {"model": str(untied_family["base"]), "parameters": {"weight": 1}},
                {"model": str(other), "parameters": {"weight": 1}},
            ],
        }
    )
    with pytest.raises(CheckpointError) as info:
        merge_to_disk(recipe, tmp_path / "out")
    msg = str(info.value)
    assert "model.embed_tokens.weight" in msg and "hidden_size differs" in msg
    assert not (tmp_path / "out").exists()


def test_missing_required_parameter_names_model_and_tensor(untied_family, tmp_path):
    recipe = Recipe.from_dict(
        {
            "merge_method": "ties",
            "base_model": str(untied_family["base"]),
            "models": [
                {
                    "model": str(untied_family["expert0"]),
                    "parameters": {"weight": [{"filter": "mlp", "value": 1.0}]},
                }
            ],
        }
    )
    with pytest.raises(RecipeError, match="'weight' is required") as info:
        merge_to_disk(recipe, tmp_path / "out")
    assert "expert0" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_method_input_counts_are_checked(untied_family, tmp_path):
    recipe = Recipe.from_dict(
        {
            "merge_method": "slerp",
            "base_model": str(untied_family["base"]),
            "models": [{"model": str(untied_family[f"expert{i}"])} for i in range(2)],
            "parameters": {"t": 0.5},
        }
    )
    with pytest.raises(RecipeError, match="exactly 1 non-base"):
        merge_to_disk(recipe, tmp_path / "out")


def test_layer_range_past_the_model_is_refused(untied_family, tmp_path):
    recipe = Recipe.from_dict(
        {
            "merge_method": "passthrough",
            "slices": [{"sources": [{"model": str(untied_family["base"]), "layer_range": [2, 5]}]}],
        }
    )
    with pytest.raises(RecipeError, match="goes past its 3 layers"):
        merge_to_disk(recipe, tmp_path / "out")


def test_merging_into_a_model_of_another_shape_is_refused(untied_family):
    from transformers import LlamaConfig, LlamaForCausalLM

    recipe = frankenmerge(untied_family)  # 5 layers
    merger = InMemoryMerger({ref: ref for ref in recipe.referenced_models()})
    small = LlamaForCausalLM(
        LlamaConfig(**{**merger.output_config(recipe), "num_hidden_layers": 3})
    )
    with pytest.raises(CheckpointError, match="no such tensor"):
        merger.merge(recipe, into=small)


def test_depth_of_a_multimodal_config_is_read_and_written_under_text_config():
    from evomerge.io import StateDictSource
    from evomerge.merge.plan import build_plan

    config = {"text_config": {"num_hidden_layers": 3, "hidden_size": 2}, "vision_config": {"num_hidden_layers": 7}}
    tensors = {f"model.layers.{i}.mlp.weight": torch.full((2, 2), float(i)) for i in range(3)}
    src = StateDictSource("m", tensors | {"model.embed_tokens.weight": torch.zeros(4, 2)}, config)
    recipe = Recipe.from_dict(
        {"merge_method": "passthrough", "slices": [{"sources": [{"model": "m", "layer_range": [1, 3]}]}]}
    )
    plan = build_plan(recipe, {"m": src})
    out = plan.output_config({"m": src})
    assert plan.num_layers == 2
    assert out["text_config"] == {"num_hidden_layers": 2, "hidden_size": 2}
    assert "num_hidden_layers" not in out and config["text_config"]["num_hidden_layers"] == 3
