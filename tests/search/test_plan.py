"""A run's plan: the fidelity schedule the controller really runs, and the wall-time arithmetic."""

from __future__ import annotations

import collections
import random

import pytest
import yaml

from evomerge.config.run import RunConfig
from evomerge.search.controller import Controller
from evomerge.search.executors import Outcome
from evomerge.search.ledgers import open_ledger
from evomerge.search.objectives import bind_objectives
from evomerge.search.optimizers import OPTIMIZERS
from evomerge.search.plan import Timing, duration, estimate, schedule
from evomerge.search.space import load_space
from evomerge.testing import make_family


def _config(**over) -> RunConfig:
    return RunConfig.model_validate({"space": "s.yaml", "objectives": [{"task": "cost"}], **over})


def test_the_quickstart_schedule():
    config = _config(multi_fidelity={"levels": [64, 256, None], "eta": 3, "bracket": 9}, budget={"trials": 360})
    s = schedule(config, [1024, 1024, 1024, None], 360)
    assert [(r.level, r.per_bracket, r.evaluations, r.examples) for r in s.rungs] == [
        (64, 9, 360, 192), (256, 3, 120, 768), (None, 1, 40, 3072)]
    assert (s.brackets, s.evaluations) == (40, 520)  # the README's 360 trials / 520 evaluations
    assert round(s.examples / s.examples_at_top, 2) == 0.26  # and its 26% of the examples


def test_a_partial_last_bracket_promotes_at_least_one_straight_to_the_top():
    config = _config(multi_fidelity={"levels": [2, 4, 8], "eta": 3, "bracket": 9})
    s = schedule(config, [8], 11)  # brackets of 9 and 2: the 2's survivor has none to rank against
    assert [r.evaluations for r in s.rungs] == [11, 3, 1 + 1]
    assert [r.evaluations for r in schedule(config, [8], 10).rungs] == [9, 3, 1 + 1]  # a bracket of 1


def test_single_fidelity_is_one_evaluation_per_trial():
    s = schedule(_config(fidelity=16), [100, None], 7)
    assert (s.kind, s.brackets, s.evaluations, s.examples, s.examples_at_top) == ("single", 7, 7, 112, 112)


def test_hyperband_cycles_through_its_brackets():
    config = _config(multi_fidelity={"levels": [1, 3, 9], "eta": 3, "schedule": "hyperband"})
    s = schedule(config, [9], 9 + 5 + 3 + 9)  # hyperband_schedule(3, 3): (9, 0), (5, 1), (3, 2); then 9 again
    assert s.kind == "hyperband" and s.brackets == 4
    assert [r.per_bracket for r in s.rungs] == [9, 3 + 5, 1 + 1 + 3]
    assert [r.evaluations for r in s.rungs] == [18, 6 + 5, 2 + 1 + 3]


@pytest.mark.parametrize("fidelity", [
    {"multi_fidelity": {"levels": [1, 2, 4], "eta": 3, "bracket": 9}},
    {"multi_fidelity": {"levels": [1, 2], "eta": 2, "bracket": 5}},
    {"multi_fidelity": {"levels": [1, 2, 4], "eta": 2, "schedule": "hyperband"}},
    {"fidelity": 3},
])
def test_the_schedule_is_what_the_controller_runs(tmp_path, fidelity):
    """The controller, on a stub executor that scores at random, runs exactly the planned evaluations."""
    family = make_family(tmp_path / "fam", tied=False, n_experts=2)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "base_model": str(family["base"]), "models": [str(family["expert0"]), str(family["expert1"])],
        "methods": ["task_arithmetic"], "parameters": {"weight": {"low": 0.0, "high": 1.0}}}))
    config = _config(optimizer={"name": "random"}, **fidelity)
    space = load_space(tmp_path / "s.yaml")
    tasks, objectives = bind_objectives(config, tmp_path / "run.yaml")
    optimizer = OPTIMIZERS.get("random")(space.dimension, 1, 0)
    ledger = open_ledger(tmp_path / "run", "journal")
    trials = 23
    try:
        Controller(config, space, [None], objectives, optimizer, _StubExecutor(), ledger, budget=trials,
                   log=lambda s: None, progress=None).run([])
        ran = collections.Counter(e.rung for e in ledger.evaluations())
    finally:
        ledger.close()
    planned = schedule(config, [None], trials)
    assert [ran[i] for i in range(len(planned.rungs))] == [r.evaluations for r in planned.rungs]


class _StubExecutor:
    slots = 2

    def __init__(self) -> None:
        self.rng = random.Random(0)
        self.jobs: collections.deque = collections.deque()

    def submit(self, job, recipe, fidelity):
        self.jobs.append(job)

    def wait(self):
        job = self.jobs.popleft()
        return job, Outcome({"cost/params": self.rng.random()}, None, 0.0)

    def close(self):
        pass


def test_the_estimate_interpolates_between_the_timed_levels_and_spreads_over_the_slots():
    config = _config(multi_fidelity={"levels": [10, 40, None], "eta": 3, "bracket": 9})
    s = schedule(config, [100, None], 9)  # 9 at 10 examples, 3 at 40, 1 at all 100
    e = estimate(s, Timing(load_seconds=5.0, seconds={10: 1.0, None: 10.0}, first_seconds=2.0), parallel=2)
    assert e.per_rung == pytest.approx((1.0, 4.0, 10.0))
    assert e.serial_seconds == pytest.approx(9 * 1.0 + 3 * 4.0 + 10.0)
    assert e.seconds == pytest.approx(5.0 + 31.0 / 2)
    assert any("proportion to their examples" in a for a in e.assumptions)


def test_durations_read_as_a_person_would_say_them():
    assert [duration(x) for x in (42, 600, 3 * 3600, 3 * 86400)] == ["42 s", "10.0 min", "3.0 h", "3.0 days"]
