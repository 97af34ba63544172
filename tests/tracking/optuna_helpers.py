"""Synthetic run directories for the Optuna mirror's tests: a run config, a parameter space over
models that need not exist, and a ledger written through the ledger API as a controller writes it
(successive halving: brackets of three at the cheap level, the best promoted to the top), with no
model loaded. `evomerge front` and `evomerge dashboard` read them like any run."""

from __future__ import annotations

import random
from pathlib import Path

import yaml

LEVELS = (2, 4)
OBJECTIVES = ("addition/exact_match", "reversal/exact_match")


def synthetic_run(root: Path, name: str = "run", *, brackets: int = 4, objectives=OBJECTIVES,
                  fail_trials: tuple[int, ...] = (1,), open_bracket: bool = False, seed: int = 0) -> Path:
    """A finished search of ``brackets`` brackets of three trials (``fail_trials`` fail at the cheap
    level); ``open_bracket`` adds a bracket scored at the cheap level and not promoted yet."""
    from evomerge.search.ledgers.sqlite import SQLiteLedger
    from evomerge.search.space import load_space

    run_dir = Path(root) / name
    run_dir.mkdir(parents=True)
    space = {"base_model": "/absent/base", "models": ["/absent/add", "/absent/rev"],
             "methods": ["task_arithmetic", "ties"],
             "parameters": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.3, "high": 1.0}}}
    (run_dir / "space.yaml").write_text(yaml.safe_dump(space))
    config = {"space": str(run_dir / "space.yaml"),
              "objectives": [{"task": k.split("/")[0]} for k in objectives],
              "multi_fidelity": {"levels": list(LEVELS), "bracket": 3},
              "optimizer": {"name": "random"}, "budget": {"trials": 3 * brackets},
              "tracking": {"enabled": False}}
    (run_dir / "run.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    sp = load_space(run_dir / "space.yaml")
    ledger = SQLiteLedger(run_dir / "ledger.db")
    ledger.begin_session(3 * brackets)
    rng = random.Random(seed)
    number = 0
    for b in range(brackets + int(open_bracket)):
        scored = []
        for _ in range(3):
            x = [rng.random() for _ in sp.genes()]
            recipe = sp.decode(x)
            eid = ledger.start(number, 0, recipe.content_hash(), x, recipe.to_yaml(), LEVELS[0])
            if number in fail_trials:
                ledger.finish(eid, None, f"trial {number}: out of memory", seconds=0.1)
            else:
                scores = {k: round(rng.random(), 3) for k in objectives}
                ledger.finish(eid, scores, seconds=0.1)
                scored.append((sum(scores.values()), number, x, recipe))
            number += 1
        if b == brackets or not scored:  # the open bracket waits for its rung to close
            continue
        _, best, x, recipe = max(scored)
        eid = ledger.start(best, 1, recipe.content_hash(), x, recipe.to_yaml(), LEVELS[1])
        ledger.finish(eid, {k: round(rng.random(), 3) for k in objectives}, seconds=0.2)
    ledger.close()
    return run_dir
