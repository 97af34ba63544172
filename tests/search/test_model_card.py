"""An exported model's README.md is a model card the Hub reads: parsed here with huggingface_hub's
own card classes, field by field, and it names no absolute local path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from evomerge.recipe import Recipe
from evomerge.search.model_card import CardFacts, model_card, sources

BASE, ADD, LORA = "a" * 40, "b" * 40, "c" * 40


def _facts(recipe: Recipe, **changes) -> CardFacts:
    facts = {
        "model_name": "merged", "run_name": "my-run", "trial": 7, "optimizer": "cmaes", "seed": 3,
        "split": "search", "fidelity": 32, "fitness": 0.4, "recipe": recipe, "mergekit": True,
        "objectives": {"addition/exact_match": 0.625, "zoo_text/perplexity": 11.5},
        "scores": {"addition/exact_match": 0.625, "zoo_text/perplexity": 11.5, "cost/params": 2e6},
    }
    return CardFacts(**{**facts, **changes})


def _recipe(tmp_path: Path) -> Recipe:
    """As an export writes it: Hub ids pinned, local directories absolute, an adapter of each kind."""
    for d in ("zoo/rev", "zoo/rev-lora"):
        (tmp_path / d).mkdir(parents=True)
    return Recipe.from_dict({
        "merge_method": "task_arithmetic", "base_model": f"org/base@{BASE}",
        "models": [
            {"model": f"org/add@{ADD}", "parameters": {"weight": 0.5}},
            {"model": str(tmp_path / "zoo/rev"), "parameters": {"weight": 0.3}},
            {"model": f"org/base@{BASE}+org/lora@{LORA}", "parameters": {"weight": 0.2}},
            {"model": f"org/base@{BASE}+{tmp_path / 'zoo/rev-lora'}", "parameters": {"weight": 0.1}},
        ],
    })


def _parse(text: str, tmp_path: Path) -> ModelCard:
    (tmp_path / "README.md").write_text(text)
    return ModelCard.load(tmp_path / "README.md")


def test_the_card_carries_the_hub_metadata_of_a_merge(tmp_path):
    text = model_card(_facts(_recipe(tmp_path)))
    card = _parse(text, tmp_path)
    data = card.data.to_dict()
    # Hub sources by repo id (the Hub's base_model takes no revision), in first-mention order, once.
    assert data["base_model"] == ["org/base", "org/add", "org/lora"]
    assert data["base_model_relation"] == "merge"
    assert data["tags"] == ["merge", "evomerge", "mergekit"]
    assert data["library_name"] == "transformers"
    results = {r.metric_name: r for r in card.data.eval_results}
    assert set(results) == {"addition/exact_match", "zoo_text/perplexity"}  # objectives, not cost/params
    em = results["addition/exact_match"]
    assert (em.task_type, em.task_name, em.dataset_type, em.dataset_name, em.dataset_split) == (
        "text-generation", "addition", "addition", "addition", "search")
    assert (em.metric_type, em.metric_value, em.metric_args) == ("exact_match", 0.625, {"fidelity": 32})
    assert results["zoo_text/perplexity"].metric_value == 11.5
    assert card.data.model_name == "merged"
    # The pinned commits are in the text; local sources by directory name, no absolute path.
    for repo, commit in (("org/base", BASE), ("org/add", ADD), ("org/lora", LORA)):
        assert f"[{repo}](https://huggingface.co/{repo})" in text and commit in text
    assert "`rev`: a local directory" in text and "`rev-lora`: a local directory" in text
    assert str(tmp_path) not in text
    shown = yaml.safe_load(text.split("```yaml\n")[1].split("```")[0])
    assert [m["model"] for m in shown["models"]] == [
        f"org/add@{ADD}", "rev", f"org/base@{BASE}+org/lora@{LORA}", f"org/base@{BASE}+rev-lora"]
    assert "trial 7" in text and "`my-run`" in text and "| cost/params | 2e+06 |" in text


@pytest.mark.parametrize("fidelity, args", [(None, {"fidelity": "all"}), (8, {"fidelity": 8})])
def test_local_sources_only_and_no_mergekit(tmp_path, fidelity, args):
    (tmp_path / "base").mkdir()
    (tmp_path / "add").mkdir()
    recipe = Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": str(tmp_path / "base"),
                               "models": [{"model": str(tmp_path / "add"), "parameters": {"weight": 1.0}}]})
    text = model_card(_facts(recipe, mergekit=False, fidelity=fidelity))
    data = _parse(text, tmp_path).data.to_dict()
    # No Hub source: nothing for base_model (a local path is not a Hub id), nor for its relation.
    assert "base_model" not in data and "base_model_relation" not in data
    assert data["tags"] == ["merge", "evomerge"]
    assert all(r.metric_args == args for r in _parse(text, tmp_path).data.eval_results)
    assert "`base` (the base model): a local directory" in text and str(tmp_path) not in text
    assert "no `mergekit_config.yml`" in text
    assert [s.name for s in sources(recipe)] == ["base", "add"]


def test_an_exported_trial_of_a_hub_search_has_a_hub_card(tmp_path, hub_cache):
    """A search over two Hub models (from the local cache, offline) and a local one, exported."""
    from evomerge.run import run_search
    from evomerge.search.export import export_trial
    from evomerge.testing import tiny_char_lm
    from evomerge.testing.hub_cache import put_in_cache

    zoo = tmp_path / "zoo"
    for seed, name in enumerate(("base", "add", "rev")):  # random models: the card, not the merge, is tested
        model, tokenizer = tiny_char_lm(seed=seed, layers=1)
        model.save_pretrained(zoo / name)
        tokenizer.save_pretrained(zoo / name)
    commits = {repo: put_in_cache(hub_cache, repo, zoo / name) for repo, name in (("org/base", "base"), ("org/add", "add"))}
    space = {"base_model": "org/base", "models": ["org/add", str(zoo / "rev")],
             "methods": ["task_arithmetic"], "parameters": {"weight": {"low": 0.2, "high": 1.0}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    run = {"space": "space.yaml", "objectives": [{"task": "addition"}, {"task": "cost", "metric": "params"}],
           "optimizer": {"name": "random"}, "budget": {"trials": 2}, "fidelity": 4, "tracking": {"enabled": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    run_search(tmp_path / "run.yaml", tmp_path / "my-run", log=lambda s: None)
    number, out = export_trial(tmp_path / "my-run", tmp_path / "exported")

    text = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == ["org/base", "org/add"] and data["base_model_relation"] == "merge"
    assert data["tags"] == ["merge", "evomerge", "mergekit"] and data["library_name"] == "transformers"
    assert card.data.model_name == "exported"
    scored = {r.metric_name: (r.dataset_split, r.metric_value, r.metric_args) for r in card.data.eval_results}
    assert set(scored) == {"addition/exact_match", "cost/params"}
    assert scored["addition/exact_match"][0] == "search" and scored["addition/exact_match"][2] == {"fidelity": 4}
    assert f"trial {number}" in text and "`my-run`" in text and "`rev`: a local directory" in text
    assert all(commits[repo] in text for repo in commits)
    assert str(tmp_path) not in text and str(tmp_path.resolve()) not in text and str(hub_cache) not in text
    # The recipe files keep what they need to merge from anywhere: the local path, the pinned ids.
    exported = Recipe.load(out / "evomerge_recipe.yaml").referenced_models()
    assert set(exported) == {f"org/base@{commits['org/base']}", f"org/add@{commits['org/add']}",
                             str((zoo / "rev").resolve())}
