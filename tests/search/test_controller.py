"""The serial search loop on a miniature zoo: ledger, dedupe by hash, leak guard, CLI."""

from __future__ import annotations

import pytest
import yaml
from run_helpers import gone, search_killed_at_gate, wait_for, write_gate
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import EvomergeError
from evomerge.run import run_search
from evomerge.search.ledgers.sqlite import SQLiteLedger as Ledger
from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)


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
        "tracking": {"enabled": False},  # tests/tracking/ cover MLflow
        **over,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    return tmp_path / "run.yaml"


def test_search_records_every_trial(tmp_path, zoo):
    cfg = _run(tmp_path, zoo)
    result = run_search(cfg, tmp_path / "out", log=lambda s: None)
    assert result.evaluated == 5 and result.failed == 0
    ledger = Ledger(tmp_path / "out" / "ledger.db")
    rows = ledger.evaluations("complete")
    assert len(rows) == 5 and len({r.recipe_hash for r in rows}) == 5
    assert set(rows[0].scores) == {"addition/exact_match", "cost/params", "cost/layers", "cost/bytes"}
    assert result.best_trial in {r.trial for r in rows}
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
    assert len(Ledger(tmp_path / "out" / "ledger.db").evaluations()) == result.evaluated


def test_test_split_fitness_is_refused(tmp_path, zoo):
    cfg = _run(tmp_path, zoo, split="test")
    with pytest.raises(EvomergeError, match="allow_test_split: true"):
        run_search(cfg, tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_search_cli(tmp_path, zoo):
    cfg = _run(tmp_path, zoo, budget={"trials": 2})
    res = CliRunner().invoke(app, ["search", str(cfg), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "2 evaluations in this session" in res.stdout and "slots busy" in res.stdout
    res = CliRunner().invoke(app, ["search", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "p")])
    assert res.exit_code == 2


def test_bad_optimizer_options_fail_before_compute(tmp_path, zoo):
    cfg = _run(tmp_path, zoo, optimizer={"name": "random", "options": {"sigma0": 0.3}})
    with pytest.raises(EvomergeError, match="optimizer: random cannot be built.*sigma0"):
        run_search(cfg, tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def _hashes(run_dir):
    return [t.recipe_hash for t in Ledger(run_dir / "ledger.db").evaluations("complete")]


@pytest.mark.parametrize("optimizer", ["cmaes", "tpe", "quadratic", "lq_cmaes", "quadratic_refine",
                                       "botorch_gp"])
def test_resume_continues_the_same_trajectory(tmp_path, zoo, optimizer):
    from evomerge.run import resume_search

    options = {"cmaes": {"popsize": 4}, "lq_cmaes": {"popsize": 4},
               "quadratic_refine": {"n_initial": 2, "failure_tolerance": 1},  # coordinate steps by the 6th
               "botorch_gp": {"n_startup_trials": 2}}.get(optimizer, {})  # the GP from the 3rd trial on
    cfg = _run(tmp_path, zoo, optimizer={"name": optimizer, "options": options}, budget={"trials": 6})
    run_search(cfg, tmp_path / "whole", log=lambda s: None)
    run_search(cfg, tmp_path / "split", trials=3, log=lambda s: None)
    first = _hashes(tmp_path / "split")
    result = resume_search(tmp_path / "split", log=lambda s: None)
    assert result.evaluated == 3  # only the missing trials ran
    assert _hashes(tmp_path / "split")[:3] == first
    assert _hashes(tmp_path / "split") == _hashes(tmp_path / "whole")


def test_kill_9_mid_search_then_resume_loses_and_repeats_nothing(tmp_path, zoo):

    # The gate lets 3 evaluations through and holds the 4th: the kill lands with exactly 3
    # finished and one in flight, whatever the machine's speed.
    trials = 8
    gate = write_gate(tmp_path / "gate", passes=3)
    cfg = _run(tmp_path, zoo, optimizer={"name": "cmaes", "options": {"popsize": 4}}, budget={"trials": trials},
               objectives=[{"task": "addition"}, {"task": "cost", "metric": "params", "weight": 0.5},
                           gate.objective])
    run_dir = tmp_path / "killed"
    search_killed_at_gate(cfg, run_dir, gate, 3)
    done = _hashes(run_dir)
    assert len(done) == 3
    res = CliRunner().invoke(app, ["resume", str(run_dir)])
    assert res.exit_code == 0, res.output
    after = _hashes(run_dir)
    assert after[: len(done)] == done  # finished trials kept, in order
    assert len(after) == len(set(after)) == trials  # none evaluated twice
    run_search(cfg, tmp_path / "whole", log=lambda s: None)  # the same config, the gate open
    assert after == _hashes(tmp_path / "whole")  # the same trajectory as an uninterrupted run


def test_export_writes_the_best_trial_as_a_model(tmp_path, zoo):
    from transformers import AutoModelForCausalLM

    cfg = _run(tmp_path, zoo, budget={"trials": 3})
    result = run_search(cfg, tmp_path / "run", log=lambda s: None)
    res = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert f"trial {result.best_trial}" in res.stdout
    out = tmp_path / "m"
    assert (out / "evomerge_recipe.yaml").is_file() and (out / "mergekit_config.yml").is_file()
    card = (out / "README.md").read_text()
    assert "addition/exact_match" in card and f"trial {result.best_trial}" in card
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
    from evomerge.config.run import RunConfig
    from evomerge.search.objectives import bind_objectives

    cfg = _run(tmp_path, zoo, objectives=[{"task": "cost", "metric": "params"}, {"task": "cost", "metric": "layers"}])
    tasks, objectives = bind_objectives(RunConfig.load(cfg), cfg)
    assert len(tasks) == 1
    assert [o.key for o in objectives] == ["cost/params", "cost/layers"]


# --- asynchronous slots, multi-fidelity, Pareto search, budgets -----------------------


def _rows(run_dir, state="complete"):
    return Ledger(run_dir / "ledger.db").evaluations(state)


MF = {"levels": [2, 4, 8], "eta": 2, "bracket": 4}


def test_successive_halving_promotes_the_best_and_saves_cost(tmp_path, zoo):
    cfg = _run(tmp_path, zoo, fidelity=None, multi_fidelity=MF, budget={"trials": 8},
               objectives=[{"task": "reversal"}])
    result = run_search(cfg, tmp_path / "out", log=lambda s: None)
    rows = _rows(tmp_path / "out")
    by_rung = {r: [t for t in rows if t.rung == r] for r in range(3)}
    assert [len(by_rung[r]) for r in range(3)] == [8, 4, 2]  # 2 brackets of 4: 4 -> 2 -> 1 each
    assert {t.fidelity for t in by_rung[1]} == {4} and {t.fidelity for t in by_rung[2]} == {8}
    for bracket in (range(0, 4), range(4, 8)):  # promoted = the best half at rung 0
        scored = sorted((t for t in by_rung[0] if t.trial in bracket),
                        key=lambda t: (-t.scores["reversal/exact_match"], t.trial))
        promoted = {t.trial for t in by_rung[1] if t.trial in bracket}
        assert promoted == {t.trial for t in scored[:2]}
    assert result.trials == 8
    # 8 x 2 + 4 x 4 + 2 x 8 examples instead of 8 x 8.
    assert result.examples_scored == 48 and result.examples_at_top == 64
    assert result.best_trial in {t.trial for t in by_rung[2]}


def test_multi_fidelity_resume_replays_to_the_same_trajectory(tmp_path, zoo):
    from evomerge.run import resume_search

    cfg = _run(tmp_path, zoo, fidelity=None, multi_fidelity=MF, budget={"trials": 12},
               optimizer={"name": "cmaes", "options": {"popsize": 4}})
    run_search(cfg, tmp_path / "whole", log=lambda s: None)
    run_search(cfg, tmp_path / "split", trials=4, log=lambda s: None)
    first = _hashes(tmp_path / "split")
    result = resume_search(tmp_path / "split", log=lambda s: None)
    assert result.trials == 12 and result.evaluated == len(_hashes(tmp_path / "whole")) - len(first)
    whole = [(t.recipe_hash, t.fidelity) for t in _rows(tmp_path / "whole")]
    assert [(t.recipe_hash, t.fidelity) for t in _rows(tmp_path / "split")] == whole


@pytest.mark.parametrize("optimizer", ["gp", "botorch_gp"])
def test_a_pareto_search_with_pending_brackets_resumes_to_the_same_trajectory(tmp_path, zoo, optimizer):
    # Brackets are asked whole before any is told: gp shows the pending points as lies, botorch_gp
    # conditions on beliefs about them; a resume must rebuild both from the ledger alone.
    from evomerge.run import resume_search

    cfg = _run(tmp_path, zoo, fidelity=None, multi_fidelity=MF, budget={"trials": 12}, scalarization="pareto",
               objectives=[{"task": "addition"}, {"task": "reversal"}],
               optimizer={"name": optimizer, "options": {"n_startup_trials": 4}})
    run_search(cfg, tmp_path / "whole", log=lambda s: None)
    run_search(cfg, tmp_path / "split", trials=4, log=lambda s: None)  # one bracket (a session ends brackets)
    resume_search(tmp_path / "split", log=lambda s: None)
    whole = [(t.recipe_hash, t.fidelity) for t in _rows(tmp_path / "whole")]
    assert [(t.recipe_hash, t.fidelity) for t in _rows(tmp_path / "split")] == whole
    assert len({h for h, _ in whole}) == 12  # the bracket's asks spread: no recipe proposed twice


def test_a_pool_of_worker_processes_runs_the_search(tmp_path, zoo):
    from evomerge.run import resume_search

    cfg = _run(tmp_path, zoo, optimizer={"name": "cmaes", "options": {"popsize": 4}},
               budget={"trials": 8}, executor={"workers": 2, "torch_threads": 1})
    run_search(cfg, tmp_path / "serial", log=lambda s: None)
    run_search(cfg, tmp_path / "pool", trials=4, log=lambda s: None)
    result = resume_search(tmp_path / "pool", log=lambda s: None)
    assert result.evaluated == 4 and result.failed == 0
    # Completion order may differ between processes; CMA-ES's generations do not.
    assert sorted(_hashes(tmp_path / "pool")) == sorted(_hashes(tmp_path / "serial"))
    serial = {t.recipe_hash: t.scores for t in _rows(tmp_path / "serial")}
    assert all(serial[t.recipe_hash] == t.scores for t in _rows(tmp_path / "pool"))


def test_multi_objective_optimisers_are_told_every_objective(tmp_path, zoo):
    from evomerge.config.run import RunConfig
    from evomerge.run import prepare

    cfg = _run(tmp_path, zoo, optimizer={"name": "nsga2"})
    assert prepare(RunConfig.load(cfg), cfg).optimizer.n_objectives == 2
    cfg = _run(tmp_path, zoo, optimizer={"name": "nsga2"}, scalarization="weighted_sum")
    assert prepare(RunConfig.load(cfg), cfg).optimizer.n_objectives == 1
    cfg = _run(tmp_path, zoo, optimizer={"name": "cmaes"}, scalarization="pareto")
    with pytest.raises(EvomergeError, match="multi-objective optimiser"):
        prepare(RunConfig.load(cfg), cfg)
    cfg = _run(tmp_path, zoo, optimizer={"name": "tpe"}, budget={"trials": 4})
    result = run_search(cfg, tmp_path / "mo", log=lambda s: None)
    assert result.trials == 4 and len(_rows(tmp_path / "mo")) == 4


def test_patience_stops_a_search_that_no_longer_improves(tmp_path, zoo):
    # Every candidate has the same parameter count, so the best never improves after the first.
    cfg = _run(tmp_path, zoo, objectives=[{"task": "cost", "metric": "params"}],
               budget={"trials": 20, "patience": 3})
    result = run_search(cfg, tmp_path / "out", log=lambda s: None)
    assert result.trials == 4


def test_warm_start_points_are_evaluated_first(tmp_path, zoo):
    cfg = _run(tmp_path, zoo, budget={"trials": 2},
               warm_start=[{"method": "ties", "add.weight": 0.5, "rev.weight": 1.0}])
    run_search(cfg, tmp_path / "out", log=lambda s: None)
    first = yaml.safe_load(_rows(tmp_path / "out")[0].recipe)
    assert first["merge_method"] == "ties"
    weights = [m["parameters"]["weight"] for m in first["models"]]
    assert weights == [0.5, 1.0]
    bad = _run(tmp_path, zoo, warm_start=[{"nope.weight": 1.0}])
    with pytest.raises(EvomergeError, match=r"warm_start\[0\].*nope.weight"):
        run_search(bad, tmp_path / "bad", log=lambda s: None)


def test_priors_from_the_sources_come_first_then_warm_start(tmp_path, zoo):
    cfg = _run(tmp_path, zoo, budget={"trials": 5}, priors="sources",
               warm_start=[{"method": "ties", "add.weight": 0.5, "rev.weight": 1.0}])
    run_search(cfg, tmp_path / "out", log=lambda s: None)
    recipes = [yaml.safe_load(r.recipe) for r in _rows(tmp_path / "out")]
    weights = [[m["parameters"]["weight"] for m in r["models"]] for r in recipes]
    assert [r["merge_method"] for r in recipes] == ["task_arithmetic"] * 4 + ["ties"]
    assert weights == [[0.5, 0.5], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.5, 1.0]]


def test_progress_reports_every_finished_candidate(tmp_path, zoo):
    from evomerge.search.progress import format_progress

    seen = []
    cfg = _run(tmp_path, zoo, budget={"trials": 3})
    run_search(cfg, tmp_path / "out", log=lambda s: None, progress=seen.append)
    assert [p.trials for p in seen] == [1, 2, 3] and seen[-1].front_size >= 1
    assert seen[-1].best_fitness is not None and seen[-1].eta is not None
    assert "[3/3]" in format_progress(seen[-1]) and "front" in format_progress(seen[-1])


def test_a_journal_ledger_resumes_like_sqlite(tmp_path, zoo):
    from evomerge.run import resume_search
    from evomerge.search.ledgers import open_ledger

    cfg = _run(tmp_path, zoo, ledger="journal", budget={"trials": 6},
               optimizer={"name": "cmaes", "options": {"popsize": 3}})
    run_search(cfg, tmp_path / "whole", log=lambda s: None)
    run_search(cfg, tmp_path / "split", trials=3, log=lambda s: None)
    assert (tmp_path / "split" / "ledger.jsonl").is_file() and not (tmp_path / "split" / "ledger.db").exists()
    resume_search(tmp_path / "split", log=lambda s: None)
    hashes = [[t.recipe_hash for t in open_ledger(tmp_path / d).evaluations("complete")] for d in ("whole", "split")]
    assert hashes[0] == hashes[1] and len(hashes[0]) == 6


def test_hyperband_cycles_brackets_that_start_at_each_level(tmp_path, zoo):
    cfg = _run(tmp_path, zoo, fidelity=None, budget={"trials": 10}, objectives=[{"task": "reversal"}],
               multi_fidelity={**MF, "schedule": "hyperband"})
    result = run_search(cfg, tmp_path / "out", log=lambda s: None)
    rows = _rows(tmp_path / "out")
    # Brackets (4 at rung 0), (3 at rung 1), (3 at rung 2), promoting the best half.
    assert [sum(t.rung == r for t in rows) for r in range(3)] == [4, 2 + 3, 1 + 1 + 3]
    starts = {}
    for t in rows:
        starts.setdefault(t.trial, t.rung)
    assert [starts[c] for c in sorted(starts)] == [0] * 4 + [1] * 3 + [2] * 3
    assert result.trials == 10


def test_resume_with_a_larger_budget_replays_without_divergence(tmp_path, zoo):
    from evomerge.run import resume_search

    cfg = _run(tmp_path, zoo, fidelity=None, multi_fidelity=MF, budget={"trials": 12})
    run_search(cfg, tmp_path / "run", trials=5, log=lambda s: None)  # stops asking after 5
    logs = []
    first = resume_search(tmp_path / "run", log=logs.append)
    assert first.trials == 12 and first.evaluated > 0
    again = resume_search(tmp_path / "run", log=logs.append)  # replays both sessions
    assert again.evaluated == 0 and again.trials == 12
    assert not any("does not follow" in line for line in logs)
    keys = [(t.recipe_hash, t.fidelity) for t in _rows(tmp_path / "run")]
    assert len(keys) == len(set(keys))  # nothing evaluated twice


def test_a_wall_time_stop_is_replayed_where_it_happened(tmp_path, zoo):
    from evomerge.run import resume_search

    # The first evaluation outlasts the time budget (held 0.6 s), so the clock stops the search
    # in its first bracket, however fast the machine.
    gate = write_gate(tmp_path / "gate", hold=[0], seconds=0.6)
    cfg = _run(tmp_path, zoo, fidelity=None, multi_fidelity=MF, budget={"trials": 40, "seconds": 0.5},
               objectives=[{"task": "addition"}, {"task": "cost", "metric": "params", "weight": 0.5},
                           gate.objective])
    run_search(cfg, tmp_path / "run", log=lambda s: None)
    done = len(_rows(tmp_path / "run"))
    assert 0 < done <= 4 + 2 + 1  # stopped by the clock, not the budget
    sessions = Ledger(tmp_path / "run" / "ledger.db").sessions()
    assert sessions[-1].closed_asks is not None  # where the asking stopped, for a resume to replay
    logs = []
    data = yaml.safe_load(cfg.read_text())
    data["budget"].pop("seconds")
    (tmp_path / "run" / "run.yaml").write_text(yaml.safe_dump({**yaml.safe_load((tmp_path / "run" / "run.yaml").read_text()), "budget": data["budget"]}))
    resume_search(tmp_path / "run", log=logs.append)
    assert not any("does not follow" in line for line in logs)
    keys = [(t.recipe_hash, t.fidelity) for t in _rows(tmp_path / "run")]
    assert len(keys) == len(set(keys))


def test_patience_counts_whole_brackets(tmp_path, zoo):
    cfg = _run(tmp_path, zoo, fidelity=None, multi_fidelity=MF, objectives=[{"task": "cost", "metric": "params"}],
               budget={"trials": 40, "patience": 5})
    # The first bracket sets the best; the next two (8 trials) do not beat it.
    assert run_search(cfg, tmp_path / "out", log=lambda s: None).trials == 12


def test_a_dead_worker_process_is_replaced_and_its_evaluation_rerun(tmp_path, zoo):
    import os
    import signal

    from evomerge.config.run import ExecutorSpec
    from evomerge.recipe import Recipe
    from evomerge.search.executors import TaskSpec, WorkerSpec, open_executor

    refs = {str(zoo / m): zoo / m for m in ("base", "add", "rev")}

    def spec(*gates):  # each holds the evaluations it numbers in `hold` (a re-run takes a new number)
        tasks = (TaskSpec("addition", "search", False), *(TaskSpec(str(g.task), "search", False) for g in gates))
        return WorkerSpec(refs, str(zoo / "base"), tasks, torch_threads=1)

    def held(gate, n):  # the pid of the worker holding the n-th held evaluation, once it is held
        wait_for(lambda: len(gate.held()) >= n, f"evaluation {n} held at the gate", limit=120)
        return gate.held()[n - 1]["pid"]

    recipe = Recipe.from_dict({"merge_method": "linear", "models": [
        {"model": str(zoo / "add"), "parameters": {"weight": 1.0}},
        {"model": str(zoo / "rev"), "parameters": {"weight": 1.0}}]})
    gate = write_gate(tmp_path / "gate", hold=[1])
    pool = open_executor(ExecutorSpec(kind="pool", workers=1, max_retries=1), spec(gate))
    try:
        pool.submit(0, recipe, 4)
        assert pool.wait()[1].values is not None  # the worker is up
        pid = pool._slots[0].process.pid
        pool.submit(1, recipe, 4)
        assert held(gate, 1) == pid  # mid-evaluation, held at the gate
        os.kill(pid, signal.SIGKILL)
        job, outcome = pool.wait()
        assert job == 1 and outcome.values is not None, outcome.error  # rerun on a new process
        assert pool.deaths == 1 and pool._slots[0].process.pid != pid and gone(pid)
        assert gate.starts() == 3  # the held evaluation never finished: it ran again
    finally:
        pool.close()
        gate.release()
    # `shut` holds every evaluation until released; `kill` holds its second one.
    shut, kill = write_gate(tmp_path / "shut", passes=0), write_gate(tmp_path / "kill", hold=[1])
    pool = open_executor(ExecutorSpec(kind="pool", workers=1, max_retries=0, timeout=0.05), spec(shut, kill))
    try:
        pool.submit(0, recipe, 4)  # cannot finish: the timeout kills its worker
        job, outcome = pool.wait()
        assert outcome.values is None and "timed out after 0.05 s" in outcome.error
        pool.timeout = None
        shut.release()
        pool.submit(1, recipe, 4)  # the replacement serves the next one
        assert pool.wait()[1].values is not None
        pid = pool._slots[0].process.pid
        pool.submit(2, recipe, 4)
        assert held(kill, 1) == pid
        os.kill(pid, signal.SIGKILL)
        job, outcome = pool.wait()
        assert job == 2 and outcome.values is None and "worker died once: killed by signal 9" in outcome.error
    finally:
        pool.close()
        shut.release()
        kill.release()


def test_an_unexpected_merge_error_fails_the_trial_not_the_search(tmp_path, zoo, monkeypatch):
    from evomerge.merge.in_memory import InMemoryMerger

    def boom(self, recipe, into=None, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(InMemoryMerger, "merge", boom)
    result = run_search(_run(tmp_path, zoo, budget={"trials": 2}), tmp_path / "out", log=lambda s: None)
    failed = _rows(tmp_path / "out", "failed")
    assert result.failed == 2 and len(failed) == 2 and "CUDA out of memory" in failed[0].error


def test_a_missing_source_model_names_the_space_file_before_any_output(tmp_path, zoo):
    cfg = _run(tmp_path, zoo)
    space = yaml.safe_load((tmp_path / "space.yaml").read_text())
    space["models"][0] = str(tmp_path / "no-such-expert")
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    with pytest.raises(EvomergeError, match=r"space.yaml: a source model of the space cannot be found.*no-such-expert"):
        run_search(cfg, tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()
