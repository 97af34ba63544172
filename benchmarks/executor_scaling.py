"""Evaluations per minute by executor, against a mergekit-evolve-style loop measured in the same run.

Every run scores the same kind of candidates: recipes from the toy zoo's parameter space
(search_spaces/zoo_ps.yaml, which mergekit can express), on the three hard skills at ``--fidelity``
examples each. Executors: serial (in process), pool (2 processes), Ray (1 and 2 actors, a local
Ray runtime). The baseline is what mergekit-evolve does per candidate: write the merge to disk with
mergekit, load it with transformers, score it with the same tasks.

Printed per executor: wall time of the whole search (start-up included), steady-state evaluations
per minute (between the first and the last completion), the ratio to the baseline's rate, slot
utilisation, controller overhead per evaluation (serial: wall time not spent inside the worker),
and peak resident memory per worker process. Then slot utilisation per optimiser (random, TPE,
CMA-ES synchronous and asynchronous) on the pool.

    python benchmarks/executor_scaling.py [--trials 16] [--fidelity 32] [--repeats 1]

Needs the zoo (`evomerge zoo build`). Takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).parent / "_work" / "executor_scaling"
TASKS = ("addition", "reversal", "sorting")


class MemorySampler:
    """Peak RSS per worker process (pool workers are our children; Ray actors are not)."""

    def __init__(self) -> None:
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _workers(self):
        import psutil

        me = psutil.Process()
        for p in me.children(recursive=True):
            yield p
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info.get("cmdline") or [])
            if "_ActorBody" in cmd:
                yield p

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for p in self._workers():
                try:
                    rss = p.memory_info().rss
                except Exception:  # noqa: BLE001 - gone
                    continue
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def worker_peak_mb(self, min_mb: float = 300) -> float | None:
        """The largest worker (processes that loaded a model: above ``min_mb``)."""
        big = [v / 2**20 for v in self.peak.values() if v / 2**20 >= min_mb]
        return max(big) if big else None


def _write(work: Path, zoo: Path, executor: dict, optimizer: dict, trials: int, fidelity: int, name: str) -> Path:
    space = yaml.safe_load((ROOT / "search_spaces" / "zoo_ps.yaml").read_text())
    space["base_model"] = str(zoo / "base")
    space["models"] = [str(zoo / Path(m).name) for m in space["models"]]
    space["methods"] = ["task_arithmetic", "ties"]  # deterministic, and expressible in mergekit
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    run = {"space": "space.yaml", "objectives": [{"task": t} for t in TASKS], "scalarization": "weighted_sum",
           "optimizer": optimizer, "budget": {"trials": trials}, "fidelity": fidelity,
           "tracking": {"enabled": False}, "executor": executor, "seed": 0}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def _rows(run_dir: Path):
    from evomerge.search.ledgers import open_ledger

    led = open_ledger(run_dir, readonly=True)
    try:
        return led.completions()
    finally:
        led.close()


def measure(work: Path, zoo: Path, name: str, executor: dict, optimizer: dict, trials: int, fidelity: int) -> dict:
    from evomerge.run import run_search

    cfg = _write(work, zoo, executor, optimizer, trials, fidelity, name)
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    with MemorySampler() as mem:
        t0 = time.perf_counter()
        result = run_search(cfg, out, log=lambda s: None)
        wall = time.perf_counter() - t0
    rows = _rows(out)
    ends = sorted(r.finished for r in rows)
    steady = (len(ends) - 1) / (ends[-1] - ends[0]) * 60 if len(ends) > 1 and ends[-1] > ends[0] else None
    busy = sum(r.seconds or 0 for r in rows)
    return {"name": name, "wall": wall, "rate": steady, "evaluations": len(rows),
            "utilisation": (result.utilisation or {}).get("slot_utilisation"),
            "overhead": (ends[-1] - ends[0] - sum(r.seconds or 0 for r in rows[1:])) / max(len(rows) - 1, 1)
            if executor.get("kind") == "serial" else None,
            "worker_mb": mem.worker_peak_mb(), "busy": busy, "recipes": [r.recipe for r in rows]}


def baseline(work: Path, recipes: list[str], fidelity: int) -> dict:
    """mergekit-evolve's loop: mergekit writes each candidate, transformers loads it, tasks score it."""
    from evomerge.eval import load_task
    from evomerge.io.hf import load_causal_lm
    from evomerge.mergekit_compat import to_mergekit
    from evomerge.recipe import Recipe
    from evomerge.testing import run_mergekit

    tasks = [load_task(t, split="search", fitness=True) for t in TASKS]
    ends = []
    t0 = time.perf_counter()
    for i, text in enumerate(recipes):
        out = work / "baseline" / f"c{i}"
        shutil.rmtree(out, ignore_errors=True)
        run_mergekit(to_mergekit(Recipe.from_yaml(text)), out)
        base = Path(Recipe.from_yaml(text).base_model)
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (base / f).exists():
                shutil.copy(base / f, out / f)
        model, tok = load_causal_lm(out)
        for task in tasks:
            task.evaluate(model, tok, fidelity)
        ends.append(time.perf_counter())
        shutil.rmtree(out, ignore_errors=True)
    wall = time.perf_counter() - t0
    rate = (len(ends) - 1) / (ends[-1] - ends[0]) * 60 if len(ends) > 1 else None
    return {"name": "mergekit-evolve-style", "wall": wall, "rate": rate, "evaluations": len(ends),
            "utilisation": None, "overhead": None, "worker_mb": None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--fidelity", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    from evomerge.zoo.build import build_zoo, default_zoo_dir

    zoo = build_zoo(default_zoo_dir(), log=lambda s: None).resolve()
    WORK.mkdir(parents=True, exist_ok=True)
    random = {"name": "random"}
    executors = [("serial", {"kind": "serial", "torch_threads": 2}),
                 ("pool(2)", {"kind": "pool", "workers": 2, "torch_threads": 1})]
    if not args.no_ray:
        executors += [("ray(1)", {"kind": "ray", "workers": 1, "torch_threads": 2, "resources": {"num_cpus": 1}}),
                      ("ray(2)", {"kind": "ray", "workers": 2, "torch_threads": 1, "resources": {"num_cpus": 1}})]
    results: dict[str, list[dict]] = {}
    recipes: list[str] = []
    for rep in range(args.repeats):
        for name, ex in executors:
            r = measure(WORK, zoo, name.replace("(", "").replace(")", ""), ex, random, args.trials, args.fidelity)
            recipes = recipes or r["recipes"]
            results.setdefault(name, []).append(r)
        results.setdefault("mergekit-evolve-style", []).append(baseline(WORK, recipes, args.fidelity))
        print(f"repeat {rep + 1}/{args.repeats} done", flush=True)
    base_rates = [r["rate"] for r in results["mergekit-evolve-style"] if r["rate"]]
    base = statistics.median(base_rates) if base_rates else None
    print(f"\n{args.trials} candidates, {args.fidelity} examples per task x {len(TASKS)} tasks, "
          f"{args.repeats} repeat(s); medians (min..max over repeats)")
    print(f"{'executor':22s} {'wall s':>8s} {'evals/min':>14s} {'x baseline':>10s} {'slots busy':>10s} "
          f"{'ctrl s/eval':>11s} {'worker MB':>9s}")

    def fmt(vals, f="{:.1f}"):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "-"
        med = statistics.median(vals)
        return f.format(med) + (f" ({f.format(min(vals))}..{f.format(max(vals))})" if len(vals) > 1 else "")

    for name, runs in results.items():
        rate = statistics.median([r["rate"] for r in runs if r["rate"]]) if any(r["rate"] for r in runs) else None
        ratio = f"{rate / base:.2f}" if rate and base else "-"
        print(f"{name:22s} {fmt([r['wall'] for r in runs]):>8s} {fmt([r['rate'] for r in runs]):>14s} {ratio:>10s} "
              f"{fmt([r['utilisation'] for r in runs], '{:.0%}'):>10s} {fmt([r['overhead'] for r in runs], '{:.3f}'):>11s} "
              f"{fmt([r['worker_mb'] for r in runs], '{:.0f}'):>9s}")
    print("\nslot utilisation per optimiser on pool(2):")
    for label, opt in [("random", random), ("tpe", {"name": "tpe"}),
                       ("cmaes (synchronous)", {"name": "cmaes", "options": {"popsize": 6}}),
                       ("cmaes (asynchronous)", {"name": "cmaes", "options": {"popsize": 6, "asynchronous": True}})]:
        r = measure(WORK, zoo, "util-" + label.split()[0] + ("-async" if "asyn" in label else ""),
                    executors[1][1], opt, args.trials, args.fidelity)
        print(f"  {label:22s} slots busy {r['utilisation']:.0%}, {r['rate']:.1f} evaluations/min")


if __name__ == "__main__":
    main()
