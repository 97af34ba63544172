"""Ctrl-C in a terminal sends SIGINT to the whole foreground process group, the pool's workers
included: the search ends as interrupted (130) with one line, no worker's traceback, and no worker
left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from run_helpers import as_from_a_terminal, completions, write_run

from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo


def _finished(run_dir) -> int:
    try:
        return len(completions(run_dir))
    except Exception:  # noqa: BLE001 - no ledger yet
        return 0


@pytest.mark.slow  # a subprocess search with a worker pool: ~1 min on 2 quiet cores
def test_ctrl_c_stops_a_pool_search_without_worker_tracebacks(tmp_path):
    zoo = build_zoo(tmp_path / "zoo", mini_zoo_config(), log=lambda s: None)
    # More trials than it can finish between its second result and the signal (~1 s for 40 here).
    cfg = write_run(tmp_path, zoo, executor={"kind": "pool", "workers": 2}, budget={"trials": 200})
    run_dir = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "evomerge.cli", "search", str(cfg), "--out", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=as_from_a_terminal,
    )
    try:
        end = time.monotonic() + 300
        while _finished(run_dir) < 2 and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers, "the pool should have started worker processes"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole group
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out
    assert "interrupted (SIGINT)" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"worker processes left behind: {[p.pid for p in alive]}"
