"""The Ray executor on a real three-node cluster on loopback (a head with no CPUs for actors, two
worker nodes with one slot each, a custom resource standing in for a GPU)."""

from __future__ import annotations

import threading

import pytest
import ray
import yaml
from ray.cluster_utils import Cluster
from run_helpers import (
    evaluations,
    gone,
    search_killed_at_gate,
    wait_at_gate,
    wait_for,
    write_gate,
    write_run,
)

from evomerge.run import run_search
from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo

pytestmark = pytest.mark.ray
SLOT = {"num_cpus": 1, "custom": {"evomerge_slot": 1}}


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1, resources={"evomerge_slot": 1}) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, configure_logging=False)
    yield c, workers
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)


def _config(tmp_path, zoo, executor, trials=8, name="run", gate=None):
    """``gate``: its objective joins the others (a gate holds evaluations until a test's cue)."""
    objectives = [{"task": "zoo_text"}, {"task": "addition"}, *([gate.objective] if gate else [])]
    return write_run(tmp_path, zoo, name, executor=executor, seed=11, fidelity=8,
                     objectives=objectives, scalarization="weighted_sum",
                     optimizer={"name": "cmaes", "options": {"popsize": 4}}, budget={"trials": trials})


def _complete(run_dir):
    return evaluations(run_dir)


def test_the_cluster_search_gives_the_serial_trials(cluster, tmp_path, zoo):
    run_search(_config(tmp_path, zoo, {"kind": "serial"}, name="serial"), tmp_path / "serial", log=lambda s: None)
    cfg = _config(tmp_path, zoo, {"kind": "ray", "address": "auto", "workers": "auto", "resources": SLOT},
                  name="cluster")
    result = run_search(cfg, tmp_path / "cluster", log=lambda s: None)
    assert result.trials == 8 and result.failed == 0
    serial = {(e.trial, e.recipe_hash): e.scores for e in _complete(tmp_path / "serial")}
    spread = {(e.trial, e.recipe_hash): e.scores for e in _complete(tmp_path / "cluster")}
    assert serial.keys() == spread.keys()
    for key, scores in serial.items():
        assert spread[key] == pytest.approx(scores, rel=1e-6)


def test_losing_a_worker_node_mid_search_loses_no_finished_evaluation(cluster, tmp_path, zoo):
    """The node goes while one of its evaluations is held at a gate (3 finished before it, the
    rest of CMA-ES's first generation): that evaluation's process dies with the node and the
    evaluation runs again on the other node, once the gate opens."""
    c, workers = cluster
    gate = write_gate(tmp_path / "gate", passes=3)
    cfg = _config(tmp_path, zoo, {"kind": "ray", "address": "auto", "workers": 2, "resources": SLOT,
                                  "max_retries": 2}, trials=12, name="lossy", gate=gate)
    box: dict = {}

    def search():
        try:
            box["result"] = run_search(cfg, tmp_path / "lossy", log=lambda s: None)
        except BaseException as e:  # noqa: BLE001 - reported below
            box["error"] = e

    thread = threading.Thread(target=search)
    thread.start()
    lost = None
    try:
        finished = wait_at_gate(gate, tmp_path / "lossy", 3, alive=thread.is_alive, output=lambda: repr(box))
        victim = gate.held()[0]
        lost = next(i for i, w in enumerate(workers) if w.node_id == victim["node"])
        c.remove_node(workers[lost], allow_graceful=False)
        wait_for(lambda: gone(victim["pid"]), "the held evaluation's process gone with its node", limit=120)
    finally:
        gate.release()
        thread.join(timeout=600)
        if lost is not None:  # the cluster heals, for later tests
            workers[lost] = c.add_node(num_cpus=1, resources={"evomerge_slot": 1})
            c.wait_for_nodes()
    assert not thread.is_alive() and "error" not in box, box.get("error")
    result = box["result"]
    before = {(e.id, e.recipe_hash, e.seq) for e in finished}
    after = _complete(tmp_path / "lossy")
    assert before <= {(e.id, e.recipe_hash, e.seq) for e in after}  # nothing finished was lost
    assert result.trials == 12 and len(after) == 12 and len({e.recipe_hash for e in after}) == 12
    assert result.failed == 0  # the evaluation on the lost node ran again on the other
    assert sum(e.scores["gate/score"] == pytest.approx(victim["score"], rel=1e-9) for e in after) == 1  # once
    assert gate.starts() == 13  # 12 evaluations, one of them twice


