"""Mirror a search's ledger into an Optuna storage, incrementally and idempotently.

Why: optuna-dashboard, Optuna's plots and ``optuna.load_study`` read a study, not a ledger. The
ledger stays the record of truth; this module copies into a study what it does not hold yet, so
`evomerge dashboard RUN_DIR` (a journal file in the run directory) and ``tracking: {optuna:
{storage: URL, study: NAME}}`` (any Optuna storage, live) show the same trials.

One evomerge trial is one Optuna trial, written in one storage call with everything it will ever
hold (Optuna refuses to change a finished trial): its genes as parameters with their
distributions (a choice gene, such as the merge method, categorical; an integer gene an integer
range; any other the gene's float range), the objectives at its highest fidelity as values with
their directions, and as user attributes its evomerge trial number (``evomerge_trial``, the key
that makes the mirror idempotent), recipe hash, evaluation ids, the error of a failed trial and
its scores and fitness per fidelity level (``scores@32``, ``scores@all``). A single-objective
study also gets the objective per fidelity level as intermediate values (step: the level's index,
0 the cheapest), in the objective's own units, so that they read like the trial's value; Optuna
takes no intermediate values in a multi-objective study. A run with constraints gives each trial
scored at the top level its violations as Optuna constraints (``constraints:<metric>/<max|min>``,
0 when met), so ``study.best_trials`` is the front of the feasible trials, as ``evomerge front``.

A trial is mirrored once it is settled, never before (Optuna keeps trial numbers in the order of
mirroring; the evomerge number is the ``evomerge_trial`` attribute):

- scored at the top fidelity level: COMPLETE;
- an evaluation failed: FAIL (successive halving never promotes a failed trial);
- scored below the top and not promoted by successive halving: PRUNED (single-objective: its
  value is its last level's, as Optuna's own ``tell`` does), but only once the search is over,
  since from the ledger alone a trial waiting for the rest of its bracket looks the same as one
  the bracket left behind. The live mirror learns it from the controller (a search that ended
  normally has closed every bracket); `evomerge dashboard` from the run directory (no controller
  holds its lock and no evaluation is in flight). An interrupted search's waiting trials appear
  after the resume that decides them.

So the study's content depends only on the ledger's completions and whether the search is over:
mirrored once at the end or after every completion, it converges to the same trials. Writers of
one run (the live mirror, `evomerge dashboard`) take ``RUN_DIR/optuna-mirror.lock`` and re-read
the study's trials before adding, so a resume or a second dashboard never duplicates a trial. A
failing storage never stops a search: it is reported once, and the trials are added when it
answers again (at most every ``retry_seconds``).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from evomerge.config.tracking import OPTUNA_JOURNAL, OptunaMirrorConfig
from evomerge.errors import EvomergeError
from evomerge.search.constraints import VIOLATION_PREFIX, BoundConstraint
from evomerge.search.ledgers import EvaluationRecord
from evomerge.search.objectives import BoundObjective, fitness, unique_objectives

TRIAL_KEY = "evomerge_trial"  # user attribute: the evomerge trial an Optuna trial mirrors
LOCK_FILE = "optuna-mirror.lock"


@dataclass(frozen=True)
class SettledTrial:
    trial: int
    state: str  # complete | pruned | fail
    records: tuple[EvaluationRecord, ...]  # its finished evaluations, cheapest level first


def settled_trials(completions: Sequence[EvaluationRecord], top: int, *, search_over: bool) -> list[SettledTrial]:
    """The trials whose outcome is decided, by trial number. ``top``: the top level's index;
    ``search_over``: no bracket is open any more, so a trial scored below the top was pruned."""
    by_trial: dict[int, dict[int, EvaluationRecord]] = {}
    for r in completions:
        if r.state in ("complete", "failed"):
            by_trial.setdefault(r.trial, {})[r.rung] = r  # in completion order: a rerun wins
    out = []
    for number in sorted(by_trial):
        rungs = by_trial[number]
        records = tuple(rungs[k] for k in sorted(rungs))
        if any(r.state == "failed" for r in records):
            state = "fail"
        elif top in rungs:
            state = "complete"
        elif search_over:
            state = "pruned"
        else:
            continue
        out.append(SettledTrial(number, state, records))
    return out


def storage_spec(settings: OptunaMirrorConfig | None, run_dir: Path) -> str:
    """The storage a run is mirrored into: a database URL, or a journal file's absolute path."""
    storage = settings.storage if settings is not None else None
    if storage and "://" in storage:
        return storage
    return str((Path(run_dir) / (storage or OPTUNA_JOURNAL)).resolve())


