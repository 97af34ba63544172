"""A search stopped by a closed terminal or a service manager (SIGHUP, SIGTERM to the controller
alone) ends like Ctrl-C: its exit code says so, no worker process is left behind, the finished
trials are kept and `evomerge resume` finishes the budget."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil
import pytest
from run_helpers import as_from_a_terminal, completions, wait_at_gate, write_gate, write_run

from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)


@pytest.mark.slow  # two subprocess searches with worker pools each: ~20 s apiece on 2 quiet cores
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_pool_search_leaves_no_worker_and_resumes(tmp_path, zoo, sig):
    # The gate lets 2 evaluations through and holds the next on each worker: the signal lands
    # with both workers mid-evaluation, the search certainly unfinished.
    gate = write_gate(tmp_path / "gate", passes=2)
    cfg = write_run(tmp_path, zoo, executor={"kind": "pool", "workers": 2}, budget={"trials": 6},
                    objectives=[{"task": "zoo_text"}, gate.objective])
    run_dir = tmp_path / "out"
    out_file = tmp_path / "search.log"
    with open(out_file, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "evomerge.cli", "search", str(cfg), "--out", str(run_dir)],
            stdout=out, stderr=subprocess.STDOUT, text=True, preexec_fn=as_from_a_terminal,
        )
    try:
        wait_at_gate(gate, run_dir, 2, held=2, alive=lambda: proc.poll() is None, output=out_file.read_text)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert {h["pid"] for h in gate.held()} <= {p.pid for p in workers}
        before = {r.id: r for r in completions(run_dir)}
        proc.send_signal(sig)  # the controller alone, as a service manager's main-PID stop does
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        gate.release()
    out = out_file.read_text()
    assert proc.returncode == 128 + sig, out
    assert f"interrupted ({sig.name})" in out and "Traceback" not in out
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"worker processes left behind: {[p.pid for p in alive]}"

    after = {r.id: r for r in completions(run_dir)}
    assert after == before  # nothing finished was lost or changed, and the held ones did not finish
    res = subprocess.run([sys.executable, "-m", "evomerge.cli", "resume", str(run_dir)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "6 trials in the run" in res.stdout
