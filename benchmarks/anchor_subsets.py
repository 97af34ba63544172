"""Anchor subsets against random nested subsets as cheap fitness on the toy zoo (issue 29, item 5).

Successive halving screens candidates on small random subsets of the search split. Here every
candidate is scored on every example of the search split instead, with its per-example outcomes
(``EvalResult.details``), so both kinds of subset can be cut from one outcome matrix:

- *calibration* rows: the base and the experts, the equal-weight average, task arithmetic
  (weights 1) and ``--calibration`` recipes drawn uniformly from the quickstart's space
  (search_spaces/zoo_ps.yaml) with one seed: what a run has scored at full fidelity first;
- *held-out* rows: ``--held-out`` recipes drawn with another seed plus a few plain merges (TIES
  density 0.5, task arithmetic at weights 0.5 and 0.8): the candidates to rank.

Anchors (evomerge/eval/anchors.py) are chosen per task from the calibration rows only; for k in
``--ks`` examples per task, the Spearman rank correlation across the held-out candidates between
the estimate and the full-split score is printed per task and for the mean over the tasks, for
anchors (seeds 0-4: which of equal examples the anchors take) and for today's random nested
subsets (``nested_subset``, seeds 0-4): median and range over the seeds. Two columns look at
what successive halving decides: rho among the better half of the held-out candidates (by their
full mean), and the share of the true top third that the estimate's top third keeps.

Task sets: ``zoo0``, the default zoo build (zoo/) on addition, reversal and sorting; ``zoo1``,
a second build (zoo seed 1, built once into benchmarks/_work/anchor_subsets/, ~4 min) on the
same skills; ``zoo0-other``, the default build on recall and addition as multiple choice (the
base's skills, which merges keep or lose: log-likelihood accuracy for the latter). The outcome
matrices are cached under benchmarks/_work/anchor_subsets/ (a rerun only re-ranks), the table in
results.json there.

    python benchmarks/anchor_subsets.py [--sets zoo0 zoo1 zoo0-other] [--ks 32 64 128]
        [--calibration 16] [--held-out 48] [--seeds 0 1 2 3 4] [--anchors-from all|plain|draws]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))  # zoo_landscape's helpers, when imported by path

from zoo_landscape import ROOT, _prepare  # noqa: E402

from evomerge.eval.anchors import anchor_order, anchor_subset, random_subset  # noqa: E402

WORK = Path(__file__).parent / "_work" / "anchor_subsets"
SETS = {  # name: (zoo seed, [(task, objective)])
    "zoo0": (0, [("addition", "exact_match"), ("reversal", "exact_match"), ("sorting", "exact_match")]),
    "zoo1": (1, [("addition", "exact_match"), ("reversal", "exact_match"), ("sorting", "exact_match")]),
    "zoo0-other": (0, [("recall", "exact_match"), ("addition_mc", "acc")]),
}
CALIBRATION_SEED, HELD_OUT_SEED = 100, 200
CONSTANT_SHARE = float(__import__("os").environ.get("ANCHORS_CONSTANT_SHARE", "0"))  # experiment knob
EXPERTS = ("addition", "reversal", "sorting")


def zoo_dir(seed: int) -> Path:
    """The default build for seed 0 (zoo/, as `evomerge zoo build` makes it), else one built here."""
    from evomerge.zoo.build import ZooConfig, build_zoo

    if seed == 0:
        return (ROOT / "zoo").resolve()
    return build_zoo((WORK / f"zoo_seed{seed}").resolve(), ZooConfig(seed=seed), log=lambda s: None)


def candidates(zoo: Path, work: Path, n_calibration: int, n_held_out: int):
    """[(name, group, recipe or None for a source model)]: calibration rows first."""
    from evomerge.search.space.base import load_space
    from evomerge.zoo.report import merge_recipe

    _prepare(zoo, work, None)  # the quickstart's space, pointed at this zoo
    space = load_space(work / "zoo_ps.yaml")
    base, experts = str(zoo / "base"), [str(zoo / e) for e in EXPERTS]

    def draws(seed: int, n: int, prefix: str) -> list:
        rng = random.Random(seed)
        return [(f"{prefix}{i}", space.decode([rng.random() for _ in space.genes()])) for i in range(n)]

    rows = [(n, "calibration", None) for n in ("base", *EXPERTS)]
    rows += [("average", "calibration", merge_recipe("linear", base, experts, [1.0] * 3)),
             ("task_arithmetic", "calibration", merge_recipe("task_arithmetic", base, experts, [1.0] * 3))]
    rows += [(n, "calibration", r) for n, r in draws(CALIBRATION_SEED, n_calibration, "cal")]
    rows += [(n, "held_out", r) for n, r in draws(HELD_OUT_SEED, n_held_out, "draw")]
    rows += [("ties_d0.5", "held_out", merge_recipe("ties", base, experts, [1.0] * 3, density=0.5)),
             ("task_arithmetic_0.5", "held_out", merge_recipe("task_arithmetic", base, experts, [0.5] * 3)),
             ("task_arithmetic_0.8", "held_out", merge_recipe("task_arithmetic", base, experts, [0.8] * 3))]
    return rows


def outcome_matrices(name: str, n_calibration: int, n_held_out: int,
                     log=lambda s: print(s, flush=True)) -> dict:
    """{"names", "groups", task: rows x examples} of per-example outcomes on the search split
    (cached by zoo build, tasks and recipes)."""
    import torch

    from evomerge.eval import load_task
    from evomerge.io.hf import load_causal_lm
    from evomerge.merge.in_memory import InMemoryMerger
    from evomerge.zoo.build import read_manifest

    seed, tasks = SETS[name]
    zoo = zoo_dir(seed)
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    rows = candidates(zoo, work, n_calibration, n_held_out)
    key = hashlib.sha256(json.dumps([read_manifest(zoo)["config_hash"], tasks, [
        (n, g, r.to_yaml() if r else n) for n, g, r in rows]]).encode()).hexdigest()[:16]
    cache = work / f"outcomes-{key}.npz"
    if cache.is_file():
        data = np.load(cache)
        return {"names": [n for n, _, _ in rows], "groups": [g for _, g, _ in rows],
                **{t: data[t] for t, _ in tasks}}
    torch.set_num_threads(1)  # 2 threads ran 10-20x slower on 2 cores shared with other work
    evaluators = {t: load_task(t, split="search") for t, _ in tasks}
    merger = InMemoryMerger({str(zoo / n): zoo / n for n in ("base", *EXPERTS)})
    resident, tokenizer = load_causal_lm(zoo / "base")
    out = {t: [] for t, _ in tasks}
    t0 = time.perf_counter()
    for i, (row, _, recipe) in enumerate(rows):
        if recipe is None:
            model = load_causal_lm(zoo / row)[0]
        else:
            merger.merge(recipe, into=resident)
            model = resident
        for t, objective in tasks:
            res = evaluators[t].evaluate(model, tokenizer)
            if not res.ok:
                raise RuntimeError(f"{name}: {row} on {t} failed: {res.error}")
            per = res.details["per_example"]
            if per["indices"] != list(range(evaluators[t].size())):
                raise RuntimeError(f"{name}: {t} did not score every example of the search split.")
            out[t].append(per["outcomes"][objective])
        if (i + 1) % 10 == 0:
            log(f"  {name}: scored {i + 1}/{len(rows)} candidates ({time.perf_counter() - t0:.0f}s)")
    mats = {t: np.array(v, dtype=float) for t, v in out.items()}
    np.savez(cache, **mats)
    return {"names": [n for n, _, _ in rows], "groups": [g for _, g, _ in rows], **mats}


def top_kept(est: np.ndarray, full: np.ndarray, share: float = 1 / 3) -> float:
    """Share of the best ``share`` by full score that are also the best ``share`` by estimate
    (what successive halving with eta=3 promotes)."""
    m = max(1, int(len(full) * share))
    best = set(np.argsort(-full, kind="stable")[:m].tolist())
    return len(best & set(np.argsort(-est, kind="stable")[:m].tolist())) / m


def rank_correlations(data: dict, tasks: list[str], ks: list[int], seeds: list[int],
                      calibration: str = "all") -> dict:
    """{method: {k: {column: [value per seed]}}} over the held-out rows: Spearman rho per task
    and for the mean over tasks, rho among the better half (by full mean) and the top third kept.
    ``calibration``: the calibration rows anchors see: all, the plain ones (sources, average, task
    arithmetic) or the draws only."""
    from scipy.stats import spearmanr

    held = np.array([g == "held_out" for g in data["groups"]])
    plain = np.array([not n.startswith("cal") for n in data["names"]])
    calib = ~held & {"all": True, "plain": plain, "draws": ~plain}[calibration]
    full = {t: data[t][held].mean(axis=1) for t in tasks}
    full["mean"] = np.mean([full[t] for t in tasks], axis=0)
    upper = full["mean"] >= np.median(full["mean"])
    result: dict = {"anchors": {}, "random": {}}
    for method in result:
        for k in ks:
            cell = {t: [] for t in (*tasks, "mean", "mean, top half", "top 1/3 kept")}
            for seed in seeds:
                est = {}
                for t in tasks:
                    y = data[t]
                    if method == "anchors":
                        order = anchor_order(y[calib], k, seed, constant_share=CONSTANT_SHARE)
                        sub = anchor_subset(y[calib], order, k)
                    else:
                        sub = random_subset(y.shape[1], k, seed)
                    est[t] = sub.estimate(y[held][:, sub.indices])
                est["mean"] = np.mean([est[t] for t in tasks], axis=0)
                for t, e in est.items():
                    cell[t].append(float(spearmanr(e, full[t]).statistic))
                cell["mean, top half"].append(float(spearmanr(est["mean"][upper], full["mean"][upper]).statistic))
                cell["top 1/3 kept"].append(top_kept(est["mean"], full["mean"]))
            result[method][k] = cell
    return result


def describe(data: dict, tasks: list[str]) -> str:
    held = np.array([g == "held_out" for g in data["groups"]])
    parts = []
    for t in tasks:
        y = data[t]
        scores = y[held].mean(axis=1)
        constant = float((y[~held].max(axis=0) == y[~held].min(axis=0)).mean())
        parts.append(f"{t}: held-out full score {scores.min():.3f}-{scores.max():.3f} (median "
                     f"{np.median(scores):.3f}), {constant:.0%} of examples constant on calibration")
    return "; ".join(parts)


def _cell(vals: list[float]) -> str:
    if not all(np.isfinite(vals)):
        return "n/a (a constant)"
    return f"{statistics.median(vals):.3f} ({min(vals):.2f}-{max(vals):.2f})"


def table(result: dict, tasks: list[str], ks: list[int]) -> None:
    cols = list(result["anchors"][ks[0]])
    print(f"{'k':>5} {'subset':8}" + "".join(f"{c:>19}" for c in cols))
    for k in ks:
        for method in ("anchors", "random"):
            print(f"{k:>5} {method:8}" + "".join(f"{_cell(result[method][k][c]):>19}" for c in cols))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--ks", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--calibration", type=int, default=16, help="random recipes among the calibration rows")
    ap.add_argument("--held-out", type=int, default=48, help="random recipes among the held-out rows")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--anchors-from", choices=["all", "plain", "draws"], default="all",
                    help="calibration rows the anchors see: all, the sources and plain merges, the draws")
    args = ap.parse_args()
    t0 = time.perf_counter()
    results = {}
    for name in args.sets:
        tasks = [t for t, _ in SETS[name][1]]
        data = outcome_matrices(name, args.calibration, args.held_out)
        res = rank_correlations(data, tasks, args.ks, args.seeds, args.anchors_from)
        n_cal = data["groups"].count("calibration")
        print(f"\n{name} (zoo seed {SETS[name][0]}): {n_cal} calibration rows (anchors from: {args.anchors_from}), "
              f"{len(data['groups']) - n_cal} held-out; Spearman rho of estimate vs full split, "
              f"median (min-max) over seeds {args.seeds}")
        print(describe(data, tasks))
        table(res, tasks, args.ks)
        results[name] = {"tasks": tasks, "rho": res}
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nwall time {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
