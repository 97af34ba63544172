"""A merge demo on tiny generated models (the main job is the quickstart search: ``make quickstart``).

Generates a base and three experts (random task vectors; no download), merges
them with three recipes from ``runs/demo/`` - TIES in parameter space, DARE-TIES
with a per-layer density gradient, and a layer-space path that stacks and
scales slices - checks that each result loads in transformers and runs, and
prints what was made.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.table import Table

from evomerge.io.hf import load_model
from evomerge.merge.engine import merge_to_disk
from evomerge.recipe import Recipe
from evomerge.testing import make_family

RECIPES = Path(__file__).resolve().parents[1] / "runs" / "demo"


def run(out: Path, console: Console) -> None:
    models = out / "models"
    if not (models / "base" / "model.safetensors").exists():
        make_family(models, tied=False, hidden=64, layers=4, intermediate=128, vocab=128)
    table = Table(title="evomerge merge demo")
    for col in ("recipe", "method", "hash", "layers", "tensors", "seconds", "logits finite"):
        table.add_column(col)
    for path in sorted(RECIPES.glob("*.yaml")):
        text = path.read_text().replace("MODELS", str(models))
        recipe = Recipe.from_dict(yaml.safe_load(text), str(path))
        start = time.perf_counter()
        result = merge_to_disk(recipe, out / "merged" / path.stem, force=True)
        seconds = time.perf_counter() - start
        model = load_model(result.out)
        logits = model(torch.tensor([[1, 5, 9, 3]])).logits
        table.add_row(
            path.stem,
            recipe.merge_method,
            recipe.content_hash()[:12],
            str(model.config.num_hidden_layers),
            str(result.tensors),
            f"{seconds:.2f}",
            str(bool(torch.isfinite(logits).all())),
        )
    console.print(table)
    console.print(f"merged models are in {out / 'merged'}")
