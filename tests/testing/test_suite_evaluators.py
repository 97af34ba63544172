"""Every registered evaluator type passes the evaluator suite (evomerge.testing.evaluators),
each through the first task of its type shipped in evaluators/tasks/."""

from evomerge.testing.evaluators import EvaluatorSuite


class TestEvaluators(EvaluatorSuite):
    """Parametrized over ``EVALUATORS.names()``: a new type is checked once a task of it ships."""
