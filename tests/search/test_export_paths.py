"""`evomerge export` writes absolute model paths, so its two recipe files merge from any directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from evomerge.merge.engine import merge_to_disk
from evomerge.merge.in_memory import InMemoryMerger
from evomerge.recipe import Recipe
from evomerge.run import run_search
from evomerge.search.export import export_trial
from evomerge.search.rundir import load_run
from evomerge.testing import mini_zoo_config, run_mergekit
from evomerge.zoo.build import build_zoo


def _model_refs(data) -> list[str]:
    """Every ``model:`` / ``base_model:`` value in a recipe or mergekit config, at any depth."""
    if isinstance(data, dict):
        own = [v for k, v in data.items() if k in ("model", "base_model")]
        return own + [r for v in data.values() for r in _model_refs(v)]
    if isinstance(data, list):
        return [r for v in data for r in _model_refs(v)]
    return []


def _tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), rtol=1e-5, atol=1e-6), name


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_exported_recipes_use_absolute_paths_and_merge_from_anywhere(dtype, tmp_path, monkeypatch):
    build_zoo(tmp_path / "zoo", mini_zoo_config(), log=lambda s: None)
    if dtype:  # sources stored in the run's dtype, as bf16 checkpoints from the Hub are
        for f in (tmp_path / "zoo").glob("*/*.safetensors"):
            save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(f)).items()}, str(f),
                      metadata={"format": "pt"})
    (tmp_path / "spaces").mkdir()
    space = {  # relative to the space file's folder, as a user writes them
        "base_model": "../zoo/base",
        "models": ["../zoo/add", "../zoo/rev"],
        "methods": ["task_arithmetic"],  # deterministic, and the same in mergekit
        "parameters": {"weight": {"low": 0.2, "high": 1.0}},
    }
    (tmp_path / "spaces" / "space.yaml").write_text(yaml.safe_dump(space))
    run = {
        "space": "spaces/space.yaml",
        "objectives": [{"task": "addition"}],
        "optimizer": {"name": "random"},
        "budget": {"trials": 2},
        "fidelity": 4,
        "tracking": {"enabled": False},
        **({"dtype": dtype} if dtype else {}),  # bf16 sources and resident model in the workers
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    run_dir = tmp_path / "run"
    run_search(tmp_path / "run.yaml", run_dir, log=lambda s: None)

    def ledger_hashes() -> list[tuple[int, str, str]]:
        return [(t.trial, t.recipe_hash, t.recipe) for t in load_run(run_dir)[2]]

    before = ledger_hashes()
    assert len(before) == 2
    export = tmp_path / "export"
    number, _ = export_trial(run_dir, export)

    # (a) every model reference in both files is absolute and exists
    zoo = (tmp_path / "zoo").resolve()
    expected = {str(zoo / "base"), str(zoo / "add"), str(zoo / "rev")}
    for name in ("mergekit_config.yml", "evomerge_recipe.yaml"):
        refs = _model_refs(yaml.safe_load((export / name).read_text()))
        assert set(refs) == expected, name
        assert all(Path(r).is_absolute() and Path(r).is_dir() for r in refs), name
    exported = _tensors(export)

    # (b) mergekit's own merge, run from inside the export directory, gives the same tensors
    config = yaml.safe_load((export / "mergekit_config.yml").read_text())
    monkeypatch.chdir(export)
    _assert_same(run_mergekit(config, tmp_path / "by_mergekit"), exported)
    if dtype:
        # The exported model is the candidate a worker scored: the recipe (computing in float32)
        # merged into the run's bf16 resident model, bit for bit, and so is mergekit's.
        stored = Recipe.from_yaml(next(r for n, _, r in before if n == number))
        sources = {m: str(zoo / Path(m).name) for m in stored.referenced_models()}
        worker = InMemoryMerger(sources, dtype=torch.bfloat16)
        scored = worker.merge(stored, into={k: torch.zeros_like(v) for k, v in exported.items()})
        by_mergekit = _tensors(tmp_path / "by_mergekit")
        for name, t in exported.items():
            assert t.dtype == torch.bfloat16, name
            assert torch.equal(t, scored[name]) and torch.equal(t, by_mergekit[name]), name

    # (c) the exported evomerge recipe merges from another directory, with no search dirs
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    merge_to_disk(Recipe.load(export / "evomerge_recipe.yaml"), tmp_path / "by_evomerge")
    _assert_same(_tensors(tmp_path / "by_evomerge"), exported)

    # (d) the ledger is untouched: same hashes, recipes still as searched (relative paths)
    assert ledger_hashes() == before
    chosen = next(r for r in before if r[0] == number)
    stored = Recipe.from_yaml(chosen[2])
    assert stored.content_hash() == chosen[1]
    assert "../zoo/add" in stored.referenced_models()
    assert Recipe.load(export / "evomerge_recipe.yaml").content_hash() != chosen[1]
