"""The serial search loop on a miniature zoo: ledger, dedupe by hash, leak guard, CLI."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import EvomergeError
from evomerge.search.controller import run_search
from evomerge.search.ledger import Ledger
from evomerge.zoo.build import Architecture, ExpertSpec, Stage, ZooConfig, build_zoo

MINI = ZooConfig(
    architecture=Architecture(hidden_size=32, intermediate_size=64, num_hidden_layers=2),
    base=Stage(steps=3, lr=1e-3, batch_size=8),
    experts=(
        ExpertSpec(name="add", skill="addition", steps=2, lr=1e-3, batch_size=8, seed=1),
        ExpertSpec(name="rev", skill="reversal", steps=2, lr=1e-3, batch_size=8, seed=2),
    ),
    workers=1,
)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"), MINI, log=lambda s: None)


def _run(tmp_path, zoo, weight=(0.0, 1.0), density=(0.3, 1.0), **over):
    space = {
        "base_model": str(zoo / "base"),
        "models": [str(zoo / "add"), str(zoo / "rev")],
        "methods": ["task_arithmetic", "ties"],
        "parameters": {"weight": {"low": weight[0], "high": weight[1]}, "density": {"low": density[0], "high": density[1]}},
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    run = {
        "space": "space.yaml",
        "objectives": [{"task": "addition"}, {"task": "cost", "metric": "params", "weight": 0.5}],
        "optimizer": {"name": "random"},
        "budget": {"trials": 5},
        "fidelity": 4,
        **over,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    return tmp_path / "run.yaml"


def test_search_records_every_trial(tmp_path, zoo):
    cfg = _run(tmp_path, zoo)
    result = run_search(cfg, tmp_path / "out", log=lambda s: None)
    assert result.evaluated == 5 and result.failed == 0
    ledger = Ledger(tmp_path / "out" / "ledger.db")
    rows = ledger.trials("complete")
    assert len(rows) == 5 and len({r.recipe_hash for r in rows}) == 5
    assert set(rows[0].scores) == {"addition/exact_match", "cost/params", "cost/layers", "cost/bytes"}
    assert result.best_number in {r.number for r in rows}
    with pytest.raises(EvomergeError, match="already holds a run"):
        run_search(cfg, tmp_path / "out", log=lambda s: None)


def test_identical_recipes_are_evaluated_once(tmp_path, zoo):
    # Ranges narrower than the recipe's rounding: every point decodes to one of two recipes
    # (one per method), so the search runs out of new recipes and stops.
    cfg = _run(tmp_path, zoo, weight=(0.5, 0.5000001), density=(0.5, 0.5000001))
    cfg_data = yaml.safe_load(cfg.read_text())
    cfg_data["budget"]["trials"] = 3
    cfg.write_text(yaml.safe_dump(cfg_data))
    result = run_search(cfg, tmp_path / "out", log=lambda s: None)
    assert result.evaluated == 2 and result.duplicates > 0
    assert len(Ledger(tmp_path / "out" / "ledger.db").trials()) == result.evaluated


def test_test_split_fitness_is_refused(tmp_path, zoo):
    cfg = _run(tmp_path, zoo, split="test")
    with pytest.raises(EvomergeError, match="allow-test-split"):
        run_search(cfg, tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_search_cli(tmp_path, zoo):
    cfg = _run(tmp_path, zoo, budget={"trials": 2})
    res = CliRunner().invoke(app, ["search", str(cfg), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "2 trials evaluated" in res.stdout
    res = CliRunner().invoke(app, ["search", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "p")])
    assert res.exit_code == 2


def test_bad_optimizer_options_fail_before_compute(tmp_path, zoo):
    cfg = _run(tmp_path, zoo, optimizer={"name": "random", "options": {"sigma0": 0.3}})
    with pytest.raises(EvomergeError, match="optimizer: random cannot be built.*sigma0"):
        run_search(cfg, tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def _hashes(run_dir):
    return [t.recipe_hash for t in Ledger(run_dir / "ledger.db").trials("complete")]


@pytest.mark.parametrize("optimizer", ["cmaes", "tpe"])
def test_resume_continues_the_same_trajectory(tmp_path, zoo, optimizer):
    from evomerge.search.controller import resume_search

    cfg = _run(tmp_path, zoo, optimizer={"name": optimizer, "options": {"popsize": 4} if optimizer == "cmaes" else {}},
               budget={"trials": 6})
    run_search(cfg, tmp_path / "whole", log=lambda s: None)
    run_search(cfg, tmp_path / "split", trials=3, log=lambda s: None)
    first = _hashes(tmp_path / "split")
    result = resume_search(tmp_path / "split", log=lambda s: None)
    assert result.evaluated == 3  # only the missing trials ran
    assert _hashes(tmp_path / "split")[:3] == first
    assert _hashes(tmp_path / "split") == _hashes(tmp_path / "whole")


def test_kill_9_mid_search_then_resume_loses_and_repeats_nothing(tmp_path, zoo):
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = _run(tmp_path, zoo, optimizer={"name": "cmaes", "options": {"popsize": 4}}, budget={"trials": 8})
    run_search(cfg, tmp_path / "whole", log=lambda s: None)
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "evomerge.cli", "search", str(cfg), "--out", str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (run_dir / "ledger.db").exists() and len(_hashes(run_dir)) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _hashes(run_dir)
    assert 3 <= len(done) < 8, "the kill should land mid-search"
    res = CliRunner().invoke(app, ["resume", str(run_dir)])
    assert res.exit_code == 0, res.output
    after = _hashes(run_dir)
    assert after[: len(done)] == done  # finished trials kept, in order
    assert len(after) == len(set(after)) == 8  # none evaluated twice
    assert after == _hashes(tmp_path / "whole")  # the same trajectory as an uninterrupted run


def test_export_writes_the_best_trial_as_a_model(tmp_path, zoo):
    from transformers import AutoModelForCausalLM

    cfg = _run(tmp_path, zoo, budget={"trials": 3})
    result = run_search(cfg, tmp_path / "run", log=lambda s: None)
    res = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert f"trial {result.best_number}" in res.stdout
    out = tmp_path / "m"
    assert (out / "evomerge_recipe.yaml").is_file() and (out / "mergekit_config.yml").is_file()
    card = (out / "README.md").read_text()
    assert "addition/exact_match" in card and f"trial {result.best_number}" in card
    AutoModelForCausalLM.from_pretrained(out)
    res = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--trial", "99", "--out", str(tmp_path / "n")])
    assert res.exit_code == 2 and "complete ones" in res.output
    res = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(out)])
    assert res.exit_code == 2  # an existing output is kept without --force


def test_front_cli_lists_non_dominated_trials(tmp_path, zoo):
    from evomerge.search.front import run_front

    cfg = _run(tmp_path, zoo, budget={"trials": 4})
    run_search(cfg, tmp_path / "run", log=lambda s: None)
    objectives, trials, front, hv = run_front(tmp_path / "run")
    assert [o.key for o in objectives] == ["addition/exact_match", "cost/params"]
    assert 1 <= len(trials) <= 4 and hv is not None and hv >= 0
    res = CliRunner().invoke(app, ["front", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "Pareto front" in res.stdout and "cost/params (min)" in res.stdout
    assert CliRunner().invoke(app, ["front", str(tmp_path)]).exit_code == 2


def test_a_task_with_two_objectives_is_scored_once(tmp_path, zoo):
    from evomerge.search.controller import bind_objectives
    from evomerge.search.run_config import RunConfig

    cfg = _run(tmp_path, zoo, objectives=[{"task": "cost", "metric": "params"}, {"task": "cost", "metric": "layers"}])
    tasks, objectives = bind_objectives(RunConfig.load(cfg), cfg)
    assert len(tasks) == 1
    assert [o.key for o in objectives] == ["cost/params", "cost/layers"]
