"""Does layer-space search pay? Parameter-space against layer-path search, same optimiser and
budget, on both zoo depths, over zoo seeds.

Zoo families (evomerge/zoo/build.py):
  default  2 layers; each expert fine-tunes every weight of the base.
  blocks   3 layers: the default base plus one identity block (evomerge/zoo/expand.py); each
           expert trains only that block.
Spaces, every run TPE on the mean of the three skills with successive halving (the run configs
runs/zoo_blocks_ps.yaml and runs/zoo_blocks_dfs.yaml, the same for all), ``--trials`` each:
  default  parameter  search_spaces/zoo_ps.yaml (37 genes)
           layer      a path through the three experts' layers, 2 repeats, at most 6 layers,
                      scale per slot (24 genes)
           joint      search_spaces/zoo_joint.yaml (31 genes; its path can use the PS merge)
  blocks   parameter  search_spaces/zoo_blocks_ps.yaml (19 genes: per expert and module)
           layer      search_spaces/zoo_blocks_dfs.yaml (12 genes: the shared trunk pinned, the
                      experts' blocks in any order)
Each run's best recipe (picked on the search split) is scored on the test split (1024 prompts
per skill), next to the experts, the average and task arithmetic of that zoo.

    python benchmarks/layer_space.py [--seeds 0 1 2] [--trials 120] [--families default blocks]

Zoos: the default zoo of a seed is taken from zoo/ (seed 0) or benchmarks/_work/zoo_landscape
when built there, else built here; the blocks zoo copies that base and trains its experts.
Results in benchmarks/_work/layer_space/results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from evomerge.search.landscape import SKILLS, mean_score

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).parent / "_work" / "layer_space"

# A layer space over all three experts of the default zoo (search_spaces/zoo_dfs.yaml has two).
DEFAULT_LAYER_SPACE = {
    "kind": "layer",
    "models": ["../zoo/addition", "../zoo/reversal", "../zoo/sorting"],
    "num_layers": 2,
    "repeats": 2,
    "scale": {"low": 0.5, "high": 1.5, "per": "slot"},
    "max_layers": 6,
    "dtype": "float32",
    "seed": 0,
}
SPACES = {
    "default": {"parameter": "zoo_ps.yaml", "layer": DEFAULT_LAYER_SPACE, "joint": "zoo_joint.yaml"},
    "blocks": {"parameter": "zoo_blocks_ps.yaml", "layer": "zoo_blocks_dfs.yaml"},
}


def zoos(seed: int) -> dict[str, Path]:
    from evomerge.zoo.build import FAMILIES, ZooConfig, build_zoo, default_zoo_dir, is_built

    config = ZooConfig(seed=seed)
    found = [p for p in ([default_zoo_dir()] if seed == 0 else [])
             + [Path(__file__).parent / "_work" / "zoo_landscape" / f"seed{seed}" / "zoo"]
             if is_built(p, config)]
    default = found[0] if found else build_zoo(WORK / f"seed{seed}" / "zoo", config, log=lambda s: None)
    blocks = FAMILIES["blocks"]().model_copy(update={"seed": seed})
    t0 = time.perf_counter()
    out = build_zoo(WORK / f"seed{seed}" / "zoo-blocks", blocks, base_from=default, log=lambda s: None)
    print(f"  seed {seed}: zoos ready ({time.perf_counter() - t0:.0f}s for the blocks family)",
          file=sys.stderr, flush=True)
    return {"default": default.resolve(), "blocks": out.resolve()}


def run_search(zoo: Path, family: str, kind: str, work: Path, trials: int, seed: int) -> Path:
    """The space pointed at ``zoo``, searched with the blocks family's run config: the run dir."""
    spec = SPACES[family][kind]
    text = yaml.safe_dump(spec) if isinstance(spec, dict) else (ROOT / "search_spaces" / spec).read_text()
    text = text.replace("../zoo-blocks/", f"{zoo}/").replace("../zoo/", f"{zoo}/")
    work.mkdir(parents=True, exist_ok=True)
    (work / "space.yaml").write_text(text)
    run = yaml.safe_load((ROOT / "runs" / "zoo_blocks_ps.yaml").read_text())
    run.update(space="space.yaml", budget={"trials": trials}, seed=seed, tracking={"enabled": False})
    (work / "run.yaml").write_text(yaml.safe_dump(run, sort_keys=False))
    out = work / "search"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "evomerge"), "search", str(work / "run.yaml"), "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def main() -> int:
    import torch

    from evomerge.search.landscape import score_landscape

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=120)
    p.add_argument("--families", nargs="+", default=["default", "blocks"], choices=list(SPACES))
    args = p.parse_args()

    results = []
    for seed in args.seeds:
        built = zoos(seed)
        for family in args.families:
            plain = None
            for kind in SPACES[family]:
                t0 = time.perf_counter()
                out = run_search(built[family], family, kind, WORK / f"seed{seed}" / f"{family}-{kind}",
                                 args.trials, seed)
                search_s = time.perf_counter() - t0
                torch.set_num_threads(2)
                r = score_landscape(built[family], out, n_random=0, plain=plain is None)
                plain = plain or {k: v for k, v in r["rows"].items() if k != "search_best"}
                results.append({"seed": seed, "family": family, "space": kind, "best": r["rows"]["search_best"],
                                "recipe": r["best_recipe"], "plain": plain, "search_seconds": search_s})
                print(f"  seed {seed} {family} {kind}: test mean {mean_score(r['rows']['search_best']):.3f} "
                      f"({search_s:.0f}s)", file=sys.stderr, flush=True)
                WORK.mkdir(parents=True, exist_ok=True)
                (WORK / "results.json").write_text(json.dumps(results, indent=1))
    report(results)
    return 0


def _mr(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}..{max(values):.3f})"


def report(results: list[dict]) -> None:
    print(f"\n{'seed':>4}  {'family':8}{'space':11}" + "".join(f"{s:>10}" for s in (*SKILLS, "mean"))
          + f"{'TA mean':>10}{'avg mean':>10}{'experts':>10}")
    for r in results:
        plain = r["plain"]
        experts = statistics.mean(plain[s][s] for s in SKILLS)
        print(f"{r['seed']:>4}  {r['family']:8}{r['space']:11}"
              + "".join(f"{r['best'][s]:>10.3f}" for s in SKILLS) + f"{mean_score(r['best']):>10.3f}"
              + f"{mean_score(plain['task_arithmetic']):>10.3f}{mean_score(plain['average']):>10.3f}"
              + f"{experts:>10.3f}")
    print("\ntest mean of the best recipe, median (min..max) over seeds; and layer (or joint) minus "
          "parameter space, per seed:")
    for family in dict.fromkeys(r["family"] for r in results):
        rows = [r for r in results if r["family"] == family]
        ps = {r["seed"]: mean_score(r["best"]) for r in rows if r["space"] == "parameter"}
        for kind in dict.fromkeys(r["space"] for r in rows):
            means = {r["seed"]: mean_score(r["best"]) for r in rows if r["space"] == kind}
            diff = "" if kind == "parameter" else "   minus parameter: " + " ".join(
                f"{means[s] - ps[s]:+.3f}" for s in means if s in ps)
            print(f"  {family:8}{kind:11}{_mr(list(means.values()))}{diff}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--report":
        report(json.loads(Path(sys.argv[2]).read_text()))
        sys.exit(0)
    sys.exit(main())
