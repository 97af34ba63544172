"""Mirror a search's ledger into MLflow, idempotently.

The ledger is the record of truth; the tracker copies what it has not copied
yet. After each completion the controller calls ``sync``: every finished
evaluation not yet in MLflow is logged (a child run per trial, created at
its first evaluation; one metric per objective with the fidelity as the step;
recipe and mergekit YAML as artifacts), Pareto tags are updated for trials
whose membership changed, and the parent gets best-so-far and hypervolume
points. What MLflow already holds is read back at start (from run tags), so a
resumed search continues the same parent run and never duplicates a child.

A failing call (server down, database locked) never stops the search: it is
reported once, the rest waits in the ledger, and the next ``sync`` (at most
every ``retry_seconds``) tries again. ``evomerge track RUN_DIR`` runs the same
sync after the fact.

A run with ``constraints:`` logs each evaluation's violations with its scores
(the ledger's ``violation/...`` values, one metric per constraint: 0 when met)
and tags each trial scored at the top fidelity ``feasible`` true or false; the
best-so-far series, the Pareto tags, the hypervolume and the front's plots count
feasible trials only, as ``evomerge front`` does, and the all-trials table marks
the rest.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from evomerge.config.tracking import TrackingConfig, tracking_uri
from evomerge.io.atomic import atomic_write_text
from evomerge.search.constraints import feasible
from evomerge.search.ledgers import EvaluationRecord
from evomerge.search.objectives import fitness, unique_objectives
from evomerge.search.pareto import hypervolume, objective_points, pareto_mask, reference_point
from evomerge.search.rundir import top_rung
from evomerge.tracking.view import save_runs_views

STATE_FILE = "tracking.json"  # the parent run's id, next to the ledger
_TAG = "evomerge."


def _param_key(name: str) -> str:
    # MLflow keys allow letters, digits and _-. /; gene names use brackets.
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


def _chunks(items: list, n: int = 100):
    for i in range(0, len(items), n):
        yield items[i : i + n]


class MLflowTracker:
    def __init__(
        self, run_dir: Path, config, objectives, genes: list, *,
        settings: TrackingConfig | None = None, log: Callable[[str], None] = print,
        retry_seconds: float = 30.0, constraints=(),
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.constraints = list(constraints)
        self.config = config
        self.objectives = objectives
        self.unique = unique_objectives(objectives)
        self.top = top_rung(config)
        self.genes = genes  # the space's genes: params show decoded values, not cube coordinates
        self.settings = settings or TrackingConfig()
        self.uri = tracking_uri(self.settings, self.run_dir)
        self.log = log
        self.retry_seconds = retry_seconds
        self.client = None
        # MLflow's HTTP client retries for minutes by default; a search should hear sooner.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.parent_id: str | None = None
        self.children: dict[int, str] = {}  # trial -> child run id
        self.logged: set[int] = set()  # evaluation ids already in MLflow
        self.pareto: dict[int, bool] = {}  # trial -> its pareto tag in MLflow
        self.series_done = 0  # top-level results already in the parent's series
        self.child_evals: dict[int, list[int]] = {}  # trial -> evaluation ids logged on it
        self.ready: set[int] = set()  # trials whose child has its params and artifacts
        # Children found in MLflow at start: a controller stopped inside log_batch may have left
        # an evaluation's metrics there without the tag that lists it (MLflow writes metrics and
        # tags in separate transactions), so their metric steps are checked before logging.
        self.inherited: set[int] = set()
        self.failures = 0
        self.parent_ready = False
        self._next_try = 0.0
        self._warned = False

    # -- connection and state ----------------------------------------------------------

    def _connect(self) -> None:
        if self.parent_id is not None:
            return
        self.client = open_client(self.uri)
        name = self.settings.experiment or self.run_dir.name
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            artifacts = None
            if self.uri.startswith("sqlite:///") and self.settings.uri is None:
                artifacts = (self.run_dir / "mlartifacts").as_uri()  # beside the store, not in the cwd
            # A model-training experiment, for UIs that read this tag; MLflow 3.17 goes by the
            # link's workflowType instead (tracking/view.py).
            exp_id = self.client.create_experiment(
                name, artifact_location=artifacts, tags={"mlflow.experimentKind": "custom_model_development"}
            )
        else:
            exp_id = exp.experiment_id
        self.experiment_id = exp_id
        state = self.run_dir / STATE_FILE
        saved = json.loads(state.read_text()) if state.is_file() else {}
        if saved.get("tracking_uri") != self.uri:
            saved = {}
        if saved.get("parent_run_id"):
            self.parent_id = saved["parent_run_id"]
            self._read_back()
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            self.parent_id = self._new_parent(state, saved.get("pending"))
        if not self.parent_ready:
            self._log_parent_config()

    def _new_parent(self, state: Path, token: str | None) -> str:
        """The parent run of a run not tracked yet. Its token goes to disk before the run is
        made, so a controller killed between the two finds that run again instead of leaving an
        empty parent behind and making another."""
        if token is not None:
            runs = self.client.search_runs(
                [self.experiment_id], f"tags.`{_TAG}parent_token` = '{token}'", max_results=1)
            if runs:
                self.parent_id = runs[0].info.run_id
                self._read_back()
                return self._saved(state)
        token = uuid.uuid4().hex
        atomic_write_text(state, json.dumps({"pending": token, "tracking_uri": self.uri}))
        run = self.client.create_run(self.experiment_id, run_name=self.run_dir.name, tags={
            f"{_TAG}run_dir": str(self.run_dir),
            f"{_TAG}parent_token": token,
            f"{_TAG}optimizer": self.config.optimizer.name,
            f"{_TAG}seed": str(self.config.seed),
            f"{_TAG}objectives": ", ".join(
                f"{o.key} ({'max' if o.sign > 0 else 'min'})" for o in self.unique),
            f"{_TAG}fidelity_levels": json.dumps(list(self.config.levels())),
            "mlflow.note.content": (
                f"evomerge search in {self.run_dir}. Metric `hypervolume`: while the search "
                "runs, each point is measured from a provisional reference (per objective, its "
                "declared `reference`, else the worst value seen so far); when the search ends "
                "it is recomputed from the run's reference (declared, else the worst value over "
                "all finished trials), the number `evomerge front` prints."),
        })
        self.parent_id = run.info.run_id
        return self._saved(state)

    def _saved(self, state: Path) -> str:
        atomic_write_text(state, json.dumps({"parent_run_id": self.parent_id, "tracking_uri": self.uri}))
        return self.parent_id

    def _log_parent_config(self) -> None:
        from mlflow.entities import Param

        flat = _flatten(self.config.model_dump(mode="json"))
        for chunk in _chunks([Param(_param_key(k), str(v)[:6000]) for k, v in flat.items()]):
            self.client.log_batch(self.parent_id, params=chunk)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "run.yaml").write_text(yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
            space = Path(self.config.space)
            if space.is_file():
                (Path(tmp) / "space.yaml").write_text(space.read_text())
            self.client.log_artifacts(self.parent_id, tmp, "config")
        # The runs-table views `evomerge ui` links to: the front's members, every trial.
        save_runs_views(self.client, self.experiment_id, self.parent_id, self.run_dir.name,
                       [o.key for o in self.unique])
        self.client.set_tag(self.parent_id, f"{_TAG}ready", "1")
        self.parent_ready = True

    def _read_back(self) -> None:
        """What MLflow already holds for this parent: children, logged evaluations, tags."""
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_id}'",
                max_results=1000, page_token=token,
            )
            for run in page:
                tags = run.data.tags
                # `evomerge.candidate`: the tag's name before trials were called trials.
                cand = int(tags.get(f"{_TAG}trial", tags.get(f"{_TAG}candidate")))
                self.children[cand] = run.info.run_id
                self.inherited.add(cand)
                numbers = [int(n) for n in tags.get(f"{_TAG}evaluations", "").split(",") if n]
                self.child_evals[cand] = numbers
                self.logged |= set(numbers)
                if "pareto" in tags:
                    self.pareto[cand] = tags["pareto"] == "true"
                if tags.get(f"{_TAG}ready") == "1":
                    self.ready.add(cand)
                if run.info.status == "RUNNING" and tags.get("state"):
                    # Stopped between logging its evaluation and closing its run.
                    self.client.set_terminated(
                        run.info.run_id, "FINISHED" if tags["state"] == "complete" else "FAILED")
            token = page.token
            if not token:
                break
        parent = self.client.get_run(self.parent_id)
        # The series' last step, not only the tag: a controller stopped between logging points
        # and the tag would otherwise log those points again.
        steps = [m.step for m in self.client.get_metric_history(self.parent_id, "best_fitness")]
        self.series_done = max([int(parent.data.tags.get(f"{_TAG}series_done", "0")), *steps])
        self.parent_ready = parent.data.tags.get(f"{_TAG}ready") == "1"

    # -- syncing -----------------------------------------------------------------------

    def sync(self, completions: list[EvaluationRecord], *, force: bool = False) -> bool:
        """Copy what is missing; returns whether MLflow is now up to date."""
        if not force and time.monotonic() < self._next_try:
            return False
        try:
            self._connect()
            for rec in completions:
                if rec.id not in self.logged:
                    self._log_evaluation(rec)
            self._update_front(completions)
            self._warned = False
            return True
        except Exception as e:  # noqa: BLE001 - tracking must never stop a search
            self.failures += 1
            self._next_try = time.monotonic() + self.retry_seconds
            if not self._warned:
                self.log(
                    f"tracking: MLflow at {self.uri} failed ({type(e).__name__}: {e}); the search goes on, "
                    f"results wait in the ledger and are logged when it answers (or run `evomerge track "
                    f"{self.run_dir}`)"
                )
                self._warned = True
            return False

    def _log_evaluation(self, rec: EvaluationRecord) -> None:
        from mlflow.entities import Metric, Param, RunTag

        from evomerge.recipe import Recipe

        now = int(time.time() * 1000)
        child = self.children.get(rec.trial)
        recipe = Recipe.from_yaml(rec.recipe, f"trial {rec.trial}")
        if child is None:
            run = self.client.create_run(
                self.experiment_id, run_name=f"trial-{rec.trial:04d}",
                tags={"mlflow.parentRunId": self.parent_id, f"{_TAG}trial": str(rec.trial),
                      "recipe_hash": rec.recipe_hash[:16]},
            )
            child = self.children[rec.trial] = run.info.run_id  # known at once: never a second child
        if rec.trial not in self.ready:
            params = [Param("recipe", recipe.summary()[:6000]), Param("merge_method", recipe.merge_method)]
            params += [Param(_param_key(f"gene.{g.name}"), _gene_value(g, u))
                       for g, u in zip(self.genes, rec.genome, strict=False)]
            for chunk in _chunks(params):
                self.client.log_batch(child, params=chunk)
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "recipe.yaml").write_text(recipe.to_yaml())
                try:
                    from evomerge.mergekit_compat import to_mergekit

                    (Path(tmp) / "mergekit_config.yml").write_text(
                        yaml.safe_dump(to_mergekit(recipe), sort_keys=False))
                except Exception as e:  # noqa: BLE001 - a recipe mergekit cannot express
                    (Path(tmp) / "mergekit_config.txt").write_text(f"not expressible in mergekit: {e}\n")
                self.client.log_artifacts(child, tmp, "recipe")
            self.client.set_tag(child, f"{_TAG}ready", "1")
            self.ready.add(rec.trial)
        step = rec.fidelity or 0  # examples per task; 0 = all
        metrics = []
        if rec.scores:
            metrics = [Metric(k, float(v), now, step) for k, v in rec.scores.items()]
            metrics.append(Metric("fitness", fitness(rec.scores, self.objectives), now, step))
            if rec.trial in self.inherited and self._has_step(child, step):
                metrics = []  # landed before the stop; only its tag is missing
        done = [*self.child_evals.get(rec.trial, []), rec.id]
        tags = [
            RunTag("state", rec.state),
            RunTag("fidelity_reached", "all" if rec.fidelity is None else str(rec.fidelity)),
            RunTag("rung", str(rec.rung)),
            RunTag(f"{_TAG}evaluations", ",".join(map(str, done))),
        ]
        if rec.error:
            tags.append(RunTag("error", rec.error[:5000]))
        if self.constraints and rec.scores and rec.rung == self.top:
            tags.append(RunTag("feasible", "true" if feasible(rec.scores, self.constraints) else "false"))
        self.client.log_batch(child, metrics=metrics, tags=tags)
        self.client.set_terminated(child, "FINISHED" if rec.state == "complete" else "FAILED")
        self.logged.add(rec.id)
        self.child_evals[rec.trial] = done
        self.inherited.discard(rec.trial)  # its later evaluations are this process's own: no check

    def _has_step(self, child: str, step: int) -> bool:
        # A trial is evaluated once per fidelity, so a fitness point at this step is this evaluation.
        return any(m.step == step for m in self.client.get_metric_history(child, "fitness"))

    def _top_records(self, completions: list[EvaluationRecord], *, all_: bool = False) -> list[EvaluationRecord]:
        """Scored top-level evaluations: the feasible ones (``all_``: infeasible ones too)."""
        return [r for r in completions if r.rung == self.top and r.scores
                and (all_ or feasible(r.scores, self.constraints))]

    def _update_front(self, completions: list[EvaluationRecord]) -> None:
        from mlflow.entities import Metric, RunTag


        top = self._top_records(completions)
        if not top:
            return
        points = objective_points([r.scores for r in top], self.unique)
        mask = pareto_mask(points)
        for r, on in zip(top, mask, strict=True):
            if self.pareto.get(r.trial) != bool(on) and r.trial in self.children:
                self.client.set_tag(self.children[r.trial], "pareto", "true" if on else "false")
                self.pareto[r.trial] = bool(on)
        if self.series_done < len(top):
            now = int(time.time() * 1000)
            metrics = []
            for i in range(self.series_done, len(top)):
                best = max(fitness(r.scores, self.objectives) for r in top[: i + 1])
                metrics.append(Metric("best_fitness", best, now, i + 1))
                if len(self.unique) > 1:
                    # Provisional: the reference is the worst value *so far* (unless declared);
                    # `finish` logs the value with the run's final reference last.
                    pts = points[: i + 1]
                    hv = hypervolume(pts[pareto_mask(pts)], reference_point(pts, self.unique))
                    metrics.append(Metric("hypervolume", hv, now, i + 1))
            for chunk in _chunks(metrics, 500):
                self.client.log_batch(self.parent_id, metrics=chunk)
            self.series_done = len(top)
            self.client.log_batch(self.parent_id, tags=[
                RunTag(f"{_TAG}series_done", str(self.series_done)),
                RunTag("front_size", str(int(mask.sum()))),
            ])

    # -- the end of a search -----------------------------------------------------------

    def finish(self, completions: list[EvaluationRecord], status: str = "FINISHED",
               summary: dict[str, float] | None = None) -> bool:
        """Final sync, then the front table and plots on the parent run (``status``: KILLED when
        the search was interrupted); ``summary``: the session's metrics (slot utilisation)."""
        if not self.sync(completions, force=True):
            return False
        try:
            if summary:
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                self.client.log_batch(self.parent_id, metrics=[
                    Metric(_param_key(k), float(v), now, 0) for k, v in summary.items()])
            self._log_front(completions)
            self.client.set_terminated(self.parent_id, status)
            return True
        except Exception as e:  # noqa: BLE001
            self.failures += 1
            self.log(f"tracking: could not log the front to MLflow ({type(e).__name__}: {e}); "
                     f"`evomerge track {self.run_dir}` tries again")
            return False

    def _log_front(self, completions: list[EvaluationRecord]) -> None:
        from evomerge.recipe import Recipe
        from evomerge.tracking.plots import front_html, front_png

        top = self._top_records(completions)
        everything = self._top_records(completions, all_=True)
        if not top:
            return
        values = np.array([[r.scores[o.key] for o in self.unique] for r in top])  # own units, for the plots
        mask = pareto_mask(objective_points([r.scores for r in top], self.unique))
        labels = [f"t{r.trial}" for r in top]
        names = [f"{o.key} ({'max' if o.sign > 0 else 'min'})" for o in self.unique]
        summaries = [Recipe.from_yaml(r.recipe).summary() for r in top]
        table = {
            "trial": [r.trial for r in top],
            **{o.key: [float(r.scores[o.key]) for r in top] for o in self.unique},
            "fitness": [fitness(r.scores, self.objectives) for r in top],
            "pareto": [bool(m) for m in mask],
            "recipe": summaries,
        }
        front_only = {k: [v for v, m in zip(col, mask, strict=True) if m] for k, col in table.items()}
        if self.constraints:  # every trial in the full table, the infeasible ones marked
            on_front = {r.trial for r, m in zip(top, mask, strict=True) if m}
            table = {
                "trial": [r.trial for r in everything],
                **{o.key: [float(r.scores[o.key]) for r in everything] for o in self.unique},
                "fitness": [fitness(r.scores, self.objectives) for r in everything],
                "pareto": [r.trial in on_front for r in everything],
                "feasible": [feasible(r.scores, self.constraints) for r in everything],
                "recipe": [Recipe.from_yaml(r.recipe).summary() for r in everything],
            }
        if len(self.unique) > 1:
            from mlflow.entities import Metric, RunTag

            points = objective_points([r.scores for r in top], self.unique)
            ref = reference_point(points, self.unique)
            hv = hypervolume(points[mask], ref)
            # Same step as the series' last point, later timestamp: MLflow shows this one.
            self.client.log_batch(self.parent_id, metrics=[
                Metric("hypervolume", hv, int(time.time() * 1000) + 1, len(top))],
                tags=[RunTag(f"{_TAG}hypervolume_reference", json.dumps(
                    {o.key: o.sign * float(v) for o, v in zip(self.unique, ref, strict=True)}))])
        self._log_table(front_only, "front/front.json")
        self._log_table(table, "front/all_trials.json")
        with tempfile.TemporaryDirectory() as tmp:
            front_png(values, mask, labels, names, Path(tmp) / "front.png")
            front_html(values, mask, labels, names, summaries, Path(tmp) / "front.html")
            self.client.log_artifacts(self.parent_id, tmp, "front")


    def _log_table(self, table: dict, artifact_file: str) -> None:
        """``MlflowClient.log_table``, replacing the file: log_table appends to an existing one,
        so a front logged again (a resume of a finished run, `evomerge track`) listed every
        trial twice."""
        import pandas as pd
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

        folder, name = artifact_file.rsplit("/", 1)
        with tempfile.TemporaryDirectory() as tmp:
            pd.DataFrame(table).to_json(Path(tmp) / name, orient="split", index=False)
            self.client.log_artifact(self.parent_id, str(Path(tmp) / name), folder)
        # The tag log_table sets: the UI shows the file as a table.
        listed = json.loads(self.client.get_run(self.parent_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
        entry = {"path": artifact_file, "type": "table"}
        if entry not in listed:
            self.client.set_tag(self.parent_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*listed, entry]))


