"""Ctrl-C in a terminal sends SIGINT to the whole foreground process group, the pool's workers
included: the search ends as interrupted (130) with one line, no worker's traceback, and no worker
left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest
from run_helpers import as_from_a_terminal, wait_at_gate, write_gate, write_run

from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo


@pytest.mark.slow  # a subprocess search with a worker pool: ~20 s on 2 quiet cores
def test_ctrl_c_stops_a_pool_search_without_worker_tracebacks(tmp_path):
    zoo = build_zoo(tmp_path / "zoo", mini_zoo_config(), log=lambda s: None)
    # The gate lets 2 evaluations through and holds the next on each worker: Ctrl-C lands with
    # both workers mid-evaluation, the search certainly unfinished.
    gate = write_gate(tmp_path / "gate", passes=2)
    cfg = write_run(tmp_path, zoo, executor={"kind": "pool", "workers": 2}, budget={"trials": 6},
                    objectives=[{"task": "zoo_text"}, gate.objective])
    run_dir = tmp_path / "out"
    out_file = tmp_path / "search.log"
    with open(out_file, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "evomerge.cli", "search", str(cfg), "--out", str(run_dir)],
            stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            preexec_fn=as_from_a_terminal,
        )
    try:
        wait_at_gate(gate, run_dir, 2, held=2, alive=lambda: proc.poll() is None, output=out_file.read_text)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert {h["pid"] for h in gate.held()} <= {p.pid for p in workers}
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole group
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        gate.release()
    out = out_file.read_text()
    assert proc.returncode == 130, out
    assert "interrupted (SIGINT)" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"worker processes left behind: {[p.pid for p in alive]}"
