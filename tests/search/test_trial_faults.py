"""Faults inside a trial fail that trial, with a reason naming the fault, and the search
finishes: real (tiny) searches through ``run_search``, on the serial and the pool executor.

The faults come from a user's task module (``faults_module.py``, copied beside each run):
it raises, runs out of memory in the merge or the evaluation, returns a non-number, or kills
its worker, each for one recipe chosen on the fly; a merge that overflows to inf comes from
a source with a huge (finite) weight.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from run_helpers import evaluations

from evomerge.merge.in_memory import InMemoryMerger
from evomerge.recipe import Recipe
from evomerge.run import run_search
from evomerge.testing import tiny_char_lm

TENSOR = "model.layers.0.mlp.up_proj.weight"
HUGE = 3.0e38  # finite in float32 (whose largest is 3.4e38): a weight above ~1.13 overflows it
TASK = "faults"  # the task's name, from its YAML's file name
SERIAL = {"kind": "serial"}
POOL = {"kind": "pool", "workers": 2, "torch_threads": 1}

# The reason each fault's trial fails with, as recorded in the ledger.
REASONS = {
    "raise": rf"^task {TASK} failed: RuntimeError: the metric server is down \(simulated\) "
             rf"\(at faults_\w+\.py:\d+\)$",
    "eval_oom": rf"^task {TASK} failed: OutOfMemoryError: CUDA out of memory during the forward pass "
                rf"\(simulated\)",
    "merge_oom": r"^merge failed: OutOfMemoryError: CUDA out of memory\. Tried to allocate 20\.00 GiB "
                 r"\(simulated\)$",
    "return_none": rf"^task {TASK} failed: faults_\w+:score returned NoneType \(None\), not a dict of values",
    "return_str": rf"^task {TASK} failed: faults_\w+:score returned str \('0\.5'\), not a dict of values",
    "return_none_value": rf"^task {TASK} failed: faults_\w+:score returned NoneType for 'score' \(None\), "
                         rf"not a number$",
    "return_str_value": rf"^task {TASK} failed: faults_\w+:score returned str for 'score' \('high'\), "
                        rf"not a number$",
    "return_nan": rf"^task {TASK} failed: non-finite value for score \(nan\)$",
    "die": r"^worker died twice: killed by signal 9$",
}
IN_TRIAL = [f for f in REASONS if f != "die"]  # a worker survives these


@pytest.fixture(scope="module")
def lms(tmp_path_factory) -> dict[str, Path]:
    """Untrained char-level Llamas: ``base``, ``a``, ``b``, and ``huge`` (``a`` with one
    value of 3e38 in TENSOR)."""
    import torch

    root = tmp_path_factory.mktemp("lms")
    out = {}
    for name, seed in (("base", 0), ("a", 1), ("b", 2), ("huge", 1)):
        model, tokenizer = tiny_char_lm(seed=seed)
        if name == "huge":
            with torch.no_grad():
                model.get_parameter(TENSOR)[0, 0] = HUGE
        model.save_pretrained(str(root / name))
        tokenizer.save_pretrained(str(root / name))
        out[name] = root / name
    return out


@pytest.fixture
def isolated(monkeypatch):
    """The fault module wraps ``InMemoryMerger.merge`` in this process (a serial worker lives
    here) and is cached under its name: undo both after the test."""
    monkeypatch.setattr(InMemoryMerger, "merge", InMemoryMerger.merge)
    yield
    for name in [m for m in sys.modules if m.startswith("faults_")]:
        del sys.modules[name]


def search(tmp_path: Path, lms, faults: list[str], executor: dict, *, trials: int,
           models=("a", "b"), weight=(0.0, 1.0), seed: int = 0):
    """Run a search whose task is the fault module; returns the result and the log lines."""
    module = f"faults_{tmp_path.name.replace('-', '_')}"  # one name per test: modules are cached
    shutil.copy(Path(__file__).with_name("faults_module.py"), tmp_path / f"{module}.py")
    (tmp_path / "plan.json").write_text(json.dumps({"faults": faults}))
    (tmp_path / f"{TASK}.yaml").write_text(yaml.safe_dump({
        "type": "python", "function": f"{module}:score", "python_path": ".", "objectives": {"score": "maximize"}}))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "base_model": str(lms["base"]), "models": [str(lms[m]) for m in models], "methods": ["task_arithmetic"],
        "parameters": {"weight": {"low": weight[0], "high": weight[1]}}}))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "space": "space.yaml", "objectives": [{"task": str(tmp_path / f"{TASK}.yaml")}], "seed": seed,
        "optimizer": {"name": "random"}, "budget": {"trials": trials}, "tracking": {"enabled": False},
        "executor": executor}))
    logs: list[str] = []
    result = run_search(tmp_path / "run.yaml", tmp_path / "run", log=logs.append)
    return result, logs


def check_faults(tmp_path: Path, result, faults: list[str], trials: int) -> None:
    """Every trial ran once; each fault's trial failed with its reason; every other succeeded."""
    run = tmp_path / "run"
    failed, complete = evaluations(run, "failed"), evaluations(run, "complete")
    assert result.trials == trials and result.evaluated == trials
    assert result.failed == len(failed) == len(faults)
    assert result.succeeded == len(complete) == trials - len(faults) and not result.all_failed
    assert all(e.scores and set(e.scores) == {f"{TASK}/score"} for e in complete)
    by_hash = {e.recipe_hash: e for e in failed}
    for i, fault in enumerate(faults):
        row = by_hash[(tmp_path / f"target-{i}").read_text()]
        assert row.scores is None
        assert re.search(REASONS[fault], row.error), (fault, row.error)


