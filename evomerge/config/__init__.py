"""Typed run configuration: what a search does (``run``) and where it is tracked (``tracking``).

These models sit below the search and tracking layers so that both read the
same validated object; the frozen ``run.yaml`` of a run directory is its dump.
"""

from evomerge.config.run import (
    Budget,
    ConstraintSpec,
    ExecutorSpec,
    LedgerSpec,
    MultiFidelity,
    ObjectiveSpec,
    OptimizerSpec,
    RunConfig,
    RunConfigError,
)
from evomerge.config.tracking import TrackingConfig, tracking_uri

__all__ = [
    "Budget",
    "ConstraintSpec",
    "ExecutorSpec",
    "LedgerSpec",
    "MultiFidelity",
    "ObjectiveSpec",
    "OptimizerSpec",
    "RunConfig",
    "RunConfigError",
    "TrackingConfig",
    "tracking_uri",
]
