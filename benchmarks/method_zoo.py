"""Merge methods side by side on the toy zoo: each method's best recipe, same optimiser and budget.

For every method that merges the zoo's three experts onto its base, a parameter space offering
that method alone, with its own parameters as genes (ranges in ``RANGES`` below; per layer and
per module, attention / MLP / the rest, as search_spaces/zoo_ps.yaml), is searched with one run
config for all: TPE on the mean of the three skills, successive halving 32 -> 96 -> 256 examples
per task, ``--trials`` trials. Each run's best recipe (picked on the search split) is scored on
the test split (1024 prompts per skill), next to the base, the experts, the equal-weight average
and task arithmetic (weights 1). Methods without a searchable parameter (karcher, model_stock)
are scored as they are. Methods that merge one or two models (slerp, nearswap, arcee_fusion,
nuslerp) do not fit three experts and are left out.

    python benchmarks/method_zoo.py [--seeds 0] [--trials 60] [--methods ties,tsv,...]

Needs the zoo (`evomerge zoo build`); results in benchmarks/_work/method_zoo/results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import yaml

from evomerge.search.landscape import SKILLS, mean_score

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).parent / "_work" / "method_zoo"

W = {"weight": {"low": 0.0, "high": 1.2}}
D = {"density": {"low": 0.2, "high": 1.0}}
# The searched parameters of each method: the ones a user would tune, in ranges its paper uses.
RANGES: dict[str, dict] = {
    "linear": {"weight": {"low": 0.0, "high": 1.0}},
    "task_arithmetic": W,
    "ties": W | D,
    "dare_ties": W | D,
    "dare_linear": W | D,
    "breadcrumbs": W | D | {"gamma": {"low": 0.0, "high": 0.1}},
    "breadcrumbs_ties": W | D | {"gamma": {"low": 0.0, "high": 0.1}},
    "della": W | {"density": {"low": 0.3, "high": 0.85}, "epsilon": {"low": 0.0, "high": 0.1}},
    "della_linear": W | {"density": {"low": 0.3, "high": 0.85}, "epsilon": {"low": 0.0, "high": 0.1}},
    "multislerp": {"weight": {"low": 0.0, "high": 1.0}},
    "sce": {"select_topk": {"low": 0.1, "high": 1.0}},
    "ram": {"epsilon": {"low": 0.0, "high": 0.01}},
    "ramplus_tl": {"epsilon": {"low": 0.0, "high": 0.01}, "r": {"low": 0.0, "high": 1.0},
                   "alpha": {"low": 0.0, "high": 1.0}},
    "karcher": {},
    "model_stock": {},
    "lines": W | {"alpha": {"low": 0.0, "high": 1.0}, "beta": {"low": 0.0, "high": 1.0}},
    "pcb": W | {"pcb_ratio": {"low": 0.05, "high": 1.0}},
    "cabs": W | {"n": {"low": 16, "high": 256}},  # of every m = 256 entries
    "tsv": {"alpha": {"low": 0.0, "high": 2.0}},
    "iso_c": {"alpha": {"low": 0.0, "high": 2.0}},
    "iso_cts": {"alpha": {"low": 0.0, "high": 2.0}},
    "star": {"eta": {"low": 10.0, "high": 90.0}},
}
ONE_OR_TWO = ("slerp", "nearswap", "arcee_fusion", "nuslerp", "passthrough")


def space_for(method: str, zoo: Path) -> dict:
    return {
        "kind": "parameter",
        "base_model": str(zoo / "base"),
        "models": [str(zoo / s) for s in SKILLS],
        "methods": [method],
        "parameters": RANGES[method],
        "granularity": {"layers_per_group": 1, "filters": ["self_attn", "mlp"]},
        "num_layers": 2,
        "dtype": "float32",
        "seed": 0,
    }


def search(method: str, zoo: Path, trials: int, seed: int) -> Path:
    from evomerge.run import run_search

    work = WORK / f"seed{seed}" / method
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "space.yaml").write_text(yaml.safe_dump(space_for(method, zoo)))
    run = {
        "space": "space.yaml",
        "objectives": [{"task": s} for s in SKILLS],
        "scalarization": "weighted_sum",
        "optimizer": {"name": "tpe"},
        "multi_fidelity": {"levels": [32, 96, 256], "eta": 3, "bracket": 9},
        "budget": {"trials": trials},
        "executor": {"workers": 1},
        "seed": seed,
        "tracking": {"enabled": False},
    }
    (work / "run.yaml").write_text(yaml.safe_dump(run))
    run_search(work / "run.yaml", work / "run", log=lambda s: None)
    return work / "run"


def score_fixed(method: str, zoo: Path) -> dict[str, float]:
    """Test-split scores of ``method`` with its defaults (a space without genes)."""
    from evomerge.eval import load_task
    from evomerge.io.hf import load_causal_lm
    from evomerge.merge.in_memory import InMemoryMerger
    from evomerge.search.space import ParameterSpace

    recipe = ParameterSpace.model_validate(space_for(method, zoo)).decode([])
    model, tokenizer = load_causal_lm(zoo / "base")
    InMemoryMerger({str(zoo / n): zoo / n for n in ("base", *SKILLS)}).merge(recipe, into=model)
    return {s: load_task(s, split="test").evaluate(model, tokenizer).values["exact_match"] for s in SKILLS}


def main() -> int:
    import torch

    from evomerge.methods import METHODS
    from evomerge.search.landscape import score_landscape
    from evomerge.zoo.build import default_zoo_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--methods", default=",".join(RANGES))
    p.add_argument("--zoo", type=Path, default=None)
    args = p.parse_args()
    zoo = (args.zoo or default_zoo_dir()).resolve()
    if not (zoo / "zoo.json").is_file():
        print(f"no zoo at {zoo}; build it with `evomerge zoo build`", file=sys.stderr)
        return 2
    methods = args.methods.split(",")
    missing = [m for m in methods if m not in RANGES]
    unregistered = set(RANGES) - set(METHODS.names())
    others = sorted(set(METHODS.names()) - set(RANGES) - set(ONE_OR_TWO))
    if missing or others:
        print(f"no ranges for {missing or others}: add them to RANGES", file=sys.stderr)
        return 2
    results = json.loads((WORK / "results.json").read_text()) if (WORK / "results.json").is_file() else []
    for seed in args.seeds:
        for method in [m for m in methods if m not in unregistered]:
            t0 = time.perf_counter()
            torch.set_num_threads(2)
            if RANGES[method]:
                r = score_landscape(zoo, search(method, zoo, args.trials, seed), n_random=0,
                                    plain=not any(x["method"] == "plain" for x in results))
                if "average" in r["rows"]:
                    results.append({"seed": seed, "method": "plain", "rows": r["rows"]})
                best, recipe = r["rows"]["search_best"], r["best_recipe"]
            else:
                best, recipe = score_fixed(method, zoo), None
            seconds = time.perf_counter() - t0
            results = [x for x in results if (x["seed"], x["method"]) != (seed, method)]
            results.append({"seed": seed, "method": method, "best": best, "recipe": recipe, "seconds": seconds})
            print(f"  seed {seed} {method}: test mean {mean_score(best):.3f} ({seconds:.0f}s)",
                  file=sys.stderr, flush=True)
            WORK.mkdir(parents=True, exist_ok=True)
            (WORK / "results.json").write_text(json.dumps(results, indent=1))
    report(results)
    return 0


def report(results: list[dict]) -> None:
    plain = next((x["rows"] for x in results if x["method"] == "plain"), None)
    print(f"\n{'':22}" + "".join(f"{s:>10}" for s in (*SKILLS, "mean")) + f"{'seeds':>8}{'mean min..max':>16}")
    if plain:
        for name in ("base", *SKILLS, "average", "task_arithmetic"):
            label = f"expert {name}" if name in SKILLS else name + (" (w=1)" if name == "task_arithmetic" else "")
            print(f"{label:22}" + "".join(f"{plain[name][s]:>10.3f}" for s in SKILLS)
                  + f"{mean_score(plain[name]):>10.3f}")
    print("best recipe per method (median over seeds where several):")
    for method in dict.fromkeys(x["method"] for x in results if x["method"] != "plain"):
        runs = [x for x in results if x["method"] == method]
        cells = [statistics.median(x["best"][s] for x in runs) for s in SKILLS]
        means = [mean_score(x["best"]) for x in runs]
        fixed = "" if RANGES.get(method) else " (defaults)"
        print(f"{method + fixed:22}" + "".join(f"{c:>10.3f}" for c in cells)
              + f"{statistics.median(means):>10.3f}{len(runs):>8}{min(means):>9.3f}..{max(means):.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--report":
        report(json.loads(Path(sys.argv[2]).read_text()))
        sys.exit(0)
    sys.exit(main())
