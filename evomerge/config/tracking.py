"""Where a run is tracked: its own SQLite store by default, or any tracking URI."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator

from evomerge.validation import StrictModel

STORE = "mlflow.db"  # default store, inside the run directory
OPTUNA_JOURNAL = "optuna.journal"  # the Optuna mirror's default storage, inside the run directory
# SQLAlchemy dialects Optuna's RDBStorage is documented and tested with.
_RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")


class OptunaMirrorConfig(StrictModel):
    """``tracking.optuna``: mirror the run into an Optuna storage while it runs
    (evomerge/tracking/optuna_mirror.py; docs/optuna.md)."""

    storage: str | None = Field(
        default=None,
        description="A database URL for Optuna's RDBStorage (sqlite:///path.db, "
        "postgresql://user@host/db, mysql://...), or the path of a journal file (relative: to the "
        "run directory). Default: RUN_DIR/optuna.journal.",
    )
    study: str | None = Field(default=None, description="Default: the run directory's name.")

    @field_validator("storage")
    @classmethod
    def _storage_form(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not v:
            raise ValueError("an empty storage; give a database URL or a journal file's path, or leave it out")
        if "://" in v:
            scheme = v.split("://", 1)[0].split("+", 1)[0].lower()
            if scheme not in _RDB_SCHEMES:
                raise ValueError(
                    f"{scheme}:// is not a storage the mirror writes to; give a database URL "
                    f"({', '.join(s + '://' for s in _RDB_SCHEMES)}) or a journal file's path"
                )
        return v

    @field_validator("study")
    @classmethod
    def _study_name(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("an empty study name; give a name or leave it out (the run directory's name)")
        return v


class TrackingConfig(StrictModel):
    enabled: bool = True
    uri: str | None = Field(
        default=None,
        description="An MLflow tracking URI (a team's server, another database). Default: "
        "MLFLOW_TRACKING_URI if set, else sqlite:///RUN_DIR/mlflow.db.",
    )
    experiment: str | None = Field(default=None, description="Default: the run directory's name.")
    optuna: OptunaMirrorConfig | None = Field(
        default=None,
        description="Also mirror the run into an Optuna storage, live ({} for the run directory's "
        "journal). Independent of `enabled`, which turns MLflow on or off.",
    )


def tracking_uri(config: TrackingConfig, run_dir: Path) -> str:
    if config.uri:
        return config.uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(run_dir).resolve() / STORE)}"
