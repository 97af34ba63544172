"""The executors pass the executor suite (evomerge.testing.executors) on a mini zoo.

A new executor is one entry in ``KINDS`` (with a mark if it needs a service the
default suite does not start: Ray runs under ``make test-ray``). The suite's
default ``kill_workers`` reaches Ray's actors too: it kills the processes that
hold the evaluations its gate task holds.
"""

import pytest

from evomerge.testing.executors import ExecutorSuite

KINDS = ["serial", "pool", pytest.param("ray", marks=pytest.mark.ray)]


@pytest.mark.parametrize("executor_kind", KINDS)
class TestExecutors(ExecutorSuite):
    pass
