"""Driving a registered optimiser in its plain ask/tell loop, as the optimiser tests do."""

from __future__ import annotations

import numpy as np

from evomerge.search.optimizers import OPTIMIZERS


def run(name: str, objective, budget: int, seed: int, dimension: int, n_objectives: int = 1,
        **options) -> list:
    """``budget`` asks, each told at once: [(point, values)] in order (a float objective is
    told as one value)."""
    opt = OPTIMIZERS.get(name)(dimension, n_objectives, seed, **options)
    out = []
    for _ in range(budget):
        s = opt.ask()
        value = objective(s.x)
        value = value if isinstance(value, tuple) else (value,)
        opt.tell(s.id, value)
        out.append((np.array(s.x), value))
    return out
