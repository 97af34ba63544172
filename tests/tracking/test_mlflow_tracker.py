"""MLflow tracking: parent and child runs, Pareto tags as the front moves, resume, server URI."""

from __future__ import annotations

import json

import pytest
import yaml

from evomerge.run import resume_search, run_search
from evomerge.search.ledgers import EvaluationRecord
from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)


def _config(tmp_path, zoo, **over):
    space = {
        "base_model": str(zoo / "base"),
        "models": [str(zoo / "add"), str(zoo / "rev")],
        "methods": ["task_arithmetic", "ties"],
        "parameters": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.3, "high": 1.0}},
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    run = {
        "space": "space.yaml",
        "objectives": [{"task": "addition"}, {"task": "reversal"}],
        "optimizer": {"name": "random"},
        "budget": {"trials": 4},
        "fidelity": 4,
        **over,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    return tmp_path / "run.yaml"


def _runs(uri, experiment):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_a_search_logs_a_parent_and_a_child_per_trial(tmp_path, zoo):
    from evomerge.search.front import run_front

    cfg = _config(tmp_path, zoo)
    run_search(cfg, tmp_path / "run", log=lambda s: None)
    uri = f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    client, parents, children = _runs(uri, "run")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.data.tags["evomerge.objectives"] == "addition/exact_match (max), reversal/exact_match (max)"
    assert parent.data.params["optimizer.name"] == "random" and parent.info.status == "FINISHED"
    assert 0 < parent.data.metrics["slot_utilisation"] <= 1  # busy time / wall time of the one slot
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    c = children[0]
    assert {"addition/exact_match", "reversal/exact_match", "fitness"} <= set(c.data.metrics)
    assert c.data.params["merge_method"] in {"task_arithmetic", "ties"}
    assert c.data.params["gene.method"] == c.data.params["merge_method"]  # decoded, not a cube coordinate
    assert 0.0 <= float(c.data.params["gene.add.weight"]) <= 1.0
    assert c.data.tags["state"] == "complete" and c.data.tags["fidelity_reached"] == "4"
    history = client.get_metric_history(c.info.run_id, "reversal/exact_match")
    assert [m.step for m in history] == [4]
    arts = {a.path for a in client.list_artifacts(c.info.run_id, "recipe")}
    assert arts == {"recipe/recipe.yaml", "recipe/mergekit_config.yml"}
    # Pareto tags agree with `evomerge front`.
    _, front, _, _ = run_front(tmp_path / "run")
    tagged = {int(ch.data.tags["evomerge.trial"]) for ch in children if ch.data.tags["pareto"] == "true"}
    assert tagged == {t.trial for t in front}
    front_files = {a.path for a in client.list_artifacts(parent.info.run_id, "front")}
    assert {"front/front.png", "front/front.html", "front/front.json", "front/all_trials.json"} <= front_files
    assert len(client.get_metric_history(parent.info.run_id, "best_fitness")) == 4
    # The runs-table view `evomerge ui` links to: the objectives as columns.
    view = json.loads(client.get_experiment(parent.info.experiment_id).tags[
        f"mlflow.sharedViewState.evomerge-{parent.info.run_id}"])
    assert "metrics.`reversal/exact_match`" in json.loads(view["state"])["selectedColumns"]


def test_resume_continues_the_parent_and_adds_no_duplicate_children(tmp_path, zoo):
    cfg = _config(tmp_path, zoo, budget={"trials": 5}, multi_fidelity={"levels": [2, 4], "eta": 2, "bracket": 2},
                  fidelity=None)
    run_search(cfg, tmp_path / "run", trials=2, log=lambda s: None)
    resume_search(tmp_path / "run", log=lambda s: None)
    resume_search(tmp_path / "run", log=lambda s: None)  # nothing left to run: nothing new logged
    _, parents, children = _runs(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}", "run")
    assert len(parents) == 1
    assert sorted(int(c.data.tags["evomerge.trial"]) for c in children) == [0, 1, 2, 3, 4]


def _rec(number, cand, a, b):
    return EvaluationRecord(number, cand, 0, f"h{cand}", [0.5], "merge_method: linear\nmodels:\n- model: x\n",
                       "complete", None, {"o/a": a, "o/b": b}, None, 0.0, 0.0, 0.1, number)


def test_pareto_tags_follow_the_front(tmp_path):
    from evomerge.config.run import RunConfig
    from evomerge.search.objectives import BoundObjective
    from evomerge.search.space import Gene
    from evomerge.tracking.mlflow_tracker import MLflowTracker

    (tmp_path / "space.yaml").write_text("{}")
    config = RunConfig(space=str(tmp_path / "space.yaml"), objectives=[{"task": "o", "metric": "a"}])
    objectives = [BoundObjective("o/a", 1.0, 1.0), BoundObjective("o/b", 1.0, 1.0)]
    tracker = MLflowTracker(tmp_path, config, objectives, [Gene("g", 0.0, 2.0)], log=print)
    recs = [_rec(1, 0, 0.5, 0.5), _rec(2, 1, 0.9, 0.1)]
    assert tracker.sync(recs)
    tags = lambda: {c: tracker.client.get_run(r).data.tags["pareto"] for c, r in tracker.children.items()}  # noqa: E731
    assert tags() == {0: "true", 1: "true"}
    recs.append(_rec(3, 2, 0.6, 0.6))  # dominates candidate 0
    assert tracker.sync(recs)
    assert tags() == {0: "false", 1: "true", 2: "true"}


def test_a_dead_tracking_server_does_not_stop_the_search(tmp_path, zoo, monkeypatch):
    from evomerge.tracking.ui import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = _config(tmp_path, zoo, tracking={"uri": f"http://127.0.0.1:{free_port()}"}, budget={"trials": 2})
    logs = []
    result = run_search(cfg, tmp_path / "run", log=logs.append)
    assert result.trials == 2 and result.failed == 0
    assert any("tracking: MLflow at http://127.0.0.1" in line and "search goes on" in line for line in logs)


def test_a_tracking_server_uri(tmp_path, zoo):
    import subprocess
    import sys

    from evomerge.tracking.ui import free_port, wait_until_up

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, server, timeout=90)
        cfg = _config(tmp_path, zoo, tracking={"uri": url, "experiment": "team"}, budget={"trials": 2})
        run_search(cfg, tmp_path / "run", log=lambda s: None)
        _, parents, children = _runs(url, "team")
        assert len(parents) == 1 and len(children) == 2
        assert not (tmp_path / "run" / "mlflow.db").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("reference", [False, True])
def test_front_and_mlflow_report_the_same_hypervolume(tmp_path, zoo, reference):
    from typer.testing import CliRunner

    from evomerge.cli import app
    from evomerge.search.front import run_front

    objectives = [{"task": "addition_mc"}, {"task": "zoo_text"}]
    if reference:
        objectives = [{"task": "addition_mc", "reference": -0.1}, {"task": "zoo_text", "reference": 100.0}]
    cfg = _config(tmp_path, zoo, objectives=objectives, budget={"trials": 5})
    run_search(cfg, tmp_path / "run", log=lambda s: None)
    _, _, _, hv = run_front(tmp_path / "run")
    client, parents, _ = _runs(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}", "run")
    assert parents[0].data.metrics["hypervolume"] == pytest.approx(hv, rel=1e-12, abs=0)
    if reference:
        assert hv > 0  # every trial beats the declared reference
    out = CliRunner().invoke(app, ["front", str(tmp_path / "run")]).stdout
    assert f"{hv:.4g}" in out
