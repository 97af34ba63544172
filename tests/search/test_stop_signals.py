"""A search stopped by a closed terminal or a service manager (SIGHUP, SIGTERM to the controller
alone) ends like Ctrl-C: its exit code says so, no worker process is left behind, the finished
trials are kept and `evomerge resume` finishes the budget."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest
from run_helpers import as_from_a_terminal, completions, write_run

from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)


def _wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _finished(run_dir) -> int:
    try:
        return len(completions(run_dir))
    except Exception:  # noqa: BLE001 - no ledger yet
        return 0


@pytest.mark.slow  # two subprocess searches with worker pools each: ~1 min apiece on 2 quiet cores
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_pool_search_leaves_no_worker_and_resumes(tmp_path, zoo, sig):
    cfg = write_run(tmp_path, zoo, executor={"kind": "pool", "workers": 2}, budget={"trials": 10})
    run_dir = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "evomerge.cli", "search", str(cfg), "--out", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=as_from_a_terminal,
    )
    try:
        _wait_for(lambda: _finished(run_dir) >= 2 or proc.poll() is not None, 300, "two trials")
        assert proc.poll() is None, proc.stdout.read()
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers, "the pool should have started worker processes"
        before = {r.id: r for r in completions(run_dir)}
        proc.send_signal(sig)  # the controller alone, as a service manager's main-PID stop does
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, out
    assert f"interrupted ({sig.name})" in out and "Traceback" not in out
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"worker processes left behind: {[p.pid for p in alive]}"

    after = {r.id: r for r in completions(run_dir)}
    assert all(after[i] == rec for i, rec in before.items())  # nothing finished was lost or changed
    res = subprocess.run([sys.executable, "-m", "evomerge.cli", "resume", str(run_dir)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "10 trials in the run" in res.stdout
