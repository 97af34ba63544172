"""The executors pass the executor suite (evomerge.testing.executors) on a mini zoo.

A new executor is one entry in ``KINDS`` (with a mark if it needs a service the
default suite does not start: Ray runs under ``make test-ray``). The suite's
default ``kill_workers`` reaches Ray's actors too: it kills the processes that
hold the evaluations its gate task holds.
"""

import pytest

from evomerge.testing.executors import ExecutorSuite

KINDS = ["serial", "pool", pytest.param("ray", marks=pytest.mark.ray)]


@pytest.fixture(scope="session")
def ray_runtime():
    """Ray, started once for the suite's Ray executors and shut down at the end."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(autouse=True)
def one_ray_runtime(request):
    # No Ray executor of the suite owns the runtime, so closing one (the kill test drops the
    # shared executor) does not restart Ray: a new cluster's start-up (GCS, raylet, agents at
    # normal priority, actors at Ray's nice 15) beside the test once left a new actor unstarted
    # for the whole 120 s guard on a loaded CI machine.
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("executor_kind") == "ray":
        request.getfixturevalue("ray_runtime")


@pytest.mark.parametrize("executor_kind", KINDS)
class TestExecutors(ExecutorSuite):
    pass
