"""On the real zoo (slow): each optimiser beats random search at equal budget, and the quickstart
runs to a front. Uses the cached zoo (`evomerge zoo build`; built here if missing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evomerge.run import run_search
from evomerge.zoo.build import build_zoo, default_zoo_dir

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def zoo():
    return build_zoo(default_zoo_dir(), log=lambda s: None).resolve()


def _search(tmp_path: Path, zoo: Path, optimizer: str, trials: int = 60) -> float:
    space = yaml.safe_load((ROOT / "search_spaces" / "zoo_ps.yaml").read_text())
    space["base_model"] = str(zoo / "base")
    space["models"] = [str(zoo / Path(m).name) for m in space["models"]]
    work = tmp_path / optimizer
    work.mkdir()
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    run = {
        "space": "space.yaml",
        "objectives": [{"task": t} for t in ("addition", "reversal", "sorting")],
        "scalarization": "weighted_sum",
        "optimizer": {"name": optimizer, "options": {"popsize": 10} if optimizer == "cmaes" else {}},
        "budget": {"trials": trials},
        "fidelity": 128,
        "tracking": {"enabled": False},
    }
    (work / "run.yaml").write_text(yaml.safe_dump(run))
    return run_search(work / "run.yaml", work / "run", log=lambda s: None).best_fitness


@pytest.fixture(scope="module")
def random_search_best(tmp_path_factory, zoo) -> float:
    # one seeded random search is the bar for every optimiser (it is the same run each time)
    return _search(tmp_path_factory.mktemp("random"), zoo, "random")


# On the pre-training-form zoo (2026-11-29), with 60 trials in zoo_ps.yaml's 37 genes at 128
# examples, one seeded run each: random 0.646, TPE 0.836, GP 0.643, CMA-ES (popsize 10) 0.589.
# CMA-ES and GP no longer beat random search at this budget: the zoo issue's search-efficiency
# item. Strict, so that this test fails (and must be updated) once they do.
_BELOW_RANDOM = pytest.mark.xfail(
    strict=True, reason="at 60 trials in 37 genes CMA-ES and GP do not beat random search on this zoo yet")


@pytest.mark.parametrize("optimizer", [
    pytest.param("cmaes", marks=_BELOW_RANDOM), "tpe", pytest.param("gp", marks=_BELOW_RANDOM)])
def test_each_optimiser_beats_random_search_on_the_zoo(tmp_path, zoo, optimizer, random_search_best):
    assert _search(tmp_path, zoo, optimizer) > random_search_best


def test_the_quickstart_runs_to_a_front(tmp_path, zoo):
    from evomerge.search.front import run_front

    cfg = yaml.safe_load((ROOT / "runs" / "quickstart.yaml").read_text())
    cfg["space"] = str((ROOT / "runs" / cfg["space"]).resolve())
    cfg["budget"]["trials"] = 45
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    result = run_search(tmp_path / "run.yaml", tmp_path / "out", log=lambda s: None)
    assert result.trials == 45 and result.failed == 0
    assert result.examples_scored < 0.5 * result.examples_at_top
    objectives, front, _, hv = run_front(tmp_path / "out")
    assert len(objectives) == len(cfg["objectives"]) and front and hv is not None
