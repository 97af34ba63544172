"""Ray Tune on a local Ray runtime and the mini zoo: docs/tune.md's example (OptunaSearch and
ASHA) runs evomerge's trials with evomerge's scores, and an experiment whose driver is killed is
restored and finished."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
from ray import tune
from run_helpers import wait_for

from evomerge.integrations.tune import (
    BUDGET,
    FITNESS,
    evomerge_trainable,
    recipe_of,
)
from evomerge.integrations.tune.space import config_of
from evomerge.recipe import Recipe
from evomerge.search.objectives import fitness

pytestmark = pytest.mark.ray

DRIVER = Path(__file__).with_name("tune_driver.py")
PAGE = Path(__file__).resolve().parents[2] / "docs" / "tune.md"


@pytest.fixture(scope="module")
def runtime():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _reports(result) -> list[dict]:
    """Every report of a trial, as written (JSON keeps the floats exact)."""
    lines = (Path(result.path) / "result.json").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _docs_example(**constants) -> str:
    """docs/tune.md's first python block (the OptunaSearch and ASHA example), ``constants``
    replacing its own (``CONFIG = ...`` lines)."""
    block = re.findall(r"^```python\n(.*?)^```", PAGE.read_text(), re.S | re.M)[0]
    for name, value in constants.items():
        code = f"Path({str(value)!r})" if isinstance(value, Path) else repr(value)
        block, n = re.subn(rf"^{name} = .*$", f"{name} = {code}", block, flags=re.M)
        assert n == 1, f"the example sets {name} once"
    return block


def test_the_docs_example_runs_optuna_and_asha_with_evomerge_scores(runtime, tune_run, run_config, tmp_path):
    """The example of docs/tune.md on the mini zoo, one trial at a time (so ASHA's decisions do
    not depend on timing)."""
    # Run as a user runs it, a script of its own (here on the test's Ray runtime): a Tuner fitted
    # in the test process left state that broke a later test's Ray actors (the executor suite's
    # kill test).
    script = _docs_example(CONFIG=str(run_config), TRIALS=6, AT_ONCE=1, STORAGE=tmp_path) + (
        "\nimport json\n(STORAGE / 'grid.json').write_text(json.dumps("
        "[{'path': r.path, 'config': r.config, 'error': repr(r.error) if r.error else None} for r in grid]))\n")
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "RAY_ADDRESS": runtime},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    grid = [SimpleNamespace(**r) for r in json.loads((tmp_path / "grid.json").read_text())]
    assert len(grid) == 6 and not any(r.error for r in grid)
    kept = Recipe.from_yaml((tmp_path / "best_recipe.yaml").read_text())  # merges from anywhere
    assert all(Path(m).is_absolute() and Path(m).is_dir() for m in kept.referenced_models())
    top = len(tune_run.levels) - 1
    reports = [_reports(r) for r in grid]
    for trial in reports:  # one report per level, cheapest first, on the schedulers' scale
        assert [r["rung"] for r in trial] == list(range(len(trial)))
        assert [r[BUDGET] for r in trial] == [2**i for i in range(len(trial))]
        assert trial[-1]["examples"] == (96 if len(trial) == 3 else tune_run.levels[len(trial) - 1])
    reached = [len(trial) - 1 for trial in reports]
    assert top in reached and min(reached) < top  # ASHA stopped some trials between levels

    # The same recipes through evomerge's own executor, at the levels Tune scored: the same
    # worker code on the same deterministic CPU kernels, one torch thread each: equal exactly.
    # In a process of its own too (evaluations in the test process after Tune runs also left
    # the state that broke the kill test).
    for result, trial in zip(grid, reports, strict=True):
        assert {r["recipe_hash"] for r in trial} == {recipe_of(tune_run.space, result.config).content_hash()}
    asked = [[r.config, [r2["rung"] for r2 in trial]] for r, trial in zip(grid, reports, strict=True)]
    (tmp_path / "asked.json").write_text(json.dumps(asked))
    done = subprocess.run([sys.executable, "-c", RESCORE, str(run_config), str(tmp_path / "asked.json")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rescored = json.loads(done.stdout.strip().splitlines()[-1])
    for trial, per_rung in zip(reports, rescored, strict=True):
        for r, values in zip(trial, per_rung, strict=True):
            assert {k: r[k] for k in values} == values
            assert r[FITNESS] == fitness(values, list(tune_run.objectives))


# argv: RUN_CONFIG ASKED.json ([[config, [rung, ...]], ...]); prints [[values per rung], ...].
RESCORE = """
import json, sys
from evomerge.config.run import ExecutorSpec
from evomerge.integrations.tune import load_tune_run, recipe_of
from evomerge.search.executors import open_executor

run = load_tune_run(sys.argv[1])
executor = open_executor(ExecutorSpec(kind="serial"), run.worker)
out = []
try:
    for config, rungs in json.loads(open(sys.argv[2]).read()):
        recipe = recipe_of(run.space, config)
        per_rung = []
        for rung in rungs:
            executor.submit(0, recipe, run.levels[rung])
            per_rung.append(executor.wait()[1].values)
        out.append(per_rung)
finally:
    executor.close()
print(json.dumps(out))
"""


def test_a_killed_driver_is_restored_and_finishes_the_planned_trials(runtime, tune_run, run_config,
                                                                     tmp_path, monkeypatch):
    cue, starts = tmp_path / "cue.json", tmp_path / "starts.txt"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    out = tmp_path / "driver.log"
    with open(out, "w") as log:
        driver = subprocess.Popen(
            [sys.executable, str(DRIVER), str(run_config), str(tmp_path), str(cue), str(starts), runtime],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    try:
        wait_for(cue.exists, "the driver's cue (3 trials finished)", limit=240,
                 alive=lambda: driver.poll() is None, output=out.read_text)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    started_before = starts.read_text().split()

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")
    path = str(tmp_path / "restore")
    saved = {t.trial_id: t for t in tune.ExperimentAnalysis(path).trials}
    finished = {i: t.last_result["timestamp"] for i, t in saved.items() if t.status == "TERMINATED"}
    assert len(finished) >= 1, "the killed driver saved no finished trial"
    assert len(saved) < 8  # the searcher had more to suggest

    grid = tune.Tuner.restore(path, evomerge_trainable(tune_run)).fit()
    assert len(grid) == 8 and not grid.errors
    last = {r.metrics["trial_id"]: r.metrics for r in grid}
    for trial_id, stamp in finished.items():  # finished ones kept their results, never ran again
        assert last[trial_id]["timestamp"] == stamp
    restarted = starts.read_text().split()[len(started_before):]
    assert not set(restarted) & set(finished)

    # The restored searcher went on with CMA-ES's trajectory: both generations are what the
    # optimiser proposes alone when told each trial's last fitness.
    bare = tune_run.build_optimizer(tune_run.optimizer_spec("cmaes", {"popsize": 4}))
    by_config = {json.dumps(r.config, sort_keys=True): r.metrics[FITNESS] for r in grid}
    for _ in range(2):
        generation = [bare.ask() for _ in range(4)]
        for s in generation:
            key = json.dumps(config_of(tune_run.space, s.x), sort_keys=True)
            assert key in by_config
            bare.tell(s.id, (by_config[key],))
