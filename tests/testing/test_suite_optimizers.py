"""Every registered optimiser passes the optimiser suite (evomerge.testing.optimizers)."""

from evomerge.testing.optimizers import OptimizerSuite


class TestOptimizers(OptimizerSuite):
    """Parametrized over ``OPTIMIZERS.names()``: a new optimiser is checked by being registered."""
