"""A fast testbed for optimisers: the toy zoo's landscape, recorded once, replayed in microseconds.

A search on the zoo costs seconds per evaluation, so comparing optimisers over 50 seeds would
take days. This benchmark records the landscape once and replays it:

1. ``build`` (once, ~50 min of 2 cores, cached): evomerge searches on the zoo's 37-gene
   parameter space (search_spaces/zoo_ps.yaml; fitness = mean exact match of addition,
   reversal and sorting on 256 search examples each) with random search, TPE and CMA-ES, so
   the recording covers the cube and the good regions both; every evaluation's genome and
   fitness go to ``benchmarks/data/zoo_landscape.npz`` (committed: the short form in CI reads it).
2. The replayed landscape is the posterior mean of a Gaussian process fitted to those points
   (Matern-5/2 with one lengthscale per gene, fitted by marginal likelihood, the noise kept at
   or above the scores' sampling noise): a smooth surrogate that keeps the zoo's structure
   (which methods and genes matter, where the good regions are) without running a model, at
   ~0.3 ms a point. It is capped at the best recorded score (a GP extrapolates past it toward
   the cube's corners, where no recorded point says so), so its optimum is that cap, reached
   on a region around the best recordings; the optimum is checked by searching the surrogate
   itself (CMA-ES from the best recorded points), once, and cached with it.
3. ``run``: every optimiser, many seeds, in ask/tell form on the interpolant: evaluations until
   the best so far reaches 95% / 99% of the optimum, median and quartiles.
4. ``check``: the short form for CI: few seeds and optimisers against the figures recorded in
   ``benchmarks/data/replay_reference.json``; fails when an optimiser needs clearly more
   evaluations than recorded (tests/benchmarks/test_replay_landscape.py).

    python benchmarks/replay_landscape.py build [--zoo zoo] [--workers 2]
    python benchmarks/replay_landscape.py run [--seeds 50] [--budget 300] [--optimizers ...]
    python benchmarks/replay_landscape.py check [--record]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).parent / "_work" / "replay_landscape"
DATA = Path(__file__).parent / "data" / "zoo_landscape.npz"
FIT = Path(__file__).parent / "data" / "zoo_landscape_fit.npz"  # the fitted GP (committed: CI does not refit)
REFERENCE = Path(__file__).parent / "data" / "replay_reference.json"
TASKS = ("addition", "reversal", "sorting")
# what the recording runs: (optimizer, trials); the first covers the cube, the others its good regions
RECORDING = (("random", 300), ("tpe", 250), ("cmaes", 200))
FIDELITY = 256
NOISE_FLOOR = 0.015  # sd of a mean exact match over 768 examples near 0.8: sqrt(0.8 * 0.2 / 768)


def _run_config(work: Path, zoo: Path, optimizer: str, trials: int, workers: int) -> Path:
    import yaml

    space = (ROOT / "search_spaces" / "zoo_ps.yaml").read_text().replace("../zoo/", f"{zoo}/")
    (work / "space.yaml").write_text(space)
    run = {
        "space": "space.yaml",
        "objectives": [{"task": t} for t in TASKS],
        "scalarization": "weighted_sum",
        "optimizer": {"name": optimizer},
        "fidelity": FIDELITY,
        "budget": {"trials": trials},
        "executor": {"workers": workers, "torch_threads": 1},
        "tracking": {"enabled": False},
        "seed": 0,
    }
    path = work / f"{optimizer}.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def build(zoo: Path, workers: int, out: Path = DATA) -> None:
    """Record the zoo's landscape: every evaluation of the recording searches, resumable."""
    from evomerge.run import resume_search, run_search
    from evomerge.search.ledgers import find_ledger, open_ledger

    if not (zoo / "zoo.json").exists():
        sys.exit(f"{zoo}: no zoo there; run `evomerge zoo build` first.")
    WORK.mkdir(parents=True, exist_ok=True)
    genomes, fitness, source = [], [], []
    t0 = time.perf_counter()
    for optimizer, trials in RECORDING:
        cfg = _run_config(WORK, zoo.resolve(), optimizer, trials, workers)
        run_dir = WORK / f"run-{optimizer}"
        if find_ledger(run_dir):
            resume_search(run_dir, log=lambda s: None)  # finishes an interrupted recording
        else:
            run_search(cfg, run_dir, log=lambda s: None)
        ledger = open_ledger(run_dir, readonly=True)
        for rec in ledger.evaluations("complete"):
            genomes.append(rec.genome)
            fitness.append(statistics.fmean(rec.scores[f"{t}/exact_match"] for t in TASKS))
            source.append(optimizer)
        ledger.close()
        print(f"recorded {optimizer}: {trials} trials, {time.perf_counter() - t0:.0f} s so far", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, genomes=np.array(genomes, dtype=np.float32),
                        fitness=np.array(fitness, dtype=np.float32), source=np.array(source))
    tmp.replace(out)
    print(f"{len(fitness)} points in {out} ({time.perf_counter() - t0:.0f} s)")


