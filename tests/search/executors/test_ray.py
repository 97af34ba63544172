"""The Ray executor on a local Ray runtime: same trials as serial, actors that die or hang."""

from __future__ import annotations

import os
import signal

import pytest
import ray  # noqa: E402  (a core dependency: never skipped)
from run_helpers import evaluations, wait_for, write_gate, write_run

from evomerge.config.run import ExecutorSpec
from evomerge.errors import EvomergeError
from evomerge.recipe import Recipe
from evomerge.run import run_search
from evomerge.search.executors import TaskSpec, WorkerSpec, open_executor
from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def runtime():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)


def _spec(zoo) -> WorkerSpec:
    refs = {str(zoo / m): zoo / m for m in ("base", "add", "rev")}
    return WorkerSpec(refs, str(zoo / "base"), (TaskSpec("addition", "search", False),), torch_threads=1)


def _recipe(zoo, w: float = 0.5) -> Recipe:
    return Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": str(zoo / "base"), "models": [
        {"model": str(zoo / "add"), "parameters": {"weight": w}},
        {"model": str(zoo / "rev"), "parameters": {"weight": 1 - w}}]})


def _config(tmp_path, zoo, executor, trials=8):
    return write_run(tmp_path, zoo, f"run-{executor.get('kind', 'serial')}", executor=executor, seed=5,
                     optimizer={"name": "cmaes", "options": {"popsize": 4}}, budget={"trials": trials})


def _trials(run_dir):
    return {(e.trial, e.recipe_hash): e.scores for e in evaluations(run_dir)}


def test_a_ray_search_gives_the_serial_trials(runtime, tmp_path, zoo):
    """CMA-ES hands out whole generations, so the trials cannot depend on completion order."""
    serial = run_search(_config(tmp_path, zoo, {"kind": "serial"}), tmp_path / "serial", log=lambda s: None)
    cfg = _config(tmp_path, zoo, {"kind": "ray", "workers": "auto", "torch_threads": 1})
    distributed = run_search(cfg, tmp_path / "ray", log=lambda s: None)
    assert distributed.trials == serial.trials == 8
    a, b = _trials(tmp_path / "serial"), _trials(tmp_path / "ray")
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-6)


def _gated(zoo, *gates) -> WorkerSpec:
    """The worker spec with gate tasks after addition (each holds the evaluations it numbers)."""
    spec = _spec(zoo)
    return WorkerSpec(spec.sources, spec.base, (*spec.tasks, *(TaskSpec(str(g.task), "search", False) for g in gates)),
                      torch_threads=1)


def _held(gate, n: int = 1) -> int:
    """The pid of the actor holding the gate's n-th held evaluation, once it is held."""
    wait_for(lambda: len(gate.held()) >= n, f"evaluation {n} held at the gate", limit=120)
    return gate.held()[n - 1]["pid"]


def test_an_actor_killed_mid_evaluation_is_replaced_and_its_evaluation_rerun(runtime, zoo, tmp_path):
    gate = write_gate(tmp_path / "gate", hold=[1])  # the second evaluation waits for the kill
    ex = open_executor(ExecutorSpec(kind="ray", workers=1, max_retries=1), _gated(zoo, gate))
    try:
        ex.submit(0, _recipe(zoo), 4)
        assert ex.wait()[1].values is not None  # up and scoring
        pid = ray.get(ex.actors[0].pid.remote())
        ex.submit(1, _recipe(zoo, 0.3), 4)
        assert _held(gate) == pid  # mid-evaluation
        os.kill(pid, signal.SIGKILL)
        job, outcome = ex.wait()
        assert job == 1 and outcome.values is not None, outcome.error  # run again on the restarted actor
        assert ex.deaths == 1 and ray.get(ex.actors[0].pid.remote()) != pid
        assert gate.starts() == 3  # the held one never finished: it ran again
    finally:
        ex.close()
        gate.release()


