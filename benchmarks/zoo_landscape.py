"""Does search matter on the toy zoo? The zoo issue's landscape, over zoo seeds.

For each zoo seed: build the zoo, run the quickstart search on it (runs/quickstart.yaml, its
space pointed at this build), and score on the test split (1024 prompts per skill): the base,
each expert, the equal-weight average, plain task arithmetic (weights 1), the quickstart's best
recipe, and ``--random`` recipes drawn uniformly from the quickstart's space (their median).

    python benchmarks/zoo_landscape.py [--seeds 0 1 2 3 4] [--trials 360] [--random 20]

Checks printed per seed and over all (the zoo issue's targets, evomerge/search/landscape.py):
every expert >= 0.9 on its skill and the base <= 0.3 on each; the best recipe keeps >= 0.7 of
each expert's own skill score on every skill, beats the average and task arithmetic by >= 0.05
on the mean, and the random recipes' median is >= 0.1 below it. Results in
benchmarks/_work/zoo_landscape/results.json. The README walk-through test checks the same on
the default build (seed 0) in CI.
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

from evomerge.search.landscape import SKILLS, all_checks, mean_score

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).parent / "_work" / "zoo_landscape"


def _prepare(zoo: Path, work: Path, trials: int | None) -> Path:
    """The quickstart's run config and space, pointed at ``zoo`` (absolute paths): the config's path."""
    import yaml

    run = yaml.safe_load((ROOT / "runs" / "quickstart.yaml").read_text())
    space_src = (ROOT / "runs" / run["space"]).resolve()
    space = space_src.read_text().replace("../zoo/", f"{zoo}/")
    (work / space_src.name).write_text(space)
    run["space"] = space_src.name
    if trials:
        run["budget"] = {"trials": trials}
    (work / "quickstart.yaml").write_text(yaml.safe_dump(run, sort_keys=False))
    return work / "quickstart.yaml"


def landscape(seed: int, trials: int | None, n_random: int) -> dict:
    import torch

    from evomerge.search.landscape import score_landscape
    from evomerge.zoo.build import ZooConfig, build_zoo

    work = WORK / f"seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    zoo = (work / "zoo").resolve()
    t0 = time.perf_counter()
    build_zoo(zoo, ZooConfig(seed=seed), log=lambda s: None)  # cached per seed
    build_s = time.perf_counter() - t0
    config = _prepare(zoo, work, trials)
    out = work / "search"
    t0 = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)  # a search of an earlier build must not be read as this one's
    cmd = [str(Path(sys.executable).parent / "evomerge"), "search", str(config), "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=work, stdout=subprocess.DEVNULL)
    search_s = time.perf_counter() - t0
    torch.set_num_threads(2)
    result = score_landscape(zoo, out, n_random=n_random, seed=seed)
    return {"seed": seed, **result, "build_seconds": build_s, "search_seconds": search_s}


def _table(results: list[dict]) -> None:
    names = list(results[0]["rows"])
    print(f"{'model / merge':18}" + "".join(f"{s:>22}" for s in (*SKILLS, "mean")))
    for n in names:
        cells = []
        for col in (*SKILLS, "mean"):
            vals = [r["rows"][n][col] if col != "mean" else mean_score(r["rows"][n]) for r in results]
            cells.append(f"{statistics.median(vals):.3f} ({min(vals):.3f}-{max(vals):.3f})")
        print(f"{n:18}" + "".join(f"{c:>22}" for c in cells))
    meds = [statistics.median(r["random_means"]) for r in results]
    print(f"{'random median':18}{'':66}{statistics.median(meds):.3f} ({min(meds):.3f}-{max(meds):.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--trials", type=int, default=None, help="the quickstart's trial budget (default: its own)")
    ap.add_argument("--random", type=int, default=20)
    args = ap.parse_args()
    results = []
    for seed in args.seeds:
        r = landscape(seed, args.trials, args.random)
        results.append(r)
        print(f"seed {seed}: build {r['build_seconds']:.0f}s, search {r['search_seconds']:.0f}s")
        _table([r])
        for name, ok in all_checks(r).items():
            print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nover seeds {args.seeds}: median (min-max)")
    _table(results)
    for name in all_checks(results[0]):
        held = [r["seed"] for r in results if all_checks(r)[name]]
        print(f"  {name}: holds on {len(held)}/{len(results)} seeds {held}")


if __name__ == "__main__":
    main()
