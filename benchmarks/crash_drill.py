"""Crash drill: kill a running search with SIGKILL at random moments, resume it, check nothing is lost.

A search is started through the real CLI (``evomerge search``) in a subprocess of its own process
group, with MLflow tracking on (the run's own SQLite store, as the run config's ``tracking``
section sets it). Then, by target:

* ``controller``: the controller's whole process group (pool workers included) gets SIGKILL at
  ``--kills`` random moments, and ``evomerge resume RUN_DIR`` continues it each time, until the
  budget is done.
* ``pool-workers`` / ``ray-workers``: the controller runs to the end while its worker processes
  (pool children, or Ray actor processes) get SIGKILL at random moments; their evaluations must be
  re-queued, or failed with the reason.

Kills are drawn from a seeded RNG: a number of further finished evaluations, then a random delay
(so kills land in start-up, replay, evaluations, and the end of the run). Some controller kills
are aimed at MLflow being written, through a hook in the controller process (this script runs the
CLI with MlflowClient's methods wrapped; nothing in evomerge knows about it):

* ``mlflow-store``: on the first start, while MLflow creates its database (seconds of schema
  migrations), a random delay after the first MLflow call begins and before it ends;
* ``mlflow-write``: the hook holds the tracker thread right after its k-th MLflow write (k random)
  from a random point on, and the drill kills it there: between two calls of one logical step
  (a child created but not yet given its params; metrics logged but the run not terminated; the
  parent's series logged but not its ``series_done`` tag, ...).

A drill given a gate (``gate=``: the folder of a task made by the tests' ``write_gate``, see
tests/search/gate_module.py, which the run config has as an objective) cannot see the search end
before its last kill: the gate lets ``pass`` evaluations through and holds the later ones until
the drill writes its ``release`` file, after the last kill, and kill points are capped to what it
lets finish. The tests' short form uses one; the full drill does not (it reports a search that
ended before a kill as an anomaly).

While it runs, the drill reads the ledger read-only every few milliseconds and checks each
snapshot of the finished evaluations holds every earlier one unchanged (none missing, changed or
duplicated). At the end: every trial is in MLflow exactly once (one child run per trial, each
evaluation logged once, states and scores equal to the ledger's), and the parent run's front
(Pareto tags, ``front_size``, hypervolume, ``front/front.json``) equals the front recomputed from
the ledger (``evomerge front``'s).

    python benchmarks/crash_drill.py                       # 20 controller kills on the quickstart
    python benchmarks/crash_drill.py --target pool-workers --kills 10
    python benchmarks/crash_drill.py --target ray-workers --kills 6 --trials 45

Needs the zoo (``evomerge zoo build``). Exit status 0 when every check passed. Figures in
benchmarks/README.md. The default test suite runs a short form (tests/test_crash_drill.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).parent / "_work" / "crash_drill"
TRACE_ENV = "EVOMERGE_DRILL_TRACE"  # the hook's trace file; its hold file is TRACE + ".hold"

# The controller's command line, with the MLflow hook installed first (argv follows).
_BOOT = ("import sys; sys.path.insert(0, {here!r}); import crash_drill; crash_drill.cli_with_hook()")

_WRITES = ("create_experiment", "create_run", "update_run", "set_terminated", "log_batch",
           "log_metric", "log_param", "set_tag", "log_artifacts", "log_artifact", "log_table")
_READS = ("__init__", "get_experiment_by_name", "search_experiments", "search_runs", "get_run")


# -- the hook, inside the controller process --------------------------------------------------

def cli_with_hook() -> None:
    """Run ``evomerge ARGS`` with MlflowClient's calls traced (and held when the drill asks)."""
    trace = os.environ.get(TRACE_ENV)
    if trace:
        _install_hook(Path(trace))
    from evomerge.cli import main

    sys.argv = ["evomerge", *sys.argv[1:]]
    main()


