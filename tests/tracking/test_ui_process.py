"""``evomerge ui`` stops the MLflow server's whole process tree on SIGINT, SIGTERM and SIGHUP.

The fast test drives ``start_group``/``stop_group`` on a made-up tree (a member that ignores
SIGTERM, one orphaned by its parent's exit). The slow one runs the real command on a tracked
run, records the server's tree (uvicorn, job runner, queue consumers), signals ``evomerge ui``
and checks that nothing of the tree is left, the port is free and the exit code follows the
README's table (130 for Ctrl-C, 128 + the signal's number otherwise).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from run_helpers import as_from_a_terminal

from evomerge.tracking.ui import free_port, start_group, stop_group

# The leader starts a member that ignores SIGTERM and an intermediate process that starts
# another member and exits at once (its child is orphaned, as the job runner's consumers are
# when the job runner dies first), then prints the members' pids and waits.
_TREE = """
import os, signal, subprocess, sys, time
stubborn = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
    stdout=subprocess.PIPE, text=True)
stubborn.stdout.readline()
middle = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); print(p.pid)"],
    stdout=subprocess.PIPE, text=True)
orphan = int(middle.stdout.readline())
middle.wait()
print(stubborn.pid, orphan, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _group_members(pgid: int) -> list[int]:
    members = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and not _gone(p.pid):
                members.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return members


def test_stop_group_ends_every_member_including_orphans_and_those_ignoring_sigterm(tmp_path):
    out = tmp_path / "pids"
    with out.open("w") as f:
        proc = start_group([sys.executable, "-c", _TREE], stdout=f)
    try:
        deadline = time.monotonic() + 60
        while not out.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.1)
        stubborn, orphan = map(int, out.read_text().split())
        assert os.getpgid(proc.pid) == proc.pid  # a group (and session) of its own
        assert os.getpgid(stubborn) == os.getpgid(orphan) == proc.pid
        assert psutil.Process(orphan).ppid() != proc.pid  # really orphaned: not the leader's child
        stop_group(proc, grace=1.0)
        assert _gone(proc.pid) and _gone(stubborn) and _gone(orphan)
        assert _group_members(proc.pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_stop_group_after_the_group_is_gone_is_harmless(tmp_path):
    proc = start_group([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    stop_group(proc, grace=0.5)  # no process left: no error, returns at once
    assert proc.returncode == 0


# -- the real command ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A run directory as a search leaves it, with tracking: run.yaml, an MLflow store holding
    the search's parent run and a trial, tracking.json naming the parent."""
    from mlflow import MlflowClient

    run_dir = tmp_path_factory.mktemp("ui-signals") / "tiny"
    run_dir.mkdir()
    (run_dir / "run.yaml").write_text(yaml.safe_dump({"space": "space.yaml", "objectives": [{"task": "addition"}]}))
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("tiny", artifact_location=(run_dir / "mlartifacts").as_uri())
    parent = client.create_run(exp, run_name="tiny", tags={"evomerge.objectives": "addition/exact_match (max)"})
    child = client.create_run(exp, run_name="trial-0000", tags={"mlflow.parentRunId": parent.info.run_id})
    client.log_metric(child.info.run_id, "addition/exact_match", 0.5)
    (run_dir / "tracking.json").write_text(json.dumps({"parent_run_id": parent.info.run_id, "tracking_uri": uri}))
    return run_dir


def _evomerge() -> list[str]:
    entry = Path(sys.executable).with_name("evomerge")
    return [str(entry)] if entry.exists() else [sys.executable, "-m", "evomerge.cli"]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "bound"
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _settled_tree(root: psutil.Process, seconds: float = 3.0, timeout: float = 60.0) -> list[psutil.Process]:
    """The root's descendants once no process has joined for ``seconds`` (the job runner starts
    its queue consumers after the server answers, on a slow machine)."""
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        now = {p.pid for p in root.children(recursive=True)}
        if now - seen:
            seen |= now
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= seconds:
            break
        time.sleep(0.3)
    return [p for p in root.children(recursive=True)]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [
    (signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGHUP, 128 + signal.SIGHUP)])
def test_a_signal_stops_the_whole_server_tree_and_frees_the_port(tracked_run, tmp_path, sig, code):
    port = free_port()
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as o, err.open("w") as e:
        proc = _popen([*_evomerge(), "ui", str(tracked_run), "--port", str(port)], o, e)
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300  # MLflow starts in ~15 s on 2 idle cores, far slower when busy
        while "MLflow UI for" not in out.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, f"evomerge ui exited early:\n{err.read_text()[-3000:]}"
            time.sleep(0.3)
        printed = out.read_text()
        assert f"http://127.0.0.1:{port}/#/experiments/" in printed and "viewStateShareKey=" in printed, printed
        root = psutil.Process(proc.pid)
        tree = _settled_tree(root)
        server = [p for p in root.children() if "mlflow" in " ".join(p.cmdline())]
        assert len(server) == 1 and os.getpgid(server[0].pid) == server[0].pid  # its own group
        assert len(tree) >= 3, [p.cmdline() for p in tree]  # server, uvicorn, job runner (+ consumers)
        assert not _port_is_free(port)

        os.kill(proc.pid, sig)
        assert proc.wait(timeout=120) == code, err.read_text()[-3000:]
        left = [p.pid for p in tree if not _gone(p.pid)]
        assert left == [], f"left running: {[psutil.Process(p).cmdline() for p in left]}"
        assert _group_members(server[0].pid) == []
        assert _port_is_free(port)
    finally:
        for p in [*tree, psutil.Process(proc.pid) if proc.poll() is None else None]:
            if p is not None and not _gone(p.pid):
                p.kill()


def _popen(command, stdout, stderr):
    # As from a terminal: a process group of its own, SIGINT and SIGHUP not ignored.
    return subprocess.Popen(command, stdout=stdout, stderr=stderr, start_new_session=True,
                            preexec_fn=as_from_a_terminal)
