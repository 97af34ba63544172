"""An evaluation gate: a Python task that lets the first evaluations through and holds each
later one inside its evaluation, in its worker's process, until the test releases it; and the
test's side of it (``Gate``). With it a conformance suite kills workers on a cue from them (an
evaluation held in each) instead of racing the clock. A task, because it is the one piece of a
user's code that every executor runs in its workers mid-evaluation: the gate needs no hook into
the executor under test, and the held evaluations name the processes to kill.

``Gate.write(folder, passes=N)`` puts in ``folder``: ``gate.json`` (``{"pass": N}``), a task
YAML (``type: python``, ``python_path: .``) and a two-line module under a name of its own
(a process caches modules by name), which calls ``evaluate`` here. Each evaluation takes the
next number when its score starts: ``claim-<i>`` (its pid), made with O_CREAT | O_EXCL, so no
two evaluations get one number in any process (a re-run of an evaluation takes a new one).
Numbers below N pass at once (all, once released); from N on, the evaluation takes a lock on
``held-<i>.lock``, then writes ``held-<i>`` (its pid and host) and waits until ``release``
exists (or, a failed test, ``NEVER`` seconds); leaving alive, it writes ``left-<i>`` before it
lets the lock go. The system lets the lock go when the holding process ends, so a free lock
without ``left-<i>`` is an evaluation that ended with its process (``Gate.killed``), seen
without asking that process or its parent.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

POLL = 0.05  # seconds between looks at the release file (and, in the test, at the cues)
NEVER = 900.0  # seconds a held evaluation waits for a release that does not come (a failed test)
CUE_LIMIT = 600.0  # seconds a test waits for a cue before it calls it a hang (a guard only)

_MODULE = '''"""The gate task of evomerge.testing.gate (its settings: gate.json beside this file)."""

from pathlib import Path

from evomerge.testing.gate import evaluate


def score(model, tokenizer):
    return evaluate(Path(__file__).parent)
'''


# -- inside the worker: the task -----------------------------------------------------------

def claim(folder: Path, kind: str = "claim") -> int:
    """The next free number ``i`` of ``folder/<kind>-<i>``, taken atomically (O_CREAT | O_EXCL: in
    any process, no two callers get one number); the file holds the caller's pid."""
    i = 0
    while True:
        try:
            fd = os.open(folder / f"{kind}-{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            i += 1
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return i


def wait_for_release(folder: Path, seconds: float | None = None) -> bool:
    """Inside a held evaluation: until ``folder/release`` exists (True), or ``seconds`` (default
    ``NEVER``, a failed test's guard) have passed (False)."""
    end = time.monotonic() + (NEVER if seconds is None else seconds)
    while not (folder / "release").exists():
        if time.monotonic() >= end:
            return False
        time.sleep(POLL)
    return True


def _hold(folder: Path, i: int) -> None:
    import fcntl

    fd = os.open(folder / f"held-{i}.lock", os.O_CREAT | os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held while this evaluation lives
        tmp = folder / f".held-{i}.tmp"
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        os.replace(tmp, folder / f"held-{i}")  # whole or absent to a reader
        released = wait_for_release(folder)
        (folder / f"left-{i}").touch()
        if not released:
            raise RuntimeError(f"gate {folder}: held for {NEVER:g} s and never released")
    finally:
        os.close(fd)  # and with it the lock


def evaluate(folder: Path) -> dict[str, float]:
    """The gate task's score in ``folder``: pass, or hold until released (see above)."""
    i = claim(folder)
    if i >= json.loads((folder / "gate.json").read_text())["pass"] and not (folder / "release").exists():
        _hold(folder, i)
    return {"number": float(i)}


# -- in the test -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Held:
    """An evaluation held at the gate: its number, and the process holding it (pid, host)."""

    number: int
    pid: int
    host: str

    @property
    def here(self) -> bool:
        """Whether its process runs on this machine (its pid is one of this machine's)."""
        return self.host == socket.gethostname()


@dataclass(frozen=True)
class Gate:
    """A gate task's folder; ``task`` is its YAML (a ``TaskSpec`` name, as an absolute path)."""

    folder: Path
    task: Path

    @classmethod
    def write(cls, folder: Path, *, passes: int) -> Gate:
        """A gate in ``folder`` that lets evaluations 0 to ``passes - 1`` through and holds the rest."""
        import yaml

        folder = Path(folder).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        module = "evomerge_gate_" + hashlib.sha1(str(folder).encode()).hexdigest()[:12]
        (folder / f"{module}.py").write_text(_MODULE)
        (folder / "gate.json").write_text(json.dumps({"pass": passes}))
        task = folder / f"{module}.yaml"
        task.write_text(yaml.safe_dump({"type": "python", "function": f"{module}:score", "python_path": ".",
                                        "objectives": {"number": "maximize"}}))
        return cls(folder, task)

    def worker(self, spec):
        """``spec`` (a ``WorkerSpec``) with the gate as its last task: each evaluation reaches
        the gate once the other tasks are scored."""
        from evomerge.search.executors import TaskSpec

        return replace(spec, tasks=(*spec.tasks, TaskSpec(str(self.task), "search", False)))

    def claims(self) -> list[int]:
        """The pid of each evaluation that reached the gate so far, by number."""
        files = sorted(self.folder.glob("claim-*"), key=lambda p: int(p.name.split("-")[1]))
        return [int(p.read_text() or 0) for p in files]  # 0: claimed, its pid not written yet

    def held(self) -> list[Held]:
        """The evaluations held so far, by number (ended ones included)."""
        files = sorted(self.folder.glob("held-*[0-9]"), key=lambda p: int(p.name.split("-")[1]))
        return [Held(int(p.name.split("-")[1]), **json.loads(p.read_text())) for p in files]

    def ended(self, held: Held) -> bool:
        """Whether the held evaluation has ended: its process is gone, or it left the gate."""
        import fcntl

        fd = os.open(self.folder / f"held-{held.number}.lock", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # and with it the lock, if this took it
        return True

    def killed(self, held: Held) -> bool:
        """Whether the held evaluation ended with its process (it never left the gate alive)."""
        return self.ended(held) and not (self.folder / f"left-{held.number}").exists()

    def release(self) -> None:
        """Let every held evaluation go on, and every later one through."""
        (self.folder / "release").touch()

    def wait_held(self, n: int, limit: float) -> list[Held]:
        """Until ``n`` evaluations are held; returns them. ``limit``: seconds before the test calls
        it a hang (a guard only, never the moment of a kill)."""
        wait_for(lambda: len(self.held()) >= n,
                 lambda: f"{n} evaluations held at the gate (held: {self.held()}, claims: {self.claims()})",
                 limit=limit)
        return self.held()[:n]

    def wait_killed(self, held: list[Held], limit: float) -> None:
        """Until every one of ``held`` has ended; each must have ended with its process (a guard
        of ``limit`` seconds, as above)."""
        wait_for(lambda: all(self.ended(h) for h in held),
                 lambda: f"end of the held evaluations {[h for h in held if not self.ended(h)]} (not killed)",
                 limit=limit)
        alive = [h for h in held if not self.killed(h)]
        assert not alive, f"held evaluations {alive} left the gate alive: the kill missed their processes"


def wait_for(cue: Callable[[], bool], what: str | Callable[[], str], *, limit: float = CUE_LIMIT,
             alive: Callable[[], bool] | None = None, output: Callable[[], str] = lambda: "") -> None:
    """In the test: until ``cue()``. Fails if ``alive()`` turns false first (what should give the
    cue ended), or after ``limit`` seconds (a guard against a hang, never the moment of a kill).
    ``what`` (or its value, computed on failure) and ``output()``'s tail name what was awaited."""
    end = time.monotonic() + limit
    while not cue():
        said = what if isinstance(what, str) else None
        if alive is not None and not alive():
            if cue():
                return
            raise AssertionError(f"it ended before {said or what()}:\n{output()[-3000:]}")
        if time.monotonic() > end:
            raise AssertionError(f"no {said or what()} after {limit:g} s:\n{output()[-3000:]}")
        time.sleep(POLL)
