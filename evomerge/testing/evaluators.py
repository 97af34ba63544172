"""Conformance suite for evaluator types: the ``Evaluator`` contract of ``evomerge.eval``.

Each evaluator type is checked through a task of that type (a task YAML) on a
tiny random model (``evomerge.testing.tiny_char_lm``, the zoo's character
tokenizer): the type is registered with a ``TaskConfig`` subclass and the task
loads as it; ``objectives()`` are named once each with a direction; fidelity
levels run cheapest first to ``None`` (every example) and cost no more than
the full evaluation; ``evaluate`` at the cheapest level returns an ok
``EvalResult`` with a finite float for every objective, the same values when
repeated, and leaves the model as it found it; and ``evaluate`` never raises
for a broken model: a model whose forward raises, or whose weights are NaN,
gives a failed result with a reason whenever the evaluator ran the model.

By default every registered type is checked with the first task of that type
shipped in ``evaluators/tasks/`` (``$EVOMERGE_EVALUATORS``). To run the suite
on your own type, give it a task YAML::

    # test_my_evaluator.py
    import pytest
    from evomerge.testing.evaluators import EvaluatorSuite

    @pytest.mark.parametrize("evaluator_type", ["my_type"])
    class TestMyEvaluator(EvaluatorSuite):
        @pytest.fixture
        def evaluator_task(self, tmp_path):
            return "tests/data/my_task.yaml"  # a task name or the path of a task YAML

Override ``evaluator_model`` (a ``(model, tokenizer)`` pair) if your type needs
another kind of model.
"""

from __future__ import annotations

import copy
import math

import pytest
import yaml

from evomerge.eval import EVALUATORS, EvalResult, Evaluator, Objective, TaskConfig, load_task
from evomerge.eval.task import find_task, task_names


