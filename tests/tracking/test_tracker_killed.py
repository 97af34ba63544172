"""The MLflow mirror after a controller was killed between two MLflow calls of one step.

Each test stops a tracker at one MLflow call (``Killed`` is not an ``Exception``, so nothing in the
tracker catches it, as nothing runs after a SIGKILL), then a new tracker over the same run
directory (the resume) syncs the same ledger. What MLflow then holds must be what an
uninterrupted run logs: one parent, one child per trial, each result once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from evomerge.config.run import RunConfig
from evomerge.config.tracking import TrackingConfig
from evomerge.search.ledgers import EvaluationRecord
from evomerge.search.objectives import BoundObjective
from evomerge.search.space import Gene
from evomerge.tracking.mlflow_tracker import MLflowTracker


class Killed(BaseException):
    """The controller's SIGKILL, as MLflow sees it: the calls before it happened, none after."""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"  # one store: made once


@pytest.fixture(autouse=True)
def _artifacts_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a tracking URI of one's own keeps MLflow's artifacts in ./mlruns


def _tracker(run_dir, store) -> MLflowTracker:
    (run_dir / "space.yaml").write_text("{}")
    config = RunConfig(space=str(run_dir / "space.yaml"), objectives=[{"task": "o", "metric": "a"}])
    objectives = [BoundObjective("o/a", 1.0, 1.0), BoundObjective("o/b", 1.0, 1.0)]
    settings = TrackingConfig(uri=store, experiment=run_dir.name)
    return MLflowTracker(run_dir, config, objectives, [Gene("g", 0.0, 2.0)], settings=settings, log=print)


def _rec(id, trial, a, b):
    return EvaluationRecord(id, trial, 0, f"h{trial}", [0.5], "merge_method: linear\nmodels:\n- model: x\n",
                            "complete", None, {"o/a": a, "o/b": b}, None, 0.0, 0.0, 0.1, id)


RECORDS = [_rec(1, 0, 0.5, 0.5), _rec(2, 1, 0.9, 0.1), _rec(3, 2, 0.6, 0.6)]


def _kill_at(monkeypatch, method: str, *, after: bool, when=lambda *a, **k: True) -> None:
    """The next call of MlflowClient.``method`` (that ``when`` picks) is the last: with ``after``,
    it happens, then the process dies; else it dies before."""
    real = getattr(MlflowClient, method)

    def call(self, *args, **kwargs):
        if not when(*args, **kwargs):
            return real(self, *args, **kwargs)
        monkeypatch.setattr(MlflowClient, method, real)  # the resumed process is unhooked
        if after:
            real(self, *args, **kwargs)
        raise Killed

    monkeypatch.setattr(MlflowClient, method, call)


def _killed_then_resumed(tmp_path, store, records, finish=False) -> tuple[MlflowClient, list, list]:
    with pytest.raises(Killed):
        _tracker(tmp_path, store).sync(records)
    resumed = _tracker(tmp_path, store)
    assert resumed.finish(records) if finish else resumed.sync(records)
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name(tmp_path.name)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_a_parent_run_made_just_before_a_kill_is_found_again(tmp_path, store, monkeypatch):
    _kill_at(monkeypatch, "create_run", after=True)
    _, parents, children = _killed_then_resumed(tmp_path, store, RECORDS)
    assert len(parents) == 1, [p.info.run_id for p in parents]
    assert json.loads((tmp_path / "tracking.json").read_text())["parent_run_id"] == parents[0].info.run_id
    assert sorted(int(c.data.tags["evomerge.trial"]) for c in children) == [0, 1, 2]


def test_a_child_logged_but_not_closed_before_a_kill_is_closed_on_resume(tmp_path, store, monkeypatch):
    _kill_at(monkeypatch, "set_terminated", after=False)  # the first child's scores are in
    _, _, children = _killed_then_resumed(tmp_path, store, RECORDS)
    assert len(children) == 3
    assert {c.info.status for c in children} == {"FINISHED"}


def test_the_front_series_is_not_logged_twice_after_a_kill(tmp_path, store, monkeypatch):
    # Killed after the parent's series points were logged, before the tag that counts them.
    _kill_at(monkeypatch, "log_batch", after=False,
             when=lambda run_id, metrics=(), params=(), tags=(): any(t.key == "evomerge.series_done" for t in tags))
    client, parents, _ = _killed_then_resumed(tmp_path, store, RECORDS)
    steps = [m.step for m in client.get_metric_history(parents[0].info.run_id, "best_fitness")]
    assert sorted(steps) == [1, 2, 3]


def test_an_evaluation_whose_metrics_landed_before_a_kill_is_not_logged_twice(tmp_path, store, monkeypatch):
    # MLflow's log_batch writes metrics and tags in separate transactions: killed between them,
    # the child holds the scores but not the tag that lists the evaluation.
    real = MlflowClient.log_batch

    def metrics_then_killed(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        if not any(t.key == "evomerge.evaluations" for t in tags):
            return real(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)
        monkeypatch.setattr(MlflowClient, "log_batch", real)
        real(self, run_id, metrics=metrics)
        raise Killed

    monkeypatch.setattr(MlflowClient, "log_batch", metrics_then_killed)
    client, _, children = _killed_then_resumed(tmp_path, store, RECORDS)
    assert len(children) == 3
    for child in children:
        for key in ("o/a", "o/b", "fitness"):
            assert len(client.get_metric_history(child.info.run_id, key)) == 1, (child.data.tags, key)
        assert child.data.tags["evomerge.evaluations"] in {"1", "2", "3"}


def test_a_front_logged_again_replaces_its_tables(tmp_path, store):
    assert _tracker(tmp_path, store).finish(RECORDS)
    tracker = _tracker(tmp_path, store)  # a resume of the finished run, or `evomerge track`
    assert tracker.finish(RECORDS)
    client = MlflowClient(tracking_uri=store)
    for name, trials in (("front.json", [1, 2]), ("all_trials.json", [0, 1, 2])):
        path = client.download_artifacts(tracker.parent_id, f"front/{name}", str(tmp_path))
        table = json.loads(Path(path).read_text())
        column = table["columns"].index("trial")
        assert sorted(row[column] for row in table["data"]) == trials
    logged = json.loads(client.get_run(tracker.parent_id).data.tags["mlflow.loggedArtifacts"])
    assert sorted(e["path"] for e in logged) == ["front/all_trials.json", "front/front.json"]
