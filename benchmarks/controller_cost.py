"""What the search controller's optimiser costs per candidate: ask + tell, late in a run.

Issue 29, item 7: every optimiser's ask + tell should take at most 0.5 s (median) at 37 genes (the
quickstart space's size) with 500 finished evaluations on 2 cores. Each registered optimiser is
driven in its ask/tell form on a smooth synthetic objective of 37 genes (a shifted quadratic, the
values of no model: only the optimiser's own work is timed) until 500 evaluations are told, then
the next ``--timed`` ask + tell pairs are timed one by one. Multi-objective optimisers are also
timed with three objectives (the quickstart's three skills). Prints min / median / max seconds per
pair and the time the 500 evaluations took::

    python benchmarks/controller_cost.py [--optimizers cmaes tpe gp nsga2 random] [--told 500] [--timed 20]
        [--objectives 1 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

GENES = 37


def _values(x: np.ndarray, n_objectives: int) -> tuple[float, ...]:
    centre = np.linspace(0.2, 0.8, GENES)
    return tuple(float(-np.sum((x - np.roll(centre, k)) ** 2)) for k in range(n_objectives))


def measure(name: str, n_objectives: int, told: int, timed: int, seed: int = 0) -> dict:
    from evomerge.search.optimizers.base import OPTIMIZERS

    opt = OPTIMIZERS.get(name)(GENES, n_objectives, seed)
    t0 = time.perf_counter()
    pairs: list[float] = []
    cpu: list[float] = []  # the process's CPU time per pair: what other jobs on the cores do not inflate
    for i in range(told + timed):
        start, cpu_start = time.perf_counter(), time.process_time()
        s = opt.ask()
        if s is None:  # nothing is ever pending here, so an optimiser must always propose
            raise RuntimeError(f"{name} held back with nothing pending")
        opt.tell(s.id, _values(np.asarray(s.x, dtype=float), n_objectives))
        if i >= told:
            pairs.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
        if i == told - 1:
            reached = time.perf_counter() - t0
    return {"optimizer": name, "objectives": n_objectives, "min": min(pairs), "median": statistics.median(pairs),
            "max": max(pairs), "cpu_median": statistics.median(cpu), "first_told_seconds": reached}


def main() -> None:
    from evomerge.search.optimizers.base import OPTIMIZERS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--optimizers", nargs="+", default=None)
    ap.add_argument("--told", type=int, default=500)
    ap.add_argument("--timed", type=int, default=20)
    ap.add_argument("--objectives", type=int, nargs="+", default=[1, 3],
                    help="objective counts to time (several only for optimisers that take them)")
    args = ap.parse_args()
    names = args.optimizers or sorted(OPTIMIZERS.names())
    print(f"{GENES} genes, {args.told} evaluations told, then {args.timed} ask + tell pairs timed")
    for name in names:
        cls = OPTIMIZERS.get(name)
        for k in [k for k in args.objectives if k == 1 or cls.max_objectives is None]:
            r = measure(name, k, args.told, args.timed)
            flag = "" if r["median"] <= 0.5 else "  (over 0.5 s)"
            print(f"{name:>10} {k} objective(s): ask + tell {r['min']:.4f} / {r['median']:.4f} / {r['max']:.4f} s"
                  f"{flag} (CPU median {r['cpu_median']:.4f} s); the first {args.told} took "
                  f"{r['first_told_seconds']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