def _install_hook(trace: Path) -> None:
    from mlflow import MlflowClient

    hold = Path(f"{trace}.hold")
    lock = threading.Lock()
    out = open(trace, "a", buffering=1)  # noqa: SIM115 - open for the process's life
    armed = {"token": None, "writes": 0}

    def emit(event: str) -> None:
        with lock:
            out.write(f"{time.monotonic():.6f} {os.getpid()} {event}\n")

    def maybe_hold(name: str) -> None:
        try:
            token, k = hold.read_text().split()
        except (OSError, ValueError):
            return
        with lock:
            if armed["token"] != token:
                armed["token"], armed["writes"] = token, 0
            armed["writes"] += 1
            if armed["writes"] != int(k):
                return
        emit(f"held {name} {token}")
        deadline = time.monotonic() + 120  # the drill kills us long before
        while hold.exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    def wrap(name: str, fn, write: bool):
        def call(self, *args, **kwargs):
            emit(f"begin {name}")
            result = fn(self, *args, **kwargs)
            emit(f"end {name}")
            if write:
                maybe_hold(name)
            return result

        return call

    for name in (*_WRITES, *_READS):
        setattr(MlflowClient, name, wrap(name, getattr(MlflowClient, name), name in _WRITES))
    # Where a SQLite store is made (its schema migrations): the window `mlflow-store` aims at.
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore.__init__ = wrap("store", SqlAlchemyStore.__init__, False)


# -- watching a run ---------------------------------------------------------------------------

@dataclass
class Ledgerwatch:
    """Every finished evaluation seen so far; each new snapshot must hold them all, unchanged."""

    run_dir: Path
    seen: dict = field(default_factory=dict)  # evaluation id -> EvaluationRecord
    problems: list = field(default_factory=list)
    snapshots: int = 0

    def read(self) -> list:
        from evomerge.search.ledgers import find_ledger, open_ledger

        if find_ledger(self.run_dir) is None:
            return []
        try:
            led = open_ledger(self.run_dir, readonly=True)
        except Exception as e:  # noqa: BLE001 - a ledger being created this instant
            if "locked" in str(e):
                return list(self.seen.values())
            raise
        try:
            snap = led.completions()
        finally:
            led.close()
        self.absorb(snap)
        return snap

    def absorb(self, snap: list) -> None:
        self.snapshots += 1
        ids = Counter(r.id for r in snap)
        for i, n in ids.items():
            if n > 1:
                self._problem(f"evaluation {i} appears {n} times in one ledger snapshot")
        now = {r.id: r for r in snap}
        for i, old in self.seen.items():
            if i not in now:
                self._problem(f"finished evaluation {i} (trial {old.trial}) is missing from the ledger")
            elif now[i] != old:
                self._problem(f"finished evaluation {i} changed: {old} -> {now[i]}")
        for key, name in (((lambda r: (r.trial, r.rung)), "trial and rung"),
                          ((lambda r: (r.recipe_hash, r.fidelity)), "recipe and fidelity")):
            dup = [k for k, n in Counter(key(r) for r in snap if r.state == "complete").items() if n > 1]
            if dup:
                self._problem(f"evaluated twice (same {name}): {dup[:5]}")
        self.seen.update(now)

    def _problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)


