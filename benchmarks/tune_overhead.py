"""The Tune trainable's overhead per trial against evomerge's own pool, on the same zoo recipes.

Both sides score the same ``--trials`` recipes (random search with ``--seed`` over the run
config's space; runs/quickstart.yaml by default: the toy zoo's parameter space, three tasks,
fidelity levels 64, 256 and all 1024 examples), every recipe at every level, one trial at a time:

* ``pool``: evomerge's pool executor, one worker process; a trial is its levels submitted one
  after the other (what the controller does for a candidate promoted to the top);
* ``tune``: ``tune.Tuner`` with ``evomerge_trainable`` and ``EvomergeSearcher`` (random search,
  the same seed: the same recipes), no scheduler (every trial runs every level),
  ``max_concurrent_trials=1``, ``reuse_actors=True`` (as docs/tune.md advises);
* ``tune-fresh`` (``--fresh``, one run): the same without actor reuse: each trial starts an actor
  and loads the sources again.

Per trial: its time as the driver sees it, from the previous trial's end (the run's start, for
the first) to its own end (pool: its last level's result; Tune: a callback's
``on_trial_complete``), so Tune's scheduling between trials counts; and the worker's own
evaluation time (``Outcome.seconds``; Tune: the ``seconds`` each report carries); overhead =
time - evaluation. A run's first trial also pays the worker's start (process, imports, the
sources and the resident model), so it is shown apart; the other trials of all runs give
min / median / max.
The script also checks that both sides scored the same recipes with the same scores.

    python benchmarks/tune_overhead.py [--config runs/quickstart.yaml] [--trials 12] [--repeats 3]
        [--seed 0] [--fresh]

Needs the zoo (`evomerge zoo build`) for the default config. About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).parent / "_work" / "tune_overhead"

_clock: dict[str, dict] = {}  # Tune trial id -> start, end, evaluation seconds, recipe, scores (driver side)


def _recipes(run, n: int, seed: int) -> list:
    from evomerge.integrations.tune import config_of, recipe_of

    optimizer = run.build_optimizer(run.optimizer_spec("random"), seed)
    return [recipe_of(run.space, config_of(run.space, optimizer.ask().x)) for _ in range(n)]


def pool_run(run, recipes: list) -> list[dict]:
    from evomerge.config.run import ExecutorSpec
    from evomerge.search.executors import open_executor

    trials = []
    last = time.perf_counter()
    executor = open_executor(ExecutorSpec(kind="pool", workers=1), run.worker)
    try:
        for job, recipe in enumerate(recipes):
            evaluation, scores = 0.0, []
            for level in run.levels:
                executor.submit(job, recipe, level)
                outcome = executor.wait()[1]
                if outcome.values is None:
                    raise SystemExit(f"pool: trial {job} failed: {outcome.error}")
                evaluation += outcome.seconds
                scores.append(outcome.values)
            end = time.perf_counter()
            trials.append({"wall": end - last, "evaluation": evaluation,
                           "recipe": recipe.content_hash(), "scores": scores})
            last = end
    finally:
        executor.close()
    return trials


def tune_run(run, n: int, seed: int, storage: Path, name: str, reuse: bool) -> list[dict]:
    from ray import tune

    from evomerge.integrations.tune import FITNESS, EvomergeSearcher, evomerge_trainable

    class Clock(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            _clock[trial.trial_id] = {"start": time.perf_counter(), "evaluation": 0.0, "scores": []}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            c = _clock[trial.trial_id]
            c["evaluation"] += result["seconds"]
            c["recipe"] = result["recipe_hash"]
            c["scores"].append(dict(result))

        def on_trial_complete(self, iteration, trials, trial, **info):
            _clock[trial.trial_id]["end"] = time.perf_counter()

    _clock.clear()
    begun = time.perf_counter()
    tune.Tuner(
        evomerge_trainable(run),
        tune_config=tune.TuneConfig(metric=FITNESS, mode="max", num_samples=n, max_concurrent_trials=1,
                                    reuse_actors=reuse,
                                    search_alg=EvomergeSearcher(run, optimizer="random", seed=seed)),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0, callbacks=[Clock()]),
    ).fit()
    ordered = sorted(_clock.values(), key=lambda c: c["start"])
    ends = [begun] + [c["end"] for c in ordered]
    return [{"wall": end - before, "evaluation": c["evaluation"], "recipe": c["recipe"],
             "scores": c["scores"]} for c, before, end in zip(ordered, ends[:-1], ends[1:], strict=True)]


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "runs" / "quickstart.yaml")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="also one Tune run without actor reuse")
    args = parser.parse_args()

    import ray

    from evomerge.integrations.tune import load_tune_run

    run = load_tune_run(args.config)
    recipes = _recipes(run, args.trials, args.seed)
    shutil.rmtree(WORK, ignore_errors=True)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"Ray runtime started in {time.perf_counter() - t0:.1f} s (not counted below)")

    sides: dict[str, list[list[dict]]] = {"pool": [], "tune": [], "tune-fresh": []}
    for r in range(args.repeats):
        plan = [("pool", None), ("tune", True)] + ([("tune-fresh", False)] if args.fresh and r == 0 else [])
        for side, reuse in plan:
            load = os.getloadavg()[0]
            t = time.perf_counter()
            trials = pool_run(run, recipes) if side == "pool" else tune_run(
                run, args.trials, args.seed, WORK, f"{side}-{r}", reuse)
            total = time.perf_counter() - t
            sides[side].append(trials)
            print(f"run {r} {side:10s}: {total:6.1f} s for {len(trials)} trials, load average {load:.1f}")

    ray.shutdown()
    reference = sides["pool"][0]
    mismatches = 0
    for side, runs in sides.items():
        for trials in runs:
            same = [t["recipe"] for t in trials] == [t["recipe"] for t in reference]
            scores = all(  # every score the pool gave, equal in the other run's reports
                len(a["scores"]) == len(b["scores"])
                and all({k: y.get(k) for k in x} == x for x, y in zip(a["scores"], b["scores"], strict=True))
                for a, b in zip(reference, trials, strict=True))
            if not (same and scores):
                mismatches += 1
                print(f"MISMATCH: {side} scored {'other recipes' if not same else 'other scores'} than the pool")
    if not mismatches:
        print("checked: every run scored the same recipes with the same scores as the first pool run")

    print(f"\n{args.trials} trials x {len(run.levels)} levels {list(run.levels)}, {args.repeats} runs; "
          f"seconds, min / median / max\n")
    print("| side | first trial (worker start) | later trials: time | evaluation | overhead (time - evaluation) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for side, runs in sides.items():
        if not runs:
            continue
        first = [trials[0]["wall"] for trials in runs]
        later = [t for trials in runs for t in trials[1:]]
        print(f"| {side} | {_stats(first)} | {_stats([t['wall'] for t in later])} | "
              f"{_stats([t['evaluation'] for t in later])} | "
              f"{_stats([t['wall'] - t['evaluation'] for t in later])} |")


if __name__ == "__main__":
    main()
