"""Anchor subsets as fidelity levels: chosen once, from the run's first trials, then kept.

With ``multi_fidelity: {subsets: anchors}`` the first ``calibration`` trials of a run (by trial
number) are scored at the top level only, and each result carries every scored example's
outcome per task. When all of them have finished, the anchors are chosen
(``evomerge.eval.anchors``) from the outcomes of those that succeeded: rows in trial-number order
(one per trial and metric), columns the top level's examples, so the choice follows from the
trials and the seed, never from the order they completed in. From then on an evaluation below the
top level scores, per task, the first ``level`` anchors and reports their weighted estimate of
the top level's score instead of the mean over ``level`` random examples. Anchors are nested as
random levels are, so a promoted candidate's next level is a superset of its last. The top level
is unchanged. Tasks that report no per-example outcomes keep random subsets.

Files in the run directory: ``calibration.jsonl`` gets each calibration result's outcomes as it
finishes, before the ledger records it, so a resumed run chooses the same anchors (the ledger
keeps scores, not examples); ``anchors.json`` (written atomically once chosen) says which
examples stand for the split at each level and with what weight.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from evomerge.config.run import RunConfigError
from evomerge.eval.anchors import AnchoredLevel, WeightedSubset, anchor_order, anchor_subset
from evomerge.io.atomic import atomic_write_text

# Constant examples (alike for every calibration trial) claim half their share of the anchors:
# calibration trials that all fail a skill make most of its examples constant, and anchors that
# left them out would not see a later candidate learn it (the zoo, MOTPE with 8 calibration
# trials: a front without addition). Half costs little where calibration is representative
# (benchmarks/anchor_subsets.py, recall + addition_mc at 32: rho 0.886 against 0.891 at 0, 0.863
# at 1, random 0.738).
CONSTANT_SHARE = 0.5
CALIBRATION_FILE = "calibration.jsonl"
ANCHORS_FILE = "anchors.json"


def check_anchorable(config, tasks, config_path: Path) -> None:
    """Refuse, before any compute, anchors for a run none of whose tasks reports per-example
    outcomes."""
    mf = config.multi_fidelity
    if mf is None or mf.subsets != "anchors" or any(getattr(t, "per_example", False) for t in tasks):
        return
    kinds = ", ".join(f"{t.name} ({type(t).__name__})" for t in tasks)
    raise RunConfigError(
        f"{config_path}: multi_fidelity.subsets: anchors needs a task that reports each example's "
        f"outcome (exact_match or loglikelihood tasks), and this run has {kinds}; use subsets: "
        f"random (the default)."
    )


def anchoring_for(config, run_dir: Path, log: Callable[[str], None]) -> Anchoring | None:
    """The run's ``Anchoring``, or None where its lower levels are random subsets."""
    mf = config.multi_fidelity
    if mf is None or mf.subsets != "anchors":
        return None
    return Anchoring(run_dir, mf.calibration, config.levels(), config.seed, log)


