"""A controller killed while MLflow makes the run's store leaves a store the next start can use."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from evomerge.tracking.mlflow_tracker import open_client

# Dies by SIGKILL inside MLflow's schema migrations, right after one of them created a table:
# the moment a kill of the controller left a store every later open refused.
_KILLED_MID_MIGRATION = textwrap.dedent("""
    import os, signal, sys
    from alembic.operations import Operations

    real = Operations.create_table

    def create_table(self, name, *args, **kwargs):
        table = real(self, name, *args, **kwargs)
        if name == "logged_models":
            os.kill(os.getpid(), signal.SIGKILL)
        return table

    Operations.create_table = create_table
    from evomerge.tracking.mlflow_tracker import open_client

    open_client(sys.argv[1])
""")


def test_a_store_whose_creation_was_killed_is_made_again(tmp_path):
    store = tmp_path / "mlflow.db"
    uri = f"sqlite:///{store}"
    done = subprocess.run([sys.executable, "-c", _KILLED_MID_MIGRATION, uri], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr[-2000:]  # killed where we meant it to be
    assert not store.exists()  # only the temporary file was half made
    client = open_client(uri)
    exp = client.create_experiment("after-a-kill")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    assert [p.name for p in tmp_path.iterdir() if "creating" in p.name] == []

