"""Known-optimum benchmark: how close do the optimisers get to a secret merge, per evaluation?

A tiny Llama family of its own (a base and three experts whose task vectors have different
scales) is merged by TIES. A secret point of the search space decodes to the target merge
θ*; the fitness of a candidate θ is its normalised closeness

    1 - ||θ - θ*|| / ||θ_avg - θ*||

over all merged tensors, θ_avg being the equal-weight TIES merge (weights equal, every
density at the middle of its range): the equal-weight merge scores 0, the optimum 1. Both
the target and the candidates are decoded by evomerge's ParameterSpace and merged by its
InMemoryMerger, as a search does. Two spaces:

- ``6``: one TIES weight and density per expert (6 genes; target: fixed constants);
- ``groups``: weight and density per expert, per layer and per module (attention, MLP, the
  rest: 36 genes; target: a point drawn from a fixed seed, so it lies inside the space).

Every registered optimiser that takes one value is driven in ask/tell form (ask, decode,
merge, closeness, tell; no ledger, no executor), random search with 3x the budget. Printed:
the best closeness so far at budget/3, 2 budget/3 and budget evaluations (and 3x budget for
random), median and range over the seeds; the results go to
``benchmarks/_work/known_optimum/results.json``.

    python benchmarks/known_optimum.py [--seeds 0 1 2 3 4] [--optimizers cmaes tpe gp]
        [--space 6|groups|both] [--budget 150] [--priors]

``--priors`` has every optimiser score the sources' priors first (evomerge.search.priors: the
equal-weight average, task arithmetic at weights 1, each expert alone), inside the budget.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

WORK = Path(__file__).parent / "_work" / "known_optimum"
SHAPE = {"hidden": 32, "layers": 2, "intermediate": 48, "vocab": 64}
EXPERT_SCALES = (0.01, 0.02, 0.04)  # each expert's task-vector scale: the deltas differ
WEIGHT = {"low": 0.0, "high": 1.2}
DENSITY = {"low": 0.2, "high": 1.0}
# the 6-gene target: TIES weights and densities of the three experts (secret to the optimisers)
SECRET_WEIGHTS = (0.9, 0.25, 0.6)
SECRET_DENSITIES = (0.35, 0.85, 0.5)
SECRET_SEED = 1234  # draws the per-group target
RANDOM_FACTOR = 3  # random search gets this many times the budget


def make_models(root: Path, seed: int = 0) -> dict[str, Path]:
    """Base and three experts under ``root``: the base plus Gaussian task vectors of different
    scales, half of each expert's entries near zero (so TIES's trimming has something to do)."""
    from evomerge.testing.models import llama_config, llama_state, save_model

    gen = torch.Generator().manual_seed(seed)
    config = llama_config(tied=False, **SHAPE)
    base = llama_state(config, gen)
    paths = {"base": save_model(root / "base", base, config)}
    for e, scale in enumerate(EXPERT_SCALES):
        expert = {}
        for k, v in base.items():
            delta = scale * torch.randn(v.shape, generator=gen)
            keep = torch.rand(v.shape, generator=gen) < 0.5
            expert[k] = v + torch.where(keep, delta, 0.1 * delta)
        paths[f"expert{e}"] = save_model(root / f"expert{e}", expert, config)
    return paths


def space_dict(models: dict[str, Path], kind: str) -> dict:
    data = {
        "kind": "parameter",
        "base_model": str(models["base"]),
        "models": [str(models[f"expert{e}"]) for e in range(len(EXPERT_SCALES))],
        "methods": ["ties"],
        "parameters": {"weight": dict(WEIGHT), "density": dict(DENSITY)},
        "num_layers": SHAPE["layers"],
        "dtype": "float32",
    }
    if kind == "groups":
        data["granularity"] = {"layers_per_group": 1, "filters": ["self_attn", "mlp"]}
    return data


def load(data: dict):
    from evomerge.search.space.parameter import ParameterSpace

    return ParameterSpace.model_validate(data)


def unit_point(space, weights, densities) -> np.ndarray:
    """The point of the unit cube where every gene of expert e has weights[e] / densities[e]."""
    x = []
    for g in space.genes():
        e = next(i for i, m in enumerate(space.models) if g.name.startswith(Path(m).name + "."))
        value = weights[e] if ".weight" in g.name else densities[e]
        x.append((value - g.low) / (g.high - g.low))
    return np.array(x)


def secret_point(space, kind: str) -> np.ndarray:
    if kind == "6":
        return unit_point(space, SECRET_WEIGHTS, SECRET_DENSITIES)
    rng = np.random.default_rng(SECRET_SEED)
    return rng.uniform(0.1, 0.9, len(space.genes()))


def equal_point(space) -> np.ndarray:
    n = len(space.models)
    middle = (DENSITY["low"] + DENSITY["high"]) / 2
    return unit_point(space, [1.0 / n] * n, [middle] * n)


class Closeness:
    """Normalised closeness of a recipe's merge to the merge at ``target`` (a unit point)."""

    def __init__(self, space, merger, target: np.ndarray) -> None:
        self.space, self.merger = space, merger
        self.names: list[str] | None = None
        self.target = self._flat(target)
        self.scale = float(torch.linalg.vector_norm(self._flat(equal_point(space)) - self.target))

    def _flat(self, x: np.ndarray) -> torch.Tensor:
        merged = self.merger.merge(self.space.decode([float(v) for v in x]))
        if self.names is None:
            self.names = sorted(merged)
        return torch.cat([merged[n].reshape(-1).to(torch.float64) for n in self.names])

    def __call__(self, x: np.ndarray) -> float:
        return 1.0 - float(torch.linalg.vector_norm(self._flat(x) - self.target)) / self.scale


