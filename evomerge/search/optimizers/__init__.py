"""Optimisers over the unit cube, one module each, registered by name in ``OPTIMIZERS``."""

from evomerge.search.optimizers.base import OPTIMIZERS, Optimizer, Suggestion, register_optimizer

__all__ = ["OPTIMIZERS", "Optimizer", "Suggestion", "register_optimizer"]
