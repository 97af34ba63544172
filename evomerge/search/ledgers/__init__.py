"""Ledgers: the durable record of a run's evaluations, behind one small contract.

A *trial* is a candidate recipe (numbered in the order the optimiser proposed
it; what the CLI, the front and MLflow show). An *evaluation* is one scoring of
a trial at one fidelity: a ledger row. A trial promoted by successive halving
has one evaluation per rung.

Only the controller writes a ledger. It records an evaluation when it is
submitted (``start``: state ``running``) and completes it in one durable step
when its scores arrive (``finish``), giving it the next place ``seq`` in the
completion order; so a crash loses at most what was in flight, never a
finished evaluation, and a resume replays completions in the order the
controller saw them. Sessions record each controller run's budget and where it
stopped asking, so a replay follows the rules of the session that made it.

Kinds are registered by name (``ledger: {kind: ...}`` in the run config, or a
plain string): ``sqlite`` (``RUN_DIR/ledger.db``, the default), ``journal``
(``RUN_DIR/ledger.jsonl``, an fsynced append-only file for network file
systems) and ``sql`` (a database server, e.g. PostgreSQL, for clusters: resume
from any machine, one controller at a time by lease). A new kind is one module with a class following ``Ledger`` and one
entry in ``LEDGERS``; ``evomerge.testing.ledgers`` is the suite it must pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from evomerge.errors import EvomergeError
from evomerge.registry import Registry


@dataclass(frozen=True)
class Session:
    """One run of the controller: where in the completion order it began, its budget, and how
    many suggestions had been asked when it stopped asking (budget, wall time or patience), if it
    did. A resume replays each stretch of completions under the rules of the session that made it."""

    start: int
    budget: int
    closed_asks: int | None


@dataclass(frozen=True)
class EvaluationRecord:
    id: int  # the evaluation (ledger row), unique in the run
    trial: int  # the trial (candidate recipe) it scores
    rung: int
    recipe_hash: str
    genome: list[float]
    recipe: str
    state: str  # running | complete | failed | abandoned
    fidelity: int | None
    scores: dict[str, float] | None
    error: str | None
    started: float
    finished: float | None
    seconds: float | None
    seq: int | None  # place in the completion order (None until finished)


class Ledger(Protocol):
    """What the controller, resume and the readers (front, export, track) need of a ledger.

    Classes also provide, as class methods, ``exists(run_dir) -> bool`` (a run of this kind is
    there) and ``open(run_dir, options, *, readonly, take_over) -> Ledger``; optionally
    ``check(options)`` (validate options and reach the store before any model loads). A ledger
    that can be shared by several machines holds the run's lease while open for writing: a second
    writer is refused unless ``take_over``."""

    def start(self, trial: int, rung: int, recipe_hash: str, genome: list[float], recipe: str,
              fidelity: int | None) -> int:
        """Record a submitted evaluation (state running); returns its id."""

    def finish(self, id: int, scores: dict[str, float] | None, error: str | None = None,
               seconds: float | None = None) -> None:
        """Complete (``error`` None) or fail it, durably, with the next ``seq``."""

    def begin_session(self, budget: int) -> None: ...

    def close_asks(self, asks: int) -> None:
        """The current session asks no more suggestions after ``asks`` in all."""

    def sessions(self) -> list[Session]: ...

    def get(self, id: int) -> EvaluationRecord: ...

    def completions(self) -> list[EvaluationRecord]:
        """Finished evaluations (complete or failed) in completion order."""

    def evaluations(self, state: str | None = None) -> list[EvaluationRecord]:
        """Every evaluation (or those in ``state``) by id."""

    def abandon_running(self) -> int:
        """Mark evaluations left running by an interrupted run as abandoned; returns how many."""

    def close(self) -> None: ...


LEDGERS: Registry[Any] = Registry(
    "ledger kind",
    {
        "sqlite": "evomerge.search.ledgers.sqlite:SQLiteLedger",
        "journal": "evomerge.search.ledgers.journal:JournalLedger",
        "sql": "evomerge.search.ledgers.sql:SQLLedger",
    },
    entry_points="evomerge.ledgers",
)


def find_ledger(run_dir: Path) -> str | None:
    """The kind of the ledger in ``run_dir``, if there is one."""
    for kind, cls in LEDGERS.items():
        if cls.exists(Path(run_dir)):
            return kind
    return None


def open_ledger(run_dir: Path, spec=None, *, readonly: bool = False, take_over: bool = False) -> Ledger:
    """The run's ledger: the one that exists, else a new one as ``spec`` (a ``LedgerSpec`` or
    a kind's name) says (sqlite by default). ``readonly``: for readers while a search may be
    writing."""
    if isinstance(spec, str):
        from evomerge.config.run import LedgerSpec

        spec = LedgerSpec(kind=spec)
    kind = find_ledger(run_dir)
    options: dict = {}
    if kind is None and readonly:
        raise EvomergeError(f"{run_dir} holds no ledger (not a search run, or not started yet).")
    if kind is None:
        kind = spec.kind if spec is not None else "sqlite"
        if kind not in LEDGERS:
            raise EvomergeError(f"ledger: {LEDGERS.unknown_message(kind)}")
    if spec is not None and spec.kind == kind:
        options = spec.options
    return LEDGERS.get(kind).open(Path(run_dir), options, readonly=readonly, take_over=take_over)
