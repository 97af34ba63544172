"""A run's plan before any compute: its fidelity schedule, what the budget costs, how long it may take.

``evomerge search --dry-run`` shows this after every check passed. The schedule
follows the controller's own rules (``fidelity.Rungs``: a bracket scores its
trials at its first rung and promotes ``max(1, n // eta)`` to the next), so the
number of evaluations is what the controller runs when no trial fails, none
is a duplicate and the budget is trials (a wall-time or patience budget stops
sooner). The wall time is an estimate extrapolated from evaluations timed on
this machine; ``assumptions`` says what it takes for granted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from evomerge.search.fidelity import Rungs, hyperband_schedule


@dataclass(frozen=True)
class Rung:
    level: int | None  # examples per task (None: all)
    examples: int  # examples one evaluation at this level scores, over the tasks of known size
    per_bracket: int  # trials a full bracket scores at this rung (0: its brackets start higher)
    evaluations: int  # over the whole run


@dataclass(frozen=True)
class Schedule:
    rungs: tuple[Rung, ...]
    brackets: int
    trials: int
    kind: str  # single | successive_halving | hyperband

    @property
    def evaluations(self) -> int:
        return sum(r.evaluations for r in self.rungs)

    @property
    def examples(self) -> int:
        return sum(r.evaluations * r.examples for r in self.rungs)

    @property
    def examples_at_top(self) -> int:
        """What scoring every trial at the top level would cost."""
        return self.trials * self.rungs[-1].examples


def schedule(config, task_sizes: list[int | None], trials: int) -> Schedule:
    """The evaluations ``trials`` trials of ``config`` take, rung by rung."""
    levels = config.levels()
    mf = config.multi_fidelity
    rungs = Rungs(levels, mf.eta if mf else 3)
    if mf is None:
        shapes, kind = [(1, 0)], "single"
    elif mf.schedule == "hyperband":
        shapes, kind = hyperband_schedule(len(levels), mf.eta), "hyperband"
    else:
        shapes, kind = [(mf.bracket, 0)], "successive_halving"
    evaluations = [0] * len(levels)
    per_bracket = [0] * len(levels)
    for size, start in shapes:  # a full bracket of each shape (hyperband: the first cycle)
        _climb(rungs, size, start, per_bracket)
    left, brackets = trials, 0
    while left > 0:
        size, start = shapes[brackets % len(shapes)]
        n = min(size, left)
        left -= n
        brackets += 1
        _climb(rungs, n, start, evaluations)
    sizes = [n for n in task_sizes if n is not None]
    return Schedule(
        tuple(Rung(lv, sum(rungs.cost(lv, n) for n in sizes), per_bracket[i], evaluations[i])
              for i, lv in enumerate(levels)),
        brackets, trials, kind,
    )


def _climb(rungs: Rungs, n: int, start: int, counts: list[int]) -> None:
    """As ``Bracket`` climbs (``Rungs.rung_for``: a lone candidate goes straight to the top)."""
    top = len(rungs.levels) - 1
    r = rungs.rung_for(start, n)
    while True:
        counts[r] += n
        if r == top:
            return
        n = rungs.promoted(n)
        r = rungs.rung_for(r + 1, n)


@dataclass(frozen=True)
class Timing:
    """Evaluations of one recipe timed on this machine, by level, and the worker's start-up."""

    load_seconds: float
    seconds: dict[int | None, float]  # level -> seconds of one evaluation there
    first_seconds: float  # the first evaluation, warm-up included (not used for the estimate)


