"""The link `evomerge ui` prints: a saved runs-table view with the objectives as columns."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import yaml

from evomerge.tracking.ui import find_search
from evomerge.tracking.view import (
    VIEW_TAG_PREFIX,
    artifact_url,
    front_view_key,
    front_view_state,
    objective_keys,
    runs_table_url,
    runs_view_state,
    view_key,
)


def test_objective_keys_read_the_parent_runs_tag():
    assert objective_keys("addition/exact_match (max), loss (min)") == ["addition/exact_match", "loss"]
    assert objective_keys("") == []


def test_the_view_shows_objectives_fitness_and_pareto_as_mlflow_column_keys():
    cols = runs_view_state(["addition/exact_match", "reversal/exact_match"])["selectedColumns"]
    assert cols[:3] == ["metrics.`addition/exact_match`", "metrics.`reversal/exact_match`", "metrics.`fitness`"]
    assert "metrics.`hypervolume`" in cols and "tags.`pareto`" in cols
    assert "metrics.`best_fitness`" in runs_view_state(["loss"])["selectedColumns"]  # one objective


def test_the_front_view_lists_this_searchs_members_unnested_best_fitness_first():
    state = front_view_state(["addition/exact_match", "reversal/exact_match"], "p123")
    assert state["selectedColumns"][:3] == [
        "metrics.`addition/exact_match`", "metrics.`reversal/exact_match`", "metrics.`fitness`"]
    assert state["searchFilter"] == "tags.pareto = 'true' AND tags.`mlflow.parentRunId` = 'p123'"
    # Ordered by a metric, not by date: MLflow then lists child runs as rows of their own.
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`fitness`", False)


def test_the_front_filter_selects_the_members_of_one_search_in_mlflow(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("shared", artifact_location=(tmp_path / "a").as_uri())
    members = {}
    for search in ("one", "two"):  # two searches in one experiment (a team's server)
        parent = client.create_run(exp, run_name=search).info.run_id
        for i, (on, fit) in enumerate([("true", 0.2), ("false", 0.9), ("true", 0.7)]):
            child = client.create_run(exp, run_name=f"{search}-{i}", tags={
                "mlflow.parentRunId": parent, "pareto": on}).info.run_id
            client.log_metric(child, "fitness", fit)
        members[search] = parent
    state = front_view_state([], members["one"])
    order = f"{state['orderByKey']} {'ASC' if state['orderByAsc'] else 'DESC'}"
    found = client.search_runs([exp], state["searchFilter"], order_by=[order])
    assert [r.info.run_name for r in found] == ["one-2", "one-0"]


def test_the_link_opens_the_runs_tab_as_machine_learning_with_the_view():
    url = runs_table_url("http://127.0.0.1:5000", "7", "evomerge-abc")
    base, fragment = url.split("/#", 1)
    assert base == "http://127.0.0.1:5000"
    path, query = fragment.split("?", 1)
    assert path == "/experiments/7/runs"
    assert parse_qs(query) == {"workflowType": ["machine_learning"], "viewStateShareKey": ["evomerge-abc"]}
    plot = urlsplit(artifact_url("http://h:1", "7", "r1", "front/front.png"))
    assert plot.fragment.startswith("/experiments/7/runs/r1/artifacts/front/front.png?")


def test_find_search_saves_the_view_a_run_from_before_lacks(tmp_path):
    from mlflow import MlflowClient

    run_dir = tmp_path / "search"
    run_dir.mkdir()
    (run_dir / "run.yaml").write_text(yaml.safe_dump({"space": "space.yaml", "objectives": [{"task": "addition"}]}))
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    assert find_search(uri, run_dir) is None  # nothing tracked yet (no tracking.json)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("search", artifact_location=(run_dir / "mlartifacts").as_uri())
    parent = client.create_run(exp, run_name="search", tags={
        "evomerge.objectives": "addition/exact_match (max), reversal/exact_match (max)"}).info.run_id
    (run_dir / "tracking.json").write_text(json.dumps({"parent_run_id": parent, "tracking_uri": uri}))

    found = find_search(uri, run_dir)
    assert (found.experiment_id, found.parent_id, found.run_name) == (exp, parent, "search")
    assert (found.view, found.front_view) == (view_key(parent), front_view_key(parent)) and not found.front_logged
    keys = ["addition/exact_match", "reversal/exact_match"]
    tags = client.get_experiment(exp).tags
    envelope = json.loads(tags[VIEW_TAG_PREFIX + found.view])
    assert envelope["name"] == "evomerge: search" and isinstance(envelope["createdAt"], int)
    assert json.loads(envelope["state"]) == runs_view_state(keys)
    envelope = json.loads(tags[VIEW_TAG_PREFIX + found.front_view])
    assert envelope["name"] == "evomerge: search, front"
    assert json.loads(envelope["state"]) == front_view_state(keys, parent)

    (run_dir / "tracking.json").write_text(json.dumps({"parent_run_id": "0" * 32, "tracking_uri": "elsewhere"}))
    assert find_search(uri, run_dir) is None  # its parent is in another store
