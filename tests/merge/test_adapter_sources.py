"""``MODEL+ADAPTER`` sources: merges equal mergekit 0.1.5's (which applies the adapter with PEFT's
``merge_and_unload`` and merges the dense result), paths and Hub ids alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evomerge.merge.engine import merge_to_disk
from evomerge.recipe import Recipe
from evomerge.testing import make_family, run_mergekit
from evomerge.testing.adapters import make_lora_adapter
from evomerge.testing.hub_cache import put_in_cache


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> dict[str, Path]:
    """An untied family (base, two experts) and two adapters of the base."""
    root = tmp_path_factory.mktemp("adapted")
    out = make_family(root, tied=False, n_experts=2, seed=4)
    out["lora1"] = make_lora_adapter(out["base"], root / "lora1", seed=1)
    out["lora2"] = make_lora_adapter(out["base"], root / "lora2", seed=2, r=2, lora_alpha=16,
                                     use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"])
    return out


def _recipes(ref) -> dict[str, dict]:
    return {
        "linear": {"merge_method": "linear", "dtype": "float32", "models": [
            {"model": ref("expert0"), "parameters": {"weight": 0.4}},
            {"model": f"{ref('base')}+{ref('lora1')}", "parameters": {"weight": 0.6}}]},
        "ties": {"merge_method": "ties", "base_model": ref("base"), "dtype": "float32", "models": [
            {"model": ref("expert0"), "parameters": {"weight": 0.5, "density": 0.6}},
            {"model": f"{ref('base')}+{ref('lora1')}", "parameters": {"weight": 0.7, "density": 0.5}},
            {"model": f"{ref('base')}+{ref('lora2')}", "parameters": {"weight": 0.3, "density": 0.7}}]},
    }


def _tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_adapter_sources_equal_mergekits_merge(lm, tmp_path, method):
    config = _recipes(lambda m: str(lm[m]))[method]
    expected = run_mergekit(config, tmp_path / "mk", lora_cache=tmp_path / "lora-cache")
    got = _tensors(merge_to_disk(Recipe.from_dict(config), tmp_path / "ev").out)
    assert sorted(got) == sorted(expected)
    for name, ref in expected.items():
        assert torch.equal(got[name], ref), name
    base = load_file(str(lm["base"] / "model.safetensors"))
    adapted = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(got[adapted], base[adapted])  # the adapters took part


def test_hub_id_adapters_merge_as_their_directories_and_are_pinned(lm, tmp_path, hub_cache):
    commits = {m: put_in_cache(hub_cache, f"org/{m}", lm[m]) for m in ("base", "expert0", "lora1", "lora2")}
    hub = merge_to_disk(Recipe.from_dict(_recipes(lambda m: f"org/{m}")["ties"]), tmp_path / "hub").out
    local = merge_to_disk(Recipe.from_dict(_recipes(lambda m: str(lm[m]))["ties"]), tmp_path / "local").out
    a, b = _tensors(hub), _tensors(local)
    assert all(torch.equal(a[k], b[k]) for k in b)
    written = Recipe.load(hub / "evomerge_recipe.yaml")
    assert f"org/base@{commits['base']}+org/lora1@{commits['lora1']}" in written.referenced_models()
    assert "hf-cache" not in (hub / "mergekit_config.yml").read_text()  # ids, never cache paths


def test_the_adapter_keeps_the_base_tokenizer_and_config(lm, tmp_path):
    out = merge_to_disk(Recipe.from_dict(_recipes(lambda m: str(lm[m]))["linear"]), tmp_path / "ev").out
    assert (out / "tokenizer_config.json").read_text() == (lm["base"] / "tokenizer_config.json").read_text()


def test_a_worker_keeps_adapters_as_factors_and_merges_the_same_bytes(lm):
    """The in-memory merger holds ``base+adapter`` sources as factors over the resident base: the
    candidates are bitwise those merged from dense adapted copies, for less resident memory."""
    from evomerge.io.sources import open_source, resolve_sources
    from evomerge.merge.in_memory import InMemoryMerger
    from evomerge.merge.low_rank import LowRankSource

    recipe = Recipe.from_dict(_recipes(lambda m: str(lm[m]))["ties"])
    dirs = resolve_sources(recipe.referenced_models())
    low_rank = InMemoryMerger(dirs)
    dense = InMemoryMerger({ref: open_source(ref, dirs) for ref in dirs})  # opened: held dense
    adapters = [r for r in dirs if "+" in r]
    assert all(isinstance(low_rank.sources[r], LowRankSource) for r in adapters)
    # One adapter alone: its untouched tensors are the base's own resident ones; the next
    # candidate then merges into what the first one wrote, which must never be the base.
    alone = Recipe.from_dict({"merge_method": "passthrough", "dtype": "float32", "models": [
        {"model": f"{lm['base']}+{lm['lora1']}"}]})
    a, b = low_rank.merge(alone), dense.merge(alone)
    a, b = low_rank.merge(recipe, into=a), dense.merge(recipe, into=b)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    on_disk = load_file(str(lm["base"] / "model.safetensors"))
    resident = low_rank.sources[str(lm["base"])].tensors
    assert all(torch.equal(resident[k], on_disk[k]) for k in on_disk)  # the base untouched

    def held(merger):
        return sum(t.numel() * t.element_size() for t in {id(t): t for s in merger.sources.values()
                                                           for t in s.resident_tensors()}.values())

    base = sum(t.numel() * t.element_size() for t in low_rank.sources[str(lm["base"])].resident_tensors())
    assert held(low_rank) < held(dense) - 1.5 * base  # two adapters: far less than two more bases
