"""``evomerge dashboard``: the run mirrored, optuna-dashboard's HTTP API lists its trials, a signal
stops the server's whole group and frees the port; trials of open brackets wait while a
controller runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from optuna_helpers import synthetic_run
from run_helpers import as_from_a_terminal

from evomerge.search.rundir import RunLock
from evomerge.tracking.dashboard import (
    controller_running,
    open_mirror,
    serve_until_stopped,
    update_mirror,
)
from evomerge.tracking.optuna_mirror import OptunaMirror
from evomerge.tracking.ui import free_port


def _evomerge() -> list[str]:
    entry = Path(sys.executable).with_name("evomerge")
    return [str(entry)] if entry.exists() else [sys.executable, "-m", "evomerge.cli"]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _dashboard_group(parent: int) -> int:
    """The process group of the server `evomerge dashboard` started (its one child)."""
    import psutil

    (child,) = psutil.Process(parent).children()
    return os.getpgid(child.pid)


SIGNALS = [pytest.param(signal.SIGTERM, 128 + signal.SIGTERM),
           pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow),
           pytest.param(signal.SIGHUP, 128 + signal.SIGHUP, marks=pytest.mark.slow)]


@pytest.mark.parametrize(("sig", "code"), SIGNALS)
def test_the_api_lists_the_trials_and_a_signal_stops_the_server(tmp_path, sig, code):
    run_dir = synthetic_run(tmp_path)
    port = free_port()
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as o, err.open("w") as e:  # as from a terminal: its own group, signals not ignored
        proc = subprocess.Popen([*_evomerge(), "dashboard", str(run_dir), "--port", str(port)], stdout=o,
                                stderr=e, start_new_session=True, preexec_fn=as_from_a_terminal)
    try:
        deadline = time.monotonic() + 120
        while "optuna-dashboard for" not in out.read_text():  # the cue: the server answers
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.1)
        printed = out.read_text()
        assert f"12 trials of {run_dir} in Optuna study 'run'" in printed and "(12 added now)" in printed
        link = f"http://127.0.0.1:{port}/dashboard/studies/0"
        assert link in printed, printed
        studies = _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        assert [(s["study_name"], s["directions"]) for s in studies] == [("run", ["maximize", "maximize"])]
        trials = _get(f"http://127.0.0.1:{port}/api/studies/0")["trials"]
        attrs = [{a["key"]: a["value"] for a in t["user_attrs"]} for t in trials]
        assert sorted(int(a["evomerge_trial"]) for a in attrs) == list(range(12))
        assert sorted({t["state"] for t in trials}) == ["Complete", "Fail", "Pruned"]
        group = _dashboard_group(proc.pid)
        assert group != os.getpgid(proc.pid) and not _port_is_free(port)

        os.kill(proc.pid, sig)
        assert proc.wait(timeout=60) == code, err.read_text()[-3000:]
        assert _group_gone(group) and _port_is_free(port)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_trials_of_open_brackets_wait_while_a_controller_runs(tmp_path):
    run_dir = synthetic_run(tmp_path, brackets=2, open_bracket=True)
    mirror = open_mirror(run_dir)
    lock = RunLock(run_dir)  # a live controller
    try:
        assert controller_running(run_dir)
        assert update_mirror(mirror).trials == 3  # 2 complete, 1 failed; 6 wait for their bracket
    finally:
        lock.release()
    assert not controller_running(run_dir)
    done = update_mirror(mirror)
    assert (done.added, done.trials) == (6, 9)


def test_a_mirror_that_fails_never_raises_and_says_so_once(tmp_path):
    mirror = open_mirror(synthetic_run(tmp_path))
    lines: list[str] = []
    broken = OptunaMirror(mirror.run_dir, mirror.objectives, mirror.genes, mirror.levels, log=lines.append)
    broken.spec = f"sqlite:///{tmp_path}/absent/dir/optuna.db"  # a folder that does not exist
    assert not broken.sync([], force=True) and not broken.sync([], force=True)
    assert len(lines) == 1 and "the search goes on" in lines[0] and "absent/dir" in lines[0]


def test_serve_until_stopped_updates_the_mirror_until_the_server_exits():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    calls = []

    def update():
        calls.append(1)
        if len(calls) == 3:
            proc.terminate()

    assert serve_until_stopped(proc, 0.05, update) == -signal.SIGTERM
    assert len(calls) == 3


def test_a_directory_that_is_no_run_is_refused(tmp_path):
    from typer.testing import CliRunner

    from evomerge.cli import app

    result = CliRunner().invoke(app, ["dashboard", str(tmp_path)])
    assert result.exit_code == 2 and "is not a search run" in result.output
