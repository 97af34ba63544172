"""A method that refuses the values of a tensor mid-merge names the tensor, and the CLI exits 2."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import RecipeError
from evomerge.merge.in_memory import InMemoryMerger
from evomerge.recipe import Recipe
from evomerge.testing.models import llama_config, llama_state, save_model


@pytest.fixture(scope="module")
def cancelling(tmp_path_factory):
    """Three models whose weighted mean direction is zero in every tensor: a, -a, a at 1, 2, 1."""
    root = tmp_path_factory.mktemp("cancel")
    config = llama_config(tied=False)
    a = llama_state(config, torch.Generator().manual_seed(0))
    return {
        "a": save_model(root / "a", a, config),
        "neg": save_model(root / "neg", {k: -v for k, v in a.items()}, config),
        "a2": save_model(root / "a2", a, config),
    }


def _recipe(models) -> Recipe:
    return Recipe.from_dict({
        "merge_method": "multislerp", "dtype": "float32",
        "models": [{"model": str(models[n]), "parameters": {"weight": w}} for n, w in (("a", 1), ("neg", 2), ("a2", 1))],
    }, "test")


def test_a_refusal_mid_merge_names_the_method_and_tensor(cancelling):
    with pytest.raises(RecipeError, match=r"multislerp could not merge tensor model\.\S+ \(.*a, .*neg, .*a2\): "
                                          r"multislerp: the inputs' weighted mean direction is zero"):
        InMemoryMerger({str(p): p for p in cancelling.values()}).merge(_recipe(cancelling))


def test_the_cli_exits_2_with_that_message_and_writes_nothing(cancelling, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_recipe(cancelling).to_yaml())
    res = CliRunner().invoke(app, ["merge", str(recipe), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert "multislerp could not merge tensor model." in res.output
    assert not (tmp_path / "out").exists()
