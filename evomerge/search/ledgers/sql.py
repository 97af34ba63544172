"""A ledger in a database server (``ledger: {kind: sql, url: postgresql://...}``), for clusters.

Any SQLAlchemy URL works (PostgreSQL is the one tested; ``sqlite:///`` for a
local try). One database holds many runs, each under its ``run`` name. The
frozen run config is stored with the run, so ``evomerge resume`` works from
any machine that reaches the database (``--ledger-url URL --run NAME``), not
only from the run directory. The password never appears in a config, a log or
MLflow: the URL carries none, and ``password_env`` names the environment
variable that holds it.

The run has one controller at a time: a lease row with a heartbeat written in
the database's own clock (so machines' clocks need not agree). A second
controller on a live run is refused; after a kill -9 on the same host the dead
PID is seen and the lease taken at once; from another host the lease must
expire (``lease_seconds``) or be taken with ``--take-over``. A controller whose
lease was taken over stops writing.

The run directory keeps a pointer (``ledger.sql.yaml``: URL without password,
``password_env``, run name), so ``front``, ``export`` and ``resume RUN_DIR`` find
the ledger as they find a file ledger.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import yaml
from pydantic import Field, field_validator

from evomerge.errors import EvomergeError
from evomerge.search.ledgers import EvaluationRecord, Session
from evomerge.validation import StrictModel

POINTER = "ledger.sql.yaml"


class SQLOptions(StrictModel):
    url: str = Field(description="A SQLAlchemy URL without a password, e.g. postgresql://evomerge@db:5432/evomerge.")
    password_env: str | None = Field(default=None, description="The environment variable holding the password.")
    run: str | None = Field(default=None, description="The run's name in the database (default: the run directory's name).")
    lease_seconds: float = Field(default=30.0, gt=0, description="A controller silent this long loses the run.")

    @field_validator("url")
    @classmethod
    def _no_password(cls, url: str) -> str:
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(url)
        except Exception as e:  # noqa: BLE001 - SQLAlchemy's own message says what is wrong
            raise ValueError(f"not a database URL ({e})") from None
        if parsed.password is not None:
            raise ValueError(
                "the URL holds a password: remove it and put it in an environment variable named "
                "by password_env (a config is logged and copied; a password must not be)"
            )
        return url


def _tables(meta):
    import sqlalchemy as sa

    runs = sa.Table(
        "evomerge_runs", meta,
        sa.Column("run", sa.String(200), primary_key=True),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
    )
    evaluations = sa.Table(
        "evomerge_evaluations", meta,
        sa.Column("run", sa.String(200), primary_key=True),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("trial", sa.Integer, nullable=False),
        sa.Column("rung", sa.Integer, nullable=False),
        sa.Column("recipe_hash", sa.String(64), nullable=False),
        sa.Column("genome", sa.Text, nullable=False),
        sa.Column("recipe", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("fidelity", sa.Integer),
        sa.Column("scores", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("finished", sa.Float),
        sa.Column("seconds", sa.Float),
        sa.Column("seq", sa.Integer),
    )
    sessions = sa.Table(
        "evomerge_sessions", meta,
        sa.Column("run", sa.String(200), primary_key=True),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("start", sa.Integer, nullable=False),
        sa.Column("budget", sa.Integer, nullable=False),
        sa.Column("closed_asks", sa.Integer),
    )
    leases = sa.Table(
        "evomerge_leases", meta,
        sa.Column("run", sa.String(200), primary_key=True),
        sa.Column("holder", sa.String(100), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("heartbeat", sa.DateTime(timezone=True), nullable=False),
    )
    return runs, evaluations, sessions, leases


def connect(options: SQLOptions):
    """An engine for ``options`` (password from the environment), its tables created."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    url = make_url(options.url)
    if options.password_env:
        password = os.environ.get(options.password_env)
        if password is None:
            raise EvomergeError(
                f"ledger: password_env names {options.password_env}, which is not set; export it "
                f"with the database password before running evomerge."
            )
        url = url.set(password=password)
    try:
        engine = sa.create_engine(url, pool_pre_ping=True)
        meta = sa.MetaData()
        tables = _tables(meta)
        meta.create_all(engine)
    except Exception as e:  # noqa: BLE001 - any driver or connection error: one clear sentence
        shown = make_url(options.url).render_as_string(hide_password=True)
        raise EvomergeError(f"ledger: cannot use the database at {shown} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:300]}).") from None
    return engine, tables


