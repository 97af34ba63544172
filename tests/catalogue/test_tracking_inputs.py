"""Bad inputs to a run's Optuna mirror (``tracking.optuna``): refused before any compute, exit 2,
one paragraph naming the run config's field and the fix, no traceback, no run directory created,
and nothing written to the storage.

Catalogue entries covered (issue 31, item 1):
1. an Optuna storage that cannot be reached (a database server that is not there);
2. a new run whose study name is taken in the storage (its trials would mix with that study's);
3. a storage of a kind the mirror does not write (redis://), refused when the config loads.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from conftest import assert_refused, invoke, snapshot
from run_helpers import write_run

from evomerge.tracking.ui import free_port


def _search(tmp_path: Path, config: Path):
    out = tmp_path / "out"
    result = invoke("search", config, "--out", out)
    assert not out.exists(), "a refused search created its run directory"
    return result


def test_an_unreachable_storage_is_refused_before_the_run_starts(tmp_path, zoo):
    url = f"postgresql+psycopg://evomerge@127.0.0.1:{free_port()}/optuna"  # nothing listens there
    config = write_run(tmp_path, zoo, tracking={"enabled": False, "optuna": {"storage": url}})
    message = assert_refused(_search(tmp_path, config), config, "tracking.optuna.storage", "cannot be reached",
                             "start it or fix the URL")
    assert url.split("@")[1] in message


def test_a_new_run_into_a_study_that_exists_is_refused(tmp_path, zoo):
    url = f"sqlite:///{tmp_path / 'team.db'}"
    optuna.create_study(storage=url, study_name="taken")
    config = write_run(tmp_path, zoo, tracking={"enabled": False, "optuna": {"storage": url, "study": "taken"}})
    before = snapshot(tmp_path)
    assert_refused(_search(tmp_path, config), config, "tracking.optuna", "already holds a study named 'taken'",
                   "tracking.optuna.study")
    assert snapshot(tmp_path) == before  # the database as it was
    assert optuna.get_all_study_names(url) == ["taken"]


def test_a_storage_of_another_kind_is_refused_when_the_config_loads(tmp_path, zoo):
    config = write_run(tmp_path, zoo, tracking={"optuna": {"storage": "redis://127.0.0.1:6379"}})
    assert_refused(_search(tmp_path, config), config, "tracking.optuna.storage",
                   "redis:// is not a storage the mirror writes to", "journal file")