def test_an_evaluation_whose_worker_dies_twice_fails_with_the_reason(runtime, zoo, tmp_path):
    gate = write_gate(tmp_path / "gate", hold=[1])
    ex = open_executor(ExecutorSpec(kind="ray", workers=1, max_retries=0), _gated(zoo, gate))
    try:
        ex.submit(0, _recipe(zoo), 4)
        ex.wait()
        pid = ray.get(ex.actors[0].pid.remote())
        ex.submit(1, _recipe(zoo, 0.2), 4)
        assert _held(gate) == pid
        os.kill(pid, signal.SIGKILL)
        job, outcome = ex.wait()
        assert job == 1 and outcome.values is None and "worker died once" in outcome.error
        ex.submit(2, _recipe(zoo, 0.1), 4)  # the slot works again
        assert ex.wait()[1].values is not None
    finally:
        ex.close()
        gate.release()


def test_an_evaluation_past_the_timeout_fails_and_the_worker_recovers(runtime, zoo, tmp_path):
    shut = write_gate(tmp_path / "shut", passes=0)  # every evaluation waits until released
    ex = open_executor(ExecutorSpec(kind="ray", workers=1, timeout=0.05), _gated(zoo, shut))
    try:
        ex.submit(0, _recipe(zoo), 4)  # cannot finish: the timeout kills its actor
        job, outcome = ex.wait()
        assert outcome.values is None and "timed out after 0.05 s" in outcome.error
        ex.timeout = None
        shut.release()
        ex.submit(1, _recipe(zoo), 4)
        assert ex.wait()[1].values is not None
    finally:
        ex.close()
        shut.release()


def test_every_node_must_see_the_models(runtime, zoo, tmp_path):
    spec = _spec(zoo)
    missing = tmp_path / "not-here"
    spec = WorkerSpec({**spec.sources, "x": missing}, spec.base, spec.tasks)
    with pytest.raises(EvomergeError, match=rf"node .* cannot see {missing}.*same path on every node"):
        open_executor(ExecutorSpec(kind="ray", workers=1), spec)


def test_cuda_needs_a_gpu_share(runtime, zoo):
    spec = _spec(zoo)
    spec = WorkerSpec(spec.sources, spec.base, spec.tasks, device="cuda")
    with pytest.raises(EvomergeError, match="num_gpus is 0"):
        open_executor(ExecutorSpec(kind="ray", workers=1), spec)


def test_auto_workers_fill_the_runtime(runtime, zoo):
    ex = open_executor(ExecutorSpec(kind="ray", workers="auto", resources={"num_cpus": 1}), _spec(zoo))
    try:
        assert ex.slots == 2
        for j in range(4):
            ex.submit(j, _recipe(zoo, j / 4), 4)
        assert sorted(ex.wait()[0] for _ in range(4)) == [0, 1, 2, 3]
        assert all(0 <= u <= 1 for u in ex.utilisation()) and sum(ex.utilisation()) > 0
    finally:
        ex.close()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_actors_given_a_gpu_merge_and_evaluate_there_as_on_the_cpu(runtime, zoo):
    spec = _spec(zoo)
    on_gpu = WorkerSpec(spec.sources, spec.base, spec.tasks, device="cuda", torch_threads=1)
    ex = open_executor(ExecutorSpec(kind="ray", workers=1, resources={"num_gpus": 1, "num_cpus": 1}), on_gpu)
    cpu = open_executor(ExecutorSpec(kind="serial"), spec)
    try:
        ex.submit(1, _recipe(zoo, 0.3), 4)
        cpu.submit(1, _recipe(zoo, 0.3), 4)
        (_, got), (_, ref) = ex.wait(), cpu.wait()
        assert got.error is None, got.error
        assert got.values == pytest.approx(ref.values, abs=0.25)  # at most one of 4 answers differs
    finally:
        ex.close()
        cpu.close()
