"""The zoo's accuracy table: base, experts and a few merges on every skill's test split.

It shows what the zoo is for: experts specialise, the equal-weight average
loses most of what they learned, and a merge with well-chosen weights beats
every single expert on the mean over skills. The "searched" rows pick a recipe
on the ``search`` split (a seeded random search over method, weights and
density; every layer path) and report it on ``test``: a miniature of what a
real search does.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from evomerge.recipe import Recipe


@dataclass
class Row:
    name: str
    scores: dict[str, float]
    recipe: Recipe | None = None
    note: str = ""

    @property
    def mean(self) -> float:
        return _mean(self.scores)


def _mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


@dataclass
class ZooReport:
    skills: list[str]
    rows: list[Row] = field(default_factory=list)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def to_dict(self) -> dict:
        return {
            "split": "test",
            "skills": self.skills,
            "rows": [
                {"name": r.name, "scores": r.scores, "mean": r.mean, "note": r.note}
                | ({"recipe": r.recipe.model_dump(exclude_none=True)} if r.recipe else {})
                for r in self.rows
            ],
        }


def merge_recipe(method: str, base: str, experts: list[str], weights, **params) -> Recipe:
    """One ``method`` over ``experts`` with a weight each (``base`` as base model unless linear)."""
    models = [
        {"model": e, "parameters": {"weight": float(w), **params}}
        for e, w in zip(experts, weights, strict=True)
    ]
    data = {"merge_method": method, "models": models, "dtype": "float32"}
    if method != "linear":
        data["base_model"] = base
    return Recipe.from_dict(data, "zoo report")


def zoo_report(
    zoo: Path,
    *,
    trials: int = 48,
    screen: int = 256,
    finalists: int = 4,
    seed: int = 0,
    fidelity: int | None = None,
    searched: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> ZooReport:
    from evomerge.eval import load_task
    from evomerge.io.hf import load_causal_lm
    from evomerge.merge.in_memory import InMemoryMerger
    from evomerge.zoo.build import read_manifest

    manifest = read_manifest(zoo)
    if manifest is None:
        raise FileNotFoundError(f"no zoo in {zoo}; run `evomerge zoo build` first")
    experts = [n for n, m in manifest["models"].items() if m["role"] == "expert"]
    skills = [manifest["models"][e]["skill"] for e in experts]
    resident, tokenizer = load_causal_lm(zoo / "base")  # the model every merge below goes into
    tasks = {s: {sp: load_task(s, split=sp) for sp in ("search", "test")} for s in skills}

    def score(model, split: str = "test", fid: int | None = None) -> dict[str, float]:
        cap = min((x for x in (fid, fidelity) if x is not None), default=None)
        out = {}
        for s in skills:
            res = tasks[s][split].evaluate(model, tokenizer, cap)
            out[s] = res.values["exact_match"] if res.ok else float("nan")
        return out

    report = ZooReport(skills)
    for name in ["base", *experts]:
        model, _ = load_causal_lm(zoo / name)
        report.rows.append(Row(name, score(model)))
        log(f"scored {name}")

    merger = InMemoryMerger({n: zoo / n for n in ["base", *experts]})

    def merged_scores(recipe: Recipe, split: str = "test", fid: int | None = None) -> dict[str, float]:
        merger.merge(recipe, into=resident)
        return score(resident, split, fid)

    k = len(experts)
    fixed = [
        ("average", merge_recipe("linear", "base", experts, [1.0] * k), "equal-weight linear"),
        (
            "task_arithmetic",
            merge_recipe("task_arithmetic", "base", experts, [1.0] * k),
            "weights 1",
        ),
        (
            "ties",
            merge_recipe("ties", "base", experts, [1.0] * k, density=0.5),
            "density 0.5, weights 1",
        ),
    ]
    for name, recipe, note in fixed:
        report.rows.append(Row(name, merged_scores(recipe), recipe, note))
        log(f"scored {name}")
    if not searched:
        return report

    # Parameter space: a seeded random search over method, weights and density.
    # Screen every candidate on a subset, then re-score the best few on the whole split
    # (the fidelity ladder a real search climbs) so one lucky subset does not pick the winner.
    rng = random.Random(seed)
    candidates = [_random_recipe(rng, experts) for _ in range(trials)]
    screened = sorted(candidates, key=lambda r: -_mean(merged_scores(r, "search", screen)))
    tuned = max(screened[:finalists], key=lambda r: _mean(merged_scores(r, "search")))
    report.rows.append(Row("merge_searched", merged_scores(tuned), tuned, _describe(tuned, trials)))
    log("scored merge_searched")

    # Layer space: every path that takes each layer from one model (same width, so any
    # layer of any model can follow any other). Picked on search, reported on test.
    n_layers = resident.config.num_hidden_layers
    paths = [_layer_path(p) for p in itertools.product(["base", *experts], repeat=n_layers)]
    best_path = max(paths, key=lambda r: _mean(merged_scores(r, "search", screen)))
    names = " > ".join(s.sources[0].model for s in best_path.slices)
    note = f"layers from {names} (best of {len(paths)} paths on the search split)"
    report.rows.append(Row("layer_path_searched", merged_scores(best_path), best_path, note))
    log("scored layer_path_searched")
    return report


def _random_recipe(rng: random.Random, experts: list[str]) -> Recipe:
    method = rng.choice(["task_arithmetic", "ties", "dare_ties"])
    weights = [round(rng.uniform(0.0, 1.2), 2) for _ in experts]
    extra = {} if method == "task_arithmetic" else {"density": round(rng.uniform(0.3, 1.0), 2)}
    return merge_recipe(method, "base", experts, weights, **extra)


def _describe(recipe: Recipe, trials: int) -> str:
    weights = ", ".join(f"{m.parameters['weight']:g}" for m in recipe.models)
    density = recipe.models[0].parameters.get("density")
    extra = f", density {density:g}" if density is not None else ""
    return f"{recipe.merge_method}, weights {weights}{extra} (best of {trials} random recipes on the search split)"


def _layer_path(models) -> Recipe:
    slices = [
        {"sources": [{"model": m, "layer_range": [i, i + 1]}]} for i, m in enumerate(models)
    ]
    return Recipe.from_dict({"merge_method": "passthrough", "slices": slices, "dtype": "float32"}, "zoo report")


def render(report: ZooReport, console) -> None:
    from rich.table import Table

    table = Table(title="zoo accuracy (exact match, test split)")
    table.add_column("model / merge")
    for s in report.skills:
        table.add_column(s, justify="right")
    table.add_column("mean", justify="right")
    table.add_column("note")
    for r in report.rows:
        table.add_row(
            r.name, *(f"{r.scores[s]:.3f}" for s in report.skills), f"{r.mean:.3f}", r.note
        )
    console.print(table)
