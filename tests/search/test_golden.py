"""Golden runs: the search's behaviour, pinned before the search side was restructured.

Each run uses the mini zoo the tests build (models referenced relative to the space file, so
recipe hashes do not depend on where the test runs), the serial executor and a seeded
optimiser. The recorded asks (genomes), recipe hashes, scores, completion order and front are in
``golden/*.json``; a refactoring must reproduce them. Two run directories written by the
evomerge of that time are kept as they were (an old-format ledger, a run.yaml without
``executor.kind`` and with ``ledger:`` as a plain string): one from a pool of two workers, whose
replay must rebuild the same state without evaluating anything, and one interrupted serial run
(SQLite and journal ledgers) that must resume to the recorded continuation.

Regenerate (only when behaviour is meant to change, and say so in the commit):
``EVOMERGE_RECORD_GOLDEN=1 pytest tests/search/test_golden.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from evomerge.run import resume_search, run_search
from evomerge.search.front import run_front
from evomerge.search.ledgers import open_ledger
from evomerge.zoo.build import Architecture, ExpertSpec, Stage, ZooConfig, build_zoo

GOLDEN = Path(__file__).parent / "golden"
RECORD = os.environ.get("EVOMERGE_RECORD_GOLDEN") == "1"

SPACE = {
    "base_model": "../zoo/base",
    "models": ["../zoo/add", "../zoo/rev"],
    "methods": ["task_arithmetic", "ties"],
    "parameters": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.3, "high": 1.0}},
}
OBJECTIVES = [{"task": "addition_mc"}, {"task": "zoo_text"}]
RUNS = {
    # multi-objective TPE told both objectives (a Pareto search)
    "tpe": {"optimizer": {"name": "tpe"}, "budget": {"trials": 8}, "fidelity": 8, "seed": 0},
    # CMA-ES on the weighted sum, with successive halving over two levels
    "cmaes_sh": {
        "optimizer": {"name": "cmaes", "options": {"popsize": 4}},
        "budget": {"trials": 8},
        "multi_fidelity": {"levels": [4, 8], "eta": 2, "bracket": 4},
        "seed": 1,
    },
}


# The tests' mini zoo with larger steps, so that the experts' task vectors move the scores.
ZOO = ZooConfig(
    architecture=Architecture(hidden_size=32, intermediate_size=64, num_hidden_layers=2),
    base=Stage(steps=3, lr=1e-2, batch_size=8),
    experts=(
        ExpertSpec(name="add", skill="addition", steps=3, lr=3e-2, batch_size=8, seed=1),
        ExpertSpec(name="rev", skill="reversal", steps=3, lr=3e-2, batch_size=8, seed=2),
    ),
    workers=1,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    build_zoo(root / "zoo", ZOO, log=lambda s: None)
    (root / "space").mkdir()
    (root / "space" / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return root


def _config(world: Path, name: str, **over) -> Path:
    run = {"space": "space.yaml", "objectives": OBJECTIVES, "tracking": {"enabled": False},
           **RUNS.get(name, {}), **over}
    path = world / "space" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def _snapshot(run_dir: Path, result) -> dict:
    """What must not change: every completion in order, the result, the front."""
    ledger = open_ledger(run_dir, readonly=True)
    try:
        rows = [
            {
                "trial": r.trial,
                "rung": r.rung,
                "recipe_hash": r.recipe_hash,
                "genome": [round(v, 9) for v in r.genome],
                "fidelity": r.fidelity,
                "state": r.state,
                "scores": r.scores,
            }
            for r in ledger.completions()
        ]
    finally:
        ledger.close()
    objectives, front_trials, _, hv = run_front(run_dir)
    return {
        "completions": rows,
        "result": {
            "evaluated": result.evaluated,
            "candidates": result.trials,
            "duplicates": result.duplicates,
            "failed": result.failed,
            "best_trial": result.best_trial,
            "best_fitness": result.best_fitness,
        },
        "front": {
            "objectives": [o.key for o in objectives],
            "trials": [t.trial for t in front_trials],
            "hypervolume": hv,
        },
    }


def _compare(name: str, got: dict) -> None:
    path = GOLDEN / f"{name}.json"
    if RECORD:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        return
    want = json.loads(path.read_text())
    assert len(got["completions"]) == len(want["completions"])
    for i, (g, w) in enumerate(zip(got["completions"], want["completions"], strict=True)):
        for key in ("trial", "rung", "recipe_hash", "fidelity", "state"):
            assert g[key] == w[key], f"{name}: completion {i}: {key} {g[key]!r} != {w[key]!r}"
        assert g["genome"] == pytest.approx(w["genome"], abs=1e-7), f"{name}: completion {i}: ask"
        assert (g["scores"] is None) == (w["scores"] is None)
        if w["scores"] is not None:
            assert g["scores"].keys() == w["scores"].keys()
            for k in w["scores"]:
                assert g["scores"][k] == pytest.approx(w["scores"][k], rel=1e-5, abs=1e-9), (name, i, k)
    gr, wr = got["result"], want["result"]
    assert {k: v for k, v in gr.items() if k != "best_fitness"} == {
        k: v for k, v in wr.items() if k != "best_fitness"}
    assert gr["best_fitness"] == pytest.approx(wr["best_fitness"], rel=1e-5)
    assert got["front"]["objectives"] == want["front"]["objectives"]
    assert got["front"]["trials"] == want["front"]["trials"]
    assert got["front"]["hypervolume"] == pytest.approx(want["front"]["hypervolume"], rel=1e-5)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_golden_serial_runs(world, tmp_path, name):
    result = run_search(_config(world, name), tmp_path / "run", log=lambda s: None)
    _compare(name, _snapshot(tmp_path / "run", result))


def _old_run_dir(world: Path, tmp_path: Path, fixture: str) -> Path:
    """A run directory recorded by an earlier evomerge, its frozen space path pointed here."""
    src = GOLDEN / fixture
    run_dir = tmp_path / fixture
    shutil.copytree(src, run_dir)
    frozen = yaml.safe_load((run_dir / "run.yaml").read_text())
    frozen["space"] = str(world / "space" / "space.yaml")
    (run_dir / "run.yaml").write_text(yaml.safe_dump(frozen, sort_keys=False))
    return run_dir


def _record_old_run(world: Path, fixture: str, trials: int, **over) -> None:
    """Write a fixture run directory (recording mode only)."""
    run_dir = GOLDEN / fixture
    shutil.rmtree(run_dir, ignore_errors=True)
    run_search(_config(world, fixture, **over), run_dir, trials=trials, log=lambda s: None)


def test_golden_replay_of_a_pool_run(world, tmp_path):
    """A pool run's ledger (completion order decided by two workers) replays to the same state
    with no evaluation: the same asks, hashes, scores and front."""
    over = {"optimizer": {"name": "tpe"}, "budget": {"trials": 6}, "fidelity": 8, "seed": 3,
            "executor": {"workers": 2, "torch_threads": 1}}
    if RECORD:
        _record_old_run(world, "pool_run", 6, **over)
    run_dir = _old_run_dir(world, tmp_path, "pool_run")
    result = resume_search(run_dir, log=lambda s: None)
    assert result.evaluated == 0
    _compare("pool_run", _snapshot(run_dir, result))


@pytest.mark.parametrize("ledger", ["sqlite", "journal"])
def test_golden_resume_of_an_interrupted_run(world, tmp_path, ledger):
    """A run stopped after 5 of 8 trials, written before the restructuring, resumes to the
    recorded continuation (3 new evaluations)."""
    fixture = f"interrupted_{ledger}"
    if RECORD:
        _record_old_run(world, fixture, 5, ledger=ledger, **RUNS["tpe"])
    run_dir = _old_run_dir(world, tmp_path, fixture)
    result = resume_search(run_dir, log=lambda s: None)
    assert result.evaluated == 3
    _compare("interrupted", _snapshot(run_dir, result))
