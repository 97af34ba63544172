"""The search controller: config -> space -> ask -> recipe -> evaluate -> tell -> ledger.

The controller keeps every executor slot busy: it asks the optimiser for
candidates, groups them into successive-halving brackets (a bracket of one at a
single fidelity when multi-fidelity is off), submits each bracket's jobs as
slots free up, and reacts to every completion as it arrives: record it in the
ledger, promote the best of a finished rung, tell the optimiser when a
candidate's bracket is done. A recipe already scored at a fidelity (same content
hash) is not evaluated again.

Everything the controller decides follows from the seed and the order in which
jobs completed, and the ledger records that order. Resume therefore replays
the recorded completions through the same loop (no evaluation) until the
interrupted state is rebuilt, then continues live: finished work is never
repeated, the optimiser continues its very trajectory, and only jobs that were
in flight run again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from evomerge.errors import EvomergeError
from evomerge.io.atomic import atomic_write_text
from evomerge.search.executor import Outcome, TaskSpec, WorkerSpec, make_executor
from evomerge.search.fidelity import Bracket, Candidate, Rungs, hyperband_schedule
from evomerge.search.ledger import TrialRecord, find_ledger, open_ledger
from evomerge.search.run_config import RunConfig, RunConfigError


@dataclass(frozen=True)
class BoundObjective:
    key: str  # "task/metric", the name in the ledger's scores
    sign: float  # +1 maximise, -1 minimise
    weight: float
    scale: float = 1.0
    reference: float | None = None  # hypervolume reference, in the objective's own units


@dataclass
class SearchResult:
    run_dir: Path
    evaluated: int  # evaluations run in this session (replayed ones not counted)
    candidates: int  # candidate recipes of the whole run
    duplicates: int
    failed: int
    best_number: int | None
    best_fitness: float | None
    examples_scored: float = 0.0  # evaluation cost of the whole run, in examples
    examples_at_top: float = 0.0  # what scoring every candidate at the top level would cost
    ledger: Path | None = None


@dataclass
class Progress:
    """What a live display shows after each completion."""

    candidates: int
    budget: int
    evaluations: int
    in_flight: int
    best_fitness: float | None
    best_number: int | None
    front_size: int
    elapsed: float
    eta: float | None
    message: str = ""


def bind_objectives(config: RunConfig, config_path: Path):
    """The run's tasks (each loaded once, however many of its metrics count) and objectives."""
    from evomerge.eval import load_task

    tasks: dict[str, object] = {}
    objectives = []
    for spec in config.objectives:
        task = tasks.get(spec.task) or load_task(
            spec.task, split=config.split, fitness=True, allow_test_split=config.allow_test_split
        )
        tasks[spec.task] = task
        names = {o.name: o for o in task.objectives()}
        metric = spec.metric or next(iter(names))
        if metric not in names:
            raise RunConfigError(
                f"{config_path}: objectives: task {spec.task!r} has no objective {metric!r} "
                f"(it has {', '.join(names)})."
            )
        objectives.append(BoundObjective(f"{task.name}/{metric}", names[metric].sign, spec.weight, spec.scale,
                                         spec.reference))
    return list(tasks.values()), objectives


def unique_objectives(objectives: list[BoundObjective]) -> list[BoundObjective]:
    """Objectives named twice (same task and metric) count once on a front; a reference
    declared on any of them counts."""
    from dataclasses import replace

    out: dict[str, BoundObjective] = {}
    for o in objectives:
        first = out.setdefault(o.key, o)
        if first.reference is None and o.reference is not None:
            out[o.key] = replace(first, reference=o.reference)
    return list(out.values())


def pareto_told(config: RunConfig, optimizer_cls, objectives: list[BoundObjective]) -> bool:
    """Whether the optimiser is told every objective (else one weighted sum)."""
    n = len(unique_objectives(objectives))
    if config.scalarization == "weighted_sum" or n == 1:
        return False
    supports = optimizer_cls.max_objectives is None
    if config.scalarization == "pareto" and not supports:
        raise RunConfigError(
            f"scalarization: pareto needs a multi-objective optimiser (nsga2, tpe, gp, random); "
            f"{config.optimizer.name} optimises one value: use scalarization: weighted_sum."
        )
    return supports