def open_storage(spec: str):
    """An Optuna storage for ``spec`` (what ``storage_spec`` returns)."""
    import optuna

    if "://" in spec:
        return optuna.storages.RDBStorage(spec)
    from optuna.storages.journal import JournalFileBackend

    Path(spec).parent.mkdir(parents=True, exist_ok=True)  # a relative path's folders in the run
    return optuna.storages.JournalStorage(JournalFileBackend(spec))


def shown(spec: str) -> str:
    """``spec`` for messages: a database URL without its password."""
    if "://" not in spec:
        return spec
    from sqlalchemy.engine import make_url

    try:
        return make_url(spec).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL: its scheme only
        return spec.split("://", 1)[0] + "://..."


@contextmanager
def mirror_lock(run_dir: Path) -> Iterator[None]:
    """One writer of this run's mirror at a time (the live mirror, `evomerge dashboard`)."""
    fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


class OptunaMirror:
    """A run's ledger mirrored into one Optuna study. ``update`` adds the settled trials the
    study lacks; ``sync`` and ``finish`` are the tracker contract ``BackgroundTracker`` drives
    (never raise; ``finish`` with FINISHED: the search ended normally, its brackets are closed)."""

    def __init__(
        self, run_dir: Path, objectives: list[BoundObjective], genes: list, levels: Sequence[int | None], *,
        settings: OptunaMirrorConfig | None = None, constraints: Sequence[BoundConstraint] = (),
        log: Callable[[str], None] = print, retry_seconds: float = 30.0,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.objectives = list(objectives)
        self.unique = unique_objectives(self.objectives)
        self.genes = list(genes)
        self.levels = tuple(levels)
        self.constraints = list(constraints)
        self.spec = storage_spec(settings, self.run_dir)
        self.study_name = (settings.study if settings is not None else None) or self.run_dir.name
        self.log = log
        self.retry_seconds = retry_seconds
        self.study = None
        self._next_try = 0.0
        self._warned = False

    @property
    def top(self) -> int:
        return len(self.levels) - 1

    @property
    def directions(self) -> list[str]:
        return ["maximize" if o.sign > 0 else "minimize" for o in self.unique]

    # -- the study -----------------------------------------------------------------------

    def open(self):
        """The run's study, made on first use (directions, metric names, the run directory)."""
        if self.study is not None:
            return self.study
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per study opened
        # A database URL as a string: Optuna then caches finished trials, so an update re-reads
        # only trials added since (by anyone), not every trial's parameters and attributes.
        storage = self.spec if "://" in self.spec else open_storage(self.spec)
        study = optuna.create_study(storage=storage, study_name=self.study_name,
                                    directions=self.directions, load_if_exists=True)
        have = [d.name.lower() for d in study.directions]
        if have != self.directions:
            raise EvomergeError(
                f"the Optuna storage {shown(self.spec)} already holds a study {self.study_name!r} with "
                f"directions {have}, not this run's {self.directions} ({', '.join(o.key for o in self.unique)}); "
                "name another study (tracking.optuna.study in run.yaml) or delete that one."
            )
        if study.metric_names is None:
            import warnings

            with warnings.catch_warnings():  # experimental in Optuna 5, and what the dashboard reads
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([o.key for o in self.unique])
        if "evomerge_run_dir" not in study.user_attrs:
            study.set_user_attr("evomerge_run_dir", str(self.run_dir))
            study.set_user_attr("fidelity_levels", [_level(v) for v in self.levels])
        self.study = study
        return study

    @property
    def study_id(self) -> int:
        """The study's id in its storage: what optuna-dashboard's links name."""
        self.open()
        return open_storage(self.spec).get_study_id_from_name(self.study_name)

    def update(self, completions: Sequence[EvaluationRecord], *, search_over: bool) -> int:
        """Add the settled trials the study does not hold; returns how many were added."""
        study = self.open()
        with mirror_lock(self.run_dir):
            held = {t.user_attrs.get(TRIAL_KEY) for t in study.get_trials(deepcopy=False)}
            missing = [s for s in settled_trials(completions, self.top, search_over=search_over)
                       if s.trial not in held]
            for s in missing:
                study.add_trial(self.frozen(s))
        return len(missing)

    # -- one trial -------------------------------------------------------------------------

    def frozen(self, s: SettledTrial):
        """The Optuna trial of a settled evomerge trial."""
        from optuna.trial import FrozenTrial, TrialState

        params, distributions = self.params(s.records[0].genome)
        scored = [r for r in s.records if r.state == "complete" and r.scores]
        last = s.records[-1]
        state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}[s.state]
        attrs: dict = {TRIAL_KEY: s.trial, "recipe_hash": last.recipe_hash[:16],
                       "evaluations": [r.id for r in s.records],
                       "fidelity_reached": _level(last.fidelity)}
        for r in scored:
            attrs[f"scores@{_level(r.fidelity)}"] = {**r.scores, "fitness": _fitness(r.scores, self.objectives)}
        if last.error:
            attrs["error"] = last.error[:5000]
        values = None
        intermediate: dict[int, float] = {}
        if len(self.unique) == 1:
            key = self.unique[0].key
            intermediate = {r.rung: float(r.scores[key]) for r in scored if _number(r.scores.get(key))}
        system: dict = {}
        if s.state == "complete":
            top = last.scores or {}
            bad = [o.key for o in self.unique if not _number(top.get(o.key))]
            if bad:  # Optuna takes no NaN value: a failed trial, not a mirror that stops
                state = TrialState.FAIL
                attrs["error"] = f"{bad[0]} at the top fidelity is {top.get(bad[0], 'missing')}"
            else:
                values = [float(top[o.key]) for o in self.unique]
                system = {f"constraints:{c.name.removeprefix(VIOLATION_PREFIX)}": float(top[c.name])
                          for c in self.constraints if c.name in top}
        elif s.state == "pruned" and intermediate:
            values = [intermediate[max(intermediate)]]
        started = min(r.started for r in s.records)
        finished = max((r.finished or r.started) for r in s.records)
        return FrozenTrial(
            number=-1, trial_id=-1, state=state, value=None, values=values,
            datetime_start=_utc(started), datetime_complete=_utc(finished),
            params=params, distributions=distributions, user_attrs=attrs, system_attrs=system,
            intermediate_values=intermediate,
        )

    def params(self, genome: Sequence[float]) -> tuple[dict, dict]:
        """A genome as the genes' decoded values and their Optuna distributions."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        params, distributions = {}, {}
        for gene, u in zip(self.genes, genome, strict=False):
            value = gene.value(min(1.0, max(0.0, float(u))))
            if gene.choices:
                dist = CategoricalDistribution(gene.choices)
            elif gene.integer:
                dist, value = IntDistribution(int(gene.low), int(gene.high)), int(value)
            else:  # low + u * (high - low) may round past high
                dist, value = FloatDistribution(gene.low, gene.high), min(max(value, gene.low), gene.high)
            params[gene.name], distributions[gene.name] = value, dist
        return params, distributions

    # -- the tracker contract (BackgroundTracker) --------------------------------------------

    def sync(self, completions: list[EvaluationRecord], *, force: bool = False, search_over: bool = False) -> bool:
        """``update`` that never raises: a failure is reported once and tried again later."""
        if not force and time.monotonic() < self._next_try:
            return False
        try:
            self.update(completions, search_over=search_over)
            self._warned = False
            return True
        except Exception as e:  # noqa: BLE001 - tracking must never stop a search
            self.study = None  # reopen: the storage may have been replaced or restarted
            self._next_try = time.monotonic() + self.retry_seconds
            if not self._warned:
                self.log(
                    f"tracking: the Optuna mirror ({shown(self.spec)}, study {self.study_name!r}) failed "
                    f"({type(e).__name__}: {e}); the search goes on, and `evomerge dashboard "
                    f"{self.run_dir}` or the next sync adds what is missing"
                )
                self._warned = True
            return False

    def finish(self, completions: list[EvaluationRecord], status: str = "FINISHED",
               summary: dict[str, float] | None = None) -> bool:  # noqa: ARG002 - the tracker contract
        return self.sync(completions, force=True, search_over=status == "FINISHED")


def start_optuna_mirror(run_dir: Path, config, space, objectives, ledger, log, constraints=()):
    """The run's live Optuna mirror on a background thread, or None without ``tracking.optuna``."""
    if config.tracking.optuna is None:
        return None
    from evomerge.tracking.mlflow_tracker import BackgroundTracker

    mirror = OptunaMirror(run_dir, objectives, space.genes(), config.levels(), settings=config.tracking.optuna,
                          constraints=constraints, log=log)
    return BackgroundTracker(mirror, ledger.completions())