@pytest.mark.parametrize("fault", IN_TRIAL)
def test_a_fault_inside_a_trial_fails_that_trial_and_the_search_finishes(tmp_path, lms, isolated, fault):
    result, logs = search(tmp_path, lms, [fault], SERIAL, trials=3)
    check_faults(tmp_path, result, [fault], 3)
    assert sum("failed at fidelity" in line for line in logs) == 1


def test_every_fault_on_a_pool_of_worker_processes_and_a_worker_that_dies_twice(tmp_path, lms, isolated):
    # One search for all (each worker process costs seconds to start). "die": mid-evaluation
    # the worker exits (os._exit(3)); the evaluation runs again on a replacement
    # (executor.max_retries, 1 by default), which is SIGKILLed, and the trial fails.
    faults = [*IN_TRIAL, "die"]
    result, _ = search(tmp_path, lms, faults, POOL, trials=len(faults) + 2)
    check_faults(tmp_path, result, faults, len(faults) + 2)
    assert len(list(tmp_path.glob("died-*"))) == 1  # one recipe, attempted twice


def _overflows(recipe_yaml: str) -> bool:
    """Whether task arithmetic at this weight takes HUGE past float32's range (away from the edge)."""
    w = Recipe.from_yaml(recipe_yaml).models[0].parameters["weight"]
    edge = 3.4028e38 / HUGE
    assert abs(w - edge) > 0.01, f"weight {w} too close to the overflow edge for this test to be sure"
    return w > edge


@pytest.mark.parametrize("executor", [SERIAL, POOL], ids=["serial", "pool"])
def test_a_merge_that_overflows_to_inf_fails_its_trial_naming_the_tensor(tmp_path, lms, isolated, executor):
    result, _ = search(tmp_path, lms, [], executor, trials=6, models=("huge",), weight=(0.0, 2.0), seed=1)
    rows = evaluations(tmp_path / "run", None)
    assert result.trials == 6 and len(rows) == 6
    overflow = [r for r in rows if _overflows(r.recipe)]
    assert 0 < len(overflow) < 6, "the seed should give both kinds of trial"
    for r in rows:
        if r in overflow:
            assert r.state == "failed" and r.scores is None
            assert r.error.startswith(f"merge failed: merge produced non-finite values (1 inf of 2048) "
                                      f"in tensor {TENSOR}."), r.error
        else:
            assert r.state == "complete" and r.scores, r.error
    assert result.failed == len(overflow) and result.succeeded == 6 - len(overflow)


def test_a_search_whose_every_trial_fails_says_so(tmp_path, lms, isolated):
    result, _ = search(tmp_path, lms, ["every"], SERIAL, trials=3)
    assert result.trials == 3 and result.failed == 3 and result.succeeded == 0
    assert result.all_failed and result.best_trial is None
    assert result.first_error.startswith(f"task {TASK} failed: RuntimeError: the metric server is down")