def run_one(name: str, dimension: int, seed: int, budget: int, fitness, first=()) -> list[float]:
    """Best closeness so far after each evaluation of one ask/tell run (``first``: warm starts)."""
    from evomerge.search.optimizers import OPTIMIZERS

    opt = OPTIMIZERS.get(name)(dimension, 1, seed)
    if first:
        opt.warm_start(list(first))
    best, trace, failures = float("-inf"), [], []
    while len(trace) < budget:
        s = opt.ask()
        if s is None:  # cannot happen when every suggestion is told at once; kept for safety
            raise RuntimeError(f"{name} held back with nothing outstanding")
        try:
            value = fitness(s.x)
        except Exception as e:  # a merge the engine refuses: a failed trial, as in a search
            failures.append(f"{type(e).__name__}: {e}")
            opt.tell(s.id, None)
            trace.append(best)
            continue
        opt.tell(s.id, (value,))
        best = max(best, value)
        trace.append(best)
    if failures:
        print(f"  {name} seed {seed}: {len(failures)} failed merges, first: {failures[0]}")
    return trace


def single_objective(names: list[str]) -> list[str]:
    from evomerge.search.optimizers import OPTIMIZERS

    out = []
    for n in names:
        try:
            OPTIMIZERS.get(n)(2, 1, 0)
        except ValueError as e:
            print(f"skipping {n}: {e}")
            continue
        out.append(n)
    return out


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    from evomerge.merge.in_memory import InMemoryMerger
    from evomerge.search.optimizers import OPTIMIZERS
    from evomerge.search.priors import source_points

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--optimizers", nargs="+", default=None, help="default: every registered one")
    ap.add_argument("--space", choices=["6", "groups", "both"], default="both")
    ap.add_argument("--budget", type=int, default=150)
    ap.add_argument("--model-seed", type=int, default=0)
    ap.add_argument("--priors", action="store_true",
                    help="score the sources' priors first (average, task arithmetic, each expert alone)")
    ap.add_argument("--out", type=Path, default=WORK / "results.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = single_objective(args.optimizers or OPTIMIZERS.names())
    marks = [args.budget // 3, 2 * args.budget // 3, args.budget]
    kinds = ["6", "groups"] if args.space == "both" else [args.space]
    results: dict = {
        "budget": args.budget, "seeds": args.seeds, "model_seed": args.model_seed, "priors": args.priors,
        "shape": SHAPE, "expert_scales": EXPERT_SCALES, "machine": platform.processor() or platform.machine(),
        "spaces": {},
    }
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        models = make_models(Path(tmp), args.model_seed)
        for kind in kinds:
            space = load(space_dict(models, kind))
            merger = InMemoryMerger({m: Path(m) for m in space.source_models()})
            fitness = Closeness(space, merger, secret_point(space, kind))
            check = (fitness(equal_point(space)), fitness(secret_point(space, kind)))
            d = len(space.genes())
            first = [x for _, x in source_points(space)] if args.priors else []
            print(f"\nspace {kind}: {d} genes; equal-weight point {check[0]:.6f}, secret point "
                  f"{check[1]:.6f}; ||θ_avg - θ*|| = {fitness.scale:.4f}")
            rows = results["spaces"][kind] = {"genes": d, "optimizers": {}}
            for name in names:
                budget = args.budget * (RANDOM_FACTOR if name == "random" else 1)
                at = marks + ([budget] if budget != args.budget else [])
                runs, t0 = {}, time.perf_counter()
                for seed in args.seeds:
                    runs[seed] = run_one(name, d, seed, budget, fitness, first)
                seconds = time.perf_counter() - t0
                table = {str(n): [runs[s][n - 1] for s in args.seeds] for n in at}
                rows["optimizers"][name] = {"best_at": table, "seconds": seconds,
                                            "traces": {str(s): runs[s] for s in args.seeds}}
                cells = "  ".join(f"@{n}: {summary(v)}" for n, v in table.items())
                print(f"  {name:8s} {cells}   [{seconds:.0f} s]", flush=True)
    results["seconds"] = time.perf_counter() - t_all
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\n{results['seconds']:.0f} s in all; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
