"""The search loop: ask -> recipe -> submit -> collect -> tell -> ledger, over executor slots.

The controller keeps every executor slot busy: it asks the optimiser for
trials, groups them into successive-halving brackets (a bracket of one at a
single fidelity when multi-fidelity is off), submits each bracket's
evaluations as slots free up, and reacts to every completion as it arrives:
record it in the ledger, promote the best of a finished rung, tell the
optimiser when a trial's bracket is done. A recipe already scored at a fidelity
(same content hash) is not evaluated again.

Everything the controller decides follows from the seed and the order in which
evaluations completed, and the ledger records that order. Resume therefore
replays the recorded completions through the same loop (no evaluation) until
the interrupted state is rebuilt, then continues live: finished work is never
repeated, the optimiser continues its very trajectory, and only evaluations that
were in flight run again.

With ``constraints:`` the loop also judges each result (``search.constraints``):
the violations go into the evaluation's scores before the ledger records them,
an infeasible trial at the top fidelity is logged and counted, never becomes
the best nor joins the front, a trial over a cost bound is promoted after the
feasible ones, and the optimiser is told the constraint values with the scores.

This module is the loop and its state only: objectives, constraints, Pareto
maths, run directories and the wiring of a run (``evomerge.run``) live elsewhere.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from evomerge.search.constraints import (
    BoundConstraint,
    describe_violations,
    feasible,
    told_values,
    total_violation,
    violations,
)
from evomerge.search.executors import Executor, Outcome
from evomerge.search.fidelity import Bracket, Rungs, Trial, hyperband_schedule
from evomerge.search.ledgers import EvaluationRecord, Ledger
from evomerge.search.objectives import BoundObjective, fitness, unique_objectives
from evomerge.search.pareto import pareto_mask
from evomerge.search.progress import Progress


@dataclass
class _Job:
    """One evaluation to run: a trial at one rung of its bracket."""

    trial: Trial
    bracket: Bracket
    rung: int
    fidelity: int | None
    id: int | None = None  # the evaluation's id in the ledger, once submitted (or replayed)

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.trial.digest, self.fidelity)


@dataclass
class _State:
    brackets: list[Bracket] = field(default_factory=list)
    queue: deque = field(default_factory=deque)  # jobs ready to submit
    instant: deque = field(default_factory=deque)  # jobs whose result is already known
    waiting: dict = field(default_factory=dict)  # key -> jobs sharing one evaluation in flight
    in_flight: dict = field(default_factory=dict)  # evaluation id -> job (submitted, live)
    held: list = field(default_factory=list)  # replay: jobs submitted, waiting for their record
    results: dict = field(default_factory=dict)  # key -> Outcome
    trials: int = 0  # new trials proposed (duplicates of scored recipes not counted)
    duplicates: int = 0
    evaluated: int = 0
    failed: int = 0
    best: tuple[float, int] | None = None  # (fitness, trial number) at the top level
    best_at: int = 0  # trials done when the best last improved
    done: int = 0  # trials whose bracket finished
    top_points: dict = field(default_factory=dict)  # digest -> objective vector at the top level (feasible)
    infeasible: set = field(default_factory=set)  # digests scored at the top level that miss a constraint
    examples: float = 0.0
    busy_seconds: float = 0.0  # worker time of this session's live evaluations


class Controller:
    """``task_sizes``: examples per task (None: unknown), for the cost count. ``on_record``:
    called with each finished evaluation's record (the tracker's feed). ``constraints``: the
    run's bound constraints (none: every scored trial is feasible)."""

    def __init__(self, config, space, task_sizes: list[int | None], objectives: list[BoundObjective],
                 optimizer, executor: Executor, ledger: Ledger, *, budget: int,
                 log: Callable[[str], None], progress: Callable[[Progress], None] | None,
                 on_record: Callable[[EvaluationRecord], None] | None = None,
                 constraints: list[BoundConstraint] | None = None, anchoring=None) -> None:
        self.config, self.space, self.objectives = config, space, objectives
        self.constraints = list(constraints or [])
        self.anchoring = anchoring  # an ``Anchoring``: lower levels score anchor subsets once chosen
        self.unique = unique_objectives(objectives)
        self.optimizer, self.executor, self.ledger = optimizer, executor, ledger
        self.tell_all = optimizer.n_objectives > 1
        self.rungs = Rungs(config.levels(), config.multi_fidelity.eta if config.multi_fidelity else 3)
        mf = config.multi_fidelity
        if mf is None:
            self.schedule = [(1, 0)]  # plain evaluation: brackets of one, at the one level
        elif mf.schedule == "hyperband":
            self.schedule = hyperband_schedule(len(mf.levels), mf.eta)
        else:
            self.schedule = [(mf.bracket, 0)]
        self.brackets_started = 0
        self.sizes = list(task_sizes)
        self.budget = budget
        self.log = log
        self.progress = progress
        self.on_record = on_record
        self.s = _State()
        self.replay: deque[EvaluationRecord] = deque()
        self.t0 = time.monotonic()
        self.deadline = None
        self.sessions = ledger.sessions()  # the earlier sessions of this run, for the replay
        self.consumed = 0  # completions replayed so far
        self.asks_closed = False
        ledger.begin_session(budget)

    # -- asking ----------------------------------------------------------------------

    def _may_ask(self) -> bool:
        """Whether to ask for another suggestion now.

        While replaying, the rules are those of the session that made the completions being
        replayed (its budget, and where its wall-time budget stopped it asking); live, this
        session's. Patience follows from the completions themselves, so it needs no record.
        """
        s, b = self.s, self.config.budget
        asks = s.trials + s.duplicates
        budget = self.budget
        if self.replay and self.sessions:
            session = next(x for x in reversed(self.sessions) if x.start <= self.consumed)
            budget = session.budget
            if session.closed_asks is not None and asks >= session.closed_asks:
                return False
        if s.trials >= budget or s.duplicates > 10 * budget:
            return False
        if b.patience and s.best is not None and s.done - s.best_at >= b.patience:
            return False
        if self.replay or self.deadline is None or time.monotonic() < self.deadline:
            return True
        if not self.asks_closed:  # a resume must stop asking at the same point
            self.ledger.close_asks(asks)
            self.asks_closed = True
        return False

    def _new_bracket(self) -> bool:
        trials: list[Trial] = []
        s = self.s
        size, start = self.schedule[self.brackets_started % len(self.schedule)]
        if self.anchoring is not None:  # calibration trials first, alone and at the top level
            if self.anchoring.waiting(s.trials + s.duplicates):
                return False
            if self.anchoring.calibrates(s.trials + s.duplicates):
                size, start = 1, len(self.rungs.levels) - 1
        while len(trials) < size and self._may_ask():
            suggestion = self.optimizer.ask()
            if suggestion is None:  # CMA-ES waits for the rest of its generation
                break
            recipe = self.space.decode(suggestion.x)
            digest = recipe.content_hash()
            t = Trial(suggestion.id, s.trials + s.duplicates, suggestion.x, recipe, digest)
            key = (digest, self.rungs.levels[start])
            if key in s.results or key in s.waiting or any(x.digest == digest for x in trials):
                s.duplicates += 1  # scored already: told its result, not counted against the budget
            else:
                s.trials += 1
            trials.append(t)
        if not trials:
            return False
        bracket = Bracket(trials, self.rungs, start)
        self.brackets_started += 1
        s.brackets.append(bracket)
        for t in trials:
            self._add_job(t, bracket, bracket.rung)
        return True

    def _add_job(self, t: Trial, bracket: Bracket, rung: int) -> None:
        s = self.s
        job = _Job(t, bracket, rung, self.rungs.levels[rung])
        if job.key in s.results:
            s.instant.append(job)
        elif job.key in s.waiting:
            s.waiting[job.key].append(job)
        else:
            s.waiting[job.key] = [job]
            s.queue.append(job)

    # -- submitting and collecting -----------------------------------------------------

    def _busy(self) -> int:
        return len(self.s.in_flight) + len(self.s.held)

    def _submit(self, job: _Job) -> None:
        if self.replay:
            self.s.held.append(job)
            return
        t = job.trial
        job.id = self.ledger.start(
            t.number, job.rung, t.digest, [float(v) for v in t.x], t.recipe.to_yaml(), job.fidelity
        )
        self.s.in_flight[job.id] = job
        fidelity = job.fidelity if self.anchoring is None else self.anchoring.fidelity(job.rung, job.fidelity)
        self.executor.submit(job.id, t.recipe, fidelity)

    def _collect(self) -> tuple[_Job, Outcome]:
        s = self.s
        if self.replay:
            rec = self.replay[0]
            match = next((j for j in s.held if j.key == (rec.recipe_hash, rec.fidelity)), None)
            if match is not None:
                self.replay.popleft()
                self.consumed += 1
                s.held.remove(match)
                match.id = rec.id
                return match, Outcome(rec.scores, rec.error, rec.seconds or 0.0)
            self.log(
                f"resume: the ledger's evaluation {rec.id} does not follow from the replay "
                f"(was the run's config changed?); continuing live from here, reusing every "
                f"recorded result instead of evaluating it again"
            )
            for r in self.replay:
                s.results.setdefault((r.recipe_hash, r.fidelity), Outcome(r.scores, r.error, r.seconds or 0.0))
            self.replay.clear()
        if s.held:  # replay done: what was in flight when the run stopped runs again
            held, s.held = s.held, []
            for job in held:
                self._submit(job)
        job_id, outcome = self.executor.wait()
        job = s.in_flight.pop(job_id)
        s.busy_seconds += outcome.seconds or 0.0
        if self.constraints and outcome.values is not None:  # the verdict is recorded with the scores
            top = job.rung == len(self.rungs.levels) - 1
            outcome = Outcome({**outcome.values, **violations(outcome.values, self.constraints, top=top)},
                              outcome.error, outcome.seconds)
        if self.anchoring is not None and outcome.examples and self.anchoring.calibrates(job.trial.number):
            self.anchoring.save(job.trial.number, outcome.examples)  # before the ledger: resume needs it
        self.ledger.finish(job.id, outcome.values, outcome.error, outcome.seconds)
        if self.on_record is not None:
            self.on_record(self.ledger.get(job.id))
        s.evaluated += 1
        return job, outcome

    # -- reacting --------------------------------------------------------------------

    def _scalar(self, scores: dict[str, float]) -> float:
        return fitness(scores, self.objectives)

    def _rank_key(self, scores: dict[str, float]) -> tuple[float, ...]:
        return (self._scalar(scores), *(o.sign * scores[o.key] for o in self.unique))

    def _violation(self, scores: dict[str, float]) -> float:
        """A trial's relative violation below the top rung: fidelity-independent constraints only."""
        return total_violation(scores, self.constraints, top=False)

    def _on_result(self, job: _Job, outcome: Outcome, fresh: bool) -> None:
        s = self.s
        jobs = s.waiting.pop(job.key, [job]) if fresh else [job]
        if fresh:
            s.results[job.key] = outcome
            s.examples += sum(self.rungs.cost(job.fidelity, n) for n in self.sizes if n is not None)
            if outcome.values is None:
                s.failed += 1
                if not self.replay:
                    self.log(f"trial {job.trial.number}: failed at fidelity {job.fidelity} ({outcome.error})")
        for j in jobs:
            j.trial.scores[j.rung] = outcome.values
            if outcome.values is not None and j.rung == len(self.rungs.levels) - 1:
                self._record_top(j, outcome.values, fresh)
            if self.anchoring is not None and j.rung == len(self.rungs.levels) - 1:
                self.anchoring.finished_trial(j.trial.number)
        for bracket in {id(j.bracket): j.bracket for j in jobs}.values():
            self._advance(bracket)

    def _record_top(self, job: _Job, values: dict[str, float], fresh: bool) -> None:
        s = self.s
        if not feasible(values, self.constraints):
            s.infeasible.add(job.trial.digest)
            if fresh and not self.replay:
                self.log(f"trial {job.trial.number}: infeasible ({describe_violations(values, self.constraints)})")
            return
        f = self._scalar(values)
        if s.best is None or f > s.best[0]:
            s.best = (f, job.trial.number)
            job.bracket.improved = True  # patience counts from the end of this bracket
        s.top_points[job.trial.digest] = [o.sign * values[o.key] for o in self.unique]

    def _advance(self, bracket: Bracket) -> None:
        while not bracket.done and bracket.rung_complete():
            for t in bracket.advance(self._rank_key, self._violation if self.constraints else None):
                self._add_job(t, bracket, bracket.rung)
        if bracket.done and bracket in self.s.brackets:
            self.s.brackets.remove(bracket)
            for t in bracket.trials:
                _, scores = t.final()
                if scores is None:
                    told = None
                elif self.tell_all:
                    told = tuple(o.sign * scores[o.key] for o in self.unique)
                else:
                    told = (self._scalar(scores),)
                if self.constraints and scores is not None:
                    # Estimated from the scores the optimiser is told, whatever rung they are from.
                    self.optimizer.tell(t.suggestion, told, constraints=told_values(scores, self.constraints))
                else:
                    self.optimizer.tell(t.suggestion, told)
            self.s.done += len(bracket.trials)
            if bracket.improved:
                self.s.best_at = self.s.done
            self._report()

    def _report(self) -> None:
        if self.progress is None or self.replay:
            return
        s = self.s
        elapsed = time.monotonic() - self.t0
        rate_done = max(s.done - self._done_at_start, 0)
        eta = None
        if rate_done:
            eta = (self.budget - min(s.trials, self.budget) + self._busy()) * elapsed / rate_done
        front = 0
        if s.top_points:
            front = int(pareto_mask(np.array(list(s.top_points.values()))).sum())
        self.progress(Progress(
            trials=s.trials, budget=self.budget, evaluations=s.evaluated, in_flight=self._busy(),
            best_fitness=s.best[0] if s.best else None, best_trial=s.best[1] if s.best else None,
            front_size=front, elapsed=elapsed, eta=eta, infeasible=len(s.infeasible),
        ))

    # -- the loop --------------------------------------------------------------------

    def run(self, replay: list[EvaluationRecord]) -> None:
        s = self.s
        self.replay = deque(replay)
        self._done_at_start = 0
        while True:
            while s.instant:
                job = s.instant.popleft()
                self._on_result(job, s.results[job.key], fresh=False)
            if not self.replay and self.deadline is None and self.config.budget.seconds:
                self.deadline = time.monotonic() + self.config.budget.seconds
            while self._busy() < self.executor.slots:
                if s.queue:
                    self._submit(s.queue.popleft())
                elif not self._new_bracket():
                    break
            if s.instant:
                continue
            if not self._busy():
                break
            was_replaying = bool(self.replay)
            job, outcome = self._collect()
            if was_replaying and not self.replay:
                self._done_at_start = s.done
                self.t0 = time.monotonic()
            self._on_result(job, outcome, fresh=True)
        self.live_seconds = time.monotonic() - self.t0

    def utilisation(self) -> dict[str, float]:
        """Busy time / wall time of the executor's slots in this session: per slot where the
        executor measures it, else the mean from the workers' own timings."""
        out: dict[str, float] = {}
        per_slot = getattr(self.executor, "utilisation", None)
        values = per_slot() if per_slot is not None else None
        if values:
            out["slot_utilisation"] = sum(values) / len(values)
            out.update({f"slot_utilisation/{i}": v for i, v in enumerate(values)})
        elif getattr(self, "live_seconds", 0) > 0 and self.s.evaluated:
            out["slot_utilisation"] = min(1.0, self.s.busy_seconds / (self.executor.slots * self.live_seconds))
        return out
