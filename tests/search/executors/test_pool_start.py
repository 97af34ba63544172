"""A pool worker killed while it starts is replaced; the search does not stop for it."""

from __future__ import annotations

import os
import signal

from run_helpers import gone, wait_for, write_gate

from evomerge.config.run import ExecutorSpec
from evomerge.recipe import Recipe
from evomerge.search.executors import TaskSpec, WorkerSpec, open_executor
from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo


def test_a_worker_killed_while_starting_is_replaced(tmp_path):
    zoo = build_zoo(tmp_path / "zoo", mini_zoo_config(), log=lambda s: None)
    # The worker imports the gate's module while it starts (loading its tasks); the first
    # import waits there, so the kill lands on a worker that is certainly not up yet.
    gate = write_gate(tmp_path / "gate", hold_imports=[0])
    refs = {str(zoo / m): zoo / m for m in ("base", "add", "rev")}
    tasks = (TaskSpec("addition", "search", False), TaskSpec(str(gate.task), "search", False))
    spec = WorkerSpec(refs, str(zoo / "base"), tasks, torch_threads=1)
    recipe = Recipe.from_dict({"merge_method": "linear", "models": [
        {"model": str(zoo / "add"), "parameters": {"weight": 1.0}},
        {"model": str(zoo / "rev"), "parameters": {"weight": 1.0}}]})
    pool = open_executor(ExecutorSpec(kind="pool", workers=1), spec)
    try:
        first = pool._slots[0].process.pid
        wait_for(lambda: gate.imports_held(), "the starting worker held at the gate's import", limit=120)
        assert gate.imports_held()[0]["pid"] == first and not pool._slots[0].ready
        os.kill(first, signal.SIGKILL)  # still starting: not up
        wait_for(lambda: gone(first), "the killed worker gone", limit=60)
        pool.submit(0, recipe, 4)
        job, outcome = pool.wait()
        assert job == 0 and outcome.values is not None, outcome.error
        assert pool.deaths == 1 and pool._slots[0].process.pid != first
    finally:
        pool.close()
        gate.release()
