"""The Tune integration without a Ray runtime: spaces as Tune domains and back, and evomerge's
optimisers as a Tune Searcher (ask/tell, errored and early-stopped trials, save/restore)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
from ray.tune.search.sample import Categorical, Float, Integer

from evomerge.errors import EvomergeError
from evomerge.integrations.tune import (
    EvomergeSearcher,
    config_of,
    recipe_of,
    tune_search_space,
)
from evomerge.integrations.tune.space import genome_of
from evomerge.search.objectives import BoundObjective
from evomerge.search.space import load_space

pytestmark = pytest.mark.ray

SLICES = Path(__file__).parents[2] / "search_spaces" / "zoo_slices.yaml"  # choice, integer and range genes


def test_every_gene_becomes_a_tune_domain_of_its_kind():
    space = load_space(SLICES)
    domains = tune_search_space(space)
    genes = {g.name: g for g in space.genes()}
    assert list(domains) == list(genes)
    kinds = {type(d) for d in domains.values()}
    assert kinds == {Categorical, Integer, Float}
    for name, d in domains.items():
        g = genes[name]
        if g.choices:
            assert list(d.categories) == list(g.choices)
        elif g.integer:  # Tune's upper bound is exclusive
            assert (d.lower, d.upper) == (int(g.low), int(g.high) + 1)
        else:
            assert (d.lower, d.upper) == (g.low, g.high)


def test_a_sampled_tune_config_decodes_to_the_recipe_of_its_genome():
    space = load_space(SLICES)
    domains = tune_search_space(space)
    rng = np.random.default_rng(0)
    for _ in range(20):
        config = {k: d.sample(random_state=rng) for k, d in domains.items()}
        x = genome_of(space, config)
        again = config_of(space, x)
        for (key, value), g in zip(config.items(), space.genes(), strict=True):
            if g.choices or g.integer:
                assert again[key] == value
            else:
                assert again[key] == pytest.approx(value, abs=1e-12)
        assert recipe_of(space, config).to_dict() == space.decode(x).to_dict()


def test_a_config_without_a_gene_or_with_a_bad_value_is_refused_by_name():
    space = load_space(SLICES)
    config = config_of(space, np.full(space.dimension, 0.5))
    with pytest.raises(EvomergeError, match=r"no value for gene 's0.in'.*tune_search_space"):
        recipe_of(space, {k: v for k, v in config.items() if k != "s0.in"})
    with pytest.raises(EvomergeError, match=r"gene 's0.model' does not fit it: 'nope' is not one of"):
        recipe_of(space, {**config, "s0.model": "nope"})


def test_suggestions_are_the_optimizers_asks(tune_run):
    searcher = EvomergeSearcher(tune_run, optimizer="random", seed=11)
    bare = tune_run.build_optimizer(tune_run.optimizer_spec("random"), seed=11)
    for i in range(3):
        assert searcher.suggest(f"t{i}") == config_of(tune_run.space, bare.ask().x)


def _cmaes(run, **kw) -> EvomergeSearcher:
    return EvomergeSearcher(run, optimizer="cmaes", options={"popsize": 4}, **kw)


def test_completions_are_told_errored_ones_as_failed_stopped_ones_at_their_last_score(tune_run):
    """CMA-ES's second generation depends on every value told for the first. pycma draws from
    numpy's global generator: the bare optimiser runs first, alone; the searcher keeps its own,
    so other draws in between (Tune's ASHA makes some) change nothing."""
    bare = tune_run.build_optimizer(tune_run.optimizer_spec("cmaes", {"popsize": 4}))
    asked = [bare.ask() for _ in range(4)]
    for s, told in zip(asked, [(-40.0,), (-47.5,), None, None], strict=True):
        bare.tell(s.id, told)
    expected = [config_of(tune_run.space, s.x) for s in [*asked, bare.ask()]]
    searcher = _cmaes(tune_run)
    assert [searcher.suggest(f"t{i}") for i in range(4)] == expected[:4]
    assert searcher.suggest("t4") is None  # CMA-ES waits for its generation; Tune asks again later
    np.random.random(5)
    searcher.on_trial_complete("t0", {"fitness": -40.0, "rung": 2})
    searcher.on_trial_complete("t1", {"fitness": -47.5, "rung": 0})  # stopped by the scheduler at rung 0
    searcher.on_trial_complete("t2", None, error=True)
    searcher.on_trial_complete("t3", {"rung": 0})  # a result without the metric: nothing to tell
    searcher.on_trial_complete("someone-elses", {"fitness": 1.0})  # not suggested here: ignored
    np.random.seed(99)
    assert searcher.suggest("t5") == expected[4]


def test_a_pareto_searcher_is_told_each_objective_larger_is_better(tune_run):
    two = (BoundObjective("zoo_text/perplexity", -1.0, 1.0), BoundObjective("zoo_text/nll", -1.0, 1.0))
    searcher = EvomergeSearcher(dataclasses.replace(tune_run, objectives=two), optimizer="random")
    told = []
    searcher.optimizer.tell = lambda sid, values, constraints=None: told.append(values)
    searcher.suggest("a")
    searcher.on_trial_complete("a", {"fitness": -5.0, "zoo_text/perplexity": 8.0, "zoo_text/nll": 2.0})
    assert searcher.optimizer.n_objectives == 2 and told == [(-8.0, -2.0)]


def _halfway(run) -> EvomergeSearcher:
    """Five suggestions, four told (one generation), the fifth in flight."""
    searcher = _cmaes(run)
    for i in range(4):
        searcher.suggest(f"t{i}")
    for i in range(4):
        searcher.on_trial_complete(f"t{i}", {"fitness": -float(i)}, error=i == 2)
    searcher.suggest("t4")
    return searcher


def _rest(searcher: EvomergeSearcher) -> list:
    searcher.on_trial_complete("t4", {"fitness": 3.0})  # the trial in flight when it was saved
    return [searcher.suggest(f"t{i}") for i in range(5, 9)]


def test_a_restored_searcher_continues_the_trajectory(tune_run, tmp_path):
    original = _halfway(tune_run)
    original.save(str(tmp_path / "state.json"))
    pickled = pickle.dumps(original)  # what Tune keeps in the experiment
    expected = _rest(original)
    restored = _cmaes(tune_run)
    restored.restore(str(tmp_path / "state.json"))
    assert _rest(restored) == expected
    assert _rest(pickle.loads(pickled)) == expected


def test_a_state_saved_by_another_optimizer_is_refused(tune_run, tmp_path):
    _halfway(tune_run).save(str(tmp_path / "state.json"))
    with pytest.raises(EvomergeError, match=r"saved with optimizer .*cmaes.* not .*random"):
        EvomergeSearcher(tune_run, optimizer="random").restore(str(tmp_path / "state.json"))