class SQLLedger:
    def __init__(self, options: SQLOptions, run: str, *, readonly: bool = False,
                 take_over: bool = False) -> None:
        self.options = options
        self.run = run
        self.readonly = readonly
        self.engine, (self._runs, self._evals, self._sessions, self._leases) = connect(options)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        if not readonly:
            self._acquire(take_over)

    # -- the ledger kind ---------------------------------------------------------------

    @classmethod
    def exists(cls, run_dir: Path) -> bool:
        return (Path(run_dir) / POINTER).is_file()

    @classmethod
    def check(cls, options: dict) -> None:
        """Validate the options and reach the database, before any model loads."""
        engine, _ = connect(SQLOptions.model_validate(options))
        engine.dispose()

    @classmethod
    def open(cls, run_dir: Path, options: dict, *, readonly: bool = False, take_over: bool = False) -> SQLLedger:
        pointer = Path(run_dir) / POINTER
        if pointer.is_file():
            saved = yaml.safe_load(pointer.read_text())
            opts = SQLOptions.model_validate({**saved, **{k: v for k, v in options.items() if k == "lease_seconds"}})
        else:
            if not options:
                raise EvomergeError(f"{run_dir}: no SQL ledger pointer ({POINTER}) and no ledger options.")
            opts = SQLOptions.model_validate(options)
            if opts.run is None:
                opts = opts.model_copy(update={"run": Path(run_dir).resolve().name})
            if not readonly:
                from evomerge.io.atomic import atomic_write_text

                Path(run_dir).mkdir(parents=True, exist_ok=True)
                atomic_write_text(pointer, yaml.safe_dump(opts.model_dump(), sort_keys=False))
        return cls(opts, opts.run, readonly=readonly, take_over=take_over)

    # -- the run's frozen config ---------------------------------------------------------

    def save_config(self, text: str) -> None:
        import sqlalchemy as sa

        with self.engine.begin() as c:
            if c.execute(sa.select(self._runs.c.run).where(self._runs.c.run == self.run)).first() is None:
                c.execute(self._runs.insert().values(run=self.run, config=text, created=time.time()))

    def load_config(self) -> str | None:
        import sqlalchemy as sa

        with self.engine.connect() as c:
            row = c.execute(sa.select(self._runs.c.config).where(self._runs.c.run == self.run)).first()
        return row[0] if row else None

    # -- the lease -----------------------------------------------------------------------

    def _acquire(self, take_over: bool) -> None:
        import sqlalchemy as sa

        now = sa.func.now(type_=sa.DateTime(timezone=True))
        L = self._leases
        with self.engine.begin() as c:
            query = sa.select(L.c.holder, L.c.host, L.c.pid, L.c.heartbeat, now).where(L.c.run == self.run)
            if self.engine.dialect.name == "postgresql":
                query = query.with_for_update()
            row = c.execute(query).first()
            if row is not None and not take_over:
                holder, host, pid, beat, db_now = row
                age = _seconds(db_now, beat)
                alive = age < self.options.lease_seconds
                if alive and host == socket.gethostname() and not _pid_alive(pid):
                    alive = False  # killed on this very host: take over at once
                if alive:
                    raise EvomergeError(
                        f"run {self.run!r} is held by another controller ({holder}, last heartbeat "
                        f"{age:.0f} s ago). Wait for it to finish, or for its lease to expire "
                        f"({self.options.lease_seconds:g} s after its last heartbeat), or pass "
                        f"--take-over if that controller is gone for good."
                    )
            values = {"holder": self.holder, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": now}
            if row is None:
                c.execute(L.insert().values(run=self.run, **values))
            else:
                c.execute(L.update().where(L.c.run == self.run).values(**values))
        self._beat = threading.Thread(target=self._heartbeat, name="evomerge-lease", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        import sqlalchemy as sa

        L = self._leases
        while not self._stop.wait(self.options.lease_seconds / 3):
            try:
                with self.engine.begin() as c:
                    n = c.execute(L.update().where((L.c.run == self.run) & (L.c.holder == self.holder))
                                  .values(heartbeat=sa.func.now(type_=sa.DateTime(timezone=True)))).rowcount
                if n == 0:
                    self.lost = "another controller took over this run"
                    return
            except Exception:  # noqa: BLE001 - a database hiccup: try again at the next beat
                continue

    def _check_lease(self) -> None:
        if self.readonly:
            raise EvomergeError(f"the ledger of run {self.run!r} was opened read-only.")
        if self.lost:
            raise EvomergeError(f"run {self.run!r}: {self.lost}; this controller stops writing.")

    # -- writing -------------------------------------------------------------------------

    def start(self, trial: int, rung: int, recipe_hash: str, genome: list[float], recipe: str,
              fidelity: int | None) -> int:
        import sqlalchemy as sa

        self._check_lease()
        E = self._evals
        with self.engine.begin() as c:
            (last,) = c.execute(sa.select(sa.func.max(E.c.id)).where(E.c.run == self.run)).one()
            id = (last or 0) + 1
            c.execute(E.insert().values(
                run=self.run, id=id, trial=trial, rung=rung, recipe_hash=recipe_hash, genome=json.dumps(genome),
                recipe=recipe, state="running", fidelity=fidelity, started=time.time()))
        return id

    def finish(self, id: int, scores: dict[str, float] | None, error: str | None = None,
               seconds: float | None = None) -> None:
        import sqlalchemy as sa

        self._check_lease()
        E = self._evals
        with self.engine.begin() as c:  # one transaction: the row and its place in the order
            (last,) = c.execute(sa.select(sa.func.max(E.c.seq)).where(E.c.run == self.run)).one()
            c.execute(E.update().where((E.c.run == self.run) & (E.c.id == id)).values(
                state="complete" if error is None else "failed",
                scores=json.dumps(scores) if scores is not None else None, error=error,
                finished=time.time(), seconds=seconds, seq=(-1 if last is None else last) + 1))

    def begin_session(self, budget: int) -> None:
        import sqlalchemy as sa

        self._check_lease()
        E, S = self._evals, self._sessions
        with self.engine.begin() as c:
            (start,) = c.execute(sa.select(sa.func.count()).select_from(E)
                                 .where((E.c.run == self.run) & E.c.seq.is_not(None))).one()
            (last,) = c.execute(sa.select(sa.func.max(S.c.id)).where(S.c.run == self.run)).one()
            c.execute(S.insert().values(run=self.run, id=(last or 0) + 1, start=start, budget=budget))

    def close_asks(self, asks: int) -> None:
        import sqlalchemy as sa

        self._check_lease()
        S = self._sessions
        with self.engine.begin() as c:
            (last,) = c.execute(sa.select(sa.func.max(S.c.id)).where(S.c.run == self.run)).one()
            c.execute(S.update().where((S.c.run == self.run) & (S.c.id == last)).values(closed_asks=asks))

    def abandon_running(self) -> int:
        self._check_lease()
        E = self._evals
        with self.engine.begin() as c:
            return c.execute(E.update().where((E.c.run == self.run) & (E.c.state == "running"))
                             .values(state="abandoned")).rowcount

    def close(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            if not self.lost:
                L = self._leases
                try:
                    with self.engine.begin() as c:
                        c.execute(L.delete().where((L.c.run == self.run) & (L.c.holder == self.holder)))
                except Exception:  # noqa: BLE001 - the lease then expires by itself
                    pass
        self.engine.dispose()

    # -- reading -------------------------------------------------------------------------

    def sessions(self) -> list[Session]:
        import sqlalchemy as sa

        S = self._sessions
        with self.engine.connect() as c:
            rows = c.execute(sa.select(S.c.start, S.c.budget, S.c.closed_asks)
                             .where(S.c.run == self.run).order_by(S.c.id)).all()
        return [Session(*r) for r in rows]

    def _select(self, where, order):
        import sqlalchemy as sa

        E = self._evals
        cols = [E.c.id, E.c.trial, E.c.rung, E.c.recipe_hash, E.c.genome, E.c.recipe, E.c.state, E.c.fidelity,
                E.c.scores, E.c.error, E.c.started, E.c.finished, E.c.seconds, E.c.seq]
        with self.engine.connect() as c:
            rows = c.execute(sa.select(*cols).where((E.c.run == self.run) & where).order_by(order)).all()
        return [_record(r) for r in rows]

    def get(self, id: int) -> EvaluationRecord:
        return self._select(self._evals.c.id == id, self._evals.c.id)[0]

    def completions(self) -> list[EvaluationRecord]:
        return self._select(self._evals.c.seq.is_not(None), self._evals.c.seq)

    def evaluations(self, state: str | None = None) -> list[EvaluationRecord]:
        import sqlalchemy as sa

        where = sa.true() if state is None else self._evals.c.state == state
        return self._select(where, self._evals.c.id)


def _record(r) -> EvaluationRecord:
    return EvaluationRecord(
        id=r[0], trial=r[1], rung=r[2], recipe_hash=r[3], genome=json.loads(r[4]), recipe=r[5], state=r[6],
        fidelity=r[7], scores=json.loads(r[8]) if r[8] else None, error=r[9], started=r[10], finished=r[11],
        seconds=r[12], seq=r[13],
    )


def _seconds(now, then) -> float:
    """``now - then`` in seconds, for database timestamps (naive ones are taken as UTC)."""
    from datetime import timezone

    if isinstance(now, str) or isinstance(then, str):  # sqlite without type processing
        from datetime import datetime

        now, then = (datetime.fromisoformat(str(x)) for x in (now, then))
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    return (now - then).total_seconds()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
