"""On the real zoo (slow): TPE beats random search at equal budget. Uses the cached zoo (`evomerge
zoo build`; built here if missing). The quickstart runs in full in the README walk-through
(tests/test_readme_walkthrough.py), which also checks the landscape it finds."""

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
    # one seeded random search is the bar (it is the same run each time)
    return _search(tmp_path_factory.mktemp("random"), zoo, "random")


# TPE only: on the pre-training-form zoo (2026-11-29), with 60 trials in zoo_ps.yaml's 37 genes at
# 128 examples, one seeded run each, random search reached 0.646, TPE 0.836, GP 0.643 and CMA-ES
# (popsize 10) 0.589. CMA-ES and GP not beating random search at this budget is the zoo issue's
# search-efficiency item (benchmarks/search_efficiency.py), not a CI check (3 min of CI each).
def test_tpe_beats_random_search_on_the_zoo(tmp_path, zoo, random_search_best):
    assert _search(tmp_path, zoo, "tpe") > random_search_best
