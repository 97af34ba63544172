"""``evomerge dashboard``: a run mirrored into Optuna, and optuna-dashboard started on it.

The run is mirrored (``optuna_mirror``) into its Optuna storage, the one ``tracking.optuna``
names, else ``RUN_DIR/optuna.journal``, and kept up to date every ``refresh`` seconds while the
dashboard runs, so a search in progress shows its trials as they settle. The server is a child
process started and stopped as `evomerge ui`'s MLflow server is (``ui.start_group`` /
``ui.stop_group``: a process group of its own, ended whole on Ctrl-C, SIGTERM or SIGHUP), on
127.0.0.1 and a free port by default. It is optuna-dashboard's WSGI app in a threaded wsgiref
server, the storage passed in the environment rather than on the command line (a database URL
may hold a password; ``ps`` shows arguments to everyone).

Run as ``python -m evomerge.tracking.dashboard HOST PORT`` it is that server.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evomerge.errors import EvomergeError
from evomerge.search.rundir import LOCK_FILE, RUN_FILE, has_run
from evomerge.tracking.optuna_mirror import OptunaMirror, shown
from evomerge.tracking.ui import free_port, start_group, wait_until_up

STORAGE_ENV = "EVOMERGE_OPTUNA_STORAGE"  # the server's storage: a database URL or a journal's path


@dataclass(frozen=True)
class Mirrored:
    storage: str  # the storage spec (a database URL or a journal file's path)
    study: str
    study_id: int
    added: int  # trials added by this update
    trials: int  # trials the study holds


def open_mirror(run_dir: Path, log: Callable[[str], None] = print) -> OptunaMirror:
    """The run's mirror, from its frozen config (objectives, genes, levels, constraints)."""
    from evomerge.config.run import RunConfig
    from evomerge.search.constraints import bind_constraints
    from evomerge.search.objectives import bind_objectives
    from evomerge.search.space import load_space

    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file() or not has_run(run_dir):
        raise EvomergeError(
            f"{run_dir} is not a search run (no run.yaml or no ledger); give the directory an "
            "`evomerge search --out` wrote."
        )
    config = RunConfig.load(run_dir / RUN_FILE)
    tasks, objectives = bind_objectives(config, run_dir / RUN_FILE)
    _, constraints = bind_constraints(config, run_dir / RUN_FILE, tasks)
    genes = load_space(config.space).genes()
    return OptunaMirror(run_dir, objectives, genes, config.levels(), settings=config.tracking.optuna,
                        constraints=constraints, log=log)


def update_mirror(mirror: OptunaMirror) -> Mirrored:
    """Bring the mirror up to date with the run's ledger (read-only)."""
    from evomerge.search.ledgers import open_ledger

    ledger = open_ledger(mirror.run_dir, readonly=True)
    try:
        completions = ledger.completions()
        over = search_over(mirror.run_dir, ledger)
    finally:
        ledger.close()
    try:
        added = mirror.update(completions, search_over=over)
        total = len(mirror.open().get_trials(deepcopy=False))
        return Mirrored(mirror.spec, mirror.study_name, mirror.study_id, added, total)
    except EvomergeError:
        raise
    except Exception as e:  # noqa: BLE001 - the storage's own errors, worded for the user
        raise EvomergeError(
            f"the Optuna storage {shown(mirror.spec)} could not be written ({type(e).__name__}: {e}); "
            "check that it is reachable and writable (tracking.optuna.storage in the run's run.yaml)."
        ) from None


def search_over(run_dir: Path, ledger) -> bool:
    """Whether the run's search has stopped with every bracket closed: no controller holds the
    run's lock and no evaluation is in flight (an interrupted search leaves its in-flight ones
    running in the ledger until a resume)."""
    return not controller_running(run_dir) and not ledger.evaluations("running")


def controller_running(run_dir: Path) -> bool:
    """A controller holds the run's lock (``rundir.RunLock``); probed with a shared lock that is
    dropped at once, never taken for longer than the probe."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def start_dashboard(storage: str, host: str = "127.0.0.1", port: int | None = None) -> tuple[subprocess.Popen, str]:
    """optuna-dashboard on ``storage``, in a process group of its own (led by the process)."""
    port = port or free_port(host)
    command = [sys.executable, "-m", "evomerge.tracking.dashboard", host, str(port)]
    return start_group(command, env={**os.environ, STORAGE_ENV: storage}), f"http://{host}:{port}"


def study_url(url: str, study_id: int) -> str:
    return f"{url}/dashboard/studies/{study_id}"


def wait_until_answers(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Return once the dashboard's API answers; raise if the server exits or ``timeout`` passes."""
    wait_until_up(url, proc, timeout, path="/api/meta", server="optuna-dashboard", poll=0.2)


def serve_until_stopped(proc: subprocess.Popen, refresh: float, update: Callable[[], None]) -> int:
    """Wait for the server to exit, calling ``update`` every ``refresh`` seconds (0: never);
    returns its exit code. A signal reaches the caller as an exception, so its ``finally`` ends
    the server's group."""
    while True:
        try:
            return proc.wait(timeout=refresh if refresh > 0 else None)
        except subprocess.TimeoutExpired:
            update()


def serve(storage: str, host: str, port: int) -> None:
    """The server: optuna-dashboard's app, one thread per request, no line per request."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    import optuna_dashboard

    from evomerge.tracking.optuna_mirror import open_storage

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - the base class's signature
            pass

    app = optuna_dashboard.wsgi(open_storage(storage))
    httpd = make_server(host, port, app, server_class=Server, handler_class=QuietHandler)
    print(f"optuna-dashboard on http://{host}:{port}/ ({shown(storage)})", file=sys.stderr, flush=True)
    httpd.serve_forever()


if __name__ == "__main__":  # the server process `start_dashboard` starts
    serve(os.environ[STORAGE_ENV], sys.argv[1], int(sys.argv[2]))