class Landscape:
    """The replayed fitness: a GP posterior mean over the recorded points (unit cube, maximised)."""

    def __init__(self, X: np.ndarray, lengthscales: np.ndarray, alpha: np.ndarray, mean: float,
                 optimum: float, argmax: np.ndarray, cap: float) -> None:
        self.X, self.inv = X.astype(np.float64), 1.0 / lengthscales.astype(np.float64)
        self.alpha, self.mean = alpha.astype(np.float64), float(mean)
        self.optimum, self.argmax, self.cap = float(optimum), argmax, float(cap)
        self._Xs = self.X * self.inv

    def __call__(self, x) -> float:
        r = np.sqrt(np.sum((self._Xs - np.asarray(x, dtype=np.float64) * self.inv) ** 2, axis=1))
        return min(self.cap, float(self.mean + _matern52(r) @ self.alpha))

    @classmethod
    def load(cls, data: Path = DATA, fit: Path = FIT) -> Landscape:
        """The fitted landscape; fitted again (~1-3 min) when the recording changed."""
        z = np.load(fit) if fit.exists() else None
        if z is None or str(z["data"]) != _digest(data):
            fit_landscape(data, fit)
            z = np.load(fit)
        return cls(z["X"], z["lengthscales"], z["alpha"], z["mean"], z["optimum"], z["argmax"], z["cap"])


def _matern52(r):
    s5 = np.sqrt(5.0) * r
    return (1.0 + s5 + s5 * s5 / 3.0) * np.exp(-s5)


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def fit_landscape(data: Path, cache: Path, steps: int = 150) -> None:
    """Fit the GP (torch, float64, L-BFGS on the marginal likelihood) and find its optimum."""
    import torch

    z = np.load(data)
    X = torch.tensor(z["genomes"], dtype=torch.float64)
    y = torch.tensor(z["fitness"], dtype=torch.float64)
    mean, scale = y.mean(), y.std()
    t = (y - mean) / scale
    n, d = X.shape
    log_ls = torch.full((d,), float(np.log(0.5)), dtype=torch.float64, requires_grad=True)
    # The recorded scores are means over 3 x 256 examples: sampling noise of ~0.015 at least. A
    # floor on the noise keeps the GP from threading every point (and overshooting between them).
    floor = (NOISE_FLOOR / float(scale)) ** 2
    raw_noise = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    log_amp = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_ls, raw_noise, log_amp], max_iter=steps, line_search_fn="strong_wolfe")

    def noise():
        return floor + torch.nn.functional.softplus(raw_noise) * floor

    def kernel(A, B, ls):
        r = torch.cdist(A / ls, B / ls).clamp_min(1e-12)
        s5 = np.sqrt(5.0) * r
        return (1.0 + s5 + s5 * s5 / 3.0) * torch.exp(-s5)

    def nll():
        opt.zero_grad()
        K = log_amp.exp() * kernel(X, X, log_ls.exp()) + noise() * torch.eye(n, dtype=X.dtype)
        L = torch.linalg.cholesky(K)
        a = torch.cholesky_solve(t[:, None], L)
        loss = 0.5 * (t[:, None] * a).sum() + torch.log(torch.diagonal(L)).sum()
        loss.backward()
        return loss

    t0 = time.perf_counter()
    opt.step(nll)
    with torch.no_grad():
        ls = log_ls.exp()
        K = log_amp.exp() * kernel(X, X, ls) + noise() * torch.eye(n, dtype=X.dtype)
        alpha = torch.cholesky_solve(t[:, None], torch.linalg.cholesky(K))[:, 0] * scale * log_amp.exp()
        sd = float(noise().sqrt() * scale)
    cap = float(z["fitness"].max())
    land = Landscape(X.numpy(), ls.numpy(), alpha.numpy(), float(mean), 0.0, np.zeros(d), cap)
    optimum, argmax = _maximise(land, z["genomes"][np.argsort(-z["fitness"])[:8]])
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, X=X.numpy().astype(np.float32), lengthscales=ls.numpy(), alpha=alpha.numpy(),
                        mean=float(mean), optimum=optimum, argmax=argmax, cap=cap, noise_sd=sd, data=_digest(data))
    tmp.replace(cache)
    print(f"landscape fitted in {time.perf_counter() - t0:.0f} s: optimum {optimum:.4f} (best recorded "
          f"{cap:.4f}: the cap), noise sd {sd:.4f}")


