"""Asynchronous CMA-ES: always answers, learns from results in any order, reproducible."""

from __future__ import annotations

import numpy as np

from evomerge.search.optimizers.cmaes import CMAES


def _drive(seed: int, order_seed: int, budget: int = 96, fail_every: int = 0):
    """Four workers: results come back in a shuffled order; returns every point asked."""
    opt = CMAES(5, 1, seed, popsize=8, asynchronous=True)
    rng = np.random.default_rng(order_seed)
    out, asked, n = [], [], 0
    while n < budget:
        while len(out) < 4:
            s = opt.ask()
            assert s is not None  # never waits for a generation
            out.append(s)
            asked.append(s.x)
        s = out.pop(int(rng.integers(len(out))))
        value = None if fail_every and n % fail_every == 0 else (-float(np.sum((s.x - 0.8) ** 2)),)
        opt.tell(s.id, value)
        n += 1
    return opt, asked


def test_same_seed_and_order_same_trajectory_and_it_converges():
    _, a = _drive(1, 7)
    _, b = _drive(1, 7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    _, asked = _drive(1, 7, budget=160, fail_every=9)
    first = np.mean([np.sum((x - 0.8) ** 2) for x in asked[:16]])
    last = np.mean([np.sum((x - 0.8) ** 2) for x in asked[-16:]])
    assert last < 0.25 * first  # the distribution moved to the optimum despite failures


def test_unknown_and_repeated_tells_are_ignored():
    opt = CMAES(3, 1, 0, popsize=4, asynchronous=True)
    s = opt.ask()
    opt.tell(s.id, (1.0,))
    opt.tell(s.id, (2.0,))  # told twice: counted once
    opt.tell(12345, (0.0,))
    assert len(opt._buffer) == 1
