"""The executors pass the executor suite (evomerge.testing.executors) on a mini zoo.

A new executor is one entry in ``KINDS`` (with a mark if it needs a service the
default suite does not start: Ray runs under ``make test-ray``).
"""

import os
import signal

import pytest

from evomerge.testing.executors import ExecutorSuite

KINDS = ["serial", "pool", pytest.param("ray", marks=pytest.mark.ray)]


@pytest.mark.parametrize("executor_kind", KINDS)
class TestExecutors(ExecutorSuite):
    def kill_workers(self, executor, pids):
        if hasattr(executor, "actors"):  # Ray: actor processes, started by Ray, not by this process
            import ray

            victims = [ray.get(actor.pid.remote()) for actor in executor.actors]
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            return len(victims)
        return super().kill_workers(executor, pids)