def _maximise(land: Landscape, starts: np.ndarray) -> tuple[float, np.ndarray]:
    import cma

    best, arg = -np.inf, starts[0]
    for i, x0 in enumerate(starts):
        es = cma.CMAEvolutionStrategy(list(np.clip(x0, 0, 1)), 0.05,
                                      {"bounds": [0, 1], "seed": i + 1, "verbose": -9, "maxfevals": 6000})
        es.optimize(lambda x: -land(x))
        if -es.result.fbest > best:
            best, arg = -es.result.fbest, np.asarray(es.result.xbest)
    return float(best), arg


LEVELS = (0.95, 0.99)  # of the landscape's optimum
CHECK = {"seeds": 10, "budget": 300, "optimizers": ("random", "cmaes", "lq_cmaes", "nsga2")}


def evaluations_to(name: str, seed: int, budget: int, land: Landscape) -> list[float]:
    """Evaluations until the best so far reaches each of LEVELS x optimum (inf: not in budget)."""
    from evomerge.search.optimizers import OPTIMIZERS

    opt = OPTIMIZERS.get(name)(land.X.shape[1], 1, seed)
    hit, best = [np.inf] * len(LEVELS), -np.inf
    for n in range(1, budget + 1):
        s = opt.ask()
        value = land(s.x)
        opt.tell(s.id, (value,))
        best = max(best, value)
        for i, level in enumerate(LEVELS):
            if hit[i] == np.inf and best >= level * land.optimum:
                hit[i] = n
        if hit[-1] != np.inf:
            break
    return hit


@functools.cache
def _worker_landscape() -> Landscape:
    """One load per worker process, not one per job."""
    return Landscape.load()


def _job(args) -> tuple[str, int, list[float]]:
    name, seed, budget = args
    return name, seed, evaluations_to(name, seed, budget, _worker_landscape())


def replay(names: list[str], seeds: int, budget: int, processes: int = 2) -> dict[str, dict]:
    """Every optimiser on every seed, in ``processes`` worker processes."""
    from multiprocessing import get_context

    Landscape.load()  # fit once, before the workers read the cache
    jobs = [(n, s, budget) for n in names for s in range(seeds)]
    with get_context("spawn").Pool(processes) as pool:
        done = pool.map(_job, jobs, chunksize=1)
    out: dict[str, dict] = {n: {"seeds": seeds, "budget": budget, "hits": {}} for n in names}
    for name, seed, hit in done:
        out[name]["hits"][seed] = hit
    return out


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = np.quantile(np.array(values, dtype=float), [0.25, 0.5, 0.75], method="lower")
    return float(q[0]), float(q[1]), float(q[2])