def open_client(uri: str):
    """An MlflowClient for ``uri``; a SQLite store that does not exist yet is made whole first.

    MLflow makes a new database in seconds of schema migrations, not all in one transaction: a
    controller killed in the middle leaves a store every later open refuses ("table ... already
    exists"), and the run could never be tracked again. So a new store is made under a
    temporary name and renamed into place once complete; a kill leaves only the temporary file,
    which the next start makes again."""
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.exists():
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.creating")
            for stale in (tmp, tmp.with_name(tmp.name + "-journal")):
                stale.unlink(missing_ok=True)
            store = SqlAlchemyStore(f"sqlite:///{tmp}", (path.parent / "mlartifacts").as_uri())
            store.engine.dispose()
            os.replace(tmp, path)
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)  # the rename itself survives a power cut
            finally:
                os.close(fd)
    return MlflowClient(tracking_uri=uri)


def _gene_value(gene, u: float) -> str:
    value = gene.value(min(1.0, max(0.0, float(u))))
    return value if isinstance(value, str) else f"{value:.6g}"


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


class BackgroundTracker:
    """Runs a tracker's syncs on a thread, so MLflow's latency never slows the search.

    The controller hands over each finished record (``add``); the thread logs
    them in order. ``close`` waits for it, then logs the front.
    """

    def __init__(self, tracker: MLflowTracker, records: list[EvaluationRecord]) -> None:
        import threading

        self.tracker = tracker
        self._records = list(records)  # completions so far, in order (a resume's replay included)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="evomerge-tracker", daemon=True)
        self._thread.start()
        self._wake.set()

    def add(self, record: EvaluationRecord) -> None:
        with self._lock:
            self._records.append(record)
        self._wake.set()

    def _snapshot(self) -> list[EvaluationRecord]:
        with self._lock:
            return list(self._records)

    def _loop(self) -> None:
        while not self._stop:
            self._wake.wait(timeout=5.0)
            self._wake.clear()
            if not self._stop:
                self.tracker.sync(self._snapshot())

    def close(self, status: str = "FINISHED", summary: dict[str, float] | None = None) -> bool:
        self._stop = True
        self._wake.set()
        self._thread.join()
        return self.tracker.finish(self._snapshot(), status, summary)