def test_kill_9_of_the_controller_then_resume_on_the_cluster_and_postgres(cluster, tmp_path, zoo, monkeypatch):
    """The controller dies with its actors; a new one resumes against the same cluster and the same
    PostgreSQL ledger: nothing finished is lost or evaluated twice. A gate lets CMA-ES's first
    generation (4 evaluations) through and holds the second's on both slots: the kill lands there."""
    import os

    from pg_server import PASSWORD, PostgresServer

    from evomerge.run import resume_search

    c, _ = cluster
    pg = PostgresServer()
    gate = write_gate(tmp_path / "gate", passes=4)
    try:
        monkeypatch.setenv("EVOMERGE_TEST_DB_PASSWORD", PASSWORD)
        cfg = _config(tmp_path, zoo, {"kind": "ray", "workers": "auto", "resources": SLOT}, trials=12,
                      name="killed", gate=gate)
        data = yaml.safe_load(cfg.read_text())
        data["ledger"] = {"kind": "sql", "url": pg.url(), "password_env": "EVOMERGE_TEST_DB_PASSWORD"}
        cfg.write_text(yaml.safe_dump(data))
        run_dir = tmp_path / "killed-run"
        search_killed_at_gate(cfg, run_dir, gate, 4, held=2, extra=("--ray-address", c.address),
                              env=dict(os.environ))
        done = {(e.id, e.recipe_hash, e.seq) for e in _complete(run_dir)}
        assert len(done) == 4
        result = resume_search(run_dir, ray_address=c.address, log=lambda s: None)
        after = _complete(run_dir)
        assert done <= {(e.id, e.recipe_hash, e.seq) for e in after}
        assert len(after) == 12 and len({e.recipe_hash for e in after}) == 12 and result.failed == 0
        serial = run_search(_config(tmp_path, zoo, {"kind": "serial"}, trials=12, name="whole", gate=gate),
                            tmp_path / "whole", log=lambda s: None)  # uninterrupted: the gate is open
        assert serial.trials == 12
        assert {(e.trial, e.recipe_hash) for e in after} == {(e.trial, e.recipe_hash) for e in _complete(tmp_path / "whole")}
    finally:
        gate.release()
        pg.stop()


def test_the_quickstart_runs_on_the_cluster(cluster, tmp_path):
    """runs/quickstart.yaml itself (the embedded zoo, built or taken from its cache), on the
    cluster's two slots, with a smaller trial budget."""
    from pathlib import Path

    from evomerge.search.front import run_front
    from evomerge.zoo.build import build_zoo, default_zoo_dir

    root = Path(__file__).resolve().parents[3]
    build_zoo(default_zoo_dir(), log=lambda s: None)
    cfg = yaml.safe_load((root / "runs" / "quickstart.yaml").read_text())
    cfg["space"] = str((root / "runs" / cfg["space"]).resolve())
    cfg["budget"]["trials"] = 27
    cfg["executor"] = {"kind": "ray", "address": "auto", "workers": "auto", "resources": SLOT, "torch_threads": 1}
    (tmp_path / "quickstart.yaml").write_text(yaml.safe_dump(cfg))
    result = run_search(tmp_path / "quickstart.yaml", tmp_path / "out", log=lambda s: None)
    assert result.trials == 27 and result.failed == 0
    assert result.utilisation and result.utilisation["slot_utilisation"] > 0.5
    objectives, front, _, hv = run_front(tmp_path / "out")
    assert len(objectives) == len(cfg["objectives"]) and front and hv is not None