def _cell(values: list[float], budget: int) -> str:
    q = quartiles(values)
    reached = sum(np.isfinite(values))
    show = [f"{v:.0f}" if np.isfinite(v) else f">{budget}" for v in q]
    return f"{show[1]} [{show[0]}-{show[2]}] ({reached}/{len(values)})"


def report(results: dict[str, dict], land: Landscape) -> None:
    print(f"landscape optimum {land.optimum:.4f}; evaluations to 95% / 99% of it, median [quartiles] "
          f"(seeds that reached it):")
    for name, r in results.items():
        hits = list(r["hits"].values())
        cells = "   ".join(_cell([h[i] for h in hits], r["budget"]) for i in range(len(LEVELS)))
        print(f"  {name:10s} {cells}")


def short_form() -> dict[str, dict]:
    """The CI figures: per optimiser, the median evaluations to 95% and how many seeds got there."""
    from evomerge.search.optimizers import OPTIMIZERS

    names = [n for n in CHECK["optimizers"] if n in OPTIMIZERS.names()]
    results = replay(names, CHECK["seeds"], CHECK["budget"])
    report(results, Landscape.load())
    return {n: {"median_to_95": quartiles([h[0] for h in r["hits"].values()])[1],
                "reached_95": int(sum(np.isfinite(h[0]) for h in r["hits"].values()))}
            for n, r in results.items()}


def worse_than(now: dict[str, dict], reference: dict[str, dict]) -> list[str]:
    """What got worse: fewer seeds reaching 95% (by more than 2), or a median 25% (+10) higher."""
    out = []
    for name, ref in reference.items():
        got = now.get(name)
        if got is None:
            continue
        slower = ref["median_to_95"] * 1.25 + 10  # a recorded inf (never reached) judges nothing
        if got["reached_95"] < ref["reached_95"] - 2 or got["median_to_95"] > slower:
            out.append(f"{name}: reached 95% of the optimum on {got['reached_95']}/{CHECK['seeds']} seeds, "
                       f"median {got['median_to_95']} evaluations; recorded {ref['reached_95']} seeds, "
                       f"median {ref['median_to_95']}")
    return out


def check(record: bool) -> int:
    """The short form against the recorded reference (exit 1 if an optimiser got worse)."""
    now = short_form()
    if record:
        text = json.dumps({"check": CHECK, "data": _digest(DATA), "figures": now}, indent=1)
        REFERENCE.write_text(text + "\n")
        print(f"recorded in {REFERENCE}")
        return 0
    worse = worse_than(now, json.loads(REFERENCE.read_text())["figures"])
    for line in worse:
        print("WORSE", line)
    return 1 if worse else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="record the zoo's landscape (once)")
    b.add_argument("--zoo", type=Path, default=ROOT / "zoo")
    b.add_argument("--workers", type=int, default=2)
    r = sub.add_parser("run", help="every optimiser over many seeds")
    r.add_argument("--seeds", type=int, default=50)
    r.add_argument("--budget", type=int, default=300)
    r.add_argument("--optimizers", nargs="+", default=["random", "cmaes", "lq_cmaes", "tpe", "nsga2"])
    r.add_argument("--processes", type=int, default=2)
    c = sub.add_parser("check", help="the short form (CI): compare with the recorded reference")
    c.add_argument("--record", action="store_true", help="write the reference instead")
    args = ap.parse_args(argv)
    if args.command == "build":
        build(args.zoo, args.workers)
    elif args.command == "check":
        return check(args.record)
    else:
        t0 = time.perf_counter()
        results = replay(args.optimizers, args.seeds, args.budget, args.processes)
        report(results, Landscape.load())
        print(f"{time.perf_counter() - t0:.0f} s")
        WORK.mkdir(parents=True, exist_ok=True)
        (WORK / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
