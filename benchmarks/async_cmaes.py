"""Synchronous vs asynchronous CMA-ES with a pool of workers whose evaluations take random times.

The synchronous mode hands out a generation and waits for all of it (slots idle at the barrier);
the asynchronous one draws a new point whenever a slot frees and updates the distribution every
popsize results. Simulated: K workers, exponential evaluation times (mean 1), so completion order
is shuffled as on a real cluster. Prints, over seeds, best-so-far after N evaluations (min / median /
max) and the simulated wall time, per landscape and dimension, and the wall-time ratio.

    python benchmarks/async_cmaes.py [--budget 200] [--workers 4] [--seeds 10]
"""

from __future__ import annotations

import argparse
import heapq

import numpy as np

from evomerge.search.optimizers.cmaes import CMAES


def run(asynchronous: bool, f, d: int, budget: int, workers: int, seed: int, popsize: int):
    opt = CMAES(d, 1, seed, popsize=popsize, asynchronous=asynchronous)
    rng = np.random.default_rng(seed + 100)
    now, heap, best, done, asked = 0.0, [], -np.inf, 0, 0
    while done < budget:
        while len(heap) < workers and asked < budget:
            s = opt.ask()
            if s is None:  # synchronous: waiting for the rest of the generation
                break
            heapq.heappush(heap, (now + rng.exponential(1.0), s.id, s.x))
            asked += 1
        now, sid, x = heapq.heappop(heap)
        v = f(x)
        best, done = max(best, v), done + 1
        opt.tell(sid, (v,))
    return best, now


LANDSCAPES = {
    "sphere": lambda x: -float(np.sum((x - 0.3) ** 2)),
    "rosenbrock": lambda x: -float(np.sum(100 * (2 * x[1:] - 2 * x[:-1]) ** 2 + (1 - 2 * x[:-1]) ** 2)),
    "rastrigin": lambda x: -float(10 * len(x) + np.sum((4 * x - 2) ** 2 - 10 * np.cos(2 * np.pi * (4 * x - 2)))),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--popsize", type=int, default=8)
    args = ap.parse_args()
    print(f"{args.budget} evaluations, {args.workers} workers, popsize {args.popsize}, {args.seeds} seeds; "
          f"best (larger is better) min / median / max; wall = simulated time units")
    for name, f in LANDSCAPES.items():
        for d in (6, 20):
            row = {}
            for mode in (False, True):
                out = [run(mode, f, d, args.budget, args.workers, s, args.popsize) for s in range(args.seeds)]
                best = [b for b, _ in out]
                row[mode] = (np.min(best), np.median(best), np.max(best), float(np.median([w for _, w in out])))
            s, a = row[False], row[True]
            print(f"{name:10s} d={d:2d}  sync {s[0]:9.4g} {s[1]:9.4g} {s[2]:9.4g}  wall {s[3]:6.1f}   "
                  f"async {a[0]:9.4g} {a[1]:9.4g} {a[2]:9.4g}  wall {a[3]:6.1f}   wall ratio {a[3] / s[3]:.2f}")


if __name__ == "__main__":
    main()
