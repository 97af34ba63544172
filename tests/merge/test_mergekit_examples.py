"""mergekit's own example configs (examples/*.yml of arcee-ai/mergekit) run unchanged but for the
model names: each names Hub models, mapped onto tiny local models of the same architecture
(tests/data/mergekit_examples/, one YAML per example, the original named at the top).

Each example runs as written (its half-precision `dtype`: mergekit's arithmetic in that dtype)
and must equal mergekit's result tensor for tensor; TIES examples may differ only at entries
where a model's rounded delta is tied at its density threshold (evomerge keeps every tied entry,
mergekit picks among them by sort order; see the README). In float32 (the example with
`dtype: float32`) they agree to 1e-6."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from mergekit_ref import at_thresholds, differing, load_dir, run_mergekit

from evomerge.merge.engine import merge_to_disk
from evomerge.recipe import Recipe
from evomerge.testing import llama_config, llama_state, save_model

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "mergekit_examples"
# The tiny stand-ins: name -> (family, seed). A family shares one shape; its models are its
# base plus small random task vectors.
LLAMA_40 = {"llama2": 0, "orca_mini": 1, "platypus2": 2, "wizardlm": 3, "wizardmath": 4}
MISTRAL = {"mistral_base": 0, "mistral_instruct": 1, "biomistral": 2}
PAIR = {"model_a": 0, "model_b": 1}


def _family(root: Path, names: dict[str, int], config: dict, seed: int) -> None:
    base = llama_state(config, torch.Generator().manual_seed(seed))
    for name, k in names.items():
        gen = torch.Generator().manual_seed(seed * 100 + k)
        state = {n: t + (0.02 * torch.randn(t.shape, generator=gen) if k else 0) for n, t in base.items()}
        save_model(root / name, state, config)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mergekit-examples")
    # Llama-2 13B has 40 layers: the examples' layer ranges need them all.
    _family(root, LLAMA_40, llama_config(tied=False, hidden=16, layers=40, intermediate=24, vocab=32), 1)
    mistral = {**llama_config(tied=False, layers=4), "architectures": ["MistralForCausalLM"],
               "model_type": "mistral", "sliding_window": None}
    _family(root, MISTRAL, mistral, 2)
    _family(root, PAIR, llama_config(tied=True), 3)
    return root


def _absolute(config: dict, root: Path) -> dict:
    """The config with every model name made the absolute path of its tiny model (for mergekit)."""
    def fix(entry):
        if isinstance(entry, dict):
            return {k: (str(root / v) if k in ("model", "base_model") else fix(v)) for k, v in entry.items()}
        if isinstance(entry, list):
            return [fix(e) for e in entry]
        return entry
    return fix(config)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yml")))
def test_example_matches_mergekit(example, tiny_models, tmp_path):
    # evomerge as `evomerge merge EXAMPLE.yml` runs it: model names resolved next to the recipe.
    recipe_path = shutil.copy(EXAMPLES / example, tiny_models / example)
    recipe = Recipe.load(recipe_path)
    as_written = load_dir(merge_to_disk(recipe, tmp_path / "ev16", search_dirs=[tiny_models]).out)
    assert {str(t.dtype) for t in as_written.values()} == {f"torch.{recipe.dtype}"}
    written = _absolute(yaml.safe_load((EXAMPLES / example).read_text()), tiny_models)
    tied = (at_thresholds(Recipe.from_dict(written), getattr(torch, recipe.dtype), "magnitude")
            if recipe.merge_method == "ties" else {})
    for name, d in differing(as_written, run_mergekit(written, tmp_path / "mk16")).items():
        outside = d & ~tied.get(name, torch.zeros_like(d))
        assert not outside.any(), f"{example} as written: {name}: {int(outside.sum())} entries differ"

    fp32 = Recipe.from_dict({**recipe.to_dict(), "dtype": "float32"})
    got = load_dir(merge_to_disk(fp32, tmp_path / "ev", search_dirs=[tiny_models]).out)
    config = _absolute({**yaml.safe_load((EXAMPLES / example).read_text()), "dtype": "float32"},
                       tiny_models)
    expected = run_mergekit(config, tmp_path / "mk")

    assert sorted(got) == sorted(expected)
    for name, ref in expected.items():
        assert got[name].dtype == ref.dtype and got[name].shape == ref.shape, name
        diff = (got[name].double() - ref.double()).abs().max().item()
        assert diff <= 1e-6, f"{example}: {name} differs by {diff}"


def test_every_example_is_here():
    # The six configs of mergekit's examples/ at the fetched commit (a6e4028, 2026-06-17).
    names = {p.stem for p in EXAMPLES.glob("*.yml")}
    assert names == {"arcee_fusion", "bio-merge", "gradient-slerp", "linear",
                     "orcamini-platy-44layer", "ties"}
    for p in EXAMPLES.glob("*.yml"):
        assert p.read_text().startswith(f"# mergekit examples/{p.name} (arcee-ai/mergekit)")
