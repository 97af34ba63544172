"""What the Optuna mirror costs per 1,000 evaluations (issue 31, item 1).

A ledger of ``--trials`` finished trials is written through the ledger API (SQLite, as a search
writes it; one evaluation per trial at one fidelity, or with ``--multi-fidelity`` successive
halving over three levels, brackets of 9 and eta 3), with the quickstart's shape: 37 genes (a
merge-method choice and 36 ranges) and three objectives. No model is loaded: only the mirror's own
work is timed. Each repeat mirrors the whole ledger into a new storage (``full``), then times an
update with nothing to add by the same mirror, once it has read the study back (``no-op``: what
the live mirror does after a completion that settles no trial), and by a new mirror on the same
storage (``reopen``: what a resume or `evomerge dashboard` pays to open the study and find it up
to date). Prints min /
median / max seconds of each, and the full mirror per 1,000 evaluations::

    python benchmarks/optuna_mirror_cost.py [--trials 1000] [--repeat 3] [--storage journal|sqlite]
        [--multi-fidelity]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

GENES = 37
OBJECTIVES = ("addition/exact_match", "reversal/exact_match", "sorting/exact_match")


def build_ledger(run_dir: Path, trials: int, multi_fidelity: bool, seed: int = 0):
    """A finished run's ledger: returns (its completions, the genes, the fidelity levels)."""
    from evomerge.search.ledgers.sqlite import SQLiteLedger
    from evomerge.search.space.base import Gene

    genes = [Gene("method", choices=("task_arithmetic", "ties", "dare_ties"))]
    genes += [Gene(f"m{i // 12}.l{i % 12}.weight", 0.0, 1.0) for i in range(GENES - 1)]
    levels = (32, 128, None) if multi_fidelity else (None,)
    rng = random.Random(seed)
    ledger = SQLiteLedger(run_dir / "ledger.db")
    ledger.begin_session(trials)

    def evaluate(number: int, rung: int, x: list[float]) -> dict[str, float]:
        eid = ledger.start(number, rung, f"{number:064x}", x, "merge_method: ties\n", levels[rung])
        scores = {k: rng.random() for k in OBJECTIVES}
        ledger.finish(eid, scores, seconds=1.0)
        return scores

    number = 0
    while number < trials:
        bracket = []
        for _ in range(min(9 if multi_fidelity else 1, trials - number)):
            x = [rng.random() for _ in genes]
            bracket.append((sum(evaluate(number, 0, x).values()), number, x))
            number += 1
        for rung in range(1, len(levels)):  # promote the best third, as successive halving does
            bracket = sorted(bracket, reverse=True)[: max(1, len(bracket) // 3)]
            bracket = [(sum(evaluate(n, rung, x).values()), n, x) for _, n, x in bracket]
    completions = ledger.completions()
    ledger.close()
    return completions, genes, levels


def main() -> None:
    from evomerge.config.tracking import OptunaMirrorConfig
    from evomerge.search.objectives import BoundObjective
    from evomerge.tracking.optuna_mirror import OptunaMirror

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--storage", choices=("journal", "sqlite"), default="journal")
    ap.add_argument("--multi-fidelity", action="store_true")
    args = ap.parse_args()
    objectives = [BoundObjective(k, 1.0, 1.0) for k in OBJECTIVES]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        completions, genes, levels = build_ledger(run_dir, args.trials, args.multi_fidelity)
        print(f"{args.trials} trials, {len(completions)} evaluations, {len(genes)} genes, {len(objectives)} "
              f"objectives, levels {levels}, storage {args.storage}", flush=True)
        times: dict[str, list[float]] = {"full": [], "no-op": [], "reopen": []}
        for i in range(args.repeat):
            storage = f"m{i}.journal" if args.storage == "journal" else f"sqlite:///{run_dir / f'm{i}.db'}"
            settings = OptunaMirrorConfig(storage=storage, study="bench")

            def mirror(settings=settings):
                return OptunaMirror(run_dir, objectives, genes, levels, settings=settings)

            m = mirror()
            t = time.perf_counter()
            added = m.update(completions, search_over=True)
            times["full"].append(time.perf_counter() - t)
            # The first update after a bulk add re-reads what was added (Optuna's database cache
            # counts a trial as seen once read back); from then on an update reads only what is new.
            assert m.update(completions, search_over=True) == 0
            t = time.perf_counter()
            assert m.update(completions, search_over=True) == 0
            times["no-op"].append(time.perf_counter() - t)
            t = time.perf_counter()
            assert mirror().update(completions, search_over=True) == 0
            times["reopen"].append(time.perf_counter() - t)
            print(f"repeat {i + 1}: {added} trials added; full {times['full'][-1]:.3f} s, no-op "
                  f"{times['no-op'][-1]:.3f} s, reopen {times['reopen'][-1]:.3f} s", flush=True)
    for name, ts in times.items():
        print(f"{name:>7}: {min(ts):.3f} / {statistics.median(ts):.3f} / {max(ts):.3f} s (min / median / max)")
    per = [t / len(completions) * 1000 for t in times["full"]]
    print(f"full mirror per 1,000 evaluations: {min(per):.2f} / {statistics.median(per):.2f} / {max(per):.2f} s")


if __name__ == "__main__":
    main()
