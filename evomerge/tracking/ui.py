"""``evomerge ui``: the MLflow UI for a run's store, on 127.0.0.1 and a free port by default.

``mlflow ui`` is a tree of processes (the server, its uvicorn worker, a job runner and the
job runner's queue consumers, which outlive a job runner that is killed alone). It runs in a
process group of its own, and ``stop_group`` ends that whole group: SIGTERM, then SIGKILL for
what is left after a grace period. Its own group also keeps a terminal's Ctrl-C and hangup
away from it, so evomerge alone decides when and how it stops.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from evomerge.errors import EvomergeError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def store_of(run_dir: Path) -> str:
    """The tracking URI a run logged to (its run.yaml, else its own mlflow.db)."""
    from evomerge.config.run import RunConfig
    from evomerge.config.tracking import tracking_uri

    config_path = Path(run_dir) / "run.yaml"
    if not config_path.is_file():
        raise EvomergeError(f"{run_dir} is not a search run (no run.yaml); give the run directory.")
    uri = tracking_uri(RunConfig.load(config_path).tracking, Path(run_dir))
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise EvomergeError(f"{run_dir} has no MLflow store yet ({uri}); run or resume the search with tracking on.")
    return uri


def ui_command(uri: str, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
            "--workers", "1"]


def start_ui(uri: str, host: str = "127.0.0.1", port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start the server in its own process group (led by the returned process)."""
    port = port or free_port(host)
    return start_group(ui_command(uri, host, port)), f"http://{host}:{port}"


def start_group(command: list[str], **popen) -> subprocess.Popen:
    """Run ``command`` in a new session: a process group of its own, which ``stop_group`` ends."""
    return subprocess.Popen(command, start_new_session=True, **popen)


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """End every process in the server's group: SIGTERM, and SIGKILL after ``grace`` seconds.

    Signals that arrive meanwhile (a second Ctrl-C, SIGHUP after SIGTERM from a closing
    terminal) are ignored until the group is gone, so they cannot cut the cleanup short.
    """
    with _signals_ignored():
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if not _signal_group(proc.pid, sig):
                break
            deadline = time.monotonic() + wait
            while _group_alive(proc) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _group_alive(proc):
                break
        proc.poll()


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # nothing left in the group
        return False
    return True


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader: a zombie still counts as a member of its group
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _signals_ignored():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in stops}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 300.0, *, path: str = "/health",
                  server: str = "the MLflow server", poll: float = 0.5) -> None:
    """Return once ``url`` + ``path`` answers; raise if the server (named ``server`` in the
    error) exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=2):
                return
        except OSError:
            if proc.poll() is not None:
                raise EvomergeError(f"{server} for {url} exited with code {proc.returncode}.") from None
            if time.monotonic() > deadline:
                raise EvomergeError(f"{server} for {url} did not answer within {timeout:.0f} s.") from None
            time.sleep(poll)


@dataclass(frozen=True)
class TrackedSearch:
    """Where a search is in its MLflow store: what ``evomerge ui``'s links point at."""

    experiment_id: str
    parent_id: str
    run_name: str
    view: str  # the saved view of every trial (objectives as columns)
    front_view: str  # the saved view of the front's members, best fitness first
    front_logged: bool


def find_search(uri: str, run_dir: Path) -> TrackedSearch | None:
    """The search's parent run in the store (None before its first logged trial), with the
    runs-table views saved on its experiment (added here for runs tracked before they were)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from evomerge.tracking.view import (
        FRONT_PLOT,
        VIEW_TAG_PREFIX,
        front_view_key,
        objective_keys,
        save_runs_views,
        view_key,
    )

    state = Path(run_dir) / "tracking.json"
    parent_id = json.loads(state.read_text()).get("parent_run_id") if state.is_file() else None
    if not parent_id:
        return None
    client = MlflowClient(tracking_uri=uri)
    try:
        parent = client.get_run(parent_id)
    except MlflowException:  # tracked elsewhere (another tracking URI) than this store
        return None
    exp_id = parent.info.experiment_id
    keys = (view_key(parent_id), front_view_key(parent_id))
    saved = client.get_experiment(exp_id).tags
    if any(VIEW_TAG_PREFIX + key not in saved for key in keys):
        objectives = objective_keys(parent.data.tags.get("evomerge.objectives", ""))
        save_runs_views(client, exp_id, parent_id, parent.info.run_name, objectives)
    front = {f.path for f in client.list_artifacts(parent_id, "front")}
    return TrackedSearch(exp_id, parent_id, parent.info.run_name, *keys, FRONT_PLOT in front)
