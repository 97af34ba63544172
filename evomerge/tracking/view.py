"""The view of a search that MLflow's UI opens on: the runs table, objectives as columns.

MLflow 3.17's UI decides between its GenAI pages (traces overview, assistant) and the
classic runs table from a global "workflow type" (the URL's ``workflowType``, else the
browser's last choice, GenAI by default), not from the experiment's ``mlflow.experimentKind``
tag. So the link evomerge prints names ``workflowType=machine_learning`` and the runs tab.

The table's columns come from a saved view: an experiment tag
``mlflow.sharedViewState.<key>`` holding ``{name, createdAt, state}`` (the format of the UI's
"Save view" button; ``state`` may be plain JSON). The link names it with
``viewStateShareKey=<key>``, and the experiment page lists it under its saved views, so a
person who arrives from the home page can pick it too.

Two views are saved. The front view, which the first link opens, also carries search facets:
a filter on the search's front members and an order by fitness, best first. MLflow nests
child runs under their parent only when the table is ordered by date with no filter, so the
members are listed as rows of their own, not folded under the parent (MLflow does not take a
row's expansion from a saved view). The trials view lists every trial nested under the
search's parent run, newest first.
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow's prefix for shared and saved views
FRONT_PLOT = "front/front.png"  # on the parent run, logged when the search ends
FRONT_HTML = "front/front.html"


def view_key(parent_id: str) -> str:
    """The view of every trial, nested under the search's parent run."""
    return f"evomerge-{parent_id}"


def front_view_key(parent_id: str) -> str:
    """The view of the front's members, best fitness first."""
    return f"evomerge-front-{parent_id}"


def _column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"  # MLflow's canonical column key


def runs_view_state(metric_keys: list[str]) -> dict:
    """The table's columns: each objective, the fitness, the pareto tag and the method on the
    trials; the hypervolume (one objective: the best fitness) on the parent. MLflow fills in
    the rest, e.g. newest runs first, the order in which it nests children under parents."""
    search_metric = "hypervolume" if len(metric_keys) > 1 else "best_fitness"
    return {"selectedColumns": [
        *(_column("metrics", k) for k in metric_keys),
        _column("metrics", "fitness"),
        _column("metrics", search_metric),
        _column("tags", "pareto"),
        _column("params", "merge_method"),
    ]}


def front_view_state(metric_keys: list[str], parent_id: str) -> dict:
    """The front's members of this search (not another search's in a shared experiment), as
    rows of their own, best fitness first; the objectives and the fitness as columns."""
    columns = [*(_column("metrics", k) for k in metric_keys), _column("metrics", "fitness"),
               _column("tags", "pareto"), _column("params", "merge_method")]
    return {"selectedColumns": columns,
            "searchFilter": f"tags.pareto = 'true' AND tags.`mlflow.parentRunId` = '{parent_id}'",
            "orderByKey": _column("metrics", "fitness"), "orderByAsc": False}


def save_runs_views(client, experiment_id: str, parent_id: str, run_name: str, metric_keys: list[str]) -> None:
    """Store the front and trials views on the experiment (idempotent: same keys, same state)."""
    views = ((front_view_key(parent_id), f"evomerge: {run_name}, front", front_view_state(metric_keys, parent_id)),
             (view_key(parent_id), f"evomerge: {run_name}", runs_view_state(metric_keys)))
    for key, name, state in views:
        envelope = {"name": name, "createdAt": int(time.time() * 1000), "state": json.dumps(state)}
        client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key, json.dumps(envelope))


def objective_keys(objectives_tag: str) -> list[str]:
    """The metric keys in a parent run's ``evomerge.objectives`` tag
    ("addition/exact_match (max), reversal/exact_match (max)"); MLflow keys hold no commas."""
    return [part.strip().rsplit(" (", 1)[0] for part in objectives_tag.split(",") if part.strip()]


def runs_table_url(base: str, experiment_id: str, key: str | None) -> str:
    query = {"workflowType": "machine_learning"}
    if key:
        query["viewStateShareKey"] = key
    return f"{base}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def artifact_url(base: str, experiment_id: str, run_id: str, path: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}?workflowType=machine_learning"
