"""Tune's HyperBand and PBT drive evomerge's trainable (marker ``ray``): every trial's reports
climb the run's fidelity levels, and each report's score is evomerge's for the recipe it names
(PBT perturbs a trial's recipe between levels and goes on from the level of the checkpoint it
takes: its last report names the recipe it ends with)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_tune import RESCORE, runtime  # noqa: F401 - the Ray runtime fixture, one per module

from evomerge.integrations.tune import FITNESS, recipe_of
from evomerge.search.objectives import fitness

pytestmark = pytest.mark.ray
DRIVER = Path(__file__).with_name("tune_schedulers_driver.py")


def _run(kind: str, run_config, storage: Path, address: str) -> list[tuple[dict, list[dict]]]:
    done = subprocess.run([sys.executable, str(DRIVER), str(run_config), str(storage), address, kind],
                          capture_output=True, text=True, timeout=600, env={**os.environ})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    grid = json.loads((storage / "grid.json").read_text())
    assert len(grid) == 4 and not any(t["error"] for t in grid), grid
    out = []
    for t in grid:
        lines = (Path(t["path"]) / "result.json").read_text().splitlines()
        out.append((t["config"], [json.loads(line) for line in lines]))
    return out


@pytest.mark.parametrize("kind", ["hyperband", "pbt"])
def test_hyperband_and_pbt_run_evomerge_trials_level_by_level(kind, runtime, tune_run, run_config, tmp_path):  # noqa: F811
    trials = _run(kind, run_config, tmp_path, runtime)
    top = len(tune_run.levels) - 1
    asked = []
    for config, reports in trials:
        rungs = [r["rung"] for r in reports]
        assert rungs[0] == 0 and set(rungs) <= set(range(top + 1)), rungs
        if kind == "hyperband":  # one report per level, cheapest first, until stopped
            assert rungs == list(range(len(rungs)))
        else:  # each level after the last, or after an exploit, from the checkpoint taken
            assert all(b == a + 1 or 1 <= b <= a for a, b in zip(rungs, rungs[1:], strict=False)), rungs
        last = reports[-1]
        assert last["recipe_hash"] == recipe_of(tune_run.space, config).content_hash()  # the recipe it ends with
        asked.append([config, [last["rung"]]])
    # evomerge's own scores of those recipes, in a process of its own (as in test_tune.py).
    (tmp_path / "asked.json").write_text(json.dumps(asked))
    done = subprocess.run([sys.executable, "-c", RESCORE, str(run_config), str(tmp_path / "asked.json")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for (_, reports), (values,) in zip(trials, json.loads(done.stdout.strip().splitlines()[-1]), strict=True):
        assert {k: reports[-1][k] for k in values} == values
        assert reports[-1][FITNESS] == fitness(values, list(tune_run.objectives))
