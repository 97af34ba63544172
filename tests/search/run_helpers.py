"""Run configs over the tests' mini zoo, reading a run's ledger back, and gates that hold a
search's evaluations so a test kills or interrupts it on a cue (shared by search tests)."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from evomerge.search.ledgers import open_ledger
from evomerge.testing.gate import wait_for  # noqa: F401 - the search tests import it from here


def write_run(tmp_path: Path, zoo: Path, name: str = "run", *, methods=("task_arithmetic", "ties"), **run) -> Path:
    """A parameter space over the mini zoo's two experts and a run config ``name``.yaml using it;
    ``run`` overrides the config's fields (objectives: zoo_text perplexity, fidelity 4, tracking off)."""
    space = {"base_model": str(zoo / "base"), "models": [str(zoo / "add"), str(zoo / "rev")],
             "methods": list(methods),
             "parameters": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.3, "high": 1.0}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    config = {"space": str(tmp_path / "space.yaml"), "objectives": [{"task": "zoo_text"}], "fidelity": 4,
              "optimizer": {"name": "random"}, "budget": {"trials": 4}, "tracking": {"enabled": False},
              **run}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def evaluations(run_dir: Path, state: str | None = "complete", *, missing_ok: bool = False) -> list:
    """The run's evaluations in ``state`` (``None``: all), or [] if ``missing_ok`` and no ledger yet."""
    try:
        led = open_ledger(run_dir, readonly=True)
    except Exception:
        if missing_ok:
            return []
        raise
    try:
        return led.evaluations(state)
    finally:
        led.close()


def completions(run_dir: Path) -> list:
    led = open_ledger(run_dir, readonly=True)
    try:
        return led.completions()
    finally:
        led.close()


def as_from_a_terminal() -> None:
    """``preexec_fn`` of a search started as from a terminal: SIGINT and SIGHUP at their defaults.
    A shell starts background jobs with SIGINT ignored and ``nohup`` ignores SIGHUP; a child
    inherits both, and Python and evomerge then keep them ignored, which is right for the user
    who asked for it and wrong for a test that sends them."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


# -- gates: kills and interrupts on a cue from the code under test, never by racing the clock --

GATE_MODULE = Path(__file__).with_name("gate_module.py")


@dataclass(frozen=True)
class Gate:
    """A gate task's folder (``gate_module.py`` says what it does); ``objective`` goes into a run
    config's objectives, ``task`` into a ``WorkerSpec``'s tasks (as ``TaskSpec(str(task), ...)``)."""

    folder: Path
    task: Path  # the task YAML, named after the folder: task FOLDER, objective FOLDER/score

    @property
    def objective(self) -> dict:
        return {"task": str(self.task)}

    def release(self) -> None:
        """Let every held evaluation go on, and every later one through."""
        (self.folder / "release").touch()

    def held(self) -> list[dict]:
        """The evaluations held so far (each: pid, score, Ray node or None), by number."""
        files = sorted(self.folder.glob("held-*"), key=lambda p: int(p.name.split("-")[1]))
        return [json.loads(p.read_text()) for p in files]

    def imports_held(self) -> list[dict]:
        """The imports held so far (each: pid), by number."""
        files = sorted(self.folder.glob("import-held-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
        return [json.loads(p.read_text()) for p in files]

    def starts(self) -> int:
        """Evaluations that reached the gate (re-runs count again)."""
        return len(list(self.folder.glob("claim-*")))


def write_gate(folder: Path, *, passes: int | None = None, hold: list[int] | None = None,
               hold_imports: list[int] | None = None, seconds: float | None = None) -> Gate:
    """A gate task in ``folder``, under a module name of its own (modules are cached by name).
    Evaluations numbered ``passes`` and up are held, or those numbered in ``hold``; imports of
    the module numbered in ``hold_imports`` are held (a worker process starting); ``seconds``:
    a held one goes on after that long even without a release. Released, the same config runs
    uninterrupted (a run to compare a killed and resumed one with)."""
    folder.mkdir(parents=True, exist_ok=True)
    module = "gate_" + re.sub(r"\W", "_", f"{folder.parent.name}_{folder.name}")
    shutil.copy(GATE_MODULE, folder / f"{module}.py")
    settings = {"pass": passes, "hold": hold, "hold_imports": hold_imports or [], "seconds": seconds}
    (folder / "gate.json").write_text(json.dumps(settings))
    task = folder / f"{folder.name}.yaml"
    task.write_text(yaml.safe_dump({"type": "python", "function": f"{module}:score", "python_path": ".",
                                    "objectives": {"score": "maximize"}}))
    return Gate(folder, task)


def wait_at_gate(gate: Gate, run_dir: Path, complete: int, held: int = 1, **kwargs) -> list:
    """Until ``complete`` evaluations are complete in the run's ledger and ``held`` are held at
    ``gate`` (a gate letting ``complete`` through): the moment to kill. Returns the complete
    ones, exactly ``complete`` of them whatever the machine's speed (``kwargs``: ``wait_for``'s)."""
    wait_for(lambda: len(evaluations(run_dir, missing_ok=True)) >= complete and len(gate.held()) >= held,
             f"{complete} complete evaluations and {held} held at the gate", **kwargs)
    done = evaluations(run_dir)
    assert len(done) == complete, f"{len(done)} complete, the gate lets {complete} through"
    return done


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie waiting for its parent has)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def search_killed_at_gate(cfg: Path, run_dir: Path, gate: Gate, complete: int, *, held: int = 1,
                          extra: tuple = (), cwd: Path | None = None, env: dict | None = None) -> list:
    """``evomerge search CFG --out RUN_DIR`` in a process group of its own, SIGKILLed (the whole
    group) once ``complete`` evaluations are complete and ``held`` are held at ``gate``; the gate
    is then released. Returns the complete evaluations at the kill (exactly ``complete``)."""
    import os
    import signal
    import subprocess
    import sys

    log = Path(run_dir).parent / f"{Path(run_dir).name}.search.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "evomerge.cli", "search", str(cfg), "--out", str(run_dir),
                                 *map(str, extra)], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        done = wait_at_gate(gate, run_dir, complete, held, alive=lambda: proc.poll() is None, output=log.read_text)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        gate.release()
    return done