def shipped_task(evaluator_type: str) -> str | None:
    """The first task in ``evaluators/tasks/`` (by name) of ``evaluator_type``, if any."""
    for name in task_names():
        try:
            raw = yaml.safe_load(find_task(name).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(raw, dict) and raw.get("type") == evaluator_type:
            return name
    return None


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _CountCalls:
    """A forward pre-hook that counts calls of the model (and raises, if asked to)."""

    def __init__(self, raises: bool = False) -> None:
        self.calls = 0
        self.raises = raises

    def __call__(self, module, args, kwargs=None):
        self.calls += 1
        if self.raises:
            raise RuntimeError("the model's forward raised (a broken merge)")


class EvaluatorSuite:
    """The evaluator contract; ``evaluator_type`` is the registered type under test."""

    @pytest.fixture(params=EVALUATORS.names())
    def evaluator_type(self, request) -> str:
        return request.param

    @pytest.fixture
    def evaluator_task(self, evaluator_type) -> str:
        """A task name or task YAML path of ``evaluator_type``."""
        name = shipped_task(evaluator_type)
        if name is None:
            pytest.fail(f"no task of type {evaluator_type!r} in evaluators/tasks/; give the suite one by "
                        f"overriding the evaluator_task fixture")
        return name

    @pytest.fixture(scope="class")
    def evaluator_model(self):
        """``(model, tokenizer)``: a tiny random Llama over the zoo's characters."""
        from evomerge.testing.models import tiny_char_lm

        return tiny_char_lm(seed=3)

    @pytest.fixture
    def evaluator(self, evaluator_task) -> Evaluator:
        return load_task(str(evaluator_task))

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def cheapest(evaluator: Evaluator):
        return evaluator.fidelity_levels()[0]

    def check_failed_if_run(self, res, hook: _CountCalls, what: str) -> None:
        assert isinstance(res, EvalResult), f"evaluate returned {type(res).__name__} for {what}"
        if hook.calls:
            assert not res.ok, f"{what}: the evaluator ran the model and still reported ok with {res.values}"
        if not res.ok:
            assert isinstance(res.error, str) and res.error, f"{what}: a failed result needs a reason"
        else:
            assert all(math.isfinite(v) for v in res.values.values())

    # -- the contract ------------------------------------------------------------------

    def test_type_is_registered_and_its_task_loads(self, evaluator_type, evaluator):
        cls = EVALUATORS.get(evaluator_type)
        assert isinstance(cls, type) and issubclass(cls, Evaluator)
        assert issubclass(cls.Config, TaskConfig)
        assert type(evaluator) is cls
        assert isinstance(evaluator.config, cls.Config) and evaluator.config.type == evaluator_type
        assert isinstance(evaluator.name, str) and evaluator.name

    def test_objectives_are_named_once_with_a_direction(self, evaluator):
        objectives = evaluator.objectives()
        assert objectives, "a task with no objectives"
        assert all(isinstance(o, Objective) for o in objectives)
        names = [o.name for o in objectives]
        assert len(names) == len(set(names)) and all(isinstance(n, str) and n for n in names)
        assert all(o.direction in ("maximize", "minimize") for o in objectives)
        assert evaluator.objectives() == objectives

    def test_fidelity_levels_are_nested_and_cost_no_more_than_all(self, evaluator):
        levels = evaluator.fidelity_levels()
        assert levels and levels[-1] is None, f"levels {levels} do not end with None (every example)"
        sized = levels[:-1]
        assert all(isinstance(k, int) and k > 0 for k in sized) and sized == sorted(set(sized))
        size = evaluator.size()
        if size is not None:
            assert isinstance(size, int) and size > 0
            assert all(k < size for k in sized)
        full = evaluator.cost(None)
        costs = [evaluator.cost(k) for k in levels]
        assert all(isinstance(c, float) and math.isfinite(c) and c >= 0 for c in costs)
        assert costs == sorted(costs) and costs[-1] == full, f"costs {costs} for levels {levels}"

    def test_evaluate_scores_every_objective(self, evaluator, evaluator_model):
        model, tokenizer = evaluator_model
        level = self.cheapest(evaluator)
        res = evaluator.evaluate(model, tokenizer, level)
        assert isinstance(res, EvalResult)
        assert res.ok, f"evaluation failed: {res.error}"
        assert res.error is None and res.task == evaluator.name and res.fidelity == level
        missing = [o.name for o in evaluator.objectives() if o.name not in res.values]
        assert not missing, f"no value for {missing}"
        assert all(type(v) is float and math.isfinite(v) for v in res.values.values()), res.values
        assert res.n_examples >= 0 and res.seconds >= 0
        size = evaluator.size()
        if size is not None:
            assert res.n_examples <= (size if level is None else min(level, size))

    def test_evaluate_is_repeatable_and_leaves_the_model_alone(self, evaluator, evaluator_model):
        model, tokenizer = evaluator_model
        level = self.cheapest(evaluator)
        before, training = _state(model), model.training
        a = evaluator.evaluate(model, tokenizer, level)
        b = evaluator.evaluate(model, tokenizer, level)
        assert a.ok and b.ok, a.error or b.error
        assert a.values == pytest.approx(b.values, rel=1e-9, abs=1e-12)
        after = _state(model)
        assert before.keys() == after.keys() and all(before[k].equal(after[k]) for k in before), (
            "evaluate changed the model's weights")
        assert model.training == training

    def test_a_model_whose_forward_raises_gives_a_failed_result(self, evaluator, evaluator_model):
        model, tokenizer = evaluator_model
        broken = copy.deepcopy(model)
        hook = _CountCalls(raises=True)
        broken.register_forward_pre_hook(hook, with_kwargs=True)
        res = evaluator.evaluate(broken, tokenizer, self.cheapest(evaluator))  # never raises
        self.check_failed_if_run(res, hook, "a model whose forward raises")

    def test_a_model_with_nan_weights_gives_a_failed_result(self, evaluator, evaluator_model):
        import torch

        model, tokenizer = evaluator_model
        broken = copy.deepcopy(model)
        with torch.no_grad():
            for p in broken.parameters():
                if p.is_floating_point():
                    p.fill_(float("nan"))
        hook = _CountCalls()
        broken.register_forward_pre_hook(hook, with_kwargs=True)
        res = evaluator.evaluate(broken, tokenizer, self.cheapest(evaluator))
        self.check_failed_if_run(res, hook, "a model with NaN weights")