def check_storage(settings: OptunaMirrorConfig | None, run_dir: Path, where: Path, *, resume: bool) -> None:
    """Before a run starts: ``tracking.optuna.storage`` answers, and a new run does not land in a
    study that already exists (its trials would be taken for this run's). Writes nothing."""
    if settings is None:
        return
    spec = storage_spec(settings, run_dir)
    field = f"{where}: tracking.optuna.storage"
    name = settings.study or Path(run_dir).resolve().name
    names: list[str] = []
    if "://" in spec:
        names = _rdb_study_names(spec, field)
    elif Path(spec).is_file():
        import optuna

        names = optuna.get_all_study_names(open_storage(spec))
    elif not Path(spec).parent.is_dir() and Path(run_dir).resolve() not in Path(spec).parents:
        raise EvomergeError(f"{field}: the journal's folder {Path(spec).parent} does not exist; "
                            "create it or give another path.")
    if not resume and name in names:
        raise EvomergeError(
            f"{where}: tracking.optuna: the Optuna storage {shown(spec)} already holds a study named "
            f"{name!r}, and a new run's trials would be mixed with its trials. Name this run's study "
            "(tracking.optuna.study) differently, or delete that study."
        )


def _rdb_study_names(url: str, field: str) -> list[str]:
    """The studies in a database, reached without creating anything (no tables, no file)."""
    import sqlalchemy as sa

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        folder = Path(url.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise EvomergeError(f"{field}: the folder of {url} does not exist; create it or give another URL.")
        return []
    try:
        engine = sa.create_engine(url)
    except Exception as e:  # noqa: BLE001 - a driver that is not installed, a malformed URL
        raise EvomergeError(
            f"{field}: {shown(url)} cannot be used ({type(e).__name__}: {e}); install the database's "
            "driver or fix the URL, or remove tracking.optuna."
        ) from None
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("studies"):
                return []
            return [row[0] for row in conn.execute(sa.text("SELECT study_name FROM studies"))]
    except Exception as e:  # noqa: BLE001 - unreachable, refused, wrong credentials
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EvomergeError(
            f"{field}: the database {shown(url)} cannot be reached ({reason}); start it or fix the "
            "URL, or remove tracking.optuna to run without the Optuna mirror."
        ) from None
    finally:
        engine.dispose()


def _level(fidelity: int | None) -> str:
    return "all" if fidelity is None else str(fidelity)


def _fitness(scores: dict[str, float], objectives: list[BoundObjective]) -> float | None:
    try:
        return fitness(scores, objectives)
    except KeyError:  # an objective missing from these scores
        return None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and v == v  # not missing, not NaN


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)