class Anchoring:
    """The anchor levels of one run. ``levels``: the run's fidelity levels, cheapest first."""

    def __init__(self, run_dir: Path, calibration: int, levels: tuple[int | None, ...], seed: int,
                 log: Callable[[str], None]) -> None:
        self.run_dir = Path(run_dir)
        self.calibration = calibration
        self.levels = levels
        self.seed = seed
        self.log = log
        self.finished: set[int] = set()  # calibration trials with a top-level result (or failure)
        self.by_rung: dict[int, AnchoredLevel] | None = None  # None until the anchors are chosen
        self.rows: dict[int, dict[str, dict]] = self._read_rows()

    # -- the controller's questions ------------------------------------------------------

    def calibrates(self, trial_number: int) -> bool:
        """Whether this trial is scored at the top level to choose the anchors from."""
        return trial_number < self.calibration

    def waiting(self, asked: int) -> bool:
        """Whether new brackets must wait: every calibration trial asked, anchors not chosen."""
        return self.by_rung is None and asked >= self.calibration

    def fidelity(self, rung: int, level: int | None):
        """What a job at ``rung`` scores: its anchored level once chosen, else ``level``."""
        return (self.by_rung or {}).get(rung, level)

    def save(self, trial_number: int, examples: dict[str, dict]) -> None:
        """A calibration trial's per-example outcomes, as its result arrives (live only)."""
        if trial_number not in self.rows:
            self._append(trial_number, examples)

    def finished_trial(self, trial_number: int) -> None:
        """A trial's top-level result is in (a failure too); the last calibration one chooses."""
        if not self.calibrates(trial_number) or trial_number in self.finished:
            return
        self.finished.add(trial_number)
        if len(self.finished) >= self.calibration and self.by_rung is None:
            self._choose()

    # -- choosing ------------------------------------------------------------------------

    def _choose(self) -> None:
        numbers = sorted(n for n in self.rows if n in self.finished)
        self.by_rung = {}
        if len(numbers) < 2:
            self.log(f"anchors: {len(numbers)} of the {self.calibration} calibration trials reported "
                     f"per-example outcomes; lower levels keep random subsets")
            return
        tasks = sorted(set.intersection(*(set(self.rows[n]) for n in numbers)))
        chosen: dict[str, dict[int, WeightedSubset]] = {}
        report: dict[str, dict] = {}
        for task in tasks:
            columns, correct = _matrix([self.rows[n][task] for n in numbers])
            if correct is None:
                continue
            wanted = [lv for lv in self.levels[:-1] if lv is not None and lv < len(columns)]
            if not wanted:
                continue
            order = anchor_order(correct, max(wanted), self.seed, constant_share=CONSTANT_SHARE)
            chosen[task] = {}
            for k in wanted:
                sub = anchor_subset(correct, order, k)
                chosen[task][k] = WeightedSubset(columns[sub.indices], sub.weights, sub.fixed_share,
                                                 sub.fixed_value)
            report[task] = {"order": columns[order].tolist(), "levels": {
                str(k): {"indices": s.indices.tolist(), "weights": s.weights.tolist(),
                         "fixed_share": s.fixed_share, "fixed_value": s.fixed_value}
                for k, s in chosen[task].items()}}
        for rung, level in enumerate(self.levels[:-1]):
            subsets = {t: by_k[level] for t, by_k in chosen.items() if level in by_k}
            if subsets:
                self.by_rung[rung] = AnchoredLevel(level, subsets)
        atomic_write_text(self.run_dir / ANCHORS_FILE, json.dumps(
            {"calibration_trials": numbers, "seed": self.seed, "tasks": report}, indent=1))
        self.log(f"anchors chosen from {len(numbers)} calibration trials for "
                 f"{', '.join(chosen) or 'no task'}; lower levels score them ({ANCHORS_FILE})")

    # -- the calibration file ------------------------------------------------------------

    def _append(self, trial_number: int, examples: dict[str, dict]) -> None:
        self.rows[trial_number] = examples
        line = json.dumps({"trial": trial_number, "tasks": examples}) + "\n"
        with open(self.run_dir / CALIBRATION_FILE, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())  # before the ledger records the result a resume relies on

    def _read_rows(self) -> dict[int, dict[str, dict]]:
        path = self.run_dir / CALIBRATION_FILE
        rows: dict[int, dict[str, dict]] = {}
        if not path.is_file():
            return rows
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: its trial runs again
                continue
            rows.setdefault(int(row["trial"]), row["tasks"])
        return rows


def _matrix(results: list[dict]) -> tuple[np.ndarray, np.ndarray | None]:
    """(the top level's example indices, outcomes: one row per result and metric), or None for
    the outcomes where the results did not score the same examples."""
    columns = np.asarray(results[0]["indices"], dtype=int)
    rows = []
    for r in results:
        if r["indices"] != results[0]["indices"]:
            return columns, None
        rows += [r["outcomes"][m] for m in sorted(r["outcomes"])]
    return columns, np.asarray(rows, dtype=float)
