"""A run directory: the frozen config (``run.yaml``), the ledger, and what readers load from them.

``evomerge search`` freezes the run's config into the directory with the space
as an absolute path, so ``resume``, ``front``, ``export`` and ``track`` work from
any working directory. Source models are resolved against the space file's
folder (then the config's), and a missing one fails before any output with the
fix named.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from evomerge.config.run import RunConfig
from evomerge.errors import EvomergeError
from evomerge.io.atomic import atomic_write_text
from evomerge.search.constraints import BoundConstraint, bind_constraints
from evomerge.search.ledgers import EvaluationRecord, find_ledger, open_ledger
from evomerge.search.objectives import BoundObjective, bind_objectives

RUN_FILE = "run.yaml"
LOCK_FILE = "controller.lock"


def top_rung(config: RunConfig) -> int:
    """The index of the top fidelity level (the one a trial's final score is taken at)."""
    return len(config.levels()) - 1


def has_run(run_dir: Path) -> bool:
    return find_ledger(run_dir) is not None


def space_path(config: RunConfig, config_path: Path) -> Path:
    return (Path(config_path).resolve().parent / config.space).resolve()


def freeze_config(config: RunConfig, config_path: Path, run_dir: Path) -> None:
    """Write the run's own config, with paths that work from anywhere."""
    from evomerge.eval.task import absolute_include_path

    frozen = config.model_copy(update={"space": str(space_path(config, config_path))}).model_dump()
    here = Path(config_path).resolve().parent
    # an inline lm-eval task's directories
    frozen["objectives"] = [absolute_include_path(o, here) for o in frozen["objectives"]]
    atomic_write_text(Path(run_dir) / RUN_FILE, yaml.safe_dump(frozen, sort_keys=False))


def resolve_sources(space, config: RunConfig, config_path: Path) -> dict[str, Path]:
    """Every source model of ``space`` as a directory (``evomerge.io.sources``: local paths,
    Hub ids from the cache or downloaded, ``MODEL+ADAPTER``), or an error naming the space file."""
    from evomerge.io.sources import resolve_sources as resolve

    here = Path(config_path).resolve().parent
    where = space_path(config, config_path)
    try:
        sources = resolve(space.source_models(), [where.parent, here])
        missing = [str(p) for p in sources.values() if not Path(p).is_dir()]
        if missing:
            raise EvomergeError(f"Model {missing[0]} is not a directory.")
    except EvomergeError as e:
        hint = " (the toy zoo: run `evomerge zoo build` first)" if "zoo" in str(e) else ""
        raise EvomergeError(
            f"{where}: a source model of the space cannot be found: {e} Paths are relative to "
            f"the space file's folder; fix base_model / models there{hint}."
        ) from None
    return sources


def load_run(run_dir: Path) -> tuple[RunConfig, list[BoundObjective], list[EvaluationRecord], list[BoundConstraint]]:
    """A run's config, objectives, complete evaluations at its top fidelity (one per trial, feasible
    or not) and constraints."""
    config_path = Path(run_dir) / RUN_FILE
    if not has_run(run_dir) or not config_path.is_file():
        raise EvomergeError(
            f"{run_dir} is not a search run (no ledger.db or ledger.jsonl, or no run.yaml); give "
            f"the directory an `evomerge search --out` wrote."
        )
    config = RunConfig.load(config_path)
    tasks, objectives = bind_objectives(config, config_path)
    _, constraints = bind_constraints(config, config_path, tasks)
    ledger = open_ledger(run_dir, readonly=True)
    try:
        check_ledger_fits(run_dir, ledger, [*objectives, *constraints])
        top = top_rung(config)
        complete = [e for e in ledger.evaluations("complete") if e.scores and e.rung == top]
    finally:
        ledger.close()
    if not complete:
        raise EvomergeError(f"{run_dir} has no trial complete at the top fidelity yet.")
    return config, objectives, complete, constraints


def check_ledger_fits(run_dir: Path, ledger, objectives: list,
                      sources: list[str] | None = None) -> None:
    """Refuse a ledger that another run wrote (copied in, or a run directory reused by hand):
    its evaluations lack this run's objectives (or constraints' metrics: anything with a ``key``), or (``sources``: the space's model references)
    the recipes it recorded merge none of this run's models. A ledger of this run whose config
    was edited between sessions passes, as long as every recorded score can still be read.
    The recipes of the first and last few evaluations are read; scores are checked for all."""
    from evomerge.recipe import Recipe

    where = getattr(ledger, "path", None) or run_dir
    records = ledger.evaluations()
    keys = {o.key for o in objectives}
    for e in records:
        missing = sorted(keys - set(e.scores or {})) if e.state == "complete" else []
        if missing:
            raise EvomergeError(
                f"{where}: evaluation {e.id} (trial {e.trial}) has no score for {missing[0]}, an "
                f"objective or constraint of this run: the ledger was written by another run, or the run's "
                f"objectives changed since it was recorded (scores: {', '.join(sorted(e.scores))}). "
                f"Put back this run's own ledger, or start a new run with `evomerge search`."
            )
    if not sources or not records:
        return
    known = set(sources)
    sample = records[:3] + records[-3:] if len(records) > 6 else records
    used: set[str] = set()
    for e in sample:
        try:
            used |= set(Recipe.from_yaml(e.recipe, f"{where}, evaluation {e.id}").referenced_models())
        except EvomergeError:
            continue  # a recipe this version cannot read says nothing about whose run it is
    if used and not used & known:
        raise EvomergeError(
            f"{where}: the ledger's evaluations merge {', '.join(sorted(used)[:3])}, none of which "
            f"is a source of this run's space ({', '.join(sorted(known)[:3])}): it is another run's "
            f"ledger. Put back this run's own ledger, or start a new run with `evomerge search`."
        )


class RunLock:
    """One controller per run directory on this host: an exclusive ``flock`` on
    ``RUN_DIR/controller.lock``, which the OS releases when the process ends however it ends
    (kill -9 included), so a resume after a crash is never refused. Shared ledgers (sql) also
    hold a lease in their database, which covers controllers on other hosts."""

    def __init__(self, run_dir: Path) -> None:
        import fcntl
        import os

        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(run_dir) / LOCK_FILE
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise EvomergeError(
                f"{run_dir} is being searched by another controller ({holder}); wait for it to "
                f"finish or stop it, then `evomerge resume {run_dir}`."
            ) from None
        import socket

        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        import os

        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None
