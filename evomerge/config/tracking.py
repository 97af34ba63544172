"""Where a run is tracked: its own SQLite store by default, or any tracking URI."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from evomerge.validation import StrictModel

STORE = "mlflow.db"  # default store, inside the run directory


class TrackingConfig(StrictModel):
    enabled: bool = True
    uri: str | None = Field(
        default=None,
        description="An MLflow tracking URI (a team's server, another database). Default: "
        "MLFLOW_TRACKING_URI if set, else sqlite:///RUN_DIR/mlflow.db.",
    )
    experiment: str | None = Field(default=None, description="Default: the run directory's name.")


def tracking_uri(config: TrackingConfig, run_dir: Path) -> str:
    if config.uri:
        return config.uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(run_dir).resolve() / STORE)}"