def prepare(config: RunConfig, config_path: Path):
    """Everything a run needs, validated before any model is loaded."""
    from evomerge.search.optimizers import OPTIMIZERS
    from evomerge.search.space import load_space

    here = config_path.resolve().parent
    space = load_space(here / config.space)
    tasks, objectives = bind_objectives(config, config_path)
    cls = OPTIMIZERS.get(config.optimizer.name)
    n_told = len(unique_objectives(objectives)) if pareto_told(config, cls, objectives) else 1
    try:
        optimizer = cls(space.dimension, n_told, config.seed, **config.optimizer.options)
    except (TypeError, ValueError) as e:
        raise RunConfigError(
            f"{config_path}: optimizer: {config.optimizer.name} cannot be built with options "
            f"{config.optimizer.options} ({e})."
        ) from None
    if config.warm_start:
        optimizer.warm_start([_warm_point(space, p, i, config_path) for i, p in enumerate(config.warm_start)])
    for task in tasks:
        levels = [lv for lv in config.levels() if lv is not None]
        size = task.size()
        if size is not None and levels and max(levels) > size:
            raise RunConfigError(
                f"{config_path}: fidelity {max(levels)} is more than the {size} examples of task "
                f"{task.name!r}; use a smaller level or null (all examples)."
            )
    return space, tasks, objectives, optimizer, here


def _warm_point(space, point: dict, index: int, config_path: Path) -> np.ndarray:
    genes = {g.name: g for g in space.genes()}
    unknown = sorted(set(point) - set(genes))
    if unknown:
        raise RunConfigError(
            f"{config_path}: warm_start[{index}]: unknown gene(s) {unknown}; "
            f"`evomerge space show` lists this space's genes."
        )
    x = np.full(len(genes), 0.5)
    for i, (name, g) in enumerate(genes.items()):
        if name in point:
            try:
                x[i] = g.encode(point[name])
            except ValueError as e:
                raise RunConfigError(f"{config_path}: warm_start[{index}].{name}: {e}.") from None
    return x


def top_rung(config: RunConfig) -> int:
    return len(config.levels()) - 1


def load_run(run_dir: Path) -> tuple[RunConfig, list[BoundObjective], list[TrialRecord]]:
    """A run's config, objectives and complete trials at its top fidelity (in order)."""
    config_path = run_dir / "run.yaml"
    if find_ledger(run_dir) is None or not config_path.is_file():
        raise EvomergeError(f"{run_dir} is not a search run (no ledger.db or ledger.jsonl, or no run.yaml).")
    config = RunConfig.load(config_path)
    _, objectives = bind_objectives(config, config_path)
    ledger = open_ledger(run_dir, readonly=True)
    try:
        top = top_rung(config)
        complete = [t for t in ledger.trials("complete") if t.scores and t.rung == top]
    finally:
        ledger.close()
    if not complete:
        raise EvomergeError(f"{run_dir} has no trial complete at the top fidelity yet.")
    return config, objectives, complete


def best_trial(trials: list[TrialRecord], objectives: list[BoundObjective]) -> TrialRecord:
    """The fittest trial; on ties, the earliest."""
    return max(trials, key=lambda t: (fitness(t.scores, objectives), -t.number))


def fitness(scores: dict[str, float], objectives: list[BoundObjective]) -> float:
    """The declared scalarisation: a weighted sum of scaled objectives, 'larger is better'."""
    total = sum(o.weight for o in objectives)
    return sum(o.weight * o.sign * scores[o.key] / o.scale for o in objectives) / total


# --- the loop -------------------------------------------------------------------------


@dataclass
class _Job:
    id: int
    candidate: Candidate
    bracket: Bracket
    rung: int
    fidelity: int | None
    number: int | None = None  # its ledger row

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.candidate.digest, self.fidelity)