def time_recipe(worker, recipe, levels: tuple[int | None, ...],
                load_seconds: float) -> tuple[Timing | None, str | None]:
    """Time ``recipe`` on a loaded ``worker`` at the lowest and the top level (one warm-up at the
    lowest first: a worker's first forward pass pays one-time costs later ones do not).

    Returns ``(timing, None)``, or ``(None, reason)`` when the evaluation failed."""
    first = worker.evaluate(recipe, levels[0])
    if first.error is not None:
        return None, first.error
    seconds = {}
    for level in dict.fromkeys((levels[0], levels[-1])):
        t0 = time.perf_counter()
        out = worker.evaluate(recipe, level)
        if out.error is not None:
            return None, out.error
        seconds[level] = time.perf_counter() - t0
    return Timing(load_seconds, seconds, first.seconds), None


@dataclass(frozen=True)
class Estimate:
    seconds: float
    serial_seconds: float  # every evaluation one after another
    parallel: float  # evaluations at once the estimate assumes
    per_rung: tuple[float, ...]  # seconds of one evaluation at each rung
    assumptions: list[str] = field(default_factory=list)


def estimate(sched: Schedule, timing: Timing, parallel: float, load_average: float | None = None) -> Estimate:
    """Wall time: the worker's start-up, then every evaluation spread over ``parallel`` slots.

    Levels between the two timed ones are interpolated linearly in examples scored."""
    lo, hi = sched.rungs[0], sched.rungs[-1]
    t_lo, t_hi = timing.seconds[lo.level], timing.seconds[hi.level]
    per_rung = []
    for r in sched.rungs:
        span = hi.examples - lo.examples
        share = (r.examples - lo.examples) / span if span else 1.0
        per_rung.append(t_lo + (t_hi - t_lo) * share)
    serial = sum(r.evaluations * t for r, t in zip(sched.rungs, per_rung, strict=True))
    assumptions = [
        "every trial takes as long as the timed recipe (deeper or shallower recipes, and other "
        "methods, take more or less)",
        "no trial fails and none repeats an earlier one (both end sooner)",
        f"{parallel:g} evaluation(s) at once, the slots always busy, the workers started together",
        "the controller's, the optimiser's and MLflow's own time not counted",
    ]
    if len(sched.rungs) > 2:
        assumptions.insert(1, "levels between the lowest and the top cost in proportion to their examples")
    if load_average is not None:
        assumptions.append(f"the machine as loaded as while timing (load average {load_average:.1f})")
    return Estimate(timing.load_seconds + serial / parallel, serial, parallel, tuple(per_rung), assumptions)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@dataclass
class RunPlan:
    """Everything ``--dry-run`` found: the run as it would go, once every check passed."""

    config_path: str
    space_file: str
    space_kind: str
    genes: list  # the space's genes (``Gene``)
    sources: dict[str, str]  # reference -> directory
    tasks: list[tuple[str, int | None]]  # name, examples on the split (None: not counted)
    objectives: list[str]
    optimizer: str
    optimizer_options: dict
    told: str  # what the optimiser is told
    schedule: Schedule
    budget_seconds: float | None
    executor: str  # kind and workers, in words
    parallel: float
    storage: list[tuple[str, str]]  # (what, where and its state)
    timed_recipe: str  # the recipe timed, in words
    estimate: Estimate | None = None
    timing: Timing | None = None
    not_timed: str | None = None  # why there is no estimate
    notes: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)  # "metric <= bound", as bound


GENES_SHOWN = 12


