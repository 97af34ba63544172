"""Optimisers over the unit cube, one module each, registered by name."""

from evomerge.search.optimizers import cmaes, optuna_samplers, random_search  # noqa: F401
from evomerge.search.optimizers.base import OPTIMIZERS, Optimizer, Suggestion, register_optimizer

__all__ = ["OPTIMIZERS", "Optimizer", "Suggestion", "register_optimizer"]
