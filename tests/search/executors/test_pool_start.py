"""A pool worker killed while it starts is replaced; the search does not stop for it."""

from __future__ import annotations

import os
import signal

from evomerge.config.run import ExecutorSpec
from evomerge.recipe import Recipe
from evomerge.search.executors import TaskSpec, WorkerSpec, open_executor
from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo


def test_a_worker_killed_while_starting_is_replaced(tmp_path):
    zoo = build_zoo(tmp_path / "zoo", mini_zoo_config(), log=lambda s: None)
    refs = {str(zoo / m): zoo / m for m in ("base", "add", "rev")}
    spec = WorkerSpec(refs, str(zoo / "base"), (TaskSpec("addition", "search", False),), torch_threads=1)
    recipe = Recipe.from_dict({"merge_method": "linear", "models": [
        {"model": str(zoo / "add"), "parameters": {"weight": 1.0}},
        {"model": str(zoo / "rev"), "parameters": {"weight": 1.0}}]})
    pool = open_executor(ExecutorSpec(kind="pool", workers=1), spec)
    try:
        first = pool._slots[0].process.pid
        os.kill(first, signal.SIGKILL)  # still importing torch: not up yet
        pool.submit(0, recipe, 4)
        job, outcome = pool.wait()
        assert job == 0 and outcome.values is not None, outcome.error
        assert pool.deaths == 1 and pool._slots[0].process.pid != first
    finally:
        pool.close()