@dataclass
class _State:
    brackets: list[Bracket] = field(default_factory=list)
    queue: deque = field(default_factory=deque)  # jobs ready to submit
    instant: deque = field(default_factory=deque)  # jobs whose result is already known
    waiting: dict = field(default_factory=dict)  # key -> jobs sharing one evaluation in flight
    in_flight: dict = field(default_factory=dict)  # job id -> job (submitted, live)
    held: list = field(default_factory=list)  # replay: jobs submitted, waiting for their record
    results: dict = field(default_factory=dict)  # key -> Outcome
    candidates: int = 0
    duplicates: int = 0
    evaluated: int = 0
    failed: int = 0
    next_job: int = 0
    best: tuple[float, int] | None = None  # (fitness, trial = candidate number) at the top level
    best_at: int = 0  # candidates done when the best last improved
    done: int = 0  # candidates whose bracket finished
    top_points: dict = field(default_factory=dict)  # digest -> objective vector at the top level
    examples: float = 0.0


class Controller:
    def __init__(self, config, space, tasks, objectives, optimizer, executor, ledger, *,
                 budget: int, log: Callable[[str], None], progress: Callable[[Progress], None] | None,
                 tracker=None) -> None:
        self.config, self.space, self.objectives = config, space, objectives
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
        self.sizes = [t.size() for t in tasks]
        self.budget = budget
        self.log = log
        self.progress = progress
        self.tracker = tracker
        self.s = _State()
        self.replay: deque[TrialRecord] = deque()
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
        asks = s.candidates + s.duplicates
        budget = self.budget
        if self.replay and self.sessions:
            session = next(x for x in reversed(self.sessions) if x.start <= self.consumed)
            budget = session.budget
            if session.closed_asks is not None and asks >= session.closed_asks:
                return False
        if s.candidates >= budget or s.duplicates > 10 * budget:
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
        candidates: list[Candidate] = []
        s = self.s
        size, start = self.schedule[self.brackets_started % len(self.schedule)]
        while len(candidates) < size and self._may_ask():
            suggestion = self.optimizer.ask()
            if suggestion is None:  # CMA-ES waits for the rest of its generation
                break
            recipe = self.space.decode(suggestion.x)
            digest = recipe.content_hash()
            c = Candidate(suggestion.id, s.candidates + s.duplicates, suggestion.x, recipe, digest)
            key = (digest, self.rungs.levels[start])
            if key in s.results or key in s.waiting or any(x.digest == digest for x in candidates):
                s.duplicates += 1  # scored already: told its result, not counted against the budget
            else:
                s.candidates += 1
            candidates.append(c)
        if not candidates:
            return False
        bracket = Bracket(candidates, self.rungs, start)
        self.brackets_started += 1
        s.brackets.append(bracket)
        for c in candidates:
            self._add_job(c, bracket, start)
        return True

    def _add_job(self, c: Candidate, bracket: Bracket, rung: int) -> None:
        s = self.s
        job = _Job(s.next_job, c, bracket, rung, self.rungs.levels[rung])
        s.next_job += 1
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
        c = job.candidate
        job.number = self.ledger.start(
            c.number, job.rung, c.digest, [float(v) for v in c.x], c.recipe.to_yaml(), job.fidelity
        )
        self.s.in_flight[job.id] = job
        self.executor.submit(job.id, c.recipe, job.fidelity)

    def _collect(self) -> tuple[_Job, Outcome]:
        s = self.s
        if self.replay:
            rec = self.replay[0]
            match = next((j for j in s.held if j.key == (rec.recipe_hash, rec.fidelity)), None)
            if match is not None:
                self.replay.popleft()
                self.consumed += 1
                s.held.remove(match)
                match.number = rec.number
                return match, Outcome(rec.scores, rec.error, rec.seconds or 0.0)
            self.log(
                f"resume: the ledger's completion {rec.number} does not follow from the replay "
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
        self.ledger.finish(job.number, outcome.values, outcome.error, outcome.seconds)
        if self.tracker is not None:
            self.tracker.add(self.ledger.get(job.number))
        s.evaluated += 1
        return job, outcome

    # -- reacting --------------------------------------------------------------------

    def _scalar(self, scores: dict[str, float]) -> float:
        return fitness(scores, self.objectives)

    def _rank_key(self, scores: dict[str, float]) -> tuple[float, ...]:
        return (self._scalar(scores), *(o.sign * scores[o.key] for o in self.unique))

    def _on_result(self, job: _Job, outcome: Outcome, fresh: bool) -> None:
        s = self.s
        jobs = s.waiting.pop(job.key, [job]) if fresh else [job]
        if fresh:
            s.results[job.key] = outcome
            s.examples += sum(self.rungs.cost(job.fidelity, n) for n in self.sizes if n is not None)
            if outcome.values is None:
                s.failed += 1
                if not self.replay:
                    self.log(f"trial {job.candidate.number}: failed at fidelity {job.fidelity} ({outcome.error})")
        for j in jobs:
            j.candidate.scores[j.rung] = outcome.values
            if outcome.values is not None and j.rung == len(self.rungs.levels) - 1:
                self._record_top(j, outcome.values)
        for bracket in {id(j.bracket): j.bracket for j in jobs}.values():
            self._advance(bracket)

    def _record_top(self, job: _Job, values: dict[str, float]) -> None:
        s = self.s
        f = self._scalar(values)
        if s.best is None or f > s.best[0]:
            s.best = (f, job.candidate.number)
            job.bracket.improved = True  # patience counts from the end of this bracket
        s.top_points[job.candidate.digest] = [o.sign * values[o.key] for o in self.unique]

    def _advance(self, bracket: Bracket) -> None:
        while not bracket.done and bracket.rung_complete():
            for c in bracket.advance(self._rank_key):
                self._add_job(c, bracket, bracket.rung)
        if bracket.done and bracket in self.s.brackets:
            self.s.brackets.remove(bracket)
            for c in bracket.candidates:
                _, scores = c.final()
                if scores is None:
                    told = None
                elif self.tell_all:
                    told = tuple(o.sign * scores[o.key] for o in self.unique)
                else:
                    told = (self._scalar(scores),)
                self.optimizer.tell(c.id, told)
            self.s.done += len(bracket.candidates)
            if bracket.improved:
                self.s.best_at = self.s.done
            self._report()

    def _report(self) -> None:
        if self.progress is None or self.replay:
            return
        from evomerge.search.front import pareto_mask

        s = self.s
        elapsed = time.monotonic() - self.t0
        rate_done = max(s.done - self._done_at_start, 0)
        eta = None
        if rate_done:
            eta = (self.budget - min(s.candidates, self.budget) + self._busy()) * elapsed / rate_done
        front = 0
        if s.top_points:
            front = int(pareto_mask(np.array(list(s.top_points.values()))).sum())
        self.progress(Progress(
            candidates=s.candidates, budget=self.budget, evaluations=s.evaluated, in_flight=self._busy(),
            best_fitness=s.best[0] if s.best else None, best_number=s.best[1] if s.best else None,
            front_size=front, elapsed=elapsed, eta=eta,
        ))

    # -- the loop --------------------------------------------------------------------

    def run(self, replay: list[TrialRecord]) -> None:
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


def run_search(
    config_path: Path,
    run_dir: Path,
    *,
    trials: int | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress: Callable[[Progress], None] | None = None,
) -> SearchResult:
    """Start a run in ``run_dir``, or with ``resume`` continue the one there."""
    config = RunConfig.load(config_path)
    space, tasks, objectives, optimizer, here = prepare(config, config_path)
    has_run = find_ledger(run_dir) is not None
    if has_run and not resume:
        raise EvomergeError(
            f"{run_dir} already holds a run; continue it with `evomerge resume {run_dir}` "
            f"or choose another --out."
        )
    if resume and not has_run:
        raise EvomergeError(f"{run_dir} holds no run to resume (no ledger.db or ledger.jsonl).")
    from evomerge.merge.engine import resolve_model_path

    space_path = (here / config.space).resolve()
    refs = space.source_models()
    try:
        sources = {r: resolve_model_path(r, [space_path.parent, here]) for r in refs}
        missing = [str(p) for p in sources.values() if not Path(p).is_dir()]
        if missing:
            raise EvomergeError(f"Model {missing[0]} is not a directory.")
    except EvomergeError as e:
        hint = " (the toy zoo: run `evomerge zoo build` first)" if "zoo" in str(e) else ""
        raise EvomergeError(
            f"{space_path}: a source model of the space cannot be found: {e} Paths are relative to "
            f"the space file's folder; fix base_model / models there{hint}."
        ) from None
    spec = WorkerSpec(
        sources=sources,
        base=refs[0],
        tasks=tuple(TaskSpec(t.name, config.split, config.allow_test_split) for t in tasks),
        device=config.device,
        torch_threads=config.executor.torch_threads,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # the run keeps its own config, with paths that work from anywhere
        frozen = config.model_copy(update={"space": str(space_path)})
        atomic_write_text(run_dir / "run.yaml", yaml.safe_dump(frozen.model_dump(), sort_keys=False))
    ledger = open_ledger(run_dir, config.ledger)
    executor = tracker = None
    finished = False
    try:
        abandoned = ledger.abandon_running()
        if abandoned:
            log(f"{abandoned} evaluation(s) were in flight when the run stopped; they run again")
        tracker = start_tracking(run_dir, space, objectives, ledger, log)
        executor = make_executor(spec, config.executor.workers, tasks=tasks)
        controller = Controller(
            config, space, tasks, objectives, optimizer, executor, ledger,
            budget=trials or config.budget.trials, log=log, progress=progress, tracker=tracker,
        )
        finished = False
        controller.run(ledger.completions())
        finished = True
        s = controller.s
        complete = [t for t in ledger.trials("complete") if t.scores and t.rung == top_rung(config)]
    finally:
        if executor is not None:
            executor.close()
        if tracker is not None and tracker.close("FINISHED" if finished else "KILLED") and finished:
            log(f"tracked in MLflow ({tracker.tracker.uri}); `evomerge ui {run_dir}` shows it")
        ledger.close()
    best = best_trial(complete, objectives) if complete else None
    sizes = [n for n in controller.sizes if n is not None]
    top = controller.rungs.levels[-1]
    return SearchResult(
        run_dir,
        evaluated=s.evaluated,
        candidates=s.candidates,
        duplicates=s.duplicates,
        failed=s.failed,
        best_number=best.candidate if best else None,  # trials are numbered by candidate
        best_fitness=fitness(best.scores, objectives) if best else None,
        examples_scored=s.examples,
        examples_at_top=s.candidates * sum(controller.rungs.cost(top, n) for n in sizes),
        ledger=find_ledger(run_dir),
    )


def start_tracking(run_dir: Path, space, objectives, ledger, log):
    """The run's MLflow tracker on a background thread, or None when tracking is off."""
    config = RunConfig.load(run_dir / "run.yaml")  # the frozen config: what gets logged
    if not config.tracking.enabled:
        return None
    from evomerge.tracking.mlflow_tracker import BackgroundTracker, MLflowTracker

    tracker = MLflowTracker(run_dir, config, objectives, space.genes(),
                            settings=config.tracking, log=log)
    return BackgroundTracker(tracker, ledger.completions())


def resume_search(
    run_dir: Path, *, trials: int | None = None, log: Callable[[str], None] = print,
    progress: Callable[[Progress], None] | None = None,
) -> SearchResult:
    config_path = run_dir / "run.yaml"
    if not config_path.is_file():
        raise EvomergeError(f"{run_dir} holds no run to resume (no run.yaml).")
    return run_search(config_path, run_dir, trials=trials, resume=True, log=log, progress=progress)