def print_plan(plan: RunPlan, console) -> None:
    """The plan for a person, with rich."""
    from rich.markup import escape
    from rich.table import Table

    out = console.print
    out(f"[bold]Dry run of {escape(plan.config_path)}[/]: every check passed; nothing was written.")
    out(f"sources: {len(plan.sources)} models, readable and fit together ({escape(', '.join(plan.sources))})",
        highlight=False)
    tasks = ", ".join(n if k is None else f"{n} ({k} examples)" for n, k in plan.tasks)
    out(f"tasks: {escape(tasks)}; data loaded. objectives: {escape(', '.join(plan.objectives))}", highlight=False)
    if plan.constraints:
        how = {"cmaes": "told as a penalty", "random": "not told (random search learns nothing)"}.get(
            plan.optimizer, "told as Optuna constraints")
        out(f"constraints: {escape(', '.join(plan.constraints))} (task metrics judged at the top "
            f"fidelity; {how}; best, front and export count feasible trials only)", highlight=False)

    out(f"space: {escape(plan.space_file)} ({plan.space_kind})", highlight=False)
    genes = Table(title=f"{len(plan.genes)} genes", title_justify="left")
    genes.add_column("#", justify="right")
    genes.add_column("gene")
    genes.add_column("range")
    for i, g in enumerate(plan.genes[:GENES_SHOWN]):
        genes.add_row(str(i), escape(g.name), escape(g.describe()))
    if len(plan.genes) > GENES_SHOWN:
        genes.add_row("", f"... {len(plan.genes) - GENES_SHOWN} more (`evomerge space show` lists all)", "")
    out(genes)
    options = ", ".join(f"{k}: {v}" for k, v in plan.optimizer_options.items()) or "defaults"
    out(f"optimizer: {plan.optimizer} ({escape(options)}); told {plan.told}", highlight=False)

    s = plan.schedule
    how = {"single": "one evaluation per trial",
           "successive_halving": f"successive halving, {s.brackets} brackets",
           "hyperband": f"hyperband, {s.brackets} brackets"}[s.kind]
    rungs = Table(title=f"fidelity schedule: {how}", title_justify="left")
    rungs.add_column("rung", justify="right")
    rungs.add_column("examples per task", justify="right")
    if s.kind != "single":
        rungs.add_column("trials per bracket", justify="right")
    rungs.add_column("evaluations", justify="right")
    rungs.add_column("examples scored", justify="right")
    if plan.estimate is not None:
        rungs.add_column("s per evaluation", justify="right")
    for i, r in enumerate(s.rungs):
        row = [str(i), "all" if r.level is None else str(r.level)]
        if s.kind != "single":
            row.append(str(r.per_bracket))
        row += [str(r.evaluations), f"{r.evaluations * r.examples:,}"]
        if plan.estimate is not None:
            row.append(f"{plan.estimate.per_rung[i]:.2f}")
        rungs.add_row(*row)
    out(rungs)
    saved = ""
    if s.examples_at_top and s.examples < s.examples_at_top:
        saved = f" ({s.examples / s.examples_at_top:.0%} of scoring every trial at the top level)"
    stop = f"; stops asking after {duration(plan.budget_seconds)}" if plan.budget_seconds else ""
    out(f"budget: {s.trials} trials -> {s.evaluations} evaluations, {s.examples:,} examples{saved}{stop}",
        highlight=False)
    out(f"executor: {escape(plan.executor)}", highlight=False)
    for what, where in plan.storage:
        out(f"{what}: {escape(where)}", highlight=False)
    for note in plan.notes:
        out(f"note: {escape(note)}", highlight=False)
    if plan.estimate is None:
        out(f"wall time: not estimated ({escape(plan.not_timed or 'not timed')})", highlight=False)
        return
    e, t = plan.estimate, plan.timing
    capped = plan.budget_seconds is not None and e.seconds > plan.budget_seconds
    cap = f" (the budget's {duration(plan.budget_seconds)} stops it first)" if capped else ""
    timed = ", ".join(f"{secs:.2f} s at {'all' if lv is None else lv} examples per task"
                      for lv, secs in t.seconds.items())
    out(f"[bold]wall time: about {duration(e.seconds)}[/]{cap}, an estimate: a worker loaded in "
        f"{t.load_seconds:.1f} s and {escape(plan.timed_recipe)} took {timed} (its first evaluation, warm-up "
        f"included, {t.first_seconds:.2f} s), extrapolated over {s.evaluations} evaluations, "
        f"{e.parallel:g} at a time.", highlight=False)
    out("it assumes: " + "; ".join(e.assumptions) + ".", highlight=False)
