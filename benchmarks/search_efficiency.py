"""Search efficiency on the toy zoo: best fitness against evaluation cost, per optimiser.

Every optimiser searches the same space (search_spaces/zoo_ps.yaml: per-expert
weight and density per layer and module, method chosen) with the same fitness
(mean exact match of addition, reversal and sorting on the search split, at
``--top`` examples per task), with multi-fidelity off and on (successive halving
over ``--levels``). Runs get equal evaluation cost: a multi-fidelity run may
propose as many more candidates as its brackets are cheaper than scoring every
candidate at the top level. A mergekit-evolve-style baseline runs pycma's ``fmin2``
directly over one global weight and density per expert (TIES), as that tool did.

Printed per run: best fitness, evaluations and examples scored until the best
so far reaches 95% of the best recipe any run found, and the examples scored
relative to random search without multi-fidelity (measured in the same run).

    python benchmarks/search_efficiency.py [--budget 90] [--seeds 0] [--top 256]

Needs the zoo (`evomerge zoo build`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).parent / "_work" / "search_efficiency"
TASKS = ("addition", "reversal", "sorting")
METRIC = dict.fromkeys(TASKS, "exact_match")  # the objective of each task (--tasks changes both)


@dataclass
class Trace:
    name: str
    seed: int
    points: list[
        tuple[int, float, float]
    ]  # (evaluations, examples scored, best so far), per top-level result
    seconds: float
    # (examples scored, hypervolume of the three skills' top-level scores so far, reference 0)
    hv: list[tuple[float, float]] = field(default_factory=list)

    @property
    def best(self) -> float:
        return self.points[-1][2] if self.points else float("-inf")

    def reach(self, target: float) -> tuple[int, float] | None:
        return next(((n, ex) for n, ex, b in self.points if b >= target), None)


def _trace_from_ledger(
    name: str, seed: int, run_dir: Path, levels: list, sizes: dict, seconds: float
) -> Trace:
    from evomerge.search.ledgers.sqlite import SQLiteLedger as Ledger

    ledger = Ledger(run_dir / "ledger.db")
    rows = ledger.completions()
    ledger.close()
    from evomerge.search.pareto import hypervolume, pareto_mask

    top = len(levels) - 1
    points, examples, best = [], 0.0, float("-inf")
    hv, front = [], np.zeros((0, len(TASKS)))
    for n, r in enumerate(rows, 1):
        lv = r.fidelity
        examples += sum(n_ if lv is None else min(lv, n_) for n_ in sizes.values())
        if r.rung == top and r.scores:
            skills = np.array([r.scores[f"{t}/{METRIC[t]}"] for t in TASKS])
            best = max(best, float(skills.mean()))
            points.append((n, examples, best))
            front = np.vstack([front, skills])
            front = front[pareto_mask(front)]
            hv.append((examples, hypervolume(front, np.zeros(len(TASKS)))))
    return Trace(name, seed, points, seconds, hv)


def _space(compact: bool, zoo: Path) -> dict:
    space = yaml.safe_load((ROOT / "search_spaces" / "zoo_ps.yaml").read_text())
    space["base_model"] = str(zoo / "base")
    space["models"] = [str(zoo / Path(m).name) for m in space["models"]]
    if compact:  # the baseline's space: TIES, one weight and density per expert
        space.update(methods=["ties"], granularity={})
        space.pop("num_layers", None)
    return space


def run_controller(
    optimizer: str,
    seed: int,
    budget: int,
    top: int,
    levels: list | None,
    zoo: Path,
    compact: bool = False,
    workers: int = 1,
    pareto: bool = False,
    anchors: int = 0,
    priors: bool = False,
) -> Trace:
    from evomerge.run import run_search

    space = _space(compact, zoo)
    name = (f"{optimizer}{' (3 objectives)' if pareto else ''}{'+MF' if levels else ''}"
            f"{f'+anchors{anchors}' if anchors and levels else ''}{'+priors' if priors else ''}"
            f"{' (6 genes)' if compact else ''}")
    work = WORK / f"{name.replace(' ', '_')}-s{seed}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    run = {
        "space": "space.yaml",
        "objectives": [{"task": t, "metric": METRIC[t]} for t in TASKS],
        # pareto: the optimiser is told the three scores (MOTPE, as the quickstart runs); the
        # trace's fitness is still their mean
        "scalarization": "pareto" if pareto else "weighted_sum",
        # cmaes-async: CMA-ES that draws a point whenever a slot frees (no generation barrier)
        "optimizer": {
            "name": optimizer.removesuffix("-async"),
            "options": {
                "popsize": 9,
                **({"asynchronous": True} if optimizer.endswith("-async") else {}),
            }
            if optimizer.startswith("cmaes")
            else {},
        },
        "executor": {"workers": workers, "torch_threads": 1 if workers > 1 else None},
        "budget": {"trials": budget},
        "seed": seed,
        "tracking": {"enabled": False},
    }
    if priors:
        run["priors"] = "sources"
    if levels:
        run["multi_fidelity"] = {"levels": levels, "eta": 3, "bracket": 9}
        if anchors:  # lower levels score anchors chosen from the first `anchors` trials
            run["multi_fidelity"] |= {"subsets": "anchors", "calibration": anchors}
    else:
        run["fidelity"] = top
    (work / "run.yaml").write_text(yaml.safe_dump(run))
    t0 = time.perf_counter()
    run_search(work / "run.yaml", work / "run", log=lambda s: None)
    seconds = time.perf_counter() - t0
    sizes = {t: 1024 for t in TASKS}
    return _trace_from_ledger(name, seed, work / "run", levels or [top], sizes, seconds)


_WORKER = None  # the evaluation worker of a baseline pool process


def _start_worker(spec) -> None:
    import torch

    from evomerge.search.executors.worker import Worker

    global _WORKER
    torch.set_num_threads(1)
    _WORKER = Worker(spec)


def _score(args) -> float:
    recipe, top = args
    out = _WORKER.evaluate(recipe, top)
    return 0.0 if out.values is None else sum(out.values[f"{t}/exact_match"] for t in TASKS) / len(TASKS)


def _mergekit_defaults(space) -> tuple[list[float], float, dict]:
    """x0, sigma0 and options of mergekit-evolve's own defaults (mergekit 0.1.5,
    scripts/evolve.py and evo/genome.py), in the unit cube: x0 at weight 1/n_models and density
    1, sigma0 1/6 in gene units (per-gene stds rescale it to the cube), pycma's default
    population, no bounds. Out-of-range genes: mergekit takes their absolute value (and clamps
    density to [0, 1]); here the decode clips them to the space's ranges. The method gene, which
    mergekit-evolve does not have (one method per run), starts at TIES."""
    genes = space.genes()
    n_models = len(space.models)
    x0, stds = [], []
    for g in genes:
        if g.choices:
            x0.append(g.encode("ties") if "ties" in g.choices else 0.5)
            stds.append(1.0)
            continue
        default = 1.0 / n_models if g.name.endswith("weight") or ".weight" in g.name else 1.0
        x0.append(g.encode(min(max(default, g.low), g.high)))
        stds.append(1.0 / (g.high - g.low))
    return x0, 1 / 6, {"CMA_stds": stds}


def run_mergekit_evolve_style(
    seed: int, budget: int, top: int, zoo: Path, compact: bool = True, workers: int = 1,
    defaults: bool = False,
) -> Trace:
    """pycma ``fmin2`` over the space's genes, decoded to a recipe and scored, a generation at a
    time on ``workers`` processes, as mergekit-evolve searched (its default genome is the compact
    space: one TIES weight and density per expert). x0, sigma0, bounds, population and seed are
    those the controller's CMA-ES uses, so that for one seed this run and "cmaes" on the same
    space are paired: differences between them are then the controller's doing, not seed noise.
    ``budget`` only stops the run, so a longer run's first evaluations are the shorter one's.
    ``defaults``: mergekit-evolve's own x0, sigma0 and population instead (``_mergekit_defaults``),
    as a user of that tool runs it."""
    import multiprocessing

    import cma

    from evomerge.search.executors import TaskSpec, WorkerSpec
    from evomerge.search.space import load_space

    work = WORK / f"baseline-{'6' if compact else 'full'}{'-defaults' if defaults else ''}-s{seed}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "space.yaml").write_text(yaml.safe_dump(_space(compact, zoo)))
    space = load_space(work / "space.yaml")
    refs = {m: Path(m) for m in [str(zoo / "base"), *space.source_models()]}
    spec = WorkerSpec(refs, str(zoo / "base"), tuple(TaskSpec(t, "search", False) for t in TASKS))
    points: list[tuple[int, float, float]] = []
    best = float("-inf")
    pool = multiprocessing.get_context("spawn").Pool(workers, _start_worker, (spec,))

    def objectives(xs) -> list[float]:
        nonlocal best
        scores = pool.map(_score, [(space.decode([float(v) for v in x]), top) for x in xs])
        for f in scores:  # in the generation's order, as a serial loop would have scored them
            best = max(best, f)
            points.append((len(points) + 1, (len(points) + 1) * top * len(TASKS), best))
        return [-f for f in scores]

    t0 = time.perf_counter()
    try:
        common = {"maxfevals": budget, "seed": seed + 1, "verbose": -9}
        if defaults:
            x0, sigma0, options = _mergekit_defaults(space)
        else:
            x0, sigma0, options = [0.5] * space.dimension, 0.25, {"bounds": [0, 1], "popsize": 9}
        cma.fmin2(None, x0, sigma0, common | options, parallel_objective=objectives)
    finally:
        pool.terminate()
    name = f"mergekit-evolve-style{' (6 genes)' if compact else ''}{', its defaults' if defaults else ''}"
    return Trace(name, seed, points[:budget], time.perf_counter() - t0)


def _mf_cost_ratio(levels: list[int], eta: int = 3, bracket: int = 9) -> float:
    """How many times cheaper a bracket is than scoring all its candidates at the top level."""
    n, cost = bracket, 0
    for level in levels:
        cost += n * level
        n = max(1, n // eta)
    return bracket * levels[-1] / cost


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=int, default=90, help="candidate recipes per run")
    p.add_argument("--seeds", default="0")
    p.add_argument("--top", type=int, default=256, help="examples per task at the top fidelity")
    p.add_argument(
        "--levels", default="32,96", help="lower successive-halving levels (the top is --top)"
    )
    p.add_argument("--optimizers", default="random,cmaes,tpe,gp", help="also cmaes-async")
    p.add_argument(
        "--compact",
        default="cmaes,tpe",
        help="optimisers also run on the baseline's 6-gene space (global TIES weight, density)",
    )
    p.add_argument("--zoo", type=Path, default=None)
    p.add_argument("--workers", type=int, default=1, help="evaluation slots (a pool when above 1)")
    p.add_argument("--no-mf", action="store_true", help="one fidelity only")
    p.add_argument("--mf-only", action="store_true", help="multi-fidelity runs only")
    p.add_argument("--pareto", action="store_true",
                   help="the optimisers are told the three scores, not their mean (MOTPE for tpe)")
    p.add_argument("--anchors", type=int, default=0,
                   help="multi-fidelity levels score anchor subsets chosen from this many calibration "
                        "trials (0: random nested subsets)")
    p.add_argument("--hv-reference", default="tpe (3 objectives)+MF",
                   help="the run whose final hypervolume (per seed) the others are measured against")
    p.add_argument("--tasks", default=None,
                   help="task:metric,... instead of the three skills (controller runs only: add "
                        "--no-baseline), e.g. recall:exact_match,addition_mc:acc")
    p.add_argument("--priors", action="store_true", help="the sources' priors are scored first")
    p.add_argument("--no-baseline", action="store_true", help="skip the mergekit-evolve-style runs")
    p.add_argument("--baselines", default="full,compact",
                   help="mergekit-evolve-style runs: on the full space, on the compact 6-gene one, and "
                        "(defaults) on the full space with mergekit-evolve's own x0, sigma0 and population")
    p.add_argument("--baseline-budget", type=int, default=None,
                   help="candidates of the full-space baseline (default --budget): a longer run shows "
                        "how much more it needs to reach what the others reached")
    p.add_argument(
        "--traces",
        type=Path,
        default=WORK / "traces.json",
        help="every run's trace is written here as it finishes (JSON)",
    )
    p.add_argument(
        "--report",
        type=Path,
        nargs="+",
        default=None,
        help="print the tables of saved traces files (a later file's run replaces an earlier "
        "one's of the same name and seed); run nothing",
    )
    args = p.parse_args()
    if args.report:
        runs: dict[tuple[str, int], Trace] = {}
        for path in args.report:
            saved = json.loads(path.read_text())
            for t in saved["traces"]:
                runs[t["name"], t["seed"]] = Trace(t["name"], t["seed"], [tuple(x) for x in t["points"]],
                                                   t["seconds"], [tuple(x) for x in t.get("hv", [])])
        report(sorted(runs.values(), key=lambda t: t.seed), saved["header"])
        report_hypervolume(sorted(runs.values(), key=lambda t: t.seed), args.hv_reference)
        return 0

    from evomerge.zoo.build import default_zoo_dir

    if args.tasks:
        global TASKS, METRIC
        METRIC = dict(item.split(":") for item in args.tasks.split(","))
        TASKS = tuple(METRIC)

    zoo = (args.zoo or default_zoo_dir()).resolve()
    if not (zoo / "zoo.json").is_file():
        print(f"no zoo at {zoo}; build it with `evomerge zoo build`", file=sys.stderr)
        return 2
    levels = [int(v) for v in args.levels.split(",")] + [args.top]
    mf_budget = int(args.budget * _mf_cost_ratio(levels))
    header = (
        f"zoo_ps space (37 genes) unless marked 6 genes; {args.budget} candidates per run at one fidelity, "
        f"{mf_budget} with multi-fidelity {levels} (equal cost); "
        f"fitness = mean exact match at {args.top} examples/task"
    )
    traces: list[Trace] = []

    def ran(t: Trace) -> None:
        traces.append(t)
        print(
            f"  ran {t.name} seed {t.seed}: best {t.best:.4f} in {t.seconds:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        args.traces.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.traces.with_suffix(".tmp")
        tmp.write_text(json.dumps({"header": header, "traces": [t.__dict__ for t in traces]}))
        tmp.replace(args.traces)

    fidelities = (None,) if args.no_mf else (levels,) if args.mf_only else (None, levels)

    def controller_runs(seed: int, optimizers: str, compact: bool) -> None:
        for opt in filter(None, optimizers.split(",")):
            for mf in fidelities:
                budget = args.budget if mf is None else mf_budget
                ran(run_controller(opt, seed, budget, args.top, mf, zoo, compact=compact,
                                   workers=args.workers, pareto=args.pareto, anchors=args.anchors,
                                   priors=args.priors))

    for seed in [int(s) for s in args.seeds.split(",")]:
        controller_runs(seed, args.optimizers, compact=False)
        if not args.no_baseline:
            full_budget = args.baseline_budget or args.budget
            if "full" in args.baselines:
                ran(run_mergekit_evolve_style(seed, full_budget, args.top, zoo, compact=False, workers=args.workers))
            if "compact" in args.baselines:
                ran(run_mergekit_evolve_style(seed, args.budget, args.top, zoo, compact=True, workers=args.workers))
            if "defaults" in args.baselines:
                ran(run_mergekit_evolve_style(seed, full_budget, args.top, zoo, compact=False, workers=args.workers,
                                              defaults=True))
        controller_runs(seed, args.compact, compact=True)
    report(traces, header)
    report_hypervolume(traces, args.hv_reference)
    return 0


def report_hypervolume(traces: list[Trace], reference: str) -> None:
    """Per run and seed: the final hypervolume of the skills' front (reference point 0), and the
    examples until it reached the ``reference`` run's final hypervolume of the same seed, as a
    share of what that run spent."""
    refs = {t.seed: t for t in traces if t.name == reference and t.hv}
    if not refs:
        return
    print(f"\nhypervolume of the three skills (reference point 0); share: examples until the run "
          f"reached {reference}'s final hypervolume of the same seed / the examples that run spent")
    for name in dict.fromkeys(t.name for t in traces):
        cells = []
        for t in (t for t in traces if t.name == name and t.seed in refs):
            target, spent = refs[t.seed].hv[-1][1], refs[t.seed].hv[-1][0]
            hit = next((ex for ex, v in t.hv if v >= target), None)
            share = f"{hit / spent:.2f}" if hit is not None else f">{t.hv[-1][0] / spent:.2f}" if t.hv else "-"
            cells.append(f"s{t.seed} {t.hv[-1][1] if t.hv else 0:.4f} ({share})")
        if cells:
            print(f"  {name:<40} " + "  ".join(cells))


def _median_range(values: list[float], fmt: str = "{:.3f}") -> str:
    return (
        f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}..{fmt.format(max(values))})"
        if values
        else "-"
    )


def report(traces: list[Trace], header: str) -> None:
    """Per run, then per run name over seeds. The target is 95% of the best recipe any run found."""
    overall = max(t.best for t in traces)
    print(f"\n{header}")
    print(f"best recipe found by any run: {overall:.4f}\n")
    print(
        f"{'run':<34}{'seed':>5}{'best':>8}{'evals to 90%':>14}{'examples to 90%':>17}"
        f"{'evals to 95%':>14}{'examples to 95%':>17}{'wall s':>8}"
    )
    for t in traces:
        cells = []
        for frac in (0.90, 0.95):
            hit = t.reach(frac * overall)
            cells += ["-", "-"] if hit is None else [str(hit[0]), f"{hit[1]:.0f}"]
        print(
            f"{t.name:<34}{t.seed:>5}{t.best:>8.4f}{cells[0]:>14}{cells[1]:>17}{cells[2]:>14}{cells[3]:>17}"
            f"{t.seconds:>8.0f}"
        )

    names = list(dict.fromkeys(t.name for t in traces))
    seeds = sorted({t.seed for t in traces})
    print(
        f"\nover seeds {seeds}: median (min..max); a run that never reached 95% counts as its whole cost "
        f"(a lower bound, marked +)"
    )
    print(f"{'run':<34}{'best':>24}{'reached 95%':>13}{'examples to 95%':>30}")
    cost: dict[tuple[str, int], tuple[float, bool]] = {}
    for name in names:
        runs = [t for t in traces if t.name == name]
        for t in runs:
            hit = t.reach(0.95 * overall)
            cost[name, t.seed] = (
                (hit[1], True) if hit else (t.points[-1][1] if t.points else 0.0, False)
            )
        costs = [cost[name, t.seed][0] for t in runs]
        n_hit = sum(cost[name, t.seed][1] for t in runs)
        lower = "+" if n_hit < len(runs) else ""
        print(
            f"{name:<34}{_median_range([t.best for t in runs]):>24}{f'{n_hit}/{len(runs)}':>13}"
            f"{_median_range(costs, '{:.0f}') + lower:>30}"
        )

    for base in [n for n in names if n.startswith("mergekit-evolve-style")]:
        print(
            f"\nexamples to 95% relative to {base} of the same seed (< 1 = fewer; '<=' where the "
            f"baseline never reached it, so its whole budget is a lower bound on its cost):"
        )
        for name in names:
            if name.startswith("mergekit-evolve-style"):
                continue
            ratios = []
            for seed in seeds:
                if (name, seed) in cost and (base, seed) in cost:
                    (a, a_hit), (b, b_hit) = cost[name, seed], cost[base, seed]
                    if a_hit:
                        ratios.append(f"{a / b:.2f}" if b_hit else f"<={a / b:.2f}")
                    else:
                        ratios.append("not reached" if b_hit else "neither")
            print(f"  {name:<32} " + "  ".join(ratios))


if __name__ == "__main__":
    sys.exit(main())