class Trace:
    """The hook's trace lines, read as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0

    def lines(self) -> list[str]:
        if not self.path.is_file():
            return []
        with open(self.path) as f:
            f.seek(self.pos)
            text = f.read()
        end = text.rfind("\n") + 1
        self.pos += end
        return [line.split(" ", 2)[2] for line in text[:end].splitlines()]


# -- the drill --------------------------------------------------------------------------------

@dataclass
class Kill:
    kind: str  # random | mlflow-store | mlflow-write | worker
    at: int  # finished evaluations in the ledger when it landed
    seconds: float  # after the (re)start
    detail: str = ""


@dataclass
class Report:
    target: str
    kills: list = field(default_factory=list)
    starts: int = 0
    evaluations: int = 0  # finished (complete + failed) in the ledger
    failed: int = 0
    trials: int = 0
    wall_s: float = 0.0
    snapshots: int = 0
    anomalies: list = field(default_factory=list)  # odd but allowed (told, not failed)
    problems: list = field(default_factory=list)  # failed checks

    @property
    def resumes(self) -> int:
        return self.starts - 1

    def summary(self) -> str:
        kinds = Counter(k.kind for k in self.kills)
        lines = [
            f"target {self.target}: {len(self.kills)} kills ({', '.join(f'{n} {k}' for k, n in kinds.items())}), "
            f"{self.starts} starts ({self.resumes} resumes), {self.evaluations} evaluations "
            f"({self.failed} failed) of {self.trials} trials, {self.snapshots} ledger snapshots checked, "
            f"{self.wall_s:.0f} s",
        ]
        lines += [f"  kill {i + 1}: {k.kind} at {k.at} evaluations, {k.seconds:.1f} s after start"
                  f"{' (' + k.detail + ')' if k.detail else ''}" for i, k in enumerate(self.kills)]
        lines += [f"  anomaly: {a}" for a in self.anomalies]
        lines += [f"  PROBLEM: {p}" for p in self.problems] or ["  all checks passed"]
        return "\n".join(lines)


def expected_evaluations(config_path: Path) -> int:
    """About how many evaluations the run's budget makes (successive halving's rungs included)."""
    from evomerge.config.run import RunConfig

    config = RunConfig.load(config_path)
    mf = config.multi_fidelity
    trials = config.budget.trials
    if mf is None:
        return trials
    eta, bracket, levels = mf.eta, mf.bracket, len(mf.levels)
    per = sum(max(1, bracket // eta**i) for i in range(levels))
    return math.ceil(trials / bracket) * per


class Drill:
    """One drill: ``config`` searched into ``run_dir`` with ``kills`` SIGKILLs aimed at ``target``."""

    def __init__(self, config: Path, run_dir: Path, *, target: str = "controller", kills: int = 3,
                 mlflow_kills: int = 1, seed: int = 0, log=print, timeout: float = 1800.0,
                 work: Path | None = None, gate: Path | None = None) -> None:
        if target not in ("controller", "pool-workers", "ray-workers"):
            raise ValueError(f"unknown target {target!r}")
        self.config, self.run_dir = Path(config).resolve(), Path(run_dir).resolve()
        self.target, self.kills, self.seed = target, kills, seed
        self.mlflow_kills = mlflow_kills if target == "controller" else 0
        self.rng = random.Random(seed)
        self.log = log
        self.deadline = time.monotonic() + timeout
        self.work = Path(work or self.run_dir.parent / f"{self.run_dir.name}.drill").resolve()
        self.watch = Ledgerwatch(self.run_dir)
        self.report = Report(target)
        self.total = expected_evaluations(self.config)
        self.startup = 30.0  # seconds from a launch to its first new evaluation: the least measured
        self.gate = Path(gate).resolve() if gate is not None else None

    # -- processes ----------------------------------------------------------------------

    def _launch(self, resume: bool) -> subprocess.Popen:
        self.work.mkdir(parents=True, exist_ok=True)
        args = ["resume", str(self.run_dir)] if resume else ["search", str(self.config), "--out", str(self.run_dir)]
        cmd = [sys.executable, "-c", _BOOT.format(here=str(Path(__file__).resolve().parent)), *args]
        env = dict(os.environ, **{TRACE_ENV: str(self.work / "mlflow.trace")})
        env.pop("MLFLOW_TRACKING_URI", None)  # the run's own store
        self.report.starts += 1
        self.log_file = self.work / f"start-{self.report.starts:02d}.log"
        with open(self.log_file, "w") as out:
            # A session of its own: the kill takes the whole group (pool workers too).
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, cwd=ROOT)
        self.t_start = time.monotonic()
        return proc

    def _killpg(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        gone = time.monotonic() + 10
        while time.monotonic() < gone:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        self.report.anomalies.append(f"processes of group {proc.pid} outlived its SIGKILL by 10 s")

    def _poll(self, proc: subprocess.Popen) -> int:
        """Finished evaluations now (the snapshot checked); raises past the drill's deadline."""
        if time.monotonic() > self.deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise TimeoutError("the drill ran past its time limit")
        return len(self.watch.read())

    def _wait_for(self, proc: subprocess.Popen, evaluations: int) -> bool:
        """Until the ledger holds ``evaluations`` finished ones; False if the process ended first."""
        first = None
        start = len(self.watch.seen)
        while proc.poll() is None:
            n = self._poll(proc)
            if first is None and n > start:
                first = time.monotonic() - self.t_start
                self.startup = min(self.startup, first)
            if n >= evaluations:
                return True
            time.sleep(0.01)
        return False

    def _target(self, kills_left: int, margin: int = 0) -> int:
        """A random number of finished evaluations to wait for, spread over what is left (with a
        gate, at most what it lets finish less ``margin``)."""
        now = len(self.watch.seen)
        left = max(0, int(0.75 * self.total) - now)
        target = now + self.rng.randint(0, max(0, 2 * left // (kills_left + 1)))
        if self.gate is not None:
            # Evaluations numbered below `pass` go through; each number taken by one that did
            # not finish (killed, or in flight now) is one fewer to finish.
            passes = json.loads((self.gate / "gate.json").read_text())["pass"]
            starts = len(list(self.gate.glob("claim-*")))
            target = min(target, now + max(0, passes - starts - margin))
        return target

    def _open_gate(self) -> None:
        if self.gate is not None:
            (self.gate / "release").touch()

    # -- the drill ----------------------------------------------------------------------

    def run(self) -> Report:
        t0 = time.monotonic()
        try:
            if self.target == "controller":
                self._drill_controller()
            else:
                self._drill_workers()
        finally:
            self._open_gate()
            self.report.wall_s = time.monotonic() - t0
        self._final_checks()
        return self.report

    def _plan(self) -> list[str]:
        plan = ["random"] * self.kills
        n = min(self.mlflow_kills, self.kills)
        if n and not (self.run_dir / "mlflow.db").exists():
            plan[0] = "mlflow-store"
            n -= 1
        for i in self.rng.sample(range(1 if plan[0] == "mlflow-store" else 0, self.kills), n):
            plan[i] = "mlflow-write"
        return plan

    def _drill_controller(self) -> None:
        from evomerge.search.rundir import has_run

        for i, kind in enumerate(self._plan()):
            proc = self._launch(has_run(self.run_dir))
            kill = getattr(self, f"_aim_{kind.replace('-', '_')}")(proc, self.kills - i)
            if kill is None:
                self.report.anomalies.append(
                    f"start {self.report.starts} ended by itself (exit {proc.returncode}) before kill "
                    f"{i + 1} ({kind}); see {self.log_file}")
                if proc.returncode != 0:
                    self.report.problems.append(f"start {self.report.starts} failed: exit {proc.returncode}: "
                                                f"{_tail(self.log_file)}")
                    return
                break
            self._killpg(proc)
            kill.at = len(self.watch.read())
            self.report.kills.append(kill)
            self.log(f"kill {i + 1}/{self.kills}: {kind} at {kill.at} evaluations, "
                     f"{kill.seconds:.1f} s after start {kill.detail}")
            hold = Path(f"{self.work / 'mlflow.trace'}.hold")
            hold.unlink(missing_ok=True)
        self._open_gate()
        # Resume until done (or search, if the last kill struck before the run existed).
        proc = self._launch(has_run(self.run_dir))
        self._finish(proc)

    def _finish(self, proc: subprocess.Popen) -> None:
        while proc.poll() is None:
            self._poll(proc)
            time.sleep(0.05)
        if proc.returncode != 0:
            self.report.problems.append(f"the last start exited {proc.returncode}: {_tail(self.log_file)}")
        self.watch.read()

    def _aim_random(self, proc, kills_left: int) -> Kill | None:
        target = self._target(kills_left)
        if target > len(self.watch.seen) and not self._wait_for(proc, target):
            return None
        # Right at a completion, or a little later; at start-up, anywhere in it.
        late = self.rng.uniform(0, 0.9 * self.startup if target == len(self.watch.seen) else 0.3)
        if not _sleep_alive(proc, late):
            return None
        return Kill("random", 0, time.monotonic() - self.t_start)

    def _aim_mlflow_store(self, proc, kills_left: int) -> Kill | None:
        trace = Trace(self.work / "mlflow.trace")
        trace.lines()  # skip earlier starts
        began = None
        delay = self.rng.uniform(0.3, 3.0)
        while proc.poll() is None:
            for event in trace.lines():
                if began is None and event.startswith("begin"):
                    began = time.monotonic()
                elif began is not None and event.startswith("end"):
                    # The store was made before the delay ran out: say so, kill now anyway.
                    return Kill("mlflow-store", 0, time.monotonic() - self.t_start,
                                f"the first MLflow call ended before the kill ({event})")
            if began is not None and time.monotonic() - began >= delay:
                return Kill("mlflow-store", 0, time.monotonic() - self.t_start,
                            f"{delay:.1f} s into the first MLflow call, the store being created")
            self._poll(proc)
            time.sleep(0.005)
        return None

    def _aim_mlflow_write(self, proc, kills_left: int) -> Kill | None:
        # Room for k <= 10 writes after the target (each evaluation logged makes two or more).
        target = self._target(kills_left, margin=5)
        if target > len(self.watch.seen) and not self._wait_for(proc, target):
            return None
        trace = Trace(self.work / "mlflow.trace")
        trace.lines()
        k = self.rng.randint(1, 10)
        token = f"{self.report.starts}-{self.rng.getrandbits(32):08x}"
        hold = Path(f"{self.work / 'mlflow.trace'}.hold")
        hold.write_text(f"{token} {k}")
        while proc.poll() is None:
            for event in trace.lines():
                if event.startswith("held") and event.endswith(token):
                    call = event.split()[1]
                    return Kill("mlflow-write", 0, time.monotonic() - self.t_start,
                                f"held after MLflow write {k} from evaluation {target}: {call}")
            self._poll(proc)
            time.sleep(0.005)
        hold.unlink(missing_ok=True)
        return None

    # -- killing workers ----------------------------------------------------------------

    def _workers(self, proc) -> list:
        import psutil

        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = []
        for p in tree:
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                continue
            pool = self.target == "pool-workers" and "multiprocessing.spawn" in cmd
            if pool or (self.target == "ray-workers" and cmd.startswith("ray::_ActorBody")):
                found.append(p)
        return found

    def _drill_workers(self) -> None:
        proc = self._launch(False)
        # The pool's workers' age at the first evaluation bounds how long one takes to start
        # and finish an evaluation. (Ray keeps its actors' processes from a pool of its own,
        # and has no start-up guard to trip: any actor is fair game there.)
        ready_age = 0.0
        if self.target == "pool-workers":
            if not self._wait_for(proc, len(self.watch.seen) + 1):
                self.report.anomalies.append("the search ended before its first evaluation")
                self._finish(proc)
                return
            ready_age = max((_age(p) for p in self._workers(proc)), default=0.0)
        for i in range(self.kills):
            target = self._target(self.kills - i)
            if target > len(self.watch.seen) and not self._wait_for(proc, target):
                break
            if not _sleep_alive(proc, self.rng.uniform(0, 0.3)):
                break
            # Aim at an evaluation: wait (a little) until every worker has one, and spare a
            # replacement still starting (younger than the first workers were at the first
            # evaluation). Killing workers before they are up is the pool's start-up guard's
            # case (it stops the search after a few in a row), not the evaluation loss drilled.
            workers, until = [], time.monotonic() + 5.0
            while proc.poll() is None:
                workers = [p for p in self._workers(proc) if _age(p) >= ready_age]
                if workers and (self._running() >= len(workers) or time.monotonic() > until):
                    break
                self._poll(proc)
                time.sleep(0.01)
            if not workers:
                break
            victim = self.rng.choice(sorted(workers, key=lambda p: p.pid))
            running = self._running()  # evaluations the ledger has in flight at the kill
            try:
                os.kill(victim.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            kill = Kill("worker", len(self.watch.read()), time.monotonic() - self.t_start,
                        f"pid {victim.pid}, {running} evaluation(s) running for {len(workers)} workers")
            self.report.kills.append(kill)
            self.log(f"kill {i + 1}/{self.kills}: worker {victim.pid} at {kill.at} evaluations, "
                     f"{kill.seconds:.1f} s after start")
        if len(self.report.kills) < self.kills:
            self.report.anomalies.append(
                f"the search ended after {len(self.report.kills)} of {self.kills} worker kills")
        self._open_gate()
        self._finish(proc)

    def _running(self) -> int:
        from evomerge.search.ledgers import open_ledger

        try:
            led = open_ledger(self.run_dir, readonly=True)
        except Exception:  # noqa: BLE001 - not there yet, or locked this instant
            return 0
        try:
            return len(led.evaluations("running"))
        finally:
            led.close()

    # -- the checks at the end ----------------------------------------------------------

    def _final_checks(self) -> None:
        from evomerge.search.ledgers import open_ledger

        r = self.report
        r.snapshots = self.watch.snapshots
        r.problems += self.watch.problems
        if r.problems and not (self.run_dir / "run.yaml").is_file():
            return
        led = open_ledger(self.run_dir, readonly=True)
        try:
            everything = led.evaluations()
            completions = led.completions()
        finally:
            led.close()
        self.watch.absorb(completions)
        r.problems += [p for p in self.watch.problems if p not in r.problems]
        r.evaluations = len(completions)
        r.failed = sum(1 for c in completions if c.state == "failed")
        r.trials = len({c.trial for c in completions})
        left = Counter(e.state for e in everything if e.state not in ("complete", "failed"))
        if left.get("running"):
            r.problems.append(f"{left['running']} evaluation(s) still 'running' after the search ended")
        if left.get("abandoned") and self.target != "controller":
            r.problems.append(f"{left['abandoned']} evaluation(s) abandoned without a controller kill")
        for c in completions:
            if c.state == "failed" and not c.error:
                r.problems.append(f"evaluation {c.id} failed without a reason")
            if c.state == "failed" and self.target != "controller" and "worker died" not in c.error:
                r.anomalies.append(f"evaluation {c.id} failed: {c.error}")
        if any(e.state == "abandoned" for e in everything):
            rerun = {(e.recipe_hash, e.fidelity) for e in completions}
            lost = [e.id for e in everything if e.state == "abandoned" and (e.recipe_hash, e.fidelity) not in rerun]
            if lost:
                r.problems.append(f"evaluations abandoned at a kill and never run again: {lost[:10]}")
        from evomerge.config.run import RunConfig

        budget = RunConfig.load(self.run_dir / "run.yaml").budget.trials
        proposed = {e.trial for e in everything}
        if len(proposed) < budget:
            r.problems.append(f"the run ended with {len(proposed)} trials of a budget of {budget}")
        r.problems += check_mlflow(self.run_dir, completions)


def check_mlflow(run_dir: Path, completions: list) -> list[str]:
    """What is wrong with the run's MLflow record, measured against its ledger."""
    import numpy as np
    from mlflow import MlflowClient

    from evomerge.config.run import RunConfig
    from evomerge.config.tracking import tracking_uri
    from evomerge.search.front import run_front
    from evomerge.search.rundir import top_rung

    problems: list[str] = []
    config = RunConfig.load(run_dir / "run.yaml")
    client = MlflowClient(tracking_uri=tracking_uri(config.tracking, run_dir))
    exp = client.get_experiment_by_name(config.tracking.experiment or run_dir.name)
    if exp is None:
        return ["MLflow has no experiment for the run"]
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    parent_id = json.loads((run_dir / "tracking.json").read_text())["parent_run_id"]
    parents = [x for x in runs if "mlflow.parentRunId" not in x.data.tags]
    if [p.info.run_id for p in parents] != [parent_id]:
        problems.append(f"{len(parents)} parent runs in the experiment (one expected): "
                        f"{[(p.info.run_id, p.info.status) for p in parents]}")
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent_id]
    strays = [x for x in runs if x.data.tags.get("mlflow.parentRunId") not in (None, parent_id)]
    if strays:
        problems.append(f"{len(strays)} child runs under another parent")
    by_trial = Counter(int(c.data.tags["evomerge.trial"]) for c in children)
    twice = sorted(t for t, n in by_trial.items() if n > 1)
    if twice:
        problems.append(f"trials with more than one child run in MLflow: {twice}")
    trials: dict[int, list] = {}
    for c in completions:
        trials.setdefault(c.trial, []).append(c)
    if set(by_trial) != set(trials):
        problems.append(f"MLflow's trials differ from the ledger's: missing {sorted(set(trials) - set(by_trial))}, "
                        f"extra {sorted(set(by_trial) - set(trials))}")
    for child in children:
        t = int(child.data.tags["evomerge.trial"])
        evals = trials.get(t, [])
        tags = child.data.tags
        logged = [int(n) for n in tags.get("evomerge.evaluations", "").split(",") if n]
        if sorted(logged) != sorted(e.id for e in evals):
            problems.append(f"trial {t}: MLflow lists evaluations {logged}, the ledger {[e.id for e in evals]}")
        if tags.get("evomerge.ready") != "1":
            problems.append(f"trial {t}: its child run lacks its params and recipe (not ready)")
        if not evals:
            continue
        last = max(evals, key=lambda e: e.seq)
        want = "FINISHED" if last.state == "complete" else "FAILED"
        if child.info.status != want or tags.get("state") != last.state:
            problems.append(f"trial {t}: MLflow run {child.info.status} / state {tags.get('state')}, "
                            f"its last evaluation {last.state}")
        for key in {k for e in evals if e.scores for k in e.scores}:
            history = client.get_metric_history(child.info.run_id, key)
            got = sorted((m.step, m.value) for m in history)
            expect = sorted(((e.fidelity or 0), float(e.scores[key])) for e in evals if e.scores)
            if got != expect:
                problems.append(f"trial {t}: metric {key} in MLflow {got}, in the ledger {expect}")
    # The front: the parent's record of it against the ledger's.
    parent = client.get_run(parent_id)
    if parent.info.status != "FINISHED":
        problems.append(f"the parent run is {parent.info.status}, not FINISHED")
    top = [c for c in completions if c.rung == top_rung(config) and c.scores]
    if not top:
        return problems
    _, front, _, hv = run_front(run_dir)
    want_front = sorted(e.trial for e in front)
    tagged = sorted(int(c.data.tags["evomerge.trial"]) for c in children if c.data.tags.get("pareto") == "true")
    if tagged != want_front:
        problems.append(f"MLflow's pareto tags mark trials {tagged}, the ledger's front is {want_front}")
    if parent.data.tags.get("front_size") != str(len(want_front)):
        problems.append(f"the parent's front_size is {parent.data.tags.get('front_size')}, the front has "
                        f"{len(want_front)}")
    series = sorted(m.step for m in client.get_metric_history(parent_id, "best_fitness"))
    if series != list(range(1, len(top) + 1)):
        problems.append(f"the parent's best_fitness series has steps {_ranges(series)}, "
                        f"expected 1..{len(top)} once each")
    if hv is not None:
        got = parent.data.metrics.get("hypervolume")
        if got is None or not np.isclose(got, hv, rtol=1e-9, atol=1e-12):
            problems.append(f"the parent's hypervolume is {got}, the ledger's front gives {hv}")
    table = Path(client.download_artifacts(parent_id, "front/front.json", str(_scratch(run_dir))))
    data = json.loads(table.read_text())
    col = data["columns"].index("trial")
    if sorted(row[col] for row in data["data"]) != want_front:
        problems.append(f"front/front.json lists trials {sorted(row[col] for row in data['data'])}, "
                        f"the ledger's front is {want_front}")
    return problems


# -- small helpers ----------------------------------------------------------------------------

def _age(process) -> float:
    """Seconds since ``process`` (psutil) started; 0 if it is gone."""
    import psutil

    try:
        return time.time() - process.create_time()
    except psutil.Error:
        return 0.0


def _sleep_alive(proc, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        time.sleep(min(0.005, max(0.0, end - time.monotonic())))
    return proc.poll() is None


def _tail(path: Path, n: int = 6) -> str:
    try:
        return " | ".join(path.read_text().strip().splitlines()[-n:])
    except OSError:
        return "(no output)"


def _ranges(steps: list[int]) -> str:
    dup = sorted(s for s, n in Counter(steps).items() if n > 1)
    return f"{len(steps)} points, repeated: {dup[:10]}" if dup else f"{len(steps)} points"


def _scratch(run_dir: Path) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="drill-", dir=run_dir.parent))


def quickstart_config(out: Path, *, trials: int, executor: dict) -> Path:
    """runs/quickstart.yaml with the budget and executor set (a copy beside the run)."""
    import yaml

    config = yaml.safe_load((ROOT / "runs" / "quickstart.yaml").read_text())
    config["space"] = str((ROOT / "runs" / config["space"]).resolve())
    config["budget"] = {"trials": trials}
    config["executor"] = executor
    config["tracking"] = {"enabled": True}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "drill.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=["controller", "pool-workers", "ray-workers"], default="controller")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--mlflow-kills", type=int, default=6,
                        help="controller kills aimed at MLflow being written (the first at its store's creation)")
    parser.add_argument("--trials", type=int, default=90, help="the search's trial budget (quickstart: 360)")
    parser.add_argument("--config", type=Path, help="a run config instead of the quickstart's")
    parser.add_argument("--seed", type=int, default=0, help="the drill's RNG (kill moments)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args(argv)

    out = WORK / f"{args.target}-seed{args.seed}"
    shutil.rmtree(out, ignore_errors=True)
    if args.config is None:
        executor = {"kind": "ray", "workers": 2, "torch_threads": 1} if args.target == "ray-workers" \
            else {"kind": "pool", "workers": 2, "torch_threads": 1}
        config = quickstart_config(out, trials=args.trials, executor=executor)
    else:
        config = args.config
    drill = Drill(config, out / "run", target=args.target, kills=args.kills, mlflow_kills=args.mlflow_kills,
                  seed=args.seed, timeout=args.timeout, log=lambda s: print(s, flush=True))
    report = drill.run()
    print(report.summary())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
