"""Tracking: a search's ledger mirrored into MLflow (parent run per search, child run per trial).

``import evomerge.tracking`` is light; MLflow is imported when a tracker starts.
"""

from evomerge.config.tracking import TrackingConfig, tracking_uri

__all__ = ["TrackingConfig", "tracking_uri"]
