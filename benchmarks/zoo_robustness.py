"""Is the toy zoo the same world on every machine? Builds it over a grid of zoo seeds and torch
thread counts (different reduction orders stand in for different CPUs) and prints, per build,
each model's exact match on the test split and the build time.

    python benchmarks/zoo_robustness.py [--seeds 0 1 2 3 4] [--threads 1 2] [--config JSON]

A build with 2 threads is the default build on a 2-core machine (base on 2 threads, the experts
side by side on 1 thread each); with 1 thread everything runs on one thread, one model after
another. Builds with 1 thread run two at a time (one per core), so their times are not the quiet
figure; the 2-thread builds run alone. ``--config`` overrides fields of the default ZooConfig (a JSON object,
merged one level deep) to compare alternatives.

Checks printed at the end (the zoo issue's targets): every expert >= 0.9 on its own skill, the
base <= 0.3 on every hard skill.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORK = Path(__file__).parent / "_work" / "zoo_robustness"


def _config(overrides: dict, seed: int, threads: int):
    from evomerge.zoo.build import ZooConfig

    base = ZooConfig().model_dump()
    for key, value in overrides.items():
        base[key] = base[key] | value if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return ZooConfig.model_validate(base | {"seed": seed} | ({"workers": 1} if threads == 1 else {}))


def one(seed: int, threads: int, overrides: dict, out: Path, fidelity: int | None, searched: bool) -> dict:
    import torch

    from evomerge.zoo.build import build_zoo, read_manifest
    from evomerge.zoo.report import zoo_report

    torch.set_num_threads(threads)
    config = _config(overrides, seed, threads)
    build_zoo(out, config, force=True, log=lambda s: None)
    manifest = read_manifest(out)
    report = zoo_report(out, fidelity=fidelity, searched=searched)
    return {
        "seed": seed, "threads": threads, "seconds": manifest["seconds"],
        "scores": {r.name: r.scores for r in report.rows}, "skills": report.skills,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--config", default="{}", help="JSON overrides of ZooConfig fields")
    ap.add_argument("--fidelity", type=int, default=None, help="test examples per skill (default all)")
    ap.add_argument("--searched", action="store_true",
                    help="also the report's searched rows (48 random recipes, every layer path; ~1-2 min a build)")
    ap.add_argument("--tag", default="default", help="work subdirectory and results file name")
    ap.add_argument("--one", nargs=2, type=int, metavar=("SEED", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    overrides = json.loads(args.config)
    work = WORK / args.tag
    if args.one:
        seed, threads = args.one
        print(json.dumps(one(seed, threads, overrides, work / f"s{seed}_t{threads}", args.fidelity,
                             args.searched)))
        return

    results: list[dict] = []
    common = [sys.executable, __file__, "--config", args.config, "--tag", args.tag]
    if args.fidelity:
        common += ["--fidelity", str(args.fidelity)]
    if args.searched:
        common.append("--searched")

    def run(jobs: list[tuple[int, int]], parallel: int) -> None:
        running: list[subprocess.Popen] = []
        jobs = list(jobs)
        while jobs or running:
            while jobs and len(running) < parallel:
                s, t = jobs.pop(0)
                running.append(subprocess.Popen([*common, "--one", str(s), str(t)], stdout=subprocess.PIPE, text=True))
            proc = running.pop(0)
            out, _ = proc.communicate()
            if proc.returncode != 0:
                print(f"build failed (exit {proc.returncode})", flush=True)
                continue
            r = json.loads(out.strip().splitlines()[-1])
            results.append(r)
            _print_row(r)

    t0 = time.perf_counter()
    if 1 in args.threads:
        run([(s, 1) for s in args.seeds], parallel=2)
    for t in (t for t in args.threads if t > 1):
        run([(s, t) for s in args.seeds], parallel=1)
    _summary(results)
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"grid done in {time.perf_counter() - t0:.0f}s; results in {work / 'results.json'}")


def _print_row(r: dict) -> None:
    cells = []
    for name, scores in r["scores"].items():
        cells.append(f"{name}=" + "/".join(f"{scores[s]:.2f}" for s in r["skills"]))
    print(f"seed {r['seed']} threads {r['threads']} build {r['seconds']['total']:.0f}s "
          f"(base {r['seconds']['base']:.0f}s): " + "  ".join(cells), flush=True)


def _summary(results: list[dict]) -> None:
    if not results:
        return
    skills = results[0]["skills"]
    names = list(results[0]["scores"])
    print(f"\n{'model / merge':20}" + "".join(f"{s:>22}" for s in [*skills, "mean"]))
    for name in names:
        cells = []
        for s in [*skills, "mean"]:
            vals = [statistics.fmean(r["scores"][name].values()) if s == "mean" else r["scores"][name][s]
                    for r in results]
            cells.append(f"{statistics.median(vals):.3f} ({min(vals):.3f}-{max(vals):.3f})")
        print(f"{name:20}" + "".join(f"{c:>22}" for c in cells))
    experts_ok = all(r["scores"][s][s] >= 0.9 for r in results for s in skills)
    base_ok = all(r["scores"]["base"][s] <= 0.3 for r in results for s in skills)
    times = [r["seconds"]["total"] for r in results if r["threads"] > 1]
    print(f"\nexperts >= 0.9 on their skill in every build: {experts_ok}; base <= 0.3 on every hard skill: {base_ok}")
    if times:
        print(f"build time (2 threads, alone): min {min(times):.0f}s, median {statistics.median(times):.0f}s, "
              f"max {max(times):.0f}s")


if __name__ == "__main__":
    main()
