"""A live one-line report per finished trial: done, in flight, best, front, infeasible, ETA."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Progress:
    """What a live display shows after each completion."""

    trials: int
    budget: int
    evaluations: int
    in_flight: int
    best_fitness: float | None
    best_trial: int | None
    front_size: int
    elapsed: float
    eta: float | None
    message: str = ""
    infeasible: int = 0  # trials scored at the top fidelity that miss a constraint


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def format_progress(p: Progress) -> str:
    best = "-" if p.best_fitness is None else f"{p.best_fitness:.4f} (trial {p.best_trial})"
    width = len(str(p.budget))
    infeasible = f" | {p.infeasible} infeasible" if p.infeasible else ""
    return (
        f"[{p.trials:>{width}}/{p.budget}] {p.evaluations} evaluations, {p.in_flight} in flight | "
        f"best {best} | front {p.front_size}{infeasible} | {_clock(p.elapsed)} elapsed, "
        f"ETA {_clock(p.eta)}"
    )


class ProgressPrinter:
    def __init__(self, console) -> None:
        self.console = console

    def __call__(self, p: Progress) -> None:
        self.console.print(format_progress(p), highlight=False)
