"""The Tune trainable's logic without a Ray runtime (Tune's report and checkpoint calls caught,
a stand-in worker), and the run configs Tune refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from ray import tune

from evomerge.config.run import RunConfigError
from evomerge.integrations.tune import (
    BUDGET,
    FITNESS,
    TrialFailed,
    config_of,
    load_tune_run,
    run_trial,
    schedule_options,
)
from evomerge.integrations.tune import trainable as trainable_module
from evomerge.search.executors import Outcome

pytestmark = pytest.mark.ray


class _Worker:
    """Scores a recipe at a level as perplexity = level (all: 1000); fails at ``fail_at``."""

    def __init__(self, fail_at=()) -> None:
        self.levels, self.fail_at = [], fail_at

    def evaluate(self, recipe, level) -> Outcome:
        self.levels.append(level)
        if level in self.fail_at:
            return Outcome(None, "merge failed: out of memory", 0.5)
        return Outcome({"zoo_text/perplexity": float(level or 1000), "zoo_text/nll": 1.0}, None, 0.25)


@pytest.fixture
def session(monkeypatch, tmp_path):
    """Tune's session calls, caught: each report (metrics, a copy of its checkpoint's folder)."""
    reports: list[tuple[dict, Path | None]] = []
    state = {"checkpoint": None}
    saved = iter(range(100))

    def report(metrics, *, checkpoint=None):
        kept = None
        if checkpoint is not None:
            kept = tmp_path / f"checkpoint-{next(saved)}"
            kept.mkdir()
            for f in Path(checkpoint.path).iterdir():
                (kept / f.name).write_bytes(f.read_bytes())
        reports.append((metrics, kept))

    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: state["checkpoint"])
    return reports, state


def _trial(tune_run, monkeypatch, worker, config=None):
    monkeypatch.setattr(trainable_module, "_worker", lambda spec: worker)
    run_trial(tune_run, config or config_of(tune_run.space, np.full(tune_run.space.dimension, 0.4)))


def test_a_trial_reports_each_level_and_checkpoints_all_but_the_last(tune_run, session, monkeypatch):
    reports, _ = session
    worker = _Worker()
    _trial(tune_run, monkeypatch, worker)
    assert worker.levels == [4, 16, None]
    metrics = [m for m, _ in reports]
    assert [m["rung"] for m in metrics] == [0, 1, 2] and [m[BUDGET] for m in metrics] == [1, 2, 4]
    assert [m[FITNESS] for m in metrics] == [-4.0, -16.0, -1000.0]  # perplexity is minimised
    assert [m["examples"] for m in metrics] == [4, 16, 96]
    assert metrics[0]["zoo_text/perplexity"] == 4.0 and metrics[0]["seconds"] == 0.25
    assert len({m["recipe_hash"] for m in metrics}) == 1
    assert [c is not None for _, c in reports] == [True, True, False]
    assert json.loads((reports[1][1] / "evomerge_trial.json").read_text())["rung"] == 1
    assert schedule_options(tune_run) == {"time_attr": BUDGET, "max_t": 4, "reduction_factor": 2}


def test_a_restarted_trial_goes_on_at_the_level_after_its_checkpoint(tune_run, session, monkeypatch):
    reports, state = session
    _trial(tune_run, monkeypatch, _Worker())
    state["checkpoint"] = tune.Checkpoint.from_directory(str(reports[0][1]))  # saved after level 0
    reports.clear()
    worker = _Worker()
    _trial(tune_run, monkeypatch, worker)
    assert worker.levels == [16, None] and [m["rung"] for m, _ in reports] == [1, 2]


def test_a_recipe_that_fails_fails_the_trial_with_evomerge_reason(tune_run, session, monkeypatch):
    reports, _ = session
    with pytest.raises(TrialFailed, match=r"recipe \w{12} failed at fidelity 16: merge failed: out of memory"):
        _trial(tune_run, monkeypatch, _Worker(fail_at=(16,)))
    assert [m["rung"] for m, _ in reports] == [0]


def _with(run_config: Path, tmp_path: Path, **changes) -> Path:
    config = {**yaml.safe_load(run_config.read_text()), **changes}
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_constraints_and_anchor_subsets_are_refused_before_any_trial(run_config, tmp_path):
    with pytest.raises(RunConfigError, match=r"changed.yaml: constraints: .*remove them to run under Tune"):
        load_tune_run(_with(run_config, tmp_path, constraints=["cost/params <= 1e9"]))
    mf = {"levels": [4, 16, None], "eta": 2, "subsets": "anchors"}
    with pytest.raises(RunConfigError, match=r"multi_fidelity.subsets: anchors .*use subsets: random"):
        load_tune_run(_with(run_config, tmp_path, multi_fidelity=mf))
